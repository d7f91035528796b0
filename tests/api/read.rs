use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{error_of, spawn_app};

#[tokio::test]
async fn get_returns_metadata_without_any_secret() {
    let app = spawn_app().await;
    let (plaintext, view) = app
        .token_with(&app.admin_token, "meta", &["tokens:read"])
        .await;
    let id = view["id"].as_str().unwrap();
    let res = app.get(&format!("/v1/tokens/{id}"), &app.admin_token).await;
    assert_eq!(res.status(), StatusCode::OK);
    let text = res.text().await.unwrap();
    let got: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(got["id"], id);
    assert_eq!(got["name"], "meta");
    assert!(got.get("plaintext").is_none());
    assert!(!text.contains(&plaintext[plaintext.len() - 49..]));
    assert!(!text.contains("sha256"));
}

#[tokio::test]
async fn another_orgs_token_and_a_random_id_answer_the_same_404() {
    // Arrange
    let app = spawn_app().await;
    let (_, admin_b) = app.second_org("acme").await;
    let (_, view_a) = app.token_with(&app.admin_token, "in a", &[]).await;
    let id_a = view_a["id"].as_str().unwrap();
    let random = Uuid::now_v7();

    // Act
    let cross = app.get(&format!("/v1/tokens/{id_a}"), &admin_b).await;
    let missing = app.get(&format!("/v1/tokens/{random}"), &admin_b).await;
    let cross_with_org = app
        .get(
            &format!("/v1/tokens/{id_a}?org_id={}", app.org_id),
            &admin_b,
        )
        .await;

    // Assert
    let a = error_of(cross, StatusCode::NOT_FOUND).await;
    let b = error_of(missing, StatusCode::NOT_FOUND).await;
    let c = error_of(cross_with_org, StatusCode::NOT_FOUND).await;
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(a["error"]["code"], "not_found");
}

#[tokio::test]
async fn without_org_admin_a_caller_sees_only_the_tokens_it_created() {
    // Arrange
    let app = spawn_app().await;
    let (manager, manager_view) = app
        .token_with(
            &app.admin_token,
            "manager",
            &["tokens:create", "tokens:read"],
        )
        .await;
    let (_, own_child) = app.token_with(&manager, "child", &[]).await;
    let (_, foreign) = app.token_with(&app.admin_token, "not mine", &[]).await;

    // Act
    let page: Value = app.get("/v1/tokens", &manager).await.json().await.unwrap();
    let foreign_get = app
        .get(
            &format!("/v1/tokens/{}", foreign["id"].as_str().unwrap()),
            &manager,
        )
        .await;
    let self_get = app
        .get(
            &format!("/v1/tokens/{}", manager_view["id"].as_str().unwrap()),
            &manager,
        )
        .await;

    // Assert
    let ids: Vec<&str> = page["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![own_child["id"].as_str().unwrap()]);
    error_of(foreign_get, StatusCode::NOT_FOUND).await;
    assert_eq!(self_get.status(), StatusCode::OK);
}

#[tokio::test]
async fn paging_walks_every_token_once_newest_first() {
    // Arrange: 7 tokens plus the bootstrap token.
    let app = spawn_app().await;
    for i in 0..7 {
        app.token_with(&app.admin_token, &format!("t{i}"), &[])
            .await;
    }

    // Act
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/tokens?page_size=3&page_token={c}"),
            None => "/v1/tokens?page_size=3".to_string(),
        };
        let page: Value = app.get(&path, &app.admin_token).await.json().await.unwrap();
        pages += 1;
        for t in page["tokens"].as_array().unwrap() {
            seen.push(t["id"].as_str().unwrap().to_string());
        }
        match page["next_page_token"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }

    // Assert
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 8);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 8);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(seen, sorted, "newest (largest UUID v7) first");
}

#[tokio::test]
async fn the_state_filter_separates_active_and_revoked() {
    let app = spawn_app().await;
    let (_, keep) = app.token_with(&app.admin_token, "keep", &[]).await;
    let (_, gone) = app.token_with(&app.admin_token, "gone", &[]).await;
    app.delete(
        &format!("/v1/tokens/{}", gone["id"].as_str().unwrap()),
        &app.admin_token,
    )
    .await;

    let revoked: Value = app
        .get("/v1/tokens?state=revoked", &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    let active: Value = app
        .get("/v1/tokens?state=active", &app.admin_token)
        .await
        .json()
        .await
        .unwrap();

    let ids = |v: &Value| -> Vec<String> {
        v["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids(&revoked),
        vec![gone["id"].as_str().unwrap().to_string()]
    );
    assert!(ids(&active).contains(&keep["id"].as_str().unwrap().to_string()));
    assert!(!ids(&active).contains(&gone["id"].as_str().unwrap().to_string()));
    assert_eq!(revoked["tokens"][0]["state"], "revoked");
}

#[tokio::test]
async fn malformed_list_and_get_requests_are_400() {
    let app = spawn_app().await;
    for path in [
        "/v1/tokens?state=sleeping",
        "/v1/tokens?page_size=-1",
        "/v1/tokens?page_size=ten",
        "/v1/tokens?page_token=nope",
        "/v1/tokens?org_id=12",
        "/v1/tokens?colour=red",
        "/v1/tokens/not-a-uuid",
        "/v1/tokens/01234567-89ab-cdef-0123-456789abcdef?extra=1",
    ] {
        let b = error_of(
            app.get(path, &app.admin_token).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert_eq!(b["error"]["code"], "invalid_argument", "{path}");
    }
}

#[tokio::test]
async fn a_page_size_above_500_is_served_as_500() {
    let app = spawn_app().await;
    let res = app
        .get("/v1/tokens?page_size=100000", &app.admin_token)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["tokens"].as_array().unwrap().len(), 1);
    assert_eq!(v["next_page_token"], json!(null));
}

#[tokio::test]
async fn listing_another_org_is_not_found_for_an_org_admin_and_allowed_for_platform_admin() {
    let app = spawn_app().await;
    let (org_b, admin_b) = app.second_org("acme").await;
    let cross = app
        .get(&format!("/v1/tokens?org_id={}", app.org_id), &admin_b)
        .await;
    error_of(cross, StatusCode::NOT_FOUND).await;
    let platform = app
        .get(&format!("/v1/tokens?org_id={org_b}"), &app.admin_token)
        .await;
    let v: Value = platform.json().await.unwrap();
    assert_eq!(v["tokens"].as_array().unwrap().len(), 1);
    assert_eq!(v["tokens"][0]["org_id"], org_b.to_string());
}

#[tokio::test]
async fn a_list_narrowed_by_name_contains_ignores_case_and_takes_underscore_literally() {
    // Arrange
    let app = spawn_app().await;
    for name in ["Deploy prod", "deploy staging", "a_b", "axb"] {
        app.token_with(&app.admin_token, name, &[]).await;
    }
    let names = |v: Value| -> Vec<String> {
        let mut n: Vec<String> = v["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect();
        n.sort();
        n
    };

    // Act
    let deploy: Value = app
        .get("/v1/tokens?name_contains=DEPLOY", &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    let percent: Value = app
        .get("/v1/tokens?name_contains=a_b", &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    let none: Value = app
        .get("/v1/tokens?name_contains=zzz", &app.admin_token)
        .await
        .json()
        .await
        .unwrap();

    // Assert
    assert_eq!(names(deploy), ["Deploy prod", "deploy staging"]);
    assert_eq!(names(percent), ["a_b"]);
    assert!(names(none).is_empty());
}
