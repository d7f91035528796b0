//! Turning flags and the config file into settings.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::cli::{CommonArgs, ServeArgs};
use crate::server::ServerLimits;
use crate::service::ratelimit::RateLimitConfig;
use crate::service::{AuthorityConfig, BreakGlassDigest, PeopleConfig};
use crate::startup::Settings;
use crate::store::PoolOptions;
use crate::token::ScopeRegistry;
use crate::token::permissions::ScopeConfig;

/// Reads the TOML config file (scopes and composites; see [`ScopeConfig`]).
///
/// # Errors
/// A missing or unreadable file, malformed TOML, or an invalid scope declaration.
pub fn load_scopes(path: Option<&Path>) -> anyhow::Result<ScopeRegistry> {
    let Some(path) = path else {
        return Ok(ScopeRegistry::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let cfg: ScopeConfig =
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))?;
    ScopeRegistry::new(&cfg).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
}

/// The database pool settings shared by `serve` and `bootstrap` (SQLite ignores them).
pub fn pool_options(common: &CommonArgs) -> PoolOptions {
    let secs = |s: u64| (s > 0).then(|| Duration::from_secs(s));
    PoolOptions {
        max_connections: common.db_max_connections.max(1),
        min_connections: common.db_min_connections,
        acquire_timeout: Duration::from_secs(common.db_acquire_timeout_seconds.max(1)),
        idle_timeout: secs(common.db_idle_timeout_seconds),
        max_lifetime: secs(common.db_max_lifetime_seconds),
    }
}

/// The service settings shared by `serve` and `bootstrap`.
///
/// # Errors
/// As [`load_scopes`].
pub fn authority_config(common: &CommonArgs) -> anyhow::Result<AuthorityConfig> {
    let public_url = common.public_url.trim_end_matches('/').to_string();
    anyhow::ensure!(
        public_url.starts_with("http://") || public_url.starts_with("https://"),
        "--public-url must start with http:// or https:// (got {public_url:?})"
    );
    Ok(AuthorityConfig {
        prefix: common.token_prefix.clone(),
        hash: common.hash,
        scopes: load_scopes(common.config.as_deref())?,
        people: PeopleConfig {
            public_url,
            ..PeopleConfig::default()
        },
        ..AuthorityConfig::default()
    })
}

/// The settings of `latchkey serve`.
///
/// # Errors
/// As [`load_scopes`].
pub fn serve_settings(args: &ServeArgs) -> anyhow::Result<Settings> {
    let mut authority = authority_config(&args.common)?;
    authority.cache_capacity = args.cache_capacity;
    authority.cache_ttl = Duration::from_secs(args.cache_ttl_seconds);
    let request_timeout = Duration::from_secs(args.request_timeout_seconds.max(1));
    let refusal_delay = Duration::from_millis(args.rate_limit_refusal_delay_ms);
    // A held refusal must be answered as a refusal, not cut off by the request timeout.
    anyhow::ensure!(
        refusal_delay < request_timeout,
        "--rate-limit-refusal-delay-ms ({} ms) must be shorter than --request-timeout-seconds ({} s)",
        refusal_delay.as_millis(),
        request_timeout.as_secs()
    );
    authority.people.session_idle = Duration::from_secs(args.session_idle_minutes * 60);
    authority.people.session_absolute = Duration::from_secs(args.session_absolute_hours * 3600);
    authority.people.login_token_max_days = args.login_token_max_days;
    authority.break_glass = args
        .break_glass_sha256
        .as_deref()
        .map(|hex| {
            // The value is never repeated: it may be the secret itself, pasted by mistake.
            BreakGlassDigest::from_hex(hex).ok_or_else(|| {
                anyhow::anyhow!(
                    "LATCHKEY_BREAK_GLASS_SHA256 (--break-glass-sha256) must be 64 hex digits, \
                     the SHA-256 of the break-glass secret (e.g. `printf %s \"$SECRET\" | \
                     sha256sum`); the value given is not, and is not shown here"
                )
            })
        })
        .transpose()?;
    authority.rate_limits = RateLimitConfig {
        mint_per_hour: args.rate_limit_mint_per_hour,
        mint_per_token_per_hour: args.rate_limit_mint_per_token_per_hour,
        login_per_15m: args.rate_limit_login_per_15m,
        management_per_second: args.rate_limit_per_second,
        management_burst: args.rate_limit_burst,
        failed_verify_per_minute: args.rate_limit_failed_verify_per_minute,
        leaked_reports_per_minute: args.rate_limit_leaked_per_minute,
        refusal_delay,
        // None held below 4 in flight: one held refusal must not fill the server.
        max_held_refusals: args.max_in_flight / 4,
    };
    Ok(Settings {
        database_url: args.common.database_url.clone(),
        db_pool: pool_options(&args.common),
        listen: args.listen,
        authority,
        usage_flush_interval: Duration::from_millis(args.usage_flush_ms.max(10)),
        max_body_bytes: args.max_body_bytes,
        trusted_proxies: args.trusted_proxies.clone(),
        secure_cookies: !args.plain_http,
        limits: ServerLimits {
            header_timeout: Duration::from_secs(args.header_timeout_seconds.max(1)),
            request_timeout,
            max_connections: args.max_connections.max(1),
            max_in_flight: args.max_in_flight.max(1),
        },
        compat_ibex: args.compat_ibex,
    })
}

#[cfg(test)]
mod tests {
    //! Property tests of the config file: arbitrary text never panics the loader, and a valid file
    //! means what it declares. PROPTEST_CASES cases each (256 by default).

    use std::io::Write;

    use clap::Parser;
    use proptest::prelude::*;

