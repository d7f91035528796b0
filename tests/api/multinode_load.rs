//! Several nodes on one PostgreSQL database under load (issue 21): revocations reaching every
//! other node of three while each verifies continuously, a node whose notification connection is
//! cut, and a node killed with SIGKILL while it verifies and mints.
//!
//! Like `multinode.rs`, these need PostgreSQL whatever `LATCHKEY_TEST_BACKEND` says: a fresh
//! database on the server of `helpers::postgres_admin_url`. The figures (propagation p50, p99 and
//! max) are printed; run with `--nocapture` to see them. `bench/multinode.sh` measures the same
//! propagation on release builds under wrk load.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tokio::task::JoinHandle;

use crate::helpers::{TestApp, TestDatabase, postgres_admin_url, spawn_node};

/// Every node: a five-minute cache TTL, so that a refusal within seconds is explained by a
/// notification (or a dropped cache), never by the TTL; usage flushed every 100 ms.
const LONG_TTL: [&str; 4] = ["--cache-ttl-seconds", "300", "--usage-flush-ms", "100"];

/// How long a revocation may take to reach another node under load before the test fails. The
/// target (p99 <= 100 ms) is for `bench/multinode.sh` on release builds; this bound is for a
/// debug build on a busy two-core machine.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(2);

/// `application_name` of each node's notification connection (`src/store/postgres.rs`).
const LISTENER: &str = "latchkey-listener";

/// Calls one node over REST from tasks of their own: a client with a timeout, and every failure
/// (transport error, unexpected status) as an `Err` for the task to report, not a panic.
#[derive(Clone)]
struct Node {
    client: reqwest::Client,
    base: String,
    admin: String,
}

impl Node {
    fn of(app: &TestApp, admin: &str) -> Self {
        Self {
            client: crate::helpers::reqwest_builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
            base: app.address.clone(),
            admin: admin.to_string(),
        }
    }

    /// `POST /v1/tokens/verify`: the answer, or why there was none (or not a 200).
    async fn verify(&self, token: &str) -> Result<Value, String> {
        let res = self
            .client
            .post(format!("{}/v1/tokens/verify", self.base))
            .json(&json!({ "token": token }))
            .send()
            .await
            .map_err(|e| format!("verify on {}: {e}", self.base))?;
        let status = res.status();
        let body = res
            .text()
            .await
            .map_err(|e| format!("verify on {}: reading the answer: {e}", self.base))?;
        if status != StatusCode::OK {
            return Err(format!("verify on {}: {status} {body}", self.base));
        }
        serde_json::from_str(&body).map_err(|e| format!("verify on {}: {e}: {body}", self.base))
    }

    /// A management call as the admin: status and JSON body (`Null` when empty).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), String> {
        let mut rb = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.admin);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let res = rb
            .send()
            .await
            .map_err(|e| format!("{method} {path} on {}: {e}", self.base))?;
        let status = res.status();
        let text = res
            .text()
            .await
            .map_err(|e| format!("{method} {path} on {}: reading the answer: {e}", self.base))?;
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, v))
    }

    /// Creates a token named `name`: (plaintext, id), or why not.
    async fn mint(&self, name: &str) -> Result<(String, String), String> {
        let (status, v) = self
            .call(
                reqwest::Method::POST,
                "/v1/tokens",
                Some(json!({ "name": name })),
            )
            .await?;
        if status != StatusCode::CREATED {
            return Err(format!("create {name}: {status} {v}"));
        }
        Ok((
            v["plaintext"].as_str().expect("plaintext").to_string(),
            v["token"]["id"].as_str().expect("id").to_string(),
        ))
    }

    async fn revoke(&self, id: &str) -> Result<(), String> {
        let (status, v) = self
            .call(reqwest::Method::DELETE, &format!("/v1/tokens/{id}"), None)
            .await?;
        if !status.is_success() {
            return Err(format!("revoke {id}: {status} {v}"));
        }
        Ok(())
    }

    /// Verifies `token` until it is refused or `since + limit` passes; returns when it was first
    /// refused, counted from `since`.
    async fn refused_after(
        &self,
        token: &str,
        since: Instant,
        limit: Duration,
    ) -> Result<Option<Duration>, String> {
        loop {
            let v = self.verify(token).await?;
            if v["valid"] == false {
                if v["code"] != "INVALID" {
                    return Err(format!("refused with another code: {v}"));
                }
                return Ok(Some(since.elapsed()));
            }
            if since.elapsed() > limit {
                return Ok(None);
            }
        }
    }
}

