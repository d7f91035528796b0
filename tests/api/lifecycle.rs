//! Rotation, families, lifetime policy, disable / enable, the audit log and client addresses.

use chrono::TimeDelta;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, error_of, spawn_app, spawn_with_clock};

async fn rotate(app: &TestApp, id: &str, body: Value) -> reqwest::Response {
    app.post(&format!("/v1/tokens/{id}/rotate"), &app.admin_token, body)
        .await
}

async fn rotated(app: &TestApp, id: &str, body: Value) -> (String, Value, Value) {
    let res = rotate(app, id, body).await;
    let status = res.status();
    let v: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{v}");
    (
        v["plaintext"].as_str().unwrap().to_string(),
        v["token"].clone(),
        v["previous"].clone(),
    )
}

#[tokio::test]
async fn during_the_grace_both_tokens_verify_and_afterwards_only_the_new_one() {
    // Arrange
    let app = spawn_with_clock().await;
    let clock = app.clock.clone().unwrap();
    let (old, view) = app
        .create_token(
            &app.admin_token,
            json!({"name": "deploy", "type": "svc", "scopes": ["tokens:read"], "ttl_seconds": 86400, "metadata": {"team": "a"}}),
        )
        .await;
    let id = view["id"].as_str().unwrap();
    clock.advance(TimeDelta::hours(1));

    // Act
    let (new, new_view, previous) = rotated(&app, id, json!({"grace_seconds": 600})).await;

    // Assert: same name, type, permissions, metadata and lifetime length; the old one points to it.
    assert_ne!(new_view["id"], view["id"]);
    for field in [
        "name",
        "type",
        "permissions",
        "scopes",
        "metadata",
        "org_id",
    ] {
        assert_eq!(new_view[field], view[field], "{field}");
    }
    let lifetime = |v: &Value| {
        let c: chrono::DateTime<chrono::Utc> = v["created_at"].as_str().unwrap().parse().unwrap();
        let e: chrono::DateTime<chrono::Utc> = v["expires_at"].as_str().unwrap().parse().unwrap();
        e - c
    };
    assert_eq!(lifetime(&new_view), TimeDelta::days(1));
    assert_eq!(previous["replaced_by"], new_view["id"]);
    assert_eq!(app.verify(&old, &[]).await["code"], "VALID");
    assert_eq!(app.verify(&new, &[]).await["code"], "VALID");
    clock.advance(TimeDelta::seconds(600));
    assert_eq!(app.verify(&old, &[]).await["code"], "INVALID");
    assert_eq!(app.verify(&new, &[]).await["code"], "VALID");
}

#[tokio::test]
async fn a_rotation_with_grace_zero_ends_the_old_token_at_once() {
    let app = spawn_app().await;
    let (old, view) = app.token_with(&app.admin_token, "emergency", &[]).await;
    assert_eq!(app.verify(&old, &[]).await["code"], "VALID");
    let (new, _, _) = rotated(
        &app,
        view["id"].as_str().unwrap(),
        json!({"grace_seconds": 0}),
    )
    .await;
    assert_eq!(app.verify(&old, &[]).await["code"], "INVALID");
    assert_eq!(app.verify(&new, &[]).await["code"], "VALID");
}

