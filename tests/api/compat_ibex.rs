//! `--compat-ibex`: ibex's gRPC `ibex.auth.v1.AuthService` on the same port, mapped onto the same
//! service methods as Latchkey's own, through a generated tonic client of ibex's proto.

use std::collections::HashSet;

use latchkey::grpc::ibex::pb;
use latchkey::grpc::ibex::pb::auth_service_client::AuthServiceClient;
use prost_types::Timestamp;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::codegen::tokio_stream;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};
use uuid::Uuid;

use crate::helpers::{TestApp, forge, spawn_app, spawn_app_with};

const FLAG: &str = "--compat-ibex";
const INVALID: &str = "invalid or expired token";

async fn ibex_app() -> TestApp {
    spawn_app_with(&[FLAG]).await
}

async fn client(app: &TestApp) -> AuthServiceClient<Channel> {
    AuthServiceClient::connect(app.address.clone())
        .await
        .expect("gRPC connect")
}

fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn validate_req(token: &str) -> pb::ValidateTokenRequest {
    pb::ValidateTokenRequest {
        access_token: token.into(),
    }
}

fn create_req(name: &str, permissions: u64) -> pb::CreateTokenRequest {
    pb::CreateTokenRequest {
        name: name.into(),
        r#type: pb::TokenType::Pat as i32,
        permissions,
        ..Default::default()
    }
}

fn seconds(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().expect("a time"))
        .expect("RFC 3339")
        .timestamp()
}

#[tokio::test]
async fn validate_token_answers_a_native_tokens_org_permissions_id_and_expiry() {
    // Arrange
    let app = ibex_app().await;
    let (expiring, expiring_view) = app
        .create_token(
            &app.admin_token,
            json!({"name": "expiring", "scopes": ["tokens:read", "audit:read"], "ttl_seconds": 3600}),
        )
        .await;
    let (forever, forever_view) = app
        .token_with(&app.admin_token, "forever", &["tokens:create"])
        .await;
    let mut c = client(&app).await;

    // Act
    let a = c
        .validate_token(validate_req(&expiring))
        .await
        .unwrap()
        .into_inner();
    let b = c
        .validate_token(validate_req(&forever))
        .await
        .unwrap()
        .into_inner();

    // Assert
    assert_eq!(a.org_id, app.org_id.to_string());
    assert_eq!(a.token_id, expiring_view["id"].as_str().unwrap());
    assert_eq!(a.permissions, 4 | 16);
    assert_eq!(
        a.expires_at.map(|t| t.seconds),
        Some(seconds(&expiring_view["expires_at"]))
    );
    assert_eq!(b.token_id, forever_view["id"].as_str().unwrap());
    assert_eq!(b.permissions, 1);
    assert_eq!(b.expires_at, None);
}

#[tokio::test]
async fn validate_token_is_unauthenticated_invalid_or_expired_token_for_garbage_a_wrong_secret_and_a_revoked_token()
 {
    // Arrange
    let app = ibex_app().await;
    let (genuine, _) = app.token_with(&app.admin_token, "genuine", &[]).await;
    let (revoked, view) = app.token_with(&app.admin_token, "revoked", &[]).await;
    let res = app
        .delete(
            &format!("/v1/tokens/{}", view["id"].as_str().unwrap()),
            &app.admin_token,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let wrong_secret = forge(&genuine, None, Some([7u8; 32]));
    let mut c = client(&app).await;

    // Act
    let mut answers = Vec::new();
    for presented in ["", "garbage", &wrong_secret, &revoked] {
        answers.push(c.validate_token(validate_req(presented)).await);
    }

    // Assert
    for (i, answer) in answers.into_iter().enumerate() {
        let status = answer.expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated, "case {i}");
        assert_eq!(status.message(), INVALID, "case {i}");
    }
}

