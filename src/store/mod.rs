//! Persistence. One [`Store`] trait, one implementation per backend, chosen by the database URL's
//! scheme. The store knows rows and transactions, never rules: who may do what is `service/`'s.

mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::token::{Permissions, TokenKind};

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

/// An organisation: the tenant every token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgRecord {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
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

/// The state filter of a token list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFilter {
    Active,
    Expired,
    Revoked,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageDelta {
    pub token_id: Uuid,
    pub count: i64,
    pub last_used_at: DateTime<Utc>,
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
    /// `last_used_at`.
    async fn add_usage(&self, batch: &[UsageDelta]) -> StoreResult<()>;
}

/// Opens the store named by `url`: `sqlite:...` (the default) or, later, `postgres:...`.
///
/// # Errors
/// An unsupported scheme, or a database that cannot be opened or migrated.
pub async fn connect(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url).await?))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        anyhow::bail!("the PostgreSQL backend is not built yet; use a sqlite: URL")
    } else {
        anyhow::bail!("unsupported database URL scheme (expected sqlite: or postgres:)")
    }
}
