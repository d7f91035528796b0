//! The break-glass secret (`LATCHKEY_BREAK_GLASS_SHA256`): an operator's bearer, configured only
//! as its SHA-256, that acts as platform:admin on management calls, is audited and logged on
//! every use, and is no token anywhere else.

use std::process::Command;

use latchkey::grpc::pb;
use latchkey::grpc::pb::auth_service_client::AuthServiceClient;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tonic::Request;
use uuid::Uuid;

use crate::helpers::{BIN, TestApp, error_of, spawn_app, spawn_app_with_env};

const ENV: &str = "LATCHKEY_BREAK_GLASS_SHA256";
/// The operator's secret in these tests: not token-shaped, as an operator would generate it.
const SECRET: &str = "glass-7Q2mVx9LkT4pW8sZrN3cYb6HdF1jGe5A";

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A server whose break-glass option holds the SHA-256 of `secret`.
async fn app_with_secret(secret: &str) -> TestApp {
    spawn_app_with_env(&[], &[(ENV, &sha256_hex(secret))]).await
}

/// The deployment's `break_glass_used` events (org id nil), read by the bootstrap admin.
async fn break_glass_events(app: &TestApp) -> Vec<Value> {
    let res = app
        .get(
            &format!(
                "/v1/audit?org_id={}&action=break_glass_used&page_size=500",
                Uuid::nil()
            ),
            &app.admin_token,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    body["events"].as_array().unwrap().clone()
}

#[tokio::test]
async fn with_the_option_set_the_secret_lists_any_orgs_tokens_and_creates_an_org() {
    // Arrange
    let app = app_with_secret(SECRET).await;
    let (org_b, admin_b) = app.second_org("acme").await;
    let (_, in_b) = app.token_with(&admin_b, "in b", &["tokens:read"]).await;

    // Act
    let list_b = app.get(&format!("/v1/tokens?org_id={org_b}"), SECRET).await;
    let list_a = app
        .get(&format!("/v1/tokens?org_id={}", app.org_id), SECRET)
        .await;
    let org = app
        .post("/v1/orgs", SECRET, json!({"name": "rescued"}))
        .await;
    let no_org = app.get("/v1/tokens", SECRET).await;

    // Assert
    assert_eq!(list_b.status(), StatusCode::OK);
    let list_b: Value = list_b.json().await.unwrap();
    assert!(
        list_b["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == in_b["id"]),
        "{list_b}"
    );
    assert_eq!(list_a.status(), StatusCode::OK);
    assert_eq!(org.status(), StatusCode::CREATED);
    let org: Value = org.json().await.unwrap();
    let created = app
        .get(
            &format!(
                "/v1/audit?org_id={}&action=org_created",
                org["id"].as_str().unwrap()
            ),
            &app.admin_token,
        )
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(created["events"][0]["actor"], "break_glass");
    let body = error_of(no_org, StatusCode::BAD_REQUEST).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("org_id"),
        "{body}"
    );
}

#[tokio::test]
async fn every_use_of_the_secret_writes_a_break_glass_used_audit_event_and_a_warning() {
    // Arrange
    let app = app_with_secret(SECRET).await;
    let before = break_glass_events(&app).await;

    // Act: three uses, one of them a mint into the bootstrap org.
    let tokens = app
        .get(&format!("/v1/tokens?org_id={}", app.org_id), SECRET)
        .await;
    let audit = app
        .get(&format!("/v1/audit?org_id={}", app.org_id), SECRET)
        .await;
    let (_, minted) = app
        .create_token(
            SECRET,
            json!({"org_id": app.org_id, "name": "minted in an emergency"}),
        )
        .await;
    let after = break_glass_events(&app).await;

    // Assert
    assert_eq!(tokens.status(), StatusCode::OK);
    assert_eq!(audit.status(), StatusCode::OK);
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(after.len(), 3, "{after:?}");
    for e in &after {
        assert_eq!(e["actor"], "break_glass");
        assert_eq!(e["action"], "break_glass_used");
        assert_eq!(e["org_id"], Uuid::nil().to_string());
        assert_eq!(e["ip"], "127.0.0.1");
    }
    assert_eq!(minted["created_by"], "break_glass");
    // The log lines reach the file the test reads a moment after the answers: wait for them,
    // within a bound.
    let count_warnings = |logs: &str| {
        logs.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| {
                v["level"] == "WARN"
                    && v["fields"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("break-glass"))
            })
            .count()
    };
    let mut logs = app.logs();
    for _ in 0..100 {
        if count_warnings(&logs) >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        logs = app.logs();
    }
    assert_eq!(count_warnings(&logs), 3, "{logs}");
}

