//! `WatchChanges` (every change a verify cache may hold, pushed as it commits) and
//! `ReportUsage` (uses a client answered from its own cache).

use std::time::{Duration, Instant};

use latchkey::grpc::pb;
use latchkey::grpc::pb::auth_service_client::AuthServiceClient;
use latchkey::grpc::pb::watch_changes_response::Event;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::transport::Channel;
use tonic::{Code, Request, Streaming};

use crate::helpers::{TestApp, TestDatabase, postgres_admin_url, spawn_app, spawn_node};

/// How long a pushed change may take to arrive in these tests (the target is 100 ms; this
/// leaves room for a loaded CI machine).
const PUSH_LIMIT: Duration = Duration::from_secs(2);

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

async fn watch(
    app: &TestApp,
    token: &str,
    cursor: &str,
    org_id: &str,
) -> Result<Streaming<pb::WatchChangesResponse>, tonic::Status> {
    let req = pb::WatchChangesRequest {
        cursor: cursor.into(),
        org_id: org_id.into(),
    };
    client(app)
        .await
        .watch_changes(authed(req, token))
        .await
        .map(|r| r.into_inner())
}

/// The next message of the stream, within `limit`.
async fn next(
    stream: &mut Streaming<pb::WatchChangesResponse>,
    limit: Duration,
) -> pb::WatchChangesResponse {
    tokio::time::timeout(limit, stream.message())
        .await
        .expect("a message within the limit")
        .expect("the stream is healthy")
        .expect("the stream is open")
}

/// The changes of the next message that carries any, skipping heartbeats, within `limit`.
async fn next_changes(
    stream: &mut Streaming<pb::WatchChangesResponse>,
    limit: Duration,
) -> Vec<pb::TokenChange> {
    let until = Instant::now() + limit;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match next(stream, left).await.event {
            Some(Event::Changes(c)) => return c.changes,
            Some(_) => continue,
            None => panic!("a message without an event"),
        }
    }
}

async fn token(app: &TestApp, bearer: &str, name: &str, scopes: &[&str]) -> (String, String) {
    let (plaintext, view) = app
        .create_token(bearer, json!({ "name": name, "scopes": scopes }))
        .await;
    (plaintext, view["id"].as_str().unwrap().to_string())
}

fn kinds_of(changes: &[pb::TokenChange], id: &str) -> Vec<String> {
    changes
        .iter()
        .filter(|c| c.token_id == id)
        .map(|c| c.kind.clone())
        .collect()
}

#[tokio::test]
async fn a_new_watch_starts_with_a_heartbeat_and_hears_of_a_revocation_as_it_commits() {
    // Arrange
    let app = spawn_app().await;
    let (_, id) = token(&app, &app.admin_token, "doomed", &[]).await;
    let mut stream = watch(&app, &app.admin_token, "", "").await.unwrap();
    let first = next(&mut stream, PUSH_LIMIT).await;

    // Act
    let res = app
        .delete(&format!("/v1/tokens/{id}"), &app.admin_token)
        .await;
    let revoked_at = Instant::now();
    let changes = next_changes(&mut stream, PUSH_LIMIT).await;

    // Assert
    assert!(
        matches!(first.event, Some(Event::Heartbeat(_))),
        "{first:?}"
    );
    assert!(!first.cursor.is_empty());
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(kinds_of(&changes, &id), ["token_revoked"]);
    assert_eq!(changes[0].org_id, app.org_id.to_string());
    assert!(changes[0].at.is_some());
    assert!(revoked_at.elapsed() < PUSH_LIMIT);
}