    use super::*;
    use crate::token::Permissions;

    fn load_text(text: &[u8]) -> anyhow::Result<ScopeRegistry> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text).unwrap();
        f.flush().unwrap();
        load_scopes(Some(f.path()))
    }

    /// TOML-ish text from the file's own vocabulary, shuffled: most of it is not a valid config,
    /// but it gets past the TOML parser into the scope rules far more often than random text.
    fn toml_ish() -> impl Strategy<Value = String> {
        let value = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            (0u32..70).prop_map(|n| n.to_string()),
            "\"[a-z:_.A-Z -]{0,10}\"",
            Just("true".to_string()),
            Just("[]".to_string()),
            Just("[\"runs:read\", \"tokens:read\"]".to_string()),
            Just("1e400".to_string()),
            Just("\"\\u0000\"".to_string()),
            Just("{ a = 1 }".to_string()),
        ];
        let line = prop_oneof![
            Just("[[scopes]]".to_string()),
            Just("[composites]".to_string()),
            Just("[scopes]".to_string()),
            value.clone().prop_map(|v| format!("name = {v}")),
            value.clone().prop_map(|v| format!("bit = {v}")),
            value.clone().prop_map(|v| format!("admin_only = {v}")),
            value.clone().prop_map(|v| format!("default_scopes = {v}")),
            ("\"[a-z:]{1,8}\"", value.clone()).prop_map(|(k, v)| format!("{k} = {v}")),
            "[ -~]{0,30}",
        ];
        prop::collection::vec(line, 0..12).prop_map(|ls| ls.join("\n"))
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_config_loader(text in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = load_text(&text);
        }

        #[test]
        fn arbitrary_text_never_panics_the_config_loader(text in ".{0,300}") {
            let _ = load_text(text.as_bytes());
        }

        #[test]
        fn toml_shaped_text_is_loaded_or_refused_without_panicking(text in toml_ish()) {
            if let Ok(r) = load_text(text.as_bytes()) {
                // Whatever loads keeps the system bits and only assigns bits 0-63 it may.
                prop_assert!(r.assigned().contains(Permissions::ALL_SYSTEM));
                prop_assert!(!r.assigned().intersects(Permissions::RESERVED));
            }
        }

        #[test]
        fn a_valid_file_declares_what_it_says(
            decls in prop::collection::btree_map(16u32..64, ("[a-z][a-z0-9:_.-]{0,20}", any::<bool>()), 0..10),
        ) {
            let mut names = std::collections::BTreeSet::new();
            let decls: Vec<(u32, String, bool)> = decls
                .into_iter()
                .filter(|(_, (n, _))| names.insert(n.clone()) && ScopeRegistry::default().resolve(&[n]).is_err())
                .map(|(b, (n, a))| (b, n, a))
                .collect();
            let mut text = String::new();
            if let Some((_, first, _)) = decls.first() {
                text.push_str(&format!("default_scopes = [{first:?}]\n"));
            }
            for (bit, name, admin_only) in &decls {
                text.push_str(&format!("[[scopes]]\nname = {name:?}\nbit = {bit}\nadmin_only = {admin_only}\n"));
            }
            if decls.len() >= 2 {
                text.push_str(&format!("[composites]\n\"all:of:them\" = [{:?}, {:?}]\n", decls[0].1, decls[1].1));
            }
            let r = load_text(text.as_bytes()).unwrap();
            for (bit, name, admin_only) in &decls {
                let p = Permissions::from_bits(1 << bit);
                prop_assert_eq!(r.resolve(&[name]).unwrap(), p);
                prop_assert_eq!(r.admin_only().contains(p), *admin_only);
            }
            if let Some((bit, _, _)) = decls.first() {
                prop_assert_eq!(r.default_scopes().bits(), 1u64 << bit);
            }
            if decls.len() >= 2 {
                let both = (1u64 << decls[0].0) | (1u64 << decls[1].0);
                prop_assert_eq!(r.resolve(&["all:of:them"]).unwrap().bits(), both);
            }
        }

        /// The numeric flags of `serve` become settings without panicking whatever clap lets
        /// through (the other engineers' range checks included).
        #[test]
        fn serve_flags_become_settings_without_panicking(
            values in prop::collection::vec(prop_oneof![any::<u64>().prop_map(|n| n.to_string()), (0u64..5).prop_map(|n| n.to_string()), "-?[0-9]{1,25}"], 14),
            public_url in prop_oneof![Just("http://x".to_string()), ".{0,20}"],
        ) {
            let flags = [
                "--cache-capacity", "--cache-ttl-seconds", "--usage-flush-ms", "--max-body-bytes",
                "--session-idle-minutes", "--session-absolute-hours", "--login-token-max-days",
                "--rate-limit-refusal-delay-ms", "--header-timeout-seconds", "--request-timeout-seconds",
                "--max-connections", "--max-in-flight", "--db-max-connections", "--db-acquire-timeout-seconds",
            ];
            let mut argv = vec!["latchkey".to_string(), "serve".to_string(), format!("--public-url={public_url}")];
            for (flag, v) in flags.iter().zip(&values) {
                argv.push(format!("{flag}={v}"));
            }
            if let Ok(cli) = crate::cli::Cli::try_parse_from(&argv)
                && let crate::cli::Command::Serve(args) = cli.command
            {
                let _ = serve_settings(&args);
            }
        }
    }

    #[test]
    fn a_missing_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_scopes(Some(&dir.path().join("nope.toml"))).is_err());
        assert!(load_scopes(Some(dir.path())).is_err());
        assert!(load_scopes(None).is_ok());
    }
}
