//! Persistence. One [`Store`] trait, one implementation per backend, chosen by the database URL's
//! scheme. The store knows rows and transactions, never rules: who may do what is `service/`'s.

mod postgres;
mod sqlite;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::token::{Permissions, Role, TokenKind};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// A store failure the service reacts to; everything else is `Other`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was hit (live token name, org name); the message says which.
    #[error("{0}")]
    Conflict(String),
    /// The token to insert is owned by a user who is disabled (or does not exist). Checked in the
    /// insert's transaction, serialized with [`Store::update_user`], so a token minted for a user
    /// while the user is being disabled is either revoked by the disable or refused here.
    #[error("the user owning this token is disabled")]
    OwnerDisabled,
    /// The database cannot be reached or written right now: down, restarting, out of
    /// connections, locked past the busy timeout, read-only or full. Worth retrying.
    #[error("database unavailable")]
    Unavailable(#[source] anyhow::Error),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl StoreError {
    /// A sqlx error as a store error: [`StoreError::Unavailable`] when it says the database
    /// cannot be reached or written now, [`StoreError::Other`] otherwise.
    pub fn from_sqlx(e: sqlx::Error) -> Self {
        if sqlx_unavailable(&e) {
            StoreError::Unavailable(e.into())
        } else {
            StoreError::Other(e.into())
        }
    }
}

/// Whether `e` says the connection itself is gone: the socket broke, or PostgreSQL ended the
/// session (connection exceptions, 08; operator intervention, 57P01-57P03: shutdown, crash,
/// cannot connect now). The same statement may then succeed on another connection.
pub(crate) fn sqlx_connection_lost(e: &sqlx::Error) -> bool {
    match e {
        // Except a TLS refusal (a certificate that expired or is not trusted any more), which
        // sqlx reports as invalid data: every new connection would be refused the same way.
        sqlx::Error::Io(io) => io.kind() != std::io::ErrorKind::InvalidData,
        sqlx::Error::Database(db) => {
            db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some()
                && db
                    .code()
                    .is_some_and(|c| c.starts_with("08") || c.starts_with("57P0"))
        }
        _ => false,
    }
}

/// How sqlx's text begins when a new PostgreSQL connection's first question ("do you speak
/// TLS?", asked unless `sslmode` is `disable`) gets neither yes nor no: `0x00` when the peer
/// closed without a byte, `0x45` when the server answered with an error instead.
pub(crate) const SSL_REQUEST_UNANSWERED: &str = "unexpected response from SSLRequest";

/// Whether `e` means "the database is not available now" rather than a bug or bad data.
fn sqlx_unavailable(e: &sqlx::Error) -> bool {
    if sqlx_connection_lost(e) {
        return true;
    }
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        // A peer that closes at once (a proxy or load balancer with no database behind it)
        // shows as this protocol error, not as the I/O error a closed connection is.
        sqlx::Error::Protocol(msg) => msg.starts_with(SSL_REQUEST_UNANSWERED),
        sqlx::Error::Database(db) => match db.code() {
            // PostgreSQL: too many connections (53300), disk full (53100), read-only
            // transaction (25006, a standby after a failover).
            Some(code)
                if db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .is_some() =>
            {
                matches!(code.as_ref(), "53300" | "53100" | "25006")
            }
            // SQLite primary result codes (extended codes keep them in the low byte): BUSY,
            // LOCKED, READONLY, IOERR, FULL, CANTOPEN.
            Some(code) => code
                .parse::<i32>()
                .is_ok_and(|c| sqlite_unavailable_code(c & 0xff)),
            None => false,
        },
        _ => false,
    }
}

/// SQLite's primary result codes that mean "not now": BUSY, LOCKED, READONLY, IOERR, FULL,
/// CANTOPEN.
pub(crate) fn sqlite_unavailable_code(primary: i32) -> bool {
    matches!(primary, 5 | 6 | 8 | 10 | 13 | 14)
}

pub type StoreResult<T> = Result<T, StoreError>;

/// An organisation: the tenant every token belongs to, with its lifetime policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgRecord {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// The longest lifetime a new token may get; `None`: no limit.
    pub max_ttl_seconds: Option<i64>,
    /// The lifetime of tokens created without one; `None`: they do not expire.
    pub default_ttl_seconds: Option<i64>,
}