/// Nodes on one fresh database. Fields drop in order: the nodes stop before the database is
/// dropped.
struct Cluster {
    apps: Vec<TestApp>,
    nodes: Vec<Node>,
    db: TestDatabase,
}

/// One node per entry of `flags`, the first bootstrapping the empty database alone.
async fn cluster(test: &str, flags: &[&[&str]]) -> Cluster {
    let db = TestDatabase::create(&postgres_admin_url(test)).await;
    let mut apps = Vec::new();
    for f in flags {
        apps.push(spawn_node(&db.url, f).await);
    }
    let admin = apps[0].admin_token.clone();
    assert!(
        !admin.is_empty(),
        "the first node bootstraps the empty database; logs:\n{}",
        apps[0].logs()
    );
    let nodes = apps.iter().map(|a| Node::of(a, &admin)).collect();
    Cluster { apps, nodes, db }
}

/// `count` tokens minted through `node` by four tasks at once: (plaintext, id), in name order.
async fn mint_many(node: &Node, prefix: &str, count: usize) -> Vec<(String, String)> {
    let mut tasks = Vec::new();
    for w in 0..4 {
        let node = node.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in (w..count).step_by(4) {
                out.push((i, node.mint(&format!("{prefix} {i}")).await?));
            }
            Ok::<_, String>(out)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap().unwrap_or_else(|e| panic!("{e}")));
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, t)| t).collect()
}

/// Verifies `tokens` on `node` (each must be valid), four at a time: the node caches them.
async fn warm(node: &Node, tokens: &[String]) {
    for chunk in tokens.chunks(4) {
        let mut tasks = Vec::new();
        for t in chunk {
            let (node, t) = (node.clone(), t.clone());
            tasks.push(tokio::spawn(async move { node.verify(&t).await }));
        }
        for t in tasks {
            let v = t.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(v["valid"], true, "warming {}: {v}", node.base);
        }
    }
}

/// A task verifying `tokens` on `node` in turn until `stop`, each answer valid; returns how many.
fn verify_load(
    node: &Node,
    tokens: Arc<Vec<String>>,
    start: usize,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
) -> JoinHandle<Result<u64, String>> {
    let node = node.clone();
    tokio::spawn(async move {
        let mut n = 0u64;
        let mut i = start;
        while !stop.load(Ordering::Relaxed) {
            let t = &tokens[i % tokens.len()];
            i += 1;
            let v = node.verify(t).await?;
            if v["valid"] != true {
                return Err(format!("a load token was refused by {}: {v}", node.base));
            }
            n += 1;
            answered.fetch_add(1, Ordering::Relaxed);
        }
        Ok(n)
    })
}

