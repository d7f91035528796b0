//! Bulk path for benchmarks: creates N tokens directly in a Latchkey database and writes their
//! plaintexts, one per line, for a load generator.
//!
//! ```text
//! cargo run --release --example seed -- --database-url sqlite://path/lk.db --count 100000 \
//!     --out tokens.txt [--wrong-out wrong.txt] [--hash sha256|argon2id] [--org-name default] \
//!     [--method store|sql] [--concurrency 4]
//! ```
//!
//! Each token is made as `POST /v1/tokens` makes one: `token::format::generate` (UUID v7 id, 32
//! CSPRNG bytes), a verifier from `Verifier::compute` with the chosen algorithm (Argon2id on
//! every core in parallel), permissions `tokens:read`, no expiry, a unique name, and its
//! `token_created` audit event (actor `system`). The database is opened (and migrated) with
//! `latchkey::store::connect`. Tokens go into the org named `--org-name` (the bootstrap org is
//! `default`), created when missing. A running Latchkey may serve the same file meanwhile (WAL).
//!
//! Two ways to write the rows:
//! - `--method store` (the default): `Store::insert_token`, one transaction per token with its
//!   audit event, exactly what the server does, from `--concurrency` tasks. Works on every
//!   backend; on SQLite about a thousand tokens per second, bound by one transaction per token.
//! - `--method sql`: SQLite only, for large sets: the same rows, with the column values
//!   `SqliteStore::insert_token` writes, as multi-row `INSERT`s in transactions of 10,000 tokens:
//!   a million tokens in a few minutes. `bench/run.sh` uses it for the big sets and checks
//!   that the first and last token verify through the server afterwards.
//!
//! `--wrong-out` also writes, for every token, a well-formed token with the same id and kind but
//! another secret (valid checksum, wrong secret): attack traffic that reaches the verifier.
//!
//! Prints one JSON line on stdout: `{"tokens", "hash", "method", "seconds", "per_second",
//! "org_id"}`.

use std::io::Write;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use chrono::{DateTime, Utc};
use latchkey::service::AuthorityConfig;
use latchkey::store::{self, AuditRecord, OrgRecord, Store, TokenRecord};
use latchkey::token::format::{self, GeneratedToken};
use latchkey::token::{HashAlgorithm, Permissions, Prefix, TokenKind, Verifier};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use uuid::Uuid;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Store,
    Sql,
}

struct Args {
    database_url: String,
    count: usize,
    out: String,
    wrong_out: Option<String>,
    hash: HashAlgorithm,
    org_name: String,
    prefix: Prefix,
    method: Method,
    concurrency: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut database_url = None;
    let mut count = 1000usize;
    let mut out = None;
    let mut wrong_out = None;
    let mut hash = HashAlgorithm::Sha256;
    let mut org_name = "default".to_string();
    let mut prefix = AuthorityConfig::default().prefix;
    let mut method = Method::Store;
    let mut concurrency = 4usize;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--database-url" => database_url = Some(value()?),
            "--count" => count = value()?.parse().context("--count")?,
            "--out" => out = Some(value()?),
            "--wrong-out" => wrong_out = Some(value()?),
            "--hash" => {
                hash = match value()?.as_str() {
                    "sha256" => HashAlgorithm::Sha256,
                    "argon2id" => HashAlgorithm::Argon2id,
                    other => anyhow::bail!("--hash: sha256 or argon2id, not {other:?}"),
                }
            }
            "--org-name" => org_name = value()?,
            "--prefix" => prefix = value()?.parse().map_err(anyhow::Error::msg)?,
            "--method" => {
                method = match value()?.as_str() {
                    "store" => Method::Store,
                    "sql" => Method::Sql,
                    other => anyhow::bail!("--method: store or sql, not {other:?}"),
                }
            }
            "--concurrency" => concurrency = value()?.parse().context("--concurrency")?,
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    let database_url = database_url.context("--database-url is required")?;
    anyhow::ensure!(
        method == Method::Store || database_url.starts_with("sqlite:"),
        "--method sql needs a sqlite: database URL"
    );
    Ok(Args {
        database_url,
        count,
        out: out.context("--out is required")?,
        wrong_out,
        hash,
        org_name,
        prefix,
        method,
        concurrency: concurrency.clamp(1, 64),
    })
}