/// One client address that used a token, and when it was last seen.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientIp {
    pub ip: String,
    pub last_seen_at: DateTime<Utc>,
}

/// How many distinct client addresses a token remembers.
pub const MAX_CLIENT_IPS: usize = 5;

/// Merges `seen` into `known`, keeping the [`MAX_CLIENT_IPS`] most recently seen distinct
/// addresses, newest first. Shared by every backend so they agree.
pub fn merge_client_ips(known: &mut Vec<ClientIp>, seen: &[ClientIp]) {
    for s in seen {
        match known.iter_mut().find(|k| k.ip == s.ip) {
            Some(k) => k.last_seen_at = k.last_seen_at.max(s.last_seen_at),
            None => known.push(s.clone()),
        }
    }
    known.sort_by(|a, b| b.last_seen_at.cmp(&a.last_seen_at).then(a.ip.cmp(&b.ip)));
    known.truncate(MAX_CLIENT_IPS);
}

/// Folds a batch into one delta per token, ordered by id: rows are then locked in one global
/// order, so two nodes flushing overlapping batches cannot deadlock. A batch that already is
/// one delta per token in id order, each delta's hours in order (the service's flush hands over
/// nothing else), is returned as it is: folding tens of thousands of deltas again, a map insert
/// and copies of each, would be milliseconds on a request thread for nothing.
pub fn combine_usage(batch: &[UsageDelta]) -> std::borrow::Cow<'_, [UsageDelta]> {
    let combined = batch.windows(2).all(|w| w[0].token_id < w[1].token_id)
        && batch
            .iter()
            .all(|d| d.hours.windows(2).all(|h| h[0].hour < h[1].hour));
    if combined {
        return std::borrow::Cow::Borrowed(batch);
    }
    let mut by_id: BTreeMap<Uuid, UsageDelta> = BTreeMap::new();
    for u in batch {
        match by_id.get_mut(&u.token_id) {
            Some(d) => {
                d.count += u.count;
                d.last_used_at = d.last_used_at.max(u.last_used_at);
                merge_client_ips(&mut d.ips, &u.ips);
                merge_hours(&mut d.hours, &u.hours);
            }
            None => {
                let mut d = u.clone();
                d.ips.clear();
                merge_client_ips(&mut d.ips, &u.ips);
                d.hours.clear();
                merge_hours(&mut d.hours, &u.hours);
                by_id.insert(u.token_id, d);
            }
        }
    }
    std::borrow::Cow::Owned(by_id.into_values().collect())
}

/// A token row. `verifier` is the self-describing verifier string, never a secret.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub id: Uuid,
    pub org_id: Uuid,
    pub name: String,
    pub kind: TokenKind,
    pub verifier: String,
    pub permissions: Permissions,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub request_count: i64,
    pub replaced_by: Option<Uuid>,
    pub metadata: Option<serde_json::Value>,
    /// The first token of its rotation family (its own id when never rotated).
    pub family_id: Uuid,
    pub disabled_at: Option<DateTime<Utc>>,
    /// The last distinct client addresses, newest first (at most [`MAX_CLIENT_IPS`]).
    pub client_ips: Vec<ClientIp>,
    /// The user who owns the token (minted it, or owns the token that minted it); `None` for
    /// tokens of machines.
    pub user_id: Option<Uuid>,
    /// `<scheme>:<key>` for a key imported from another system (see `token::legacy`), by which
    /// the verify path finds it; `None` for native tokens.
    pub lookup: Option<String>,
}

/// What the verify path needs of a token: read in batches on cache misses, without the columns
/// (metadata, client addresses, names) that only management calls show.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyRecord {
    pub id: Uuid,
    pub org_id: Uuid,
    pub kind: TokenKind,
    pub verifier: String,
    pub permissions: Permissions,
    pub expires_at: Option<DateTime<Utc>>,
    /// Revoked or disabled.
    pub blocked: bool,
    /// The owning user, if any.
    pub user_id: Option<Uuid>,
}

