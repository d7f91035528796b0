use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{error_of, spawn_app, spawn_app_with};

#[tokio::test]
async fn creating_a_token_returns_its_view_and_a_plaintext_that_verifies() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let (plaintext, view) = app
        .create_token(
            &app.admin_token,
            json!({"name": "ci deploy", "type": "svc", "scopes": ["tokens:read"], "ttl_seconds": 3600, "metadata": {"team": "infra"}}),
        )
        .await;

    // Assert
    assert!(plaintext.starts_with("lk_svc_"));
    assert_eq!(view["name"], "ci deploy");
    assert_eq!(view["type"], "svc");
    assert_eq!(view["state"], "active");
    assert_eq!(view["permissions"], 4);
    assert_eq!(view["scopes"], json!(["tokens:read"]));
    assert_eq!(view["metadata"], json!({"team": "infra"}));
    assert_eq!(view["org_id"], app.org_id.to_string());
    assert!(view["expires_at"].is_string());
    let id = view["id"].as_str().unwrap();
    assert!(plaintext.contains(id));
    assert_eq!(view["display_hint"], format!("lk_svc_{}…", &id[..8]));
    let v = app.verify(&plaintext, &["tokens:read"]).await;
    assert_eq!(v["code"], "VALID");
    assert_eq!(v["token_id"], id);
}

#[tokio::test]
async fn the_numeric_type_and_the_permission_bitmap_are_accepted() {
    let app = spawn_app().await;
    let (plaintext, view) = app
        .create_token(
            &app.admin_token,
            json!({"name": "svc", "type": 2, "permissions": 5}),
        )
        .await;
    assert!(plaintext.starts_with("lk_svc_"));
    assert_eq!(view["scopes"], json!(["tokens:create", "tokens:read"]));
}

#[tokio::test]
async fn malformed_create_bodies_are_400_with_a_reason() {
    let app = spawn_app().await;
    let big = "x".repeat(5000);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"name": "a", "unknown": 1}), "unknown field"),
        (json!({}), "name"),
        (json!({"name": ""}), "name must be"),
        (json!({"name": "x".repeat(101)}), "name must be"),
        (json!({"name": "bad/char"}), "name must be"),
        (json!({"name": "a", "type": "bot"}), "type"),
        (json!({"name": "a", "type": 3}), "type"),
        (
            json!({"name": "a", "scopes": ["nope:read"]}),
            "unknown scope",
        ),
        (
            json!({"name": "a", "permissions": 1u64 << 20}),
            "not assigned",
        ),
        (json!({"name": "a", "permissions": 1024}), "not assigned"),
        (json!({"name": "a", "permissions": -1}), "permissions"),
        (json!({"name": "a", "ttl_seconds": 0}), "ttl_seconds"),
        (
            json!({"name": "a", "ttl_seconds": 60, "expires_at": "2999-01-01T00:00:00Z"}),
            "at most one",
        ),
        (
            json!({"name": "a", "expires_at": "2001-01-01T00:00:00Z"}),
            "future",
        ),
        (json!({"name": "a", "expires_at": "tomorrow"}), "expires_at"),
        (json!({"name": "a", "metadata": [1, 2]}), "object"),
        (json!({"name": "a", "metadata": {"k": big}}), "4096"),
        (json!({"name": "a", "org_id": "not-a-uuid"}), "org_id"),
        (json!(["name"]), "must be a JSON object"),
    ];
    for (body, want) in cases {
        let res = app.post("/v1/tokens", &app.admin_token, body.clone()).await;
        let b = error_of(res, StatusCode::BAD_REQUEST).await;
        assert_eq!(b["error"]["code"], "invalid_argument", "{body}");
        let msg = b["error"]["message"].as_str().unwrap();
        assert!(msg.contains(want), "{body}: {msg}");
    }
}

#[tokio::test]
async fn a_body_that_is_not_json_is_400_and_an_oversized_one_is_413() {
    let app = spawn_app_with(&["--max-body-bytes", "1024"]).await;
    let res = app
        .post_raw(
            "/v1/tokens",
            &app.admin_token,
            "application/json",
            "{\"name\":",
        )
        .await;
    error_of(res, StatusCode::BAD_REQUEST).await;
    let res = app
        .post_raw(
            "/v1/tokens",
            &app.admin_token,
            "text/plain",
            "{\"name\":\"a\"}",
        )
        .await;
    error_of(res, StatusCode::BAD_REQUEST).await;
    let big = json!({"name": "a", "metadata": {"k": "x".repeat(2000)}}).to_string();
    let res = app
        .post_raw("/v1/tokens", &app.admin_token, "application/json", big)
        .await;
    let b = error_of(res, StatusCode::PAYLOAD_TOO_LARGE).await;
    assert_eq!(b["error"]["code"], "payload_too_large");
}

