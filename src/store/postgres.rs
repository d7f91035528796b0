//! The PostgreSQL backend (sqlx), for several `serve` processes on one database.
//!
//! - Native types: uuid, timestamptz (microseconds, like SQLite's integers), jsonb, bigint.
//! - Migrations run at connect on a dedicated connection that is closed afterwards. sqlx's
//!   PostgreSQL migrator holds `pg_advisory_lock(<id derived from the database name>)` from before
//!   it creates `_sqlx_migrations` until it has applied the last migration, so nodes starting
//!   together wait for each other and apply each migration once; closing the connection releases
//!   the lock even when a migration fails.
//! - Transactions are READ COMMITTED. Uniqueness (live token name, org name, user email) is the
//!   unique indexes' job, so two nodes racing to create the same name end in one row and one
//!   `Conflict`.
//! - A token with an owner is inserted (minted or rotated) under a share lock on the owner's
//!   `users` row, which [`Store::update_user`] updates first: disabling a user and minting for it
//!   serialize, so no token of a disabled user is left live (see `lock_owner`).
//! - Cache coherence: every change that a verify cache may hold (revoke, rotate, family revoke,
//!   disable/enable, the owned tokens a user update revokes) runs
//!   `pg_notify('latchkey_invalidate', <token id>)` in its own transaction, so the notification
//!   is delivered exactly when the change commits, and never if it rolls back.
//!   [`Store::invalidations`] listens on a dedicated connection.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow, Postgres};
use sqlx::{Row, Transaction};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{
    AuditListQuery, AuditRecord, ClientIp, EndSessions, FormatFilter, HourCount, ImportRow,
    ImportStatus, Invalidation, OrgRecord, PoolOptions, RevokeOwned, SessionRecord, StateFilter,
    Store, StoreError, StoreResult, TokenListQuery, TokenRecord, UsageDelta, UserChange,
    UserListQuery, UserRecord, VerifyRecord, combine_usage, merge_client_ips, per_item_event,
};
use crate::token::{Permissions, Role, TokenKind};

/// The channel every node publishes token changes on and listens to.
const INVALIDATION_CHANNEL: &str = "latchkey_invalidate";

/// `application_name` of the listening connection (visible in `pg_stat_activity`).
const LISTENER_APPLICATION_NAME: &str = "latchkey-listener";

/// The PostgreSQL store. Cheap to clone (a pool handle and connect options).
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    options: PgConnectOptions,
}

fn other(e: sqlx::Error) -> StoreError {
    StoreError::from_sqlx(e)
}

/// Cuts a time to whole microseconds (toward the past), the precision every backend stores.
fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// A token's columns, selected `FROM` [`TOKEN_ROWS`]: usage comes from `token_usage`.
const TOKEN_COLUMNS: &str = "id, org_id, name, kind, verifier, permissions, created_at, created_by, \
     expires_at, revoked_at, u.last_used_at, COALESCE(u.request_count, 0) AS request_count, \
     replaced_by, metadata, family_id, disabled_at, COALESCE(u.client_ips, '[]') AS client_ips, \
     user_id, lookup";

const TOKEN_ROWS: &str = "tokens LEFT JOIN token_usage u ON u.token_id = tokens.id";

const ORG_COLUMNS: &str = "id, name, created_at, max_ttl_seconds, default_ttl_seconds";

const AUDIT_COLUMNS: &str =
    "id, org_id, occurred_at, actor, action, token_id, ip, user_agent, details";

const USER_COLUMNS: &str = "id, org_id, email, name, role, platform_admin, password_hash, \
     created_at, created_by, last_login_at, disabled_at, setup_hash, setup_expires_at";

const SESSION_COLUMNS: &str =
    "id, secret_hash, user_id, org_id, created_at, last_seen_at, expires_at, ip, user_agent";

/// The unique constraint on `users.email_key` (see migrations/postgres/0002_users_sessions.sql).
const USERS_EMAIL_CONSTRAINT: &str = "users_email_key";

fn ips_from_json(v: serde_json::Value) -> anyhow::Result<Vec<ClientIp>> {
    serde_json::from_value(v).context("malformed client_ips")
}

fn ips_to_json(ips: &[ClientIp]) -> serde_json::Value {
    let ips: Vec<ClientIp> = ips
        .iter()
        .map(|i| ClientIp {
            ip: i.ip.clone(),
            last_seen_at: micros(i.last_seen_at),
        })
        .collect();
    serde_json::to_value(ips).unwrap_or_else(|_| serde_json::Value::Array(Vec::new()))
}

fn token_from_row(row: &PgRow) -> anyhow::Result<TokenRecord> {
    let kind: i16 = row.try_get("kind")?;
    Ok(TokenRecord {
        id: row.try_get("id")?,
        org_id: row.try_get("org_id")?,
        name: row.try_get("name")?,
        kind: TokenKind::from_code(i64::from(kind)).context("unknown token kind in database")?,
        verifier: row.try_get("verifier")?,
        permissions: Permissions::from_bits(row.try_get::<i64, _>("permissions")? as u64),
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_used_at: row.try_get("last_used_at")?,
        request_count: row.try_get("request_count")?,
        replaced_by: row.try_get("replaced_by")?,
        metadata: row.try_get("metadata")?,
        family_id: row.try_get("family_id")?,
        disabled_at: row.try_get("disabled_at")?,
        client_ips: ips_from_json(row.try_get("client_ips")?)?,
        user_id: row.try_get("user_id")?,
        lookup: row.try_get("lookup")?,
    })
}

fn user_from_row(row: &PgRow) -> anyhow::Result<UserRecord> {
    let role: String = row.try_get("role")?;
    Ok(UserRecord {
        id: row.try_get("id")?,
        org_id: row.try_get("org_id")?,
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        role: Role::from_name(&role).context("unknown user role in database")?,
        platform_admin: row.try_get("platform_admin")?,
        password_hash: row.try_get("password_hash")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        last_login_at: row.try_get("last_login_at")?,
        disabled_at: row.try_get("disabled_at")?,
        setup_hash: row.try_get("setup_hash")?,
        setup_expires_at: row.try_get("setup_expires_at")?,
    })
}

fn session_from_row(row: &PgRow) -> anyhow::Result<SessionRecord> {
    Ok(SessionRecord {
        id: row.try_get("id")?,
        secret_hash: row.try_get("secret_hash")?,
        user_id: row.try_get("user_id")?,
        org_id: row.try_get("org_id")?,
        created_at: row.try_get("created_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
        expires_at: row.try_get("expires_at")?,
        ip: row.try_get("ip")?,
        user_agent: row.try_get("user_agent")?,
    })
}

/// The key emails are compared on: the same on every backend.
fn email_key(email: &str) -> String {
    email.to_lowercase()
}

/// Maps a duplicate email to `Conflict`; every other failure (a setup hash collision included)
/// is `Other`.
fn user_write_error(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db)
            if db.is_unique_violation() && db.constraint() == Some(USERS_EMAIL_CONSTRAINT) =>
        {
            StoreError::Conflict("a user with this email already exists".into())
        }
        _ => other(e),
    }
}

fn uuids(rows: &[PgRow]) -> StoreResult<Vec<Uuid>> {
    rows.iter()
        .map(|r| r.try_get::<Uuid, _>(0))
        .collect::<Result<Vec<_>, _>>()
        .map_err(other)
}

fn org_from_row(row: &PgRow) -> anyhow::Result<OrgRecord> {
    Ok(OrgRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
        max_ttl_seconds: row.try_get("max_ttl_seconds")?,
        default_ttl_seconds: row.try_get("default_ttl_seconds")?,
    })
}

fn audit_from_row(row: &PgRow) -> anyhow::Result<AuditRecord> {
    Ok(AuditRecord {
        id: row.try_get("id")?,
        org_id: row.try_get("org_id")?,
        occurred_at: row.try_get("occurred_at")?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        token_id: row.try_get("token_id")?,
        ip: row.try_get("ip")?,
        user_agent: row.try_get("user_agent")?,
        details: row.try_get("details")?,
    })
}

/// Most tokens written in one usage transaction.
const USAGE_CHUNK: usize = 5_000;

/// What a usage row holds that a flush must read before writing: the last client addresses (to
/// merge) and the current hour's count (to add to, or to move to `token_usage_hourly` when a
/// later hour starts).
struct StoredUsage {
    ips: Vec<ClientIp>,
    hour: Option<DateTime<Utc>>,
    hour_count: i64,
}

