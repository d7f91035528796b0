//! A service protected by Latchkey, verifying in-process:
//!
//! ```text
//! cargo run -p latchkey-client --example protected -- \
//!     --listen 127.0.0.1:3000 --latchkey http://127.0.0.1:8080 \
//!     --watch-token "$WATCH_TOKEN" --require runs:read
//! ```
//!
//! `GET /hello` answers 200 with the token's id for a live bearer holding every `--require`d
//! scope, 401 or 403 otherwise, 503 when Latchkey cannot answer; `GET /open` answers 200 with
//! no check. `/hello` is guarded by the `RequireToken` extractor, or with `--layer` by the
//! layer and the `Verified` extractor (the same answers). Prints `listening on ADDR` once bound
//! (`--listen 127.0.0.1:0` picks a port).

use axum::Router;
use axum::handler::Handler;
use axum::routing::get;
use clap::Parser;
use latchkey_client::{Latchkey, RequireToken, Verified};

#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: std::net::SocketAddr,
    /// Latchkey's base URL (REST and gRPC on one port).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    latchkey: String,
    /// A token holding `tokens:watch`, for the change stream and the usage reports.
    #[arg(long, env = "LATCHKEY_WATCH_TOKEN")]
    watch_token: String,
    /// A scope `/hello` requires (repeat for several).
    #[arg(long = "require")]
    require: Vec<String>,
    /// Guard `/hello` with the layer rather than the extractor.
    #[arg(long)]
    layer: bool,
    /// A PEM file of certificate authorities to trust for an https:// Latchkey, besides the
    /// system's.
    #[arg(long)]
    ca_cert: Option<std::path::PathBuf>,
}

async fn hello(RequireToken(token): RequireToken) -> String {
    id(&token)
}

async fn hello_layered(token: Verified) -> String {
    id(&token)
}

fn id(token: &Verified) -> String {
    // `encode_lower`, not `to_string()`: the formatting machinery would be a third of this
    // handler's time.
    let mut buf = uuid::Uuid::encode_buffer();
    let id = token.token_id.hyphenated();
    id.encode_lower(&mut buf).to_owned()
}

/// Ctrl-C or SIGTERM.
async fn stopped() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut latchkey = Latchkey::builder(args.latchkey).watch_token(args.watch_token);
    if let Some(path) = &args.ca_cert {
        latchkey = latchkey.ca_certificates(std::fs::read(path)?);
    }
    let latchkey = latchkey.build()?;
    let hello = if args.layer {
        // The layer on the handler: `route_layer` would box the route once more.
        get(hello_layered.layer(latchkey.require(&args.require)))
    } else {
        get(hello)
    };
    let app = Router::new()
        .route("/hello", hello)
        .route("/open", get(|| async { "open" }))
        .with_state(latchkey.guard(&args.require));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(stopped())
        .await?;
    // Report the uses answered from the cache that are not reported yet.
    latchkey.shutdown().await;
    Ok(())
}
