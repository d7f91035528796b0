//! `/v1/users` handlers: extract, call one service method, map the result.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderName, StatusCode};

use super::NO_STORE;
use uuid::Uuid;

use super::AppState;
use super::error::ErrorBody;
use super::extract::{ApiJson, ApiPath, ApiQuery, Authenticated};
use crate::error::Error;
use crate::service::model::{
    ChangePasswordRequest, CreateUserRequest, CreatedUser, CurrentUser, ListUsersRequest,
    UpdateUserRequest, UserPage, UserView,
};

/// Invite a person: the answer holds a one-time setup link (24 h) to hand over. Needs
/// users:manage (tokens) or the admin role; an admin can be made only by a caller holding
/// everything an admin holds.
#[utoipa::path(post, path = "/v1/users", tag = "users", security(("bearer" = []), ("session" = [])),
    request_body = CreateUserRequest,
    responses(
        (status = 201, description = "Created, with the setup link", body = CreatedUser),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 401, description = "Missing or invalid credential", body = ErrorBody),
        (status = 403, description = "Lacks users:manage, or the role carries more than the caller holds", body = ErrorBody),
        (status = 404, description = "Org outside reach", body = ErrorBody),
        (status = 409, description = "Email taken", body = ErrorBody),
    ))]
pub async fn create_user(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(req): ApiJson<CreateUserRequest>,
) -> Result<
    (
        StatusCode,
        [(HeaderName, &'static str); 1],
        Json<CreatedUser>,
    ),
    Error,
> {
    let created = s.authority.create_user(&caller, req, s.clock.now()).await?;
    Ok((StatusCode::CREATED, NO_STORE, Json(created)))
}

/// List the org's users, newest first. Needs users:read or the admin role.
#[utoipa::path(get, path = "/v1/users", tag = "users", security(("bearer" = []), ("session" = [])),
    params(ListUsersRequest),
    responses(
        (status = 200, description = "One page", body = UserPage),
        (status = 400, description = "Malformed query", body = ErrorBody),
        (status = 401, description = "Missing or invalid credential", body = ErrorBody),
        (status = 403, description = "Lacks users:read", body = ErrorBody),
        (status = 404, description = "Org outside reach", body = ErrorBody),
    ))]
pub async fn list_users(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiQuery(req): ApiQuery<ListUsersRequest>,
) -> Result<Json<UserPage>, Error> {
    Ok(Json(s.authority.list_users(&caller, req).await?))
}

/// The caller's user: a session's, or the user owning the calling token (404 for a token no
/// user owns). For a session, also its CSRF token.
#[utoipa::path(get, path = "/v1/users/me", tag = "users", security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "The caller's user", body = CurrentUser),
        (status = 401, description = "Missing or invalid credential", body = ErrorBody),
        (status = 404, description = "The calling token has no owner", body = ErrorBody),
    ))]
pub async fn current_user(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<CurrentUser>, Error> {
    Ok(Json(s.authority.current_user(&caller).await?))
}

/// One user: oneself, or with users:read (the admin role) a user of the org.
#[utoipa::path(get, path = "/v1/users/{id}", tag = "users", security(("bearer" = []), ("session" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "The user", body = UserView),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or invalid credential", body = ErrorBody),
        (status = 403, description = "Lacks users:read", body = ErrorBody),
        (status = 404, description = "No such user within reach", body = ErrorBody),
    ))]
pub async fn get_user(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<UserView>, Error> {
    Ok(Json(s.authority.get_user(&caller, id).await?))
}

/// Change a user's name or role. A demotion revokes the user's live tokens that hold more than
/// the new role allows. The org's last active admin cannot be demoted (409).
#[utoipa::path(patch, path = "/v1/users/{id}", tag = "users", security(("bearer" = []), ("session" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    request_body = UpdateUserRequest,
    responses(
        (status = 200, description = "The user", body = UserView),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 401, description = "Missing or invalid credential", body = ErrorBody),
        (status = 403, description = "Lacks users:manage, or the role carries more than the caller holds", body = ErrorBody),
        (status = 404, description = "No such user within reach", body = ErrorBody),
        (status = 409, description = "The org's last active admin", body = ErrorBody),
    ))]
pub async fn update_user(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<UpdateUserRequest>,
) -> Result<Json<UserView>, Error> {
    Ok(Json(
        s.authority
            .update_user(&caller, id, req, s.clock.now())
            .await?,
    ))
}

/// Disable a user: every live token it owns is revoked and its sessions end, at once. The
/// org's last active admin cannot be disabled (409).
#[utoipa::path(post, path = "/v1/users/{id}/disable", tag = "users", security(("bearer" = []), ("session" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "The user", body = UserView),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or invalid credential", body = ErrorBody),
        (status = 403, description = "Lacks users:manage", body = ErrorBody),
        (status = 404, description = "No such user within reach", body = ErrorBody),
        (status = 409, description = "The org's last active admin", body = ErrorBody),
    ))]
pub async fn disable_user(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<UserView>, Error> {
    let now = s.clock.now();
    Ok(Json(
        s.authority
            .set_user_disabled(&caller, id, true, now)
            .await?,
    ))
}

/// Enable a disabled user. Its revoked tokens stay revoked.
#[utoipa::path(post, path = "/v1/users/{id}/enable", tag = "users", security(("bearer" = []), ("session" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "The user", body = UserView),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or invalid credential", body = ErrorBody),
        (status = 403, description = "Lacks users:manage", body = ErrorBody),
        (status = 404, description = "No such user within reach", body = ErrorBody),
    ))]
pub async fn enable_user(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<UserView>, Error> {
    let now = s.clock.now();
    Ok(Json(
        s.authority
            .set_user_disabled(&caller, id, false, now)
            .await?,
    ))
}

/// Change the caller's own password. Every other session of the user ends.
#[utoipa::path(post, path = "/v1/users/me/password", tag = "users", security(("bearer" = []), ("session" = [])),
    request_body = ChangePasswordRequest,
    responses(
        (status = 204, description = "Changed"),
        (status = 400, description = "The new password breaks a rule", body = ErrorBody),
        (status = 401, description = "Missing or invalid credential", body = ErrorBody),
        (status = 403, description = "The current password is not correct", body = ErrorBody),
        (status = 404, description = "The calling token has no owner", body = ErrorBody),
        (status = 429, description = "Too many attempts", body = ErrorBody),
    ))]
pub async fn change_password(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(req): ApiJson<ChangePasswordRequest>,
) -> Result<StatusCode, Error> {
    s.authority
        .change_password(&caller, req, s.clock.now())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
