//! A client of Latchkey (the self-hosted API token authority) and
//! middleware that verifies bearer tokens inside your own service.
//!
//! - [`Client`]: the REST API (verify, create, get, list, revoke, rotate, disable, enable
//!   tokens) and the gRPC calls of the change feed ([`Client::watch_changes`],
//!   [`Client::report_usage`]), with one [`Error`] type.
//! - [`Latchkey`], [`LatchkeyLayer`] and the [`Verified`] extractor, or a [`Guard`] in the
//!   router's state and the [`RequireToken`] extractor (no layer; less work per request):
//!   verification at memory speed for axum (or any tower) services. A bearer is verified with the server once; the
//!   answer is cached while a `WatchChanges` stream is up, and dropped as soon as the server
//!   pushes a change of that token (a revoked token is refused within milliseconds). Without
//!   the stream nothing is cached: every request asks the server. No answer from the server
//!   is a 503, never a pass.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use latchkey_client::{Latchkey, Verified};
//!
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let latchkey = Latchkey::builder("http://127.0.0.1:8080")
//!     .watch_token(std::env::var("LATCHKEY_WATCH_TOKEN")?)
//!     .build()?;
//! let app: Router = Router::new()
//!     .route("/hello", get(|v: Verified| async move { v.token_id.to_string() }))
//!     .route_layer(latchkey.require(&["runs:read"]));
//! # Ok(()) }
//! ```
//!
//! docs/clients.md ("The Rust crate: latchkey-client") gives the guarantees and failure modes.

mod cache;
mod client;
mod error;
mod middleware;
mod types;
mod usage;

/// The gRPC messages and client generated from `proto/latchkey/auth/v1/auth.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("latchkey.auth.v1");
}

/// `Debug` of the messages holding a secret: their name only.
macro_rules! redacted_debug {
    ($($t:ident),*) => {$(
        impl std::fmt::Debug for pb::$t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t)).finish_non_exhaustive()
            }
        }
    )*};
}

redacted_debug!(
    CreateTokenResponse,
    RotateTokenResponse,
    ValidateTokenRequest,
    ExchangePasswordRequest,
    SetupPasswordRequest,
    CreateUserResponse,
    ChangePasswordRequest
);

pub use client::{ChangeStream, Client, MAX_USES_PER_REPORT, tls_config};
pub use error::{Error, ErrorCode};
pub use middleware::{
    Guard, Latchkey, LatchkeyBuilder, LatchkeyLayer, LatchkeyService, Rejection, RequireToken,
    ResponseFuture, bearer,
};
pub use types::{
    ChangeKind, CreatedToken, ListTokens, NewToken, RotatedToken, TokenChange, TokenPage,
    TokenState, TokenType, TokenUse, TokenView, Verification, Verified, VerifyCode, WatchEvent,
    WatchMessage,
};
