//! `GET /v1/auth/check`, directly and through a real nginx.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{TestApp, spawn_app, spawn_app_with_env};

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

/// What requests to the two hot routes (and their near misses) answer: status, headers but
/// `Date`, and body, with the ids (which differ between servers) replaced by their names.
async fn hot_route_answers(app: &TestApp) -> Vec<String> {
    let (t, view) = app
        .token_with(&app.admin_token, "hot", &["tokens:read"])
        .await;
    let id = view["id"].as_str().unwrap().to_string();
    let org = app.org_id.to_string();
    let mut out = Vec::new();
    for (method, path, token, body) in [
        (Method::GET, "/v1/auth/check", Some(&t), None),
        (
            Method::GET,
            "/v1/auth/check?require=tokens:create",
            Some(&t),
            None,
        ),
        (Method::GET, "/v1/auth/check?colour=red", Some(&t), None),
        (Method::GET, "/v1/auth/check", None, None),
        (Method::HEAD, "/v1/auth/check", Some(&t), None),
        (Method::POST, "/v1/auth/check", Some(&t), None),
        (Method::GET, "/v1/auth/check/", Some(&t), None),
        (
            Method::POST,
            "/v1/tokens/verify",
            None,
            Some(json!({"token": t})),
        ),
        (
            Method::POST,
            "/v1/tokens/verify",
            None,
            Some(json!({"token": "x", "extra": 1})),
        ),
        (Method::POST, "/v1/tokens/verify", None, None),
        (Method::GET, "/v1/tokens/verify", None, None),
    ] {
        let res = app
            .request(method.clone(), path, token.map(String::as_str), body)
            .await;
        let status = res.status();
        let mut headers: Vec<String> = res
            .headers()
            .iter()
            .filter(|(name, _)| *name != "date")
            .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap()))
            .collect();
        headers.sort();
        let body = res.text().await.unwrap();
        let answer = format!("{method} {path} -> {status} {headers:?} {body}");
        out.push(answer.replace(&id, "<token>").replace(&org, "<org>"));
    }
    out
}

#[tokio::test]
async fn the_check_and_the_verify_answer_alike_whether_the_router_or_their_handler_takes_them() {
    // Arrange: with the request log on (DEBUG) every request goes through the router and its
    // trace layer; otherwise the check and the verify go straight to their handlers.
    let direct = spawn_app().await;
    let routed = spawn_app_with_env(&[], &[("LATCHKEY_LOG", "debug")]).await;

    // Act
    let direct = hot_route_answers(&direct).await;
    let routed = hot_route_answers(&routed).await;

    // Assert
    assert_eq!(direct, routed);
    let expect = [
        (0, "204", "x-latchkey-token-id: <token>"),
        (1, "403", "permission_denied"),
        (2, "400", "colour"),
        (3, "401", "www-authenticate: Bearer"),
        (4, "204", "x-latchkey-org-id: <org>"),
        (5, "405", "method_not_allowed"),
        (6, "404", "not_found"),
        (7, "200", "\"code\":\"VALID\""),
        (8, "400", "extra"),
        (9, "400", "error"),
        (10, "405", "method_not_allowed"),
    ];
    for (i, status, part) in expect {
        let answer = &direct[i];
        assert!(
            answer.contains(&format!("-> {status} ")) && answer.contains(part),
            "{answer}"
        );
    }
}
