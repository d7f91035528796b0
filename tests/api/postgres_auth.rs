//! Connecting to PostgreSQL: a node logs in with SCRAM-SHA-256 (PostgreSQL's default since 14);
//! a wrong password, or no database where the URL points, stops it at start with the reason on
//! one line, never the password. The test clusters
//! store their own role's password as MD5 to keep the suite's thousands of logins cheap
//! (.ci/postgres.sh); these tests use a role of their own whose password is stored as SCRAM.

use sqlx::Connection;

use crate::helpers::{TestDatabase, postgres_admin_url, serve_until_it_exits, spawn_node};

/// `url` with `password` instead of its own.
fn with_password(url: &str, password: &str) -> String {
    let mut url = reqwest::Url::parse(url).unwrap();
    url.set_password(Some(password)).unwrap();
    url.to_string()
}

/// Whether the cluster checks passwords over TCP at all: a developer's may trust loopback, where
/// these tests prove nothing. CI's always does, and there they must not skip.
async fn cluster_checks_passwords(db: &TestDatabase) -> bool {
    let wrong = with_password(&db.url, "not-the-password");
    let checked = sqlx::PgConnection::connect(&wrong).await.is_err();
    if !checked {
        assert!(
            std::env::var_os("CI").is_none(),
            "the test cluster let a wrong password in: CI's cluster must check passwords"
        );
        eprintln!("skipped: this PostgreSQL trusts loopback logins, so no password is checked");
    }
    checked
}

#[tokio::test]
async fn a_node_logs_in_with_a_password_stored_as_scram_and_serves() {
    // Arrange
    let admin_url = postgres_admin_url("a_node_logs_in_with_a_password_stored_as_scram");
    let (db, role, _) = TestDatabase::create_with_scram_owner(&admin_url).await;
    if !cluster_checks_passwords(&db).await {
        return;
    }

    // Act
    let node = spawn_node(&db.url, &[]).await;
    let (token, _) = node.token_with(&node.admin_token, "over scram", &[]).await;

    // Assert
    assert_eq!(node.verify(&token, &[]).await["valid"], true);
    let mut watcher = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    let logged_in: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&role)
    .fetch_one(&mut watcher)
    .await
    .unwrap();
    assert!(logged_in >= 1, "the node is logged in as {role}");
}

#[tokio::test]
async fn a_wrong_postgresql_password_stops_the_node_at_start_with_the_cause_and_not_the_password() {
    // Arrange
    let admin_url = postgres_admin_url("a_wrong_postgresql_password_stops_the_node_at_start");
    let (db, role, password) = TestDatabase::create_with_scram_owner(&admin_url).await;
    if !cluster_checks_passwords(&db).await {
        return;
    }
    let wrong_password = format!("wrong-{password}");
    let url = with_password(&db.url, &wrong_password);

    // Act
    let out = serve_until_it_exits(&url, &[]).await;

    // Assert
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let at = reqwest::Url::parse(&db.url).unwrap();
    let (host, port, database) = (at.host_str().unwrap(), at.port().unwrap_or(5432), at.path());
    assert_eq!(
        stderr.trim_end(),
        format!(
            "error: connecting to PostgreSQL {host}:{port}{database}: password authentication \
             failed for user \"{role}\" (SQLSTATE 28P01)"
        ),
        "one line: where, PostgreSQL's message and its code, once"
    );
    assert!(!stderr.contains(&wrong_password), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn a_node_pointed_where_nothing_listens_gives_up_after_the_acquire_timeout_saying_why() {
    // Arrange: a port nothing listens on any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://latchkey:secret-{port}@127.0.0.1:{port}/latchkey");

    // Act
    let started = std::time::Instant::now();
    let out = serve_until_it_exits(&url, &["--db-acquire-timeout-seconds", "1"]).await;

    // Assert
    assert!(!out.status.success());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "gave up in time"
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr.trim_end(),
        format!(
            "error: connecting to PostgreSQL 127.0.0.1:{port}/latchkey (gave up after 1 s): \
             error communicating with database: Connection refused (os error 111)"
        )
    );
}