#[tokio::test]
async fn rotation_disable_enable_and_a_family_revocation_are_each_pushed_for_every_token_they_touch()
 {
    // Arrange
    let app = spawn_app().await;
    let (_, old) = token(&app, &app.admin_token, "rotated", &[]).await;
    let mut stream = watch(&app, &app.admin_token, "", "").await.unwrap();
    next(&mut stream, PUSH_LIMIT).await;

    // Act + Assert, one change at a time.
    let rotated: Value = app
        .post(
            &format!("/v1/tokens/{old}/rotate"),
            &app.admin_token,
            json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    let new = rotated["token"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        kinds_of(&next_changes(&mut stream, PUSH_LIMIT).await, &old),
        ["token_rotated"]
    );

    app.post(
        &format!("/v1/tokens/{new}/disable"),
        &app.admin_token,
        json!({}),
    )
    .await;
    assert_eq!(
        kinds_of(&next_changes(&mut stream, PUSH_LIMIT).await, &new),
        ["token_disabled"]
    );
    app.post(
        &format!("/v1/tokens/{new}/enable"),
        &app.admin_token,
        json!({}),
    )
    .await;
    assert_eq!(
        kinds_of(&next_changes(&mut stream, PUSH_LIMIT).await, &new),
        ["token_enabled"]
    );

    // Rotating the replaced token again revokes the whole family.
    app.post(
        &format!("/v1/tokens/{old}/rotate"),
        &app.admin_token,
        json!({}),
    )
    .await;
    let family = next_changes(&mut stream, PUSH_LIMIT).await;
    assert_eq!(kinds_of(&family, &old), ["token_family_revoked"]);
    assert_eq!(kinds_of(&family, &new), ["token_family_revoked"]);
}

#[tokio::test]
async fn a_watch_needs_tokens_watch_and_an_org_admin_hears_only_of_its_own_org() {
    // Arrange
    let app = spawn_app().await;
    let (org_b, admin_b) = app.second_org("acme").await;
    // The second org's admin token lacks tokens:watch; the platform admin grants it.
    let (watcher_b, _) = app
        .create_token(
            &app.admin_token,
            json!({ "org_id": org_b, "name": "watcher", "scopes": ["tokens:watch"] }),
        )
        .await;
    let (reader, _) = token(&app, &app.admin_token, "reader", &["tokens:read"]).await;
    let (_, in_a) = token(&app, &app.admin_token, "in a", &[]).await;
    let (_, in_b) = token(&app, &admin_b, "in b", &[]).await;

    // Act
    let without_bearer = client(&app)
        .await
        .watch_changes(Request::new(pb::WatchChangesRequest::default()))
        .await
        .unwrap_err();
    let without_permission = watch(&app, &reader, "", "").await.unwrap_err();
    let other_org = watch(&app, &watcher_b, "", &app.org_id.to_string())
        .await
        .unwrap_err();
    let nowhere = watch(&app, &watcher_b, "", &uuid::Uuid::now_v7().to_string())
        .await
        .unwrap_err();
    let mut b = watch(&app, &watcher_b, "", "").await.unwrap();
    next(&mut b, PUSH_LIMIT).await;
    let mut platform_on_b = watch(&app, &app.admin_token, "", &org_b.to_string())
        .await
        .unwrap();
    next(&mut platform_on_b, PUSH_LIMIT).await;
    app.delete(&format!("/v1/tokens/{in_a}"), &app.admin_token)
        .await;
    app.delete(&format!("/v1/tokens/{in_b}"), &admin_b).await;

    // Assert
    assert_eq!(without_bearer.code(), Code::Unauthenticated);
    assert_eq!(without_permission.code(), Code::PermissionDenied);
    assert!(without_permission.message().contains("tokens:watch"));
    assert_eq!(other_org.code(), Code::NotFound);
    assert_eq!(other_org.message(), nowhere.message());
    for stream in [&mut b, &mut platform_on_b] {
        let changes = next_changes(stream, PUSH_LIMIT).await;
        assert!(kinds_of(&changes, &in_a).is_empty(), "{changes:?}");
        assert_eq!(kinds_of(&changes, &in_b), ["token_revoked"]);
    }
}

#[tokio::test]
async fn a_resumed_watch_gets_what_it_missed_and_a_stale_or_foreign_cursor_does_not_pass() {
    // Arrange: a watch that read its first message, then went away.
    let app = spawn_app().await;
    let (_, missed) = token(&app, &app.admin_token, "missed", &[]).await;
    let mut stream = watch(&app, &app.admin_token, "", "").await.unwrap();
    let cursor = next(&mut stream, PUSH_LIMIT).await.cursor;
    drop(stream);
    app.delete(&format!("/v1/tokens/{missed}"), &app.admin_token)
        .await;
    let two_hours_ago = chrono::Utc::now() - chrono::TimeDelta::hours(2);
    let stale = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        two_hours_ago.timestamp() as u64,
        0,
    ));

    // Act
    let mut resumed = watch(&app, &app.admin_token, &cursor, "").await.unwrap();
    let first = next(&mut resumed, PUSH_LIMIT).await;
    let mut old = watch(&app, &app.admin_token, &stale.to_string(), "")
        .await
        .unwrap();
    let reset = next(&mut old, PUSH_LIMIT).await;
    let garbage = watch(&app, &app.admin_token, "not-a-cursor", "")
        .await
        .unwrap_err();

    // Assert
    match first.event {
        Some(Event::Changes(c)) => assert_eq!(kinds_of(&c.changes, &missed), ["token_revoked"]),
        other => panic!("expected the missed change, got {other:?}"),
    }
    assert!(first.cursor > cursor);
    assert!(matches!(reset.event, Some(Event::Reset(_))), "{reset:?}");
    assert_eq!(garbage.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_quiet_watch_gets_a_heartbeat_every_five_seconds() {
    // Arrange
    // A watch resumed from a cursor of 50 minutes ago, with nothing since.
    let app = spawn_app().await;
    let earlier = chrono::Utc::now() - chrono::TimeDelta::minutes(50);
    let cursor = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        earlier.timestamp() as u64,
        0,
    ));
    let mut stream = watch(&app, &app.admin_token, &cursor.to_string(), "")
        .await
        .unwrap();
    let first = next(&mut stream, PUSH_LIMIT).await;

    // Act
    let started = Instant::now();
    let beat = next(&mut stream, Duration::from_secs(8)).await;

    // Assert: and the cursor of a quiet feed moves on, so a resume an hour later is not sent a
    // reset.
    assert!(
        matches!(first.event, Some(Event::Heartbeat(_))),
        "{first:?}"
    );
    assert!(matches!(beat.event, Some(Event::Heartbeat(_))), "{beat:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // (The cursor trails the clock by the 5 s a late commit is waited for.)
    let cursor_time = |c: &str| {
        let (secs, _) = uuid::Uuid::parse_str(c)
            .unwrap()
            .get_timestamp()
            .unwrap()
            .to_unix();
        secs as i64
    };
    let now = chrono::Utc::now().timestamp();
    assert!(beat.cursor >= first.cursor);
    assert!(
        now - cursor_time(&beat.cursor) <= 6,
        "{} at {now}",
        beat.cursor
    );
}