/// The stored usage of those of `ids` that have a usage row, locked (in id order).
async fn usage_rows_for_update(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[Uuid],
) -> StoreResult<std::collections::HashMap<Uuid, StoredUsage>> {
    let rows = sqlx::query(
        "SELECT token_id, client_ips, hour, hour_count FROM token_usage \
         WHERE token_id = ANY($1) ORDER BY token_id FOR UPDATE",
    )
    .bind(ids)
    .fetch_all(&mut **tx)
    .await
    .map_err(other)?;
    let mut stored = std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        let id: Uuid = row.try_get(0).map_err(other)?;
        stored.insert(
            id,
            StoredUsage {
                ips: ips_from_json(row.try_get(1).map_err(other)?)?,
                hour: row.try_get(2).map_err(other)?,
                hour_count: row.try_get(3).map_err(other)?,
            },
        );
    }
    Ok(stored)
}

/// Adds `hours` (in hour order) to a row's current hour. Returns the row's new current hour and
/// count; the counts of earlier hours (the row's previous hour when a later one starts, and any
/// hour older than the row's) go to `past`, for `token_usage_hourly`.
fn roll_hours(
    mut hour: Option<DateTime<Utc>>,
    mut count: i64,
    hours: &[HourCount],
    past: &mut std::collections::BTreeMap<DateTime<Utc>, i64>,
) -> (Option<DateTime<Utc>>, i64) {
    for h in hours {
        match hour {
            Some(current) if current == h.hour => count += h.count,
            Some(current) if h.hour < current => *past.entry(h.hour).or_default() += h.count,
            _ => {
                if let Some(current) = hour.filter(|_| count != 0) {
                    *past.entry(current).or_default() += count;
                }
                hour = Some(h.hour);
                count = h.count;
            }
        }
    }
    (hour, count)
}

/// A pooled connection idle at least this long is pinged before it is used (a database restart
/// or a dropped network path shows up there, not in a failed query).
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// The transaction-scoped advisory lock every usage flush holds (any value of our own would do).
/// Flushes of several nodes then write `token_usage` one after another, so the fast path's
/// `UPDATE`, which locks rows in whatever order its plan visits them, cannot deadlock with another
/// node's flush. A flush chunk takes milliseconds, so nodes wait little.
const USAGE_FLUSH_LOCK: i64 = 0x6c6b_7573_6167_6531; // "lkusage1"

/// The fast path of a usage flush, one statement for the tokens whose row needs no merging in
/// Rust: the delta saw no address, or one address that is already the row's most recent and is
/// now newer than every stored use (then only its `last_seen_at` moves, and the order of the
/// list stays what [`merge_client_ips`] gives). The current hour's count is added to, or started
/// afresh when the delta's hour is later; the hour moved out of the row (or the delta's hour when
/// it is older than the row's) comes back in `rolled_hour`/`rolled_count` for
/// `token_usage_hourly`. Rows that do not qualify are left alone.
///
/// It answers only what the flush must act on: a row per token that was not updated (its hour
/// NULL), for the locked path, and a row per token whose hour rolled. In steady use that is
/// nearly nothing, where returning every updated row sent back (and decoded) a row per token.
const USAGE_FAST_UPDATE: &str = "WITH up AS (UPDATE token_usage AS c SET \
     request_count = c.request_count + u.n, \
     last_used_at = GREATEST(c.last_used_at, u.last_used_at), \
     client_ips = CASE WHEN u.ip IS NULL THEN c.client_ips \
       ELSE jsonb_set(c.client_ips, '{0,last_seen_at}', to_jsonb(u.seen)) END, \
     hour = GREATEST(c.hour, u.hour), \
     hour_count = CASE WHEN c.hour IS NULL OR c.hour = u.hour THEN c.hour_count + u.hour_n \
       WHEN c.hour < u.hour THEN u.hour_n ELSE c.hour_count END, \
     rolled_hour = CASE WHEN c.hour < u.hour AND c.hour_count <> 0 THEN c.hour \
       WHEN c.hour > u.hour THEN u.hour END, \
     rolled_count = CASE WHEN c.hour < u.hour THEN c.hour_count \
       WHEN c.hour > u.hour THEN u.hour_n ELSE 0 END \
     FROM unnest($1::uuid[], $2::bigint[], $3::timestamptz[], $4::text[], $5::timestamptz[], \
       $6::timestamptz[], $7::bigint[]) \
       AS u(id, n, last_used_at, ip, seen, hour, hour_n) \
     WHERE c.token_id = u.id AND (u.ip IS NULL \
       OR (c.client_ips->0->>'ip' = u.ip AND c.last_used_at < u.seen)) \
     RETURNING c.token_id, c.rolled_hour, c.rolled_count) \
     SELECT token_id, rolled_hour, rolled_count FROM up WHERE rolled_hour IS NOT NULL \
     UNION ALL \
     SELECT id, NULL, 0 FROM unnest($1::uuid[]) AS x(id) \
     WHERE NOT EXISTS (SELECT FROM up WHERE up.token_id = x.id)";

