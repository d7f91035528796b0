//! Measures how long a revocation takes to reach a service that verifies in-process with the
//! latchkey-client middleware (`cargo run -p latchkey-client --example protected`), for
//! `bench/client.sh`.
//!
//! ```text
//! cargo run --release --example revocation_delay -- --latchkey URL --admin TOKEN \
//!     --service URL [--count 100] [--limit-ms 5000]
//! ```
//!
//! For each of `--count` new tokens: one `GET /hello` through the service (so its answer is
//! cached there), `DELETE /v1/tokens/{id}` on Latchkey, then `GET /hello` in a loop until the
//! service refuses the token; the delay is measured from the moment the revoke call returned.
//! Prints one JSON line: `{"count", "p50_ms", "p99_ms", "max_ms", "over_limit"}`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

struct Args {
    latchkey: String,
    admin: String,
    service: String,
    count: usize,
    limit: Duration,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        latchkey: String::new(),
        admin: String::new(),
        service: String::new(),
        count: 100,
        limit: Duration::from_millis(5000),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--latchkey" => a.latchkey = value,
            "--admin" => a.admin = value,
            "--service" => a.service = value,
            "--count" => a.count = value.parse()?,
            "--limit-ms" => a.limit = Duration::from_millis(value.parse()?),
            other => bail!("unknown flag {other}"),
        }
    }
    if a.latchkey.is_empty() || a.admin.is_empty() || a.service.is_empty() {
        bail!("--latchkey, --admin and --service are required");
    }
    Ok(a)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    // reqwest has no crypto provider of its own in this build (see Cargo.toml).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let hello = |token: String| {
        let (http, url) = (http.clone(), format!("{}/hello", a.service));
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    };
    let mut delays = Vec::with_capacity(a.count);
    let mut over_limit = 0;
    for i in 0..a.count {
        let created: Value = http
            .post(format!("{}/v1/tokens", a.latchkey))
            .bearer_auth(&a.admin)
            .json(&json!({ "name": format!("revocation-delay-{}-{i}", std::process::id()) }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let (plaintext, id) = (
            created["plaintext"]
                .as_str()
                .context("plaintext")?
                .to_string(),
            created["token"]["id"].as_str().context("id")?.to_string(),
        );
        // Twice: the first answer is the server's, the second comes from the service's cache.
        for _ in 0..2 {
            let status = hello(plaintext.clone()).await?;
            if status != 200 {
                bail!("a fresh token was answered {status} by the service");
            }
        }
        http.delete(format!("{}/v1/tokens/{id}", a.latchkey))
            .bearer_auth(&a.admin)
            .send()
            .await?
            .error_for_status()?;
        let revoked = Instant::now();
        loop {
            let status = hello(plaintext.clone()).await?;
            if status == 401 {
                delays.push(revoked.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if revoked.elapsed() > a.limit {
                over_limit += 1;
                delays.push(a.limit.as_secs_f64() * 1000.0);
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    delays.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({
            "count": delays.len(),
            "p50_ms": percentile(&delays, 50.0),
            "p99_ms": percentile(&delays, 99.0),
            "max_ms": delays.last().copied().unwrap_or(0.0),
            "over_limit": over_limit,
        })
    );
    Ok(())
}
