//! The embedded SQLite backend (sqlx): WAL journal, busy timeout, migrations applied on connect.
//! Every write transaction starts with `BEGIN IMMEDIATE`, so concurrent writers queue on the
//! busy timeout instead of failing to upgrade a read lock.

use std::str::FromStr;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::OptionalExtension;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard, mpsc, oneshot};
use uuid::Uuid;

use super::{
    AuditListQuery, AuditRecord, ClientIp, EndSessions, FormatFilter, HourCount, ImportRow,
    ImportStatus, OrgRecord, RevokeOwned, SessionRecord, StateFilter, Store, StoreError,
    StoreResult, TokenListQuery, TokenRecord, UsageDelta, UserChange, UserListQuery, UserRecord,
    VerifyRecord, merge_client_ips,
};
use crate::token::{Permissions, Role, TokenKind};

/// The SQLite store. Cheap to clone (a pool handle).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// SQLite runs one writer at a time. Queueing writers here, in order, is much faster than
    /// letting them collide on the database lock and back off in the busy handler.
    writer: Arc<Mutex<()>>,
    /// Token inserts go through the group commit (see [`group_commit`]).
    inserts: mpsc::Sender<PendingInsert>,
    /// Read connections for the verify path, driven on the calling thread (see
    /// [`SqliteStore::read_for_verify`]).
    readers: Arc<Vec<std::sync::Mutex<rusqlite::Connection>>>,
    /// The connection of the usage flush, driven on a blocking thread (see [`write_usage`]).
    usage: Arc<std::sync::Mutex<rusqlite::Connection>>,
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn opt_micros(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(micros)
}

fn from_micros(v: i64) -> anyhow::Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(v).context("timestamp out of range")
}

fn opt_from_micros(v: Option<i64>) -> anyhow::Result<Option<DateTime<Utc>>> {
    v.map(from_micros).transpose()
}

fn parse_uuid(s: &str) -> anyhow::Result<Uuid> {
    Uuid::parse_str(s).context("malformed uuid in database")
}

fn other(e: sqlx::Error) -> StoreError {
    StoreError::from_sqlx(e)
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

/// Client addresses as stored: timestamps in microseconds like every other column.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredIp {
    ip: String,
    last_seen_at: i64,
}

fn ips_from_json(s: &str) -> anyhow::Result<Vec<ClientIp>> {
    let stored: Vec<StoredIp> = serde_json::from_str(s).context("malformed client_ips")?;
    stored
        .into_iter()
        .map(|i| {
            Ok(ClientIp {
                ip: i.ip,
                last_seen_at: from_micros(i.last_seen_at)?,
            })
        })
        .collect()
}

fn stored_ips(ips: &[ClientIp]) -> Vec<StoredIp> {
    ips.iter()
        .map(|i| StoredIp {
            ip: i.ip.clone(),
            last_seen_at: micros(i.last_seen_at),
        })
        .collect()
}

fn to_json<T: serde::Serialize>(v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Other(e.into()))
}

fn token_from_row(row: &SqliteRow) -> anyhow::Result<TokenRecord> {
    let kind: i64 = row.try_get("kind")?;
    let metadata: Option<String> = row.try_get("metadata")?;
    let replaced_by: Option<String> = row.try_get("replaced_by")?;
    Ok(TokenRecord {
        id: parse_uuid(&row.try_get::<String, _>("id")?)?,
        org_id: parse_uuid(&row.try_get::<String, _>("org_id")?)?,
        name: row.try_get("name")?,
        kind: TokenKind::from_code(kind).context("unknown token kind in database")?,
        verifier: row.try_get("verifier")?,
        permissions: Permissions::from_bits(row.try_get::<i64, _>("permissions")? as u64),
        created_at: from_micros(row.try_get("created_at")?)?,
        created_by: row.try_get("created_by")?,
        expires_at: opt_from_micros(row.try_get("expires_at")?)?,
        revoked_at: opt_from_micros(row.try_get("revoked_at")?)?,
        last_used_at: opt_from_micros(row.try_get("last_used_at")?)?,
        request_count: row.try_get("request_count")?,
        replaced_by: replaced_by.as_deref().map(parse_uuid).transpose()?,
        metadata: metadata
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .context("malformed metadata in database")?,
        family_id: parse_uuid(&row.try_get::<String, _>("family_id")?)?,
        disabled_at: opt_from_micros(row.try_get("disabled_at")?)?,
        client_ips: ips_from_json(&row.try_get::<String, _>("client_ips")?)?,
        user_id: opt_uuid(row.try_get("user_id")?)?,
        lookup: row.try_get("lookup")?,
    })
}

fn opt_uuid(s: Option<String>) -> anyhow::Result<Option<Uuid>> {
    s.as_deref().map(parse_uuid).transpose()
}

const USER_COLUMNS: &str = "id, org_id, email, name, role, platform_admin, password_hash, \
     created_at, created_by, last_login_at, disabled_at, setup_hash, setup_expires_at";

fn user_from_row(row: &SqliteRow) -> anyhow::Result<UserRecord> {
    let role: String = row.try_get("role")?;
    Ok(UserRecord {
        id: parse_uuid(&row.try_get::<String, _>("id")?)?,
        org_id: parse_uuid(&row.try_get::<String, _>("org_id")?)?,
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        role: Role::from_name(&role).context("unknown role in database")?,
        platform_admin: row.try_get::<i64, _>("platform_admin")? != 0,
        password_hash: row.try_get("password_hash")?,
        created_at: from_micros(row.try_get("created_at")?)?,
        created_by: row.try_get("created_by")?,
        last_login_at: opt_from_micros(row.try_get("last_login_at")?)?,
        disabled_at: opt_from_micros(row.try_get("disabled_at")?)?,
        setup_hash: row.try_get("setup_hash")?,
        setup_expires_at: opt_from_micros(row.try_get("setup_expires_at")?)?,
    })
}

const SESSION_COLUMNS: &str =
    "id, secret_hash, user_id, org_id, created_at, last_seen_at, expires_at, ip, user_agent";

fn session_from_row(row: &SqliteRow) -> anyhow::Result<SessionRecord> {
    Ok(SessionRecord {
        id: parse_uuid(&row.try_get::<String, _>("id")?)?,
        secret_hash: row.try_get("secret_hash")?,
        user_id: parse_uuid(&row.try_get::<String, _>("user_id")?)?,
        org_id: parse_uuid(&row.try_get::<String, _>("org_id")?)?,
        created_at: from_micros(row.try_get("created_at")?)?,
        last_seen_at: from_micros(row.try_get("last_seen_at")?)?,
        expires_at: from_micros(row.try_get("expires_at")?)?,
        ip: row.try_get("ip")?,
        user_agent: row.try_get("user_agent")?,
    })
}

fn email_conflict(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict("a user with this email already exists".into())
        }
        e => other(e),
    }
}

