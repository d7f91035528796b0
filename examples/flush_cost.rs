//! What one usage flush of many tokens costs on PostgreSQL: `Store::add_usage` with a batch of
//! `--tokens` tokens (each used from one address, in one hour), timed over `--rounds` flushes,
//! each token from the same address in every flush, as a service's tokens mostly are (or, with
//! `--new-addresses`, from a new address in every flush: the slower path, addresses merged),
//! the first creating the usage rows and the others adding to them. When the server preloads
//! `pg_stat_statements` (`-c shared_preload_libraries=pg_stat_statements`), it also reports the
//! database's own execution time per later flush, summed over the flush's statements.
//!
//! ```text
//! cargo run --release --example flush_cost -- --database-url postgres://.../db \
//!     [--tokens 25000] [--rounds 5] [--new-addresses]
//! ```
//!
//! The database is migrated, and the tokens are written straight into `tokens` in one statement
//! (`generate_series`), in an org of their own. Prints one JSON line: `{"tokens", "first_ms",
//! "median_ms", "max_ms", "db_ms"}` (wall time of `add_usage` as the server's flush calls it: the
//! database's time plus the round trips; `db_ms` is the database's time alone, per later flush,
//! or null without `pg_stat_statements`).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use chrono::Utc;
use latchkey::store::{self, ClientIp, HourCount, UsageDelta, hour_start};
use sqlx::Connection;
use uuid::Uuid;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (mut url, mut tokens, mut rounds) = (String::new(), 25_000_usize, 5_usize);
    let mut new_addresses = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--new-addresses" {
            new_addresses = true;
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--database-url" => url = value,
            "--tokens" => tokens = value.parse()?,
            "--rounds" => rounds = value.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    if !url.starts_with("postgres") {
        bail!("--database-url postgres://... is required");
    }
    let store = store::connect(&url).await?;
    let org = Uuid::now_v7();
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    sqlx::query("INSERT INTO orgs (id, name, created_at) VALUES ($1, $2, now())")
        .bind(org)
        .bind(format!("flush-cost-{org}"))
        .execute(&mut conn)
        .await?;
    let ids: Vec<Uuid> = (0..tokens).map(|_| Uuid::now_v7()).collect();
    sqlx::query(
        "INSERT INTO tokens (id, org_id, name, live_name, kind, verifier, permissions, \
         created_at, created_by, family_id) \
         SELECT id, $2, 'flush-' || n, 'flush-' || n, 2, \
         'sha256:' || repeat('ab', 32), 4, now(), 'system', id \
         FROM unnest($1::uuid[]) WITH ORDINALITY AS t(id, n)",
    )
    .bind(&ids)
    .bind(org)
    .execute(&mut conn)
    .await?;
    let stats = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&mut conn)
        .await
        .is_ok()
        && sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(&mut conn)
            .await
            .is_ok();
    let mut times = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let now = Utc::now();
        let batch: Arc<[UsageDelta]> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| UsageDelta {
                token_id: *id,
                count: 3,
                last_used_at: now,
                ips: vec![ClientIp {
                    ip: format!(
                        "10.{}.{}.{}",
                        if new_addresses { round % 200 } else { 0 },
                        (i / 250) % 250,
                        i % 250
                    ),
                    last_seen_at: now,
                }],
                hours: vec![HourCount {
                    hour: hour_start(now),
                    count: 3,
                }],
            })
            .collect();
        if round == 1 && stats {
            sqlx::query("SELECT pg_stat_statements_reset()")
                .execute(&mut conn)
                .await?;
        }
        let started = Instant::now();
        store.add_usage(batch).await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    // Every statement of the later flushes touches `token_usage` (or `_hourly`), and nothing
    // else runs on this database meanwhile.
    let db_ms: Option<f64> = if stats && rounds > 1 {
        let total: f64 = sqlx::query_scalar(
            "SELECT COALESCE(sum(total_exec_time), 0)::float8 FROM pg_stat_statements \
             WHERE query LIKE '%token_usage%' AND dbid = \
             (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(&mut conn)
        .await?;
        Some(total / (rounds - 1) as f64)
    } else {
        None
    };
    let first = times[0];
    let mut rest = times[1..].to_vec();
    rest.sort_by(f64::total_cmp);
    let median = rest.get(rest.len() / 2).copied().unwrap_or(first);
    println!(
        "{}",
        serde_json::json!({
            "tokens": tokens,
            "new_addresses": new_addresses,
            "first_ms": first,
            "median_ms": median,
            "max_ms": rest.last().copied().unwrap_or(first),
            "db_ms": db_ms,
        })
    );
    Ok(())
}