#[tokio::test]
async fn rotating_an_already_rotated_token_revokes_the_whole_family() {
    // Arrange: a family of three generations.
    let app = spawn_app().await;
    let (_, first) = app.token_with(&app.admin_token, "family", &[]).await;
    let first_id = first["id"].as_str().unwrap().to_string();
    let (second, second_view, _) = rotated(&app, &first_id, json!({})).await;
    let (third, _, _) = rotated(&app, second_view["id"].as_str().unwrap(), json!({})).await;
    assert_eq!(app.verify(&second, &[]).await["code"], "VALID");

    // Act: the first token is rotated again (a stolen copy, say).
    let res = rotate(&app, &first_id, json!({})).await;

    // Assert
    let b = error_of(res, StatusCode::CONFLICT).await;
    assert!(b["error"]["message"].as_str().unwrap().contains("family"));
    assert_eq!(app.verify(&second, &[]).await["code"], "INVALID");
    assert_eq!(app.verify(&third, &[]).await["code"], "INVALID");
    let events: Value = app
        .get("/v1/audit?action=token_family_revoked", &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(events["events"].as_array().unwrap().len(), 1);
    assert_eq!(events["events"][0]["token_id"], first_id);
}

#[tokio::test]
async fn rotation_refuses_bad_grace_and_dead_tokens_and_needs_the_permission() {
    let app = spawn_app().await;
    let (_, view) = app.token_with(&app.admin_token, "r", &[]).await;
    let id = view["id"].as_str().unwrap();
    for body in [
        json!({"grace_seconds": -1}),
        json!({"grace_seconds": 99_999_999}),
        json!({"grace": 5}),
    ] {
        error_of(rotate(&app, id, body).await, StatusCode::BAD_REQUEST).await;
    }
    app.delete(&format!("/v1/tokens/{id}"), &app.admin_token)
        .await;
    error_of(rotate(&app, id, json!({})).await, StatusCode::BAD_REQUEST).await;
    let (reader, _) = app
        .token_with(&app.admin_token, "reader", &["tokens:read"])
        .await;
    let (_, other) = app.token_with(&app.admin_token, "other", &[]).await;
    let res = app
        .post(
            &format!("/v1/tokens/{}/rotate", other["id"].as_str().unwrap()),
            &reader,
            json!({}),
        )
        .await;
    error_of(res, StatusCode::FORBIDDEN).await;
    let (_, admin_b) = app.second_org("acme").await;
    let res = app
        .post(
            &format!("/v1/tokens/{}/rotate", other["id"].as_str().unwrap()),
            &admin_b,
            json!({}),
        )
        .await;
    error_of(res, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn the_org_policy_caps_lifetimes_and_supplies_a_default() {
    // Arrange
    let app = spawn_with_clock().await;
    let org = format!("/v1/orgs/{}", app.org_id);
    let res = app
        .request(
            reqwest::Method::PATCH,
            &org,
            Some(&app.admin_token),
            Some(json!({"max_ttl_seconds": 3600, "default_ttl_seconds": 600})),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let shown: Value = app.get(&org, &app.admin_token).await.json().await.unwrap();

    // Act
    let too_long = app
        .post(
            "/v1/tokens",
            &app.admin_token,
            json!({"name": "long", "ttl_seconds": 7200}),
        )
        .await;
    let (_, defaulted) = app
        .create_token(&app.admin_token, json!({"name": "default"}))
        .await;
    let (_, within) = app
        .create_token(
            &app.admin_token,
            json!({"name": "within", "ttl_seconds": 3600}),
        )
        .await;

    // Assert
    assert_eq!(shown["max_ttl_seconds"], 3600);
    assert_eq!(shown["default_ttl_seconds"], 600);
    let b = error_of(too_long, StatusCode::BAD_REQUEST).await;
    assert!(b["error"]["message"].as_str().unwrap().contains("3600"));
    let secs = |v: &Value| {
        let c: chrono::DateTime<chrono::Utc> = v["created_at"].as_str().unwrap().parse().unwrap();
        let e: chrono::DateTime<chrono::Utc> = v["expires_at"].as_str().unwrap().parse().unwrap();
        (e - c).num_seconds()
    };
    assert_eq!(secs(&defaulted), 600);
    assert_eq!(secs(&within), 3600);
}

#[tokio::test]
async fn the_org_policy_is_validated_and_needs_org_admin_of_that_org() {
    let app = spawn_app().await;
    let org = format!("/v1/orgs/{}", app.org_id);
    let patch = |token: String, body: Value| {
        let app = &app;
        let org = org.clone();
        async move {
            app.request(reqwest::Method::PATCH, &org, Some(&token), Some(body))
                .await
        }
    };
    for body in [
        json!({"max_ttl_seconds": 0}),
        json!({"max_ttl_seconds": 60, "default_ttl_seconds": 120}),
        json!({"max_ttl_seconds": "x"}),
        json!({"colour": 1}),
    ] {
        error_of(
            patch(app.admin_token.clone(), body).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    let (creator, _) = app
        .token_with(&app.admin_token, "c", &["tokens:create"])
        .await;
    error_of(
        patch(creator, json!({"max_ttl_seconds": 60})).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    let (_, admin_b) = app.second_org("acme").await;
    error_of(
        patch(admin_b, json!({"max_ttl_seconds": 60})).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    // null removes a limit again.
    let ok = patch(app.admin_token.clone(), json!({"max_ttl_seconds": 60})).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let cleared: Value = patch(app.admin_token.clone(), json!({"max_ttl_seconds": null}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cleared["max_ttl_seconds"], Value::Null);
}

#[tokio::test]
async fn a_disabled_token_verifies_as_invalid_until_enabled() {
    // Arrange
    let app = spawn_app().await;
    let (t, view) = app
        .token_with(&app.admin_token, "pausable", &["tokens:read"])
        .await;
    let id = view["id"].as_str().unwrap();
    assert_eq!(app.verify(&t, &[]).await["code"], "VALID");

    // Act
    let disabled: Value = app
        .post(
            &format!("/v1/tokens/{id}/disable"),
            &app.admin_token,
            json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    let while_disabled = app.verify(&t, &[]).await;
    let bearer_while_disabled = app.get("/v1/tokens", &t).await.status();
    let listed: Value = app
        .get("/v1/tokens?state=disabled", &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    app.post(
        &format!("/v1/tokens/{id}/enable"),
        &app.admin_token,
        json!({}),
    )
    .await;

    // Assert
    assert_eq!(disabled["state"], "disabled");
    assert!(disabled["disabled_at"].is_string());
    assert_eq!(while_disabled, json!({"valid": false, "code": "INVALID"}));
    assert_eq!(bearer_while_disabled, StatusCode::UNAUTHORIZED);
    assert_eq!(listed["tokens"][0]["id"], id);
    assert_eq!(app.verify(&t, &[]).await["code"], "VALID");
    let events: Value = app
        .get(&format!("/v1/audit?token_id={id}"), &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        vec!["token_enabled", "token_disabled", "token_created"]
    );
}

#[tokio::test]
async fn the_audit_log_filters_pages_and_stays_in_its_org() {
    // Arrange: events from two actors.
    let app = spawn_app().await;
    let (creator, creator_view) = app
        .token_with(
            &app.admin_token,
            "creator",
            &["tokens:create", "tokens:revoke"],
        )
        .await;
    for i in 0..4 {
        let (_, v) = app.token_with(&creator, &format!("child {i}"), &[]).await;
        app.delete(
            &format!("/v1/tokens/{}", v["id"].as_str().unwrap()),
            &creator,
        )
        .await;
    }
    let (_, admin_b) = app.second_org("acme").await;
    let actor = format!("token:{}", creator_view["id"].as_str().unwrap());

    // Act
    let by_actor: Value = app
        .get(
            &format!("/v1/audit?actor={actor}&action=token_revoked"),
            &app.admin_token,
        )
        .await
        .json()
        .await
        .unwrap();
    let mut pages = Vec::new();
    let mut cursor = String::new();
    loop {
        let page: Value = app
            .get(
                &format!("/v1/audit?actor={actor}&page_size=3{cursor}"),
                &app.admin_token,
            )
            .await
            .json()
            .await
            .unwrap();
        pages.push(page["events"].as_array().unwrap().len());
        match page["next_page_token"].as_str() {
            Some(c) => cursor = format!("&page_token={c}"),
            None => break,
        }
    }
    let since_future: Value = app
        .get("/v1/audit?since=2999-01-01T00:00:00Z", &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    let b_log: Value = app.get("/v1/audit", &admin_b).await.json().await.unwrap();

    // Assert
    let events = by_actor["events"].as_array().unwrap();
    assert_eq!(events.len(), 4);
    assert!(
        events
            .iter()
            .all(|e| e["actor"] == actor && e["action"] == "token_revoked")
    );
    assert!(events.iter().all(|e| e["ip"] == "127.0.0.1"));
    assert_eq!(pages, vec![3, 3, 2]);
    assert_eq!(since_future["events"].as_array().unwrap().len(), 0);
    assert!(
        b_log["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["org_id"] != app.org_id.to_string())
    );
    error_of(
        app.get(&format!("/v1/audit?org_id={}", app.org_id), &admin_b)
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    error_of(app.get("/v1/audit", &creator).await, StatusCode::FORBIDDEN).await;
    error_of(
        app.get("/v1/audit?since=yesterday", &app.admin_token).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
}

#[tokio::test]
async fn the_last_client_addresses_are_recorded_with_the_usage() {
    let app = crate::helpers::spawn_app_with(&["--usage-flush-ms", "50"]).await;
    let (t, view) = app.token_with(&app.admin_token, "seen", &[]).await;
    let id = view["id"].as_str().unwrap();
    app.verify(&t, &[]).await;
    let mut got = Value::Null;
    for _ in 0..200 {
        got = app
            .get(&format!("/v1/tokens/{id}"), &app.admin_token)
            .await
            .json()
            .await
            .unwrap();
        if got["request_count"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(got["request_count"], 1);
    assert_eq!(got["client_ips"][0]["ip"], "127.0.0.1");
    assert!(got["client_ips"][0]["last_seen_at"].is_string());
}
