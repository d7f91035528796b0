use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{error_of, spawn_app};

async fn unauthenticated_body(res: reqwest::Response) -> Value {
    assert_eq!(
        res.headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap()),
        Some("Bearer")
    );
    error_of(res, StatusCode::UNAUTHORIZED).await
}

#[tokio::test]
async fn missing_garbage_unknown_and_revoked_bearers_get_the_same_401() {
    // Arrange
    let app = spawn_app().await;
    let (revoked, view) = app
        .token_with(&app.admin_token, "soon revoked", &["tokens:read"])
        .await;
    let id = view["id"].as_str().unwrap();
    assert_eq!(
        app.delete(&format!("/v1/tokens/{id}"), &app.admin_token)
            .await
            .status(),
        200
    );
    // A well-formed token whose id was never issued.
    let unknown = latchkey::token::format::format_token(
        &Default::default(),
        latchkey::token::TokenKind::Pat,
        uuid::Uuid::now_v7(),
        &[7u8; 32],
    );

    // Act
    let missing = app.request(Method::GET, "/v1/tokens", None, None).await;
    let bodies = vec![
        unauthenticated_body(missing).await,
        unauthenticated_body(app.get("/v1/tokens", "garbage").await).await,
        unauthenticated_body(app.get("/v1/tokens", &unknown).await).await,
        unauthenticated_body(app.get("/v1/tokens", &revoked).await).await,
        unauthenticated_body(
            app.client
                .get(format!("{}/v1/tokens", app.address))
                .header("authorization", format!("Basic {}", app.admin_token))
                .send()
                .await
                .unwrap(),
        )
        .await,
    ];

    // Assert
    for b in &bodies {
        assert_eq!(b, &bodies[0]);
    }
    assert_eq!(bodies[0]["error"]["code"], "unauthenticated");
}

#[tokio::test]
async fn an_unauthenticated_request_is_refused_before_its_body_is_read() {
    let app = spawn_app().await;
    let res = app
        .post_raw("/v1/tokens", "garbage", "application/json", "{not json")
        .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn every_management_endpoint_requires_a_bearer() {
    let app = spawn_app().await;
    let id = uuid::Uuid::now_v7();
    let cases = [
        (
            Method::POST,
            "/v1/tokens".to_string(),
            Some(json!({"name": "x"})),
        ),
        (Method::GET, "/v1/tokens".to_string(), None),
        (Method::GET, format!("/v1/tokens/{id}"), None),
        (Method::DELETE, format!("/v1/tokens/{id}"), None),
        (Method::DELETE, "/v1/tokens/current".to_string(), None),
        (
            Method::POST,
            "/v1/orgs".to_string(),
            Some(json!({"name": "x"})),
        ),
        (Method::GET, format!("/v1/orgs/{id}"), None),
    ];
    for (m, path, body) in cases {
        let res = app.request(m.clone(), &path, None, body).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{m} {path}");
    }
}

#[tokio::test]
async fn a_token_without_the_permission_gets_403_naming_it() {
    let app = spawn_app().await;
    let (reader, _) = app
        .token_with(&app.admin_token, "reader", &["tokens:read"])
        .await;
    let res = app
        .post("/v1/tokens", &reader, json!({"name": "child"}))
        .await;
    let body = error_of(res, StatusCode::FORBIDDEN).await;
    assert_eq!(body["error"]["code"], "permission_denied");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tokens:create")
    );
    let id = uuid::Uuid::now_v7();
    error_of(
        app.delete(&format!("/v1/tokens/{id}"), &reader).await,
        StatusCode::FORBIDDEN,
    )
    .await;
}

#[tokio::test]
async fn a_caller_cannot_grant_permissions_it_lacks() {
    // Arrange: a token that may create tokens and read, nothing else.
    let app = spawn_app().await;
    let (creator, _) = app
        .token_with(
            &app.admin_token,
            "creator",
            &["tokens:create", "tokens:read"],
        )
        .await;

    // Act
    let by_scope = app
        .post(
            "/v1/tokens",
            &creator,
            json!({"name": "e1", "scopes": ["tokens:revoke"]}),
        )
        .await;
    let by_bits = app
        .post(
            "/v1/tokens",
            &creator,
            json!({"name": "e2", "permissions": 64}),
        )
        .await;
    let allowed = app
        .post(
            "/v1/tokens",
            &creator,
            json!({"name": "ok", "scopes": ["tokens:read"]}),
        )
        .await;

    // Assert
    let b = error_of(by_scope, StatusCode::FORBIDDEN).await;
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tokens:revoke")
    );
    let b = error_of(by_bits, StatusCode::FORBIDDEN).await;
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("platform:admin")
    );
    assert_eq!(allowed.status(), StatusCode::CREATED);
}
