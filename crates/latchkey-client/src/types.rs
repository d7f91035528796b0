//! The REST API's shapes, as this client reads and writes them. Unknown fields in answers are
//! ignored, so a newer server's additions do not break an older client.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The kind of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    /// Personal access token (the default).
    #[default]
    Pat,
    /// Service token.
    Svc,
}

/// A token's lifecycle state when it was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenState {
    Active,
    Expired,
    Revoked,
    Disabled,
    /// A state this client does not know.
    #[serde(other)]
    Unknown,
}

/// A token as the API shows it: metadata only, never its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenView {
    pub id: Uuid,
    pub org_id: Uuid,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: TokenType,
    /// Prefix, kind and the first characters of the id, e.g. `lk_pat_0192f3c4…`.
    pub display_hint: String,
    pub permissions: u64,
    pub scopes: Vec<String>,
    pub state: TokenState,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Updated in batches, about every second.
    pub last_used_at: Option<DateTime<Utc>>,
    pub request_count: i64,
    pub replaced_by: Option<Uuid>,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    #[serde(default)]
    pub disabled_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub owner: Option<Uuid>,
    /// `native`, or the scheme of a key imported from another system.
    #[serde(default)]
    pub format: Option<String>,
}

/// A token just created: its view and its plaintext, shown this once. `Debug` does not print
/// the plaintext.
#[derive(Clone, Deserialize)]
pub struct CreatedToken {
    pub token: TokenView,
    pub plaintext: String,
}

impl fmt::Debug for CreatedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedToken")
            .field("token", &self.token)
            .field("plaintext", &"[redacted]")
            .finish()
    }
}

/// The answer to a rotation: the new token with its plaintext, and the old one (expiring after
/// the grace period). `Debug` does not print the plaintext.
#[derive(Clone, Deserialize)]
pub struct RotatedToken {
    pub token: TokenView,
    pub plaintext: String,
    pub previous: TokenView,
}

impl fmt::Debug for RotatedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotatedToken")
            .field("token", &self.token)
            .field("plaintext", &"[redacted]")
            .field("previous", &self.previous)
            .finish()
    }
}

/// One page of [`crate::Client::list_tokens`].
#[derive(Debug, Clone, Deserialize)]
pub struct TokenPage {
    pub tokens: Vec<TokenView>,
    /// `None` on the last page.
    pub next_page_token: Option<String>,
}

/// `POST /v1/tokens`: what to create. `NewToken::new("ci").scopes(["runs:read"])`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NewToken {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org_id: Option<Uuid>,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: TokenType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

impl NewToken {
    /// A personal access token named `name`, granting nothing until scopes are added.
    pub fn new(name: impl Into<String>) -> Self {
        NewToken {
            name: name.into(),
            ..NewToken::default()
        }
    }

    /// The scope (or composite) names to grant.
    pub fn scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes = Some(scopes.into_iter().map(Into::into).collect());
        self
    }

    /// A service token instead of a personal one.
    pub fn service(mut self) -> Self {
        self.kind = TokenType::Svc;
        self
    }

    /// Lifetime in seconds from now.
    pub fn ttl_seconds(mut self, seconds: i64) -> Self {
        self.ttl_seconds = Some(seconds);
        self
    }

    /// Another org than the caller's (needs reach over it).
    pub fn in_org(mut self, org_id: Uuid) -> Self {
        self.org_id = Some(org_id);
        self
    }
}

/// `GET /v1/tokens` query; every field optional.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ListTokens {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<TokenState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name_contains: Option<String>,
}

/// The outcome of a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VerifyCode {
    /// Live, and holds every required scope.
    Valid,
    /// Unknown, malformed, revoked, expired or disabled: one answer for all.
    Invalid,
    /// Live, but lacks a required scope.
    InsufficientPermissions,
    /// An Argon2id check was refused; try again after `retry_after_seconds`.
    RateLimited,
    /// A code this client does not know: treat as a refusal.
    #[serde(other)]
    Unknown,
}

/// The answer to a verification (`POST /v1/tokens/verify`, `ValidateToken`). The token's
/// fields are present for `VALID` and `INSUFFICIENT_PERMISSIONS` only.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Verification {
    pub valid: bool,
    pub code: VerifyCode,
    #[serde(default)]
    pub token_id: Option<Uuid>,
    #[serde(default)]
    pub org_id: Option<Uuid>,
    #[serde(default)]
    pub permissions: u64,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub retry_after_seconds: Option<u64>,
}

/// A verification a service answered from its own cache, for [`crate::Client::report_usage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUse {
    pub token_id: Uuid,
    /// 1 to 1,000,000.
    pub count: i64,
    pub last_used_at: DateTime<Utc>,
}

/// What a change was, as the audit action that recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChangeKind {
    Revoked,
    Rotated,
    Disabled,
    Enabled,
    FamilyRevoked,
    Leaked,
    Imported,
    /// An action this client does not know: treat it as any change of the token.
    Other(String),
}

impl ChangeKind {
    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "token_revoked" => ChangeKind::Revoked,
            "token_rotated" => ChangeKind::Rotated,
            "token_disabled" => ChangeKind::Disabled,
            "token_enabled" => ChangeKind::Enabled,
            "token_family_revoked" => ChangeKind::FamilyRevoked,
            "token_leaked" => ChangeKind::Leaked,
            "token_imported" => ChangeKind::Imported,
            other => ChangeKind::Other(other.to_string()),
        }
    }

    /// Whether a token refused before may verify after this change (a token enabled again, a
    /// key imported), so cached refusals must go.
    pub fn may_admit(&self) -> bool {
        matches!(
            self,
            ChangeKind::Enabled | ChangeKind::Imported | ChangeKind::Other(_)
        )
    }
}

/// One change of a token, pushed by `WatchChanges`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenChange {
    pub token_id: Uuid,
    pub org_id: Uuid,
    pub kind: ChangeKind,
    pub at: DateTime<Utc>,
}

/// What one `WatchChanges` message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Tokens changed: drop what is cached about them.
    Changes(Vec<TokenChange>),
    /// Nothing changed; the stream is alive (every 5 s).
    Heartbeat(DateTime<Utc>),
    /// Changes may have been missed: drop every cached answer.
    Reset(DateTime<Utc>),
}

/// One `WatchChanges` message: the event, and the cursor to resume from after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchMessage {
    pub cursor: String,
    pub event: WatchEvent,
}

/// Who a verified request comes from: put in the request's extensions by [`crate::LatchkeyLayer`],
/// and an axum extractor (see [`Verified`'s `FromRequestParts`](#impl-FromRequestParts<S>-for-Verified)).
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub token_id: Uuid,
    pub org_id: Uuid,
    /// Every scope name the token holds.
    pub scopes: Arc<[String]>,
    /// The permission bitmap.
    pub permissions: u64,
    /// `None` for a token that does not expire.
    pub expires_at: Option<DateTime<Utc>>,
}

impl Verified {
    /// Whether the token holds the scope `name` (as the server named it in `scopes`).
    pub fn has_scope(&self, name: &str) -> bool {
        self.scopes.iter().any(|s| s == name)
    }
}
