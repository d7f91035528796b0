//! Rate limits, client addresses behind proxies, resource bounds and leaked-token reports.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{error_of, forge, spawn_app, spawn_app_with};

fn retry_after(res: &reqwest::Response) -> u64 {
    res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_token_minting_beyond_its_hourly_limit_gets_429_with_retry_after() {
    // Arrange
    let app = spawn_app_with(&["--rate-limit-mint-per-token-per-hour", "2"]).await;
    app.token_with(&app.admin_token, "one", &[]).await;
    app.token_with(&app.admin_token, "two", &[]).await;

    // Act
    let third = app
        .post("/v1/tokens", &app.admin_token, json!({"name": "three"}))
        .await;

    // Assert: 2 per hour is one every 30 minutes.
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait = retry_after(&third);
    assert!((1..=1800).contains(&wait), "{wait}");
    let b = error_of(third, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(b["error"]["code"], "rate_limited");
    assert_eq!(
        app.metric("latchkey_rate_limited_total{limit=\"mint_token\"}")
            .await,
        1.0
    );
    // Reading is not minting.
    assert_eq!(
        app.get("/v1/tokens", &app.admin_token).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn management_calls_beyond_the_per_second_limit_are_429_but_verification_is_not() {
    let app = spawn_app_with(&["--rate-limit-per-second", "1", "--rate-limit-burst", "3"]).await;
    let (t, _) = app.token_with(&app.admin_token, "t", &[]).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(app.get("/v1/tokens", &app.admin_token).await.status());
    }
    assert_eq!(
        statuses.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    for _ in 0..20 {
        assert_eq!(app.verify(&t, &[]).await["code"], "VALID");
    }
    assert!(
        app.metric("latchkey_rate_limited_total{limit=\"management\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn past_its_failure_limit_a_client_gets_rate_limited_for_costly_checks_only() {
    // Arrange: a valid token verified once (cached), another never verified.
    let app = spawn_app_with(&["--rate-limit-failed-verify-per-minute", "3"]).await;
    let (cached, _) = app.token_with(&app.admin_token, "cached", &[]).await;
    let (cold, _) = app.token_with(&app.admin_token, "cold", &[]).await;
    assert_eq!(app.verify(&cached, &[]).await["code"], "VALID");
    let unknown = |n: u8| forge(&cached, None, Some([n; 32]));

    // Act: four wrong secrets for an existing id.
    for n in 0..4 {
        assert_eq!(app.verify(&unknown(n), &[]).await["code"], "INVALID");
    }
    let fresh_id = latchkey::token::format::format_token(
        &Default::default(),
        latchkey::token::TokenKind::Pat,
        uuid::Uuid::now_v7(),
        &[1u8; 32],
    );
    let limited = app
        .request(
            Method::POST,
            "/v1/tokens/verify",
            None,
            Some(json!({"token": fresh_id})),
        )
        .await;
    let limited_wait = retry_after(&limited);
    let limited: Value = limited.json().await.unwrap();

    // Assert
    assert_eq!(limited["code"], "RATE_LIMITED");
    assert_eq!(limited["valid"], false);
    assert!(limited_wait >= 1);
    assert_eq!(
        app.verify(&cached, &[]).await["code"],
        "VALID",
        "cache hits stay at full speed"
    );
    assert_eq!(
        app.verify(&cold, &[]).await["code"],
        "RATE_LIMITED",
        "a database read is costly"
    );
    assert_eq!(
        app.verify("garbage", &[]).await["code"],
        "INVALID",
        "malformed input is cheap"
    );
    let bearer = app.get("/v1/tokens", &fresh_id).await;
    assert_eq!(bearer.status(), StatusCode::TOO_MANY_REQUESTS);
    let gate = app
        .request(Method::GET, "/v1/auth/check", Some(&fresh_id), None)
        .await;
    assert_eq!(gate.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        app.metric("latchkey_verify_total{result=\"rate_limited\"}")
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn a_refused_verification_is_answered_after_the_refusal_delay_and_a_cache_hit_is_not() {
    // Arrange: a cached valid token, and a client past its limit of one failure a minute.
    let app = spawn_app_with(&[
        "--rate-limit-failed-verify-per-minute",
        "1",
        "--rate-limit-refusal-delay-ms",
        "1500",
    ])
    .await;
    let (cached, _) = app.token_with(&app.admin_token, "cached", &[]).await;
    assert_eq!(app.verify(&cached, &[]).await["code"], "VALID");
    let wrong = |n: u8| forge(&cached, None, Some([n; 32]));
    for n in 0..2 {
        app.verify(&wrong(n), &[]).await;
    }
    let cold = latchkey::token::format::format_token(
        &Default::default(),
        latchkey::token::TokenKind::Pat,
        uuid::Uuid::now_v7(),
        &[3u8; 32],
    );

    // Act
    let started = std::time::Instant::now();
    let refused = app.verify(&cold, &[]).await;
    let refused_after = started.elapsed();
    let bearer_started = std::time::Instant::now();
    let bearer = app.get("/v1/tokens", &cold).await;
    let bearer_after = bearer_started.elapsed();
    let hit_started = std::time::Instant::now();
    let hit = app.verify(&cached, &[]).await;
    let hit_after = hit_started.elapsed();

    // Assert: the answers are those of a refusal without a delay; only their timing differs.
    assert_eq!(refused["code"], "RATE_LIMITED");
    assert!(refused["retry_after_seconds"].as_u64().unwrap() >= 1);
    assert!(
        refused_after >= Duration::from_millis(1500),
        "{refused_after:?}"
    );
    assert_eq!(bearer.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&bearer) >= 1);
    assert!(
        bearer_after >= Duration::from_millis(1500),
        "{bearer_after:?}"
    );
    assert_eq!(hit["code"], "VALID", "cache hits are never refused");
    assert!(
        hit_after < Duration::from_millis(1000),
        "a cache hit is not held: {hit_after:?}"
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_audited_and_limited() {
    // Arrange: the test client (127.0.0.1) is a trusted proxy.
    let app = spawn_app_with(&[
        "--trusted-proxies",
        "127.0.0.1/32",
        "--rate-limit-failed-verify-per-minute",
        "1",
    ])
    .await;
    let forwarded = |xff: &'static str| {
        app.client
            .post(format!("{}/v1/tokens", app.address))
            .bearer_auth(&app.admin_token)
            .header("x-forwarded-for", xff)
    };

    // Act
    let created: Value = forwarded("6.6.6.6, 198.51.100.7")
        .json(&json!({"name": "via proxy"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["token"]["id"].as_str().unwrap();
    let events: Value = app
        .get(&format!("/v1/audit?token_id={id}"), &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    // Failures from one forwarded client do not limit another.
    let verify_from = |xff: &'static str, token: String| {
        app.client
            .post(format!("{}/v1/tokens/verify", app.address))
            .header("x-forwarded-for", xff)
            .json(&json!({ "token": token }))
            .send()
    };
    // Each a well-formed token with a never-seen id: a database read, so a costly check.
    let unknown = || {
        latchkey::token::format::format_token(
            &Default::default(),
            latchkey::token::TokenKind::Pat,
            uuid::Uuid::now_v7(),
            &[2u8; 32],
        )
    };
    for _ in 0..2 {
        verify_from("203.0.113.1", unknown()).await.unwrap();
    }
    let a: Value = verify_from("203.0.113.1", unknown())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let b: Value = verify_from("203.0.113.2", unknown())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    // Assert
    assert_eq!(events["events"][0]["ip"], "198.51.100.7");
    assert_eq!(a["code"], "RATE_LIMITED");
    assert_eq!(b["code"], "INVALID");
}

#[tokio::test]
async fn an_untrusted_peer_cannot_choose_its_address_with_x_forwarded_for() {
    let app = spawn_app().await;
    let created: Value = app
        .client
        .post(format!("{}/v1/tokens", app.address))
        .bearer_auth(&app.admin_token)
        .header("x-forwarded-for", "198.51.100.7")
        .json(&json!({"name": "direct"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["token"]["id"].as_str().unwrap();
    let events: Value = app
        .get(&format!("/v1/audit?token_id={id}"), &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(events["events"][0]["ip"], "127.0.0.1");
}

#[tokio::test]
async fn a_slow_client_is_cut_off_while_a_normal_client_is_served() {
    // Arrange
    let app = spawn_app_with(&["--header-timeout-seconds", "1"]).await;
    let addr = app.address.trim_start_matches("http://").to_string();
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();

    // Act: a normal request meanwhile, then wait for the server to hang up on the slow one.
    let normal = app.request(Method::GET, "/healthz", None, None).await;
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    })
    .await;

    // Assert
    assert_eq!(normal.status(), StatusCode::OK);
    assert_eq!(
        closed,
        Ok(true),
        "the server must close a connection that never finishes its headers"
    );
}

#[tokio::test]
async fn beyond_the_in_flight_bound_requests_get_503_at_once_and_slow_bodies_time_out() {
    // Arrange: one request in flight, stuck waiting for a body that never comes.
    let app = spawn_app_with(&["--max-in-flight", "1", "--request-timeout-seconds", "2"]).await;
    let addr = app.address.trim_start_matches("http://").to_string();
    let head = format!(
        "POST /v1/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
        app.admin_token
    );

    // Act: poll until the stuck request holds the only slot (bounded), then ask again. The slot
    // of the helper's last request is freed once its answer is written, which can be just after
    // the client has read it: a stuck request that came first got the 503 itself, and is resent.
    let mut overloaded = None;
    let mut stuck = None;
    for _ in 0..3 {
        let mut conn = TcpStream::connect(&addr).await.unwrap();
        conn.write_all(head.as_bytes()).await.unwrap();
        for _ in 0..100 {
            let res = app.request(Method::GET, "/healthz", None, None).await;
            if res.status() == StatusCode::SERVICE_UNAVAILABLE {
                overloaded = Some(res);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if overloaded.is_some() {
            stuck = Some(conn);
            break;
        }
    }
    let mut answer = String::new();
    if let Some(mut stuck) = stuck {
        let _ =
            tokio::time::timeout(Duration::from_secs(15), stuck.read_to_string(&mut answer)).await;
    }

    // Assert
    let overloaded = overloaded.expect("a second request beyond --max-in-flight 1 gets 503");
    assert_eq!(retry_after(&overloaded), 1);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(
        app.request(Method::GET, "/healthz", None, None)
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_leaked_valid_token_is_revoked_and_the_answer_never_says_which_was_valid() {
    // Arrange
    let app = spawn_app().await;
    let (valid, view) = app.token_with(&app.admin_token, "leaky", &[]).await;
    let wrong_secret = forge(&valid, None, Some([3u8; 32]));
    let report = |tokens: Vec<String>| {
        app.request(
            Method::POST,
            "/v1/tokens/leaked",
            None,
            Some(json!({ "tokens": tokens, "source": "https://example.com/gist/1" })),
        )
    };

    // Act
    let r_valid = report(vec![valid.clone()]).await;
    let r_wrong = report(vec![wrong_secret]).await;
    let r_malformed = report(vec!["not a token".into()]).await;
    let (s_valid, s_wrong, s_malformed) =
        (r_valid.status(), r_wrong.status(), r_malformed.status());
    let bodies = [
        r_valid.text().await.unwrap(),
        r_wrong.text().await.unwrap(),
        r_malformed.text().await.unwrap(),
    ];

    // Assert
    assert_eq!([s_valid, s_wrong, s_malformed], [StatusCode::ACCEPTED; 3]);
    assert_eq!(bodies[0], bodies[1]);
    assert_eq!(bodies[1], bodies[2]);
    assert_eq!(
        serde_json::from_str::<Value>(&bodies[0]).unwrap(),
        json!({"examined": 1})
    );
    assert_eq!(app.verify(&valid, &[]).await["code"], "INVALID");
    let id = view["id"].as_str().unwrap();
    let events: Value = app
        .get(
            &format!("/v1/audit?token_id={id}&action=token_leaked"),
            &app.admin_token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        events["events"][0]["details"]["source"],
        "https://example.com/gist/1"
    );
    assert_eq!(events["events"][0]["actor"], "system");
    assert_eq!(
        app.verify(&app.admin_token, &[]).await["code"],
        "VALID",
        "an id alone revokes nothing"
    );
}

#[tokio::test]
async fn leaked_reports_are_bounded_validated_and_rate_limited() {
    let app = spawn_app_with(&["--rate-limit-leaked-per-minute", "2"]).await;
    let post = |body: Value| app.request(Method::POST, "/v1/tokens/leaked", None, Some(body));
    error_of(
        post(json!({"tokens": vec!["x"; 101]})).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(
        post(json!({"tokens": []})).await.status(),
        StatusCode::ACCEPTED
    );
    let limited = post(json!({"tokens": []})).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&limited) >= 1);
    let app2 = spawn_app().await;
    for body in [
        json!({}),
        json!({"tokens": "x"}),
        json!({"tokens": [], "source": "s".repeat(201)}),
        json!({"tokens": [], "x": 1}),
    ] {
        let res = app2
            .request(Method::POST, "/v1/tokens/leaked", None, Some(body.clone()))
            .await;
        error_of(res, StatusCode::BAD_REQUEST).await;
    }
}