#[tokio::test]
async fn a_second_live_token_with_the_same_name_is_409_until_the_first_is_revoked() {
    // Arrange
    let app = spawn_app().await;
    let (_, first) = app.token_with(&app.admin_token, "dup", &[]).await;

    // Act
    let again = app
        .post("/v1/tokens", &app.admin_token, json!({"name": "dup"}))
        .await;

    // Assert
    let b = error_of(again, StatusCode::CONFLICT).await;
    assert_eq!(b["error"]["code"], "already_exists");
    let id = first["id"].as_str().unwrap();
    app.delete(&format!("/v1/tokens/{id}"), &app.admin_token)
        .await;
    let after = app
        .post("/v1/tokens", &app.admin_token, json!({"name": "dup"}))
        .await;
    assert_eq!(after.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn the_same_name_in_another_org_is_fine() {
    let app = spawn_app().await;
    let (_, other_admin) = app.second_org("acme").await;
    app.token_with(&app.admin_token, "shared name", &[]).await;
    app.token_with(&other_admin, "shared name", &[]).await;
}

#[tokio::test]
async fn creating_in_another_org_is_not_found_unless_platform_admin() {
    // Arrange
    let app = spawn_app().await;
    let (org_b, admin_b) = app.second_org("acme").await;

    // Act
    let into_a = app
        .post(
            "/v1/tokens",
            &admin_b,
            json!({"name": "x", "org_id": app.org_id}),
        )
        .await;
    let into_nowhere = app
        .post(
            "/v1/tokens",
            &admin_b,
            json!({"name": "x", "org_id": uuid::Uuid::now_v7()}),
        )
        .await;
    let platform_into_b = app
        .post(
            "/v1/tokens",
            &app.admin_token,
            json!({"name": "x", "org_id": org_b}),
        )
        .await;
    let platform_into_nowhere = app
        .post(
            "/v1/tokens",
            &app.admin_token,
            json!({"name": "x", "org_id": uuid::Uuid::now_v7()}),
        )
        .await;

    // Assert
    let a = error_of(into_a, StatusCode::NOT_FOUND).await;
    let n = error_of(into_nowhere, StatusCode::NOT_FOUND).await;
    assert_eq!(a, n);
    assert_eq!(platform_into_b.status(), StatusCode::CREATED);
    assert_eq!(
        error_of(platform_into_nowhere, StatusCode::NOT_FOUND).await,
        a
    );
}

#[tokio::test]
async fn custom_scopes_and_composites_come_from_the_config_file() {
    // Arrange
    let dir = tempfile::TempDir::new().unwrap();
    let cfg = dir.path().join("latchkey.toml");
    std::fs::write(
        &cfg,
        r#"
        [[scopes]]
        name = "runs:read"
        bit = 16
        [[scopes]]
        name = "runs:write"
        bit = 17
        [[scopes]]
        name = "billing:admin"
        bit = 40
        admin_only = true
        [composites]
        "runs:all" = ["runs:read", "runs:write"]
        "#,
    )
    .unwrap();
    let app = spawn_app_with(&["--config", cfg.to_str().unwrap()]).await;

    // Act
    let (t, view) = app
        .create_token(
            &app.admin_token,
            json!({"name": "runner", "scopes": ["runs:all", "tokens:create"]}),
        )
        .await;
    let (billing, _) = app
        .create_token(
            &app.admin_token,
            json!({"name": "billing", "scopes": ["billing:admin", "tokens:create"]}),
        )
        .await;
    let grant_admin_only = app
        .post(
            "/v1/tokens",
            &billing,
            json!({"name": "b", "scopes": ["billing:admin"]}),
        )
        .await;
    let grant_held = app
        .post(
            "/v1/tokens",
            &t,
            json!({"name": "r", "scopes": ["runs:read"]}),
        )
        .await;

    // Assert
    assert_eq!(
        view["scopes"],
        json!(["tokens:create", "runs:read", "runs:write"])
    );
    assert_eq!(view["permissions"], 1 + (1 << 16) + (1 << 17));
    assert_eq!(app.verify(&t, &["runs:all"]).await["code"], "VALID");
    assert_eq!(
        app.verify(&t, &["billing:admin"]).await["code"],
        "INSUFFICIENT_PERMISSIONS"
    );
    let b = error_of(grant_admin_only, StatusCode::FORBIDDEN).await;
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("org:admin")
    );
    assert_eq!(grant_held.status(), StatusCode::CREATED);
}
