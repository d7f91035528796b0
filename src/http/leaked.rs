//! `POST /v1/tokens/leaked`: needs no authentication.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::AppState;
use super::error::ErrorBody;
use super::extract::{ApiJson, Meta};
use crate::error::Error;
use crate::service::model::{LeakedAck, LeakedReport};

/// Report tokens found in the open. Every genuine, live one is revoked; the answer is always 202
/// with the number of entries examined, whichever were valid.
#[utoipa::path(post, path = "/v1/tokens/leaked", tag = "tokens",
    request_body = LeakedReport,
    responses(
        (status = 202, description = "Examined", body = LeakedAck),
        (status = 400, description = "Malformed report", body = ErrorBody),
        (status = 429, description = "Too many reports from this client", body = ErrorBody),
    ))]
pub async fn report(
    State(s): State<AppState>,
    Meta(meta): Meta,
    ApiJson(report): ApiJson<LeakedReport>,
) -> Result<(StatusCode, Json<LeakedAck>), Error> {
    let ack = s
        .authority
        .report_leaked(report, &meta, s.clock.now())
        .await?;
    Ok((StatusCode::ACCEPTED, Json(ack)))
}