impl PostgresStore {
    /// A transaction holding [`USAGE_FLUSH_LOCK`], for writes to `token_usage` that lock rows
    /// in no fixed order.
    ///
    /// Its statements run their generic plans (an index lookup per token). A plan made for a
    /// chunk's actual arrays reckons thousands of rows and hashes the whole `token_usage` table
    /// instead, spilling to disk: under the cycling load that cost PostgreSQL 13.7 µs of CPU a
    /// verification against 10.6 µs with the generic plans.
    async fn begin_usage_write(&self) -> StoreResult<Transaction<'static, Postgres>> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "SELECT pg_advisory_xact_lock($1), \
             set_config('plan_cache_mode', 'force_generic_plan', true)",
        )
        .bind(USAGE_FLUSH_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(other)?;
        Ok(tx)
    }

    /// Adds one chunk of usage (tokens in id order) in one transaction, holding
    /// [`USAGE_FLUSH_LOCK`]. Most tokens take [`USAGE_FAST_UPDATE`]; the others (used for the
    /// first time, from a new address, or late) take the locked path: read and lock their rows,
    /// merge in Rust, write. The current hour's count lives in the usage row, so
    /// `token_usage_hourly` is written only when a token's hour changes (once an hour per token
    /// at most), not on every flush. Usage of a token that is gone is skipped.
    async fn add_usage_chunk(&self, chunk: &[UsageDelta]) -> StoreResult<()> {
        let mut tx = self.begin_usage_write().await?;
        let n = chunk.len();
        let (mut ids, mut counts, mut last_used) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut ip, mut seen) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut hour, mut hour_n) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for d in chunk {
            ids.push(d.token_id);
            counts.push(d.count);
            last_used.push(micros(d.last_used_at));
            let (one_ip, one_seen) = match d.ips.as_slice() {
                [] => (None, None),
                [one] => (Some(one.ip.clone()), Some(micros(one.last_seen_at))),
                // No stored address is empty: several addresses take the locked path.
                _ => (Some(String::new()), None),
            };
            ip.push(one_ip);
            seen.push(one_seen);
            let last = d.hours.last();
            hour.push(last.map(|h| micros(h.hour)));
            hour_n.push(last.map_or(0, |h| h.count));
        }
        let updated = sqlx::query(USAGE_FAST_UPDATE)
            .bind(&ids)
            .bind(&counts)
            .bind(&last_used)
            .bind(&ip)
            .bind(&seen)
            .bind(&hour)
            .bind(&hour_n)
            .fetch_all(&mut *tx)
            .await
            .map_err(other)?;
        let mut past = std::collections::BTreeMap::<(Uuid, DateTime<Utc>), i64>::new();
        let mut not_done = std::collections::HashSet::new();
        for row in &updated {
            let id: Uuid = row.try_get(0).map_err(other)?;
            match row.try_get::<Option<DateTime<Utc>>, _>(1).map_err(other)? {
                Some(h) => {
                    *past.entry((id, h)).or_default() += row.try_get::<i64, _>(2).map_err(other)?
                }
                None => {
                    not_done.insert(id);
                }
            }
        }
        let mut rest = Vec::new();
        for d in chunk {
            if not_done.contains(&d.token_id) {
                rest.push(d);
            } else {
                // The fast path counted the delta's last hour; its earlier ones are past.
                for h in d.hours.iter().rev().skip(1) {
                    *past.entry((d.token_id, h.hour)).or_default() += h.count;
                }
            }
        }
        if !rest.is_empty() {
            self.add_usage_locked(&mut tx, &rest, &mut past).await?;
        }
        if !past.is_empty() {
            let (mut hour_ids, mut hours, mut hour_counts) = (vec![], vec![], vec![]);
            for ((id, h), c) in past {
                hour_ids.push(id);
                hours.push(micros(h));
                hour_counts.push(c);
            }
            // One row per (token, hour), in key order like the row locks.
            sqlx::query(
                "INSERT INTO token_usage_hourly (token_id, hour, count) \
                 SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::bigint[]) \
                 ON CONFLICT (token_id, hour) DO UPDATE \
                 SET count = token_usage_hourly.count + excluded.count",
            )
            .bind(&hour_ids)
            .bind(&hours)
            .bind(&hour_counts)
            .execute(&mut *tx)
            .await
            .map_err(other)?;
        }
        tx.commit().await.map_err(other)
    }

    /// The locked path of [`Self::add_usage_chunk`]: reads and locks the usage rows of `chunk`'s
    /// tokens (creating those used for the first time), merges the addresses and hours in Rust,
    /// and writes the rows. Counts of earlier hours go to `past`.
    async fn add_usage_locked(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        chunk: &[&UsageDelta],
        past: &mut std::collections::BTreeMap<(Uuid, DateTime<Utc>), i64>,
    ) -> StoreResult<()> {
        let ids: Vec<Uuid> = chunk.iter().map(|d| d.token_id).collect();
        let mut stored = usage_rows_for_update(tx, &ids).await?;
        // Tokens used for the first time get their row here; then they are locked and read like
        // the others (a concurrent flush may have made the row first, with addresses to merge).
        let missing: Vec<Uuid> = ids
            .iter()
            .filter(|id| !stored.contains_key(id))
            .copied()
            .collect();
        if !missing.is_empty() {
            sqlx::query(
                "INSERT INTO token_usage (token_id) \
                 SELECT id FROM tokens WHERE id = ANY($1) ORDER BY id ON CONFLICT DO NOTHING",
            )
            .bind(&missing)
            .execute(&mut **tx)
            .await
            .map_err(other)?;
            stored.extend(usage_rows_for_update(tx, &missing).await?);
        }
        let n = stored.len();
        let (mut found, mut counts, mut last_used, mut ips) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut current_hours, mut current_counts) =
            (Vec::with_capacity(n), Vec::with_capacity(n));
        for d in chunk {
            // A token that is gone has no row: nothing to count.
            let Some(mut known) = stored.remove(&d.token_id) else {
                continue;
            };
            merge_client_ips(&mut known.ips, &d.ips);
            let mut earlier = std::collections::BTreeMap::new();
            let (hour, count) = roll_hours(known.hour, known.hour_count, &d.hours, &mut earlier);
            found.push(d.token_id);
            counts.push(d.count);
            last_used.push(micros(d.last_used_at));
            ips.push(ips_to_json(&known.ips));
            current_hours.push(hour.map(micros));
            current_counts.push(count);
            for (h, c) in earlier {
                *past.entry((d.token_id, h)).or_default() += c;
            }
        }
        if !found.is_empty() {
            // The rows are locked: the hour and its count are written as computed here.
            sqlx::query(
                "UPDATE token_usage AS c SET request_count = c.request_count + u.n, \
                 last_used_at = GREATEST(c.last_used_at, u.last_used_at), client_ips = u.ips, \
                 hour = u.hour, hour_count = u.hour_count \
                 FROM unnest($1::uuid[], $2::bigint[], $3::timestamptz[], $4::jsonb[], \
                 $5::timestamptz[], $6::bigint[]) \
                 AS u(id, n, last_used_at, ips, hour, hour_count) WHERE c.token_id = u.id",
            )
            .bind(&found)
            .bind(&counts)
            .bind(&last_used)
            .bind(&ips)
            .bind(&current_hours)
            .bind(&current_counts)
            .execute(&mut **tx)
            .await
            .map_err(other)?;
        }
        Ok(())
    }

    /// Connects to the database at `url` (`postgres://` or `postgresql://`) with a pool shaped by
    /// `pool`, and applies the migrations (see the module docs for how concurrent nodes agree).
    /// Every connection uses TLS as the URL's `sslmode` says (libpq's `prefer` when it says
    /// nothing), trusting the system's authorities and those of `sslrootcert`.
    ///
    /// At start it waits up to `pool.acquire_timeout` for the database to take a connection
    /// (one starting beside the node), then gives up.
    ///
    /// # Errors
    /// A malformed URL, a database that refused the login or did not answer in time (with the
    /// reason: refused, unknown host, wrong password...), or a failed migration.
    pub async fn connect(url: &str, pool: &PoolOptions) -> anyhow::Result<Self> {
        let mut options =
            PgConnectOptions::from_str(url).context("malformed postgres database URL")?;
        if options.get_application_name().is_none() {
            options = options.application_name("latchkey");
        }
        let target = describe(&options);

        // A one-connection pool of its own: closing it ends the session, which releases the
        // migration lock whatever happened.
        let migrations = match PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(pool.acquire_timeout)
            .connect_with(options.clone())
            .await
        {
            Ok(migrations) => migrations,
            // sqlx retries a connection that fails to open until the timeout and then says only
            // that it timed out: one more attempt gives the reason.
            Err(sqlx::Error::PoolTimedOut) => {
                let why =
                    match <sqlx::PgConnection as sqlx::Connection>::connect_with(&options).await {
                        Err(e) => connect_error(e),
                        Ok(connection) => {
                            let _ = sqlx::Connection::close(connection).await;
                            anyhow::anyhow!("no connection opened in time")
                        }
                    };
                return Err(why.context(format!(
                    "connecting to PostgreSQL {target} (gave up after {} s)",
                    pool.acquire_timeout.as_secs()
                )));
            }
            Err(e) => {
                return Err(connect_error(e).context(format!("connecting to PostgreSQL {target}")));
            }
        };
        let migrated = sqlx::migrate!("./migrations/postgres")
            .run(&migrations)
            .await
            .context("applying PostgreSQL migrations");
        migrations.close().await;
        migrated?;

        let pool = PgPoolOptions::new()
            // sqlx's default pings every connection as it leaves the pool: a round trip to the
            // database before each query, which doubled the round trips of the verify path's
            // batched reads (cycling on PostgreSQL: 43,000 verifications a second with it,
            // 47,500 without). Only a connection that sat idle for a while is pinged now;
            // one in steady use was answering a moment ago.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IF_IDLE_FOR {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .max_connections(pool.max_connections.max(1))
            .min_connections(pool.min_connections.min(pool.max_connections))
            .acquire_timeout(pool.acquire_timeout)
            .idle_timeout(pool.idle_timeout)
            .max_lifetime(pool.max_lifetime)
            .connect_with(options.clone())
            .await
            .with_context(|| format!("opening a PostgreSQL pool to {target}"))?;
        Ok(Self { pool, options })
    }

    /// A transaction on a pooled connection. A connection the database dropped while it sat in
    /// the pool (a restart, a failover) fails its `BEGIN`, before anything was done on it, so the
    /// next connection is tried, as the verify read does: after a restart, writes do not fail
    /// once per pooled connection.
    async fn begin(&self) -> StoreResult<Transaction<'static, Postgres>> {
        self.on_a_live_connection(|| self.pool.begin()).await
    }

    /// Runs `op` again on the next connection while it fails because the database dropped the
    /// one it got: at most once per connection the pool can hold, and then on a new one. `op` is
    /// one statement that is safe to repeat (a read, a `BEGIN`, or a write whose second run
    /// changes nothing more: a last-seen time that never goes back, the purge of expired
    /// sessions); never a statement inside a transaction.
    async fn on_a_live_connection<T, F, Fut>(&self, mut op: F) -> StoreResult<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
    {
        let mut attempts = self.pool.options().get_max_connections();
        loop {
            match op().await {
                Err(e) if attempts > 0 && super::sqlx_connection_lost(&e) => attempts -= 1,
                res => return res.map_err(other),
            }
        }
    }

    /// [`Self::on_a_live_connection`] for a query made by a `QueryBuilder`, which builds only
    /// once: `make` builds it afresh for each attempt.
    async fn fetch_all_built(
        &self,
        make: impl Fn() -> sqlx::QueryBuilder<Postgres>,
    ) -> StoreResult<Vec<PgRow>> {
        self.on_a_live_connection(|| {
            let mut qb = make();
            async move { qb.build().fetch_all(&self.pool).await }
        })
        .await
    }

    /// Connects a listener on its own single-connection pool and subscribes it.
    async fn listen(&self) -> Result<PgListener, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(
                self.options
                    .clone()
                    .application_name(LISTENER_APPLICATION_NAME),
            );
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.ignore_pool_close_event(true);
        listener.listen(INVALIDATION_CHANNEL).await?;
        Ok(listener)
    }
}

