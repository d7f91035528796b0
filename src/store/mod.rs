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

use crate::token::{Permissions, TokenKind};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// A store failure the service reacts to; everything else is `Other`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was hit (live token name, org name); the message says which.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
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
/// order, so two nodes flushing overlapping batches cannot deadlock.
pub fn combine_usage(batch: &[UsageDelta]) -> BTreeMap<Uuid, UsageDelta> {
    let mut by_id: BTreeMap<Uuid, UsageDelta> = BTreeMap::new();
    for u in batch {
        match by_id.get_mut(&u.token_id) {
            Some(d) => {
                d.count += u.count;
                d.last_used_at = d.last_used_at.max(u.last_used_at);
                merge_client_ips(&mut d.ips, &u.ips);
            }
            None => {
                let mut d = u.clone();
                d.ips.clear();
                merge_client_ips(&mut d.ips, &u.ips);
                by_id.insert(u.token_id, d);
            }
        }
    }
    by_id
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
    /// Only tokens whose `created_by` is this actor (callers without `org:admin`).
    pub created_by: Option<String>,
    pub state: Option<StateFilter>,
    /// Only tokens with an id below this one (the cursor).
    pub before_id: Option<Uuid>,
    pub limit: u32,
    pub now: DateTime<Utc>,
}

/// Usage accumulated in memory for one token, added to its row by [`Store::add_usage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    pub token_id: Uuid,
    pub count: i64,
    pub last_used_at: DateTime<Utc>,
    /// Client addresses seen since the last flush.
    pub ips: Vec<ClientIp>,
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
    /// `Conflict` if the name is taken.
    async fn create_org(
        &self,
        org: &OrgRecord,
        first_token: Option<&TokenRecord>,
        events: &[AuditRecord],
    ) -> StoreResult<()>;

    /// Inserts a token and its events in one transaction. A live token of the same org and name
    /// (not revoked, not expired at `now`) makes it fail with `Conflict`.
    async fn insert_token(
        &self,
        token: &TokenRecord,
        events: &[AuditRecord],
        now: DateTime<Utc>,
    ) -> StoreResult<()>;

    async fn get_token(&self, id: Uuid) -> StoreResult<Option<TokenRecord>>;

    /// The verify columns of those of `ids` that exist, in any order, in one round trip.
    async fn get_tokens_for_verify(&self, ids: &[Uuid]) -> StoreResult<Vec<VerifyRecord>>;

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
    /// that is gone is skipped. The batch is shared so that a store may write it on another
    /// thread without copying it.
    async fn add_usage(&self, batch: Arc<[UsageDelta]>) -> StoreResult<()>;

    /// Updates an org's lifetime policy and writes `event`, in one transaction.
    async fn update_org(&self, org: &OrgRecord, event: &AuditRecord) -> StoreResult<()>;

    /// Rotates `old_id`: inserts `new_token` (same family), sets the old token's `replaced_by` to
    /// it and its `expires_at` to `old_expires_at`, and writes `events`, in one transaction, but
    /// only if the old token is neither revoked nor already replaced. Returns whether it rotated.
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

    /// A stream of cache invalidations published by other nodes, for backends shared by several
    /// nodes. `None` (the default) for a single-node backend.
    async fn invalidations(
        &self,
    ) -> StoreResult<Option<tokio::sync::mpsc::Receiver<Invalidation>>> {
        Ok(None)
    }
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
