//! Extractors that turn every malformed input into the domain error, and the bearer into a
//! [`Caller`].

use std::net::SocketAddr;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;

use super::AppState;
use crate::error::Error;
use crate::server::ClientIp;
use crate::service::{Caller, RequestMeta};

/// JSON body with strict parsing; a rejection becomes `invalid_argument` (or 413).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::BytesRejection(r)) if r.status() == 413 => {
                Err(Error::PayloadTooLarge)
            }
            Err(JsonRejection::MissingJsonContentType(_)) => Err(Error::invalid(
                "expected a JSON body with Content-Type: application/json",
            )),
            Err(r) => Err(Error::invalid(r.body_text())),
        }
    }
}

/// Query string with strict parsing.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|r: QueryRejection| Error::invalid(r.body_text()))
    }
}

/// Path parameters; a malformed id is `invalid_argument`.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            // A fixed message: the rejection would quote the value, which may be a pasted token.
            .map_err(|_: PathRejection| Error::invalid("malformed path: expected a UUID"))
    }
}

/// The client's address and user agent.
pub struct Meta(pub RequestMeta);

impl<S: Send + Sync> FromRequestParts<S> for Meta {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts.extensions.get::<ClientIp>().map(|c| c.0).or_else(|| {
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
        });
        let ua = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok());
        Ok(Meta(RequestMeta::new(ip, ua)))
    }
}

/// The bearer token of the `Authorization` header, if the header is well-formed. Shared by the
/// REST extractor and the gRPC layer.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// An authenticated caller: a valid bearer token, or `unauthenticated`.
pub struct Authenticated(pub Caller);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Meta(meta) = Meta::from_request_parts(parts, state).await?;
        state.authority.check_management_rate(meta.ip)?;
        let token = bearer(&parts.headers).ok_or(Error::Unauthenticated)?;
        let principal = state
            .authority
            .authenticate(token, meta.ip, state.clock.now())
            .await?;
        Ok(Authenticated(Caller { principal, meta }))
    }
}
