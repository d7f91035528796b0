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
