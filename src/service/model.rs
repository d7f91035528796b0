//! The request and response types of the API, shared by both transports. Field names are the
//! design's (snake_case); bodies are strict (an unknown field is an error).

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::Error;
use crate::token::{Role, Secret, TokenKind};

/// Validated name of a token or org: 1-100 characters of `[A-Za-z0-9 ._:-]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    /// # Errors
    /// `invalid_argument` naming `field` when the name breaks the rule.
    pub fn parse(field: &str, s: String) -> Result<Self, Error> {
        let ok = !s.is_empty()
            && s.chars().count() <= 100
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '.' | '_' | ':' | '-'));
        if ok {
            Ok(Name(s))
        } else {
            Err(Error::invalid(format!(
                "{field} must be 1-100 characters of letters, digits, space and ._:-"
            )))
        }
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// The kind of a token. REST writes `"pat"` / `"svc"` and also accepts the gRPC numbers 1 / 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    /// Personal access token (type 1), the default.
    #[default]
    Pat,
    /// Service token (type 2).
    Svc,
}

impl<'de> Deserialize<'de> for TokenType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(i64),
            Str(String),
        }
        let kind = match Raw::deserialize(d)? {
            Raw::Num(n) => TokenKind::from_code(n),
            Raw::Str(s) => TokenKind::from_name(&s),
        };
        kind.map(TokenType::from)
            .ok_or_else(|| serde::de::Error::custom("type must be \"pat\" (1) or \"svc\" (2)"))
    }
}

/// The schema of a token type in a request: `"pat"` / `"svc"`, or the gRPC numbers 1 / 2.
fn token_type_input() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    let one_of = OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["pat", "svc"])),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .enum_values(Some([1, 2])),
        )
        .description(Some(
            "`pat` (default) or `svc`; the numbers 1 and 2 are accepted too.",
        ))
        .build();
    Schema::OneOf(one_of)
}

impl From<TokenKind> for TokenType {
    fn from(k: TokenKind) -> Self {
        match k {
            TokenKind::Pat => TokenType::Pat,
            TokenKind::Svc => TokenType::Svc,
        }
    }
}

impl From<TokenType> for TokenKind {
    fn from(t: TokenType) -> Self {
        match t {
            TokenType::Pat => TokenKind::Pat,
            TokenType::Svc => TokenKind::Svc,
        }
    }
}

/// The lifecycle state of a token at the time of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenState {
    Active,
    Expired,
    Revoked,
    /// Switched off with `disable`; verifies as invalid until enabled again.
    Disabled,
}

/// How a token's secret is stored and checked: `native` (Latchkey's own format), or the scheme
/// of a key imported from another system (`latchkey import`, docs/migrating.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TokenFormat {
    Native,
    /// An Argon2id hash of the whole token, found by the UUID inside it.
    Argon2idEmbeddedUuid,
    /// A SHA-256 digest of the whole token.
    Sha256,
    /// A SHA-512 digest of the whole token (djangorestframework-api-key).
    Sha512,
    /// Laravel Sanctum's `<id>|<token>`, a SHA-256 digest of the token.
    Sanctum,
}

impl TokenFormat {
    /// The format of a token with this `lookup` column.
    pub fn of(lookup: Option<&str>) -> Self {
        use crate::token::legacy::Scheme;
        match lookup
            .map(|l| crate::token::legacy::format_of(Some(l)))
            .and_then(Scheme::from_name)
        {
            None => TokenFormat::Native,
            Some(Scheme::Argon2idEmbeddedUuid) => TokenFormat::Argon2idEmbeddedUuid,
            Some(Scheme::Sha256) => TokenFormat::Sha256,
            Some(Scheme::Sha512) => TokenFormat::Sha512,
            Some(Scheme::Sanctum) => TokenFormat::Sanctum,
        }
    }

    /// The import scheme of this format; `None` for native.
    pub fn scheme(self) -> Option<crate::token::legacy::Scheme> {
        use crate::token::legacy::Scheme;
        match self {
            TokenFormat::Native => None,
            TokenFormat::Argon2idEmbeddedUuid => Some(Scheme::Argon2idEmbeddedUuid),
            TokenFormat::Sha256 => Some(Scheme::Sha256),
            TokenFormat::Sha512 => Some(Scheme::Sha512),
            TokenFormat::Sanctum => Some(Scheme::Sanctum),
        }
    }

