//! The commands that reach the database directly, with no server: `latchkey bootstrap`,
//! `latchkey user create` and `latchkey backup`. Whoever reaches the database is trusted.

use crate::cli::{
    BackupArgs, BootstrapArgs, CommonArgs, DevSeedArgs, ImportArgs, RoleArg, UserCreateArgs,
};
use crate::clock::{Clock, SystemClock};
use crate::service::model::UserRole;
use crate::service::{
    Authority, Caller, ImportInput, ImportOptions, NewUser, Principal, RequestMeta,
    validate_password,
};
use crate::{client, config, store, telemetry};

/// Opens (and migrates) the database of `common` and builds the service on it.
async fn open(common: &CommonArgs) -> anyhow::Result<Authority> {
    telemetry::init_logging(common.log_format);
    let store = store::connect_with(&common.database_url, &config::pool_options(common)).await?;
    Ok(Authority::new(store, config::authority_config(common)?))
}

/// Runs `latchkey bootstrap`: mints an admin token and prints it alone on stdout.
///
/// # Errors
/// The database cannot be opened, or the org name is not valid.
pub async fn bootstrap(args: &BootstrapArgs) -> anyhow::Result<()> {
    let authority = open(&args.common).await?;
    let out = authority
        .bootstrap(&args.org_name, SystemClock.now())
        .await?;
    eprintln!(
        "{} org {:?} ({}); admin token {} follows on stdout. It will not be shown again.",
        if out.created_org { "created" } else { "using" },
        out.org.name,
        out.org.id,
        out.token_id,
    );
    println!("{}", out.plaintext.expose());
    Ok(())
}

/// Runs `latchkey backup`: a consistent copy of a SQLite database, taken while servers run.
///
/// # Errors
/// A PostgreSQL URL (pg_dump is the tool), a database that does not exist, a target file that
/// exists or cannot be written.
pub async fn backup(args: &BackupArgs) -> anyhow::Result<()> {
    let written = store::backup_sqlite(&args.database_url, &args.to).await?;
    eprintln!(
        "backed up {} to {} ({written} bytes)",
        args.database_url,
        args.to.display()
    );
    Ok(())
}

/// Runs `latchkey import`: keys from a JSON Lines file (or stdin) into the database, all or
/// nothing, as the system (audit actor `import`).
///
/// # Errors
/// The file cannot be read, the database cannot be opened, the org does not exist, or a line
/// was refused (each is listed on stderr first; nothing is written).
pub async fn import(args: &ImportArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let text = if args.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading keys from stdin")?
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
    let authority = open(&args.common).await?;
    let org_id = match (&args.org_id, &args.org_name) {
        (Some(id), _) => Some(*id),
        (None, Some(name)) => Some(authority.org_id_by_name(name).await.map_err(|_| {
            anyhow::anyhow!(
                "no org named {name:?} (create it with `latchkey bootstrap --org-name`)"
            )
        })?),
        (None, None) => None,
    };
    let caller = Caller::new(Principal::system(), RequestMeta::default());
    let opts = ImportOptions {
        org_id,
        dry_run: args.dry_run,
    };
    let report = authority
        .import_tokens(
            &caller,
            ImportInput::JsonLines(text),
            opts,
            SystemClock.now(),
        )
        .await
        .map_err(|e| match e {
            crate::error::Error::NotFound => anyhow::anyhow!("no such org: {org_id:?}"),
            e => anyhow::anyhow!(e.public_message()),
        })?;
    for r in &report.refused {
        eprintln!("line {}: refused: {}", r.line, r.reason);
    }
    let revoked = if report.revoked > 0 {
        format!(
            " ({} of them revoked now, as the file says)",
            report.revoked
        )
    } else {
        String::new()
    };
    if report.dry_run {
        eprintln!(
            "dry run, nothing written: {} would be imported, {} already present{revoked}, {} refused",
            report.imported,
            report.already_present,
            report.refused.len(),
        );
    } else {
        eprintln!(
            "{} imported, {} already present{revoked}, {} refused{}",
            report.imported,
            report.already_present,
            report.refused.len(),
            if report.refused.is_empty() {
                ""
            } else {
                "; nothing was written"
            },
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if !report.refused.is_empty() {
        anyhow::bail!("{} line(s) refused", report.refused.len());
    }
    Ok(())
}

/// Runs `latchkey dev-seed`, after [`dev_seed_allowed`].
///
/// # Errors
/// Refused by [`dev_seed_allowed`]; the database cannot be opened; the name `dev` or the dev
/// email is taken by something else.
pub async fn dev_seed(args: &DevSeedArgs) -> anyhow::Result<()> {
    dev_seed_allowed(&args.common.database_url, &args.env)?;
    let authority = open(&args.common).await?;
    let seed = authority
        .dev_seed(SystemClock.now())
        .await
        .map_err(|e| anyhow::anyhow!(e.public_message()))?;
    eprintln!(
        "{}: dev org, admin user and token (local development only)",
        if seed.created == 0 {
            "already seeded"
        } else {
            "seeded"
        }
    );
    println!("export LATCHKEY_DEV_TOKEN={}", seed.token.expose());
    println!("export LATCHKEY_DEV_ORG_ID={}", seed.org_id);
    println!("export LATCHKEY_DEV_USER_ID={}", seed.user_id);
    println!("export LATCHKEY_DEV_TOKEN_ID={}", seed.token_id);
    println!("export LATCHKEY_DEV_EMAIL={}", seed.email);
    println!("export LATCHKEY_DEV_PASSWORD={}", seed.password.expose());
    Ok(())
}

/// Whether `dev-seed` may write to `database_url` in environment `env`: never in `production`,
/// and on PostgreSQL only on a loopback host or a local socket. A SQLite file is local.
///
/// # Errors
/// The refusal, saying why.
pub fn dev_seed_allowed(database_url: &str, env: &str) -> anyhow::Result<()> {
    if env.trim().eq_ignore_ascii_case("production") {
        anyhow::bail!(
            "dev-seed refuses to run with LATCHKEY_ENV=production: its token is public knowledge"
        );
    }
    if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
        return Ok(());
    }
    let opts: sqlx::postgres::PgConnectOptions = database_url
        .parse()
        .map_err(|e| anyhow::anyhow!("the database URL is not valid: {e}"))?;
    let host = opts.get_host();
    let loopback = host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        anyhow::bail!(
            "dev-seed refuses a PostgreSQL host that is not loopback ({host}): its token is public \
             knowledge and must never reach a shared database"
        );
    }
    Ok(())
}

