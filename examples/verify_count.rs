//! N warm verifications in-process, for counting instructions under callgrind.
//!
//! ```text
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*hot_loop' \
//!     target/release/examples/verify_count 1000
//! ```
//!
//! Sets up an `Authority` on a SQLite file in a temporary folder (with the Prometheus recorder
//! installed, as in the server), mints a token through `Authority::bootstrap`, verifies it once
//! (the cache fill), then verifies it N more times with `Authority::verify` inside `hot_loop`, as
//! `POST /v1/tokens/verify` does (client address given, no required scopes). Counting only inside
//! `hot_loop` leaves out the setup (whose cost varies from run to run); `bench/run.sh` runs
//! N = 1000 and N = 2000 and divides the difference by 1000, which also cancels the loop's fixed
//! cost. Prints `{"verifies": N, "valid": V}`; exits 1 unless every verify was valid.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use latchkey::service::model::VerifyRequest;
use latchkey::service::{Authority, AuthorityConfig};

/// The measured part: `n` warm verifications.
#[inline(never)]
fn hot_loop(
    rt: &tokio::runtime::Runtime,
    authority: &Authority,
    req: &VerifyRequest,
    ip: Option<IpAddr>,
    n: usize,
) -> anyhow::Result<usize> {
    rt.block_on(async {
        let mut valid = 0usize;
        for _ in 0..n {
            let res = authority.verify(black_box(req), ip, Utc::now()).await?;
            valid += usize::from(black_box(res).valid);
        }
        Ok(valid)
    })
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .context("usage: verify_count N")?
        .parse()
        .context("N must be a number")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("lk.db").display());
    let ip = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let (authority, req) = rt.block_on(async {
        latchkey::telemetry::metrics();
        let store = latchkey::store::connect(&url).await?;
        let authority = Arc::new(Authority::new(
            store,
            AuthorityConfig {
                // Long enough that no entry is reloaded during the count.
                cache_ttl: Duration::from_secs(3600),
                ..AuthorityConfig::default()
            },
        ));
        let out = authority.bootstrap("bench", Utc::now()).await?;
        let req = VerifyRequest {
            token: out.plaintext.expose().clone(),
            required_scopes: Vec::new(),
        };
        anyhow::ensure!(authority.verify(&req, ip, Utc::now()).await?.valid);
        anyhow::Ok((authority, req))
    })?;
    let valid = hot_loop(&rt, &authority, &req, ip, n)?;
    println!("{{\"verifies\": {n}, \"valid\": {valid}}}");
    if valid != n {
        std::process::exit(1);
    }
    Ok(())
}