    pub fn as_str(self) -> &'static str {
        self.scheme().map_or("native", |s| s.name())
    }

    /// The format named `s` (`native` or a scheme's name).
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "native" => Some(TokenFormat::Native),
            _ => crate::token::legacy::Scheme::from_name(s).map(|k| Self::of(Some(k.name()))),
        }
    }
}

/// One key of an import file (`latchkey import`, `POST /v1/tokens/import`): the hash another
/// system stored, never a plaintext. Strict: an unknown field refuses the line.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportLine {
    /// `argon2id-embedded-uuid`, `sha256`, `sha512` or `sanctum`.
    pub scheme: String,
    /// As the source stored it: a PHC string, or hex (`sha512` also as `sha512$$<hex>`).
    pub hash: String,
    pub name: String,
    /// Kept as the token id; required for `argon2id-embedded-uuid` (the UUID in the token).
    pub id: Option<Uuid>,
    /// Sanctum's `personal_access_tokens.id`, the number before `|`.
    pub sanctum_id: Option<u64>,
    /// Defaults to the import's org.
    pub org_id: Option<Uuid>,
    pub scopes: Option<Vec<String>>,
    pub permissions: Option<u64>,
    #[serde(rename = "type")]
    pub kind: Option<TokenType>,
    /// A user of the org who owns the key.
    pub owner_email: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Set: the key is imported revoked, and refused at verify.
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub request_count: Option<i64>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// `POST /v1/tokens/import` query.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// The org of keys without an `org_id`; defaults to the caller's org.
    pub org_id: Option<Uuid>,
    /// Validate and report only; nothing is written. Default false.
    pub dry_run: Option<bool>,
}

/// What an import did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct ImportReport {
    pub dry_run: bool,
    /// Whether anything was written (false for a dry run, or when a line was refused).
    pub written: bool,
    /// Keys imported now (with `dry_run`: that would be).
    pub imported: usize,
    /// Keys whose hash was already present: left unchanged, except that one revoked in the file
    /// and live here is revoked (counted in `revoked` too).
    pub already_present: usize,
    /// Keys already present that the file says were revoked, revoked now (with `dry_run`: that
    /// would be). A catch-up import at cutover carries the source's revocations this way.
    pub revoked: usize,
    /// Lines refused, with why; when there are any, nothing is written.
    pub refused: Vec<RefusedLine>,
    /// Every key that was not refused, with its token id.
    pub keys: Vec<ImportedKey>,
}

/// A refused line of an import.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct RefusedLine {
    /// The line number in a JSON Lines file, or the position (from 1) in a JSON array.
    pub line: usize,
    pub reason: String,
}

/// A key of an import that was not refused.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct ImportedKey {
    pub line: usize,
    pub id: Uuid,
    pub status: ImportedStatus,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ImportedStatus {
    Imported,
    AlreadyPresent,
    /// Already present, and revoked now because the file says it was revoked.
    Revoked,
}