/// Deletes the sessions `which` names and writes `event` (with the session's id) for each.
async fn end_sessions_in(
    tx: &mut Transaction<'_, Sqlite>,
    user_id: Uuid,
    which: EndSessions,
    event: Option<&AuditRecord>,
) -> StoreResult<u64> {
    let mut qb = QueryBuilder::<Sqlite>::new("DELETE FROM sessions WHERE user_id = ");
    qb.push_bind(user_id.to_string());
    match which {
        EndSessions::None => return Ok(0),
        EndSessions::All => {}
        EndSessions::One(id) => {
            qb.push(" AND id = ").push_bind(id.to_string());
        }
        EndSessions::AllBut(id) => {
            qb.push(" AND id <> ").push_bind(id.to_string());
        }
    }
    qb.push(" RETURNING id");
    let rows = qb.build().fetch_all(&mut **tx).await.map_err(other)?;
    let ids = rows
        .iter()
        .map(|r| parse_uuid(&r.try_get::<String, _>(0)?))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(template) = event {
        let events: Vec<AuditRecord> = ids
            .iter()
            .map(|id| super::per_item_event(template, None, Some(*id)))
            .collect();
        insert_events(tx, &events).await?;
    }
    Ok(ids.len() as u64)
}

fn org_from_row(row: &SqliteRow) -> anyhow::Result<OrgRecord> {
    Ok(OrgRecord {
        id: parse_uuid(&row.try_get::<String, _>("id")?)?,
        name: row.try_get("name")?,
        created_at: from_micros(row.try_get("created_at")?)?,
        max_ttl_seconds: row.try_get("max_ttl_seconds")?,
        default_ttl_seconds: row.try_get("default_ttl_seconds")?,
    })
}

fn audit_from_row(row: &SqliteRow) -> anyhow::Result<AuditRecord> {
    let token_id: Option<String> = row.try_get("token_id")?;
    Ok(AuditRecord {
        id: parse_uuid(&row.try_get::<String, _>("id")?)?,
        org_id: parse_uuid(&row.try_get::<String, _>("org_id")?)?,
        occurred_at: from_micros(row.try_get("occurred_at")?)?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        token_id: token_id.as_deref().map(parse_uuid).transpose()?,
        ip: row.try_get("ip")?,
        user_agent: row.try_get("user_agent")?,
        details: serde_json::from_str(&row.try_get::<String, _>("details")?)
            .context("malformed audit details")?,
    })
}

impl SqliteStore {
    /// Opens (creating if missing, with its parent folder) and migrates the database at `url`.
    ///
    /// # Errors
    /// A malformed URL, an in-memory database (`sqlite::memory:`: every token would be lost when
    /// the server stops, and the verify reads and the usage flush open the file themselves), a
    /// folder or file that cannot be created, or a failed migration.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        if url.contains(":memory:") || url.contains("mode=memory") {
            anyhow::bail!(
                "in-memory SQLite databases are not supported: give a file, such as \
                 sqlite://latchkey-data/latchkey.db (created if missing)"
            );
        }
        let opts = SqliteConnectOptions::from_str(url)
            .with_context(|| "malformed sqlite database URL")?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Every write through the pool (tokens, users, sessions, orgs, audit) is synced to
            // disk before COMMIT returns: an acknowledged revocation survives a power loss, not
            // only a crash of the process. The group commit keeps that to one sync per batch of
            // inserts. Only the usage flush (its own connection, below) stays NORMAL.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let file = opts.get_filename().to_path_buf();
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating database folder {}", dir.display()))?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await
            .with_context(|| format!("opening SQLite database {}", file.display()))?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .context("applying SQLite migrations")?;
        let writer = Arc::new(Mutex::new(()));
        let (inserts, queued) = mpsc::channel(1024);
        tokio::spawn(group_commit(pool.clone(), writer.clone(), queued));
        let open = |mode: rusqlite::OpenFlags| {
            let c = rusqlite::Connection::open_with_flags(
                &file,
                mode | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            c.busy_timeout(Duration::from_secs(10))?;
            rusqlite::Result::Ok(c)
        };
        let readers = (0..2)
            .map(|_| open(rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map(std::sync::Mutex::new))
            .collect::<rusqlite::Result<_>>()
            .with_context(|| format!("opening read connections to {}", file.display()))?;
        // A power loss may lose the usage counts of the last flush or so (never a token
        // change): the price of not syncing once a second for counters.
        let usage = open(rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
            .and_then(|c| {
                c.pragma_update(None, "synchronous", "NORMAL")?;
                Ok(c)
            })
            .with_context(|| format!("opening the usage connection to {}", file.display()))?;
        Ok(Self {
            pool,
            writer,
            inserts,
            readers: Arc::new(readers),
            usage: Arc::new(std::sync::Mutex::new(usage)),
        })
    }

    /// A write transaction and the in-process writer lock, held together until both are dropped
    /// (after commit), so no write path can take one without the other.
    async fn write_tx(&self) -> StoreResult<(OwnedMutexGuard<()>, Transaction<'static, Sqlite>)> {
        let guard = self.writer.clone().lock_owned().await;
        Ok((guard, begin_immediate(&self.pool).await?))
    }
}

/// `latchkey backup`: see [`super::backup_sqlite`].
pub(super) async fn backup(url: &str, to: &std::path::Path) -> anyhow::Result<u64> {
    if to.exists() {
        anyhow::bail!(
            "{} exists; give a new file (a backup never overwrites)",
            to.display()
        );
    }
    let target = to
        .to_str()
        .context("the backup file's path must be valid UTF-8")?;
    let opts = SqliteConnectOptions::from_str(url)
        .context("malformed sqlite database URL")?
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(10));
    let file = opts.get_filename().to_path_buf();
    if !file.exists() {
        anyhow::bail!("no database at {}", file.display());
    }
    let mut conn = sqlx::ConnectOptions::connect(&opts)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    sqlx::query("VACUUM INTO ?")
        .bind(target)
        .execute(&mut conn)
        .await
        .with_context(|| format!("writing the backup to {}", to.display()))?;
    sqlx::Connection::close(conn).await.ok();
    Ok(std::fs::metadata(to)
        .with_context(|| format!("reading {}", to.display()))?
        .len())
}

/// A write transaction; the caller holds the writer lock.
async fn begin_immediate(pool: &SqlitePool) -> StoreResult<Transaction<'static, Sqlite>> {
    pool.begin_with("BEGIN IMMEDIATE").await.map_err(other)
}

async fn insert_events(
    tx: &mut Transaction<'_, Sqlite>,
    events: &[AuditRecord],
) -> StoreResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut q = QueryBuilder::<Sqlite>::new(format!("INSERT INTO audit_events ({AUDIT_COLUMNS}) "));
    q.push_values(events, |mut b, e| {
        b.push_bind(e.id.to_string())
            .push_bind(e.org_id.to_string())
            .push_bind(micros(e.occurred_at))
            .push_bind(e.actor.clone())
            .push_bind(e.action.clone())
            .push_bind(e.token_id.map(|t| t.to_string()))
            .push_bind(e.ip.clone())
            .push_bind(e.user_agent.clone())
            .push_bind(e.details.to_string());
    });
    q.build().execute(&mut **tx).await.map_err(other)?;
    Ok(())
}

