//! `/v1/auth` handlers: the password exchange, console sessions (sign in and out, list and end
//! them) and setting a first password from a setup link.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderName, StatusCode};

use super::NO_STORE;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use super::AppState;
use super::error::ErrorBody;
use super::extract::{ApiJson, ApiPath, Authenticated, Public};
use crate::edge::set_session_cookie;
use crate::error::Error;
use crate::service::model::{
    CreatedToken, ExchangePasswordRequest, SessionList, SessionsEnded, SetupPasswordRequest,
    SignInRequest, SignedIn, UserView,
};

/// Trade an email and password for a token owned by the user. Public; rate-limited per client
/// address before any hash (5 per 15 minutes by default). Wrong password, unknown email and
/// disabled user all answer the same 401 `invalid_credentials`.
#[utoipa::path(post, path = "/v1/auth/token", tag = "auth",
    request_body = ExchangePasswordRequest,
    responses(
        (status = 201, description = "The token and its plaintext, shown once", body = CreatedToken),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 401, description = "invalid_credentials", body = ErrorBody),
        (status = 403, description = "A scope the user's role may not grant", body = ErrorBody),
        (status = 409, description = "A live token has this name", body = ErrorBody),
        (status = 429, description = "Too many sign-ins from this address", body = ErrorBody),
    ))]
pub async fn exchange_password(
    State(s): State<AppState>,
    Public(meta): Public,
    ApiJson(req): ApiJson<ExchangePasswordRequest>,
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
        .exchange_password(req, &meta, s.clock.now())
        .await?;
    Ok((StatusCode::CREATED, NO_STORE, Json(created)))
}

/// Sign in for the console: sets the `latchkey_session` cookie (HttpOnly, SameSite=Strict,
/// Secure unless the server runs with `--plain-http`) and returns the user and the CSRF token
/// to send as `X-CSRF-Token`. Same limit and uniform failure as `POST /v1/auth/token`.
#[utoipa::path(post, path = "/v1/auth/session", tag = "auth",
    request_body = SignInRequest,
    responses(
        (status = 201, description = "Signed in; the session id is in the cookie only", body = SignedIn),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 401, description = "invalid_credentials", body = ErrorBody),
        (status = 429, description = "Too many sign-ins from this address", body = ErrorBody),
    ))]
pub async fn sign_in(
    State(s): State<AppState>,
    Public(meta): Public,
    ApiJson(req): ApiJson<SignInRequest>,
) -> Result<Response, Error> {
    let new = s.authority.sign_in(req, &meta, s.clock.now()).await?;
    let max_age = s.authority.config().people.session_absolute.as_secs();
    let mut res = (StatusCode::CREATED, Json(new.signed_in)).into_response();
    set_session_cookie(&mut res, new.secret.expose(), max_age, s.secure_cookies);
    Ok(res)
}

/// Sign out: ends the session of the request and clears its cookie.
#[utoipa::path(delete, path = "/v1/auth/session", tag = "auth", security(("session" = [])),
    responses(
        (status = 204, description = "Signed out"),
        (status = 401, description = "Missing or invalid credential", body = ErrorBody),
        (status = 403, description = "Missing X-CSRF-Token, or from another site; or the caller is a token, not a session", body = ErrorBody),
    ))]
pub async fn sign_out(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Response, Error> {
    s.authority.sign_out(&caller, s.clock.now()).await?;
    let mut res = StatusCode::NO_CONTENT.into_response();
    set_session_cookie(&mut res, "", 0, s.secure_cookies);
    Ok(res)
}

/// The caller's live sessions, newest first (a session caller only), with the one of the request marked `current`.
#[utoipa::path(get, path = "/v1/auth/sessions", tag = "auth", security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "The sessions", body = SessionList),
        (status = 401, description = "Missing or invalid credential", body = ErrorBody),
        (status = 403, description = "The caller is a token, not a session", body = ErrorBody),
    ))]
pub async fn list_sessions(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<SessionList>, Error> {
    Ok(Json(
        s.authority.list_sessions(&caller, s.clock.now()).await?,
    ))
}

/// End one of the caller's own sessions.
#[utoipa::path(delete, path = "/v1/auth/sessions/{id}", tag = "auth", security(("bearer" = []), ("session" = [])),
    params(("id" = Uuid, Path, description = "Session id")),
    responses(
        (status = 204, description = "Ended"),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or invalid credential", body = ErrorBody),
        (status = 403, description = "The caller is a token, not a session", body = ErrorBody),
        (status = 404, description = "No such session of the caller's", body = ErrorBody),
    ))]
pub async fn end_session(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, Error> {
    s.authority.end_session(&caller, id, s.clock.now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// End every session of the caller's user except the one of the request ("sign out everywhere
/// else").
#[utoipa::path(delete, path = "/v1/auth/sessions", tag = "auth", security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "How many ended", body = SessionsEnded),
        (status = 401, description = "Missing or invalid credential", body = ErrorBody),
        (status = 403, description = "The caller is a token, not a session", body = ErrorBody),
    ))]
pub async fn end_other_sessions(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<SessionsEnded>, Error> {
    Ok(Json(
        s.authority
            .end_other_sessions(&caller, s.clock.now())
            .await?,
    ))
}

/// Set a first password with the token of a setup link; the link then stops working. Public;
/// guarded by the per-address management limit (a setup token is 256 random bits and is looked
/// up before any hash).
#[utoipa::path(post, path = "/v1/auth/setup", tag = "auth",
    request_body = SetupPasswordRequest,
    responses(
        (status = 200, description = "The user, who may now sign in", body = UserView),
        (status = 400, description = "A password that breaks a rule, or a link that is not valid", body = ErrorBody),
        (status = 429, description = "Too many attempts from this address", body = ErrorBody),
    ))]
pub async fn setup_password(
    State(s): State<AppState>,
    Public(meta): Public,
    ApiJson(req): ApiJson<SetupPasswordRequest>,
) -> Result<Json<UserView>, Error> {
    Ok(Json(
        s.authority
            .setup_password(req, &meta, s.clock.now())
            .await?,
    ))
}
