//! TLS to PostgreSQL: the URL's `sslmode` and `sslrootcert` decide, much as with libpq. These
//! tests run on a cluster of their own that serves TLS with a certificate for 127.0.0.1 signed by
//! a test authority (helpers::postgres_tls_cluster); servers that offer no TLS, or close at once,
//! are played by a few lines of Tokio.

use sqlx::Connection;
use std::path::Path;

use crate::helpers::{
    TestDatabase, TlsCluster, postgres_tls_cluster, serve_until_it_exits, spawn_node,
    spawn_node_with_env,
};

/// `url` with `params` as its query string.
fn with_params(url: &str, params: &[(&str, &str)]) -> String {
    let mut url = reqwest::Url::parse(url).unwrap();
    url.query_pairs_mut().clear().extend_pairs(params);
    url.to_string()
}

/// A starting node gives up on the database after this (the default, 5 s, would only slow the
/// tests).
const GIVE_UP_SOON: [&str; 2] = ["--db-acquire-timeout-seconds", "2"];

/// Asserts that the node on `database` has sessions there, its notification listener's among
/// them (it connects in the background: waited for, up to 30 s), and that every one uses TLS.
async fn assert_every_session_uses_tls(admin_url: &str, database: &str) {
    let mut admin = sqlx::PgConnection::connect(admin_url).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (encrypted, all, listeners): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*), \
             count(*) FILTER (WHERE a.application_name = 'latchkey-listener') \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = $1 AND a.pid <> pg_backend_pid()",
        )
        .bind(database)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        assert_eq!(encrypted, all, "every session of the node uses TLS");
        if listeners == 1 && all >= 2 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node's pool and listener sessions: {all} sessions, {listeners} listener"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The [`TlsCluster`] and a fresh database on it; `None` where no such cluster can be had (the
/// test then returns: see [`postgres_tls_cluster`]).
async fn database_on_the_tls_cluster(test: &str) -> Option<(&'static TlsCluster, TestDatabase)> {
    let cluster = postgres_tls_cluster(test)?;
    Some((cluster, TestDatabase::create(&cluster.admin_url).await))
}

/// `url` told to verify the server's certificate and name, trusting `ca` too.
fn verify_full(url: &str, ca: &Path) -> String {
    with_params(
        url,
        &[("sslmode", "verify-full"), ("sslrootcert", path(ca))],
    )
}

/// The database of `url` (its path).
fn database_name(url: &str) -> String {
    reqwest::Url::parse(url).unwrap().path()[1..].to_string()
}

/// `p` as a URL parameter or environment value.
fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A TCP server on loopback that reads a client's first message (the 8-byte question "do you
/// speak TLS?") and then writes `answer`, if any, and closes. Returns its port.
async fn fake_server(answer: Option<u8>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut peer, _)) = listener.accept().await {
            let mut question = [0u8; 8];
            if peer.read_exact(&mut question).await.is_ok()
                && let Some(answer) = answer
            {
                let _ = peer.write_all(&[answer]).await;
            }
        }
    });
    port
}

#[tokio::test]
async fn a_node_told_to_verify_the_certificate_reaches_postgresql_over_tls_and_serves() {
    // Arrange
    let Some((cluster, db)) =
        database_on_the_tls_cluster("a_node_told_to_verify_the_certificate").await
    else {
        return;
    };
    let url = verify_full(&db.url, &cluster.ca);

    // Act
    let node = spawn_node(&url, &[]).await;
    let (token, _) = node.token_with(&node.admin_token, "over tls", &[]).await;

    // Assert
    assert_eq!(node.verify(&token, &[]).await["valid"], true);
    assert_every_session_uses_tls(&cluster.admin_url, &database_name(&db.url)).await;
}

#[tokio::test]
async fn sslrootcert_adds_its_authority_to_those_of_the_system() {
    // Arrange: SSL_CERT_FILE replaces the system's authorities (here: one that signed nothing).
    let Some((cluster, db)) = database_on_the_tls_cluster("sslrootcert_adds_its_authority").await
    else {
        return;
    };
    let url = verify_full(&db.url, &cluster.ca);

    // Act
    let node = spawn_node_with_env(&url, &[], &[("SSL_CERT_FILE", path(&cluster.other_ca))]).await;

    // Assert
    assert_eq!(node.verify(&node.admin_token, &[]).await["valid"], true);
}

#[tokio::test]
async fn without_sslrootcert_a_node_trusts_the_authorities_in_ssl_cert_file() {
    // Arrange: SSL_CERT_FILE replaces the system's authorities (as it does for OpenSSL).
    let Some((cluster, db)) =
        database_on_the_tls_cluster("without_sslrootcert_a_node_trusts_ssl_cert_file").await
    else {
        return;
    };
    let url = with_params(&db.url, &[("sslmode", "verify-full")]);

    // Act
    let node = spawn_node_with_env(&url, &[], &[("SSL_CERT_FILE", path(&cluster.ca))]).await;

    // Assert
    assert_eq!(node.verify(&node.admin_token, &[]).await["valid"], true);
    assert_every_session_uses_tls(&cluster.admin_url, &database_name(&db.url)).await;
}

