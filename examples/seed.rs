//! Bulk path for benchmarks: creates N tokens directly in a Latchkey database and writes their
//! plaintexts, one per line, for a load generator.
//!
//! ```text
//! cargo run --release --example seed -- --database-url sqlite://path/lk.db --count 100000 \
//!     --out tokens.txt [--wrong-out wrong.txt] [--hash sha256|argon2id] [--org-name default]
//! ```
//!
//! Each token is made exactly as `POST /v1/tokens` makes one (`token::format::generate`, a
//! verifier from `Verifier::compute` with the chosen algorithm, permissions `tokens:read`, no
//! expiry) and written through the library's `Store::insert_token`, with its `token_created`
//! audit event (actor `system`), in its own transaction: the rows are the ones the server writes,
//! only without HTTP in front. Tokens go into the org named `--org-name` (the bootstrap org is
//! `default`), which is created when missing. The database may be served by a running Latchkey
//! at the same time (SQLite WAL). Argon2id verifiers are computed on every core in parallel.
//!
//! `--wrong-out` also writes, for every token, a well-formed token with the same id and kind but
//! another secret (valid checksum, wrong secret): attack traffic that reaches the verifier.
//!
//! Prints one JSON line on stdout: `{"tokens": N, "seconds": S, "per_second": R, "org_id": ...}`.

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use chrono::Utc;
use latchkey::service::AuthorityConfig;
use latchkey::store::{self, AuditRecord, OrgRecord, TokenRecord};
use latchkey::token::format::{self, GeneratedToken};
use latchkey::token::{HashAlgorithm, Permissions, Prefix, TokenKind, Verifier};
use uuid::Uuid;

struct Args {
    database_url: String,
    count: usize,
    out: String,
    wrong_out: Option<String>,
    hash: HashAlgorithm,
    org_name: String,
    prefix: Prefix,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut database_url = None;
    let mut count = 1000usize;
    let mut out = None;
    let mut wrong_out = None;
    let mut hash = HashAlgorithm::Sha256;
    let mut org_name = "default".to_string();
    let mut prefix = AuthorityConfig::default().prefix;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--database-url" => database_url = Some(value()?),
            "--count" => count = value()?.parse().context("--count")?,
            "--out" => out = Some(value()?),
            "--wrong-out" => wrong_out = Some(value()?),
            "--hash" => {
                hash = match value()?.as_str() {
                    "sha256" => HashAlgorithm::Sha256,
                    "argon2id" => HashAlgorithm::Argon2id,
                    other => anyhow::bail!("--hash: sha256 or argon2id, not {other:?}"),
                }
            }
            "--org-name" => org_name = value()?,
            "--prefix" => prefix = value()?.parse().map_err(anyhow::Error::msg)?,
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    Ok(Args {
        database_url: database_url.context("--database-url is required")?,
        count,
        out: out.context("--out is required")?,
        wrong_out,
        hash,
        org_name,
        prefix,
    })
}

/// A generated token with its verifier, ready to insert.
struct Prepared {
    generated: GeneratedToken,
    verifier: Verifier,
}

fn prepare(prefix: &Prefix, hash: HashAlgorithm) -> anyhow::Result<Prepared> {
    let generated = format::generate(prefix, TokenKind::Pat)?;
    let verifier = Verifier::compute(hash, &generated.secret)?;
    Ok(Prepared {
        generated,
        verifier,
    })
}

/// Generates `n` tokens; Argon2id verifiers on every core.
async fn prepare_batch(
    prefix: &Prefix,
    hash: HashAlgorithm,
    n: usize,
) -> anyhow::Result<Vec<Prepared>> {
    match hash {
        HashAlgorithm::Sha256 => (0..n).map(|_| prepare(prefix, hash)).collect(),
        HashAlgorithm::Argon2id => {
            let mut tasks = Vec::with_capacity(n);
            for _ in 0..n {
                let prefix = prefix.clone();
                tasks.push(tokio::task::spawn_blocking(move || prepare(&prefix, hash)));
            }
            let mut out = Vec::with_capacity(n);
            for t in tasks {
                out.push(t.await??);
            }
            Ok(out)
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let store = store::connect(&args.database_url).await?;
    let now = Utc::now();
    let org = match store.find_org_by_name(&args.org_name).await? {
        Some(org) => org,
        None => {
            let org = OrgRecord {
                id: Uuid::now_v7(),
                name: args.org_name.clone(),
                created_at: now,
                max_ttl_seconds: None,
                default_ttl_seconds: None,
            };
            store.create_org(&org, None, &[]).await?;
            org
        }
    };

    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&args.out).with_context(|| format!("creating {}", args.out))?,
    );
    let mut wrong = match &args.wrong_out {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {p}"))?,
        )),
        None => None,
    };

    let started = Instant::now();
    // Names must be unique among the org's live tokens, also across several seed runs.
    let run = Uuid::now_v7().simple().to_string();
    let batch_size = match args.hash {
        HashAlgorithm::Sha256 => 1000,
        HashAlgorithm::Argon2id => 64,
    };
    let mut done = 0usize;
    while done < args.count {
        let n = batch_size.min(args.count - done);
        let batch = prepare_batch(&args.prefix, args.hash, n).await?;
        for p in batch {
            let g = &p.generated;
            let now = Utc::now();
            let name = format!("bench-{}-{done:07}", &run[20..]);
            let record = TokenRecord {
                id: g.id,
                org_id: org.id,
                name: name.clone(),
                kind: g.kind,
                verifier: p.verifier.encode(),
                permissions: Permissions::TOKENS_READ,
                created_at: now,
                created_by: "system".into(),
                expires_at: None,
                revoked_at: None,
                last_used_at: None,
                request_count: 0,
                replaced_by: None,
                metadata: None,
                family_id: g.id,
                disabled_at: None,
                client_ips: Vec::new(),
            };
            let event = AuditRecord {
                id: Uuid::now_v7(),
                org_id: org.id,
                occurred_at: now,
                actor: "system".into(),
                action: "token_created".into(),
                token_id: Some(g.id),
                ip: None,
                user_agent: None,
                details: serde_json::json!({
                    "name": name,
                    "type": g.kind.as_str(),
                    "permissions": Permissions::TOKENS_READ.bits(),
                    "expires_at": null,
                    "seeded": true,
                }),
            };
            store
                .insert_token(&record, std::slice::from_ref(&event), now)
                .await
                .with_context(|| format!("inserting token {done}"))?;
            writeln!(out, "{}", g.plaintext.expose())?;
            if let Some(w) = wrong.as_mut() {
                let mut other = [0u8; 32];
                getrandom::fill(&mut other)?;
                writeln!(w, "{}", format::format_token(&args.prefix, g.kind, g.id, &other))?;
            }
            done += 1;
        }
    }
    out.flush()?;
    if let Some(w) = wrong.as_mut() {
        w.flush()?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "tokens": args.count,
            "hash": args.hash.to_string(),
            "seconds": (secs * 100.0).round() / 100.0,
            "per_second": (args.count as f64 / secs.max(1e-9)).round(),
            "org_id": org.id,
        })
    );
    Ok(())
}