/// `POST /v1/tokens`: create a token. Give `permissions` (the bitmap), `scopes` (names and
/// composites), or both (their union); neither makes a token that grants nothing. Give at most one
/// of `expires_at` and `ttl_seconds`; neither makes a token that does not expire.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// The org to create the token in; defaults to the caller's own.
    pub org_id: Option<Uuid>,
    /// 1-100 characters of `[A-Za-z0-9 ._:-]`, unique among the org's live tokens.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[A-Za-z0-9 ._:-]{1,100}$"
    )]
    pub name: String,
    /// `pat` (default) or `svc`; the numbers 1 and 2 are accepted too.
    #[serde(rename = "type", default)]
    #[schema(schema_with = token_type_input)]
    pub kind: TokenType,
    /// The permission bitmap: only bits this deployment assigns to a scope (the document
    /// served by a running server gives the largest such value as `maximum`).
    #[schema(minimum = 0)]
    pub permissions: Option<u64>,
    /// Scope or composite names (the document served by a running server lists them).
    pub scopes: Option<Vec<String>>,
    /// When the token stops working (RFC 3339): in the future, at most 10 years (of 366 days)
    /// away. Not together with `ttl_seconds`.
    pub expires_at: Option<DateTime<Utc>>,
    /// Lifetime in seconds from now: 1 to 10 years (of 366 days). Not together with
    /// `expires_at`.
    #[schema(minimum = 1, maximum = 316_224_000)]
    pub ttl_seconds: Option<i64>,
    /// Free-form JSON object of at most 4096 bytes as JSON, without the character U+0000,
    /// returned with the token.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// A token as the API shows it: metadata only, never the secret or its verifier.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct TokenView {
    pub id: Uuid,
    pub org_id: Uuid,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: TokenType,
    /// Prefix, kind and the first 8 characters of the id, e.g. `lk_pat_0192f3c4…`.
    pub display_hint: String,
    pub permissions: u64,
    pub scopes: Vec<String>,
    pub state: TokenState,
    pub created_at: DateTime<Utc>,
    /// `token:<uuid>`, `user:<uuid>`, `bootstrap`, `break_glass` or `system`.
    pub created_by: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Updated in batches, at least every second.
    pub last_used_at: Option<DateTime<Utc>>,
    pub request_count: i64,
    pub replaced_by: Option<Uuid>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    pub disabled_at: Option<DateTime<Utc>>,
    /// The last 5 distinct client addresses that used the token, newest first (batched like
    /// `request_count`).
    pub client_ips: Vec<ClientIpView>,
    /// The user who owns the token; `null` for tokens of machines.
    pub owner: Option<Uuid>,
    /// `native`, or the scheme of a key imported from another system.
    pub format: TokenFormat,
}

/// A client address that used a token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct ClientIpView {
    pub ip: String,
    pub last_seen_at: DateTime<Utc>,
}

/// `POST /v1/tokens/{id}/rotate`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateTokenRequest {
    /// Defaults to the caller's org.
    pub org_id: Option<Uuid>,
    /// Seconds the old token keeps working: default 3600, 0 = at once (the emergency path),
    /// at most 30 days.
    #[schema(minimum = 0, maximum = 2_592_000)]
    pub grace_seconds: Option<i64>,
}

/// The answer to a rotation: the new token with its plaintext (shown once) and the old one.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RotatedToken {
    pub token: TokenView,
    /// The new token itself. Store it now: it cannot be shown again.
    pub plaintext: String,
    /// The old token, now replaced and expiring after the grace period.
    pub previous: TokenView,
}

/// `GET /v1/audit` query.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListAuditRequest {
    /// Defaults to the caller's org.
    pub org_id: Option<Uuid>,
    pub token_id: Option<Uuid>,
    /// e.g. `token_created`, `token_revoked`, `token_rotated`.
    pub action: Option<String>,
    /// e.g. `token:<uuid>`, `bootstrap`.
    pub actor: Option<String>,
    /// Events at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Events before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// 1-500, default 50; 0 is the default, larger values are treated as 500.
    #[param(value_type = Option<u64>, minimum = 0, maximum = 4_294_967_295_u64)]
    pub page_size: Option<u32>,
    /// `next_page_token` of the previous page: an opaque cursor (today a token or user id).
    #[param(
        pattern = r"^([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}|[0-9A-Fa-f]{32}|\{[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\}|urn:uuid:[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})$"
    )]
    pub page_token: Option<String>,
}

/// One audit event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct AuditEventView {
    pub id: Uuid,
    pub org_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    /// `token:<uuid>`, `user:<uuid>`, `bootstrap`, `break_glass` or `system`.
    pub actor: String,
    pub action: String,
    pub token_id: Option<Uuid>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

/// One page of audit events, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub events: Vec<AuditEventView>,
    /// Pass as `page_token` for the next page; absent on the last page.
    pub next_page_token: Option<String>,
}

/// `PATCH /v1/orgs/{id}`: the lifetime policy. An absent field is left as it is; `null` removes
/// the limit.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateOrgRequest {
    /// The longest lifetime a new token may get, in seconds: 1 to 10 years (of 366 days).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 316_224_000)]
    pub max_ttl_seconds: Option<Option<i64>>,
    /// The lifetime of tokens created without one, in seconds: 1 to 10 years (of 366 days),
    /// and at most the maximum.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 316_224_000)]
    pub default_ttl_seconds: Option<Option<i64>>,
}

