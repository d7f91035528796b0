//! `POST /v1/tokens/verify`: needs no authentication; 200 for every well-formed request.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ErrorBody;
use super::extract::{ApiJson, Meta};
use crate::error::Error;
use crate::service::model::{VerifyRequest, VerifyResponse};

/// Verify a token, optionally requiring scopes. Every kind of invalid token gets the same body.
#[utoipa::path(post, path = "/v1/tokens/verify", tag = "verify",
    request_body = VerifyRequest,
    responses(
        (status = 200, description = "The verdict (with `Retry-After` when RATE_LIMITED)", body = VerifyResponse),
        (status = 400, description = "No token string, or an unknown required scope", body = ErrorBody),
    ))]
pub async fn verify_token(
    State(s): State<AppState>,
    Meta(meta): Meta,
    ApiJson(req): ApiJson<VerifyRequest>,
) -> Result<Response, Error> {
    let res = s.authority.verify(&req, meta.ip, s.clock.now()).await?;
    let retry = res.retry_after_seconds;
    let mut out = Json(res).into_response();
    if let Some(secs) = retry {
        out.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    Ok(out)
}