/// p50, p99 and max of `samples` (nearest rank).
fn percentiles(samples: &[Duration]) -> (Duration, Duration, Duration) {
    let mut v = samples.to_vec();
    v.sort();
    let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    (rank(0.50), rank(0.99), v[v.len() - 1])
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Polls `cond` every 10 ms until it holds or `limit` passes; returns whether it held.
async fn eventually<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_under_verify_load_reach_both_other_nodes_of_three_within_two_seconds() {
    // Arrange: three nodes; each holds every token to be revoked in its cache and verifies a set
    // of other tokens continuously (two tasks per node).
    const REVOCATIONS: usize = 200;
    let c = cluster(module_path!(), &[&LONG_TTL, &LONG_TTL, &LONG_TTL]).await;
    let (a, others) = (&c.nodes[0], [&c.nodes[1], &c.nodes[2]]);
    let load: Vec<String> = mint_many(a, "load", 12)
        .await
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let load = Arc::new(load);
    let targets = mint_many(a, "revoke", REVOCATIONS).await;
    let plaintexts: Vec<String> = targets.iter().map(|(p, _)| p.clone()).collect();
    for node in &c.nodes {
        warm(node, &plaintexts).await;
        warm(node, &load).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let answered: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut tasks = Vec::new();
    for (k, node) in c.nodes.iter().enumerate() {
        for t in 0..2 {
            tasks.push((
                k,
                verify_load(node, load.clone(), t * 5, stop.clone(), answered[k].clone()),
            ));
        }
    }
    let loaded = eventually(Duration::from_secs(20), || async {
        answered.iter().all(|n| n.load(Ordering::Relaxed) >= 20)
    })
    .await;
    assert!(loaded, "the verify load did not start on every node");

    // Act: revoke one token at a time through A; from the moment the revoke call returns, poll
    // both other nodes until each refuses the token.
    let started = Instant::now();
    let before: Vec<u64> = answered.iter().map(|n| n.load(Ordering::Relaxed)).collect();
    let mut reached: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut revoke_calls = Vec::new();
    for (plaintext, id) in &targets {
        let sent = Instant::now();
        a.revoke(id).await.unwrap_or_else(|e| panic!("{e}"));
        let returned = Instant::now();
        revoke_calls.push(returned - sent);
        let (on_b, on_c) = tokio::join!(
            others[0].refused_after(plaintext, returned, PROPAGATION_LIMIT),
            others[1].refused_after(plaintext, returned, PROPAGATION_LIMIT),
        );
        for (k, got) in [on_b, on_c].into_iter().enumerate() {
            let took = got.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|| {
                panic!(
                    "token {id} revoked through node A was still accepted by node {} {} after \
                     the revoke returned",
                    ["B", "C"][k],
                    ms(PROPAGATION_LIMIT)
                )
            });
            reached[k].push(took);
        }
        let on_a = a.verify(plaintext).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(on_a["valid"], false, "refused at once by the revoking node");
    }
    let elapsed = started.elapsed();
    let during: Vec<u64> = answered
        .iter()
        .zip(&before)
        .map(|(n, b)| n.load(Ordering::Relaxed) - b)
        .collect();
    stop.store(true, Ordering::Relaxed);
    let mut total = [0u64; 3];
    for (k, t) in tasks {
        total[k] += t.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
    }

    // Assert: every load verification stayed valid (the tasks return an error otherwise) and the
    // load ran on every node throughout; every revocation reached both other nodes in time.
    for (k, n) in during.iter().enumerate() {
        assert!(
            *n >= 100,
            "node {} answered only {n} load verifications during the revocations",
            ["A", "B", "C"][k]
        );
    }
    let all: Vec<Duration> = reached.concat();
    assert_eq!(all.len(), 2 * REVOCATIONS);
    let (p50, p99, max) = percentiles(&all);
    let (rp50, rp99, rmax) = percentiles(&revoke_calls);
    println!(
        "revocation under load, 3 nodes (debug build): {REVOCATIONS} revocations through A, \
         {} propagations to B and C, from the revoke call's return to the first refusal: \
         p50 {} p99 {} max {}; the revoke call itself p50 {} p99 {} max {}; load verifications \
         answered during the revocations ({:.1} s): A {} B {} C {} (in all {total:?})",
        all.len(),
        ms(p50),
        ms(p99),
        ms(max),
        ms(rp50),
        ms(rp99),
        ms(rmax),
        elapsed.as_secs_f64(),
        during[0],
        during[1],
        during[2],
    );
    for (k, samples) in reached.iter().enumerate() {
        let (p50, p99, max) = percentiles(samples);
        println!(
            "  to node {}: p50 {} p99 {} max {}",
            ["B", "C"][k],
            ms(p50),
            ms(p99),
            ms(max)
        );
    }
}

// ---- a cut notification connection ----

/// The database name in a PostgreSQL URL.
fn database_name(url: &str) -> String {
    let path = url.split('?').next().unwrap();
    path.rsplit('/').next().unwrap().to_string()
}

/// Backend pids of the notification connections on `db`, in order.
async fn listeners(pg: &mut PgConnection, db: &str) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2 \
         ORDER BY pid",
    )
    .bind(db)
    .bind(LISTENER)
    .fetch_all(pg)
    .await
    .expect("reading pg_stat_activity")
}

