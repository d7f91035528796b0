//! `/v1/orgs` handlers.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use uuid::Uuid;

use super::AppState;
use super::error::ErrorBody;
use super::extract::{ApiJson, ApiPath, Authenticated};
use crate::error::Error;
use crate::service::model::{CreateOrgRequest, OrgView, UpdateOrgRequest};

/// Create an org. Needs platform:admin.
#[utoipa::path(post, path = "/v1/orgs", tag = "orgs", security(("bearer" = [])),
    request_body = CreateOrgRequest,
    responses(
        (status = 201, description = "Created", body = OrgView),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 401, description = "Missing or invalid bearer", body = ErrorBody),
        (status = 403, description = "Lacks platform:admin", body = ErrorBody),
        (status = 409, description = "Name taken", body = ErrorBody),
    ))]
pub async fn create_org(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(req): ApiJson<CreateOrgRequest>,
) -> Result<(StatusCode, Json<OrgView>), Error> {
    let org = s.authority.create_org(&caller, req, s.clock.now()).await?;
    Ok((StatusCode::CREATED, Json(org)))
}

/// An org: the caller's own, or any for platform:admin.
#[utoipa::path(get, path = "/v1/orgs/{id}", tag = "orgs", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Org id")),
    responses(
        (status = 200, description = "The org", body = OrgView),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or invalid bearer", body = ErrorBody),
        (status = 404, description = "No such org within reach", body = ErrorBody),
    ))]
pub async fn get_org(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<OrgView>, Error> {
    Ok(Json(s.authority.get_org(&caller, id).await?))
}

/// Set an org's lifetime policy. Needs org:admin in that org (or platform:admin).
#[utoipa::path(patch, path = "/v1/orgs/{id}", tag = "orgs", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Org id")),
    request_body = UpdateOrgRequest,
    responses(
        (status = 200, description = "The org", body = OrgView),
        (status = 400, description = "Malformed request or limits", body = ErrorBody),
        (status = 401, description = "Missing or invalid bearer", body = ErrorBody),
        (status = 403, description = "Lacks org:admin", body = ErrorBody),
        (status = 404, description = "No such org within reach", body = ErrorBody),
    ))]
pub async fn update_org(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<UpdateOrgRequest>,
) -> Result<Json<OrgView>, Error> {
    Ok(Json(
        s.authority
            .update_org(&caller, id, req, s.clock.now())
            .await?,
    ))
}
