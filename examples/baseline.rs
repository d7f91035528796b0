//! The benchmark baseline: Latchkey's HTTP and gRPC stack doing no work.
//!
//! The same runtime (`#[tokio::main]`: multi-threaded, one worker per core; the same global
//! allocator, mimalloc), the same serving
//! loop (`latchkey::server::serve`: hyper-util HTTP/1.1 + HTTP/2, header timeout, connection
//! bound, the default `ServerLimits`), the same one-port dispatch on the `application/grpc`
//! content type (`latchkey::server::OnePort`, served as it is), and the tonic-generated `AuthService` server
//! mounted like Latchkey's (`tonic::service::Routes::into_axum_router`). Every answer is fixed
//! and built once at start:
//!
//! - `POST /v1/tokens/verify`: 200 with a `VALID` JSON body shaped like Latchkey's;
//! - `GET /v1/auth/check`: 204 with the three `X-Latchkey-*` headers;
//! - gRPC `latchkey.auth.v1.AuthService/ValidateToken`: a fixed `VALID` response; every other
//!   RPC is `UNIMPLEMENTED`.
//!
//! The request body is not parsed and no middleware runs (no request bound, trace, body limit or
//! gRPC bearer layer), so the ratio Latchkey / baseline counts all of Latchkey's own work above
//! the transport (those layers, JSON parsing, the verification, metrics) as its cost.
//!
//! Usage: `cargo run --release --example baseline -- [--listen 127.0.0.1:8081]`. It prints
//! `listening on <addr>` on stdout once bound and serves until SIGINT or SIGTERM.

use std::net::SocketAddr;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use latchkey::grpc::pb;
use latchkey::grpc::pb::auth_service_server::{AuthService, AuthServiceServer};
use latchkey::startup::ServerLimits;
use tokio::net::TcpListener;
use tonic::{Request, Status};

const TOKEN_ID: &str = "0192f3c4-1111-7222-8333-444455556666";
const ORG_ID: &str = "0192f3c4-0000-7000-8000-000000000001";

/// The body Latchkey answers for a valid token without expiry and two scopes.
const VERIFY_BODY: &str = concat!(
    r#"{"valid":true,"code":"VALID","token_id":"0192f3c4-1111-7222-8333-444455556666","#,
    r#""org_id":"0192f3c4-0000-7000-8000-000000000001","permissions":5,"#,
    r#""scopes":["tokens:create","tokens:read"],"expires_at":null}"#
);

async fn verify() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        VERIFY_BODY,
    )
        .into_response()
}

async fn check() -> Response {
    let mut out = StatusCode::NO_CONTENT.into_response();
    let h = out.headers_mut();
    h.insert("x-latchkey-token-id", HeaderValue::from_static(TOKEN_ID));
    h.insert("x-latchkey-org-id", HeaderValue::from_static(ORG_ID));
    h.insert(
        "x-latchkey-scopes",
        HeaderValue::from_static("tokens:create,tokens:read"),
    );
    out
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Body::empty()).into_response()
}

/// ValidateToken answers a fixed `VALID`; every other RPC is unimplemented.
struct Baseline {
    validation: pb::ValidateTokenResponse,
}

fn unimplemented<T>() -> Result<tonic::Response<T>, Status> {
    Err(Status::unimplemented("baseline server"))
}

#[tonic::async_trait]
impl AuthService for Baseline {
    async fn create_token(
        &self,
        _: Request<pb::CreateTokenRequest>,
    ) -> Result<tonic::Response<pb::CreateTokenResponse>, Status> {
        unimplemented()
    }

    async fn get_token(
        &self,
        _: Request<pb::GetTokenRequest>,
    ) -> Result<tonic::Response<pb::Token>, Status> {
        unimplemented()
    }

    async fn list_tokens(
        &self,
        _: Request<pb::ListTokensRequest>,
    ) -> Result<tonic::Response<pb::ListTokensResponse>, Status> {
        unimplemented()
    }

    async fn revoke_token(
        &self,
        _: Request<pb::RevokeTokenRequest>,
    ) -> Result<tonic::Response<pb::Token>, Status> {
        unimplemented()
    }

    async fn revoke_current_token(
        &self,
        _: Request<pb::RevokeCurrentTokenRequest>,
    ) -> Result<tonic::Response<pb::Token>, Status> {
        unimplemented()
    }

    async fn rotate_token(
        &self,
        _: Request<pb::RotateTokenRequest>,
    ) -> Result<tonic::Response<pb::RotateTokenResponse>, Status> {
        unimplemented()
    }

    async fn validate_token(
        &self,
        _: Request<pb::ValidateTokenRequest>,
    ) -> Result<tonic::Response<pb::ValidateTokenResponse>, Status> {
        Ok(tonic::Response::new(self.validation.clone()))
    }

