//! How long a revocation takes to reach the other nodes of a deployment: revokes tokens one at a
//! time through one node and, from the moment each revoke call returns, polls every other node
//! until it refuses the token. `bench/multinode.sh` runs it while wrk loads every node.
//!
//! ```text
//! cargo run --release --example revocation_probe -- --revoke-url http://127.0.0.1:8080 \
//!     --watch-url http://127.0.0.1:8081 --watch-url http://127.0.0.1:8082 \
//!     --admin-token "$ADMIN" [--count 200] [--limit-ms 5000] [--out FILE | --tokens FILE]
//! ```
//!
//! First mints `--count` tokens through the revoking node (`POST /v1/tokens`, four at a time).
//! With `--out FILE` it stops there, writing `id plaintext` lines to FILE (no `--watch-url`
//! needed); with `--tokens FILE` it mints nothing and takes those tokens instead: so a bench can
//! mint before it starts loading the nodes. Then it verifies each token on every node, so that
//! every node holds them in its cache: a node that refuses one later was told of the revocation
//! (a notification, or a dropped cache), unless the nodes' cache TTL is shorter than the run
//! (give them a long one, e.g. `--cache-ttl-seconds 300`).
//! Then, for each token: `DELETE /v1/tokens/{id}` on the revoking node; when it returns, every
//! watched node is polled at once (`POST /v1/tokens/verify` back to back on one connection) until
//! it answers `valid: false`; the time from the revoke's return to that answer is one sample.
//! A sample is at most one poll round trip late. The revoking node must refuse at once.
//!
//! Prints one JSON line on stdout: `{"revocations", "propagations", "p50_ms", "p99_ms",
//! "max_ms", "missed", "accepted_by_revoker", "revoke_call_p50_ms", "revoke_call_p99_ms",
//! "seconds", "unavailable", "nodes": [{"url", "p50", "p99", "max"}]}`: milliseconds,
//! percentiles by nearest rank over every watched node's samples (per node in `nodes`); `missed`
//! counts samples not refused within `--limit-ms`, left out of the percentiles; `unavailable`
//! counts verify answers 503 (the node could not reach the database in time: an overloaded
//! machine), each retried 10 ms later. Exits 1 when any was missed or the revoking node still
//! accepted a token it had revoked. The nodes' rate limits on
//! minting and failed verifications must be off (the probe mints and is refused many times
//! from one address).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

struct Args {
    revoke_url: String,
    watch_urls: Vec<String>,
    admin_token: String,
    count: usize,
    limit: Duration,
    out: Option<String>,
    tokens: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut revoke_url = None;
    let mut watch_urls = Vec::new();
    let mut admin_token = None;
    let mut count = 200usize;
    let mut limit_ms = 5000u64;
    let (mut out, mut tokens) = (None, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--revoke-url" => revoke_url = Some(value()?),
            "--watch-url" => watch_urls.push(value()?),
            "--admin-token" => admin_token = Some(value()?),
            "--count" => count = value()?.parse().context("--count")?,
            "--limit-ms" => limit_ms = value()?.parse().context("--limit-ms")?,
            "--out" => out = Some(value()?),
            "--tokens" => tokens = Some(value()?),
            other => {
                bail!("unknown argument {other:?} (see the top of examples/revocation_probe.rs)")
            }
        }
    }
    ensure!(
        out.is_none() || tokens.is_none(),
        "--out and --tokens exclude each other"
    );
    ensure!(
        out.is_some() || !watch_urls.is_empty(),
        "at least one --watch-url is required"
    );
    ensure!(count > 0, "--count must be positive");
    ensure!(limit_ms > 0, "--limit-ms must be positive");
    let trim = |u: String| u.trim_end_matches('/').to_string();
    Ok(Args {
        revoke_url: trim(revoke_url.context("--revoke-url is required")?),
        watch_urls: watch_urls.into_iter().map(trim).collect(),
        admin_token: admin_token.context("--admin-token is required")?,
        count,
        limit: Duration::from_millis(limit_ms),
        out,
        tokens,
    })
}

/// One node, on a client of its own (its own keep-alive connections).
#[derive(Clone)]
struct Node {
    client: reqwest::Client,
    url: String,
    /// 503 answers, retried.
    unavailable: Arc<AtomicUsize>,
}

impl Node {
    fn new(url: &str) -> anyhow::Result<Self> {
        // reqwest has no crypto provider of its own in this build (see Cargo.toml).
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .tcp_nodelay(true)
                .build()?,
            url: url.to_string(),
            unavailable: Arc::default(),
        })
    }

    /// Whether `token` verifies. A 503 (the node could not reach the database: an overloaded
    /// machine) is counted in `unavailable` and retried 10 ms later, for up to 30 s.
    async fn verify(&self, token: &str) -> anyhow::Result<bool> {
        let started = Instant::now();
        loop {
            let res = self
                .client
                .post(format!("{}/v1/tokens/verify", self.url))
                .json(&json!({ "token": token }))
                .send()
                .await
                .with_context(|| format!("verify on {}", self.url))?;
            let status = res.status();
            let v: Value = res.json().await.context("the verify answer")?;
            if status.as_u16() == 503 && started.elapsed() < Duration::from_secs(30) {
                self.unavailable.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            ensure!(status.is_success(), "verify on {}: {status} {v}", self.url);
            return Ok(v["valid"] == true);
        }
    }

    /// Polls until `token` is refused or `limit` has passed since `since`.
    async fn refused_after(
        &self,
        token: &str,
        since: Instant,
        limit: Duration,
    ) -> anyhow::Result<Option<Duration>> {
        loop {
            if !self.verify(token).await? {
                return Ok(Some(since.elapsed()));
            }
            if since.elapsed() > limit {
                return Ok(None);
            }
        }
    }
}

