//! `/v1/tokens` handlers: extract, call one service method, map the result.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderName, StatusCode};

use super::NO_STORE;
use uuid::Uuid;

use super::AppState;
use super::error::ErrorBody;
use super::extract::{ApiJson, ApiPath, ApiQuery, Authenticated, ImportBody};
use crate::error::Error;
use crate::service::model::{
    CreateTokenRequest, CreatedToken, ImportLine, ImportQuery, ImportReport, ListTokensRequest,
    OrgScope, RotateTokenRequest, RotatedToken, TokenPage, TokenUsage, TokenView, UsageQuery,
};

/// Create a token; its plaintext is in this response only.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", security(("bearer" = [])),
    request_body = CreateTokenRequest,
    responses(
        (status = 201, description = "Created", body = CreatedToken),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 401, description = "Missing or invalid bearer", body = ErrorBody),
        (status = 403, description = "Lacks tokens:create or a granted bit", body = ErrorBody),
        (status = 404, description = "Org outside reach", body = ErrorBody),
        (status = 409, description = "A live token has this name", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
    ))]
pub async fn create_token(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> Result<
    (
        StatusCode,
        [(HeaderName, &'static str); 1],
        Json<CreatedToken>,
    ),
    Error,
> {
    let created = s
        .authority
        .create_token(&caller, req, s.clock.now())
        .await?;
    Ok((StatusCode::CREATED, NO_STORE, Json(created)))
}

/// Import keys another system stored (their hashes) as tokens, all or nothing: JSON Lines or a
/// JSON array of keys (docs/migrating.md). A re-import of the same hashes changes nothing.
#[utoipa::path(post, path = "/v1/tokens/import", tag = "tokens", security(("bearer" = [])),
    params(ImportQuery),
    request_body(content(
        (String = "application/x-ndjson"),
        (Vec<ImportLine> = "application/json"),
    )),
    responses(
        (status = 200, description = "Imported (or, with dry_run, validated)", body = ImportReport),
        (status = 400, description = "Malformed body, or refused lines (each named; nothing written)", body = ErrorBody),
        (status = 401, description = "Missing or invalid bearer", body = ErrorBody),
        (status = 403, description = "Lacks org:admin", body = ErrorBody),
        (status = 404, description = "Org outside reach", body = ErrorBody),
        (status = 409, description = "A concurrent change took a name or hash; run it again", body = ErrorBody),
        (status = 413, description = "Body over 16 MiB", body = ErrorBody),
    ))]
pub async fn import_tokens(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiQuery(q): ApiQuery<ImportQuery>,
    ImportBody(input): ImportBody,
) -> Result<Json<ImportReport>, Error> {
    let opts = crate::service::ImportOptions {
        org_id: q.org_id,
        dry_run: q.dry_run.unwrap_or(false),
    };
    let report = s
        .authority
        .import_tokens(&caller, input, opts, s.clock.now())
        .await?;
    Ok(Json(report.refusal()?))
}

/// List tokens (metadata only), newest first, with cursor paging.
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", security(("bearer" = [])),
    params(ListTokensRequest),
    responses(
        (status = 200, description = "One page", body = TokenPage),
        (status = 400, description = "Malformed query", body = ErrorBody),
        (status = 401, description = "Missing or invalid bearer", body = ErrorBody),
        (status = 403, description = "Lacks tokens:read", body = ErrorBody),
        (status = 404, description = "Org outside reach", body = ErrorBody),
    ))]
pub async fn list_tokens(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiQuery(req): ApiQuery<ListTokensRequest>,
) -> Result<Json<TokenPage>, Error> {
    Ok(Json(
        s.authority.list_tokens(&caller, req, s.clock.now()).await?,
    ))
}

/// One token's metadata.
#[utoipa::path(get, path = "/v1/tokens/{id}", tag = "tokens", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Token id"), OrgScope),
    responses(
        (status = 200, description = "The token", body = TokenView),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or invalid bearer", body = ErrorBody),
        (status = 403, description = "Lacks tokens:read", body = ErrorBody),
        (status = 404, description = "No such token within reach", body = ErrorBody),
    ))]
pub async fn get_token(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(scope): ApiQuery<OrgScope>,
) -> Result<Json<TokenView>, Error> {
    Ok(Json(
        s.authority
            .get_token(&caller, scope, id, s.clock.now())
            .await?,
    ))
}