/// An error connecting, for the operator starting a node. sqlx's text of an error the database
/// returned repeats it and ends with a line of PostgreSQL's C source (`at line 334`), which reads
/// as if it were in the operator's configuration: this gives its message and SQLSTATE. A peer
/// that closed before the first answer ([`super::SSL_REQUEST_UNANSWERED`] `0x00`) is said so.
/// Other errors stay as they are (`error::one_line` says a repeated cause once).
fn connect_error(e: sqlx::Error) -> anyhow::Error {
    match e {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => anyhow::anyhow!("{} (SQLSTATE {code})", db.message()),
            None => anyhow::anyhow!("{}", db.message()),
        },
        sqlx::Error::Protocol(msg)
            if msg
                .strip_prefix(super::SSL_REQUEST_UNANSWERED)
                .is_some_and(|rest| rest.starts_with(": 0x00")) =>
        {
            anyhow::anyhow!(
                "the server closed the connection before answering (is it PostgreSQL, or a proxy \
                 with no database behind it?)"
            )
        }
        other => other.into(),
    }
}

/// Host, port and database, for error messages (never the password).
fn describe(o: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        o.get_host(),
        o.get_port(),
        o.get_database().unwrap_or("(default)")
    )
}

async fn insert_events(
    tx: &mut Transaction<'_, Postgres>,
    events: &[AuditRecord],
) -> StoreResult<()> {
    for e in events {
        sqlx::query(
            "INSERT INTO audit_events (id, org_id, occurred_at, actor, action, token_id, ip, \
             user_agent, details) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(e.id)
        .bind(e.org_id)
        .bind(micros(e.occurred_at))
        .bind(&e.actor)
        .bind(&e.action)
        .bind(e.token_id)
        .bind(&e.ip)
        .bind(&e.user_agent)
        .bind(&e.details)
        .execute(&mut **tx)
        .await
        .map_err(other)?;
    }
    Ok(())
}

/// Publishes that these tokens changed; delivered to every listening node when `tx` commits.
async fn notify(tx: &mut Transaction<'_, Postgres>, ids: &[Uuid]) -> StoreResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_notify($1, id::text) FROM unnest($2::uuid[]) AS t(id)")
        .bind(INVALIDATION_CHANNEL)
        .bind(ids)
        .execute(&mut **tx)
        .await
        .map_err(other)?;
    Ok(())
}

/// Share-locks the row of the user owning a token to be inserted, and refuses with
/// `OwnerDisabled` if that user is disabled or missing. [`Store::update_user`] updates the user
/// row before it revokes the user's tokens, which takes a lock that conflicts with this one, so
/// the two serialize: an insert that locked first commits before the update's revoke runs (whose
/// statement then sees the new token), and one that waited reads the committed update (READ
/// COMMITTED: `FOR SHARE` returns the newest version of the row it waited for). Concurrent
/// inserts for one user share the lock and do not wait for each other.
async fn lock_owner(tx: &mut Transaction<'_, Postgres>, owner: Option<Uuid>) -> StoreResult<()> {
    let Some(owner) = owner else {
        return Ok(());
    };
    let row = sqlx::query("SELECT disabled_at IS NULL FROM users WHERE id = $1 FOR SHARE")
        .bind(owner)
        .fetch_optional(&mut **tx)
        .await
        .map_err(other)?;
    match row.map(|r| r.try_get::<bool, _>(0)).transpose() {
        Ok(Some(true)) => Ok(()),
        Ok(_) => Err(StoreError::OwnerDisabled),
        Err(e) => Err(other(e)),
    }
}

/// Inserts a token, after [`lock_owner`] (so `OwnerDisabled` for a disabled or missing owner).
async fn insert_token_row(
    tx: &mut Transaction<'_, Postgres>,
    t: &TokenRecord,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    lock_owner(tx, t.user_id).await?;
    // A token that expired still holds its name in `live_name`; release it first.
    sqlx::query(
        "UPDATE tokens SET live_name = NULL WHERE org_id = $1 AND live_name = $2 \
         AND expires_at IS NOT NULL AND expires_at <= $3",
    )
    .bind(t.org_id)
    .bind(&t.name)
    .bind(micros(now))
    .execute(&mut **tx)
    .await
    .map_err(other)?;
    let live =
        t.revoked_at.is_none() && t.replaced_by.is_none() && t.expires_at.is_none_or(|x| x > now);
    let res = sqlx::query(
        "INSERT INTO tokens (id, org_id, name, live_name, kind, verifier, permissions, created_at, \
         created_by, expires_at, revoked_at, replaced_by, metadata, family_id, disabled_at, \
         user_id, lookup) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
    )
    .bind(t.id)
    .bind(t.org_id)
    .bind(&t.name)
    .bind(live.then_some(&t.name))
    .bind(i16::try_from(t.kind.code()).context("token kind out of range")?)
    .bind(&t.verifier)
    .bind(t.permissions.bits() as i64)
    .bind(micros(t.created_at))
    .bind(&t.created_by)
    .bind(t.expires_at.map(micros))
    .bind(t.revoked_at.map(micros))
    .bind(t.replaced_by)
    .bind(&t.metadata)
    .bind(t.family_id)
    .bind(t.disabled_at.map(micros))
    .bind(t.user_id)
    .bind(&t.lookup)
    .execute(&mut **tx)
    .await;
    match res {
        Ok(_) if t.request_count == 0 && t.last_used_at.is_none() && t.client_ips.is_empty() => {
            Ok(())
        }
        // An imported key brings the usage its source counted.
        Ok(_) => sqlx::query(
            "INSERT INTO token_usage (token_id, request_count, last_used_at, client_ips) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(t.id)
        .bind(t.request_count)
        .bind(t.last_used_at.map(micros))
        .bind(ips_to_json(&t.client_ips))
        .execute(&mut **tx)
        .await
        .map(|_| ())
        .map_err(other),
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Err(StoreError::Conflict(
            format!("a live token named {:?} already exists in this org", t.name),
        )),
        Err(e) => Err(other(e)),
    }
}

/// Revokes the live tokens of `user_id` that `which` names at `now`, writes `event` for each (a
/// new id, its `token_id` set) and announces them. Returns their ids, in id order.
async fn revoke_owned(
    tx: &mut Transaction<'_, Postgres>,
    user_id: Uuid,
    which: RevokeOwned,
    now: DateTime<Utc>,
    event: Option<&AuditRecord>,
) -> StoreResult<Vec<Uuid>> {
    // Rows are locked in id order, like `add_usage` and `revoke_family` do, so none of them can
    // deadlock with another.
    let rows = match which {
        RevokeOwned::None => return Ok(Vec::new()),
        RevokeOwned::All => sqlx::query(
            "UPDATE tokens SET revoked_at = $1, live_name = NULL \
             WHERE id IN (SELECT id FROM tokens WHERE user_id = $2 AND revoked_at IS NULL \
             ORDER BY id FOR UPDATE) AND revoked_at IS NULL RETURNING id",
        )
        .bind(micros(now))
        .bind(user_id)
        .fetch_all(&mut **tx)
        .await
        .map_err(other)?,
        RevokeOwned::Exceeding(allowed) => sqlx::query(
            "UPDATE tokens SET revoked_at = $1, live_name = NULL \
             WHERE id IN (SELECT id FROM tokens WHERE user_id = $2 AND revoked_at IS NULL \
             AND permissions & ~$3::bigint <> 0 ORDER BY id FOR UPDATE) \
             AND revoked_at IS NULL RETURNING id",
        )
        .bind(micros(now))
        .bind(user_id)
        .bind(allowed.bits() as i64)
        .fetch_all(&mut **tx)
        .await
        .map_err(other)?,
    };
    let mut ids = uuids(&rows)?;
    ids.sort_unstable();
    if let Some(event) = event {
        let events: Vec<AuditRecord> = ids
            .iter()
            .map(|id| per_item_event(event, Some(*id), None))
            .collect();
        insert_events(tx, &events).await?;
    }
    notify(tx, &ids).await?;
    Ok(ids)
}

/// Deletes the sessions of `user_id` that `which` names and writes `event` for each (a new id,
/// `"session_id"` added to its details). Returns how many it deleted.
async fn delete_sessions(
    tx: &mut Transaction<'_, Postgres>,
    user_id: Uuid,
    which: EndSessions,
    event: Option<&AuditRecord>,
) -> StoreResult<u64> {
    let query = match which {
        EndSessions::None => return Ok(0),
        EndSessions::All => {
            sqlx::query("DELETE FROM sessions WHERE user_id = $1 RETURNING id").bind(user_id)
        }
        EndSessions::One(id) => {
            sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id = $2 RETURNING id")
                .bind(user_id)
                .bind(id)
        }
        EndSessions::AllBut(id) => {
            sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id <> $2 RETURNING id")
                .bind(user_id)
                .bind(id)
        }
    };
    let rows = query.fetch_all(&mut **tx).await.map_err(other)?;
    let mut ids = uuids(&rows)?;
    ids.sort_unstable();
    if let Some(event) = event {
        let events: Vec<AuditRecord> = ids
            .iter()
            .map(|id| per_item_event(event, None, Some(*id)))
            .collect();
        insert_events(tx, &events).await?;
    }
    Ok(ids.len() as u64)
}

#[async_trait]
impl Store for PostgresStore {
    async fn ping(&self) -> StoreResult<()> {
        self.on_a_live_connection(|| sqlx::query("SELECT 1").execute(&self.pool))
            .await?;
        Ok(())
    }

    async fn org_count(&self) -> StoreResult<i64> {
        let row = self
            .on_a_live_connection(|| {
                sqlx::query("SELECT COUNT(*) AS n FROM orgs").fetch_one(&self.pool)
            })
            .await?;
        row.try_get("n").map_err(other)
    }

    async fn get_org(&self, id: Uuid) -> StoreResult<Option<OrgRecord>> {
        let row = self
            .on_a_live_connection(|| {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {ORG_COLUMNS} FROM orgs WHERE id = $1"
                )))
                .bind(id)
                .fetch_optional(&self.pool)
            })
            .await?;
        Ok(row.as_ref().map(org_from_row).transpose()?)
    }

    async fn find_org_by_name(&self, name: &str) -> StoreResult<Option<OrgRecord>> {
        let row = self
            .on_a_live_connection(|| {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {ORG_COLUMNS} FROM orgs WHERE name = $1"
                )))
                .bind(name)
                .fetch_optional(&self.pool)
            })
            .await?;
        Ok(row.as_ref().map(org_from_row).transpose()?)
    }

    async fn create_org(
        &self,
        org: &OrgRecord,
        first_token: Option<&TokenRecord>,
        events: &[AuditRecord],
    ) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        let res = sqlx::query(
            "INSERT INTO orgs (id, name, created_at, max_ttl_seconds, default_ttl_seconds) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(org.id)
        .bind(&org.name)
        .bind(micros(org.created_at))
        .bind(org.max_ttl_seconds)
        .bind(org.default_ttl_seconds)
        .execute(&mut *tx)
        .await;
        match res {
            Ok(_) => {}
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                return Err(StoreError::Conflict(format!(
                    "an org named {:?} already exists",
                    org.name
                )));
            }
            Err(e) => return Err(other(e)),
        }
        if let Some(t) = first_token {
            insert_token_row(&mut tx, t, org.created_at).await?;
        }
        insert_events(&mut tx, events).await?;
        tx.commit().await.map_err(other)
    }

    async fn insert_token(
        &self,
        token: &TokenRecord,
        events: &[AuditRecord],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        insert_token_row(&mut tx, token, now).await?;
        insert_events(&mut tx, events).await?;
        tx.commit().await.map_err(other)
    }

    async fn get_token(&self, id: Uuid) -> StoreResult<Option<TokenRecord>> {
        let row = self
            .on_a_live_connection(|| {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {TOKEN_COLUMNS} FROM {TOKEN_ROWS} WHERE id = $1"
                )))
                .bind(id)
                .fetch_optional(&self.pool)
            })
            .await?;
        Ok(row.as_ref().map(token_from_row).transpose()?)
    }

    async fn get_tokens_for_verify(&self, ids: &[Uuid]) -> StoreResult<Vec<VerifyRecord>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let read = || {
            sqlx::query(
                "SELECT id, org_id, kind, verifier, permissions, expires_at, user_id, \
                 revoked_at IS NOT NULL OR disabled_at IS NOT NULL AS blocked \
                 FROM tokens WHERE id = ANY($1)",
            )
            .bind(ids)
            .fetch_all(&self.pool)
        };
        // A connection in steady use is not pinged before a query (see `connect`): one that the
        // database dropped a moment ago fails its read, and is discarded.
        let rows = self.on_a_live_connection(read).await?;
        rows.iter()
            // By position, in the SELECT's order: every cache miss decodes a row, and a name is
            // a lookup per column.
            .map(|row| -> anyhow::Result<VerifyRecord> {
                let kind: i16 = row.try_get(2)?;
                Ok(VerifyRecord {
                    id: row.try_get(0)?,
                    org_id: row.try_get(1)?,
                    kind: TokenKind::from_code(i64::from(kind))
                        .context("unknown token kind in database")?,
                    verifier: row.try_get(3)?,
                    permissions: Permissions::from_bits(row.try_get::<i64, _>(4)? as u64),
                    expires_at: row.try_get(5)?,
                    user_id: row.try_get(6)?,
                    blocked: row.try_get(7)?,
                })
            })
            .collect::<anyhow::Result<_>>()
            .map_err(StoreError::Other)
    }

    async fn find_lookup(&self, lookup: &str) -> StoreResult<Option<Uuid>> {
        let row = self
            .on_a_live_connection(|| {
                sqlx::query("SELECT id FROM tokens WHERE lookup = $1")
                    .bind(lookup)
                    .fetch_optional(&self.pool)
            })
            .await?;
        row.map(|r| r.try_get::<Uuid, _>(0))
            .transpose()
            .map_err(other)
    }

    async fn any_lookup_in(&self, start: &str, end: &str) -> StoreResult<bool> {
        let row = self
            .on_a_live_connection(|| {
                sqlx::query(
                    "SELECT EXISTS (SELECT 1 FROM tokens WHERE lookup >= $1 AND lookup < $2)",
                )
                .bind(start)
                .bind(end)
                .fetch_one(&self.pool)
            })
            .await?;
        row.try_get::<bool, _>(0).map_err(other)
    }

    async fn import_tokens(
        &self,
        rows: &[ImportRow],
        commit: bool,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<ImportStatus>> {
        let mut tx = self.begin().await?;
        let mut statuses = Vec::with_capacity(rows.len());
        for row in rows {
            let t = &row.token;
            let by_lookup = sqlx::query("SELECT id, org_id FROM tokens WHERE lookup = $1")
                .bind(&t.lookup)
                .fetch_optional(&mut *tx)
                .await
                .map_err(other)?;
            if let Some(found) = by_lookup {
                let id: Uuid = found.try_get(0).map_err(other)?;
                let org: Uuid = found.try_get(1).map_err(other)?;
                statuses.push(if org == t.org_id && (id == t.id || !row.id_given) {
                    ImportStatus::AlreadyPresent(id)
                } else {
                    ImportStatus::Taken
                });
                continue;
            }
            let by_id = sqlx::query("SELECT 1 FROM tokens WHERE id = $1")
                .bind(t.id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(other)?;
            if by_id.is_some() {
                statuses.push(ImportStatus::Taken);
                continue;
            }
            let live = t.revoked_at.is_none() && t.expires_at.is_none_or(|x| x > now);
            if live {
                sqlx::query(
                    "UPDATE tokens SET live_name = NULL WHERE org_id = $1 AND live_name = $2 \
                     AND expires_at IS NOT NULL AND expires_at <= $3",
                )
                .bind(t.org_id)
                .bind(&t.name)
                .bind(micros(now))
                .execute(&mut *tx)
                .await
                .map_err(other)?;
                let taken =
                    sqlx::query("SELECT 1 FROM tokens WHERE org_id = $1 AND live_name = $2")
                        .bind(t.org_id)
                        .bind(&t.name)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(other)?;
                if taken.is_some() {
                    statuses.push(ImportStatus::NameTaken);
                    continue;
                }
            }
            insert_token_row(&mut tx, t, now).await?;
            insert_events(&mut tx, std::slice::from_ref(&row.event)).await?;
            statuses.push(ImportStatus::Imported);
        }
        let refused = statuses
            .iter()
            .any(|s| matches!(s, ImportStatus::NameTaken | ImportStatus::Taken));
        if commit && !refused {
            tx.commit().await.map_err(other)?;
        }
        Ok(statuses)
    }

    async fn list_tokens(&self, q: &TokenListQuery) -> StoreResult<Vec<TokenRecord>> {
        // Only the filters that are present go into the SQL, so the planner can pick
        // tokens_org_creator, tokens_org_user or tokens_org_id and walk it backwards from the
        // cursor.
        let make = || {
            let mut qb = sqlx::QueryBuilder::<Postgres>::new(format!(
                "SELECT {TOKEN_COLUMNS} FROM {TOKEN_ROWS} WHERE org_id = "
            ));
            qb.push_bind(q.org_id);
            if let Some(v) = &q.visible_to {
                match v.user_id {
                    Some(user) => {
                        qb.push(" AND (created_by = ")
                            .push_bind(v.actor.clone())
                            .push(" OR (user_id IS NOT NULL AND user_id = ")
                            .push_bind(user)
                            .push("))");
                    }
                    None => {
                        qb.push(" AND created_by = ").push_bind(v.actor.clone());
                    }
                }
            }
            if let Some(owner) = q.owner {
                qb.push(" AND user_id = ").push_bind(owner);
            }
            if let Some(text) = &q.name_contains {
                // A substring match, not LIKE: the text may hold % or _.
                qb.push(" AND strpos(lower(name), lower(")
                    .push_bind(text.clone())
                    .push(")) > 0");
            }
            if let Some(before) = q.before_id {
                qb.push(" AND id < ").push_bind(before);
            }
            match &q.format {
                None => {}
                Some(FormatFilter::Native) => {
                    qb.push(" AND lookup IS NULL");
                }
                Some(FormatFilter::Lookup { start, end }) => {
                    qb.push(" AND lookup >= ")
                        .push_bind(start.clone())
                        .push(" AND lookup < ")
                        .push_bind(end.clone());
                }
            }
            let now = micros(q.now);
            match q.state {
                None => {}
                Some(StateFilter::Active) => {
                    qb.push(" AND revoked_at IS NULL AND disabled_at IS NULL")
                        .push(" AND (expires_at IS NULL OR expires_at > ")
                        .push_bind(now)
                        .push(")");
                }
                Some(StateFilter::Expired) => {
                    qb.push(" AND revoked_at IS NULL AND expires_at <= ")
                        .push_bind(now);
                }
                Some(StateFilter::Disabled) => {
                    qb.push(" AND revoked_at IS NULL AND disabled_at IS NOT NULL")
                        .push(" AND (expires_at IS NULL OR expires_at > ")
                        .push_bind(now)
                        .push(")");
                }
                Some(StateFilter::Revoked) => {
                    qb.push(" AND revoked_at IS NOT NULL");
                }
            }
            qb.push(" ORDER BY id DESC LIMIT ")
                .push_bind(i64::from(q.limit));
            qb
        };
        let rows = self.fetch_all_built(make).await?;
        rows.iter()
            .map(|r| token_from_row(r).map_err(StoreError::Other))
            .collect()
    }

    async fn revoke_token(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
        event: &AuditRecord,
    ) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        // One round trip: revoke, and announce it only if this statement did revoke it.
        let notified = sqlx::query(
            "WITH revoked AS (UPDATE tokens SET revoked_at = $1, live_name = NULL \
             WHERE id = $2 AND revoked_at IS NULL RETURNING id) \
             SELECT pg_notify($3, id::text) FROM revoked",
        )
        .bind(micros(now))
        .bind(id)
        .bind(INVALIDATION_CHANNEL)
        .fetch_optional(&mut *tx)
        .await
        .map_err(other)?;
        if notified.is_none() {
            return Ok(false);
        }
        insert_events(&mut tx, std::slice::from_ref(event)).await?;
        tx.commit().await.map_err(other)?;
        Ok(true)
    }

    async fn add_usage(&self, batch: Arc<[UsageDelta]>) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let deltas = combine_usage(&batch);
        // Bounded transactions, in token id order (like every other multi-row lock here), so
        // that no flush holds many row locks for long and nodes flushing at once cannot
        // deadlock. A failed chunk fails the flush: the chunks before it are committed, and
        // the service puts the whole batch back, so those would be counted twice; chunks fail
        // together in practice (the database went away), and a retry of a committed chunk is
        // what `request_count + n` cannot tell apart. The chunk size keeps that window small.
        for chunk in deltas.chunks(USAGE_CHUNK) {
            self.add_usage_chunk(chunk).await?;
        }
        Ok(())
    }

    async fn list_family(&self, family_id: Uuid) -> StoreResult<Vec<TokenRecord>> {
        let rows = self
            .on_a_live_connection(|| {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {TOKEN_COLUMNS} FROM {TOKEN_ROWS} WHERE family_id = $1 ORDER BY id"
                )))
                .bind(family_id)
                .fetch_all(&self.pool)
            })
            .await?;
        Ok(rows.iter().map(token_from_row).collect::<Result<_, _>>()?)
    }

    async fn usage_hours(
        &self,
        token_id: Uuid,
        since: DateTime<Utc>,
    ) -> StoreResult<Vec<HourCount>> {
        // The current hour is in the usage row; a node of a version before migration 0006
        // may still have written the same hour to `token_usage_hourly`, hence the sum.
        let rows = self
            .on_a_live_connection(|| {
                sqlx::query(
                    "SELECT hour, sum(count)::bigint AS count FROM ( \
               SELECT hour, count FROM token_usage_hourly WHERE token_id = $1 AND hour >= $2 \
               UNION ALL \
               SELECT hour, hour_count FROM token_usage \
               WHERE token_id = $1 AND hour >= $2 AND hour_count <> 0 \
             ) AS h GROUP BY hour ORDER BY hour",
                )
                .bind(token_id)
                .bind(micros(since))
                .fetch_all(&self.pool)
            })
            .await?;
        rows.iter()
            .map(|r| {
                Ok(HourCount {
                    hour: r.try_get("hour").map_err(other)?,
                    count: r.try_get("count").map_err(other)?,
                })
            })
            .collect()
    }

    async fn delete_usage_hours_before(&self, cutoff: DateTime<Utc>) -> StoreResult<u64> {
        // Its UPDATE locks rows in no particular order, like a flush's fast path.
        let mut tx = self.begin_usage_write().await?;
        let past = sqlx::query("DELETE FROM token_usage_hourly WHERE hour < $1")
            .bind(micros(cutoff))
            .execute(&mut *tx)
            .await
            .map_err(other)?;
        // A token idle since before the cutoff still holds its last hour in its usage row.
        let current =
            sqlx::query("UPDATE token_usage SET hour = NULL, hour_count = 0 WHERE hour < $1")
                .bind(micros(cutoff))
                .execute(&mut *tx)
                .await
                .map_err(other)?;
        tx.commit().await.map_err(other)?;
        Ok(past.rows_affected() + current.rows_affected())
    }

    async fn update_org(&self, org: &OrgRecord, event: &AuditRecord) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE orgs SET max_ttl_seconds = $1, default_ttl_seconds = $2 WHERE id = $3")
            .bind(org.max_ttl_seconds)
            .bind(org.default_ttl_seconds)
            .bind(org.id)
            .execute(&mut *tx)
            .await
            .map_err(other)?;
        insert_events(&mut tx, std::slice::from_ref(event)).await?;
        tx.commit().await.map_err(other)
    }

    async fn rotate_token(
        &self,
        old_id: Uuid,
        old_expires_at: DateTime<Utc>,
        new_token: &TokenRecord,
        events: &[AuditRecord],
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        // The owner first: locks are taken users before tokens, in the order `update_user` takes
        // them, so a rotation and a disable of its owner cannot deadlock. (`insert_token_row`
        // asks again; the transaction already holds the lock.)
        lock_owner(&mut tx, new_token.user_id).await?;
        // The old token keeps an earlier expiry if it had one.
        let res = sqlx::query(
            "UPDATE tokens SET replaced_by = $1, live_name = NULL, \
             expires_at = LEAST(COALESCE(expires_at, $2), $2) \
             WHERE id = $3 AND replaced_by IS NULL AND revoked_at IS NULL",
        )
        .bind(new_token.id)
        .bind(micros(old_expires_at))
        .bind(old_id)
        .execute(&mut *tx)
        .await
        .map_err(other)?;
        if res.rows_affected() == 0 {
            return Ok(false);
        }
        insert_token_row(&mut tx, new_token, now).await?;
        insert_events(&mut tx, events).await?;
        // The new id too: a node may remember it as missing.
        notify(&mut tx, &[old_id, new_token.id]).await?;
        tx.commit().await.map_err(other)?;
        Ok(true)
    }

    async fn revoke_family(
        &self,
        family_id: Uuid,
        now: DateTime<Utc>,
        event: &AuditRecord,
    ) -> StoreResult<Vec<Uuid>> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query(
            // Rows are locked in id order, like `add_usage` does, so the two cannot deadlock.
            "UPDATE tokens SET revoked_at = $1, live_name = NULL \
             WHERE id IN (SELECT id FROM tokens WHERE family_id = $2 AND revoked_at IS NULL \
             ORDER BY id FOR UPDATE) AND revoked_at IS NULL RETURNING id",
        )
        .bind(micros(now))
        .bind(family_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(other)?;
        let ids = uuids(&rows)?;
        insert_events(&mut tx, std::slice::from_ref(event)).await?;
        notify(&mut tx, &ids).await?;
        tx.commit().await.map_err(other)?;
        Ok(ids)
    }

    async fn set_disabled(
        &self,
        id: Uuid,
        disabled_at: Option<DateTime<Utc>>,
        event: &AuditRecord,
    ) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        let sql = if disabled_at.is_some() {
            "UPDATE tokens SET disabled_at = $1 WHERE id = $2 AND disabled_at IS NULL"
        } else {
            "UPDATE tokens SET disabled_at = $1 WHERE id = $2 AND disabled_at IS NOT NULL"
        };
        let res = sqlx::query(sql)
            .bind(disabled_at.map(micros))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(other)?;
        if res.rows_affected() == 0 {
            return Ok(false);
        }
        insert_events(&mut tx, std::slice::from_ref(event)).await?;
        notify(&mut tx, &[id]).await?;
        tx.commit().await.map_err(other)?;
        Ok(true)
    }

    async fn list_audit(&self, q: &AuditListQuery) -> StoreResult<Vec<AuditRecord>> {
        let make = || {
            let mut qb = sqlx::QueryBuilder::<Postgres>::new(format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE org_id = "
            ));
            qb.push_bind(q.org_id);
            if let Some(t) = q.token_id {
                qb.push(" AND token_id = ").push_bind(t);
            }
            if let Some(a) = &q.action {
                qb.push(" AND action = ").push_bind(a.clone());
            }
            if let Some(a) = &q.actor {
                qb.push(" AND actor = ").push_bind(a.clone());
            }
            if let Some(t) = q.since {
                qb.push(" AND occurred_at >= ").push_bind(micros(t));
            }
            if let Some(t) = q.until {
                qb.push(" AND occurred_at < ").push_bind(micros(t));
            }
            if let Some(b) = q.before_id {
                qb.push(" AND id < ").push_bind(b);
            }
            qb.push(" ORDER BY id DESC LIMIT ")
                .push_bind(i64::from(q.limit));
            qb
        };
        let rows = self.fetch_all_built(make).await?;
        rows.iter()
            .map(|r| audit_from_row(r).map_err(StoreError::Other))
            .collect()
    }

    async fn audit_after(
        &self,
        org_id: Option<Uuid>,
        after: Uuid,
        actions: &[&str],
        limit: u32,
    ) -> StoreResult<Vec<AuditRecord>> {
        let actions: Vec<String> = actions.iter().map(|a| a.to_string()).collect();
        let make = || {
            let mut qb = sqlx::QueryBuilder::<Postgres>::new(format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE id > "
            ));
            qb.push_bind(after);
            if let Some(org) = org_id {
                qb.push(" AND org_id = ").push_bind(org);
            }
            qb.push(" AND token_id IS NOT NULL AND action = ANY(")
                .push_bind(actions.clone())
                .push(") ORDER BY id LIMIT ")
                .push_bind(i64::from(limit));
            qb
        };
        let rows = self.fetch_all_built(make).await?;
        rows.iter()
            .map(|r| audit_from_row(r).map_err(StoreError::Other))
            .collect()
    }

    async fn insert_audit(&self, events: &[AuditRecord]) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        insert_events(&mut tx, events).await?;
        tx.commit().await.map_err(other)
    }

    async fn insert_user(&self, user: &UserRecord, events: &[AuditRecord]) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO users (id, org_id, email, email_key, name, role, platform_admin, \
             password_hash, created_at, created_by, last_login_at, disabled_at, setup_hash, \
             setup_expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(user.id)
        .bind(user.org_id)
        .bind(&user.email)
        .bind(email_key(&user.email))
        .bind(&user.name)
        .bind(user.role.as_str())
        .bind(user.platform_admin)
        .bind(&user.password_hash)
        .bind(micros(user.created_at))
        .bind(&user.created_by)
        .bind(user.last_login_at.map(micros))
        .bind(user.disabled_at.map(micros))
        .bind(&user.setup_hash)
        .bind(user.setup_expires_at.map(micros))
        .execute(&mut *tx)
        .await
        .map_err(user_write_error)?;
        insert_events(&mut tx, events).await?;
        tx.commit().await.map_err(other)
    }

    async fn get_user(&self, id: Uuid) -> StoreResult<Option<UserRecord>> {
        let row = self
            .on_a_live_connection(|| {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE id = $1"
                )))
                .bind(id)
                .fetch_optional(&self.pool)
            })
            .await?;
        Ok(row.as_ref().map(user_from_row).transpose()?)
    }

    async fn find_user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>> {
        let row = self
            .on_a_live_connection(|| {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE email_key = $1"
                )))
                .bind(email_key(email))
                .fetch_optional(&self.pool)
            })
            .await?;
        Ok(row.as_ref().map(user_from_row).transpose()?)
    }

    async fn find_user_by_setup_hash(&self, setup_hash: &str) -> StoreResult<Option<UserRecord>> {
        let row = self
            .on_a_live_connection(|| {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE setup_hash = $1"
                )))
                .bind(setup_hash)
                .fetch_optional(&self.pool)
            })
            .await?;
        Ok(row.as_ref().map(user_from_row).transpose()?)
    }

    async fn list_users(&self, q: &UserListQuery) -> StoreResult<Vec<UserRecord>> {
        let make = || {
            let mut qb = sqlx::QueryBuilder::<Postgres>::new(format!(
                "SELECT {USER_COLUMNS} FROM users WHERE org_id = "
            ));
            qb.push_bind(q.org_id);
            if let Some(before) = q.before_id {
                qb.push(" AND id < ").push_bind(before);
            }
            qb.push(" ORDER BY id DESC LIMIT ")
                .push_bind(i64::from(q.limit));
            qb
        };
        let rows = self.fetch_all_built(make).await?;
        rows.iter()
            .map(|r| user_from_row(r).map_err(StoreError::Other))
            .collect()
    }

    async fn count_active_admins(&self, org_id: Uuid) -> StoreResult<i64> {
        let row = self
            .on_a_live_connection(|| {
                sqlx::query(
                    "SELECT COUNT(*) AS n FROM users \
             WHERE org_id = $1 AND role = 'admin' AND disabled_at IS NULL",
                )
                .bind(org_id)
                .fetch_one(&self.pool)
            })
            .await?;
        row.try_get("n").map_err(other)
    }

    async fn update_user(
        &self,
        user: &UserRecord,
        change: UserChange<'_>,
        now: DateTime<Utc>,
        events: &[AuditRecord],
    ) -> StoreResult<Vec<Uuid>> {
        let mut tx = self.begin().await?;
        // First, and before any token: this row lock is what inserts of the user's tokens wait
        // on (see `lock_owner`), so the revoke below sees every token inserted before it.
        sqlx::query(
            "UPDATE users SET email = $1, email_key = $2, name = $3, role = $4, \
             platform_admin = $5, password_hash = $6, last_login_at = $7, disabled_at = $8, \
             setup_hash = $9, setup_expires_at = $10 WHERE id = $11",
        )
        .bind(&user.email)
        .bind(email_key(&user.email))
        .bind(&user.name)
        .bind(user.role.as_str())
        .bind(user.platform_admin)
        .bind(&user.password_hash)
        .bind(user.last_login_at.map(micros))
        .bind(user.disabled_at.map(micros))
        .bind(&user.setup_hash)
        .bind(user.setup_expires_at.map(micros))
        .bind(user.id)
        .execute(&mut *tx)
        .await
        .map_err(user_write_error)?;
        let revoked =
            revoke_owned(&mut tx, user.id, change.revoke, now, change.revoke_event).await?;
        delete_sessions(&mut tx, user.id, change.end_sessions, change.session_event).await?;
        insert_events(&mut tx, events).await?;
        tx.commit().await.map_err(other)?;
        Ok(revoked)
    }

    async fn record_login(
        &self,
        user_id: Uuid,
        at: DateTime<Utc>,
        events: &[AuditRecord],
    ) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE users SET last_login_at = $1 WHERE id = $2")
            .bind(micros(at))
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(other)?;
        insert_events(&mut tx, events).await?;
        tx.commit().await.map_err(other)
    }

    async fn insert_session(
        &self,
        session: &SessionRecord,
        events: &[AuditRecord],
    ) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO sessions (id, secret_hash, user_id, org_id, created_at, last_seen_at, \
             expires_at, ip, user_agent) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(session.id)
        .bind(&session.secret_hash)
        .bind(session.user_id)
        .bind(session.org_id)
        .bind(micros(session.created_at))
        .bind(micros(session.last_seen_at))
        .bind(micros(session.expires_at))
        .bind(&session.ip)
        .bind(&session.user_agent)
        .execute(&mut *tx)
        .await
        .map_err(other)?;
        sqlx::query("UPDATE users SET last_login_at = $1 WHERE id = $2")
            .bind(micros(session.created_at))
            .bind(session.user_id)
            .execute(&mut *tx)
            .await
            .map_err(other)?;
        insert_events(&mut tx, events).await?;
        tx.commit().await.map_err(other)
    }

    async fn get_session(&self, secret_hash: &str) -> StoreResult<Option<SessionRecord>> {
        let row = self
            .on_a_live_connection(|| {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions WHERE secret_hash = $1"
                )))
                .bind(secret_hash)
                .fetch_optional(&self.pool)
            })
            .await?;
        Ok(row.as_ref().map(session_from_row).transpose()?)
    }

    async fn touch_session(&self, id: Uuid, at: DateTime<Utc>) -> StoreResult<()> {
        // Never backwards: two requests of one session may finish out of order.
        self.on_a_live_connection(|| {
            sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id = $2 AND last_seen_at < $1")
                .bind(micros(at))
                .bind(id)
                .execute(&self.pool)
        })
        .await?;
        Ok(())
    }

    async fn list_sessions(&self, user_id: Uuid) -> StoreResult<Vec<SessionRecord>> {
        let rows = self
            .on_a_live_connection(|| {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = $1 ORDER BY id DESC"
                )))
                .bind(user_id)
                .fetch_all(&self.pool)
            })
            .await?;
        rows.iter()
            .map(|r| session_from_row(r).map_err(StoreError::Other))
            .collect()
    }

    async fn end_sessions(
        &self,
        user_id: Uuid,
        which: EndSessions,
        event: Option<&AuditRecord>,
    ) -> StoreResult<u64> {
        if which == EndSessions::None {
            return Ok(0);
        }
        let mut tx = self.begin().await?;
        let ended = delete_sessions(&mut tx, user_id, which, event).await?;
        tx.commit().await.map_err(other)?;
        Ok(ended)
    }

    async fn delete_expired_sessions(
        &self,
        now: DateTime<Utc>,
        idle_cutoff: DateTime<Utc>,
    ) -> StoreResult<u64> {
        let res = self
            .on_a_live_connection(|| {
                sqlx::query("DELETE FROM sessions WHERE expires_at <= $1 OR last_seen_at < $2")
                    .bind(micros(now))
                    .bind(micros(idle_cutoff))
                    .execute(&self.pool)
            })
            .await?;
        Ok(res.rows_affected())
    }

    async fn count_live_sessions(
        &self,
        now: DateTime<Utc>,
        idle_cutoff: DateTime<Utc>,
    ) -> StoreResult<i64> {
        let row = self
            .on_a_live_connection(|| {
                sqlx::query(
                    "SELECT COUNT(*) AS n FROM sessions \
                     WHERE expires_at > $1 AND last_seen_at >= $2",
                )
                .bind(micros(now))
                .bind(micros(idle_cutoff))
                .fetch_one(&self.pool)
            })
            .await?;
        row.try_get("n").map_err(other)
    }

    /// Listens on a dedicated connection. Each notification becomes `Invalidation::Token`. When
    /// the connection is lost (an error, a reset, or no answer to a probe after 30 s of silence),
    /// the task reconnects (backing off up to 5 s) and, once it listens again, sends
    /// `Invalidation::All`, since changes made meanwhile were not heard. The task ends when the
    /// receiver is dropped.
    async fn invalidations(&self) -> StoreResult<Option<mpsc::Receiver<Invalidation>>> {
        let listener = self
            .listen()
            .await
            .context("listening for cache invalidations")?;
        let (tx, rx) = mpsc::channel(1024);
        let store = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = relay(store, listener, tx.clone()) => {}
                () = tx.closed() => {}
            }
        });
        Ok(Some(rx))
    }
}

