use chrono::TimeDelta;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{error_of, spawn_with_clock};

#[tokio::test]
async fn a_token_stops_working_when_the_clock_passes_its_expiry() {
    // Arrange
    let app = spawn_with_clock().await;
    let clock = app.clock.clone().unwrap();
    let (t, view) = app
        .create_token(
            &app.admin_token,
            json!({"name": "short", "ttl_seconds": 60, "scopes": ["tokens:read"]}),
        )
        .await;
    let id = view["id"].as_str().unwrap();
    assert_eq!(app.verify(&t, &[]).await["code"], "VALID");

    // Act: one second before the end, then at it.
    clock.advance(TimeDelta::seconds(59));
    let before = app.verify(&t, &[]).await;
    clock.advance(TimeDelta::seconds(1));
    let at = app.verify(&t, &[]).await;

    // Assert
    assert_eq!(before["code"], "VALID");
    assert_eq!(at, json!({"valid": false, "code": "INVALID"}));
    let expired_bearer = app.get("/v1/tokens", &t).await;
    assert_eq!(expired_bearer.headers()["www-authenticate"], "Bearer");
    let expired_body = error_of(expired_bearer, StatusCode::UNAUTHORIZED).await;
    let garbage = app.get("/v1/tokens", "garbage").await;
    assert_eq!(
        expired_body,
        error_of(garbage, StatusCode::UNAUTHORIZED).await
    );
    let got: Value = app
        .get(&format!("/v1/tokens/{id}"), &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["state"], "expired");
    let expired: Value = app
        .get("/v1/tokens?state=expired", &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(expired["tokens"][0]["id"], id);
}

#[tokio::test]
async fn an_expired_tokens_name_can_be_used_again() {
    let app = spawn_with_clock().await;
    let clock = app.clock.clone().unwrap();
    app.create_token(
        &app.admin_token,
        json!({"name": "reuse", "ttl_seconds": 10}),
    )
    .await;
    let again = app
        .post("/v1/tokens", &app.admin_token, json!({"name": "reuse"}))
        .await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    clock.advance(TimeDelta::seconds(10));
    let after = app
        .post("/v1/tokens", &app.admin_token, json!({"name": "reuse"}))
        .await;
    assert_eq!(after.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn expires_at_is_checked_against_the_servers_clock() {
    let app = spawn_with_clock().await;
    let clock = app.clock.clone().unwrap();
    clock.advance(TimeDelta::days(365));
    // A date that is in the future for the system clock but in the past for the server's.
    let at = (chrono::Utc::now() + TimeDelta::days(30)).to_rfc3339();
    let res = app
        .post(
            "/v1/tokens",
            &app.admin_token,
            json!({"name": "x", "expires_at": at}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}