#[tokio::test]
async fn a_watch_ends_unauthenticated_when_its_own_token_is_revoked() {
    // Arrange
    let app = spawn_app().await;
    let (watcher, watcher_id) = token(&app, &app.admin_token, "watcher", &["tokens:watch"]).await;
    let mut stream = watch(&app, &watcher, "", "").await.unwrap();
    next(&mut stream, PUSH_LIMIT).await;

    // Act
    app.delete(&format!("/v1/tokens/{watcher_id}"), &app.admin_token)
        .await;
    let end = tokio::time::timeout(PUSH_LIMIT, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends within the limit");

    // Assert
    let status = end.expect_err("the stream ends with an error");
    assert_eq!(status.code(), Code::Unauthenticated);
}

// Two threads: the client's connection task must run while this one waits for the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_server_ends_every_watch_at_once() {
    // Arrange
    let mut app = spawn_app().await;
    let mut stream = watch(&app, &app.admin_token, "", "").await.unwrap();
    next(&mut stream, PUSH_LIMIT).await;

    // Act
    let started = Instant::now();
    let clean = app.stop_gracefully();
    let end = tokio::time::timeout(PUSH_LIMIT, stream.message()).await;

    // Assert: the stream ends (cleanly or with an error) and the drain did not wait for it.
    assert!(clean);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(!matches!(end, Ok(Ok(Some(_)))), "{end:?}");
}