#[tokio::test]
async fn a_node_with_no_sslmode_uses_tls_where_the_server_offers_it() {
    // Arrange: the URL says nothing of TLS (libpq's default, `prefer`).
    let Some((cluster, db)) = database_on_the_tls_cluster("a_node_with_no_sslmode_uses_tls").await
    else {
        return;
    };

    // Act
    let node = spawn_node(&db.url, &[]).await;

    // Assert
    assert_eq!(node.verify(&node.admin_token, &[]).await["valid"], true);
    assert_every_session_uses_tls(&cluster.admin_url, &database_name(&db.url)).await;
}

#[tokio::test]
async fn a_certificate_from_an_authority_the_node_does_not_trust_stops_it_at_start_saying_so() {
    // Arrange
    let Some((cluster, db)) =
        database_on_the_tls_cluster("a_certificate_from_an_untrusted_authority").await
    else {
        return;
    };
    let password = reqwest::Url::parse(&db.url)
        .unwrap()
        .password()
        .unwrap()
        .to_string();
    let url = verify_full(&db.url, &cluster.other_ca);

    // Act
    let out = serve_until_it_exits(&url, &GIVE_UP_SOON).await;

    // Assert
    assert_eq!(out.status.code(), Some(1), "it stopped by itself");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let database = database_name(&db.url);
    let port = reqwest::Url::parse(&db.url).unwrap().port().unwrap();
    assert!(
        stderr.trim_end().starts_with(&format!(
            "error: connecting to PostgreSQL 127.0.0.1:{port}/{database}"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("invalid peer certificate: UnknownIssuer"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(!stderr.contains(&password), "{stderr}");
}

#[tokio::test]
async fn a_certificate_for_another_host_name_stops_verify_full_but_not_verify_ca() {
    // Arrange: the certificate names 127.0.0.1 and localhost; the cluster also listens on
    // 127.0.0.2, which it does not name.
    let Some((cluster, db)) =
        database_on_the_tls_cluster("a_certificate_for_another_host_name").await
    else {
        return;
    };
    let mut elsewhere = reqwest::Url::parse(&db.url).unwrap();
    elsewhere.set_host(Some("127.0.0.2")).unwrap();
    let name_checked = verify_full(elsewhere.as_str(), &cluster.ca);
    let verify_ca = with_params(
        elsewhere.as_str(),
        &[("sslmode", "verify-ca"), ("sslrootcert", path(&cluster.ca))],
    );

    // Act
    let out = serve_until_it_exits(&name_checked, &GIVE_UP_SOON).await;
    let node = spawn_node(&verify_ca, &[]).await;

    // Assert: the name is wrong; the authority is right, which is all verify-ca checks.
    assert_eq!(out.status.code(), Some(1), "it stopped by itself");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("invalid peer certificate: certificate not valid for name"),
        "{stderr}"
    );
    assert_eq!(node.verify(&node.admin_token, &[]).await["valid"], true);
}

#[tokio::test]
async fn a_node_that_requires_tls_is_stopped_by_a_server_that_does_not_offer_it() {
    // Arrange: a server that answers "no TLS", as a PostgreSQL with `ssl = off` does.
    let port = fake_server(Some(b'N')).await;
    let url =
        format!("postgres://latchkey:secret-{port}@127.0.0.1:{port}/latchkey?sslmode=require");

    // Act
    let out = serve_until_it_exits(&url, &GIVE_UP_SOON).await;

    // Assert
    assert_eq!(out.status.code(), Some(1), "it stopped by itself");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr.trim_end(),
        format!(
            "error: connecting to PostgreSQL 127.0.0.1:{port}/latchkey: error occurred while \
             attempting to establish a TLS connection: server does not support TLS"
        )
    );
}

#[tokio::test]
async fn a_peer_that_closes_before_answering_stops_a_starting_node_saying_so() {
    // Arrange: a proxy with no database behind it accepts, then closes.
    let port = fake_server(None).await;
    let url = format!("postgres://latchkey:secret-{port}@127.0.0.1:{port}/latchkey");

    // Act
    let out = serve_until_it_exits(&url, &GIVE_UP_SOON).await;

    // Assert
    assert_eq!(out.status.code(), Some(1), "it stopped by itself");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with(&format!(
            "error: connecting to PostgreSQL 127.0.0.1:{port}/latchkey"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("the server closed the connection before answering"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(!stderr.contains(&format!("secret-{port}")), "{stderr}");
}