/// A generated token with its verifier, ready to insert.
struct Prepared {
    generated: GeneratedToken,
    verifier: Verifier,
}

fn prepare(prefix: &Prefix, hash: HashAlgorithm) -> anyhow::Result<Prepared> {
    let generated = format::generate(prefix, TokenKind::Pat)?;
    let verifier = Verifier::compute(hash, &generated.secret)?;
    Ok(Prepared {
        generated,
        verifier,
    })
}

/// Generates `n` tokens; Argon2id verifiers on one thread per core.
fn prepare_batch(prefix: &Prefix, hash: HashAlgorithm, n: usize) -> anyhow::Result<Vec<Prepared>> {
    if hash == HashAlgorithm::Sha256 {
        return (0..n).map(|_| prepare(prefix, hash)).collect();
    }
    let threads = std::thread::available_parallelism().map_or(2, |c| c.get());
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let mine = n / threads + usize::from(t < n % threads);
                s.spawn(move || {
                    (0..mine)
                        .map(|_| prepare(prefix, hash))
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(n);
        for w in workers {
            out.extend(
                w.join()
                    .map_err(|_| anyhow::anyhow!("a hashing thread panicked"))??,
            );
        }
        Ok(out)
    })
}

/// The token row and its audit event, as `POST /v1/tokens` writes them.
fn rows(
    p: &Prepared,
    org_id: Uuid,
    name: String,
    now: DateTime<Utc>,
) -> (TokenRecord, AuditRecord) {
    let g = &p.generated;
    let record = TokenRecord {
        id: g.id,
        org_id,
        name: name.clone(),
        kind: g.kind,
        verifier: p.verifier.encode(),
        permissions: Permissions::TOKENS_READ,
        created_at: now,
        created_by: "system".into(),
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
        request_count: 0,
        replaced_by: None,
        metadata: None,
        family_id: g.id,
        disabled_at: None,
        client_ips: Vec::new(),
        user_id: None,
        lookup: None,
    };
    let event = AuditRecord {
        id: Uuid::now_v7(),
        org_id,
        occurred_at: now,
        actor: "system".into(),
        action: "token_created".into(),
        token_id: Some(g.id),
        ip: None,
        user_agent: None,
        details: serde_json::json!({
            "name": name,
            "type": g.kind.as_str(),
            "permissions": Permissions::TOKENS_READ.bits(),
            "expires_at": null,
            "seeded": true,
        }),
    };
    (record, event)
}

