//! Bearer authentication for gRPC: one tower layer (axum middleware) in front of the tonic
//! services. For every AuthService RPC but ValidateToken (Latchkey's, and ibex's when
//! `--compat-ibex` serves it) it puts the request's [`RequestMeta`]
//! (client address and user agent, for audit and the per-address limits) into the request's
//! extensions, takes a cell of the management rate limit and, unless the RPC is public,
//! authenticates the bearer and puts the [`Caller`] there too. Each RPC that needs a caller
//! takes it from there, so an invalid bearer is `UNAUTHENTICATED` exactly where REST would
//! answer 401. Envoy's `envoy.service.auth.v3.Authorization/Check` passes through like
//! reflection and health: the bearer it checks is inside the CheckRequest, not in the metadata of
//! the call (which comes from Envoy), and, like ValidateToken, it takes no management limit.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::clock::Clock;
use crate::edge::{bearer, request_meta};
use crate::service::{Authority, Caller};

#[derive(Clone)]
pub struct AuthLayerState {
    pub authority: Arc<Authority>,
    pub clock: Arc<dyn Clock>,
    /// Whether `ibex.auth.v1.AuthService` is served; when it is not, its paths pass through to
    /// the `UNIMPLEMENTED` answer untouched.
    pub compat_ibex: bool,
}

const AUTH_SERVICE: &str = "/latchkey.auth.v1.AuthService/";
/// ibex's AuthService: ValidateToken needs no bearer, CreateToken, RevokeToken and ListTokens
/// need one, as their Latchkey twins do.
const IBEX_SERVICE: &str = "/ibex.auth.v1.AuthService/";
/// ValidateToken needs no caller, no metadata and no management limit: skipping it keeps the
/// verify path free of a second check.
const VALIDATE: &str = "ValidateToken";
/// RPCs anyone may call (like their REST twins behind the `Public` extractor): they take the
/// management limit and get a `RequestMeta`, but no bearer is read.
const PUBLIC: [&str; 2] = ["ExchangePassword", "SetupPassword"];

/// How the layer treats an RPC, by its path.
#[derive(Debug, PartialEq, Eq)]
enum Access {
    /// Not AuthService (reflection, health) or ValidateToken: passed through untouched.
    PassThrough,
    /// Rate-limited and given a `RequestMeta`, no bearer read.
    Public,
    /// Rate-limited, given a `RequestMeta` and, with a valid bearer, a `Caller`.
    Authenticated,
}

fn access(path: &str, compat_ibex: bool) -> Access {
    if compat_ibex && let Some(rpc) = path.strip_prefix(IBEX_SERVICE) {
        return match rpc {
            VALIDATE => Access::PassThrough,
            _ => Access::Authenticated,
        };
    }
    match path.strip_prefix(AUTH_SERVICE) {
        None => Access::PassThrough,
        Some(VALIDATE) => Access::PassThrough,
        Some(rpc) if PUBLIC.contains(&rpc) => Access::Public,
        Some(_) => Access::Authenticated,
    }
}

pub async fn authenticate(
    State(s): State<AuthLayerState>,
    mut req: Request,
    next: Next,
) -> Response {
    let access = access(req.uri().path(), s.compat_ibex);
    if access == Access::PassThrough {
        return next.run(req).await;
    }
    let meta = request_meta(req.headers(), req.extensions());
    let ip = meta.ip;
    if let Err(e) = s.authority.check_management_rate(ip) {
        return tonic::Status::from(e).into_http();
    }
    if access == Access::Authenticated
        && let Some(token) = bearer(req.headers())
    {
        match s.authority.authenticate(token, ip, s.clock.now()).await {
            Ok(principal) => {
                let caller = Caller::new(principal, meta.clone());
                req.extensions_mut().insert(caller);
            }
            Err(crate::error::Error::Unauthenticated) => {}
            Err(e) => return tonic::Status::from(e).into_http(),
        }
    }
    req.extensions_mut().insert(meta);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_password_rpcs_are_public_and_validate_passes_through() {
        for ibex in [false, true] {
            let access = |path| access(path, ibex);
            assert_eq!(
                access("/latchkey.auth.v1.AuthService/ValidateToken"),
                Access::PassThrough
            );
            assert_eq!(access("/grpc.health.v1.Health/Check"), Access::PassThrough);
            assert_eq!(
                access("/envoy.service.auth.v3.Authorization/Check"),
                Access::PassThrough
            );
            assert_eq!(
                access("/latchkey.auth.v1.AuthService/ExchangePassword"),
                Access::Public
            );
            assert_eq!(
                access("/latchkey.auth.v1.AuthService/SetupPassword"),
                Access::Public
            );
            assert_eq!(
                access("/latchkey.auth.v1.AuthService/CreateUser"),
                Access::Authenticated
            );
            assert_eq!(
                access("/latchkey.auth.v1.AuthService/ExchangePasswordX"),
                Access::Authenticated
            );
        }
    }

    #[test]
    fn ibex_rpcs_need_a_bearer_but_validate_only_while_the_ibex_service_is_served() {
        for rpc in ["CreateToken", "RevokeToken", "ListTokens"] {
            let path = format!("/ibex.auth.v1.AuthService/{rpc}");
            assert_eq!(access(&path, true), Access::Authenticated, "{rpc}");
            assert_eq!(access(&path, false), Access::PassThrough, "{rpc}");
        }
        let validate = "/ibex.auth.v1.AuthService/ValidateToken";
        assert_eq!(access(validate, true), Access::PassThrough);
        assert_eq!(access(validate, false), Access::PassThrough);
    }
}