/// A token's verifications per hour over the last days (default 7, the most kept), oldest
/// first, every hour listed. Counts arrive with the usage flush (about once a second).
#[utoipa::path(get, path = "/v1/tokens/{id}/usage", tag = "tokens", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Token id"), UsageQuery),
    responses(
        (status = 200, description = "Hourly verification counts", body = TokenUsage),
        (status = 400, description = "Malformed id or days outside 1 to 7", body = ErrorBody),
        (status = 401, description = "Missing or invalid bearer", body = ErrorBody),
        (status = 403, description = "Lacks tokens:read", body = ErrorBody),
        (status = 404, description = "No such token within reach", body = ErrorBody),
    ))]
pub async fn token_usage(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> Result<Json<TokenUsage>, Error> {
    Ok(Json(
        s.authority
            .token_usage(&caller, id, q, s.clock.now())
            .await?,
    ))
}

/// Revoke a token, at once. Revoking a revoked token succeeds and changes nothing.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Token id"), OrgScope),
    responses(
        (status = 200, description = "The revoked token", body = TokenView),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or invalid bearer", body = ErrorBody),
        (status = 403, description = "Lacks tokens:revoke", body = ErrorBody),
        (status = 404, description = "No such token within reach", body = ErrorBody),
    ))]
pub async fn revoke_token(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(scope): ApiQuery<OrgScope>,
) -> Result<Json<TokenView>, Error> {
    Ok(Json(
        s.authority
            .revoke_token(&caller, scope, id, s.clock.now())
            .await?,
    ))
}

/// Revoke the bearer token itself. Needs no permission.
#[utoipa::path(delete, path = "/v1/tokens/current", tag = "tokens", security(("bearer" = [])),
    responses(
        (status = 200, description = "The revoked token", body = TokenView),
        (status = 401, description = "Missing or invalid bearer", body = ErrorBody),
    ))]
pub async fn revoke_current_token(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<TokenView>, Error> {
    Ok(Json(
        s.authority.revoke_current(&caller, s.clock.now()).await?,
    ))
}

/// Rotate a token: a new token with the same name, permissions and lifetime length; the old one
/// keeps working for the grace period. Rotating an already rotated token revokes its whole
/// family and answers 409.
#[utoipa::path(post, path = "/v1/tokens/{id}/rotate", tag = "tokens", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Token id")),
    request_body = RotateTokenRequest,
    responses(
        (status = 201, description = "The new token, its plaintext, and the old token", body = RotatedToken),
        (status = 400, description = "Malformed request, or a revoked, expired or disabled token", body = ErrorBody),
        (status = 401, description = "Missing or invalid bearer", body = ErrorBody),
        (status = 403, description = "Lacks tokens:rotate", body = ErrorBody),
        (status = 404, description = "No such token within reach", body = ErrorBody),
        (status = 409, description = "Already rotated: the whole family is now revoked", body = ErrorBody),
    ))]
pub async fn rotate_token(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<RotateTokenRequest>,
) -> Result<
    (
        StatusCode,
        [(HeaderName, &'static str); 1],
        Json<RotatedToken>,
    ),
    Error,
> {
    let rotated = s
        .authority
        .rotate_token(&caller, id, req, s.clock.now())
        .await?;
    Ok((StatusCode::CREATED, NO_STORE, Json(rotated)))
}

/// Disable a token without revoking it: it verifies as invalid until enabled.
#[utoipa::path(post, path = "/v1/tokens/{id}/disable", tag = "tokens", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Token id"), OrgScope),
    responses(
        (status = 200, description = "The token", body = TokenView),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or invalid bearer", body = ErrorBody),
        (status = 403, description = "Lacks tokens:revoke", body = ErrorBody),
        (status = 404, description = "No such token within reach", body = ErrorBody),
    ))]
pub async fn disable_token(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(scope): ApiQuery<OrgScope>,
) -> Result<Json<TokenView>, Error> {
    let now = s.clock.now();
    Ok(Json(
        s.authority
            .set_token_disabled(&caller, scope, id, true, now)
            .await?,
    ))
}

/// Enable a disabled token.
#[utoipa::path(post, path = "/v1/tokens/{id}/enable", tag = "tokens", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Token id"), OrgScope),
    responses(
        (status = 200, description = "The token", body = TokenView),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or invalid bearer", body = ErrorBody),
        (status = 403, description = "Lacks tokens:revoke", body = ErrorBody),
        (status = 404, description = "No such token within reach", body = ErrorBody),
    ))]
pub async fn enable_token(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(scope): ApiQuery<OrgScope>,
) -> Result<Json<TokenView>, Error> {
    let now = s.clock.now();
    Ok(Json(
        s.authority
            .set_token_disabled(&caller, scope, id, false, now)
            .await?,
    ))
}
