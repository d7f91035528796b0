use reqwest::Method;
use serde_json::json;

use crate::helpers::{forge, spawn_app_with_env};

#[tokio::test]
async fn no_plaintext_token_or_verifier_reaches_the_logs_audit_or_metrics() {
    // Arrange
    let app = spawn_app_with_env(&[], &[("LATCHKEY_LOG", "debug")]).await;
    let mut issued = Vec::new();

    // Act: create, use, fail, revoke, and present garbage, valid and invalid tokens.
    for i in 0..3 {
        let (t, _) = app
            .token_with(&app.admin_token, &format!("log {i}"), &["tokens:read"])
            .await;
        app.verify(&t, &["tokens:read"]).await;
        app.verify(&t, &["tokens:create"]).await;
        app.get("/v1/tokens", &t).await;
        issued.push(t);
    }
    let forged = forge(&issued[0], None, Some([5u8; 32]));
    app.verify(&forged, &[]).await;
    // Tokens pasted where they do not belong: a path, a query, a wrongly typed field, a scope.
    let mut error_bodies = String::new();
    for (path, body) in [
        (format!("/v1/tokens/{}", issued[0]), None),
        (format!("/v1/tokens?state={}", issued[0]), None),
        (format!("/v1/tokens?org_id={}", issued[0]), None),
        (format!("/v1/orgs/{}", issued[0]), None),
        (
            "/v1/tokens/verify".to_string(),
            Some(json!({"token": "x", "required_scopes": issued[0]})),
        ),
        (
            "/v1/tokens/verify".to_string(),
            Some(json!({"token": issued[0], "extra": issued[0]})),
        ),
        (
            "/v1/tokens".to_string(),
            Some(json!({"name": "n", "scopes": [issued[0]]})),
        ),
        (
            "/v1/tokens".to_string(),
            Some(json!({"name": "n", "type": issued[0]})),
        ),
        (
            "/v1/tokens".to_string(),
            Some(json!({"name": "n", "org_id": issued[0]})),
        ),
    ] {
        let method = if body.is_some() {
            Method::POST
        } else {
            Method::GET
        };
        let res = app
            .request(method, &path, Some(&app.admin_token), body)
            .await;
        assert!(res.status().is_client_error(), "{path}: {}", res.status());
        error_bodies.push_str(&res.text().await.unwrap());
    }
    app.get("/v1/tokens", &forged).await;
    app.request(
        Method::POST,
        "/v1/tokens",
        Some(&forged),
        Some(json!({"name": "x"})),
    )
    .await;
    app.delete("/v1/tokens/current", &issued[2]).await;
    app.verify(&issued[2], &[]).await;
    let metrics = app
        .request(Method::GET, "/metrics", None, None)
        .await
        .text()
        .await
        .unwrap();
    let store = app.store().await;
    let tokens = store
        .list_tokens(&latchkey::store::TokenListQuery {
            org_id: app.org_id,
            visible_to: None,
            owner: None,
            name_contains: None,
            state: None,
            format: None,
            before_id: None,
            limit: 1000,
            now: chrono::Utc::now(),
        })
        .await
        .unwrap();
    let verifiers: Vec<String> = tokens.into_iter().map(|t| t.verifier).collect();
    assert!(verifiers.len() >= 4);
    let audit: String = store
        .list_audit(&latchkey::store::AuditListQuery {
            org_id: app.org_id,
            token_id: None,
            action: None,
            actor: None,
            since: None,
            until: None,
            before_id: None,
            limit: 1000,
        })
        .await
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {} {} {:?} {:?}",
                e.actor, e.action, e.details, e.user_agent, e.ip
            )
        })
        .collect();

    // Assert: the bootstrap token's one-time line is the only place a token appears.
    let logs = app.logs();
    let logs_without_bootstrap: String = logs
        .lines()
        .filter(|l| l.trim() != app.admin_token)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        logs.contains("latchkey::audit") && logs.contains("\"route\":\"/v1/tokens/{id}\""),
        "the audit lines are there to be searched"
    );
    let secret_part = |t: &str| t[t.len() - 49..t.len() - 6].to_string();
    for t in issued.iter().chain([&forged, &app.admin_token]) {
        for haystack in [&logs_without_bootstrap, &metrics, &audit, &error_bodies] {
            assert!(!haystack.contains(t.as_str()));
            assert!(!haystack.contains(&secret_part(t)));
        }
    }
    for v in &verifiers {
        let digest = v.trim_start_matches("sha256:");
        for haystack in [&logs, &metrics, &audit] {
            assert!(!haystack.contains(digest));
        }
    }
}