/// `--method store`: one `Store::insert_token` transaction per token, from several tasks.
async fn insert_via_store(
    store: &Arc<dyn Store>,
    batch: Vec<(TokenRecord, AuditRecord)>,
    concurrency: usize,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let per_task = batch.len().div_ceil(concurrency).max(1);
    let mut tasks = Vec::new();
    let mut rows = batch.into_iter();
    loop {
        let chunk: Vec<_> = rows.by_ref().take(per_task).collect();
        if chunk.is_empty() {
            break;
        }
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for (record, event) in &chunk {
                store
                    .insert_token(record, std::slice::from_ref(event), now)
                    .await
                    .with_context(|| format!("inserting token {}", record.name))?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// `--method sql`: the rows `SqliteStore::insert_token` writes (a live token: `live_name` is
/// its name; timestamps in microseconds; no usage yet, so no `token_usage` row), as multi-row
/// inserts in one transaction.
async fn insert_via_sql(
    pool: &sqlx::SqlitePool,
    batch: &[(TokenRecord, AuditRecord)],
) -> anyhow::Result<()> {
    const ROWS_PER_INSERT: usize = 500;
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    for chunk in batch.chunks(ROWS_PER_INSERT) {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO tokens (id, org_id, name, live_name, kind, verifier, permissions, \
             created_at, created_by, expires_at, revoked_at, replaced_by, metadata, family_id, \
             disabled_at) ",
        );
        q.push_values(chunk, |mut b, (t, _)| {
            b.push_bind(t.id.to_string())
                .push_bind(t.org_id.to_string())
                .push_bind(t.name.clone())
                .push_bind(t.name.clone())
                .push_bind(t.kind.code())
                .push_bind(t.verifier.clone())
                .push_bind(t.permissions.bits() as i64)
                .push_bind(t.created_at.timestamp_micros())
                .push_bind(t.created_by.clone())
                .push_bind(None::<i64>)
                .push_bind(None::<i64>)
                .push_bind(None::<String>)
                .push_bind(None::<String>)
                .push_bind(t.family_id.to_string())
                .push_bind(None::<i64>);
        });
        q.build().execute(&mut *tx).await?;
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO audit_events (id, org_id, occurred_at, actor, action, token_id, ip, \
             user_agent, details) ",
        );
        q.push_values(chunk, |mut b, (_, e)| {
            b.push_bind(e.id.to_string())
                .push_bind(e.org_id.to_string())
                .push_bind(e.occurred_at.timestamp_micros())
                .push_bind(e.actor.clone())
                .push_bind(e.action.clone())
                .push_bind(e.token_id.map(|t| t.to_string()))
                .push_bind(None::<String>)
                .push_bind(None::<String>)
                .push_bind(e.details.to_string());
        });
        q.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let store = store::connect(&args.database_url).await?;
    let now = Utc::now();
    let org = match store.find_org_by_name(&args.org_name).await? {
        Some(org) => org,
        None => {
            let org = OrgRecord {
                id: Uuid::now_v7(),
                name: args.org_name.clone(),
                created_at: now,
                max_ttl_seconds: None,
                default_ttl_seconds: None,
            };
            store.create_org(&org, None, &[]).await?;
            org
        }
    };
    let pool = match args.method {
        Method::Store => None,
        Method::Sql => Some(
            SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(
                    SqliteConnectOptions::from_str(&args.database_url)?
                        .journal_mode(SqliteJournalMode::Wal)
                        .synchronous(SqliteSynchronous::Normal)
                        .busy_timeout(std::time::Duration::from_secs(30)),
                )
                .await?,
        ),
    };

    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&args.out).with_context(|| format!("creating {}", args.out))?,
    );
    let mut wrong = match &args.wrong_out {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {p}"))?,
        )),
        None => None,
    };

    let started = Instant::now();
    // Names must be unique among the org's live tokens, also across several seed runs.
    let run = Uuid::now_v7().simple().to_string();
    let batch_size = match (args.hash, args.method) {
        (HashAlgorithm::Argon2id, _) => 64,
        (_, Method::Store) => 1000,
        (_, Method::Sql) => 10_000,
    };
    let mut done = 0usize;
    while done < args.count {
        let n = batch_size.min(args.count - done);
        let prepared = prepare_batch(&args.prefix, args.hash, n)?;
        let now = Utc::now();
        let batch: Vec<_> = prepared
            .iter()
            .enumerate()
            .map(|(k, p)| {
                rows(
                    p,
                    org.id,
                    format!("bench-{}-{:07}", &run[20..], done + k),
                    now,
                )
            })
            .collect();
        match &pool {
            None => insert_via_store(&store, batch, args.concurrency, now).await?,
            Some(pool) => insert_via_sql(pool, &batch).await?,
        }
        for p in &prepared {
            let g = &p.generated;
            writeln!(out, "{}", g.plaintext.expose())?;
            if let Some(w) = wrong.as_mut() {
                let mut other = [0u8; 32];
                getrandom::fill(&mut other)?;
                writeln!(
                    w,
                    "{}",
                    format::format_token(&args.prefix, g.kind, g.id, &other)
                )?;
            }
        }
        done += n;
    }
    out.flush()?;
    if let Some(w) = wrong.as_mut() {
        w.flush()?;
    }
    if let Some(pool) = pool {
        pool.close().await;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "tokens": args.count,
            "hash": args.hash.to_string(),
            "method": match args.method { Method::Store => "store", Method::Sql => "sql" },
            "seconds": (secs * 100.0).round() / 100.0,
            "per_second": (args.count as f64 / secs.max(1e-9)).round(),
            "org_id": org.id,
        })
    );
    Ok(())
}