/// Waits until exactly `n` nodes listen on `db`; returns their listeners' pids.
async fn wait_for_listeners(pg: &mut PgConnection, db: &str, n: usize) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let pids = listeners(pg, db).await;
        if pids.len() == n {
            return pids;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} listeners on {db}, found {pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Lets new connections into `db`, or not (those open stay open: every node keeps its pool).
async fn allow_connections(pg: &mut PgConnection, db: &str, allow: bool) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {db} ALLOW_CONNECTIONS {allow}"
    )))
    .execute(pg)
    .await
    .expect("ALTER DATABASE ... ALLOW_CONNECTIONS");
}

/// Terminates the backend `pid` and waits until it is gone.
async fn cut(pg: &mut PgConnection, db: &str, pid: i32) {
    let done: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut *pg)
        .await
        .expect("pg_terminate_backend");
    assert!(done, "no backend {pid} to terminate");
    let deadline = Instant::now() + Duration::from_secs(10);
    while listeners(pg, db).await.contains(&pid) {
        assert!(Instant::now() < deadline, "backend {pid} did not end");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_notification_connection_is_cut_drops_its_cache_and_listens_again() {
    // Arrange: A with a long TTL, B with a 2 s one, started one after the other so that which
    // listener is whose is known.
    const TTL: Duration = Duration::from_secs(2);
    let admin_url = postgres_admin_url(module_path!());
    let mut pg = PgConnection::connect(&admin_url).await.expect("admin");
    let database = TestDatabase::create(&admin_url).await;
    let db = database_name(&database.url);
    // A keeps connections open (its pool would otherwise open one on demand), so it can revoke
    // while the database refuses new connections.
    let a_args = [&LONG_TTL[..], &["--db-min-connections", "4"]].concat();
    let first = spawn_node(&database.url, &a_args).await;
    assert!(
        !first.admin_token.is_empty(),
        "A bootstraps the empty database"
    );
    let a_listener = wait_for_listeners(&mut pg, &db, 1).await[0];
    let second = spawn_node(&database.url, &["--cache-ttl-seconds", "2"]).await;
    let both = wait_for_listeners(&mut pg, &db, 2).await;
    let b_listener = *both.iter().find(|p| **p != a_listener).unwrap();
    let a = &Node::of(&first, &first.admin_token);
    let b = &Node::of(&second, &first.admin_token);
    let c = Cluster {
        apps: vec![first, second],
        nodes: Vec::new(),
        db: database,
    };
    let (t1, id1) = a.mint("cut 1").await.unwrap();

    // Act 1: B caches t1; then B's notification connection is cut while no new connection may
    // reach the database (so B cannot listen again before the revoke has committed), and t1 is
    // revoked through A: B cannot have heard of it. Connections are let in again at once.
    let loaded1 = Instant::now();
    assert_eq!(b.verify(&t1).await.unwrap()["valid"], true);
    allow_connections(&mut pg, &db, false).await;
    cut(&mut pg, &db, b_listener).await;
    a.revoke(&id1).await.unwrap();
    let revoked1 = Instant::now();
    allow_connections(&mut pg, &db, true).await;
    let took1 = b
        .refused_after(&t1, revoked1, TTL + Duration::from_secs(2))
        .await
        .unwrap();

    // Assert 1: refused within the TTL, and before B's cached entry had expired: B dropped its
    // cache when it listened again.
    let took1 = took1.unwrap_or_else(|| {
        panic!(
            "node B still accepted a token revoked while its listener was cut, TTL + 2 s \
             later; logs:\n{}",
            c.apps[1].logs()
        )
    });
    assert!(
        revoked1 + took1 < loaded1 + TTL,
        "refused {} after the revoke, {} after B cached the token: the TTL, not a dropped cache, \
         explains it; logs:\n{}",
        ms(took1),
        ms(revoked1 + took1 - loaded1),
        c.apps[1].logs()
    );
    let reconnected = eventually(Duration::from_secs(10), || async {
        c.apps[1].logs().contains("listener reconnected")
    })
    .await;
    assert!(
        reconnected,
        "B never said it listens again; logs:\n{}",
        c.apps[1].logs()
    );
    let now = wait_for_listeners(&mut pg, &db, 2).await;
    assert!(now.contains(&a_listener), "A's listener was left alone");
    let b_listener = *now.iter().find(|p| **p != a_listener).unwrap();
    println!(
        "listener cut: a token revoked while node B could not listen was refused by B {} after \
         the revoke returned (TTL {} s)",
        ms(took1),
        TTL.as_secs()
    );

    // Act 2: B listens again: a later revocation reaches it through a notification.
    let (t2, id2) = a.mint("cut 2").await.unwrap();
    let loaded2 = Instant::now();
    assert_eq!(b.verify(&t2).await.unwrap()["valid"], true);
    a.revoke(&id2).await.unwrap();
    let revoked2 = Instant::now();
    let took2 = b
        .refused_after(&t2, revoked2, Duration::from_secs(1))
        .await
        .unwrap();

    // Assert 2
    let took2 = took2.expect("B listens again: a revocation reaches it within 1 s");
    assert!(
        revoked2 + took2 < loaded2 + TTL,
        "refused before the entry's TTL ran out"
    );
    println!(
        "after the reconnect, a revocation reached B in {}",
        ms(took2)
    );

    // Act 3: the safety net. B's listener is cut again and may not come back (no new
    // connections) while another cached token is revoked: only the TTL can end B's trust.
    let (t3, id3) = a.mint("cut 3").await.unwrap();
    let loaded3 = Instant::now();
    assert_eq!(b.verify(&t3).await.unwrap()["valid"], true);
    allow_connections(&mut pg, &db, false).await;
    cut(&mut pg, &db, b_listener).await;
    a.revoke(&id3).await.unwrap();
    let revoked3 = Instant::now();
    let took3 = b
        .refused_after(&t3, revoked3, TTL + Duration::from_secs(2))
        .await;
    let listening = listeners(&mut pg, &db).await;
    allow_connections(&mut pg, &db, true).await;

    // Assert 3: refused once the entry's TTL ran out (give or take the reload), while B still
    // had no listener.
    let took3 = took3.unwrap().unwrap_or_else(|| {
        panic!(
            "with its listener down, B still accepted a revoked token {} after it cached it \
             (TTL {} s); logs:\n{}",
            ms(loaded3.elapsed()),
            TTL.as_secs(),
            c.apps[1].logs()
        )
    });
    assert_eq!(
        listening,
        [a_listener],
        "B could not listen again meanwhile"
    );
    let since_loaded = revoked3 + took3 - loaded3;
    assert!(
        since_loaded <= TTL + Duration::from_secs(1),
        "refused {} after B cached the token (TTL {} s)",
        ms(since_loaded),
        TTL.as_secs()
    );
    println!(
        "with B's listener down, the TTL ended B's trust {} after B cached the token ({} after \
         the revoke)",
        ms(since_loaded),
        ms(took3)
    );
}

// ---- a node killed ----

/// The pid of the process whose command line holds `arg` as one argument.
fn pid_with_arg(arg: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

/// Every `token_id` of the `token_created` events `node` lists, all pages.
async fn created_events(node: &Node) -> HashSet<String> {
    let mut ids = HashSet::new();
    let mut page: Option<String> = None;
    loop {
        let path = match &page {
            Some(p) => format!("/v1/audit?action=token_created&page_size=500&page_token={p}"),
            None => "/v1/audit?action=token_created&page_size=500".to_string(),
        };
        let (status, v) = node.call(reqwest::Method::GET, &path, None).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{v}");
        for e in v["events"].as_array().unwrap() {
            if let Some(id) = e["token_id"].as_str() {
                ids.insert(id.to_string());
            }
        }
        match v["next_page_token"].as_str() {
            Some(p) if !p.is_empty() => page = Some(p.to_string()),
            _ => return ids,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_loses_at_most_one_flush_interval_of_usage_and_nothing_else() {
    // Arrange: A and B, and V (flushing usage every 200 ms) marked on its command line so that
    // its pid can be found.
    const FLUSH: Duration = Duration::from_millis(200);
    // Between the snapshot of a flush and its commit: the housekeeping before it, the
    // transaction, a busy machine.
    const FLUSH_SLACK: Duration = Duration::from_millis(300);
    const VERIFY_TASKS: usize = 2;
    let marker = format!("http://victim-{}.invalid", uuid::Uuid::now_v7().simple());
    let victim_flags = [
        "--cache-ttl-seconds",
        "300",
        "--usage-flush-ms",
        "200",
        "--public-url",
        marker.as_str(),
    ];
    let c = cluster(module_path!(), &[&LONG_TTL, &LONG_TTL, &victim_flags]).await;
    let (a, b, v) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let pid = pid_with_arg(&marker).expect("the victim's process");
    let db = database_name(&c.db.url);
    let mut pg = PgConnection::connect(&postgres_admin_url(module_path!()))
        .await
        .expect("admin");
    wait_for_listeners(&mut pg, &db, 3).await;
    // Tokens only V verifies (their request_count is V's alone), and tokens A and B verify.
    let victims: Vec<(String, String)> = mint_many(a, "counted", 4).await;
    let survivors: Vec<String> = mint_many(a, "steady", 4)
        .await
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let survivors = Arc::new(survivors);

    let stop = Arc::new(AtomicBool::new(false));
    // V's verifications: each answer's token and time.
    let v_answered = Arc::new(AtomicU64::new(0));
    let mut v_tasks = Vec::new();
    for t in 0..VERIFY_TASKS {
        let (v, tokens, counter) = (v.clone(), victims.clone(), v_answered.clone());
        v_tasks.push(tokio::spawn(async move {
            let mut answers: Vec<(usize, Instant)> = Vec::new();
            let mut i = t;
            loop {
                let k = i % tokens.len();
                i += 1;
                match v.verify(&tokens[k].0).await {
                    Ok(r) => {
                        let at = Instant::now();
                        assert_eq!(r["valid"], true, "{r}");
                        answers.push((k, at));
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    // Killed: no more answers.
                    Err(_) => return answers,
                }
            }
        }));
    }
    // Mints through V: the ids of those answered 201.
    let v_minted = Arc::new(AtomicU64::new(0));
    let minter = {
        let (v, counter) = (v.clone(), v_minted.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0.. {
                match v.mint(&format!("through the victim {i}")).await {
                    Ok((_, id)) => {
                        ids.push(id);
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if e.contains("create ") => panic!("{e}"),
                    Err(_) => break,
                }
            }
            ids
        })
    };
    // A and B: verifications and management calls, every one of which must succeed.
    let survivor_ops: Vec<Arc<AtomicU64>> = (0..2).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut s_tasks = Vec::new();
    for (k, node) in [a, b].into_iter().enumerate() {
        s_tasks.push(verify_load(
            node,
            survivors.clone(),
            k,
            stop.clone(),
            survivor_ops[k].clone(),
        ));
        let (node, stop, ops) = (node.clone(), stop.clone(), survivor_ops[k].clone());
        let id = victims[k].1.clone();
        s_tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let path = if n.is_multiple_of(2) {
                    format!("/v1/tokens/{id}")
                } else {
                    "/v1/tokens?page_size=20".to_string()
                };
                let (status, body) = node.call(reqwest::Method::GET, &path, None).await?;
                if status != StatusCode::OK {
                    return Err(format!("GET {path} on {}: {status} {body}", node.base));
                }
                n += 1;
                ops.fetch_add(1, Ordering::Relaxed);
            }
            Ok(n)
        }));
    }
    let busy = eventually(Duration::from_secs(30), || async {
        v_answered.load(Ordering::Relaxed) >= 2000
            && v_minted.load(Ordering::Relaxed) >= 20
            && survivor_ops.iter().all(|n| n.load(Ordering::Relaxed) >= 50)
    })
    .await;
    assert!(
        busy,
        "the load did not get going: V answered {} verifications and {} mints",
        v_answered.load(Ordering::Relaxed),
        v_minted.load(Ordering::Relaxed)
    );

    // Act: SIGKILL V under load; A and B carry on a while longer.
    let killed_at = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -KILL {pid}");
    let mut answers: Vec<(usize, Instant)> = Vec::new();
    for t in v_tasks {
        answers.extend(t.await.unwrap());
    }
    let minted = minter.await.unwrap();
    let at_kill: Vec<u64> = survivor_ops
        .iter()
        .map(|n| n.load(Ordering::Relaxed))
        .collect();
    let carried_on = eventually(Duration::from_secs(20), || async {
        survivor_ops
            .iter()
            .zip(&at_kill)
            .all(|(n, k)| n.load(Ordering::Relaxed) >= k + 100)
    })
    .await;
    // V's connections are gone from the database once its listener is.
    wait_for_listeners(&mut pg, &db, 2).await;
    stop.store(true, Ordering::Relaxed);
    for t in s_tasks {
        t.await
            .unwrap()
            .unwrap_or_else(|e| panic!("a surviving node failed a call: {e}"));
    }

    // Assert: A and B answered everything, before and after the kill.
    assert!(
        carried_on,
        "A and B answered only {:?} calls after the kill (from {at_kill:?})",
        survivor_ops
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect::<Vec<_>>()
    );
    for node in [a, b] {
        let (status, _) = node
            .call(reqwest::Method::GET, "/readyz", None)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{} is ready", node.base);
    }
    // Every mint V answered 201 exists, with its audit event.
    assert!(minted.len() >= 20);
    let events = created_events(a).await;
    for id in &minted {
        let (status, view) = b
            .call(reqwest::Method::GET, &format!("/v1/tokens/{id}"), None)
            .await
            .unwrap();
        assert_eq!(
            status,
            StatusCode::OK,
            "minted through V before the kill: {id}"
        );
        assert_eq!(view["state"], "active", "{view}");
        assert!(events.contains(id), "no token_created event for {id}");
    }
    // Usage: what V counted, less at most what it answered in its last flush interval.
    let lost_window = FLUSH + FLUSH_SLACK;
    let mut total = (0i64, 0i64, 0i64); // (answered, in the window, recorded)
    for (k, (_, id)) in victims.iter().enumerate() {
        let answered = answers.iter().filter(|(t, _)| *t == k).count() as i64;
        let in_window = answers
            .iter()
            .filter(|(t, at)| *t == k && killed_at.duration_since(*at) <= lost_window)
            .count() as i64;
        let (status, view) = a
            .call(reqwest::Method::GET, &format!("/v1/tokens/{id}"), None)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        let recorded = view["request_count"].as_i64().unwrap();
        assert!(
            recorded >= answered - in_window,
            "token {k}: V answered {answered} verifications, {in_window} of them in the last \
             {} before the kill, and only {recorded} were recorded",
            ms(lost_window)
        );
        // A request V counted may have lost its answer to the kill: one per verifying task.
        assert!(
            recorded <= answered + VERIFY_TASKS as i64,
            "token {k}: {recorded} recorded, more than the {answered} V answered"
        );
        total = (total.0 + answered, total.1 + in_window, total.2 + recorded);
    }
    assert!(
        total.1 * 2 < total.0,
        "the load ran for less than two flush intervals: the bound proves little ({total:?})"
    );
    // Nothing V held stays locked: a write on a token it was counting goes through at once.
    let revoked = tokio::time::timeout(Duration::from_secs(5), a.revoke(&victims[0].1)).await;
    assert!(
        matches!(revoked, Ok(Ok(()))),
        "revoking a token V counted, after the kill: {revoked:?}"
    );
    let span = answers
        .iter()
        .map(|(_, at)| *at)
        .min()
        .map_or(Duration::ZERO, |first| killed_at - first);
    println!(
        "node killed under load: V answered {} verifications in {:.1} s and {} mints; {} of the \
         verifications were recorded ({} lost; {} fell in the last {} before the kill); A and B \
         answered {:?} calls, {:?} of them after the kill, without an error",
        total.0,
        span.as_secs_f64(),
        minted.len(),
        total.2,
        total.0 - total.2,
        total.1,
        ms(lost_window),
        survivor_ops
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect::<Vec<_>>(),
        survivor_ops
            .iter()
            .zip(&at_kill)
            .map(|(n, k)| n.load(Ordering::Relaxed) - k)
            .collect::<Vec<_>>(),
    );
}