/// A person who signs in. `password_hash` and `setup_hash` are verifiers, never printed.
#[derive(Clone, PartialEq)]
pub struct UserRecord {
    pub id: Uuid,
    pub org_id: Uuid,
    /// As given; compared case-insensitively (the store keeps a lowercase key, unique in the
    /// deployment).
    pub email: String,
    pub name: String,
    pub role: Role,
    pub platform_admin: bool,
    /// Argon2id PHC string; `None` until the user sets a password through its setup link.
    pub password_hash: Option<String>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub last_login_at: Option<DateTime<Utc>>,
    pub disabled_at: Option<DateTime<Utc>>,
    /// SHA-256 (hex) of the one-time setup token, while one is outstanding.
    pub setup_hash: Option<String>,
    pub setup_expires_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("org_id", &self.org_id)
            .field("role", &self.role)
            .field("platform_admin", &self.platform_admin)
            .field("disabled_at", &self.disabled_at)
            .finish_non_exhaustive()
    }
}

/// A console session. Only the SHA-256 (hex) of its secret id is stored.
#[derive(Clone, PartialEq)]
pub struct SessionRecord {
    /// The public id, used to list and end sessions.
    pub id: Uuid,
    pub secret_hash: String,
    pub user_id: Uuid,
    pub org_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    /// The absolute end of the session.
    pub expires_at: DateTime<Utc>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl std::fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRecord")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

/// A page request for the users of one org, newest first.
#[derive(Debug, Clone)]
pub struct UserListQuery {
    pub org_id: Uuid,
    /// Only users with an id below this one (the cursor).
    pub before_id: Option<Uuid>,
    pub limit: u32,
}

/// Which of a user's live tokens an update revokes, in its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeOwned {
    None,
    /// Every live token the user owns (disabling the user).
    All,
    /// The live tokens holding a bit outside this set (a demotion).
    Exceeding(Permissions),
}

/// Which of a user's sessions an update or sign-out ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndSessions {
    None,
    All,
    One(Uuid),
    AllBut(Uuid),
}

/// What [`Store::update_user`] changes besides the user row.
#[derive(Debug, Clone)]
pub struct UserChange<'a> {
    pub revoke: RevokeOwned,
    pub end_sessions: EndSessions,
    /// The event written for each token revoked; the store sets its `id` (a new UUID v7) and
    /// `token_id`.
    pub revoke_event: Option<&'a AuditRecord>,
    /// The event written for each session ended; the store sets its `id` and adds
    /// `"session_id"` to its details.
    pub session_event: Option<&'a AuditRecord>,
}

/// One audit event, written in the same transaction as the change it records.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub id: Uuid,
    pub org_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub token_id: Option<Uuid>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub details: serde_json::Value,
}

/// The state filter of a token list. A token is in exactly one state, checked in this order:
/// revoked, expired, disabled, active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFilter {
    Active,
    Expired,
    Revoked,
    Disabled,
}

/// A page request for tokens of one org, newest first.
#[derive(Debug, Clone)]
pub struct TokenListQuery {
    pub org_id: Uuid,
    /// Only tokens this caller reaches without `org:admin`: created by `actor`, or owned by
    /// `user_id`.
    pub visible_to: Option<Visibility>,
    /// Only tokens owned by this user.
    pub owner: Option<Uuid>,
    /// Only tokens whose name contains this text, ignoring ASCII case.
    pub name_contains: Option<String>,
    pub state: Option<StateFilter>,
    /// Only native tokens, or only keys imported with one scheme.
    pub format: Option<FormatFilter>,
    /// Only tokens with an id below this one (the cursor).
    pub before_id: Option<Uuid>,
    pub limit: u32,
    pub now: DateTime<Utc>,
}

/// The format filter of a token list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatFilter {
    /// `lookup IS NULL`.
    Native,
    /// `lookup` in `[start, end)`: the keys of one import scheme.
    Lookup { start: String, end: String },
}

/// A key to import, with its `token_imported` event (written only if the key is).
#[derive(Debug, Clone)]
pub struct ImportRow {
    pub token: TokenRecord,
    pub event: AuditRecord,
    /// Whether the file gave the token's id (else it was made for the import, and a key already
    /// present under another id is still the same key).
    pub id_given: bool,
}

