//! People over gRPC: inviting users, setting and exchanging passwords, reading and managing
//! users, and tokens owned by users, through the generated tonic client against the real binary.

use latchkey::grpc::pb;
use latchkey::grpc::pb::auth_service_client::AuthServiceClient;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

const PASSWORD: &str = "correct horse battery staple";

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

fn invite(email: &str, role: pb::UserRole) -> pb::CreateUserRequest {
    pb::CreateUserRequest {
        email: email.into(),
        name: email.split('@').next().unwrap().into(),
        role: role as i32,
        ..Default::default()
    }
}

fn exchange(
    email: &str,
    password: &str,
    name: &str,
    scopes: &[&str],
) -> pb::ExchangePasswordRequest {
    pb::ExchangePasswordRequest {
        email: email.into(),
        password: password.into(),
        name: name.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
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

/// A user invited by `inviter` into `org_id` (empty: the inviter's org) who has set
/// [`PASSWORD`], and a token (`<local part> cli`) it minted with `scopes` by exchanging that
/// password.
async fn signed_in_user(
    c: &mut AuthServiceClient<Channel>,
    inviter: &str,
    org_id: &str,
    email: &str,
    role: pb::UserRole,
    scopes: &[&str],
) -> (pb::User, String) {
    let mut req = invite(email, role);
    req.org_id = org_id.into();
    let created = c
        .create_user(authed(req, inviter))
        .await
        .unwrap()
        .into_inner();
    c.setup_password(pb::SetupPasswordRequest {
        setup_token: created.setup_token,
        password: PASSWORD.into(),
    })
    .await
    .unwrap();
    // Token names are unique in an org, not per user.
    let name = format!("{} cli", email.split('@').next().unwrap());
    let token = c
        .exchange_password(exchange(email, PASSWORD, &name, scopes))
        .await
        .unwrap()
        .into_inner();
    (created.user.unwrap(), token.plaintext)
}

/// A second org, created by the platform admin over REST.
async fn other_org(app: &TestApp, name: &str) -> String {
    let res = app
        .post("/v1/orgs", &app.admin_token, json!({ "name": name }))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let org: Value = res.json().await.unwrap();
    org["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn an_invited_user_sets_a_password_and_exchanges_it_for_a_token_it_owns() {
    // Arrange
    let app = spawn_app().await;
    let mut c = client(&app).await;

    // Act
    let created = c
        .create_user(authed(
            invite("ada@example.com", pb::UserRole::Member),
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let invited = created.user.clone().unwrap();
    let set = c
        .setup_password(pb::SetupPasswordRequest {
            setup_token: created.setup_token.clone(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let reused = c
        .setup_password(pb::SetupPasswordRequest {
            setup_token: created.setup_token.clone(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    let minted = c
        .exchange_password(exchange(
            "ada@example.com",
            PASSWORD,
            "ada laptop",
            &["tokens:read"],
        ))
        .await
        .unwrap()
        .into_inner();
    let token = minted.token.unwrap();
    let valid = validate(&mut c, &minted.plaintext).await;

    // Assert
    assert_eq!(invited.email, "ada@example.com");
    assert_eq!(invited.org_id, app.org_id.to_string());
    assert_eq!(invited.role, pb::UserRole::Member as i32);
    assert_eq!(invited.state, pb::UserState::Invited as i32);
    assert!(!invited.platform_admin);
    assert!(invited.scopes.contains(&"tokens:create".to_string()));
    assert!(created.setup_url.ends_with(&created.setup_token));
    assert!(created.setup_expires_at.is_some());
    assert_eq!(set.id, invited.id);
    assert_eq!(set.state, pb::UserState::Active as i32);
    assert_eq!(reused.code(), Code::InvalidArgument);
    assert!(minted.plaintext.starts_with("lk_pat_"));
    assert_eq!(token.owner, invited.id);
    assert_eq!(token.created_by, format!("user:{}", invited.id));
    assert_eq!(token.scopes, vec!["tokens:read"]);
    assert!(token.expires_at.is_some(), "password tokens always expire");
    assert_eq!(valid.code, pb::ValidationCode::Valid as i32);
    assert_eq!(valid.token_id, token.id);
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_email_get_the_same_unauthenticated_answer() {
    // Arrange
    let app = spawn_app().await;
    let mut c = client(&app).await;
    signed_in_user(
        &mut c,
        &app.admin_token,
        "",
        "bob@example.com",
        pb::UserRole::Member,
        &[],
    )
    .await;

    // Act
    let wrong = c
        .exchange_password(exchange("bob@example.com", "not the password", "t1", &[]))
        .await
        .unwrap_err();
    let unknown = c
        .exchange_password(exchange("nobody@example.com", PASSWORD, "t2", &[]))
        .await
        .unwrap_err();

    // Assert
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert_eq!(
        (wrong.code(), wrong.message()),
        (unknown.code(), unknown.message())
    );
    assert_eq!(wrong.message(), "invalid email or password");
}

#[tokio::test]
async fn the_password_rpcs_need_no_bearer_and_ignore_an_invalid_one() {
    // Arrange
    let app = spawn_app().await;
    let mut c = client(&app).await;
    let created = c
        .create_user(authed(
            invite("cy@example.com", pb::UserRole::Member),
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();

    // Act
    let set = c
        .setup_password(authed(
            pb::SetupPasswordRequest {
                setup_token: created.setup_token,
                password: PASSWORD.into(),
            },
            "garbage",
        ))
        .await;
    let minted = c
        .exchange_password(authed(
            exchange("cy@example.com", PASSWORD, "cy", &[]),
            "garbage",
        ))
        .await;

    // Assert
    assert!(set.is_ok(), "{set:?}");
    assert!(minted.is_ok(), "{minted:?}");
}

#[tokio::test]
async fn user_rpcs_without_a_valid_bearer_are_unauthenticated() {
    // Arrange
    let app = spawn_app().await;
    let mut c = client(&app).await;

    // Act
    let cases = [
        c.create_user(invite("eve@example.com", pb::UserRole::Admin))
            .await
            .unwrap_err(),
        c.create_user(authed(
            invite("eve@example.com", pb::UserRole::Admin),
            "garbage",
        ))
        .await
        .unwrap_err(),
        c.list_users(pb::ListUsersRequest::default())
            .await
            .unwrap_err(),
        c.get_current_user(pb::GetCurrentUserRequest {})
            .await
            .unwrap_err(),
        c.change_password(pb::ChangePasswordRequest {
            current_password: PASSWORD.into(),
            new_password: "another long password".into(),
        })
        .await
        .unwrap_err(),
    ];

    // Assert
    for s in cases {
        assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
        assert_eq!(s.message(), "missing or invalid bearer token");
    }
}

#[tokio::test]
async fn an_admin_lists_gets_and_promotes_users_and_a_user_reads_itself() {
    // Arrange
    let app = spawn_app().await;
    let mut c = client(&app).await;
    let (dee, dee_token) = signed_in_user(
        &mut c,
        &app.admin_token,
        "",
        "dee@example.com",
        pb::UserRole::Member,
        &["tokens:read"],
    )
    .await;
    let (fay, _) = signed_in_user(
        &mut c,
        &app.admin_token,
        "",
        "fay@example.com",
        pb::UserRole::Member,
        &[],
    )
    .await;

    // Act
    let listed = c
        .list_users(authed(pb::ListUsersRequest::default(), &app.admin_token))
        .await
        .unwrap()
        .into_inner();
    let first_page = c
        .list_users(authed(
            pb::ListUsersRequest {
                page_size: 1,
                ..Default::default()
            },
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let got = c
        .get_user(authed(
            pb::GetUserRequest {
                user_id: dee.id.clone(),
            },
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let own = c
        .get_user(authed(
            pb::GetUserRequest {
                user_id: dee.id.clone(),
            },
            &dee_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let current = c
        .get_current_user(authed(pb::GetCurrentUserRequest {}, &dee_token))
        .await
        .unwrap()
        .into_inner();
    let ownerless = c
        .get_current_user(authed(pb::GetCurrentUserRequest {}, &app.admin_token))
        .await
        .unwrap_err();
    let promoted = c
        .update_user(authed(
            pb::UpdateUserRequest {
                user_id: fay.id.clone(),
                name: Some("Fay Admin".into()),
                role: Some(pb::UserRole::Admin as i32),
            },
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let untouched = c
        .update_user(authed(
            pb::UpdateUserRequest {
                user_id: fay.id.clone(),
                ..Default::default()
            },
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();

    // Assert
    let ids: Vec<_> = listed.users.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(ids, vec![fay.id.as_str(), dee.id.as_str()], "newest first");
    assert!(listed.next_page_token.is_empty());
    assert_eq!(first_page.users.len(), 1);
    assert!(!first_page.next_page_token.is_empty());
    assert_eq!(got, as_after_sign_in(&got, &dee));
    assert_eq!(own.id, dee.id);
    assert_eq!(current.id, dee.id);
    assert_eq!(current.email, "dee@example.com");
    assert!(current.last_login_at.is_some());
    assert_eq!(ownerless.code(), Code::NotFound);
    assert_eq!(promoted.role, pb::UserRole::Admin as i32);
    assert_eq!(promoted.name, "Fay Admin");
    assert!(promoted.scopes.contains(&"users:manage".to_string()));
    assert_eq!(untouched, promoted);
}

/// `invited` as it reads after it signed in: the same but for `state` and `last_login_at`.
fn as_after_sign_in(after: &pb::User, invited: &pb::User) -> pb::User {
    pb::User {
        state: after.state,
        last_login_at: after.last_login_at,
        ..invited.clone()
    }
}

#[tokio::test]
async fn disabling_a_user_revokes_its_tokens_and_refuses_its_password() {
    // Arrange
    let app = spawn_app().await;
    let mut c = client(&app).await;
    let (gil, gil_token) = signed_in_user(
        &mut c,
        &app.admin_token,
        "",
        "gil@example.com",
        pb::UserRole::Member,
        &["tokens:read"],
    )
    .await;
    assert_eq!(
        validate(&mut c, &gil_token).await.code,
        pb::ValidationCode::Valid as i32
    );

    // Act
    let disabled = c
        .disable_user(authed(
            pb::DisableUserRequest {
                user_id: gil.id.clone(),
            },
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let after = validate(&mut c, &gil_token).await;
    let as_bearer = c
        .get_current_user(authed(pb::GetCurrentUserRequest {}, &gil_token))
        .await
        .unwrap_err();
    let exchange_disabled = c
        .exchange_password(exchange("gil@example.com", PASSWORD, "again", &[]))
        .await
        .unwrap_err();
    let enabled = c
        .enable_user(authed(
            pb::EnableUserRequest {
                user_id: gil.id.clone(),
            },
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let after_enable = validate(&mut c, &gil_token).await;
    let exchange_enabled = c
        .exchange_password(exchange("gil@example.com", PASSWORD, "again", &[]))
        .await;

    // Assert
    assert_eq!(disabled.state, pb::UserState::Disabled as i32);
    assert!(disabled.disabled_at.is_some());
    assert_eq!(after.code, pb::ValidationCode::Invalid as i32);
    assert_eq!(as_bearer.code(), Code::Unauthenticated);
    assert_eq!(exchange_disabled.code(), Code::Unauthenticated);
    assert_eq!(exchange_disabled.message(), "invalid email or password");
    assert_eq!(enabled.state, pb::UserState::Active as i32);
    assert!(enabled.disabled_at.is_none());
    assert_eq!(
        after_enable.code,
        pb::ValidationCode::Invalid as i32,
        "revoked tokens stay revoked"
    );
    assert!(exchange_enabled.is_ok(), "{exchange_enabled:?}");
}

#[tokio::test]
async fn a_member_may_not_read_other_users_and_another_orgs_admin_finds_none() {
    // Arrange
    let app = spawn_app().await;
    let mut c = client(&app).await;
    let (hal, hal_token) = signed_in_user(
        &mut c,
        &app.admin_token,
        "",
        "hal@example.com",
        pb::UserRole::Member,
        &["tokens:read"],
    )
    .await;
    let (ivy, _) = signed_in_user(
        &mut c,
        &app.admin_token,
        "",
        "ivy@example.com",
        pb::UserRole::Member,
        &[],
    )
    .await;
    let acme = other_org(&app, "acme").await;
    let (_, acme_admin) = signed_in_user(
        &mut c,
        &app.admin_token,
        &acme,
        "jo@acme.example",
        pb::UserRole::Admin,
        &["users:read", "users:manage"],
    )
    .await;
    let get = |id: &str, token: &str| {
        authed(
            pb::GetUserRequest {
                user_id: id.to_string(),
            },
            token,
        )
    };
    let never = uuid::Uuid::now_v7().to_string();

    // Act
    let member_list = c
        .list_users(authed(pb::ListUsersRequest::default(), &hal_token))
        .await
        .unwrap_err();
    let member_other = c.get_user(get(&ivy.id, &hal_token)).await.unwrap_err();
    let member_never = c.get_user(get(&never, &hal_token)).await.unwrap_err();
    let member_disable = c
        .disable_user(authed(
            pb::DisableUserRequest {
                user_id: ivy.id.clone(),
            },
            &hal_token,
        ))
        .await
        .unwrap_err();
    let cross_org = c.get_user(get(&hal.id, &acme_admin)).await.unwrap_err();
    let cross_never = c.get_user(get(&never, &acme_admin)).await.unwrap_err();
    let cross_disable = c
        .disable_user(authed(
            pb::DisableUserRequest {
                user_id: hal.id.clone(),
            },
            &acme_admin,
        ))
        .await
        .unwrap_err();
    let acme_list = c
        .list_users(authed(pb::ListUsersRequest::default(), &acme_admin))
        .await
        .unwrap()
        .into_inner();

    // Assert
    assert_eq!(member_list.code(), Code::PermissionDenied);
    assert!(member_list.message().contains("users:read"));
    // A member is refused before the lookup, so the refusal says nothing about the id.
    assert_eq!(member_other.code(), Code::PermissionDenied);
    assert_eq!(
        (member_other.code(), member_other.message()),
        (member_never.code(), member_never.message())
    );
    assert_eq!(member_disable.code(), Code::PermissionDenied);
    assert_eq!(cross_org.code(), Code::NotFound);
    assert_eq!(
        (cross_org.code(), cross_org.message()),
        (cross_never.code(), cross_never.message())
    );
    assert_eq!(cross_disable.code(), Code::NotFound);
    assert_eq!(acme_list.users.len(), 1);
    assert_eq!(acme_list.users[0].email, "jo@acme.example");
    assert_eq!(
        validate(&mut c, &hal_token).await.code,
        pb::ValidationCode::Valid as i32
    );
}

#[tokio::test]
async fn malformed_user_ids_roles_and_owners_are_invalid_argument() {
    // Arrange
    let app = spawn_app().await;
    let mut c = client(&app).await;
    let admin = app.admin_token.clone();
    let mut bad_role = invite("kim@example.com", pb::UserRole::Member);
    bad_role.role = 9;
    let mut bad_org = invite("kim@example.com", pb::UserRole::Member);
    bad_org.org_id = "not-a-uuid".into();
    let mut bad_type = exchange("kim@example.com", PASSWORD, "k", &[]);
    bad_type.r#type = 7;

    // Act
    let cases = [
        c.get_user(authed(
            pb::GetUserRequest {
                user_id: "12".into(),
            },
            &admin,
        ))
        .await
        .unwrap_err(),
        c.update_user(authed(
            pb::UpdateUserRequest {
                user_id: "nope".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap_err(),
        c.update_user(authed(
            pb::UpdateUserRequest {
                user_id: uuid::Uuid::now_v7().to_string(),
                role: Some(pb::UserRole::Unspecified as i32),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap_err(),
        c.disable_user(authed(pb::DisableUserRequest::default(), &admin))
            .await
            .unwrap_err(),
        c.enable_user(authed(
            pb::EnableUserRequest {
                user_id: "x".into(),
            },
            &admin,
        ))
        .await
        .unwrap_err(),
        c.create_user(authed(bad_role, &admin)).await.unwrap_err(),
        c.create_user(authed(bad_org, &admin)).await.unwrap_err(),
        c.create_user(authed(invite("not an email", pb::UserRole::Member), &admin))
            .await
            .unwrap_err(),
        c.list_users(authed(
            pb::ListUsersRequest {
                page_size: -1,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap_err(),
        c.list_tokens(authed(
            pb::ListTokensRequest {
                owner: "someone".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap_err(),
        c.exchange_password(bad_type).await.unwrap_err(),
        c.setup_password(pb::SetupPasswordRequest {
            setup_token: "never issued".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err(),
    ];

    // Assert
    for s in cases {
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    }
}

#[tokio::test]
async fn list_tokens_with_owner_me_shows_only_the_callers_own_tokens() {
    // Arrange
    let app = spawn_app().await;
    let mut c = client(&app).await;
    let (lou, lou_token) = signed_in_user(
        &mut c,
        &app.admin_token,
        "",
        "lou@example.com",
        pb::UserRole::Member,
        &["tokens:read", "tokens:create"],
    )
    .await;
    let second = c
        .exchange_password(exchange("lou@example.com", PASSWORD, "second", &[]))
        .await
        .unwrap()
        .into_inner();
    let machine = c
        .create_token(authed(
            pb::CreateTokenRequest {
                name: "machine".into(),
                permissions: 4,
                ..Default::default()
            },
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();

    // Act
    let mine = c
        .list_tokens(authed(
            pb::ListTokensRequest {
                owner: "me".into(),
                ..Default::default()
            },
            &lou_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let by_id = c
        .list_tokens(authed(
            pb::ListTokensRequest {
                owner: lou.id.clone(),
                ..Default::default()
            },
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let everything = c
        .list_tokens(authed(pb::ListTokensRequest::default(), &app.admin_token))
        .await
        .unwrap()
        .into_inner();
    let me_without_a_user = c
        .list_tokens(authed(
            pb::ListTokensRequest {
                owner: "me".into(),
                ..Default::default()
            },
            &app.admin_token,
        ))
        .await
        .unwrap_err();

    // Assert
    let names = |p: &pb::ListTokensResponse| -> Vec<String> {
        p.tokens.iter().map(|t| t.name.clone()).collect()
    };
    assert_eq!(names(&mine), vec!["second", "lou cli"]);
    assert!(mine.tokens.iter().all(|t| t.owner == lou.id));
    assert_eq!(second.token.unwrap().owner, lou.id);
    assert_eq!(names(&by_id), names(&mine));
    let machine_token = machine.token.unwrap();
    assert!(machine_token.owner.is_empty());
    assert!(everything.tokens.iter().any(|t| t.id == machine_token.id));
    assert_eq!(me_without_a_user.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_user_changes_its_own_password_and_only_the_new_one_works() {
    // Arrange
    let app = spawn_app().await;
    let mut c = client(&app).await;
    let (_, mo_token) = signed_in_user(
        &mut c,
        &app.admin_token,
        "",
        "mo@example.com",
        pb::UserRole::Member,
        &[],
    )
    .await;
    let new_password = "a different long passphrase";

    // Act
    let wrong_current = c
        .change_password(authed(
            pb::ChangePasswordRequest {
                current_password: "not the password".into(),
                new_password: new_password.into(),
            },
            &mo_token,
        ))
        .await
        .unwrap_err();
    let too_short = c
        .change_password(authed(
            pb::ChangePasswordRequest {
                current_password: PASSWORD.into(),
                new_password: "short".into(),
            },
            &mo_token,
        ))
        .await
        .unwrap_err();
    let changed = c
        .change_password(authed(
            pb::ChangePasswordRequest {
                current_password: PASSWORD.into(),
                new_password: new_password.into(),
            },
            &mo_token,
        ))
        .await;
    let with_old = c
        .exchange_password(exchange("mo@example.com", PASSWORD, "old", &[]))
        .await
        .unwrap_err();
    let with_new = c
        .exchange_password(exchange("mo@example.com", new_password, "new", &[]))
        .await;
    let no_user = c
        .change_password(authed(
            pb::ChangePasswordRequest {
                current_password: PASSWORD.into(),
                new_password: new_password.into(),
            },
            &app.admin_token,
        ))
        .await
        .unwrap_err();

    // Assert
    assert_eq!(wrong_current.code(), Code::PermissionDenied);
    assert_eq!(too_short.code(), Code::InvalidArgument);
    assert!(changed.is_ok(), "{changed:?}");
    assert_eq!(with_old.code(), Code::Unauthenticated);
    assert!(with_new.is_ok(), "{with_new:?}");
    assert_eq!(no_user.code(), Code::NotFound);
}

#[tokio::test]
async fn the_password_exchange_is_limited_per_address_and_audited_with_it() {
    // Arrange
    let app = spawn_app_with(&["--rate-limit-login-per-15m", "1"]).await;
    let mut c = client(&app).await;
    let created = c
        .create_user(authed(
            invite("nia@example.com", pb::UserRole::Member),
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let user_id = created.user.unwrap().id;
    c.setup_password(pb::SetupPasswordRequest {
        setup_token: created.setup_token,
        password: PASSWORD.into(),
    })
    .await
    .unwrap();

    // Act
    let first = c
        .exchange_password(exchange("nia@example.com", PASSWORD, "one", &[]))
        .await;
    let limited = c
        .exchange_password(exchange("nia@example.com", PASSWORD, "two", &[]))
        .await
        .unwrap_err();
    let events = c
        .list_audit_events(authed(
            pb::ListAuditEventsRequest {
                action: "login_succeeded".into(),
                ..Default::default()
            },
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;

    // Assert
    assert!(first.is_ok(), "{first:?}");
    assert_eq!(limited.code(), Code::ResourceExhausted);
    assert!(limited.metadata().get("retry-after").is_some());
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].actor, format!("user:{user_id}"));
    assert_eq!(events[0].ip, "127.0.0.1");
    assert!(
        events[0].user_agent.contains("tonic"),
        "{:?}",
        events[0].user_agent
    );
}

#[tokio::test]
async fn the_password_rpcs_take_the_management_limit_but_validate_does_not() {
    // Arrange
    let app = spawn_app_with(&["--rate-limit-per-second", "1", "--rate-limit-burst", "2"]).await;
    let mut c = client(&app).await;
    let bogus_setup = || pb::SetupPasswordRequest {
        setup_token: "never issued".into(),
        password: PASSWORD.into(),
    };

    // Act
    // Two quick calls (a bogus setup token costs no hash) empty the burst.
    let first = c.setup_password(bogus_setup()).await.unwrap_err();
    let second = c.setup_password(bogus_setup()).await.unwrap_err();
    let exchange_refused = c
        .exchange_password(exchange("nobody@example.com", PASSWORD, "t", &[]))
        .await
        .unwrap_err();
    let validated = validate(&mut c, &app.admin_token).await;

    // Assert
    assert_eq!(first.code(), Code::InvalidArgument);
    assert_eq!(second.code(), Code::InvalidArgument);
    assert_eq!(exchange_refused.code(), Code::ResourceExhausted);
    assert!(exchange_refused.metadata().get("retry-after").is_some());
    assert_eq!(validated.code, pb::ValidationCode::Valid as i32);
}