#[tokio::test]
async fn create_list_and_revoke_work_with_an_admin_bearer() {
    // Arrange
    let app = ibex_app().await;
    let mut c = client(&app).await;
    let expires = Timestamp {
        seconds: chrono::Utc::now().timestamp() + 7200,
        nanos: 0,
    };
    let req = pb::CreateTokenRequest {
        org_id: app.org_id.to_string(),
        name: "ibex svc".into(),
        r#type: pb::TokenType::Svc as i32,
        permissions: 4,
        expires_at: Some(expires),
    };

    // Act
    let created = c
        .create_token(authed(req, &app.admin_token))
        .await
        .unwrap()
        .into_inner();
    let valid = c
        .validate_token(validate_req(&created.plaintext))
        .await
        .unwrap()
        .into_inner();
    let listed = c
        .list_tokens(authed(
            pb::ListTokensRequest {
                org_id: app.org_id.to_string(),
                ..Default::default()
            },
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    c.revoke_token(authed(
        pb::RevokeTokenRequest {
            org_id: app.org_id.to_string(),
            token_id: created.token_id.clone(),
        },
        &app.admin_token,
    ))
    .await
    .unwrap();
    let again = c
        .revoke_token(authed(
            pb::RevokeTokenRequest {
                org_id: String::new(),
                token_id: created.token_id.clone(),
            },
            &app.admin_token,
        ))
        .await;
    let after = c
        .validate_token(validate_req(&created.plaintext))
        .await
        .unwrap_err();
    let rest: Value = app
        .get(
            &format!("/v1/tokens/{}", created.token_id),
            &app.admin_token,
        )
        .await
        .json()
        .await
        .unwrap();

    // Assert
    let hex = created.token_id.replace('-', "");
    assert_eq!(created.prefix, format!("lk_svc_{}", &hex[..8]));
    assert!(created.plaintext.starts_with(&created.prefix));
    assert!(created.created_at.is_some());
    assert_eq!(valid.token_id, created.token_id);
    assert_eq!(valid.permissions, 4);
    assert_eq!(valid.expires_at.map(|t| t.seconds), Some(expires.seconds));
    let mine = listed
        .tokens
        .iter()
        .find(|t| t.token_id == created.token_id)
        .expect("listed");
    assert_eq!(mine.name, "ibex svc");
    assert_eq!(mine.r#type, pb::TokenType::Svc as i32);
    assert_eq!(mine.permissions, 4);
    assert_eq!(mine.prefix, created.prefix);
    assert_eq!(mine.org_id, app.org_id.to_string());
    assert_eq!(mine.revoked_at, None);
    assert!(again.is_ok(), "revoke is idempotent: {again:?}");
    assert_eq!(after.message(), INVALID);
    assert_eq!(rest["state"], "revoked");
    assert!(
        rest["created_by"].as_str().unwrap().starts_with("token:"),
        "{rest}"
    );
}

#[tokio::test]
async fn create_list_and_revoke_without_a_valid_bearer_are_unauthenticated() {
    // Arrange
    let app = ibex_app().await;
    let mut c = client(&app).await;
    let (_, view) = app.token_with(&app.admin_token, "target", &[]).await;
    let revoke = || pb::RevokeTokenRequest {
        org_id: String::new(),
        token_id: view["id"].as_str().unwrap().to_string(),
    };

    // Act
    let refusals = [
        c.create_token(create_req("no bearer", 0))
            .await
            .unwrap_err(),
        c.create_token(authed(create_req("garbage", 0), "garbage"))
            .await
            .unwrap_err(),
        c.list_tokens(pb::ListTokensRequest::default())
            .await
            .unwrap_err(),
        c.revoke_token(revoke()).await.unwrap_err(),
        c.revoke_token(authed(revoke(), "lk_pat_nope"))
            .await
            .unwrap_err(),
    ];

    // Assert
    for s in refusals {
        assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
        assert_eq!(s.message(), "missing or invalid bearer token");
    }
    let still: Value = app
        .get(
            &format!("/v1/tokens/{}", view["id"].as_str().unwrap()),
            &app.admin_token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(still["state"], "active");
}

#[tokio::test]
async fn create_refuses_to_grant_bits_the_caller_lacks() {
    // Arrange
    let app = ibex_app().await;
    let (minter, _) = app
        .token_with(&app.admin_token, "minter", &["tokens:create"])
        .await;
    let mut c = client(&app).await;

    // Act
    let escalation = c
        .create_token(authed(create_req("wider", 1 | 4), &minter))
        .await
        .unwrap_err();
    let platform = c
        .create_token(authed(create_req("platform", 1 << 6), &minter))
        .await
        .unwrap_err();
    let within = c
        .create_token(authed(create_req("narrower", 1), &minter))
        .await;

    // Assert
    assert_eq!(escalation.code(), Code::PermissionDenied);
    assert!(
        escalation.message().contains("tokens:read"),
        "{escalation:?}"
    );
    assert_eq!(platform.code(), Code::PermissionDenied);
    assert!(within.is_ok(), "{within:?}");
}

#[tokio::test]
async fn another_orgs_token_answers_not_found_like_a_token_that_never_existed() {
    // Arrange
    let app = ibex_app().await;
    let (org_b, admin_b) = app.second_org("acme").await;
    let (_, in_a) = app.token_with(&app.admin_token, "in a", &[]).await;
    let in_a_id = in_a["id"].as_str().unwrap().to_string();
    let mut c = client(&app).await;
    let revoke = |org_id: String, token_id: String| pb::RevokeTokenRequest { org_id, token_id };

    // Act
    let cross = c
        .revoke_token(authed(revoke(String::new(), in_a_id.clone()), &admin_b))
        .await
        .unwrap_err();
    let cross_named = c
        .revoke_token(authed(
            revoke(app.org_id.to_string(), in_a_id.clone()),
            &admin_b,
        ))
        .await
        .unwrap_err();
    let missing = c
        .revoke_token(authed(
            revoke(String::new(), Uuid::now_v7().to_string()),
            &admin_b,
        ))
        .await
        .unwrap_err();
    let other_list = c
        .list_tokens(authed(
            pb::ListTokensRequest {
                org_id: app.org_id.to_string(),
                ..Default::default()
            },
            &admin_b,
        ))
        .await
        .unwrap_err();
    let own_list = c
        .list_tokens(authed(
            pb::ListTokensRequest {
                org_id: org_b.to_string(),
                ..Default::default()
            },
            &admin_b,
        ))
        .await
        .unwrap()
        .into_inner();

    // Assert
    for s in [&cross, &cross_named, &other_list] {
        assert_eq!(
            (s.code(), s.message()),
            (missing.code(), missing.message()),
            "{s:?}"
        );
    }
    assert_eq!(missing.code(), Code::NotFound);
    assert!(own_list.tokens.iter().all(|t| t.token_id != in_a_id));
    let still: Value = app
        .get(&format!("/v1/tokens/{in_a_id}"), &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(still["state"], "active");
}

#[tokio::test]
async fn list_tokens_pages_by_limit_and_cursor_through_every_token_once_newest_first() {
    // Arrange
    let app = ibex_app().await;
    let (org_b, admin_b) = app.second_org("pages").await;
    let mut created = Vec::new();
    for i in 0..5 {
        let (_, v) = app
            .create_token(
                &admin_b,
                json!({"org_id": org_b, "name": format!("page {i}")}),
            )
            .await;
        created.push(v["id"].as_str().unwrap().to_string());
    }
    let mut c = client(&app).await;

    // Act
    let mut pages = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = c
            .list_tokens(authed(
                pb::ListTokensRequest {
                    org_id: org_b.to_string(),
                    limit: 2,
                    cursor: cursor.clone(),
                },
                &admin_b,
            ))
            .await
            .unwrap()
            .into_inner();
        pages.push(
            page.tokens
                .iter()
                .map(|t| t.token_id.clone())
                .collect::<Vec<_>>(),
        );
        if page.next_cursor.is_empty() || pages.len() > 10 {
            break;
        }
        cursor = page.next_cursor;
    }
    let negative = c
        .list_tokens(authed(
            pb::ListTokensRequest {
                limit: -1,
                ..Default::default()
            },
            &admin_b,
        ))
        .await
        .unwrap_err();

    // Assert: the org admin token and the five, two at a time.
    assert!(pages.iter().all(|p| p.len() <= 2), "{pages:?}");
    let all: Vec<String> = pages.into_iter().flatten().collect();
    assert_eq!(all.len(), 6, "{all:?}");
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 6);
    let mut newest_first = created.clone();
    newest_first.reverse();
    assert_eq!(all[..5], newest_first[..]);
    assert_eq!(negative.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn without_the_flag_the_ibex_service_is_unimplemented() {
    // Arrange
    let app = spawn_app().await;
    let (token, _) = app.token_with(&app.admin_token, "native", &[]).await;
    let mut c = client(&app).await;

    // Act
    let validate = c.validate_token(validate_req(&token)).await.unwrap_err();
    let list = c
        .list_tokens(authed(pb::ListTokensRequest::default(), &app.admin_token))
        .await
        .unwrap_err();
    let create = c
        .create_token(authed(create_req("x", 0), &app.admin_token))
        .await
        .unwrap_err();

    // Assert
    for s in [validate, list, create] {
        assert_eq!(s.code(), Code::Unimplemented, "{s:?}");
    }
}

async fn channel(app: &TestApp) -> Channel {
    Channel::from_shared(app.address.clone())
        .unwrap()
        .connect()
        .await
        .expect("gRPC connect")
}

/// The services server reflection (v1) lists.
async fn reflected_services(app: &TestApp) -> Vec<String> {
    let mut c = ServerReflectionClient::new(channel(app).await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = c
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let answer: ServerReflectionResponse = answers.message().await.unwrap().unwrap();
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("not a service list: {other:?}"),
    }
}

#[tokio::test]
async fn reflection_lists_the_ibex_service_only_when_it_is_served() {
    // Arrange
    let with = ibex_app().await;
    let without = spawn_app().await;

    // Act
    let on = reflected_services(&with).await;
    let off = reflected_services(&without).await;

    // Assert
    assert!(
        on.contains(&"ibex.auth.v1.AuthService".to_string()),
        "{on:?}"
    );
    assert!(
        on.contains(&"latchkey.auth.v1.AuthService".to_string()),
        "{on:?}"
    );
    assert!(
        !off.contains(&"ibex.auth.v1.AuthService".to_string()),
        "{off:?}"
    );
    assert!(
        off.contains(&"latchkey.auth.v1.AuthService".to_string()),
        "{off:?}"
    );
}

#[tokio::test]
async fn the_health_service_reports_the_ibex_service_serving_only_when_it_is_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    // Arrange
    let with = ibex_app().await;
    let without = spawn_app().await;
    let check = || HealthCheckRequest {
        service: "ibex.auth.v1.AuthService".into(),
    };

    // Act
    let on = HealthClient::new(channel(&with).await)
        .check(check())
        .await
        .unwrap()
        .into_inner();
    let off = HealthClient::new(channel(&without).await)
        .check(check())
        .await
        .unwrap_err();

    // Assert
    assert_eq!(on.status, ServingStatus::Serving as i32);
    assert_eq!(off.code(), Code::NotFound);
}
