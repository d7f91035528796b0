//! `GET /v1/tokens/{id}/usage` and `GetTokenUsage`: verifications per hour, kept by the usage
//! flush.

use chrono::{DateTime, TimeDelta, Utc};
use latchkey::grpc::pb;
use latchkey::grpc::pb::auth_service_client::AuthServiceClient;
use reqwest::StatusCode;
use serde_json::Value;
use tonic::Request;

use crate::helpers::{TestApp, error_of, spawn_app, spawn_with_clock};

/// The token's usage once its hourly counts add up to `total` (the flush runs every 100 ms in
/// these apps; a broken count never gets there and the last answer is returned).
async fn usage_reaching(app: &TestApp, id: &str, query: &str, total: i64) -> Value {
    let mut got = Value::Null;
    for _ in 0..200 {
        got = app
            .get(&format!("/v1/tokens/{id}/usage{query}"), &app.admin_token)
            .await
            .json()
            .await
            .unwrap();
        if got["total"] == total {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    got
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn verifications_are_counted_in_the_hour_they_happen_for_the_last_seven_days() {
    // Arrange
    let app = spawn_with_clock().await;
    let clock = app.clock.clone().unwrap();
    let (t, view) = app.token_with(&app.admin_token, "charted", &[]).await;
    let id = view["id"].as_str().unwrap();

    // Act: one verification, then two more three hours later.
    app.verify(&t, &[]).await;
    let first = usage_reaching(&app, id, "", 1).await;
    clock.advance(TimeDelta::hours(3));
    app.verify(&t, &[]).await;
    app.verify(&t, &[]).await;
    let later = usage_reaching(&app, id, "", 3).await;
    let one_day = usage_reaching(&app, id, "?days=1", 3).await;
    clock.advance(TimeDelta::days(7) - TimeDelta::hours(2));
    let week_on = usage_reaching(&app, id, "", 2).await;

    // Assert
    let hours = later["hours"].as_array().unwrap();
    assert_eq!(hours.len(), 7 * 24, "every hour of the window is listed");
    assert_eq!(later["total"], 3);
    let counted: Vec<(DateTime<Utc>, i64)> = hours
        .iter()
        .filter(|h| h["count"] != 0)
        .map(|h| (time(&h["hour"]), h["count"].as_i64().unwrap()))
        .collect();
    let first_hour = time(&first["hours"][7 * 24 - 1]["hour"]);
    assert_eq!(
        first["hours"][7 * 24 - 1]["count"],
        1,
        "the current hour is last"
    );
    assert_eq!(
        counted,
        [(first_hour, 1), (first_hour + TimeDelta::hours(3), 2)]
    );
    assert_eq!(time(&later["to"]), first_hour + TimeDelta::hours(4));
    assert_eq!(
        time(&later["from"]),
        time(&later["to"]) - TimeDelta::days(7)
    );
    for pair in hours.windows(2) {
        assert_eq!(
            time(&pair[1]["hour"]) - time(&pair[0]["hour"]),
            TimeDelta::hours(1)
        );
    }
    assert_eq!(one_day["hours"].as_array().unwrap().len(), 24);
    assert_eq!(one_day["total"], 3);
    assert_eq!(week_on["total"], 2, "the first hour left the window");
    let view: Value = app
        .get(&format!("/v1/tokens/{id}"), &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        view["request_count"], 3,
        "the lifetime count keeps every one"
    );
}

#[tokio::test]
async fn a_usage_window_outside_one_to_seven_days_is_refused_in_words() {
    // Arrange
    let app = spawn_app().await;
    let (_, view) = app.token_with(&app.admin_token, "quiet", &[]).await;
    let id = view["id"].as_str().unwrap();

    for query in ["?days=0", "?days=8", "?days=-1", "?days=week", "?hours=3"] {
        // Act
        let res = app
            .get(&format!("/v1/tokens/{id}/usage{query}"), &app.admin_token)
            .await;

        // Assert
        let body = error_of(res, StatusCode::BAD_REQUEST).await;
        assert_eq!(body["error"]["code"], "invalid_argument", "{query}");
    }
    let bad_id = app
        .get("/v1/tokens/not-a-uuid/usage", &app.admin_token)
        .await;
    error_of(bad_id, StatusCode::BAD_REQUEST).await;
    let fresh: Value = app
        .get(&format!("/v1/tokens/{id}/usage"), &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(fresh["total"], 0);
    assert_eq!(fresh["hours"].as_array().unwrap().len(), 168);
}

#[tokio::test]
async fn another_orgs_token_usage_answers_exactly_like_a_missing_one() {
    // Arrange
    let app = spawn_app().await;
    let (_, theirs) = app.token_with(&app.admin_token, "ours", &[]).await;
    let id = theirs["id"].as_str().unwrap();
    let (_, other_admin) = app.second_org("elsewhere").await;
    let (reader, _) = app
        .token_with(&app.admin_token, "no reader", &["tokens:create"])
        .await;

    // Act
    let cross = app
        .get(&format!("/v1/tokens/{id}/usage"), &other_admin)
        .await;
    let missing = app
        .get(
            &format!("/v1/tokens/{}/usage", uuid::Uuid::now_v7()),
            &other_admin,
        )
        .await;
    let unauthenticated = app.get(&format!("/v1/tokens/{id}/usage"), "lk_nope").await;
    let no_permission = app.get(&format!("/v1/tokens/{id}/usage"), &reader).await;

    // Assert
    assert_eq!(
        error_of(cross, StatusCode::NOT_FOUND).await,
        error_of(missing, StatusCode::NOT_FOUND).await
    );
    error_of(unauthenticated, StatusCode::UNAUTHORIZED).await;
    let denied = error_of(no_permission, StatusCode::FORBIDDEN).await;
    assert_eq!(denied["error"]["code"], "permission_denied");
}

#[tokio::test]
async fn grpc_get_token_usage_gives_the_same_hours_as_rest() {
    // Arrange
    let app = spawn_app().await;
    let (t, view) = app.token_with(&app.admin_token, "both ways", &[]).await;
    let id = view["id"].as_str().unwrap();
    app.verify(&t, &[]).await;
    app.verify(&t, &[]).await;
    let rest = usage_reaching(&app, id, "?days=2", 2).await;
    let mut c = AuthServiceClient::connect(app.address.clone())
        .await
        .unwrap();
    let request = |days: i32, bearer: &str| {
        let mut req = Request::new(pb::GetTokenUsageRequest {
            token_id: id.into(),
            days,
            ..Default::default()
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {bearer}").parse().unwrap());
        req
    };

    // Act
    let grpc = c
        .get_token_usage(request(2, &app.admin_token))
        .await
        .unwrap()
        .into_inner();
    let too_long = c
        .get_token_usage(request(9, &app.admin_token))
        .await
        .unwrap_err();
    let unauthenticated = c.get_token_usage(request(2, "lk_nope")).await.unwrap_err();

    // Assert
    assert_eq!(grpc.total, 2);
    assert_eq!(grpc.hours.len(), 48);
    let counts: Vec<i64> = grpc.hours.iter().map(|h| h.count).collect();
    let rest_counts: Vec<i64> = rest["hours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["count"].as_i64().unwrap())
        .collect();
    assert_eq!(counts, rest_counts);
    assert_eq!(too_long.code(), tonic::Code::InvalidArgument);
    assert!(too_long.message().contains("days"), "{too_long:?}");
    assert_eq!(unauthenticated.code(), tonic::Code::Unauthenticated);
}
