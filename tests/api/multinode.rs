//! Several nodes on one PostgreSQL database: two real `latchkey serve` processes on a fresh
//! database (on the server of `helpers::postgres_admin_url`: `LATCHKEY_TEST_DATABASE_URL`, or a
//! throwaway cluster the tests start; without either these tests fail, saying so).
//! The verify cache TTL is set to five minutes, so anything that reaches the other node faster
//! came through LISTEN/NOTIFY, not through the TTL safety net.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestDatabase, postgres_admin_url, spawn_node};

/// How long a revocation may take to reach another node.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(1);

/// Two nodes on one fresh database. Fields drop in order: the nodes stop before the database
/// is dropped.
struct TwoNodes {
    a: TestApp,
    b: TestApp,
    _db: TestDatabase,
}

async fn two_nodes(test: &str) -> TwoNodes {
    let admin = postgres_admin_url(test);
    let db = TestDatabase::create(&admin).await;
    // Usage flushed often; a long cache TTL, so only a notification can explain a fast refusal;
    // room for the creates and rotations these tests make from one address.
    let flags = [
        "--usage-flush-ms",
        "100",
        "--cache-ttl-seconds",
        "300",
        "--rate-limit-mint-per-hour",
        "1000",
    ];
    // A first, so that it alone bootstraps the empty database.
    let a = spawn_node(&db.url, &flags).await;
    assert!(
        !a.admin_token.is_empty(),
        "node A bootstraps the empty database; logs:\n{}",
        a.logs()
    );
    let mut b = spawn_node(&db.url, &flags).await;
    assert!(b.admin_token.is_empty(), "only the first node bootstraps");
    b.admin_token = a.admin_token.clone();
    b.org_id = a.org_id;
    TwoNodes { a, b, _db: db }
}

fn assert_valid(v: &Value, node: &str) {
    assert_eq!(v["valid"], true, "on node {node}: {v}");
}

/// Verifies `token` on `node` until it is refused or `started + limit` passes; returns the time
/// since `started` at which it was refused.
async fn refused_after(
    node: &TestApp,
    token: &str,
    started: Instant,
    limit: Duration,
) -> Option<Duration> {
    loop {
        let v = node.verify(token, &[]).await;
        if v["valid"] == false {
            assert_eq!(v["code"], "INVALID", "{v}");
            return Some(started.elapsed());
        }
        if started.elapsed() > limit {
            return None;
        }
    }
}

