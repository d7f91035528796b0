use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::spawn_app;

#[tokio::test]
async fn the_readme_quick_start_works_from_bootstrap_to_a_failed_verification() {
    // Arrange: a fresh server and its bootstrap token.
    let app = spawn_app().await;
    assert!(app.admin_token.starts_with("lk_pat_"));

    // Act + Assert, step by step as the README tells it.
    let (plaintext, view) = app
        .create_token(
            &app.admin_token,
            json!({"name": "ci deploy", "type": "svc", "scopes": ["tokens:read"], "ttl_seconds": 86400}),
        )
        .await;
    let id = view["id"].as_str().unwrap().to_string();

    let v = app.verify(&plaintext, &["tokens:read"]).await;
    assert_eq!(v["valid"], true);

    let page: Value = app
        .get("/v1/tokens?page_size=20", &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        page["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == id)
    );

    let revoked = app
        .delete(&format!("/v1/tokens/{id}"), &app.admin_token)
        .await;
    assert_eq!(revoked.status(), StatusCode::OK);

    let res = app
        .request(
            Method::POST,
            "/v1/tokens/verify",
            None,
            Some(json!({"token": plaintext})),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"valid": false, "code": "INVALID"})
    );
}
