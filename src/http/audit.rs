//! `GET /v1/audit`.

use axum::Json;
use axum::extract::State;

use super::AppState;
use super::error::ErrorBody;
use super::extract::{ApiQuery, Authenticated};
use crate::error::Error;
use crate::service::model::{AuditPage, ListAuditRequest};

/// The org's audit log, newest first, with filters and cursor paging.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", security(("bearer" = [])),
    params(ListAuditRequest),
    responses(
        (status = 200, description = "One page", body = AuditPage),
        (status = 400, description = "Malformed query", body = ErrorBody),
        (status = 401, description = "Missing or invalid bearer", body = ErrorBody),
        (status = 403, description = "Lacks audit:read", body = ErrorBody),
        (status = 404, description = "Org outside reach", body = ErrorBody),
    ))]
pub async fn list_audit(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiQuery(req): ApiQuery<ListAuditRequest>,
) -> Result<Json<AuditPage>, Error> {
    Ok(Json(s.authority.list_audit(&caller, req).await?))
}