/// What [`Store::import_tokens`] did, or would do, with one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportStatus {
    Imported,
    /// This key (its lookup) is already a token of the same org, with this id: nothing to do.
    AlreadyPresent(Uuid),
    /// A live token of the org has this name.
    NameTaken,
    /// Its id belongs to another token, or its lookup to a token of another org.
    Taken,
}

/// The tokens a caller without `org:admin` sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visibility {
    pub actor: String,
    pub user_id: Option<Uuid>,
}

/// Usage accumulated in memory for one token, added to its row by [`Store::add_usage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    pub token_id: Uuid,
    pub count: i64,
    pub last_used_at: DateTime<Utc>,
    /// Client addresses seen since the last flush.
    pub ips: Vec<ClientIp>,
    /// The same verifications by the hour they happened in, oldest first, one entry per hour
    /// (see [`hour_start`]). Their counts add up to `count`.
    pub hours: Vec<HourCount>,
}

/// Verifications of one token within one clock hour (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HourCount {
    /// The hour's first instant, as [`hour_start`] gives it.
    pub hour: DateTime<Utc>,
    pub count: i64,
}

/// The start of the UTC hour that holds `t`.
pub fn hour_start(t: DateTime<Utc>) -> DateTime<Utc> {
    let secs = t.timestamp();
    DateTime::from_timestamp(secs - secs.rem_euclid(3600), 0).unwrap_or(t)
}

/// How long hourly verification counts are kept: the console's chart shows the last 7 days.
pub const USAGE_HOURS_KEPT: chrono::TimeDelta = chrono::TimeDelta::days(7);

/// Adds `more` to `hours`, keeping one entry per hour, oldest first.
pub fn merge_hours<H>(hours: &mut H, more: &[HourCount])
where
    H: std::ops::DerefMut<Target = [HourCount]> + Extend<HourCount>,
{
    for m in more {
        match hours.iter_mut().find(|h| h.hour == m.hour) {
            Some(h) => h.count += m.count,
            None => hours.extend([*m]),
        }
    }
    hours.sort_by_key(|h| h.hour);
}

/// A page request for an org's audit events, newest first. Every filter is optional.
#[derive(Debug, Clone)]
pub struct AuditListQuery {
    pub org_id: Uuid,
    pub token_id: Option<Uuid>,
    pub action: Option<String>,
    pub actor: Option<String>,
    /// Events at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Events before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only events with an id below this one (the cursor).
    pub before_id: Option<Uuid>,
    pub limit: u32,
}

/// What a node must drop from its verify cache because another node changed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    Token(Uuid),
    /// The notification channel was lost and re-established: anything may have changed.
    All,
}