/// Runs `latchkey user create`: creates the user with the password read from stdin
/// (`--password-stdin`), or prints its one-time setup link alone on stdout.
///
/// # Errors
/// The database cannot be opened; a bad email, name, org name or password; a taken email.
pub async fn create_user(args: UserCreateArgs) -> anyhow::Result<()> {
    // Read and check the password before touching the database, so that a refused one leaves
    // nothing behind (not even a new org).
    let password = if args.password_stdin {
        let pw = client::read_password(&format!("Password for {}: ", args.email))?;
        validate_password("password", &pw)?;
        Some(pw)
    } else {
        None
    };
    let authority = open(&args.common).await?;
    let created = authority
        .create_user_offline(
            NewUser {
                org_name: args.org_name.clone(),
                email: args.email,
                name: args.name,
                role: match args.role {
                    RoleArg::Member => UserRole::Member,
                    RoleArg::Admin => UserRole::Admin,
                },
                platform_admin: args.platform_admin,
                password,
            },
            SystemClock.now(),
        )
        .await?;
    let u = &created.user;
    let who = format!(
        "created user {} <{}> ({}) in org {:?} ({}) with the {} role{}",
        u.name,
        u.email,
        u.id,
        args.org_name,
        u.org_id,
        match u.role {
            UserRole::Member => "member",
            UserRole::Admin => "admin",
        },
        if u.platform_admin {
            " and platform:admin"
        } else {
            ""
        },
    );
    match created.setup_url {
        Some(url) => {
            let hours = authority.config().people.setup_link_ttl.as_secs() / 3600;
            eprintln!(
                "{who}. Their one-time setup link (valid {hours} h) follows on stdout: hand it \
                 to them to set a password. It will not be shown again."
            );
            println!("{}", url.expose());
        }
        None => eprintln!("{who}. The password is set: they can sign in now."),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::dev_seed_allowed;

    #[test]
    fn dev_seed_runs_on_sqlite_and_loopback_postgres_only_outside_production() {
        for ok in [
            "sqlite://latchkey-data/latchkey.db",
            "postgres://u:p@localhost/db",
            "postgres://u:p@127.0.0.1:5432/db",
            "postgresql://u@[::1]:5432/db",
            "postgres://u@%2Fvar%2Frun%2Fpostgresql/db",
        ] {
            assert!(dev_seed_allowed(ok, "development").is_ok(), "{ok}");
        }
        for refused in [
            "postgres://u:p@db.internal/db",
            "postgres://u:p@10.0.0.5/db",
            "postgresql://u@[2001:db8::1]/db",
        ] {
            assert!(
                dev_seed_allowed(refused, "development").is_err(),
                "{refused}"
            );
        }
        assert!(dev_seed_allowed("sqlite://x.db", "production").is_err());
        assert!(dev_seed_allowed("sqlite://x.db", " Production ").is_err());
    }
}
