//! `GET /v1/auth/check`: the gateway check for nginx `auth_request` (Envoy's `ext_authz` asks
//! the same over gRPC: `grpc/envoy.rs`). Reads the bearer, verifies it through the same service
//! call as `POST /v1/tokens/verify`, and answers with status and headers only.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::error::ErrorBody;
use super::extract::{ApiQuery, Bearer, ClientAddr};
use crate::error::Error;
use crate::service::model::{VerifyCode, VerifyRequest};

const TOKEN_ID: HeaderName = HeaderName::from_static("x-latchkey-token-id");
const ORG_ID: HeaderName = HeaderName::from_static("x-latchkey-org-id");
const SCOPES: HeaderName = HeaderName::from_static("x-latchkey-scopes");

/// `?require=a,b`: scopes (or composites) the token must all hold.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CheckQuery {
    /// Comma-separated scope names.
    pub require: Option<String>,
}

/// The [`CheckQuery`] of a request: parsed only when the request has a query string (a gateway
/// asks without one, and an empty query is the default).
pub struct Require(CheckQuery);

impl<S: Send + Sync> FromRequestParts<S> for Require {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if parts.uri.query().is_none() {
            return Ok(Require(CheckQuery::default()));
        }
        let ApiQuery(q) = ApiQuery::<CheckQuery>::from_request_parts(parts, state).await?;
        Ok(Require(q))
    }
}

/// Gateway check: 204 with `X-Latchkey-Token-Id`, `X-Latchkey-Org-Id` and `X-Latchkey-Scopes` for a
/// valid bearer holding every required scope; 401 (with `WWW-Authenticate: Bearer`) for a missing or
/// invalid one; 403 when a scope is lacking.
#[utoipa::path(get, path = "/v1/auth/check", tag = "verify",
    params(CheckQuery),
    responses(
        (status = 204, description = "Allowed; identity in the X-Latchkey-* headers"),
        (status = 400, description = "Malformed query", body = ErrorBody),
        (status = 401, description = "Missing or invalid bearer", body = ErrorBody),
        (status = 403, description = "The token lacks a required scope", body = ErrorBody),
        (status = 429, description = "Too many failed verifications from this client", body = ErrorBody),
    ))]
pub async fn check(
    State(s): State<AppState>,
    ClientAddr(ip): ClientAddr,
    Bearer(token): Bearer,
    Require(q): Require,
) -> Result<Response, Error> {
    let req = VerifyRequest {
        token: token.unwrap_or_default(),
        required_scopes: q
            .require
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    };
    let res = s.authority.verify(&req, ip, s.clock.now()).await?;
    match (res.code, res.token) {
        (VerifyCode::Valid, Some(t)) => {
            // Rendered once per cache entry; each answer shares the bytes.
            let text = t.identity();
            // Room for three in the answer's own map: one allocation, where a map of our own
            // would be a second, copied into it.
            let mut out = StatusCode::NO_CONTENT.into_response();
            let h = out.headers_mut();
            h.reserve(3);
            h.insert(TOKEN_ID, text.token_id.clone());
            h.insert(ORG_ID, text.org_id.clone());
            h.insert(SCOPES, text.scopes.clone());
            Ok(out)
        }
        (VerifyCode::InsufficientPermissions, _) => Err(Error::PermissionDenied(
            "the token lacks a required scope".into(),
        )),
        (VerifyCode::RateLimited, _) => Err(Error::RateLimited {
            retry_after: std::time::Duration::from_secs(res.retry_after_seconds.unwrap_or(1)),
        }),
        _ => Err(Error::Unauthenticated),
    }
}
