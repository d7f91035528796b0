//! The gRPC AuthService on the same port as REST, through a generated tonic client.

use latchkey::grpc::pb;
use latchkey::grpc::pb::auth_service_client::AuthServiceClient;
use prost::Message;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::helpers::{TestApp, error_of, spawn_app};

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

fn create_req(name: &str, permissions: i64) -> pb::CreateTokenRequest {
    pb::CreateTokenRequest {
        name: name.into(),
        r#type: pb::TokenType::Pat as i32,
        permissions,
        ..Default::default()
    }
}

async fn validate(c: &mut AuthServiceClient<Channel>, token: &str) -> pb::ValidateTokenResponse {
    c.validate_token(pb::ValidateTokenRequest {
        token: token.into(),
        required_scopes: vec![],
    })
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test]
async fn create_validate_revoke_then_the_revoked_bearer_is_unauthenticated() {
    // Arrange
    let app = spawn_app().await;
    let mut c = client(&app).await;

    // Act
    let created = c
        .create_token(authed(create_req("grpc pat", 4), &app.admin_token))
        .await
        .unwrap()
        .into_inner();
    let plaintext = created.plaintext.clone();
    let token = created.token.unwrap();
    let valid = validate(&mut c, &plaintext).await;
    let listed = c
        .list_tokens(authed(pb::ListTokensRequest::default(), &plaintext))
        .await;
    c.revoke_token(authed(
        pb::RevokeTokenRequest {
            org_id: String::new(),
            token_id: token.id.clone(),
        },
        &app.admin_token,
    ))
    .await
    .unwrap();
    let after = validate(&mut c, &plaintext).await;
    let refused = c
        .list_tokens(authed(pb::ListTokensRequest::default(), &plaintext))
        .await
        .unwrap_err();

    // Assert
    assert!(plaintext.starts_with("lk_pat_"));
    assert_eq!(token.permissions, 4);
    assert_eq!(token.scopes, vec!["tokens:read"]);
    assert_eq!(valid.code, pb::ValidationCode::Valid as i32);
    assert_eq!(valid.token_id, token.id);
    assert!(listed.is_ok());
    assert_eq!(after.code, pb::ValidationCode::Invalid as i32);
    assert!(!after.valid);
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(refused.message(), "missing or invalid bearer token");
}

