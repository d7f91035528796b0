//! The `latchkey-client` crate end to end: its example service (`crates/latchkey-client/
//! examples/protected.rs`, the real binary) in front of the real server. What the example
//! answers, how fast a revocation reaches it through `WatchChanges`, what it does with the
//! stream down or the server gone, and the uses it reports with `ReportUsage`.
//!
//! The example is built by `cargo test` at the root (the crate is a default workspace member),
//! or by `cargo build -p latchkey-client --examples`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{TestApp, spawn_app};

/// The scope the example's `/hello` requires in these tests.
const REQUIRED: &str = "tokens:read";

/// The example binary, built where cargo puts examples of the workspace.
fn example_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let path = target.join("debug/examples/protected");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p latchkey-client --examples` (a plain `cargo test` \
         at the root builds it too)",
        path.display()
    );
    path
}

/// The example service, running; killed on drop.
pub(crate) struct Protected {
    url: String,
    child: Child,
    client: reqwest::Client,
}

impl Drop for Protected {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Protected {
    /// Starts the example on a free port against `latchkey`, and waits for its address.
    pub(crate) fn start(latchkey: &str, watch_token: &str, require: &[&str]) -> Protected {
        Protected::start_with(latchkey, watch_token, require, &[])
    }

    /// [`Protected::start`] with more arguments (`--layer`).
    fn start_with(latchkey: &str, watch_token: &str, require: &[&str], more: &[&str]) -> Protected {
        Protected::start_with_env(latchkey, watch_token, require, more, &[])
    }

    /// [`Protected::start_with`] with environment variables (`SSL_CERT_FILE`).
    pub(crate) fn start_with_env(
        latchkey: &str,
        watch_token: &str,
        require: &[&str],
        more: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Protected {
        let mut cmd = Command::new(example_binary());
        cmd.envs(env.iter().copied())
            .args(["--listen", "127.0.0.1:0", "--latchkey", latchkey])
            .args(["--watch-token", watch_token])
            .args(more);
        for r in require {
            cmd.args(["--require", r]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the example");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the example printed no `listening on ADDR` line");
        Protected {
            url: format!("http://{addr}"),
            child,
            client: crate::helpers::reqwest_builder().build().unwrap(),
        }
    }

    async fn hello(&self, token: Option<&str>) -> reqwest::Response {
        let mut rb = self.client.get(format!("{}/hello", self.url));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        rb.send().await.expect("the example answers")
    }

    pub(crate) async fn hello_status(&self, token: &str) -> StatusCode {
        self.hello(Some(token)).await.status()
    }
}

/// A watch token (`tokens:watch`) of the app's default org.
pub(crate) async fn watch_token(app: &TestApp) -> String {
    app.token_with(&app.admin_token, "watch", &["tokens:watch"])
        .await
        .0
}

/// Every verification the server answered so far (REST or gRPC), from `/metrics`.
async fn server_verifications(app: &TestApp) -> f64 {
    let text = app
        .request(reqwest::Method::GET, "/metrics", None, None)
        .await
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("latchkey_verify_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Calls `/hello` with `token` until three calls in a row reach the server no more: the
/// example's change stream is up and the answer is cached. Answers how many calls it made.
pub(crate) async fn wait_until_cached(app: &TestApp, example: &Protected, token: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut calls = 0;
    loop {
        let before = server_verifications(app).await;
        for _ in 0..3 {
            assert_eq!(example.hello_status(token).await, StatusCode::OK);
            calls += 1;
        }
        if server_verifications(app).await == before {
            return calls;
        }
        assert!(
            Instant::now() < deadline,
            "the example kept asking the server: its change stream never came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Calls `/hello` with `token` as fast as it answers until the status is not 200; answers the
/// time from `since` to that answer, and the status. Gives up after `limit`.
pub(crate) async fn first_refusal(
    example: &Protected,
    token: &str,
    since: Instant,
    limit: Duration,
) -> (Duration, StatusCode) {
    loop {
        let status = example.hello_status(token).await;
        if status != StatusCode::OK {
            return (since.elapsed(), status);
        }
        assert!(
            since.elapsed() < limit,
            "still 200 {limit:?} after the change returned"
        );
    }
}

fn token_id(view: &Value) -> String {
    view["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn hello_answers_the_token_id_for_a_valid_token_and_open_needs_nothing() {
    // Arrange
    let app = spawn_app().await;
    let example = Protected::start(&app.address, &watch_token(&app).await, &[REQUIRED]);
    let (token, view) = app
        .token_with(&app.admin_token, "reader", &[REQUIRED])
        .await;

    // Act
    let hello = example.hello(Some(&token)).await;
    let open = example
        .client
        .get(format!("{}/open", example.url))
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(hello.status(), StatusCode::OK);
    assert_eq!(hello.text().await.unwrap(), token_id(&view));
    assert_eq!(open.status(), StatusCode::OK);
}

#[tokio::test]
async fn no_bearer_or_a_garbage_one_is_401_with_a_bearer_challenge() {
    // Arrange
    let app = spawn_app().await;
    let example = Protected::start(&app.address, &watch_token(&app).await, &[REQUIRED]);
    let (token, _) = app
        .token_with(&app.admin_token, "reader", &[REQUIRED])
        .await;
    wait_until_cached(&app, &example, &token).await;

    // Act
    let none = example.hello(None).await;
    let garbage = example.hello(Some("lk_pat_not-a-token")).await;
    let garbage_again = example.hello(Some("lk_pat_not-a-token")).await;

    // Assert: refused, also when the refusal comes from the cache.
    for res in [none, garbage, garbage_again] {
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let challenge = res.headers()["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Bearer"), "{challenge}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthenticated");
    }
}

#[tokio::test]
async fn a_token_lacking_the_required_scope_is_403() {
    // Arrange
    let app = spawn_app().await;
    let example = Protected::start(&app.address, &watch_token(&app).await, &[REQUIRED]);
    let (auditor, _) = app
        .token_with(&app.admin_token, "auditor", &["audit:read"])
        .await;

    // Act: twice, so the second answer may come from the cache.
    let first = example.hello(Some(&auditor)).await;
    let second = example.hello(Some(&auditor)).await;

    // Assert
    for res in [first, second] {
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        let challenge = res.headers()["www-authenticate"].to_str().unwrap();
        assert!(challenge.contains("insufficient_scope"), "{challenge}");
    }
}

#[tokio::test]
async fn a_revoked_token_is_refused_by_the_example_within_100_ms() {
    // Arrange: ten tokens, each answered from the example's cache before it is revoked.
    let app = spawn_app().await;
    let example = Protected::start(&app.address, &watch_token(&app).await, &[REQUIRED]);
    let mut delays = Vec::new();
    for i in 0..10 {
        let (token, view) = app
            .token_with(&app.admin_token, &format!("victim {i}"), &[REQUIRED])
            .await;
        wait_until_cached(&app, &example, &token).await;

        // Act
        let res = app
            .delete(&format!("/v1/tokens/{}", token_id(&view)), &app.admin_token)
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        let revoked = Instant::now();
        let (delay, status) =
            first_refusal(&example, &token, revoked, Duration::from_secs(1)).await;

        // Assert
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        delays.push(delay);
    }
    delays.sort();
    eprintln!(
        "revocation reached the example in: median {:?}, max {:?} (all: {delays:?})",
        delays[delays.len() / 2],
        delays[delays.len() - 1]
    );
    assert!(
        delays[delays.len() / 2] < Duration::from_millis(100),
        "median {:?}",
        delays[delays.len() / 2]
    );
}

#[tokio::test]
async fn with_the_layer_instead_of_the_extractor_the_example_answers_alike() {
    // Arrange: the example guarding /hello with the layer and `Verified`.
    let app = spawn_app().await;
    let example = Protected::start_with(
        &app.address,
        &watch_token(&app).await,
        &[REQUIRED],
        &["--layer"],
    );
    let (reader, view) = app
        .token_with(&app.admin_token, "reader", &[REQUIRED])
        .await;
    let (auditor, _) = app
        .token_with(&app.admin_token, "auditor", &["audit:read"])
        .await;
    wait_until_cached(&app, &example, &reader).await;

    // Act
    let valid = example.hello(Some(&reader)).await;
    let none = example.hello(None).await.status();
    let lacking = [
        example.hello_status(&auditor).await,
        example.hello_status(&auditor).await,
    ];
    let res = app
        .delete(&format!("/v1/tokens/{}", token_id(&view)), &app.admin_token)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let (delay, revoked) =
        first_refusal(&example, &reader, Instant::now(), Duration::from_secs(1)).await;

    // Assert
    assert_eq!(valid.status(), StatusCode::OK);
    assert_eq!(valid.text().await.unwrap(), token_id(&view));
    assert_eq!(none, StatusCode::UNAUTHORIZED);
    assert_eq!(lacking, [StatusCode::FORBIDDEN; 2]);
    assert_eq!(revoked, StatusCode::UNAUTHORIZED, "after {delay:?}");
}

#[tokio::test]
async fn a_token_rotated_with_no_grace_is_refused_at_once_and_its_successor_accepted() {
    // Arrange
    let app = spawn_app().await;
    let example = Protected::start(&app.address, &watch_token(&app).await, &[REQUIRED]);
    let (old, view) = app
        .token_with(&app.admin_token, "rotated", &[REQUIRED])
        .await;
    wait_until_cached(&app, &example, &old).await;

    // Act
    let res = app
        .post(
            &format!("/v1/tokens/{}/rotate", token_id(&view)),
            &app.admin_token,
            serde_json::json!({ "grace_seconds": 0 }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let rotated_at = Instant::now();
    let rotated: Value = res.json().await.unwrap();
    let (delay, status) = first_refusal(&example, &old, rotated_at, Duration::from_secs(1)).await;
    let new = example
        .hello(Some(rotated["plaintext"].as_str().unwrap()))
        .await;

    // Assert
    eprintln!("rotation reached the example in {delay:?}");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(new.status(), StatusCode::OK);
    assert_eq!(new.text().await.unwrap(), token_id(&rotated["token"]));
}

#[tokio::test]
async fn a_disabled_token_is_refused_at_once_and_accepted_again_once_enabled() {
    // Arrange
    let app = spawn_app().await;
    let example = Protected::start(&app.address, &watch_token(&app).await, &[REQUIRED]);
    let (token, view) = app
        .token_with(&app.admin_token, "switched", &[REQUIRED])
        .await;
    wait_until_cached(&app, &example, &token).await;
    let path = format!("/v1/tokens/{}", token_id(&view));

    // Act + Assert: disabled, refused (and the refusal is cached)...
    let res = app
        .post(
            &format!("{path}/disable"),
            &app.admin_token,
            serde_json::json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let (delay, status) =
        first_refusal(&example, &token, Instant::now(), Duration::from_secs(1)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(example.hello_status(&token).await, StatusCode::UNAUTHORIZED);
    eprintln!("disable reached the example in {delay:?}");

    // ...enabled: the cached refusal goes with the change, well before its 2 s.
    let res = app
        .post(
            &format!("{path}/enable"),
            &app.admin_token,
            serde_json::json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let enabled = Instant::now();
    loop {
        if example.hello_status(&token).await == StatusCode::OK {
            break;
        }
        assert!(
            enabled.elapsed() < Duration::from_secs(1),
            "still refused 1 s after the enable returned"
        );
    }
    eprintln!("enable reached the example in {:?}", enabled.elapsed());
}

#[tokio::test]
async fn with_the_stream_down_every_request_asks_the_server() {
    // Arrange: the watch token is revoked before the example starts, so its stream never
    // comes up.
    let app = spawn_app().await;
    let (watch, view) = app
        .token_with(&app.admin_token, "watch", &["tokens:watch"])
        .await;
    let res = app
        .delete(&format!("/v1/tokens/{}", token_id(&view)), &app.admin_token)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let example = Protected::start(&app.address, &watch, &[REQUIRED]);
    let (token, view) = app
        .token_with(&app.admin_token, "reader", &[REQUIRED])
        .await;

    // Act
    let before = server_verifications(&app).await;
    for _ in 0..10 {
        assert_eq!(example.hello_status(&token).await, StatusCode::OK);
    }
    let asked = server_verifications(&app).await - before;
    let res = app
        .delete(&format!("/v1/tokens/{}", token_id(&view)), &app.admin_token)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let next = example.hello_status(&token).await;

    // Assert: every request went to the server, and the revocation holds on the next one.
    assert!(asked >= 10.0, "the server answered {asked} of 10 requests");
    assert_eq!(next, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn tokens_of_an_org_the_watch_token_does_not_see_are_never_cached() {
    // Arrange: the watch token is the default org's; the caller is another org's.
    let app = spawn_app().await;
    let example = Protected::start(&app.address, &watch_token(&app).await, &[REQUIRED]);
    let (home, _) = app
        .token_with(&app.admin_token, "home reader", &[REQUIRED])
        .await;
    wait_until_cached(&app, &example, &home).await;
    let (_, org_admin) = app.second_org("elsewhere").await;
    let (token, _) = app.token_with(&org_admin, "away reader", &[REQUIRED]).await;

    // Act
    let before = server_verifications(&app).await;
    for _ in 0..10 {
        assert_eq!(example.hello_status(&token).await, StatusCode::OK);
    }
    let asked = server_verifications(&app).await - before;

    // Assert
    assert!(asked >= 10.0, "the server answered {asked} of 10 requests");
}

#[tokio::test]
async fn with_latchkey_gone_the_example_answers_503_and_never_200() {
    // Arrange: a token answered from the cache, then the server killed.
    let app = spawn_app().await;
    let example = Protected::start(&app.address, &watch_token(&app).await, &[REQUIRED]);
    let (token, _) = app
        .token_with(&app.admin_token, "reader", &[REQUIRED])
        .await;
    let (other, _) = app
        .token_with(&app.admin_token, "never seen", &[REQUIRED])
        .await;
    wait_until_cached(&app, &example, &token).await;

    // Act
    drop(app);
    let gone = Instant::now();
    let (delay, status) = first_refusal(&example, &token, gone, Duration::from_secs(1)).await;
    let mut later = Vec::new();
    for _ in 0..20 {
        later.push(example.hello_status(&token).await);
        later.push(example.hello_status(&other).await);
    }

    // Assert
    eprintln!("the example stopped answering from its cache {delay:?} after the server died");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        later.iter().all(|s| *s == StatusCode::SERVICE_UNAVAILABLE),
        "{later:?}"
    );
}

#[tokio::test]
async fn every_use_is_counted_once_whether_the_cache_or_the_server_answered() {
    // Arrange
    let app = spawn_app().await;
    let example = Protected::start(&app.address, &watch_token(&app).await, &[REQUIRED]);
    let (token, view) = app
        .token_with(&app.admin_token, "counted", &[REQUIRED])
        .await;
    let path = format!("/v1/tokens/{}", token_id(&view));

    // Act: some answered by the server (until the stream is up), most from the cache.
    let mut calls = wait_until_cached(&app, &example, &token).await;
    for _ in 0..50 {
        assert_eq!(example.hello_status(&token).await, StatusCode::OK);
        calls += 1;
    }

    // Assert: the server's count reaches the number of calls (reports arrive every second,
    // the server's own counts with its flush), and goes no further.
    let request_count = || async {
        let v: Value = app.get(&path, &app.admin_token).await.json().await.unwrap();
        (
            v["request_count"].as_u64().unwrap(),
            v["last_used_at"].clone(),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (count, last_used_at) = request_count().await;
        if count >= calls {
            assert!(last_used_at.is_string());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "request_count {count} after {calls} calls"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(request_count().await.0, calls, "counted twice");
}

#[test]
fn the_axum_example_of_clients_md_is_the_example_the_tests_run() {
    // Arrange
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let page = std::fs::read_to_string(root.join("docs/clients.md")).unwrap();
    let example =
        std::fs::read_to_string(root.join("crates/latchkey-client/examples/protected.rs")).unwrap();

    // Act: the page's first rust block in the crate's section; the example without its header.
    let section = &page[page
        .find("## The Rust crate: latchkey-client")
        .expect("the crate's section")..];
    let start = section.find("```rust\n").expect("a rust block") + "```rust\n".len();
    let block = &section[start..start + section[start..].find("```").expect("its end")];
    let code = example
        .lines()
        .skip_while(|l| l.starts_with("//!"))
        .skip_while(|l| l.is_empty())
        .collect::<Vec<_>>()
        .join("\n");

    // Assert
    assert_eq!(block.trim_end(), code.trim_end());
}