/// Tells an absent field (`None`, by `default`) from an explicit `null` (`Some(None)`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// The answer to a create: the token and its plaintext, which is shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    pub token: TokenView,
    /// The token itself. Store it now: it cannot be shown again.
    pub plaintext: String,
}

/// `GET /v1/tokens` query.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListTokensRequest {
    /// Defaults to the caller's org.
    pub org_id: Option<Uuid>,
    /// 1-500, default 50; 0 is the default, larger values are treated as 500.
    #[param(value_type = Option<u64>, minimum = 0, maximum = 4_294_967_295_u64)]
    pub page_size: Option<u32>,
    /// `next_page_token` of the previous page: an opaque cursor (today a token or user id).
    #[param(
        pattern = r"^([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}|[0-9A-Fa-f]{32}|\{[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\}|urn:uuid:[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})$"
    )]
    pub page_token: Option<String>,
    /// `active`, `expired`, `revoked` or `disabled`.
    pub state: Option<TokenState>,
    /// `me` (the signed-in user, or the user owning the calling token) or a user id.
    #[param(
        pattern = r"^(me|[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}|[0-9A-Fa-f]{32}|\{[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\}|urn:uuid:[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})$"
    )]
    pub owner: Option<String>,
    /// Only tokens whose name contains this text (ignoring ASCII case).
    pub name_contains: Option<String>,
    /// Only native tokens, or only keys imported with one scheme.
    pub format: Option<TokenFormat>,
}

/// One page of tokens, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenPage {
    pub tokens: Vec<TokenView>,
    /// Pass as `page_token` for the next page; absent on the last page.
    pub next_page_token: Option<String>,
}

/// Optional org scoping of a request about one token.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OrgScope {
    /// Defaults to the caller's org.
    pub org_id: Option<Uuid>,
}

/// `GET /v1/tokens/{id}/usage`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// Defaults to the caller's org.
    pub org_id: Option<Uuid>,
    /// Days to show, 1 to 7 (the hours kept); default 7.
    #[param(minimum = 1, maximum = 7)]
    pub days: Option<i64>,
}

/// A token's verifications per clock hour (UTC), oldest first: one entry for every hour of
/// the window, zero where there were none, ending with the current hour. Counts reach the
/// store with the usage flush, so the last second or so may not be in yet.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct TokenUsage {
    pub token_id: Uuid,
    /// The first hour's start.
    pub from: DateTime<Utc>,
    /// The end of the current hour.
    pub to: DateTime<Utc>,
    /// Verifications within the window.
    pub total: i64,
    pub hours: Vec<UsageHour>,
}

/// Verifications of a token within one hour.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct UsageHour {
    /// The hour's start.
    pub hour: DateTime<Utc>,
    pub count: i64,
}

/// `POST /v1/tokens/verify`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The token to check.
    pub token: String,
    /// Scope or composite names the token must all hold.
    #[serde(default)]
    pub required_scopes: Vec<String>,
}

/// The outcome of a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VerifyCode {
    Valid,
    /// Malformed, unknown, expired or revoked: the body says no more than that.
    Invalid,
    /// The token is valid but lacks a required scope.
    InsufficientPermissions,
    RateLimited,
}

/// The answer to every well-formed verification. For `INVALID` only `valid` and `code` are
/// present, one body for every kind of invalid token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct VerifyResponse {
    pub valid: bool,
    pub code: VerifyCode,
    #[serde(flatten)]
    #[schema(value_type = Option<VerifiedToken>)]
    pub token: Option<Arc<VerifiedToken>>,
    /// With `RATE_LIMITED`: seconds until the client may try again (also in `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
}

/// What a verification tells about a genuine token (also with `INSUFFICIENT_PERMISSIONS`).
// Built once per cache entry and shared by every answer about that token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct VerifiedToken {
    pub token_id: Uuid,
    pub org_id: Uuid,
    pub permissions: u64,
    // Shared by every token with the same permissions.
    #[schema(value_type = Vec<String>)]
    pub scopes: Arc<[String]>,
    /// `null` for a token that does not expire.
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    json_fields: Memo<Box<str>>,
    // Boxed: a cache entry that only REST verifies answer never renders it, and inline it
    // would be 120 bytes of every entry.
    #[serde(skip)]
    identity: Memo<Box<IdentityText>>,
}