#[tokio::test]
async fn the_plaintext_is_returned_once_and_never_by_get_or_list() {
    let app = spawn_app().await;
    let mut c = client(&app).await;
    let created = c
        .create_token(authed(create_req("once", 0), &app.admin_token))
        .await
        .unwrap()
        .into_inner();
    let id = created.token.unwrap().id;
    let got = c
        .get_token(authed(
            pb::GetTokenRequest {
                org_id: String::new(),
                token_id: id.clone(),
            },
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let listed = c
        .list_tokens(authed(pb::ListTokensRequest::default(), &app.admin_token))
        .await
        .unwrap()
        .into_inner();
    let secret = &created.plaintext[created.plaintext.len() - 49..];
    for bytes in [got.encode_to_vec(), listed.encode_to_vec()] {
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
    assert_eq!(got.id, id);
    assert!(listed.tokens.iter().any(|t| t.id == id));
}

#[tokio::test]
async fn cross_org_revoke_is_not_found_and_escalation_is_permission_denied() {
    // Arrange
    let app = spawn_app().await;
    let (_, admin_b) = app.second_org("acme").await;
    let mut c = client(&app).await;
    let in_a = c
        .create_token(authed(create_req("in a", 0), &app.admin_token))
        .await
        .unwrap()
        .into_inner();

    // Act
    let cross = c
        .revoke_token(authed(
            pb::RevokeTokenRequest {
                org_id: String::new(),
                token_id: in_a.token.unwrap().id,
            },
            &admin_b,
        ))
        .await
        .unwrap_err();
    let missing = c
        .revoke_token(authed(
            pb::RevokeTokenRequest {
                org_id: String::new(),
                token_id: uuid::Uuid::now_v7().to_string(),
            },
            &admin_b,
        ))
        .await
        .unwrap_err();
    let escalation = c
        .create_token(authed(create_req("up", 1 << 6), &admin_b))
        .await
        .unwrap_err();

    // Assert
    assert_eq!(cross.code(), Code::NotFound);
    assert_eq!(
        (cross.code(), cross.message()),
        (missing.code(), missing.message())
    );
    assert_eq!(escalation.code(), Code::PermissionDenied);
    assert!(escalation.message().contains("platform:admin"));
    assert_eq!(
        validate(&mut c, &in_a.plaintext).await.code,
        pb::ValidationCode::Valid as i32
    );
}

#[tokio::test]
async fn malformed_input_is_invalid_argument() {
    let app = spawn_app().await;
    let mut c = client(&app).await;
    let mut bad_org = create_req("x", 0);
    bad_org.org_id = "not-a-uuid".into();
    let mut bad_type = create_req("x", 0);
    bad_type.r#type = 7;
    let cases = [
        c.create_token(authed(bad_org, &app.admin_token))
            .await
            .unwrap_err(),
        c.create_token(authed(bad_type, &app.admin_token))
            .await
            .unwrap_err(),
        c.create_token(authed(create_req("", 0), &app.admin_token))
            .await
            .unwrap_err(),
        c.get_token(authed(
            pb::GetTokenRequest {
                org_id: String::new(),
                token_id: "12".into(),
            },
            &app.admin_token,
        ))
        .await
        .unwrap_err(),
        c.list_tokens(authed(
            pb::ListTokensRequest {
                page_size: -1,
                ..Default::default()
            },
            &app.admin_token,
        ))
        .await
        .unwrap_err(),
    ];
    for s in cases {
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    }
}

#[tokio::test]
async fn rpcs_without_a_bearer_are_unauthenticated_except_validate() {
    let app = spawn_app().await;
    let mut c = client(&app).await;
    let s = c.create_token(create_req("x", 0)).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    let s = c
        .revoke_current_token(pb::RevokeCurrentTokenRequest {})
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    let s = c
        .list_tokens(authed(pb::ListTokensRequest::default(), "garbage"))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    assert_eq!(
        validate(&mut c, "garbage").await.code,
        pb::ValidationCode::Invalid as i32
    );
}

#[tokio::test]
async fn a_token_revokes_itself_over_grpc() {
    let app = spawn_app().await;
    let mut c = client(&app).await;
    let t = c
        .create_token(authed(create_req("self", 0), &app.admin_token))
        .await
        .unwrap()
        .into_inner();
    let revoked = c
        .revoke_current_token(authed(pb::RevokeCurrentTokenRequest {}, &t.plaintext))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.state, pb::TokenState::Revoked as i32);
    assert_eq!(
        validate(&mut c, &t.plaintext).await.code,
        pb::ValidationCode::Invalid as i32
    );
}

#[tokio::test]
async fn rotate_disable_enable_and_audit_work_over_grpc() {
    // Arrange
    let app = spawn_app().await;
    let mut c = client(&app).await;
    let created = c
        .create_token(authed(create_req("rotating", 4), &app.admin_token))
        .await
        .unwrap()
        .into_inner();
    let old_id = created.token.unwrap().id;

    // Act
    let rotated = c
        .rotate_token(authed(
            pb::RotateTokenRequest {
                org_id: String::new(),
                token_id: old_id.clone(),
                grace_seconds: Some(0),
            },
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let new = rotated.token.clone().unwrap();
    let disabled = c
        .disable_token(authed(
            pb::DisableTokenRequest {
                org_id: String::new(),
                token_id: new.id.clone(),
            },
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let while_disabled = validate(&mut c, &rotated.plaintext).await;
    c.enable_token(authed(
        pb::EnableTokenRequest {
            org_id: String::new(),
            token_id: new.id.clone(),
        },
        &app.admin_token,
    ))
    .await
    .unwrap();
    let events = c
        .list_audit_events(authed(
            pb::ListAuditEventsRequest {
                token_id: old_id.clone(),
                ..Default::default()
            },
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();

    // Assert
    assert_eq!(rotated.previous.unwrap().replaced_by, new.id);
    assert_eq!(
        validate(&mut c, &created.plaintext).await.code,
        pb::ValidationCode::Invalid as i32
    );
    assert_eq!(disabled.state, pb::TokenState::Disabled as i32);
    assert_eq!(while_disabled.code, pb::ValidationCode::Invalid as i32);
    assert_eq!(
        validate(&mut c, &rotated.plaintext).await.code,
        pb::ValidationCode::Valid as i32
    );
    let actions: Vec<&str> = events.events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, vec!["token_rotated", "token_created"]);
}

#[tokio::test]
async fn the_health_service_reports_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let app = spawn_app().await;
    let channel = Channel::from_shared(app.address.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut h = HealthClient::new(channel);
    for service in ["", "latchkey.auth.v1.AuthService"] {
        let r = h
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
}

/// The outcome of one step, as a transport-neutral code.
fn rest_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200 | 201 => "ok",
        400 => "invalid_argument",
        401 => "unauthenticated",
        403 => "permission_denied",
        404 => "not_found",
        409 => "already_exists",
        _ => "other",
    }
}

fn grpc_code<T>(r: &Result<T, tonic::Status>) -> &'static str {
    match r.as_ref().map_err(|s| s.code()) {
        Ok(_) => "ok",
        Err(Code::InvalidArgument) => "invalid_argument",
        Err(Code::Unauthenticated) => "unauthenticated",
        Err(Code::PermissionDenied) => "permission_denied",
        Err(Code::NotFound) => "not_found",
        Err(Code::AlreadyExists) => "already_exists",
        Err(_) => "other",
    }
}

#[tokio::test]
async fn rest_and_grpc_give_the_same_outcomes_for_the_same_calls() {
    // Arrange: one server, a reader token, and another org.
    let app = spawn_app().await;
    let (_, admin_b) = app.second_org("acme").await;
    let mut c = client(&app).await;

    // Act: the same sequence over REST...
    let mut rest = Vec::new();
    let res = app
        .post(
            "/v1/tokens",
            &app.admin_token,
            json!({"name": "p", "permissions": 4}),
        )
        .await;
    rest.push(rest_code(res.status()));
    let created: Value = res.json().await.unwrap();
    let (rt, rid) = (
        created["plaintext"].as_str().unwrap().to_string(),
        created["token"]["id"].as_str().unwrap().to_string(),
    );
    rest.push(rest_code(
        app.post("/v1/tokens", &app.admin_token, json!({"name": "p"}))
            .await
            .status(),
    ));
    rest.push(rest_code(
        app.post("/v1/tokens", &rt, json!({"name": "q"}))
            .await
            .status(),
    ));
    rest.push(rest_code(
        app.get(&format!("/v1/tokens/{rid}"), &admin_b)
            .await
            .status(),
    ));
    rest.push(rest_code(
        app.get("/v1/tokens?org_id=zz", &app.admin_token)
            .await
            .status(),
    ));
    rest.push(rest_code(
        app.delete(&format!("/v1/tokens/{rid}"), &app.admin_token)
            .await
            .status(),
    ));
    rest.push(rest_code(
        app.delete(&format!("/v1/tokens/{rid}"), &app.admin_token)
            .await
            .status(),
    ));
    rest.push(rest_code(app.get("/v1/tokens", &rt).await.status()));
    let rest_message = error_of(
        app.get(&format!("/v1/tokens/{rid}"), &admin_b).await,
        StatusCode::NOT_FOUND,
    )
    .await;

    // ...and over gRPC.
    let mut grpc = Vec::new();
    let r = c
        .create_token(authed(create_req("g", 4), &app.admin_token))
        .await;
    grpc.push(grpc_code(&r));
    let created = r.unwrap().into_inner();
    let (gt, gid) = (created.plaintext, created.token.unwrap().id);
    grpc.push(grpc_code(
        &c.create_token(authed(create_req("g", 0), &app.admin_token))
            .await,
    ));
    grpc.push(grpc_code(
        &c.create_token(authed(create_req("h", 0), &gt)).await,
    ));
    let get_req = || pb::GetTokenRequest {
        org_id: String::new(),
        token_id: gid.clone(),
    };
    grpc.push(grpc_code(&c.get_token(authed(get_req(), &admin_b)).await));
    grpc.push(grpc_code(
        &c.list_tokens(authed(
            pb::ListTokensRequest {
                org_id: "zz".into(),
                ..Default::default()
            },
            &app.admin_token,
        ))
        .await,
    ));
    let rev = || pb::RevokeTokenRequest {
        org_id: String::new(),
        token_id: gid.clone(),
    };
    grpc.push(grpc_code(
        &c.revoke_token(authed(rev(), &app.admin_token)).await,
    ));
    grpc.push(grpc_code(
        &c.revoke_token(authed(rev(), &app.admin_token)).await,
    ));
    grpc.push(grpc_code(
        &c.list_tokens(authed(pb::ListTokensRequest::default(), &gt))
            .await,
    ));
    let grpc_status = c.get_token(authed(get_req(), &admin_b)).await.unwrap_err();

    // Assert
    assert_eq!(
        rest,
        vec![
            "ok",
            "already_exists",
            "permission_denied",
            "not_found",
            "invalid_argument",
            "ok",
            "ok",
            "unauthenticated"
        ]
    );
    assert_eq!(grpc, rest);
    assert_eq!(grpc_status.message(), rest_message["error"]["message"]);
}