#[tokio::test]
async fn the_database_file_holds_no_plaintext_token_password_session_id_or_setup_token() {
    // Arrange: a SQLite server, a person with a password, a session and a token of theirs.
    let app = crate::helpers::spawn_sqlite_app().await;
    let password = "a long and unusual passphrase 4711";
    let created: serde_json::Value = app
        .post(
            "/v1/users",
            &app.admin_token,
            json!({"email": "vera@example.com", "name": "Vera", "role": "member"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let setup = created["setup_token"].as_str().unwrap().to_string();
    let res = app
        .request(
            Method::POST,
            "/v1/auth/setup",
            None,
            Some(json!({"setup_token": setup, "password": password})),
        )
        .await;
    assert!(res.status().is_success());
    let signed_in = app
        .request(
            Method::POST,
            "/v1/auth/session",
            None,
            Some(json!({"email": "vera@example.com", "password": password})),
        )
        .await;
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    let session_id = cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_string();
    let exchanged: serde_json::Value = app
        .request(
            Method::POST,
            "/v1/auth/token",
            None,
            Some(json!({"email": "vera@example.com", "password": password, "name": "vera cli"})),
        )
        .await
        .json()
        .await
        .unwrap();
    let token = exchanged["plaintext"]
        .as_str()
        .unwrap_or_else(|| panic!("{exchanged}"))
        .to_string();
    let (machine, _) = app.token_with(&app.admin_token, "machine", &[]).await;
    let mut app = app;
    assert!(app.stop_gracefully(), "a clean stop checkpoints the WAL");

    // Act: every byte of the database and its WAL.
    let path = app.database_url.trim_start_matches("sqlite://").to_string();
    let mut bytes = std::fs::read(&path).unwrap();
    for extra in ["-wal", "-shm"] {
        if let Ok(more) = std::fs::read(format!("{path}{extra}")) {
            bytes.extend(more);
        }
    }
    let contains = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());

    // Assert
    assert!(contains("vera@example.com"), "the scan reads the data");
    for (what, secret) in [
        ("the password", password),
        ("the setup token", setup.as_str()),
        ("the session id", session_id.as_str()),
        ("a person's token", token.as_str()),
        ("a machine's token", machine.as_str()),
        ("the bootstrap token", app.admin_token.as_str()),
    ] {
        assert!(!secret.is_empty(), "{what} was read");
        assert!(!contains(secret), "{what} is in the database file");
    }
    // Nor the secret part alone (the id part of a token is not secret).
    let secret_part = token.rsplit('_').next().unwrap();
    assert!(secret_part.len() >= 20);
    assert!(
        !contains(secret_part),
        "a token's secret is in the database file"
    );
}

#[tokio::test]
async fn every_answer_that_carries_a_plaintext_or_setup_token_is_marked_no_store() {
    // Arrange
    let app = crate::helpers::spawn_app().await;
    let (_, view) = app.token_with(&app.admin_token, "rotating", &[]).await;
    let id = view["id"].as_str().unwrap();

    // Act
    let created = app
        .post("/v1/tokens", &app.admin_token, json!({"name": "fresh"}))
        .await;
    let rotated = app
        .post(
            &format!("/v1/tokens/{id}/rotate"),
            &app.admin_token,
            json!({}),
        )
        .await;
    let invited = app
        .post(
            "/v1/users",
            &app.admin_token,
            json!({"email": "nina@example.com", "name": "Nina", "role": "member"}),
        )
        .await;
    let listed = app.get("/v1/tokens", &app.admin_token).await;

    // Assert
    for (what, res) in [
        ("create", &created),
        ("rotate", &rotated),
        ("invite", &invited),
    ] {
        assert_eq!(res.status(), reqwest::StatusCode::CREATED, "{what}");
        assert_eq!(res.headers()["cache-control"], "no-store", "{what}");
    }
    assert!(
        listed.headers().get("cache-control").is_none(),
        "only the answers with a secret need it"
    );
}