/// The persistence operations the service needs. Every method that changes state takes the
/// audit events to write in the same transaction.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A cheap round trip, for readiness.
    async fn ping(&self) -> StoreResult<()>;

    /// How many orgs exist (0 means a fresh database that needs a bootstrap).
    async fn org_count(&self) -> StoreResult<i64>;

    async fn get_org(&self, id: Uuid) -> StoreResult<Option<OrgRecord>>;

    async fn find_org_by_name(&self, name: &str) -> StoreResult<Option<OrgRecord>>;

    /// Creates an org, optionally with a first token, and the events, in one transaction.
    /// `Conflict` if the name is taken; `OwnerDisabled` as for [`Store::insert_token`] (a first
    /// token has no owner in practice).
    async fn create_org(
        &self,
        org: &OrgRecord,
        first_token: Option<&TokenRecord>,
        events: &[AuditRecord],
    ) -> StoreResult<()>;

    /// Inserts a token and its events in one transaction. A live token of the same org and name
    /// (not revoked, not expired at `now`) makes it fail with `Conflict`. A token with a
    /// `user_id` whose user is disabled or missing makes it fail with `OwnerDisabled`, writing
    /// nothing; the owner is checked inside the transaction, atomically with respect to
    /// [`Store::update_user`]: once a disable has committed, no token of that user is inserted,
    /// and a token inserted before it is among those the disable revokes.
    async fn insert_token(
        &self,
        token: &TokenRecord,
        events: &[AuditRecord],
        now: DateTime<Utc>,
    ) -> StoreResult<()>;

    async fn get_token(&self, id: Uuid) -> StoreResult<Option<TokenRecord>>;

    /// The verify columns of those of `ids` that exist, in any order, in one round trip.
    async fn get_tokens_for_verify(&self, ids: &[Uuid]) -> StoreResult<Vec<VerifyRecord>>;

    /// The id of the token whose `lookup` column is `lookup`, if any (one index seek).
    async fn find_lookup(&self, lookup: &str) -> StoreResult<Option<Uuid>>;

    /// Whether any token's `lookup` is in `[start, end)`: whether keys of an import scheme exist.
    async fn any_lookup_in(&self, start: &str, end: &str) -> StoreResult<bool>;

    /// Imports keys in one transaction. For each row, in order: `AlreadyPresent` when its
    /// lookup exists in the same org (under the row's id, when `id_given`), `Taken` when its id belongs to another token or its
    /// lookup to another org's, `NameTaken` when it is live and a live token of its org has its name (expired
    /// holders are released first), otherwise inserted with its event (`Imported`). The
    /// transaction commits only when `commit` is set and no row was `NameTaken` or `Taken`;
    /// otherwise nothing is written and the statuses say what would have happened.
    /// `OwnerDisabled` as for [`Store::insert_token`].
    async fn import_tokens(
        &self,
        rows: &[ImportRow],
        commit: bool,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<ImportStatus>>;

    /// Up to `limit` tokens, newest first.
    async fn list_tokens(&self, q: &TokenListQuery) -> StoreResult<Vec<TokenRecord>>;

    /// Marks a token revoked at `now` and writes `event`, both only if it was not revoked yet.
    /// Returns whether this call revoked it.
    async fn revoke_token(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
        event: &AuditRecord,
    ) -> StoreResult<bool>;

    /// Adds usage counts atomically (`request_count = request_count + n`), keeping the latest
    /// `last_used_at` and merging client addresses with [`merge_client_ips`]. Usage of a token
    /// that is gone is skipped. Each delta's `hours` are added to the token's hourly counts
    /// in the same transaction. The batch is shared so that a store may write it on another
    /// thread without copying it.
    async fn add_usage(&self, batch: Arc<[UsageDelta]>) -> StoreResult<()>;

    /// Every token of a rotation family, oldest first.
    async fn list_family(&self, family_id: Uuid) -> StoreResult<Vec<TokenRecord>>;

    /// The hourly verification counts of `token_id` for the hours starting at or after `since`,
    /// oldest first. Hours without verifications have no entry.
    async fn usage_hours(
        &self,
        token_id: Uuid,
        since: DateTime<Utc>,
    ) -> StoreResult<Vec<HourCount>>;

    /// Deletes the hourly counts of hours that started before `cutoff`. Returns how many.
    async fn delete_usage_hours_before(&self, cutoff: DateTime<Utc>) -> StoreResult<u64>;

    /// Updates an org's lifetime policy and writes `event`, in one transaction.
    async fn update_org(&self, org: &OrgRecord, event: &AuditRecord) -> StoreResult<()>;

    /// Rotates `old_id`: inserts `new_token` (same family), sets the old token's `replaced_by` to
    /// it and its `expires_at` to `old_expires_at`, and writes `events`, in one transaction, but
    /// only if the old token is neither revoked nor already replaced. Returns whether it rotated.
    /// `OwnerDisabled` (checked first, writing nothing) if `new_token` is owned by a user who is
    /// disabled or missing, as for [`Store::insert_token`].
    async fn rotate_token(
        &self,
        old_id: Uuid,
        old_expires_at: DateTime<Utc>,
        new_token: &TokenRecord,
        events: &[AuditRecord],
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Revokes every not-yet-revoked token of a family at `now` and writes `event`, in one
    /// transaction. Returns the ids it revoked.
    async fn revoke_family(
        &self,
        family_id: Uuid,
        now: DateTime<Utc>,
        event: &AuditRecord,
    ) -> StoreResult<Vec<Uuid>>;

    /// Sets (`Some`) or clears (`None`) `disabled_at` and writes `event`, both only if that
    /// changes the token. Returns whether it changed.
    async fn set_disabled(
        &self,
        id: Uuid,
        disabled_at: Option<DateTime<Utc>>,
        event: &AuditRecord,
    ) -> StoreResult<bool>;

    /// Up to `limit` audit events, newest first.
    async fn list_audit(&self, q: &AuditListQuery) -> StoreResult<Vec<AuditRecord>>;

    /// Events with an id above `after` (ids are UUID v7: time order), oldest first, at most
    /// `limit`: those naming a token, with one of `actions`, of `org_id` when given (every org's
    /// otherwise). The change feed's read.
    async fn audit_after(
        &self,
        org_id: Option<Uuid>,
        after: Uuid,
        actions: &[&str],
        limit: u32,
    ) -> StoreResult<Vec<AuditRecord>>;

    /// Writes audit events on their own (a failed sign-in changes nothing else).
    async fn insert_audit(&self, events: &[AuditRecord]) -> StoreResult<()>;

    /// Inserts a user and its events in one transaction. `Conflict` if the email (compared
    /// case-insensitively) is taken anywhere in the deployment.
    async fn insert_user(&self, user: &UserRecord, events: &[AuditRecord]) -> StoreResult<()>;

    async fn get_user(&self, id: Uuid) -> StoreResult<Option<UserRecord>>;

    /// The user with this email, compared case-insensitively.
    async fn find_user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>>;

    /// The user whose outstanding setup token hashes to `setup_hash`.
    async fn find_user_by_setup_hash(&self, setup_hash: &str) -> StoreResult<Option<UserRecord>>;

    /// Up to `limit` users of an org, newest first.
    async fn list_users(&self, q: &UserListQuery) -> StoreResult<Vec<UserRecord>>;

    /// How many users of the org are admins and not disabled.
    async fn count_active_admins(&self, org_id: Uuid) -> StoreResult<i64>;

    /// Replaces the user row with `user` (email, name, role, flags, password, setup, disabled),
    /// revokes tokens and ends sessions as `change` says, and writes `events`, in one
    /// transaction. Returns the ids of the tokens it revoked. `Conflict` if the email is taken.
    /// Serialized with the inserts of tokens the user owns (see [`Store::insert_token`]): an
    /// insert either commits before and is revoked here, or runs after and sees the new row.
    async fn update_user(
        &self,
        user: &UserRecord,
        change: UserChange<'_>,
        now: DateTime<Utc>,
        events: &[AuditRecord],
    ) -> StoreResult<Vec<Uuid>>;

    /// Sets the user's `last_login_at` and writes `events`, in one transaction.
    async fn record_login(
        &self,
        user_id: Uuid,
        at: DateTime<Utc>,
        events: &[AuditRecord],
    ) -> StoreResult<()>;

    /// Inserts a session, sets its user's `last_login_at` to its creation time and writes
    /// `events`, in one transaction.
    async fn insert_session(
        &self,
        session: &SessionRecord,
        events: &[AuditRecord],
    ) -> StoreResult<()>;

    /// The session whose secret hashes to `secret_hash`, whatever its age.
    async fn get_session(&self, secret_hash: &str) -> StoreResult<Option<SessionRecord>>;

    /// Moves a session's `last_seen_at` forward to `at`.
    async fn touch_session(&self, id: Uuid, at: DateTime<Utc>) -> StoreResult<()>;

    /// The user's sessions, newest first, whatever their age.
    async fn list_sessions(&self, user_id: Uuid) -> StoreResult<Vec<SessionRecord>>;

    /// Deletes the user's sessions that `which` names and writes, for each, `event` with its
    /// `id` set and `"session_id"` added to its details, in one transaction. Returns how many
    /// it deleted.
    async fn end_sessions(
        &self,
        user_id: Uuid,
        which: EndSessions,
        event: Option<&AuditRecord>,
    ) -> StoreResult<u64>;

    /// Deletes sessions that ended: past `expires_at` at `now`, or last seen before
    /// `idle_cutoff`. Returns how many.
    async fn delete_expired_sessions(
        &self,
        now: DateTime<Utc>,
        idle_cutoff: DateTime<Utc>,
    ) -> StoreResult<u64>;

    /// How many sessions are live at `now` (not past `expires_at`, seen since `idle_cutoff`).
    async fn count_live_sessions(
        &self,
        now: DateTime<Utc>,
        idle_cutoff: DateTime<Utc>,
    ) -> StoreResult<i64>;

    /// A stream of cache invalidations published by other nodes, for backends shared by several
    /// nodes. `None` (the default) for a single-node backend.
    async fn invalidations(
        &self,
    ) -> StoreResult<Option<tokio::sync::mpsc::Receiver<Invalidation>>> {
        Ok(None)
    }
}

/// A copy of `template` for one item of a bulk change: a new id, and the item's token id or
/// (in the details) session id. Shared by every backend so they agree.
pub fn per_item_event(
    template: &AuditRecord,
    token_id: Option<Uuid>,
    session_id: Option<Uuid>,
) -> AuditRecord {
    let mut e = template.clone();
    e.id = Uuid::now_v7();
    if token_id.is_some() {
        e.token_id = token_id;
    }
    if let (Some(s), Some(details)) = (session_id, e.details.as_object_mut()) {
        details.insert(
            "session_id".into(),
            serde_json::Value::String(s.to_string()),
        );
    }
    e
}

/// Connection pool settings for a server backend (PostgreSQL). The embedded SQLite backend keeps
/// its own fixed pool and ignores them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolOptions {
    /// Most connections a node holds (the cache-invalidation listener has one more of its own).
    pub max_connections: u32,
    /// Connections kept open even when idle.
    pub min_connections: u32,
    /// How long a query waits for a free connection before it fails.
    pub acquire_timeout: Duration,
    /// Idle connections above `min_connections` are closed after this long; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Connections are replaced after this long (e.g. to follow a failover); `None`: never.
    pub max_lifetime: Option<Duration>,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(5),
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
        }
    }
}

