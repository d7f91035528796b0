//! A gRPC load client for `latchkey.auth.v1.AuthService/ValidateToken`, on tonic.
//!
//! ```text
//! cargo run --release --example grpc_load -- --url http://127.0.0.1:8080 --tokens tokens.txt \
//!     [--connections 32] [--warmup 2] [--duration 10] [--expect-valid]
//! ```
//!
//! Opens `--connections` HTTP/2 connections and keeps one request in flight on each, like `wrk`
//! does for HTTP/1.1: a closed loop, so the rate is what the server sustains. Each connection is
//! a bare hyper HTTP/2 client connection under the generated tonic client (no `Channel`, whose
//! buffer task and layers cost more CPU than the server under test on a small machine). Connection `i` cycles through the token file starting at `i * len / connections`.
//! Requests during the warm-up are sent but not counted. Prints one JSON line:
//! `{"requests", "seconds", "rps", "p50_us", "p99_us", "max_us", "errors", "invalid"}`, where
//! `errors` counts failed RPCs and `invalid` answers that were not `valid` (with
//! `--expect-valid` the exit status is 1 when either is non-zero).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::Context;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use latchkey::grpc::pb;
use latchkey::grpc::pb::auth_service_client::AuthServiceClient;
use tonic::body::Body;
use tonic::codegen::http;

/// One HTTP/2 connection as the tower service the generated client needs.
#[derive(Clone)]
struct H2(SendRequest<Body>);

impl tower::Service<http::Request<Body>> for H2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

async fn connect(url: &http::Uri) -> anyhow::Result<AuthServiceClient<H2>> {
    let host = url.host().context("--url needs a host")?;
    let port = url.port_u16().unwrap_or(80);
    let stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .context("connect timed out")??;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(conn);
    Ok(AuthServiceClient::with_origin(H2(sender), url.clone()))
}

struct Args {
    url: String,
    tokens: String,
    connections: usize,
    warmup: Duration,
    duration: Duration,
    expect_valid: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut url = None;
    let mut tokens = None;
    let mut connections = 32usize;
    let mut warmup = 2.0f64;
    let mut duration = 10.0f64;
    let mut expect_valid = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => url = Some(value()?),
            "--tokens" => tokens = Some(value()?),
            "--connections" => connections = value()?.parse().context("--connections")?,
            "--warmup" => warmup = value()?.parse().context("--warmup")?,
            "--duration" => duration = value()?.parse().context("--duration")?,
            "--expect-valid" => expect_valid = true,
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    anyhow::ensure!(connections > 0, "--connections must be positive");
    anyhow::ensure!(
        duration > 0.0 && duration <= 3600.0,
        "--duration: 0 < s <= 3600"
    );
    anyhow::ensure!((0.0..=600.0).contains(&warmup), "--warmup: 0 <= s <= 600");
    Ok(Args {
        url: url.context("--url is required")?,
        tokens: tokens.context("--tokens is required")?,
        connections,
        warmup: Duration::from_secs_f64(warmup),
        duration: Duration::from_secs_f64(duration),
        expect_valid,
    })
}

#[derive(Default)]
struct Tally {
    /// Latencies in microseconds of the requests completed inside the measured window.
    latencies: Vec<u32>,
    errors: u64,
    invalid: u64,
}

async fn drive(
    mut client: AuthServiceClient<H2>,
    tokens: Arc<Vec<String>>,
    start_at: usize,
    measure_from: Instant,
    end: Instant,
) -> Tally {
    let mut t = Tally::default();
    let mut i = start_at;
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let req = pb::ValidateTokenRequest {
            token: tokens[i % tokens.len()].clone(),
            required_scopes: Vec::new(),
        };
        i = i.wrapping_add(1);
        let res = tokio::time::timeout(Duration::from_secs(10), client.validate_token(req)).await;
        let done = Instant::now();
        if sent < measure_from || done > end {
            continue;
        }
        match res {
            Ok(Ok(r)) if r.get_ref().valid => {}
            Ok(Ok(_)) => t.invalid += 1,
            Ok(Err(_)) | Err(_) => t.errors += 1,
        }
        let us = (done - sent).as_micros();
        t.latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
    }
    t
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let text = std::fs::read_to_string(&args.tokens)
        .with_context(|| format!("reading {}", args.tokens))?;
    let tokens: Arc<Vec<String>> = Arc::new(
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
    );
    anyhow::ensure!(!tokens.is_empty(), "{} holds no tokens", args.tokens);

    let url: http::Uri = args.url.parse().context("--url")?;
    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        clients.push(
            connect(&url)
                .await
                .with_context(|| format!("connecting to {}", args.url))?,
        );
    }

    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let mut tasks = Vec::with_capacity(args.connections);
    for (n, client) in clients.into_iter().enumerate() {
        let start_at = n * tokens.len() / args.connections;
        tasks.push(tokio::spawn(drive(
            client,
            tokens.clone(),
            start_at,
            measure_from,
            end,
        )));
    }
    let mut all = Tally::default();
    for t in tasks {
        let t = t.await?;
        all.latencies.extend(t.latencies);
        all.errors += t.errors;
        all.invalid += t.invalid;
    }
    all.latencies.sort_unstable();
    let secs = args.duration.as_secs_f64();
    let n = all.latencies.len();
    println!(
        "{}",
        serde_json::json!({
            "requests": n,
            "seconds": secs,
            "rps": ((n as f64 / secs) * 10.0).round() / 10.0,
            "p50_us": percentile(&all.latencies, 50.0),
            "p99_us": percentile(&all.latencies, 99.0),
            "max_us": all.latencies.last().copied().unwrap_or(0),
            "errors": all.errors,
            "invalid": all.invalid,
        })
    );
    if args.expect_valid && (all.errors > 0 || all.invalid > 0 || n == 0) {
        std::process::exit(1);
    }
    Ok(())
}
