//! The database goes away and comes back: cached tokens keep verifying, whatever needs the
//! database answers 503 `unavailable` with `Retry-After` (never a hang, never a 500), `/readyz`
//! turns 503, and everything recovers without a restart, usage counts included.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use crate::helpers::{TestApp, TestDatabase, error_of, postgres_admin_url, spawn_node};

/// A TCP forwarder between the server and PostgreSQL that the test can cut and restore: a
/// database outage without stopping a PostgreSQL that other tests share.
struct Cable {
    addr: std::net::SocketAddr,
    up: Arc<AtomicBool>,
    links: Arc<Mutex<JoinSet<()>>>,
}

impl Cable {
    async fn to(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let links = Arc::new(Mutex::new(JoinSet::new()));
        let (up2, links2) = (up.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused as it opens
                }
                let target = target.clone();
                links2.lock().await.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Cable { addr, up, links }
    }

    /// Every open connection is cut and new ones are closed at once.
    async fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        let mut links = self.links.lock().await;
        links.abort_all();
        // Until every link has dropped its sockets: PostgreSQL sees them close now.
        while links.join_next().await.is_some() {}
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// `url` with its host and port replaced by `addr`.
fn through(url: &str, addr: std::net::SocketAddr) -> (String, String) {
    let at = url.rfind('@').expect("user@host in the URL") + 1;
    let rest = &url[at..];
    let slash = rest.find('/').expect("a database in the URL");
    (
        format!("{}{addr}{}", &url[..at], &rest[slash..]),
        rest[..slash].to_string(),
    )
}

async fn status_within(app: &TestApp, path: &str, want: StatusCode) -> StatusCode {
    let mut got = StatusCode::OK;
    for _ in 0..300 {
        got = app
            .client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap()
            .status();
        if got == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    got
}

#[tokio::test]
async fn with_postgresql_gone_cached_tokens_verify_the_rest_is_503_and_all_recovers_without_a_restart()
 {
    // Arrange: one node whose connections to PostgreSQL go through the cable.
    let db = TestDatabase::create(&postgres_admin_url("outage on PostgreSQL")).await;
    let (_, target) = through(&db.url, "127.0.0.1:1".parse().unwrap());
    let cable = Cable::to(target).await;
    let (url, _) = through(&db.url, cable.addr);
    let app = spawn_node(
        &url,
        &[
            "--db-acquire-timeout-seconds",
            "2",
            "--cache-ttl-seconds",
            "60",
            "--usage-flush-ms",
            "100",
        ],
    )
    .await;
    let admin = app.admin_token.clone();
    let (cached, view) = app.token_with(&admin, "cached", &[]).await;
    let cached_id = view["id"].as_str().unwrap().to_string();
    let (uncached, _) = app.token_with(&admin, "uncached", &[]).await;
    assert_eq!(app.verify(&cached, &[]).await["code"], "VALID");

    // Act: PostgreSQL goes away.
    cable.cut().await;
    let during_verify = app.verify(&cached, &[]).await;
    let started = Instant::now();
    let mint = app
        .post("/v1/tokens", &admin, json!({"name": "during"}))
        .await;
    let mint_took = started.elapsed();
    let mint_retry = mint.headers().get("retry-after").cloned();
    let mint_body = error_of(mint, StatusCode::SERVICE_UNAVAILABLE).await;
    let uncached_verify = app
        .request(
            reqwest::Method::POST,
            "/v1/tokens/verify",
            None,
            Some(json!({ "token": uncached })),
        )
        .await;
    let uncached_status = uncached_verify.status();
    let readyz_down = status_within(&app, "/readyz", StatusCode::SERVICE_UNAVAILABLE).await;
    cable.restore();
    let readyz_up = status_within(&app, "/readyz", StatusCode::OK).await;
    let after = app
        .post("/v1/tokens", &admin, json!({"name": "after"}))
        .await;
    let after_status = after.status();
    let uncached_after = app.verify(&uncached, &[]).await;
    let mut counted = Value::Null;
    for _ in 0..200 {
        counted = app
            .get(&format!("/v1/tokens/{cached_id}"), &admin)
            .await
            .json()
            .await
            .unwrap();
        if counted["request_count"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Assert
    assert_eq!(
        during_verify["code"], "VALID",
        "a cached token needs no database"
    );
    assert_eq!(mint_body["error"]["code"], "unavailable");
    assert!(mint_retry.is_some(), "Retry-After on a 503");
    assert!(
        mint_took < Duration::from_secs(30),
        "answered within the request timeout: {mint_took:?}"
    );
    assert_eq!(uncached_status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(readyz_down, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(readyz_up, StatusCode::OK);
    assert_eq!(
        after_status,
        StatusCode::CREATED,
        "recovered without a restart"
    );
    assert_eq!(uncached_after["code"], "VALID");
    assert_eq!(
        counted["request_count"], 2,
        "the verification during the outage was counted once the database came back"
    );
    assert!(!app.logs().contains("panicked"), "{}", app.logs());
    // The server first, then the forwarded connections, so the database drops at once.
    drop(app);
    cable.cut().await;
    drop(db);
}

#[tokio::test]
async fn with_the_sqlite_file_locked_writes_answer_503_reads_go_on_and_all_recovers() {
    // Arrange: a SQLite server, and another process's exclusive lock on its file.
    let app = crate::helpers::spawn_sqlite_app().await;
    let admin = app.admin_token.clone();
    let (cached, _) = app.token_with(&admin, "cached", &[]).await;
    assert_eq!(app.verify(&cached, &[]).await["code"], "VALID");
    let path = app.database_url.trim_start_matches("sqlite://").to_string();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
        locked_tx.send(()).unwrap();
        release_rx.recv().unwrap();
        conn.execute_batch("ROLLBACK").unwrap();
    });
    locked_rx.recv().unwrap();

    // Act
    let during_verify = app.verify(&cached, &[]).await;
    let mint = app
        .post("/v1/tokens", &admin, json!({"name": "during"}))
        .await;
    let mint_retry = mint.headers().get("retry-after").cloned();
    let mint_body = error_of(mint, StatusCode::SERVICE_UNAVAILABLE).await;
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    let after = app
        .post("/v1/tokens", &admin, json!({"name": "after"}))
        .await;

    // Assert
    assert_eq!(during_verify["code"], "VALID");
    assert_eq!(mint_body["error"]["code"], "unavailable");
    assert!(mint_retry.is_some());
    assert_eq!(after.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn an_internal_error_answers_the_opaque_json_body_and_logs_its_cause() {
    // Arrange: a token whose row is corrupt (a kind no build knows).
    let app = crate::helpers::spawn_sqlite_app().await;
    let (_, view) = app.token_with(&app.admin_token, "corrupt", &[]).await;
    let id = view["id"].as_str().unwrap().to_string();
    let path = app.database_url.trim_start_matches("sqlite://").to_string();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("UPDATE tokens SET kind = 99 WHERE id = ?1", [&id])
        .unwrap();

    // Act
    let res = app.get(&format!("/v1/tokens/{id}"), &app.admin_token).await;

    // Assert
    let body = error_of(res, StatusCode::INTERNAL_SERVER_ERROR).await;
    assert_eq!(
        body,
        json!({"error": {"code": "internal", "message": "internal error"}})
    );
    let mut logged = false;
    for _ in 0..100 {
        if app.logs().contains("internal error") {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(logged, "the cause is logged: {}", app.logs());
}
