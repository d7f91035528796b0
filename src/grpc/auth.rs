//! Bearer authentication for gRPC: one tower layer (axum middleware) in front of the tonic
//! services. It puts the authenticated [`Caller`] into the request's extensions; each RPC that
//! needs one takes it from there, so an invalid bearer is `UNAUTHENTICATED` exactly where REST
//! would answer 401.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

use crate::clock::Clock;
use crate::http::bearer;
use crate::server::ClientIp;
use crate::service::{Authority, Caller, RequestMeta};

#[derive(Clone)]
pub struct AuthLayerState {
    pub authority: Arc<Authority>,
    pub clock: Arc<dyn Clock>,
}

/// ValidateToken needs no caller; skipping it keeps the verify path free of a second check.
const UNAUTHENTICATED_RPC: &str = "/latchkey.auth.v1.AuthService/ValidateToken";
const AUTH_SERVICE: &str = "/latchkey.auth.v1.AuthService/";

pub async fn authenticate(
    State(s): State<AuthLayerState>,
    mut req: Request,
    next: Next,
) -> Response {
    let management =
        req.uri().path().starts_with(AUTH_SERVICE) && req.uri().path() != UNAUTHENTICATED_RPC;
    let ip = req.extensions().get::<ClientIp>().map(|c| c.0).or_else(|| {
        req.extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
    });
    if management && let Err(e) = s.authority.check_management_rate(ip) {
        return tonic::Status::from(e).into_http();
    }
    if management && let Some(token) = bearer(req.headers()) {
        match s.authority.authenticate(token, ip, s.clock.now()).await {
            Ok(principal) => {
                let ua = req
                    .headers()
                    .get(header::USER_AGENT)
                    .and_then(|v| v.to_str().ok());
                let caller = Caller::new(principal, RequestMeta::new(ip, ua));
                req.extensions_mut().insert(caller);
            }
            Err(crate::error::Error::Unauthenticated) => {}
            Err(e) => return tonic::Status::from(e).into_http(),
        }
    }
    next.run(req).await
}
