use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::spawn_app;

#[tokio::test]
async fn health_and_readiness_answer_200() {
    let app = spawn_app().await;
    for path in ["/healthz", "/readyz"] {
        let res = app.request(Method::GET, path, None, None).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn an_unknown_route_is_a_json_404() {
    let app = spawn_app().await;
    let res = app.request(Method::GET, "/v2/nothing", None, None).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"]["code"], "not_found");
}

#[tokio::test]
async fn a_wrong_method_is_a_json_405() {
    let app = spawn_app().await;
    for (m, path) in [
        (Method::PUT, "/v1/tokens"),
        (Method::GET, "/v1/tokens/current"),
        (Method::GET, "/v1/tokens/verify"),
    ] {
        let res = app.request(m, path, None, None).await;
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["error"]["code"], "method_not_allowed");
    }
}

fn counter(metrics: &str, line_prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{line_prefix} not in metrics:\n{metrics}"))
}

#[tokio::test]
async fn the_counters_of_the_design_move() {
    // Arrange
    let app = spawn_app().await;
    let scrape = || async {
        app.request(Method::GET, "/metrics", None, None)
            .await
            .text()
            .await
            .unwrap()
    };
    let before = scrape().await;

    // Act
    let (t, view) = app.token_with(&app.admin_token, "m", &[]).await;
    app.verify(&t, &[]).await;
    app.verify(&t, &["tokens:read"]).await;
    app.verify("nope", &[]).await;
    app.get("/v1/tokens", &app.admin_token).await;
    app.delete(
        &format!("/v1/tokens/{}", view["id"].as_str().unwrap()),
        &app.admin_token,
    )
    .await;
    let after = scrape().await;

    // Assert
    for (name, delta) in [
        ("latchkey_token_created_total ", 1.0),
        ("latchkey_token_revoked_total ", 1.0),
        ("latchkey_list_tokens_total ", 1.0),
        ("latchkey_verify_total{result=\"valid\"}", 1.0),
        ("latchkey_verify_total{result=\"invalid\"}", 1.0),
        (
            "latchkey_verify_total{result=\"insufficient_permissions\"}",
            1.0,
        ),
        ("latchkey_verify_duration_seconds_count", 3.0),
    ] {
        assert_eq!(
            counter(&after, name) - counter(&before, name),
            delta,
            "{name}"
        );
    }
}

#[tokio::test]
async fn every_verification_is_counted_by_the_next_scrape_however_many_there_were() {
    // Arrange: more verifications than a thread tallies before it hands them to the registry.
    let app = spawn_app().await;
    let (t, _) = app.token_with(&app.admin_token, "m", &[]).await;
    let names = [
        "latchkey_verify_total{result=\"valid\"}",
        "latchkey_verify_duration_seconds_count",
    ];
    let mut before = Vec::new();
    for name in names {
        before.push(app.metric(name).await);
    }

    // Act
    for _ in 0..300 {
        app.verify(&t, &[]).await;
    }

    // Assert
    for (name, was) in names.into_iter().zip(before) {
        assert_eq!(app.metric(name).await - was, 300.0, "{name}");
    }
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_and_each_one_exists() {
    // Arrange
    let app = spawn_app().await;
    let doc: Value = app
        .request(Method::GET, "/v1/openapi.json", None, None)
        .await
        .json()
        .await
        .unwrap();

    // Assert: the document is OpenAPI 3.1 with the bearer scheme and the error body.
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());

    // The documented operations are exactly the ones this issue ships...
    let mut ops: Vec<String> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            ops.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    ops.sort();
    let mut expected = vec![
        "POST /v1/tokens",
        "GET /v1/tokens",
        "GET /v1/tokens/{id}",
        "DELETE /v1/tokens/{id}",
        "DELETE /v1/tokens/current",
        "POST /v1/tokens/verify",
        "POST /v1/orgs",
        "GET /v1/orgs/{id}",
        "POST /v1/tokens/{id}/rotate",
        "GET /v1/tokens/{id}/usage",
        "POST /v1/tokens/{id}/disable",
        "POST /v1/tokens/{id}/enable",
        "GET /v1/audit",
        "GET /v1/auth/check",
        "POST /v1/tokens/leaked",
        "POST /v1/tokens/import",
        "PATCH /v1/orgs/{id}",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /v1/openapi.json",
        "POST /v1/users",
        "GET /v1/users",
        "GET /v1/users/me",
        "GET /v1/users/{id}",
        "PATCH /v1/users/{id}",
        "POST /v1/users/{id}/disable",
        "POST /v1/users/{id}/enable",
        "POST /v1/users/me/password",
        "POST /v1/auth/token",
        "POST /v1/auth/session",
        "DELETE /v1/auth/session",
        "GET /v1/auth/sessions",
        "DELETE /v1/auth/sessions",
        "DELETE /v1/auth/sessions/{id}",
        "POST /v1/auth/setup",
    ];
    expected.sort();
    assert_eq!(ops, expected);

    // ...and every one of them is served (no route-level 404 or 405).
    for op in &ops {
        let (method, path) = op.split_once(' ').unwrap();
        let path = path.replace("{id}", &uuid::Uuid::now_v7().to_string());
        let method: Method = method.parse().unwrap();
        let body = (method == Method::POST || method == Method::PATCH).then(|| json!({}));
        let res = app.request(method, &path, None, body).await;
        assert!(
            ![StatusCode::METHOD_NOT_ALLOWED].contains(&res.status()),
            "{op}: {}",
            res.status()
        );
        if res.status() == StatusCode::NOT_FOUND {
            panic!("{op} is documented but not routed");
        }
    }
}
