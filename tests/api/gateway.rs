//! `GET /v1/auth/check`, directly and through a real nginx.

use reqwest::{Method, StatusCode};

use crate::helpers::{TestApp, spawn_app};

async fn check(app: &TestApp, token: Option<&str>, require: &str) -> reqwest::Response {
    app.request(
        Method::GET,
        &format!("/v1/auth/check{require}"),
        token,
        None,
    )
    .await
}

#[tokio::test]
async fn the_gateway_check_answers_204_with_identity_headers_401_and_403() {
    // Arrange
    let app = spawn_app().await;
    let (t, view) = app
        .token_with(&app.admin_token, "gw", &["tokens:read", "audit:read"])
        .await;

    // Act
    let ok = check(&app, Some(&t), "?require=tokens:read,audit:read").await;
    let lacking = check(&app, Some(&t), "?require=tokens:create").await;
    let unknown_scope = check(&app, Some(&t), "?require=no:such").await;
    let missing = check(&app, None, "").await;
    let garbage = check(&app, Some("garbage"), "").await;

    // Assert
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    let h = ok.headers();
    assert_eq!(h["x-latchkey-token-id"], view["id"].as_str().unwrap());
    assert_eq!(h["x-latchkey-org-id"], app.org_id.to_string().as_str());
    assert_eq!(h["x-latchkey-scopes"], "tokens:read,audit:read");
    assert_eq!(lacking.status(), StatusCode::FORBIDDEN);
    assert_eq!(unknown_scope.status(), StatusCode::FORBIDDEN);
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    assert_eq!(garbage.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        check(&app, Some(&t), "?colour=red").await.status(),
        StatusCode::BAD_REQUEST
    );
}
