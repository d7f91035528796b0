//! `/v1/tokens` handlers: extract, call one service method, map the result.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use uuid::Uuid;

use super::AppState;
use super::error::ErrorBody;
use super::extract::{ApiJson, ApiPath, ApiQuery, Authenticated};
use crate::error::Error;
use crate::service::model::{
    CreateTokenRequest, CreatedToken, ListTokensRequest, OrgScope, TokenPage, TokenView,
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
) -> Result<(StatusCode, Json<CreatedToken>), Error> {
    let created = s
        .authority
        .create_token(&caller, req, s.clock.now())
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
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
