use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{error_of, spawn_app};

#[tokio::test]
async fn a_platform_admin_creates_an_org_and_reads_it_back() {
    let app = spawn_app().await;
    let res = app
        .post("/v1/orgs", &app.admin_token, json!({"name": "acme"}))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let org: Value = res.json().await.unwrap();
    assert_eq!(org["name"], "acme");
    let got: Value = app
        .get(
            &format!("/v1/orgs/{}", org["id"].as_str().unwrap()),
            &app.admin_token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got, org);
}

#[tokio::test]
async fn creating_an_org_needs_platform_admin() {
    let app = spawn_app().await;
    let (_, org_admin) = app.second_org("acme").await;
    let b = error_of(
        app.post("/v1/orgs", &org_admin, json!({"name": "evil"}))
            .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("platform:admin")
    );
}

#[tokio::test]
async fn org_names_are_unique_and_validated() {
    let app = spawn_app().await;
    app.post("/v1/orgs", &app.admin_token, json!({"name": "acme"}))
        .await;
    error_of(
        app.post("/v1/orgs", &app.admin_token, json!({"name": "acme"}))
            .await,
        StatusCode::CONFLICT,
    )
    .await;
    for body in [
        json!({"name": ""}),
        json!({"name": "a/b"}),
        json!({}),
        json!({"name": "x", "plan": "gold"}),
    ] {
        error_of(
            app.post("/v1/orgs", &app.admin_token, body).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
}

#[tokio::test]
async fn another_org_and_a_random_org_id_answer_the_same_404() {
    let app = spawn_app().await;
    let (_, admin_b) = app.second_org("acme").await;
    let cross = app.get(&format!("/v1/orgs/{}", app.org_id), &admin_b).await;
    let random = app
        .get(&format!("/v1/orgs/{}", Uuid::now_v7()), &admin_b)
        .await;
    assert_eq!(
        error_of(cross, StatusCode::NOT_FOUND).await,
        error_of(random, StatusCode::NOT_FOUND).await
    );
    error_of(
        app.get("/v1/orgs/not-a-uuid", &admin_b).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
}