/// Opens the store named by `url` with the default [`PoolOptions`]: `sqlite:...` (the default)
/// or `postgres://...` / `postgresql://...`.
///
/// # Errors
/// An unsupported scheme, or a database that cannot be opened or migrated.
pub async fn connect(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    connect_with(url, &PoolOptions::default()).await
}

/// Writes a consistent copy of the SQLite database at `url` to `to` (`VACUUM INTO`: a snapshot
/// taken while servers keep reading and writing; the copy is compact and has no WAL). The
/// database is not migrated. Returns the size of the copy in bytes.
///
/// # Errors
/// A PostgreSQL or other URL (for PostgreSQL, `pg_dump` is the tool), a database file that does
/// not exist, or a target that exists or cannot be written.
pub async fn backup_sqlite(url: &str, to: &std::path::Path) -> anyhow::Result<u64> {
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        anyhow::bail!(
            "latchkey backup copies SQLite databases; for PostgreSQL use pg_dump \
             (pg_dump -Fc -f latchkey.dump \"$DATABASE_URL\"), see docs/operations.md"
        );
    }
    if !url.starts_with("sqlite:") {
        anyhow::bail!("unsupported database URL scheme (expected sqlite:)");
    }
    sqlite::backup(url, to).await
}

/// Opens the store named by `url`, with `pool` for the backends that use a connection pool.
///
/// # Errors
/// An unsupported scheme, or a database that cannot be opened or migrated.
pub async fn connect_with(url: &str, pool: &PoolOptions) -> anyhow::Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url).await?))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(PostgresStore::connect(url, pool).await?))
    } else {
        anyhow::bail!("unsupported database URL scheme (expected sqlite: or postgres:)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_certificate_is_unavailable_but_not_a_lost_connection_to_retry() {
        // Arrange: how sqlx reports a TLS handshake that rustls refused.
        let refused = || {
            sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "invalid peer certificate: Expired",
            ))
        };
        let reset = sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into());

        // Act / Assert
        assert!(!sqlx_connection_lost(&refused()));
        assert!(matches!(
            StoreError::from_sqlx(refused()),
            StoreError::Unavailable(_)
        ));
        assert!(sqlx_connection_lost(&reset));
    }

    #[test]
    fn a_peer_that_closes_before_answering_the_tls_question_is_unavailable() {
        // Arrange
        let closed = sqlx::Error::Protocol(
            "unexpected response from SSLRequest: 0x00 (sqlx_postgres::connection::tls:95)".into(),
        );
        let other = sqlx::Error::Protocol("unexpected message".into());

        // Act / Assert
        assert!(matches!(
            StoreError::from_sqlx(closed),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(StoreError::from_sqlx(other), StoreError::Other(_)));
    }
}
