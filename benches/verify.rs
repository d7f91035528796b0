//! Criterion micro-benchmarks of the verification hot path and of token generation.
//!
//! `cargo bench --bench verify`. The end-to-end figures (HTTP, gRPC, against a baseline server)
//! come from `bench/run.sh`; these isolate the in-process cost.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use criterion::{Criterion, criterion_group, criterion_main};
use latchkey::service::model::VerifyRequest;
use latchkey::service::{Authority, AuthorityConfig};
use latchkey::token::format;
use latchkey::token::{HashAlgorithm, Prefix, TokenKind, Verifier};

/// An authority on a fresh SQLite file with one bootstrap token, verified once (warm).
fn warm_authority(rt: &tokio::runtime::Runtime) -> (tempfile::TempDir, Arc<Authority>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("lk.db").display());
    let (authority, token) = rt.block_on(async {
        latchkey::telemetry::metrics();
        let store = latchkey::store::connect(&url).await.expect("store");
        let authority = Arc::new(Authority::new(
            store,
            AuthorityConfig {
                cache_ttl: Duration::from_secs(3600),
                ..AuthorityConfig::default()
            },
        ));
        let out = authority
            .bootstrap("bench", Utc::now())
            .await
            .expect("bootstrap");
        (authority, out.plaintext.expose().clone())
    });
    (dir, authority, token)
}

fn verify(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (_dir, authority, token) = warm_authority(&rt);
    let ip = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let req = VerifyRequest {
        token: token.clone(),
        required_scopes: Vec::new(),
    };
    assert!(
        rt.block_on(authority.verify(&req, ip, Utc::now()))
            .expect("verify")
            .valid
    );

    let mut g = c.benchmark_group("verify");
    g.bench_function("authority_verify_warm", |b| {
        b.iter(|| {
            rt.block_on(authority.verify(black_box(&req), ip, Utc::now()))
                .expect("verify")
        })
    });
    g.bench_function("check_token_warm", |b| {
        b.iter(|| {
            rt.block_on(authority.check_token(black_box(&token), ip, Utc::now()))
                .expect("check")
        })
    });
    let wrong = {
        let parsed = format::parse(&Prefix::default(), &token).expect("parse");
        format::format_token(&Prefix::default(), parsed.kind, parsed.id, &[7u8; 32])
    };
    g.bench_function("check_token_wrong_secret", |b| {
        b.iter(|| {
            rt.block_on(authority.check_token(black_box(&wrong), ip, Utc::now()))
                .expect("check")
        })
    });
    g.finish();
}

fn token(c: &mut Criterion) {
    let prefix = Prefix::default();
    let generated = format::generate(&prefix, TokenKind::Pat).expect("generate");
    let plaintext = generated.plaintext.expose().clone();
    let mut g = c.benchmark_group("token");
    g.bench_function("generate", |b| {
        b.iter(|| format::generate(black_box(&prefix), TokenKind::Pat).expect("generate"))
    });
    g.bench_function("parse", |b| {
        b.iter(|| format::parse(&prefix, black_box(&plaintext)).expect("parse"))
    });
    g.bench_function("sha256_verifier_matches", |b| {
        let v = Verifier::compute(HashAlgorithm::Sha256, &generated.secret).expect("verifier");
        b.iter(|| black_box(&v).matches(&generated.secret))
    });
    g.finish();
}

criterion_group!(benches, verify, token);
criterion_main!(benches);