#[tokio::test]
async fn reported_uses_count_for_tokens_within_reach_only() {
    // Arrange
    let app = spawn_app().await;
    let (_, admin_b) = app.second_org("acme").await;
    let (watcher, _) = token(&app, &app.admin_token, "watcher", &["tokens:watch"]).await;
    let (reader, _) = token(&app, &app.admin_token, "reader", &["tokens:read"]).await;
    let (_, mine) = token(&app, &app.admin_token, "mine", &[]).await;
    let (_, theirs) = token(&app, &admin_b, "theirs", &[]).await;
    let at = prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp() - 10,
        nanos: 0,
    };
    let use_of = |id: &str, count: i64| pb::TokenUse {
        token_id: id.into(),
        count,
        last_used_at: Some(at),
    };

    // Act
    let mut c = client(&app).await;
    let accepted = c
        .report_usage(authed(
            pb::ReportUsageRequest {
                uses: vec![use_of(&mine, 7), use_of(&theirs, 5)],
            },
            &watcher,
        ))
        .await
        .unwrap()
        .into_inner()
        .accepted;
    let zero = c
        .report_usage(authed(
            pb::ReportUsageRequest {
                uses: vec![use_of(&mine, 0)],
            },
            &watcher,
        ))
        .await
        .unwrap_err();
    let denied = c
        .report_usage(authed(
            pb::ReportUsageRequest {
                uses: vec![use_of(&mine, 1)],
            },
            &reader,
        ))
        .await
        .unwrap_err();

    // Assert
    assert_eq!(accepted, 7);
    assert_eq!(zero.code(), Code::InvalidArgument);
    assert_eq!(denied.code(), Code::PermissionDenied);
    let mut count = Value::Null;
    for _ in 0..200 {
        let view: Value = app
            .get(&format!("/v1/tokens/{mine}"), &app.admin_token)
            .await
            .json()
            .await
            .unwrap();
        count = view["request_count"].clone();
        if count == 7 {
            assert_eq!(
                view["last_used_at"].as_str().unwrap()[..19],
                chrono::DateTime::from_timestamp(at.seconds, 0)
                    .unwrap()
                    .to_rfc3339()[..19]
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(count, 7, "the reported uses were flushed");
    let theirs_view: Value = app
        .get(&format!("/v1/tokens/{theirs}"), &admin_b)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(theirs_view["request_count"], 0);
}

#[tokio::test]
async fn a_watch_on_one_node_hears_of_a_revocation_on_another() {
    // Arrange: two nodes on one PostgreSQL database, a watch on B.
    let admin = postgres_admin_url("a_watch_on_one_node_hears_of_a_revocation_on_another");
    let db = TestDatabase::create(&admin).await;
    let a = spawn_node(&db.url, &[]).await;
    let b = spawn_node(&db.url, &[]).await;
    let (_, id) = token(&a, &a.admin_token, "shared", &[]).await;
    let mut stream = watch(&b, &a.admin_token, "", "").await.unwrap();
    next(&mut stream, PUSH_LIMIT).await;

    // Act
    let res = a.delete(&format!("/v1/tokens/{id}"), &a.admin_token).await;
    let changes = next_changes(&mut stream, PUSH_LIMIT).await;

    // Assert
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(kinds_of(&changes, &id), ["token_revoked"]);
    drop((a, b));
}

#[tokio::test]
async fn disabling_a_user_pushes_the_revocation_of_each_of_its_tokens() {
    // Arrange: a person with two tokens of its own, minted by the password exchange.
    let app = spawn_app().await;
    let password = "correct horse battery staple 42";
    let invited: Value = app
        .post(
            "/v1/users",
            &app.admin_token,
            json!({ "email": "ann@example.com", "name": "Ann", "role": "member" }),
        )
        .await
        .json()
        .await
        .unwrap();
    let user = invited["user"]["id"].as_str().unwrap().to_string();
    let setup = app
        .request(
            reqwest::Method::POST,
            "/v1/auth/setup",
            None,
            Some(json!({ "setup_token": invited["setup_token"], "password": password })),
        )
        .await;
    assert_eq!(setup.status(), StatusCode::OK);
    let mut owned = Vec::new();
    for name in ["laptop", "ci"] {
        let res = app
            .request(
                reqwest::Method::POST,
                "/v1/auth/token",
                None,
                Some(json!({ "email": "ann@example.com", "password": password, "name": name })),
            )
            .await;
        let v: Value = res.json().await.unwrap();
        owned.push(v["token"]["id"].as_str().unwrap().to_string());
    }
    let mut stream = watch(&app, &app.admin_token, "", "").await.unwrap();
    next(&mut stream, PUSH_LIMIT).await;

    // Act
    let res = app
        .post(
            &format!("/v1/users/{user}/disable"),
            &app.admin_token,
            json!({}),
        )
        .await;
    let mut changes = Vec::new();
    while owned.iter().any(|id| kinds_of(&changes, id).is_empty()) {
        changes.extend(next_changes(&mut stream, PUSH_LIMIT).await);
    }

    // Assert
    assert_eq!(res.status(), StatusCode::OK);
    for id in &owned {
        assert_eq!(kinds_of(&changes, id), ["token_revoked"]);
    }
}