/// Refuses with `OwnerDisabled` if any of `tokens` is owned by a user who is disabled or missing,
/// in one statement. Inside a write transaction (under the writer lock, `BEGIN IMMEDIATE`) the
/// answer holds until it commits: a user update that disables the owner runs entirely before
/// (and this sees it) or entirely after (and revokes what this inserts).
async fn check_owners(
    tx: &mut Transaction<'_, Sqlite>,
    tokens: &[&TokenRecord],
) -> StoreResult<()> {
    let mut owners: Vec<String> = tokens
        .iter()
        .filter_map(|t| t.user_id)
        .map(|u| u.to_string())
        .collect();
    if owners.is_empty() {
        return Ok(());
    }
    owners.sort_unstable();
    owners.dedup();
    let row = sqlx::query(
        "SELECT COUNT(*) FROM users WHERE disabled_at IS NULL \
         AND id IN (SELECT value FROM json_each(?1))",
    )
    .bind(to_json(&owners)?)
    .fetch_one(&mut **tx)
    .await
    .map_err(other)?;
    let active: i64 = row.try_get(0).map_err(other)?;
    if usize::try_from(active).ok() != Some(owners.len()) {
        return Err(StoreError::OwnerDisabled);
    }
    Ok(())
}

/// Inserts `tokens` in one statement. A live name that is taken fails the whole statement with a
/// conflict, and a disabled or missing owner of any of them with `OwnerDisabled` (see
/// [`check_owners`]); expired holders of a name are not released here (see
/// [`insert_token_row`]). Usage fields go to `token_usage`, for the rare record that carries any
/// (a new token has none).
/// Inserts tokens; a token is live (holds its name) unless revoked, replaced or expired at `now`.
async fn insert_token_rows(
    tx: &mut Transaction<'_, Sqlite>,
    tokens: &[&TokenRecord],
    now: DateTime<Utc>,
) -> StoreResult<()> {
    check_owners(tx, tokens).await?;
    let mut q = QueryBuilder::<Sqlite>::new(
        "INSERT INTO tokens (id, org_id, name, live_name, kind, verifier, permissions, created_at, \
         created_by, expires_at, revoked_at, replaced_by, metadata, family_id, disabled_at, \
         user_id, lookup) ",
    );
    q.push_values(tokens, |mut b, t| {
        let live = t.revoked_at.is_none()
            && t.replaced_by.is_none()
            && t.expires_at.is_none_or(|x| x > now);
        b.push_bind(t.id.to_string())
            .push_bind(t.org_id.to_string())
            .push_bind(t.name.clone())
            .push_bind(live.then(|| t.name.clone()))
            .push_bind(t.kind.code())
            .push_bind(t.verifier.clone())
            .push_bind(t.permissions.bits() as i64)
            .push_bind(micros(t.created_at))
            .push_bind(t.created_by.clone())
            .push_bind(opt_micros(t.expires_at))
            .push_bind(opt_micros(t.revoked_at))
            .push_bind(t.replaced_by.map(|u| u.to_string()))
            .push_bind(t.metadata.as_ref().map(|m| m.to_string()))
            .push_bind(t.family_id.to_string())
            .push_bind(opt_micros(t.disabled_at))
            .push_bind(t.user_id.map(|u| u.to_string()))
            .push_bind(t.lookup.clone());
    });
    match q.build().execute(&mut **tx).await {
        Ok(_) => {}
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
            let names: Vec<&str> = tokens.iter().map(|t| t.name.as_str()).collect();
            return Err(StoreError::Conflict(match names.as_slice() {
                [one] => format!("a live token named {one:?} already exists in this org"),
                _ => "a live token name in this batch is taken".to_string(),
            }));
        }
        Err(e) => return Err(other(e)),
    }
    let used = tokens
        .iter()
        .filter(|t| t.request_count != 0 || t.last_used_at.is_some() || !t.client_ips.is_empty())
        .map(|t| Ok((t, to_json(&stored_ips(&t.client_ips))?)))
        .collect::<StoreResult<Vec<_>>>()?;
    if used.is_empty() {
        return Ok(());
    }
    let mut q = QueryBuilder::<Sqlite>::new(
        "INSERT INTO token_usage (token_id, request_count, last_used_at, client_ips) ",
    );
    q.push_values(used, |mut b, (t, ips)| {
        b.push_bind(t.id.to_string())
            .push_bind(t.request_count)
            .push_bind(opt_micros(t.last_used_at))
            .push_bind(ips);
    });
    q.build().execute(&mut **tx).await.map_err(other)?;
    Ok(())
}

async fn insert_token_row(
    tx: &mut Transaction<'_, Sqlite>,
    t: &TokenRecord,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    // A token that expired still holds its name in `live_name`; release it first.
    sqlx::query(
        "UPDATE tokens SET live_name = NULL WHERE org_id = ? AND live_name = ? \
         AND expires_at IS NOT NULL AND expires_at <= ?",
    )
    .bind(t.org_id.to_string())
    .bind(&t.name)
    .bind(micros(now))
    .execute(&mut **tx)
    .await
    .map_err(other)?;
    insert_token_rows(tx, &[t], now).await
}

impl SqliteStore {
    async fn user_where(&self, cond: &str, value: String) -> StoreResult<Option<UserRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE {cond}"
        )))
        .bind(value)
        .fetch_optional(&self.pool)
        .await
        .map_err(other)?;
        Ok(row.as_ref().map(user_from_row).transpose()?)
    }

    /// Reads the verify columns on the calling thread through a free read connection: a primary
    /// key lookup takes microseconds, less than handing the query to sqlx's connection thread and
    /// waking up again. `None` when every read connection is busy (the caller uses sqlx).
    fn read_for_verify(&self, ids: &[Uuid]) -> Option<StoreResult<Vec<VerifyRecord>>> {
        let conn = self.readers.iter().find_map(|m| m.try_lock().ok())?;
        Some(read_verify_rows(&conn, ids).map_err(StoreError::Other))
    }
}

/// The columns of a [`VerifyRecord`], selected by both verify read paths.
const VERIFY_COLUMNS: &str = "id, org_id, kind, verifier, permissions, expires_at, \
     revoked_at IS NOT NULL OR disabled_at IS NOT NULL AS blocked, user_id";

/// The table both verify reads select from: `tokens` through its covering index (migration
/// 0003), one B-tree per lookup. Named, because the planner would take the primary-key index
/// and then read the wide row.
const VERIFY_SOURCE: &str = "tokens INDEXED BY tokens_verify";

/// The verify read of one id (`?1`), prepared once per read connection.
fn verify_one_sql() -> String {
    format!("SELECT {VERIFY_COLUMNS} FROM {VERIFY_SOURCE} WHERE id = ?1")
}

/// The verify read of a JSON array of ids (`?1`) in one statement: the fallback through sqlx.
fn verify_many_sql() -> String {
    format!(
        "SELECT {VERIFY_COLUMNS} FROM {VERIFY_SOURCE} WHERE id IN (SELECT value FROM json_each(?1))"
    )
}

/// A [`VerifyRecord`] from the columns of [`VERIFY_COLUMNS`], in order.
#[allow(clippy::too_many_arguments)]
fn verify_record(
    id: &str,
    org_id: &str,
    kind: i64,
    verifier: String,
    permissions: i64,
    expires_at: Option<i64>,
    blocked: bool,
    user_id: Option<&str>,
) -> anyhow::Result<VerifyRecord> {
    Ok(VerifyRecord {
        id: parse_uuid(id)?,
        org_id: parse_uuid(org_id)?,
        kind: TokenKind::from_code(kind).context("unknown token kind in database")?,
        verifier,
        permissions: Permissions::from_bits(permissions as u64),
        expires_at: opt_from_micros(expires_at)?,
        blocked,
        user_id: user_id.map(parse_uuid).transpose()?,
    })
}