/// Nearest-rank percentile of sorted samples, in milliseconds.
fn pct(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

fn summary(samples: &mut [Duration]) -> (f64, f64, f64) {
    samples.sort();
    (pct(samples, 0.5), pct(samples, 0.99), pct(samples, 1.0))
}

fn round(ms: f64) -> f64 {
    (ms * 100.0).round() / 100.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let revoker = Node::new(&args.revoke_url)?;
    let watchers: Vec<Node> = args
        .watch_urls
        .iter()
        .map(|u| Node::new(u))
        .collect::<anyhow::Result<_>>()?;
    let tokens = match &args.tokens {
        Some(file) => read_tokens(file)?,
        None => mint(&revoker, &args.admin_token, args.count).await?,
    };
    if let Some(file) = &args.out {
        let lines: String = tokens.iter().map(|(p, id)| format!("{id} {p}\n")).collect();
        std::fs::write(file, lines).with_context(|| format!("writing {file}"))?;
        return Ok(());
    }

    // Every node caches every token.
    for node in std::iter::once(&revoker).chain(&watchers) {
        for (plaintext, id) in &tokens {
            ensure!(
                node.verify(plaintext).await?,
                "token {id} does not verify on {}",
                node.url
            );
        }
    }

    // Revoke one at a time; poll every other node from the revoke's return.
    let started = Instant::now();
    let mut per_node: Vec<Vec<Duration>> = vec![Vec::new(); watchers.len()];
    let mut calls = Vec::with_capacity(tokens.len());
    let mut missed = 0usize;
    let mut accepted_by_revoker = 0usize;
    for (plaintext, id) in &tokens {
        let sent = Instant::now();
        let res = revoker
            .client
            .delete(format!("{}/v1/tokens/{id}", revoker.url))
            .bearer_auth(&args.admin_token)
            .send()
            .await
            .context("revoking")?;
        let returned = Instant::now();
        ensure!(res.status().is_success(), "revoking {id}: {}", res.status());
        calls.push(returned - sent);
        let polls: Vec<_> = watchers
            .iter()
            .map(|w| {
                let (w, t, limit) = (w.clone(), plaintext.clone(), args.limit);
                tokio::spawn(async move { w.refused_after(&t, returned, limit).await })
            })
            .collect();
        for (k, poll) in polls.into_iter().enumerate() {
            match poll.await?? {
                Some(d) => per_node[k].push(d),
                None => missed += 1,
            }
        }
        if revoker.verify(plaintext).await? {
            accepted_by_revoker += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();

    let mut all: Vec<Duration> = per_node.concat();
    let (p50, p99, max) = summary(&mut all);
    let (c50, c99, _) = summary(&mut calls);
    let nodes: Vec<Value> = watchers
        .iter()
        .zip(per_node.iter_mut())
        .map(|(w, s)| {
            let (p50, p99, max) = summary(s);
            json!({ "url": w.url, "p50": round(p50), "p99": round(p99), "max": round(max) })
        })
        .collect();
    println!(
        "{}",
        json!({
            "revocations": tokens.len(),
            "propagations": all.len(),
            "p50_ms": round(p50),
            "p99_ms": round(p99),
            "max_ms": round(max),
            "missed": missed,
            "accepted_by_revoker": accepted_by_revoker,
            "revoke_call_p50_ms": round(c50),
            "revoke_call_p99_ms": round(c99),
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "unavailable": std::iter::once(&revoker)
                .chain(&watchers)
                .map(|n| n.unavailable.load(Ordering::Relaxed))
                .sum::<usize>(),
            "nodes": nodes,
        })
    );
    if missed > 0 || accepted_by_revoker > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// `count` tokens minted through `node`, four at a time: (plaintext, id).
async fn mint(node: &Node, admin: &str, count: usize) -> anyhow::Result<Vec<(String, String)>> {
    let nonce = uuid::Uuid::now_v7().simple().to_string();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (node, admin, nonce) = (node.clone(), admin.to_string(), nonce.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in (w..count).step_by(4) {
                let res = node
                    .client
                    .post(format!("{}/v1/tokens", node.url))
                    .bearer_auth(&admin)
                    .json(&json!({ "name": format!("probe-{nonce}-{i}") }))
                    .send()
                    .await
                    .context("minting")?;
                let status = res.status();
                let v: Value = res.json().await.context("the create answer")?;
                ensure!(status.as_u16() == 201, "minting: {status} {v}");
                out.push((
                    v["plaintext"].as_str().context("plaintext")?.to_string(),
                    v["token"]["id"].as_str().context("id")?.to_string(),
                ));
            }
            anyhow::Ok(out)
        }));
    }
    let mut tokens = Vec::with_capacity(count);
    for t in tasks {
        tokens.extend(t.await??);
    }
    Ok(tokens)
}

/// The `id plaintext` lines of `file` (as `--out` writes them): (plaintext, id).
fn read_tokens(file: &str) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
    let tokens: Vec<(String, String)> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (id, plaintext) = l
                .trim()
                .split_once(' ')
                .with_context(|| format!("{file}: not `id plaintext`: {l:?}"))?;
            anyhow::Ok((plaintext.to_string(), id.to_string()))
        })
        .collect::<anyhow::Result<_>>()?;
    ensure!(!tokens.is_empty(), "{file} holds no tokens");
    Ok(tokens)
}