/// A value rendered from a [`VerifiedToken`] on first use (its JSON fields, its identity as
/// text); not part of the token's value, so it compares equal and prints nothing.
#[derive(Clone)]
struct Memo<T>(OnceLock<T>);

impl<T> Default for Memo<T> {
    fn default() -> Self {
        Memo(OnceLock::new())
    }
}

impl<T> PartialEq for Memo<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<T> std::fmt::Debug for Memo<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("..")
    }
}

/// A verified token's identity as the gateway check's headers carry it: header values checked
/// once and sharing their bytes, so an answer takes a reference, not a copy, and checks nothing.
#[derive(Clone, Debug)]
pub struct IdentityText {
    /// The token id, hyphenated lowercase.
    pub token_id: http::HeaderValue,
    /// The org id, hyphenated lowercase.
    pub org_id: http::HeaderValue,
    /// The scope names joined with `,` (empty for none).
    pub scopes: http::HeaderValue,
}

impl VerifiedToken {
    pub fn new(
        token_id: Uuid,
        org_id: Uuid,
        permissions: u64,
        scopes: Arc<[String]>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Self {
        Self {
            token_id,
            org_id,
            permissions,
            scopes,
            expires_at,
            json_fields: Memo::default(),
            identity: Memo::default(),
        }
    }

    /// This token's identity as text, for the gateway check's headers. Rendered on first use,
    /// like [`Self::json_fields`].
    pub fn identity(&self) -> &IdentityText {
        // Ids and scope names are visible ASCII (`ScopeName` checks it), so no value is ever
        // refused; an empty one stands in if that changed.
        let value = |text: String| {
            http::HeaderValue::try_from(text).unwrap_or_else(|_| http::HeaderValue::from_static(""))
        };
        self.identity.0.get_or_init(|| {
            Box::new(IdentityText {
                token_id: value(self.token_id.hyphenated().to_string()),
                org_id: value(self.org_id.hyphenated().to_string()),
                scopes: value(self.scopes.join(",")),
            })
        })
    }

    /// This token's fields as they appear in a JSON verify answer, without the braces
    /// (`"token_id":...,"expires_at":...`). Rendered on first use: a cached token answers with
    /// the same fields every time, so the verify path copies them instead of serialising.
    pub fn json_fields(&self) -> &str {
        self.json_fields.0.get_or_init(|| {
            let whole = serde_json::to_string(self).unwrap_or_else(|_| "{}".into());
            whole[1..whole.len() - 1].into()
        })
    }
}

impl VerifyCode {
    /// The wire name: `VALID`, `INVALID`, `INSUFFICIENT_PERMISSIONS`, `RATE_LIMITED`.
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyCode::Valid => "VALID",
            VerifyCode::Invalid => "INVALID",
            VerifyCode::InsufficientPermissions => "INSUFFICIENT_PERMISSIONS",
            VerifyCode::RateLimited => "RATE_LIMITED",
        }
    }
}

impl VerifyResponse {
    /// The single body for every kind of invalid token.
    pub fn invalid() -> Self {
        Self {
            valid: false,
            code: VerifyCode::Invalid,
            token: None,
            retry_after_seconds: None,
        }
    }

    /// The answer while the client is past its failed-verification limit.
    pub fn rate_limited(retry_after: std::time::Duration) -> Self {
        Self {
            valid: false,
            code: VerifyCode::RateLimited,
            token: None,
            retry_after_seconds: Some(retry_after.as_secs().max(1)),
        }
    }
}

/// `POST /v1/orgs`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrgRequest {
    /// 1-100 characters of `[A-Za-z0-9 ._:-]`, unique.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[A-Za-z0-9 ._:-]{1,100}$"
    )]
    pub name: String,
}

/// An org and its lifetime policy.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct OrgView {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// The longest lifetime a new token may get; `null`: no limit.
    pub max_ttl_seconds: Option<i64>,
    /// The lifetime of tokens created without one; `null`: they do not expire.
    pub default_ttl_seconds: Option<i64>,
}

/// `POST /v1/tokens/leaked`: tokens found in the open.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeakedReport {
    /// At most 100 token strings.
    #[schema(max_items = 100)]
    pub tokens: Vec<String>,
    /// Where they were found, e.g. a URL (at most 200 characters).
    #[schema(max_length = 200)]
    pub source: Option<String>,
}