    async fn list_audit_events(
        &self,
        _: Request<pb::ListAuditEventsRequest>,
    ) -> Result<tonic::Response<pb::ListAuditEventsResponse>, Status> {
        unimplemented()
    }

    async fn disable_token(
        &self,
        _: Request<pb::DisableTokenRequest>,
    ) -> Result<tonic::Response<pb::Token>, Status> {
        unimplemented()
    }

    async fn enable_token(
        &self,
        _: Request<pb::EnableTokenRequest>,
    ) -> Result<tonic::Response<pb::Token>, Status> {
        unimplemented()
    }

    async fn get_token_usage(
        &self,
        _: Request<pb::GetTokenUsageRequest>,
    ) -> Result<tonic::Response<pb::TokenUsage>, Status> {
        unimplemented()
    }

    async fn exchange_password(
        &self,
        _: Request<pb::ExchangePasswordRequest>,
    ) -> Result<tonic::Response<pb::CreateTokenResponse>, Status> {
        unimplemented()
    }

    async fn setup_password(
        &self,
        _: Request<pb::SetupPasswordRequest>,
    ) -> Result<tonic::Response<pb::User>, Status> {
        unimplemented()
    }

    async fn create_user(
        &self,
        _: Request<pb::CreateUserRequest>,
    ) -> Result<tonic::Response<pb::CreateUserResponse>, Status> {
        unimplemented()
    }

    async fn list_users(
        &self,
        _: Request<pb::ListUsersRequest>,
    ) -> Result<tonic::Response<pb::ListUsersResponse>, Status> {
        unimplemented()
    }

    async fn get_user(
        &self,
        _: Request<pb::GetUserRequest>,
    ) -> Result<tonic::Response<pb::User>, Status> {
        unimplemented()
    }

    async fn get_current_user(
        &self,
        _: Request<pb::GetCurrentUserRequest>,
    ) -> Result<tonic::Response<pb::User>, Status> {
        unimplemented()
    }

    async fn update_user(
        &self,
        _: Request<pb::UpdateUserRequest>,
    ) -> Result<tonic::Response<pb::User>, Status> {
        unimplemented()
    }

    async fn disable_user(
        &self,
        _: Request<pb::DisableUserRequest>,
    ) -> Result<tonic::Response<pb::User>, Status> {
        unimplemented()
    }

    async fn enable_user(
        &self,
        _: Request<pb::EnableUserRequest>,
    ) -> Result<tonic::Response<pb::User>, Status> {
        unimplemented()
    }

    async fn change_password(
        &self,
        _: Request<pb::ChangePasswordRequest>,
    ) -> Result<tonic::Response<pb::ChangePasswordResponse>, Status> {
        unimplemented()
    }
    type WatchChangesStream = tonic::codegen::tokio_stream::wrappers::ReceiverStream<
        Result<pb::WatchChangesResponse, Status>,
    >;

    async fn watch_changes(
        &self,
        _: Request<pb::WatchChangesRequest>,
    ) -> Result<tonic::Response<Self::WatchChangesStream>, Status> {
        unimplemented()
    }

    async fn report_usage(
        &self,
        _: Request<pb::ReportUsageRequest>,
    ) -> Result<tonic::Response<pb::ReportUsageResponse>, Status> {
        unimplemented()
    }
}

fn listen_arg() -> anyhow::Result<SocketAddr> {
    let mut args = std::env::args().skip(1);
    let mut listen: SocketAddr = "127.0.0.1:8081".parse()?;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => {
                let v = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--listen needs a value"))?;
                listen = v.parse()?;
            }
            other => anyhow::bail!("unknown argument {other:?} (expected --listen ADDR)"),
        }
    }
    Ok(listen)
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

// The server's allocator, so the ratio does not count a different allocator as verify cost.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen = listen_arg()?;
    let rest = Router::new()
        .route("/v1/tokens/verify", post(verify))
        .route("/v1/auth/check", get(check))
        .fallback(not_found);
    let validation = pb::ValidateTokenResponse {
        valid: true,
        code: pb::ValidationCode::Valid as i32,
        token_id: TOKEN_ID.into(),
        org_id: ORG_ID.into(),
        permissions: 5,
        scopes: vec!["tokens:create".into(), "tokens:read".into()],
        expires_at: None,
    };
    let grpc = tonic::service::Routes::new(AuthServiceServer::new(Baseline { validation }))
        .into_axum_router();
    let listener = TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let app = latchkey::server::OnePort::new(rest, grpc, Arc::new(Vec::new()));
    latchkey::server::serve(
        listener,
        app,
        ServerLimits::default(),
        shutdown_signal(),
        Duration::from_secs(1),
    )
    .await
}
