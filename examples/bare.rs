//! The bare HTTP baseline: axum as its documentation serves it, doing no work.
//!
//! `axum::serve` on a `tokio::net::TcpListener` (TCP_NODELAY set with `tap_io`, as axum's docs
//! do), one `Router`, no tonic, no REST/gRPC dispatch, no accept loop of ours, no header or
//! request timeout, no connection or in-flight bound, no `ConnectInfo`. The same runtime
//! (`#[tokio::main]`: multi-threaded, one worker per core) and the same global allocator
//! (mimalloc) as Latchkey, so neither counts as plumbing. Answers:
//!
//! - `POST /v1/tokens/verify`: reads the whole body (axum's `Bytes` extractor, with axum's
//!   default 2 MB limit) without parsing it, and answers 200 with a fixed `VALID` JSON body of
//!   the same shape and length as Latchkey's answer for a token with two scopes and no expiry;
//! - anything else, `GET /v1/auth/check` included: 204 with no body and the three identity
//!   headers Latchkey's check answers for that token (`X-Latchkey-Token-Id`, `-Org-Id`,
//!   `-Scopes`), fixed.
//!
//! `examples/baseline.rs` is the other baseline: the same serving code as Latchkey (its accept
//! loop, the one-port dispatch, tonic mounted beside REST). Latchkey / bare counts that plumbing
//! as Latchkey's cost; Latchkey / baseline does not. `bench/run.sh` reports both ratios.
//!
//! Usage: `cargo run --release --example bare -- [--listen 127.0.0.1:8082]`. It prints
//! `listening on <addr>` on stdout once bound and serves until SIGINT or SIGTERM.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;

/// The body Latchkey answers for a valid token without expiry and two scopes (the same as
/// `examples/baseline.rs`).
const VERIFY_BODY: &str = concat!(
    r#"{"valid":true,"code":"VALID","token_id":"0192f3c4-1111-7222-8333-444455556666","#,
    r#""org_id":"0192f3c4-0000-7000-8000-000000000001","permissions":5,"#,
    r#""scopes":["tokens:create","tokens:read"],"expires_at":null}"#
);

/// The body is read (as Latchkey reads it) and dropped unparsed.
async fn verify(body: Bytes) -> Response {
    drop(body);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        VERIFY_BODY,
    )
        .into_response()
}

/// The headers Latchkey's gateway check answers for that token: the check's answer is its
/// headers, as the verify's is its body, so both servers put the same bytes on the wire.
const IDENTITY: [(header::HeaderName, HeaderValue); 3] = [
    (
        header::HeaderName::from_static("x-latchkey-token-id"),
        HeaderValue::from_static("0192f3c4-1111-7222-8333-444455556666"),
    ),
    (
        header::HeaderName::from_static("x-latchkey-org-id"),
        HeaderValue::from_static("0192f3c4-0000-7000-8000-000000000001"),
    ),
    (
        header::HeaderName::from_static("x-latchkey-scopes"),
        HeaderValue::from_static("tokens:create,tokens:read"),
    ),
];

async fn no_content() -> impl IntoResponse {
    (StatusCode::NO_CONTENT, IDENTITY)
}

fn listen_arg() -> anyhow::Result<SocketAddr> {
    let mut args = std::env::args().skip(1);
    let mut listen: SocketAddr = "127.0.0.1:8082".parse()?;
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

// The server's allocator, so the ratio does not count a different allocator as plumbing.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen = listen_arg()?;
    let app = Router::new()
        .route("/v1/tokens/verify", post(verify).fallback(no_content))
        .fallback(no_content);
    let listener = TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}