/// The answer to every accepted report: how many entries were examined, never which were valid.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct LeakedAck {
    pub examined: usize,
}

/// A validated email address: at most 254 characters, exactly one `@` with text on both sides,
/// no spaces or control characters. Kept as given; compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// # Errors
    /// `invalid_argument` naming the rule.
    pub fn parse(s: String) -> Result<Self, Error> {
        let ok = s.chars().count() <= 254
            && s.matches('@').count() == 1
            && s.split_once('@')
                .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
            && !s.chars().any(|c| c.is_whitespace() || c.is_control());
        if ok {
            Ok(Email(s))
        } else {
            Err(Error::invalid(
                "email must be at most 254 characters with exactly one @ and no spaces",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A person's role: `member` or `admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UserRole {
    /// Manages the tokens it owns (the default).
    #[default]
    Member,
    /// Every token and user of its org, its policy and its audit log.
    Admin,
}

impl From<UserRole> for Role {
    fn from(r: UserRole) -> Self {
        match r {
            UserRole::Member => Role::Member,
            UserRole::Admin => Role::Admin,
        }
    }
}

impl From<Role> for UserRole {
    fn from(r: Role) -> Self {
        match r {
            Role::Member => UserRole::Member,
            Role::Admin => UserRole::Admin,
        }
    }
}

/// Where a user stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UserState {
    /// Has a password and may sign in.
    Active,
    /// Created, but has not set a password through its setup link yet.
    Invited,
    /// May not sign in; its tokens were revoked and its sessions ended when it was disabled.
    Disabled,
}

/// A user as the API shows it: never its password hash or setup token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct UserView {
    pub id: Uuid,
    pub org_id: Uuid,
    pub email: String,
    pub name: String,
    pub role: UserRole,
    /// Operators of the whole deployment (set from the command line only).
    pub platform_admin: bool,
    pub state: UserState,
    /// The permission bits the role gives (what a token the user mints may hold at most).
    pub permissions: u64,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// `token:<uuid>`, `user:<uuid>`, `bootstrap`, `break_glass` or `system`.
    pub created_by: String,
    pub last_login_at: Option<DateTime<Utc>>,
    pub disabled_at: Option<DateTime<Utc>>,
}

/// `POST /v1/users`: invite a person. The answer holds a one-time setup link (valid 24 hours)
/// to hand over; no email is sent.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    /// The org to create the user in; defaults to the caller's own (another needs
    /// `platform:admin`).
    pub org_id: Option<Uuid>,
    /// At most 254 characters, exactly one `@` with text on both sides, no spaces or control
    /// characters; unique in the deployment, compared case-insensitively.
    #[schema(
        max_length = 254,
        pattern = r"^[^@\x00-\x20\x7f-\x9f\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+@[^@\x00-\x20\x7f-\x9f\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$"
    )]
    pub email: String,
    /// 1-100 characters of `[A-Za-z0-9 ._:-]`.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[A-Za-z0-9 ._:-]{1,100}$"
    )]
    pub name: String,
    /// `member` (default) or `admin`.
    #[serde(default)]
    pub role: UserRole,
}

/// The answer to an invitation.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedUser {
    pub user: UserView,
    /// The page where the person sets a password: `<public URL>/ui/setup?token=<setup_token>`.
    /// Shown this once.
    pub setup_url: String,
    /// The one-time setup token in the link, for `POST /v1/auth/setup`.
    pub setup_token: String,
    pub setup_expires_at: DateTime<Utc>,
}

/// `GET /v1/users` query.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListUsersRequest {
    /// Defaults to the caller's org.
    pub org_id: Option<Uuid>,
    /// 1-500, default 50; 0 is the default, larger values are treated as 500.
    #[param(value_type = Option<u64>, minimum = 0, maximum = 4_294_967_295_u64)]
    pub page_size: Option<u32>,
    /// `next_page_token` of the previous page: an opaque cursor (today a token or user id).
    #[param(
        pattern = r"^([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}|[0-9A-Fa-f]{32}|\{[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\}|urn:uuid:[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})$"
    )]
    pub page_token: Option<String>,
}

/// One page of users, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserPage {
    pub users: Vec<UserView>,
    /// Pass as `page_token` for the next page; absent on the last page.
    pub next_page_token: Option<String>,
}