/// After this long without a notification, the listener checks that its connection still
/// answers: a connection cut without a reset (a silent network failure) is otherwise never noticed.
const IDLE_PROBE: Duration = Duration::from_secs(30);
/// How long that check may take before the connection is considered lost.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Forwards notifications to `tx` until it is closed, re-establishing the listener when lost.
async fn relay(store: PostgresStore, mut listener: PgListener, tx: mpsc::Sender<Invalidation>) {
    loop {
        // `try_recv` is cancel-safe: a notification is never half-read when the probe wins.
        let heard = tokio::select! {
            r = listener.try_recv() => Some(r),
            () = tokio::time::sleep(IDLE_PROBE) => None,
        };
        let lost = match heard {
            Some(Ok(Some(n))) => {
                let inv = match Uuid::parse_str(n.payload()) {
                    Ok(id) => Invalidation::Token(id),
                    Err(_) => {
                        tracing::warn!("malformed cache invalidation payload; dropping the cache");
                        Invalidation::All
                    }
                };
                if tx.send(inv).await.is_err() {
                    return;
                }
                false
            }
            // The connection was lost and, reconnected at once, is listening again.
            Some(Ok(None)) => {
                tracing::warn!("cache invalidation listener reconnected; dropping the cache");
                if tx.send(Invalidation::All).await.is_err() {
                    return;
                }
                false
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cache invalidation listener lost; reconnecting");
                true
            }
            None => {
                let probe = sqlx::query("SELECT 1").execute(&mut listener);
                match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                    Ok(Ok(_)) => false,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cache invalidation listener lost; reconnecting");
                        true
                    }
                    Err(_) => {
                        tracing::warn!("cache invalidation listener not answering; reconnecting");
                        true
                    }
                }
            }
        };
        if lost {
            drop(listener);
            listener = reconnect(&store).await;
            tracing::info!("cache invalidation listener reconnected; dropping the cache");
            if tx.send(Invalidation::All).await.is_err() {
                return;
            }
        }
    }
}

/// A new listener, retrying with a backoff of up to 5 s until the database answers.
async fn reconnect(store: &PostgresStore) -> PgListener {
    let mut backoff = Duration::from_millis(100);
    loop {
        tokio::time::sleep(backoff).await;
        match store.listen().await {
            Ok(l) => return l,
            Err(e) => {
                tracing::warn!(error = %e, "cache invalidation listener still down");
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
