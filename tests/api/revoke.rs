use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{error_of, spawn_app};

#[tokio::test]
async fn a_revoked_token_fails_on_the_very_next_request() {
    // Arrange: a token that has been verified, so it sits in the cache.
    let app = spawn_app().await;
    let (t, view) = app
        .token_with(&app.admin_token, "victim", &["tokens:read"])
        .await;
    assert_eq!(app.verify(&t, &[]).await["code"], "VALID");
    assert_eq!(app.get("/v1/tokens", &t).await.status(), StatusCode::OK);

    // Act
    let res = app
        .delete(
            &format!("/v1/tokens/{}", view["id"].as_str().unwrap()),
            &app.admin_token,
        )
        .await;

    // Assert
    assert_eq!(res.status(), StatusCode::OK);
    let revoked: Value = res.json().await.unwrap();
    assert_eq!(revoked["state"], "revoked");
    assert!(revoked["revoked_at"].is_string());
    assert_eq!(app.verify(&t, &[]).await["code"], "INVALID");
    assert_eq!(
        app.get("/v1/tokens", &t).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn revoking_twice_succeeds_and_writes_one_audit_event() {
    // Arrange
    let app = spawn_app().await;
    let (_, view) = app.token_with(&app.admin_token, "twice", &[]).await;
    let id = view["id"].as_str().unwrap();
    let path = format!("/v1/tokens/{id}");

    // Act
    let first: Value = app
        .delete(&path, &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    let second = app.delete(&path, &app.admin_token).await;

    // Assert
    assert_eq!(second.status(), StatusCode::OK);
    let second: Value = second.json().await.unwrap();
    assert_eq!(first["revoked_at"], second["revoked_at"]);
    let events: Value = app
        .get(
            &format!("/v1/audit?token_id={id}&action=token_revoked"),
            &app.admin_token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(events["events"].as_array().unwrap().len(), 1);
    let metrics = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("latchkey_token_revoked_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_token_can_always_revoke_itself() {
    let app = spawn_app().await;
    let (t, view) = app.token_with(&app.admin_token, "self", &[]).await;
    let res = app.delete("/v1/tokens/current", &t).await;
    assert_eq!(res.status(), StatusCode::OK);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["id"], view["id"]);
    assert_eq!(v["state"], "revoked");
    assert_eq!(app.verify(&t, &[]).await["code"], "INVALID");
    error_of(
        app.delete("/v1/tokens/current", &t).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

#[tokio::test]
async fn revoking_another_orgs_token_is_the_same_404_as_a_missing_one_and_changes_nothing() {
    // Arrange
    let app = spawn_app().await;
    let (_, admin_b) = app.second_org("acme").await;
    let (t_a, view_a) = app.token_with(&app.admin_token, "in a", &[]).await;

    // Act
    let cross = app
        .delete(
            &format!("/v1/tokens/{}", view_a["id"].as_str().unwrap()),
            &admin_b,
        )
        .await;
    let missing = app
        .delete(&format!("/v1/tokens/{}", Uuid::now_v7()), &admin_b)
        .await;

    // Assert
    let a = error_of(cross, StatusCode::NOT_FOUND).await;
    let b = error_of(missing, StatusCode::NOT_FOUND).await;
    assert_eq!(a, b);
    assert_eq!(app.verify(&t_a, &[]).await["code"], "VALID");
}

#[tokio::test]
async fn a_malformed_id_is_400() {
    let app = spawn_app().await;
    let b = error_of(
        app.delete("/v1/tokens/12345", &app.admin_token).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(b["error"]["code"], "invalid_argument");
}