fn read_verify_rows(
    conn: &rusqlite::Connection,
    ids: &[Uuid],
) -> anyhow::Result<Vec<VerifyRecord>> {
    // One read transaction for the batch: outside one, every lookup takes and drops SQLite's
    // file and WAL read locks (system calls each) and checks whether the database changed.
    let tx = conn.unchecked_transaction()?;
    let mut stmt = tx.prepare_cached(&verify_one_sql())?;
    let mut out = Vec::with_capacity(ids.len());
    let mut buf = Uuid::encode_buffer();
    for id in ids {
        let key: &str = id.hyphenated().encode_lower(&mut buf);
        let mut rows = stmt.query([key])?;
        if let Some(row) = rows.next()? {
            out.push(verify_record(
                row.get_ref(0)?.as_str()?,
                row.get_ref(1)?.as_str()?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
                row.get(5)?,
                row.get(6)?,
                row.get_ref(7)?.as_str_or_null()?,
            )?);
        }
    }
    drop(stmt);
    tx.commit()?;
    Ok(out)
}

/// Adds a usage batch to `token_usage` and `token_usage_hourly` in one transaction, on the calling thread: a flush can
/// hold tens of thousands of tokens (a verify load cycling through many), and prepared
/// statements on a blocking thread keep that work off the threads that answer requests. The
/// caller holds the writer lock. Usage of a token that is gone is skipped. A token twice in the
/// batch is simply written twice: each write adds to and merges with what the previous wrote.
fn write_usage(conn: &mut rusqlite::Connection, batch: &[UsageDelta]) -> anyhow::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut stored =
            tx.prepare_cached("SELECT client_ips FROM token_usage WHERE token_id = ?1")?;
        let mut exists = tx.prepare_cached("SELECT 1 FROM tokens WHERE id = ?1")?;
        let mut upsert = tx.prepare_cached(
            "INSERT INTO token_usage (token_id, request_count, last_used_at, client_ips) \
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (token_id) DO UPDATE SET \
             request_count = request_count + excluded.request_count, \
             last_used_at = MAX(COALESCE(last_used_at, 0), excluded.last_used_at), \
             client_ips = excluded.client_ips",
        )?;
        let mut hourly = tx.prepare_cached(
            "INSERT INTO token_usage_hourly (token_id, hour, count) VALUES (?1, ?2, ?3) \
             ON CONFLICT (token_id, hour) DO UPDATE SET count = count + excluded.count",
        )?;
        let mut buf = Uuid::encode_buffer();
        for u in batch {
            let key: &str = u.token_id.hyphenated().encode_lower(&mut buf);
            let mut ips = match stored
                .query_row([key], |r| r.get::<_, String>(0))
                .optional()?
            {
                Some(json) => ips_from_json(&json)?,
                None if exists.exists([key])? => Vec::new(),
                None => continue,
            };
            merge_client_ips(&mut ips, &u.ips);
            upsert.execute(rusqlite::params![
                key,
                u.count,
                micros(u.last_used_at),
                serde_json::to_string(&stored_ips(&ips))?,
            ])?;
            for h in &u.hours {
                hourly.execute(rusqlite::params![key, micros(h.hour), h.count])?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

/// A token insert waiting for the group commit.
struct PendingInsert {
    token: TokenRecord,
    events: Vec<AuditRecord>,
    now: DateTime<Utc>,
    done: oneshot::Sender<StoreResult<()>>,
}

/// The most inserts committed in one transaction.
const MAX_INSERT_BATCH: usize = 64;

/// Group commit of token inserts. SQLite takes one writer at a time and every statement is a hop
/// to sqlx's connection thread, so under concurrent mints most of a mint's time is spent
/// queueing for the writer. This task takes whatever inserts are waiting (up to
/// [`MAX_INSERT_BATCH`]), writes them in one transaction of two statements, and answers each
/// caller after COMMIT. If the batch fails (a name taken, even by another token of the same
/// batch, or a token owned by a disabled user), it is rolled back and each insert is retried in a
/// transaction of its own, so every caller gets exactly its own answer. At low load a batch is a single insert: nothing waits
/// for company. Running in its own task, a batch is never cut short by a cancelled request.
async fn group_commit(
    pool: SqlitePool,
    writer: Arc<Mutex<()>>,
    mut rx: mpsc::Receiver<PendingInsert>,
) {
    let mut batch = Vec::with_capacity(MAX_INSERT_BATCH);
    while rx.recv_many(&mut batch, MAX_INSERT_BATCH).await > 0 {
        let _writer = writer.lock().await;
        if batch.len() > 1 && insert_batch(&pool, &batch).await.is_ok() {
            for p in batch.drain(..) {
                let _ = p.done.send(Ok(()));
            }
            continue;
        }
        for p in batch.drain(..) {
            let res = insert_one(&pool, &p.token, &p.events, p.now).await;
            let _ = p.done.send(res);
        }
    }
}

async fn insert_batch(pool: &SqlitePool, batch: &[PendingInsert]) -> StoreResult<()> {
    let mut tx = begin_immediate(pool).await?;
    let tokens: Vec<&TokenRecord> = batch.iter().map(|p| &p.token).collect();
    let now = batch.iter().map(|p| p.now).min().unwrap_or_else(Utc::now);
    insert_token_rows(&mut tx, &tokens, now).await?;
    let events: Vec<AuditRecord> = batch
        .iter()
        .flat_map(|p| p.events.iter().cloned())
        .collect();
    insert_events(&mut tx, &events).await?;
    tx.commit().await.map_err(other)
}

async fn insert_one(
    pool: &SqlitePool,
    token: &TokenRecord,
    events: &[AuditRecord],
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let mut tx = begin_immediate(pool).await?;
    insert_token_row(&mut tx, token, now).await?;
    insert_events(&mut tx, events).await?;
    tx.commit().await.map_err(other)
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(other)?;
        Ok(())
    }

    async fn org_count(&self) -> StoreResult<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM orgs")
            .fetch_one(&self.pool)
            .await
            .map_err(other)?;
        row.try_get("n").map_err(other)
    }

    async fn get_org(&self, id: Uuid) -> StoreResult<Option<OrgRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ORG_COLUMNS} FROM orgs WHERE id = ?"
        )))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(other)?;
        Ok(row.as_ref().map(org_from_row).transpose()?)
    }

    async fn find_org_by_name(&self, name: &str) -> StoreResult<Option<OrgRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ORG_COLUMNS} FROM orgs WHERE name = ?"
        )))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(other)?;
        Ok(row.as_ref().map(org_from_row).transpose()?)
    }

    async fn create_org(
        &self,
        org: &OrgRecord,
        first_token: Option<&TokenRecord>,
        events: &[AuditRecord],
    ) -> StoreResult<()> {
        let (_writer, mut tx) = self.write_tx().await?;
        let res = sqlx::query(
            "INSERT INTO orgs (id, name, created_at, max_ttl_seconds, default_ttl_seconds) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(org.id.to_string())
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
        let (done, answer) = oneshot::channel();
        let pending = PendingInsert {
            token: token.clone(),
            events: events.to_vec(),
            now,
            done,
        };
        let gone = || StoreError::Other(anyhow::anyhow!("the SQLite insert writer has stopped"));
        self.inserts.send(pending).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    async fn get_token(&self, id: Uuid) -> StoreResult<Option<TokenRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM {TOKEN_ROWS} WHERE id = ?"
        )))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(other)?;
        Ok(row.as_ref().map(token_from_row).transpose()?)
    }

    async fn get_tokens_for_verify(&self, ids: &[Uuid]) -> StoreResult<Vec<VerifyRecord>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(found) = self.read_for_verify(ids) {
            return found;
        }
        // Every read connection busy: the same read through sqlx,
        // all ids in one statement (a JSON array in one bind).
        let list = to_json(&ids.iter().map(Uuid::to_string).collect::<Vec<_>>())?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(verify_many_sql()))
            .bind(list)
            .fetch_all(&self.pool)
            .await
            .map_err(other)?;
        rows.iter()
            .map(|row| {
                verify_record(
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                    row.try_get(4)?,
                    row.try_get(5)?,
                    row.try_get(6)?,
                    row.try_get(7)?,
                )
            })
            .collect::<anyhow::Result<_>>()
            .map_err(StoreError::Other)
    }

    async fn find_lookup(&self, lookup: &str) -> StoreResult<Option<Uuid>> {
        let row = sqlx::query("SELECT id FROM tokens WHERE lookup = ?")
            .bind(lookup)
            .fetch_optional(&self.pool)
            .await
            .map_err(other)?;
        Ok(row
            .map(|r| parse_uuid(&r.try_get::<String, _>(0).map_err(other)?))
            .transpose()?)
    }

    async fn any_lookup_in(&self, start: &str, end: &str) -> StoreResult<bool> {
        let row =
            sqlx::query("SELECT EXISTS (SELECT 1 FROM tokens WHERE lookup >= ? AND lookup < ?)")
                .bind(start)
                .bind(end)
                .fetch_one(&self.pool)
                .await
                .map_err(other)?;
        row.try_get::<bool, _>(0).map_err(other)
    }

    async fn import_tokens(
        &self,
        rows: &[ImportRow],
        commit: bool,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<ImportStatus>> {
        let (_writer, mut tx) = self.write_tx().await?;
        let mut statuses = Vec::with_capacity(rows.len());
        for row in rows {
            let t = &row.token;
            let by_lookup = sqlx::query("SELECT id, org_id FROM tokens WHERE lookup = ?")
                .bind(&t.lookup)
                .fetch_optional(&mut *tx)
                .await
                .map_err(other)?;
            if let Some(found) = by_lookup {
                let id = parse_uuid(&found.try_get::<String, _>(0).map_err(other)?)?;
                let org = parse_uuid(&found.try_get::<String, _>(1).map_err(other)?)?;
                statuses.push(if org == t.org_id && (id == t.id || !row.id_given) {
                    ImportStatus::AlreadyPresent(id)
                } else {
                    ImportStatus::Taken
                });
                continue;
            }
            let by_id = sqlx::query("SELECT 1 FROM tokens WHERE id = ?")
                .bind(t.id.to_string())
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
                    "UPDATE tokens SET live_name = NULL WHERE org_id = ? AND live_name = ? \
                     AND expires_at IS NOT NULL AND expires_at <= ?",
                )
                .bind(t.org_id.to_string())
                .bind(&t.name)
                .bind(micros(now))
                .execute(&mut *tx)
                .await
                .map_err(other)?;
                let taken = sqlx::query("SELECT 1 FROM tokens WHERE org_id = ? AND live_name = ?")
                    .bind(t.org_id.to_string())
                    .bind(&t.name)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(other)?;
                if taken.is_some() {
                    statuses.push(ImportStatus::NameTaken);
                    continue;
                }
            }
            insert_token_rows(&mut tx, &[t], now).await?;
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
        // Only the filters that are present go into the SQL, so SQLite can pick
        // tokens_org_creator or tokens_org_id and seek straight to the cursor.
        let mut qb = sqlx::QueryBuilder::<Sqlite>::new(format!(
            "SELECT {TOKEN_COLUMNS} FROM {TOKEN_ROWS} WHERE org_id = "
        ));
        qb.push_bind(q.org_id.to_string());
        if let Some(v) = &q.visible_to {
            match v.user_id {
                Some(user) => {
                    qb.push(" AND (created_by = ")
                        .push_bind(v.actor.clone())
                        .push(" OR user_id = ")
                        .push_bind(user.to_string())
                        .push(")");
                }
                None => {
                    qb.push(" AND created_by = ").push_bind(v.actor.clone());
                }
            }
        }
        if let Some(owner) = q.owner {
            qb.push(" AND user_id = ").push_bind(owner.to_string());
        }
        if let Some(text) = &q.name_contains {
            // A substring match, not LIKE: the text may hold % or _.
            qb.push(" AND instr(lower(name), lower(")
                .push_bind(text.clone())
                .push(")) > 0");
        }
        if let Some(before) = q.before_id {
            qb.push(" AND id < ").push_bind(before.to_string());
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
        let rows = qb.build().fetch_all(&self.pool).await.map_err(other)?;
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
        let (_writer, mut tx) = self.write_tx().await?;
        let res = sqlx::query(
            "UPDATE tokens SET revoked_at = ?, live_name = NULL WHERE id = ? AND revoked_at IS NULL",
        )
        .bind(micros(now))
        .bind(id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(other)?;
        if res.rows_affected() == 0 {
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
        let writer = self.writer.clone().lock_owned().await;
        let conn = self.usage.clone();
        tokio::task::spawn_blocking(move || {
            let _writer = writer;
            write_usage(
                &mut conn.lock().unwrap_or_else(PoisonError::into_inner),
                &batch,
            )
        })
        .await
        .map_err(|e| StoreError::Other(e.into()))?
        .map_err(StoreError::Other)
    }

    async fn update_org(&self, org: &OrgRecord, event: &AuditRecord) -> StoreResult<()> {
        let (_writer, mut tx) = self.write_tx().await?;
        sqlx::query("UPDATE orgs SET max_ttl_seconds = ?, default_ttl_seconds = ? WHERE id = ?")
            .bind(org.max_ttl_seconds)
            .bind(org.default_ttl_seconds)
            .bind(org.id.to_string())
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
        let (_writer, mut tx) = self.write_tx().await?;
        // A disabled owner is the answer even when the old token is no longer live (the disable
        // revoked it): checked first, like the PostgreSQL backend, which locks the owner first.
        check_owners(&mut tx, &[new_token]).await?;
        // The old token keeps an earlier expiry if it had one.
        let res = sqlx::query(
            "UPDATE tokens SET replaced_by = ?1, live_name = NULL, \
             expires_at = MIN(COALESCE(expires_at, ?2), ?2) \
             WHERE id = ?3 AND replaced_by IS NULL AND revoked_at IS NULL",
        )
        .bind(new_token.id.to_string())
        .bind(micros(old_expires_at))
        .bind(old_id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(other)?;
        if res.rows_affected() == 0 {
            return Ok(false);
        }
        insert_token_row(&mut tx, new_token, now).await?;
        insert_events(&mut tx, events).await?;
        tx.commit().await.map_err(other)?;
        Ok(true)
    }

    async fn revoke_family(
        &self,
        family_id: Uuid,
        now: DateTime<Utc>,
        event: &AuditRecord,
    ) -> StoreResult<Vec<Uuid>> {
        let (_writer, mut tx) = self.write_tx().await?;
        let rows = sqlx::query(
            "UPDATE tokens SET revoked_at = ?, live_name = NULL \
             WHERE family_id = ? AND revoked_at IS NULL RETURNING id",
        )
        .bind(micros(now))
        .bind(family_id.to_string())
        .fetch_all(&mut *tx)
        .await
        .map_err(other)?;
        let ids = rows
            .iter()
            .map(|r| parse_uuid(&r.try_get::<String, _>(0)?))
            .collect::<anyhow::Result<Vec<_>>>()?;
        insert_events(&mut tx, std::slice::from_ref(event)).await?;
        tx.commit().await.map_err(other)?;
        Ok(ids)
    }

    async fn set_disabled(
        &self,
        id: Uuid,
        disabled_at: Option<DateTime<Utc>>,
        event: &AuditRecord,
    ) -> StoreResult<bool> {
        let (_writer, mut tx) = self.write_tx().await?;
        let sql = if disabled_at.is_some() {
            "UPDATE tokens SET disabled_at = ? WHERE id = ? AND disabled_at IS NULL"
        } else {
            "UPDATE tokens SET disabled_at = ? WHERE id = ? AND disabled_at IS NOT NULL"
        };
        let res = sqlx::query(sql)
            .bind(opt_micros(disabled_at))
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(other)?;
        if res.rows_affected() == 0 {
            return Ok(false);
        }
        insert_events(&mut tx, std::slice::from_ref(event)).await?;
        tx.commit().await.map_err(other)?;
        Ok(true)
    }

    async fn insert_audit(&self, events: &[AuditRecord]) -> StoreResult<()> {
        let (_writer, mut tx) = self.write_tx().await?;
        insert_events(&mut tx, events).await?;
        tx.commit().await.map_err(other)
    }

    async fn insert_user(&self, user: &UserRecord, events: &[AuditRecord]) -> StoreResult<()> {
        let (_writer, mut tx) = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO users (id, org_id, email, email_key, name, role, platform_admin, \
             password_hash, created_at, created_by, last_login_at, disabled_at, setup_hash, \
             setup_expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(user.id.to_string())
        .bind(user.org_id.to_string())
        .bind(&user.email)
        .bind(user.email.to_lowercase())
        .bind(&user.name)
        .bind(user.role.as_str())
        .bind(i64::from(user.platform_admin))
        .bind(&user.password_hash)
        .bind(micros(user.created_at))
        .bind(&user.created_by)
        .bind(opt_micros(user.last_login_at))
        .bind(opt_micros(user.disabled_at))
        .bind(&user.setup_hash)
        .bind(opt_micros(user.setup_expires_at))
        .execute(&mut *tx)
        .await
        .map_err(email_conflict)?;
        insert_events(&mut tx, events).await?;
        tx.commit().await.map_err(other)
    }

    async fn get_user(&self, id: Uuid) -> StoreResult<Option<UserRecord>> {
        self.user_where("id = ?", id.to_string()).await
    }

    async fn find_user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>> {
        self.user_where("email_key = ?", email.to_lowercase()).await
    }

    async fn find_user_by_setup_hash(&self, setup_hash: &str) -> StoreResult<Option<UserRecord>> {
        self.user_where("setup_hash = ?", setup_hash.to_string())
            .await
    }

    async fn list_users(&self, q: &UserListQuery) -> StoreResult<Vec<UserRecord>> {
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE org_id = "
        ));
        qb.push_bind(q.org_id.to_string());
        if let Some(b) = q.before_id {
            qb.push(" AND id < ").push_bind(b.to_string());
        }
        qb.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(q.limit));
        let rows = qb.build().fetch_all(&self.pool).await.map_err(other)?;
        rows.iter()
            .map(|r| user_from_row(r).map_err(StoreError::Other))
            .collect()
    }

    async fn count_active_admins(&self, org_id: Uuid) -> StoreResult<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM users WHERE org_id = ? AND role = 'admin' \
             AND disabled_at IS NULL",
        )
        .bind(org_id.to_string())
        .fetch_one(&self.pool)
        .await
        .map_err(other)?;
        row.try_get(0).map_err(other)
    }

    async fn update_user(
        &self,
        user: &UserRecord,
        change: UserChange<'_>,
        now: DateTime<Utc>,
        events: &[AuditRecord],
    ) -> StoreResult<Vec<Uuid>> {
        let (_writer, mut tx) = self.write_tx().await?;
        sqlx::query(
            "UPDATE users SET email = ?, email_key = ?, name = ?, role = ?, platform_admin = ?, \
             password_hash = ?, last_login_at = ?, disabled_at = ?, setup_hash = ?, \
             setup_expires_at = ? WHERE id = ?",
        )
        .bind(&user.email)
        .bind(user.email.to_lowercase())
        .bind(&user.name)
        .bind(user.role.as_str())
        .bind(i64::from(user.platform_admin))
        .bind(&user.password_hash)
        .bind(opt_micros(user.last_login_at))
        .bind(opt_micros(user.disabled_at))
        .bind(&user.setup_hash)
        .bind(opt_micros(user.setup_expires_at))
        .bind(user.id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(email_conflict)?;
        let mut revoked = Vec::new();
        if change.revoke != RevokeOwned::None {
            let mut qb = QueryBuilder::<Sqlite>::new("UPDATE tokens SET revoked_at = ");
            qb.push_bind(micros(now))
                .push(", live_name = NULL WHERE user_id = ")
                .push_bind(user.id.to_string())
                .push(" AND revoked_at IS NULL");
            if let RevokeOwned::Exceeding(allowed) = change.revoke {
                qb.push(" AND (permissions & ")
                    .push_bind(!allowed.bits() as i64)
                    .push(") <> 0");
            }
            qb.push(" RETURNING id");
            let rows = qb.build().fetch_all(&mut *tx).await.map_err(other)?;
            revoked = rows
                .iter()
                .map(|r| parse_uuid(&r.try_get::<String, _>(0)?))
                .collect::<anyhow::Result<Vec<_>>>()?;
            if let Some(template) = change.revoke_event {
                let per_token: Vec<AuditRecord> = revoked
                    .iter()
                    .map(|id| super::per_item_event(template, Some(*id), None))
                    .collect();
                insert_events(&mut tx, &per_token).await?;
            }
        }
        end_sessions_in(&mut tx, user.id, change.end_sessions, change.session_event).await?;
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
        let (_writer, mut tx) = self.write_tx().await?;
        sqlx::query("UPDATE users SET last_login_at = ? WHERE id = ?")
            .bind(micros(at))
            .bind(user_id.to_string())
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
        let (_writer, mut tx) = self.write_tx().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )))
        .bind(session.id.to_string())
        .bind(&session.secret_hash)
        .bind(session.user_id.to_string())
        .bind(session.org_id.to_string())
        .bind(micros(session.created_at))
        .bind(micros(session.last_seen_at))
        .bind(micros(session.expires_at))
        .bind(&session.ip)
        .bind(&session.user_agent)
        .execute(&mut *tx)
        .await
        .map_err(other)?;
        sqlx::query("UPDATE users SET last_login_at = ? WHERE id = ?")
            .bind(micros(session.created_at))
            .bind(session.user_id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(other)?;
        insert_events(&mut tx, events).await?;
        tx.commit().await.map_err(other)
    }

    async fn get_session(&self, secret_hash: &str) -> StoreResult<Option<SessionRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE secret_hash = ?"
        )))
        .bind(secret_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(other)?;
        Ok(row.as_ref().map(session_from_row).transpose()?)
    }

    async fn touch_session(&self, id: Uuid, at: DateTime<Utc>) -> StoreResult<()> {
        let (_writer, mut tx) = self.write_tx().await?;
        sqlx::query("UPDATE sessions SET last_seen_at = MAX(last_seen_at, ?) WHERE id = ?")
            .bind(micros(at))
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(other)?;
        tx.commit().await.map_err(other)
    }

    async fn list_sessions(&self, user_id: Uuid) -> StoreResult<Vec<SessionRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = ? ORDER BY id DESC"
        )))
        .bind(user_id.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(other)?;
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
        let (_writer, mut tx) = self.write_tx().await?;
        let n = end_sessions_in(&mut tx, user_id, which, event).await?;
        tx.commit().await.map_err(other)?;
        Ok(n)
    }

    async fn delete_expired_sessions(
        &self,
        now: DateTime<Utc>,
        idle_cutoff: DateTime<Utc>,
    ) -> StoreResult<u64> {
        let (_writer, mut tx) = self.write_tx().await?;
        let res = sqlx::query("DELETE FROM sessions WHERE expires_at <= ? OR last_seen_at < ?")
            .bind(micros(now))
            .bind(micros(idle_cutoff))
            .execute(&mut *tx)
            .await
            .map_err(other)?;
        tx.commit().await.map_err(other)?;
        Ok(res.rows_affected())
    }

    async fn list_family(&self, family_id: Uuid) -> StoreResult<Vec<TokenRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM {TOKEN_ROWS} WHERE family_id = ? ORDER BY id"
        )))
        .bind(family_id.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(other)?;
        Ok(rows.iter().map(token_from_row).collect::<Result<_, _>>()?)
    }

    async fn usage_hours(
        &self,
        token_id: Uuid,
        since: DateTime<Utc>,
    ) -> StoreResult<Vec<HourCount>> {
        let rows = sqlx::query(
            "SELECT hour, count FROM token_usage_hourly WHERE token_id = ? AND hour >= ? \
             ORDER BY hour",
        )
        .bind(token_id.to_string())
        .bind(micros(since))
        .fetch_all(&self.pool)
        .await
        .map_err(other)?;
        rows.iter()
            .map(|r| {
                Ok(HourCount {
                    hour: from_micros(r.try_get("hour").map_err(other)?)
                        .map_err(StoreError::Other)?,
                    count: r.try_get("count").map_err(other)?,
                })
            })
            .collect()
    }

    async fn delete_usage_hours_before(&self, cutoff: DateTime<Utc>) -> StoreResult<u64> {
        let (_writer, mut tx) = self.write_tx().await?;
        let res = sqlx::query("DELETE FROM token_usage_hourly WHERE hour < ?")
            .bind(micros(cutoff))
            .execute(&mut *tx)
            .await
            .map_err(other)?;
        tx.commit().await.map_err(other)?;
        Ok(res.rows_affected())
    }

    async fn count_live_sessions(
        &self,
        now: DateTime<Utc>,
        idle_cutoff: DateTime<Utc>,
    ) -> StoreResult<i64> {
        let row =
            sqlx::query("SELECT COUNT(*) FROM sessions WHERE expires_at > ? AND last_seen_at >= ?")
                .bind(micros(now))
                .bind(micros(idle_cutoff))
                .fetch_one(&self.pool)
                .await
                .map_err(other)?;
        row.try_get(0).map_err(other)
    }

    async fn list_audit(&self, q: &AuditListQuery) -> StoreResult<Vec<AuditRecord>> {
        let mut qb = sqlx::QueryBuilder::<Sqlite>::new(format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE org_id = "
        ));
        qb.push_bind(q.org_id.to_string());
        if let Some(t) = q.token_id {
            qb.push(" AND token_id = ").push_bind(t.to_string());
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
            qb.push(" AND id < ").push_bind(b.to_string());
        }
        qb.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(q.limit));
        let rows = qb.build().fetch_all(&self.pool).await.map_err(other)?;
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
        let mut qb = sqlx::QueryBuilder::<Sqlite>::new(format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE id > "
        ));
        qb.push_bind(after.to_string());
        if let Some(org) = org_id {
            qb.push(" AND org_id = ").push_bind(org.to_string());
        }
        qb.push(" AND token_id IS NOT NULL AND action IN (SELECT value FROM json_each(")
            .push_bind(to_json(&actions)?)
            .push(")) ORDER BY id LIMIT ")
            .push_bind(i64::from(limit));
        let rows = qb.build().fetch_all(&self.pool).await.map_err(other)?;
        rows.iter()
            .map(|r| audit_from_row(r).map_err(StoreError::Other))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn token_and_user_writes_are_synced_before_commit_returns_and_usage_is_not() {
        // Arrange
        let dir = tempfile::TempDir::new().unwrap();
        let store = SqliteStore::connect(&format!("sqlite://{}/t.db", dir.path().display()))
            .await
            .unwrap();

        // Act: every pool connection (several, so a fresh one is opened too) and the usage one.
        let mut held = Vec::new();
        let mut levels = Vec::new();
        for _ in 0..3 {
            let mut c = store.pool.acquire().await.unwrap();
            let row = sqlx::query("PRAGMA synchronous")
                .fetch_one(&mut *c)
                .await
                .unwrap();
            levels.push(row.get::<i64, _>(0));
            held.push(c);
        }
        let usage: i64 = store
            .usage
            .lock()
            .unwrap()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();

        // Assert: 2 is FULL, 1 is NORMAL.
        assert_eq!(levels, [2, 2, 2]);
        assert_eq!(usage, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_every_read_connection_busy_the_verify_read_goes_through_sqlx() {
        // Arrange: one token, and both read connections held.
        let dir = tempfile::TempDir::new().unwrap();
        let store = SqliteStore::connect(&format!("sqlite://{}/t.db", dir.path().display()))
            .await
            .unwrap();
        let at = DateTime::from_timestamp(1_767_225_600, 0).unwrap();
        let org = OrgRecord {
            id: Uuid::now_v7(),
            name: "acme".into(),
            created_at: at,
            max_ttl_seconds: None,
            default_ttl_seconds: None,
        };
        let id = Uuid::now_v7();
        let token = TokenRecord {
            id,
            org_id: org.id,
            name: "t".into(),
            kind: TokenKind::Svc,
            verifier: format!("sha256:{}", "ab".repeat(32)),
            permissions: Permissions::from_bits(5),
            created_at: at,
            created_by: "bootstrap".into(),
            expires_at: Some(at),
            revoked_at: None,
            last_used_at: None,
            request_count: 0,
            replaced_by: None,
            metadata: None,
            family_id: id,
            disabled_at: None,
            client_ips: Vec::new(),
            user_id: None,
            lookup: None,
        };
        store.create_org(&org, Some(&token), &[]).await.unwrap();
        let held: Vec<_> = store.readers.iter().map(|m| m.lock().unwrap()).collect();

        // Act
        let busy = store.read_for_verify(&[id]).is_none();
        let through_sqlx = store.get_tokens_for_verify(&[id]).await.unwrap();
        drop(held);
        let direct = store.read_for_verify(&[id]).unwrap().unwrap();

        // Assert
        assert!(busy);
        assert_eq!(through_sqlx, direct);
        assert_eq!(direct.len(), 1);
        assert_eq!(direct[0].kind, TokenKind::Svc);
        assert_eq!(direct[0].expires_at, Some(at));
        assert!(!direct[0].blocked);
    }

    #[tokio::test]
    async fn both_verify_reads_find_every_column_in_the_covering_index() {
        // Arrange
        let dir = tempfile::TempDir::new().unwrap();
        let store = SqliteStore::connect(&format!("sqlite://{}/t.db", dir.path().display()))
            .await
            .unwrap();
        let conn = store.readers[0].lock().unwrap();

        // Act
        let plans: Vec<String> = [verify_one_sql(), verify_many_sql()]
            .iter()
            .map(|sql| {
                let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
                let details: Vec<String> = stmt
                    .query_map(["x"], |row| row.get::<_, String>(3))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                details.join("; ")
            })
            .collect();

        // Assert: one B-tree per lookup, never the table row.
        for plan in plans {
            assert!(
                plan.contains("SEARCH tokens USING COVERING INDEX tokens_verify"),
                "{plan}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_with_a_token_of_a_disabled_owner_falls_back_to_one_insert_each() {
        // Arrange: Ann is active, Bob disabled. The writer lock is held while one insert is
        // taken by the group commit and four more queue behind it, so those four form one group.
        let dir = tempfile::TempDir::new().unwrap();
        let store = SqliteStore::connect(&format!("sqlite://{}/t.db", dir.path().display()))
            .await
            .unwrap();
        let at = DateTime::from_timestamp(1_767_225_600, 0).unwrap();
        let org = OrgRecord {
            id: Uuid::now_v7(),
            name: "acme".into(),
            created_at: at,
            max_ttl_seconds: None,
            default_ttl_seconds: None,
        };
        store.create_org(&org, None, &[]).await.unwrap();
        let user = |email: &str, disabled_at: Option<DateTime<Utc>>| UserRecord {
            id: Uuid::now_v7(),
            org_id: org.id,
            email: email.into(),
            name: email.into(),
            role: Role::Member,
            platform_admin: false,
            password_hash: None,
            created_at: at,
            created_by: "bootstrap".into(),
            last_login_at: None,
            disabled_at,
            setup_hash: None,
            setup_expires_at: None,
        };
        let (ann, bob) = (
            user("ann@example.com", None),
            user("bob@example.com", Some(at)),
        );
        store.insert_user(&ann, &[]).await.unwrap();
        store.insert_user(&bob, &[]).await.unwrap();
        let token = |name: &str, owner: Option<Uuid>| {
            let id = Uuid::now_v7();
            TokenRecord {
                id,
                org_id: org.id,
                name: name.into(),
                kind: TokenKind::Pat,
                verifier: format!("sha256:{}", "ab".repeat(32)),
                permissions: Permissions::from_bits(5),
                created_at: at,
                created_by: "bootstrap".into(),
                expires_at: None,
                revoked_at: None,
                last_used_at: None,
                request_count: 0,
                replaced_by: None,
                metadata: None,
                family_id: id,
                disabled_at: None,
                client_ips: Vec::new(),
                user_id: owner,
                lookup: None,
            }
        };
        let spawn_insert = |t: TokenRecord| {
            let store = store.clone();
            tokio::spawn(async move { store.insert_token(&t, &[], at).await })
        };
        let queued = |n: usize| {
            let store = store.clone();
            async move {
                while store.inserts.max_capacity() - store.inserts.capacity() != n {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        let writer = store.writer.clone().lock_owned().await;
        // The pilot is put in the queue here, not by a spawned task: an empty queue must mean
        // the group commit took it, not that a task has yet to send it (then the group commit
        // could take it together with some of the four, and the queue never holds four).
        let (done, pilot) = oneshot::channel();
        let pilot_insert = PendingInsert {
            token: token("pilot", None),
            events: Vec::new(),
            now: at,
            done,
        };
        assert!(store.inserts.send(pilot_insert).await.is_ok());
        queued(0).await;
        let group = [
            token("ann's", Some(ann.id)),
            token("bob's", Some(bob.id)),
            token("machine", None),
            token("ann's too", Some(ann.id)),
        ];
        let tasks: Vec<_> = group.iter().cloned().map(spawn_insert).collect();
        queued(group.len()).await;

        // Act
        drop(writer);
        pilot.await.unwrap().unwrap();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }

        // Assert
        let refused: Vec<bool> = answers
            .iter()
            .map(|a| matches!(a, Err(StoreError::OwnerDisabled)))
            .collect();
        assert_eq!(refused, [false, true, false, false], "{answers:?}");
        for (t, a) in group.iter().zip(&answers) {
            let stored = store.get_token(t.id).await.unwrap();
            assert_eq!(stored.is_some(), a.is_ok(), "{}", t.name);
        }
    }

    #[tokio::test]
    async fn a_database_from_before_the_usage_table_keeps_its_usage_after_the_upgrade() {
        // Arrange: the first schema, with a used token and an unused one.
        let dir = tempfile::TempDir::new().unwrap();
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let pool = SqlitePool::connect_with(
            SqliteConnectOptions::from_str(&url)
                .unwrap()
                .create_if_missing(true),
        )
        .await
        .unwrap();
        sqlx::migrate!("./migrations/sqlite")
            .run_to(1, &pool)
            .await
            .unwrap();
        let (org, used, unused) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        sqlx::query("INSERT INTO orgs (id, name, created_at) VALUES (?, 'acme', 1)")
            .bind(org.to_string())
            .execute(&pool)
            .await
            .unwrap();
        for (id, count, last, ips) in [
            (
                used,
                7,
                Some(1_767_225_600_000_000_i64),
                r#"[{"ip":"192.0.2.1","last_seen_at":1767225600000000}]"#,
            ),
            (unused, 0, None, "[]"),
        ] {
            sqlx::query(
                "INSERT INTO tokens (id, org_id, name, live_name, kind, verifier, permissions, \
                 created_at, created_by, last_used_at, request_count, family_id, client_ips) \
                 VALUES (?, ?, ?, ?, 1, 'sha256:00', 0, 1, 'bootstrap', ?, ?, ?, ?)",
            )
            .bind(id.to_string())
            .bind(org.to_string())
            .bind(id.to_string())
            .bind(id.to_string())
            .bind(last)
            .bind(count)
            .bind(id.to_string())
            .bind(ips)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;

        // Act
        let store = SqliteStore::connect(&url).await.unwrap();
        let used = store.get_token(used).await.unwrap().unwrap();
        let unused = store.get_token(unused).await.unwrap().unwrap();

        // Assert
        assert_eq!(used.request_count, 7);
        assert_eq!(
            used.last_used_at,
            DateTime::from_timestamp(1_767_225_600, 0)
        );
        assert_eq!(used.client_ips.len(), 1);
        assert_eq!(used.client_ips[0].ip, "192.0.2.1");
        assert_eq!((unused.request_count, unused.last_used_at), (0, None));
        assert!(unused.client_ips.is_empty());
    }

    #[tokio::test]
    async fn an_in_memory_database_is_refused_with_a_clear_error() {
        for url in ["sqlite::memory:", "sqlite://file:x?mode=memory"] {
            // Act
            let Err(err) = SqliteStore::connect(url).await else {
                panic!("{url} was accepted");
            };

            // Assert
            assert!(
                err.to_string()
                    .contains("in-memory SQLite databases are not supported"),
                "{err}"
            );
        }
    }
}