/// `PATCH /v1/users/{id}`: an absent field is left as it is.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    /// 1-100 characters of `[A-Za-z0-9 ._:-]`.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[A-Za-z0-9 ._:-]{1,100}$"
    )]
    pub name: Option<String>,
    /// A demotion revokes the user's live tokens that hold more than the new role allows.
    pub role: Option<UserRole>,
}

/// `POST /v1/users/me/password`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    #[schema(value_type = String)]
    pub current_password: Secret<String>,
    /// 8-128 characters, not one of the 20,000 most common passwords.
    #[schema(value_type = String, min_length = 8, max_length = 128)]
    pub new_password: Secret<String>,
}

/// `POST /v1/auth/setup`: set the first password with the token of a setup link.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetupPasswordRequest {
    #[schema(value_type = String)]
    pub setup_token: Secret<String>,
    /// 8-128 characters, not one of the 20,000 most common passwords.
    #[schema(value_type = String, min_length = 8, max_length = 128)]
    pub password: Secret<String>,
}

/// `POST /v1/auth/token`: trade an email and password for a token owned by the user. Give at
/// most one of `ttl_seconds` and `expires_in_days`; neither gives the org's default lifetime,
/// capped at the login maximum (30 days unless configured).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExchangePasswordRequest {
    pub email: String,
    #[schema(value_type = String)]
    pub password: Secret<String>,
    /// The new token's name: 1-100 characters of `[A-Za-z0-9 ._:-]`, unique among the org's
    /// live tokens.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[A-Za-z0-9 ._:-]{1,100}$"
    )]
    pub name: String,
    /// Scope or composite names; with neither this nor `permissions`, the deployment's
    /// `default_scopes`.
    pub scopes: Option<Vec<String>>,
    /// The permission bitmap: only bits this deployment assigns to a scope.
    #[schema(minimum = 0)]
    pub permissions: Option<u64>,
    /// Lifetime in seconds: at least 1, at most the login maximum (`--login-token-max-days`).
    /// Not together with `expires_in_days`.
    #[schema(minimum = 1, maximum = 316_224_000)]
    pub ttl_seconds: Option<i64>,
    /// Lifetime in days, at most the login maximum. Not together with `ttl_seconds`.
    #[schema(minimum = 1, maximum = 3660)]
    pub expires_in_days: Option<i64>,
    /// `pat` (default) or `svc`; the numbers 1 and 2 are accepted too.
    #[serde(rename = "type", default)]
    #[schema(schema_with = token_type_input)]
    pub kind: TokenType,
}

/// `POST /v1/auth/session`: sign in for the console.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignInRequest {
    pub email: String,
    #[schema(value_type = String)]
    pub password: Secret<String>,
}

/// A session as its owner sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct SessionView {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    /// When the session ends at the latest (its absolute timeout).
    pub expires_at: DateTime<Utc>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// Whether this is the session of the request.
    pub current: bool,
}

/// The answer to a sign-in (the session id itself travels only in the cookie).
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct SignedIn {
    pub user: UserView,
    pub session: SessionView,
    /// Send it back as `X-CSRF-Token` with every request made with the session cookie.
    pub csrf_token: String,
}

/// `GET /v1/users/me`: the caller's user, and for a session its CSRF token.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct CurrentUser {
    #[serde(flatten)]
    pub user: UserView,
    /// Present when the caller is a session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
}

/// The caller's sessions, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionView>,
}

/// How many sessions an "end the others" call ended.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionsEnded {
    pub ended: u64,
}

// The answers that carry a secret (a setup token, a CSRF token) print it as `[redacted]`.
impl std::fmt::Debug for CreatedUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedUser")
            .field("user", &self.user)
            .field("setup_url", &"[redacted]")
            .field("setup_token", &"[redacted]")
            .field("setup_expires_at", &self.setup_expires_at)
            .finish()
    }
}

impl std::fmt::Debug for SignedIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedIn")
            .field("user", &self.user)
            .field("session", &self.session)
            .field("csrf_token", &"[redacted]")
            .finish()
    }
}

impl std::fmt::Debug for CurrentUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurrentUser")
            .field("user", &self.user)
            .field(
                "csrf_token",
                &self.csrf_token.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}