/// "12.3 ms (2.1 ms after node A answered)".
fn timing(took: Duration, answered: Duration) -> String {
    format!(
        "{:.1} ms ({:.1} ms after node A answered)",
        took.as_secs_f64() * 1e3,
        took.saturating_sub(answered).as_secs_f64() * 1e3
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_through_one_node_is_refused_by_the_other_within_a_second() {
    // Arrange: both nodes have verified (and so cached) the token.
    let n = two_nodes(module_path!()).await;
    let (plaintext, view) = n.a.token_with(&n.a.admin_token, "revoke me", &[]).await;
    let id = view["id"].as_str().unwrap();
    assert_valid(&n.a.verify(&plaintext, &[]).await, "A");
    assert_valid(&n.b.verify(&plaintext, &[]).await, "B");
    assert_valid(&n.b.verify(&plaintext, &[]).await, "B");

    // Act
    let started = Instant::now();
    let res =
        n.a.delete(&format!("/v1/tokens/{id}"), &n.a.admin_token)
            .await;
    let answered = started.elapsed();
    assert!(res.status().is_success(), "revoke: {}", res.status());
    let on_a = n.a.verify(&plaintext, &[]).await;
    let on_b = refused_after(&n.b, &plaintext, started, PROPAGATION_LIMIT).await;

    // Assert
    assert_eq!(on_a["valid"], false, "refused at once on the revoking node");
    let took = on_b.expect("node B still accepted the revoked token after 1 s");
    println!(
        "revocation reached node B {} after the revoke was sent to node A",
        timing(took, answered)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_rotated_without_grace_through_one_node_is_refused_by_the_other_within_a_second() {
    // Arrange
    let n = two_nodes(module_path!()).await;
    let (old, view) = n.a.token_with(&n.a.admin_token, "rotate me", &[]).await;
    let id = view["id"].as_str().unwrap();
    assert_valid(&n.a.verify(&old, &[]).await, "A");
    assert_valid(&n.b.verify(&old, &[]).await, "B");

    // Act
    let started = Instant::now();
    let res =
        n.a.post(
            &format!("/v1/tokens/{id}/rotate"),
            &n.a.admin_token,
            json!({ "grace_seconds": 0 }),
        )
        .await;
    let answered = started.elapsed();
    let status = res.status();
    let rotated: Value = res.json().await.unwrap();
    assert!(
        status == StatusCode::OK || status == StatusCode::CREATED,
        "rotate: {status} {rotated}"
    );
    let on_b = refused_after(&n.b, &old, started, PROPAGATION_LIMIT).await;

    // Assert
    let took = on_b.expect("node B still accepted the rotated-out token after 1 s");
    println!(
        "rotation (grace 0) reached node B {} after the rotate was sent to node A",
        timing(took, answered)
    );
    let new = rotated["plaintext"].as_str().expect("new plaintext");
    assert_eq!(n.a.verify(&old, &[]).await["valid"], false);
    assert_valid(&n.b.verify(new, &[]).await, "B");
    assert_valid(&n.a.verify(new, &[]).await, "A");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_name_created_through_both_nodes_at_once_succeeds_once() {
    // Arrange
    let n = two_nodes(module_path!()).await;

    for round in 0..5 {
        let body = json!({ "name": format!("shared {round}") });

        // Act
        let (on_a, on_b) = tokio::join!(
            n.a.post("/v1/tokens", &n.a.admin_token, body.clone()),
            n.b.post("/v1/tokens", &n.b.admin_token, body.clone()),
        );

        // Assert
        let mut outcomes = Vec::new();
        for res in [on_a, on_b] {
            let status = res.status();
            let v: Value = res.json().await.unwrap();
            outcomes.push((status, v));
        }
        outcomes.sort_by_key(|(s, _)| s.as_u16());
        let statuses: Vec<StatusCode> = outcomes.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            statuses,
            [StatusCode::CREATED, StatusCode::CONFLICT],
            "round {round}: {outcomes:?}"
        );
        assert_eq!(outcomes[1].1["error"]["code"], "already_exists");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifies_spread_over_both_nodes_add_up_in_the_request_count() {
    // Arrange
    const PER_NODE: usize = 30;
    let n = two_nodes(module_path!()).await;
    let (plaintext, view) = n.a.token_with(&n.a.admin_token, "busy", &[]).await;
    let path = format!("/v1/tokens/{}", view["id"].as_str().unwrap());

    // Act: both nodes verify at the same time, each flushing its own counts every 100 ms.
    tokio::join!(
        verify_times(&n.a, &plaintext, PER_NODE),
        verify_times(&n.b, &plaintext, PER_NODE),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut count = 0;
    while Instant::now() < deadline {
        let res = n.a.get(&path, &n.a.admin_token).await;
        assert_eq!(res.status(), StatusCode::OK);
        let v: Value = res.json().await.unwrap();
        count = v["request_count"].as_i64().unwrap();
        if count >= (2 * PER_NODE) as i64 {
            break;
        }
    }

    // Assert
    assert_eq!(count, (2 * PER_NODE) as i64);
    let v: Value = n.b.get(&path, &n.b.admin_token).await.json().await.unwrap();
    assert_eq!(v["request_count"], (2 * PER_NODE) as i64, "{v}");
}

async fn verify_times(node: &TestApp, token: &str, times: usize) {
    for _ in 0..times {
        assert_valid(&node.verify(token, &[]).await, &node.address);
    }
}