#[tokio::test]
async fn over_grpc_the_secret_lists_another_orgs_tokens() {
    // Arrange
    let app = app_with_secret(SECRET).await;
    let (org_b, admin_b) = app.second_org("acme").await;
    let (_, in_b) = app.token_with(&admin_b, "in b", &[]).await;
    let mut c = AuthServiceClient::connect(app.address.clone())
        .await
        .unwrap();
    let mut req = Request::new(pb::ListTokensRequest {
        org_id: org_b.to_string(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {SECRET}").parse().unwrap());

    // Act
    let listed = c.list_tokens(req).await.unwrap().into_inner();

    // Assert
    assert!(listed.tokens.iter().any(|t| t.id == in_b["id"]));
    assert_eq!(break_glass_events(&app).await.len(), 1);
}

#[tokio::test]
async fn a_wrong_secret_is_unauthenticated_and_not_audited() {
    // Arrange
    let app = app_with_secret(SECRET).await;

    // Act
    let mut refusals = Vec::new();
    for wrong in [
        &format!("{SECRET}x")[..],
        &SECRET[1..],
        &SECRET.to_uppercase(),
        &sha256_hex(SECRET),
    ] {
        refusals.push(
            app.get(&format!("/v1/tokens?org_id={}", app.org_id), wrong)
                .await,
        );
    }

    // Assert
    for res in refusals {
        assert_eq!(
            res.headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer")
        );
        let body = error_of(res, StatusCode::UNAUTHORIZED).await;
        assert_eq!(body["error"]["code"], "unauthenticated");
    }
    assert!(break_glass_events(&app).await.is_empty());
}

#[tokio::test]
async fn without_the_option_the_same_secret_is_unauthenticated() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let res = app
        .get(&format!("/v1/tokens?org_id={}", app.org_id), SECRET)
        .await;

    // Assert
    error_of(res, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn at_verification_and_the_gateway_check_the_secret_is_no_token() {
    // Arrange
    let app = app_with_secret(SECRET).await;
    let mut c = AuthServiceClient::connect(app.address.clone())
        .await
        .unwrap();

    // Act
    let verified = app.verify(SECRET, &[]).await;
    let checked = app
        .request(Method::GET, "/v1/auth/check", Some(SECRET), None)
        .await;
    let validated = c
        .validate_token(pb::ValidateTokenRequest {
            token: SECRET.into(),
            required_scopes: vec![],
        })
        .await
        .unwrap()
        .into_inner();

    // Assert
    assert_eq!(verified, json!({"valid": false, "code": "INVALID"}));
    assert_eq!(checked.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(validated.code, pb::ValidationCode::Invalid as i32);
    assert!(break_glass_events(&app).await.is_empty());
}

#[tokio::test]
async fn a_token_shaped_bearer_is_never_taken_for_the_secret_even_when_its_hash_is_configured() {
    // Arrange: an operator who configured the hash of a string in Latchkey's token format.
    let token = latchkey::token::format::format_token(
        &Default::default(),
        latchkey::token::TokenKind::Pat,
        Uuid::now_v7(),
        &[9u8; 32],
    );
    let app = app_with_secret(&token).await;

    // Act
    let res = app
        .get(&format!("/v1/tokens?org_id={}", app.org_id), &token)
        .await;

    // Assert
    error_of(res, StatusCode::UNAUTHORIZED).await;
    assert!(break_glass_events(&app).await.is_empty());
}

#[tokio::test]
async fn the_secret_and_its_hash_never_reach_the_logs_the_audit_log_or_an_answer() {
    // Arrange
    let app = spawn_app_with_env(
        &[],
        &[(ENV, &sha256_hex(SECRET)), ("LATCHKEY_LOG", "debug")],
    )
    .await;
    let hash = sha256_hex(SECRET);

    // Act: uses that succeed, fail and are refused, over REST and gRPC.
    let mut answers = String::new();
    for (method, path, body) in [
        (
            Method::GET,
            format!("/v1/tokens?org_id={}", app.org_id),
            None,
        ),
        (Method::GET, "/v1/tokens".to_string(), None),
        (
            Method::POST,
            "/v1/tokens".to_string(),
            Some(json!({"org_id": app.org_id, "name": "x", "permissions": 1u64 << 40})),
        ),
        (Method::GET, format!("/v1/tokens/{}", Uuid::now_v7()), None),
        (
            Method::POST,
            "/v1/tokens/verify".to_string(),
            Some(json!({"token": SECRET})),
        ),
        (Method::GET, "/v1/auth/check".to_string(), None),
    ] {
        let res = app.request(method, &path, Some(SECRET), body).await;
        answers.push_str(&format!("{:?}", res.headers()));
        answers.push_str(&res.text().await.unwrap());
    }
    let wrong = app.get("/v1/tokens", &format!("{SECRET}!")).await;
    answers.push_str(&wrong.text().await.unwrap());
    let mut c = AuthServiceClient::connect(app.address.clone())
        .await
        .unwrap();
    let mut req = Request::new(pb::ListTokensRequest::default());
    req.metadata_mut()
        .insert("authorization", format!("Bearer {SECRET}").parse().unwrap());
    let status = c.list_tokens(req).await.unwrap_err();
    answers.push_str(&format!("{status:?}"));
    let store = app.store().await;
    let events = store
        .list_audit(&latchkey::store::AuditListQuery {
            org_id: Uuid::nil(),
            token_id: None,
            action: None,
            actor: None,
            since: None,
            until: None,
            before_id: None,
            limit: 500,
        })
        .await
        .unwrap();
    let metrics = app
        .request(Method::GET, "/metrics", None, None)
        .await
        .text()
        .await
        .unwrap();

    // Assert
    assert!(!events.is_empty());
    let audit = format!("{events:?}");
    let logs = app.logs();
    for (place, text) in [
        ("logs", &logs),
        ("audit", &audit),
        ("answers", &answers),
        ("metrics", &metrics),
    ] {
        for needle in [SECRET, &hash, &hash.to_uppercase()] {
            assert!(!text.contains(needle), "{needle} in the {place}:\n{text}");
        }
    }
}

#[test]
fn a_break_glass_sha256_that_is_not_64_hex_digits_makes_serve_exit_non_zero_naming_the_variable() {
    let dir = tempfile::TempDir::new().unwrap();
    let url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
    let digest = sha256_hex(SECRET);
    for bad in [
        SECRET.to_string(),
        digest[..63].to_string(),
        format!("{digest}0"),
        format!("{}g", &digest[..63]),
        format!("sha256:{digest}"),
    ] {
        // Act
        let out = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &url])
            .env(ENV, &bad)
            .output()
            .unwrap();

        // Assert
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {stderr}");
        assert!(stderr.contains(ENV), "{bad}: {stderr}");
        assert!(stderr.contains("64 hex digits"), "{bad}: {stderr}");
        assert!(!stderr.contains(&bad), "the value was repeated: {stderr}");
        assert!(!stderr.contains("listening"), "{stderr}");
    }
}
