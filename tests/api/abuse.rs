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

/// A verification from `xff` (the test client is a trusted proxy in these apps).
async fn verify_as(app: &crate::helpers::TestApp, xff: &str, token: &str) -> Value {
    app.client
        .post(format!("{}/v1/tokens/verify", app.address))
        .header("x-forwarded-for", xff)
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A well-formed token with a never-seen id: one database read, then remembered as missing.
fn unknown_id(secret: u8) -> String {
    latchkey::token::format::format_token(
        &Default::default(),
        latchkey::token::TokenKind::Pat,
        uuid::Uuid::now_v7(),
        &[secret; 32],
    )
}

#[tokio::test]
async fn past_its_failed_argon2id_checks_a_client_and_the_guessed_token_are_refused_those_checks_only()
 {
    // Arrange: Argon2id tokens: one warm (verified once), one guessed at, one never verified.
    let app = spawn_app_with(&[
        "--hash",
        "argon2id",
        "--trusted-proxies",
        "127.0.0.1/32",
        "--rate-limit-failed-verify-per-minute",
        "3",
    ])
    .await;
    let (warm, _) = app.token_with(&app.admin_token, "warm", &[]).await;
    let (guessed, _) = app.token_with(&app.admin_token, "guessed", &[]).await;
    let (cold, _) = app.token_with(&app.admin_token, "cold", &[]).await;
    assert_eq!(
        verify_as(&app, "198.51.100.1", &warm).await["code"],
        "VALID"
    );
    let attacker = "203.0.113.66";

    // Act: four wrong secrets for one id, each an Argon2id check that fails.
    for n in 0..4 {
        let wrong = forge(&guessed, None, Some([n; 32]));
        assert_eq!(verify_as(&app, attacker, &wrong).await["code"], "INVALID");
    }
    let fifth = verify_as(&app, attacker, &forge(&guessed, None, Some([9; 32]))).await;
    let guessed_elsewhere = verify_as(&app, "198.51.100.2", &guessed).await;
    // Before it verifies anywhere else: after that it is warm, a SHA-256 comparison.
    let cold_from_attacker = verify_as(&app, attacker, &cold).await;
    let cold_elsewhere = verify_as(&app, "198.51.100.2", &cold).await;
    let warm_from_attacker = verify_as(&app, attacker, &warm).await;
    let unknown_from_attacker = verify_as(&app, attacker, &unknown_id(1)).await;
    let garbage_from_attacker = verify_as(&app, attacker, "garbage").await;
    let bearer = app
        .get("/v1/tokens", &forge(&guessed, None, Some([8; 32])))
        .await;

    // Assert
    assert_eq!(fifth["code"], "RATE_LIMITED");
    assert!(fifth["retry_after_seconds"].as_u64().unwrap() >= 1);
    assert_eq!(
        guessed_elsewhere["code"], "RATE_LIMITED",
        "the token guessed at is held for a while, from any address"
    );
    assert_eq!(
        cold_elsewhere["code"], "VALID",
        "other tokens, other clients: untouched"
    );
    assert_eq!(
        cold_from_attacker["code"], "RATE_LIMITED",
        "an Argon2id check from the guessing address waits"
    );
    assert_eq!(
        warm_from_attacker["code"], "VALID",
        "a verified token is a SHA-256 comparison"
    );
    assert_eq!(
        unknown_from_attacker["code"], "INVALID",
        "an unknown id is never refused"
    );
    assert_eq!(garbage_from_attacker["code"], "INVALID");
    assert_eq!(bearer.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        app.metric("latchkey_rate_limited_total{limit=\"failed_guess\"}")
            .await
            >= 1.0
    );
    assert!(
        app.metric("latchkey_rate_limited_total{limit=\"failed_verify\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn garbage_unknown_ids_and_wrong_secrets_at_200_a_second_deny_no_genuine_token_behind_the_same_address()
 {
    // Arrange: the default failure limit (the test apps turn limits off unless asked); forty
    // genuine tokens, none cached (the server restarted).
    let limit = ["--rate-limit-failed-verify-per-minute", "60"];
    let first = spawn_app_with(&limit).await;
    let mut genuine = Vec::new();
    for n in 0..40 {
        let (t, _) = first
            .token_with(&first.admin_token, &format!("genuine {n}"), &[])
            .await;
        genuine.push(t);
    }
    let (known, _) = first.token_with(&first.admin_token, "known", &[]).await;
    let mut first = first;
    assert!(first.stop_gracefully());
    let app = first.restart(&limit).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let attack = {
        let (client, url) = (app.client.clone(), app.address.clone());
        let (stop, sent, known) = (stop.clone(), sent.clone(), known.clone());
        tokio::spawn(async move {
            // 200 a second: a third garbage, a third unknown ids, a third wrong secrets of a real
            // token; all from 127.0.0.1, like the genuine client.
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let n = sent.load(std::sync::atomic::Ordering::Relaxed);
                let bad = match n % 3 {
                    0 => format!("lk_pat_garbage{n}"),
                    1 => unknown_id((n % 250) as u8),
                    _ => forge(&known, None, Some([(n % 250) as u8; 32])),
                };
                let v: Value = client
                    .post(format!("{url}/v1/tokens/verify"))
                    .json(&json!({ "token": bad }))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert_eq!(v["code"], "INVALID", "a bad token is simply invalid");
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    // Well past the limit of 60 failures a minute before the first genuine verification.
    let mut wait = tokio::time::interval(Duration::from_millis(5));
    while sent.load(std::sync::atomic::Ordering::Relaxed) < 100 {
        wait.tick().await;
    }

    // Act: each genuine token verified for the first time since the restart, among the attack.
    let mut answers = Vec::new();
    let mut pace = tokio::time::interval(Duration::from_millis(10));
    for t in &genuine {
        pace.tick().await;
        answers.push(app.verify(t, &[]).await["code"].clone());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    attack.await.unwrap();
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);

    // Assert
    assert!(sent >= 100, "the attack ran first ({sent} requests)");
    assert!(
        answers.iter().all(|c| c == "VALID"),
        "every genuine token verifies: {answers:?}"
    );
    assert_eq!(
        app.metric("latchkey_rate_limited_total{limit=\"failed_verify\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_refused_verification_is_answered_after_the_refusal_delay_and_a_cache_hit_is_not() {
    // Arrange: an Argon2id token guessed at past a limit of one failure a minute, and a warm one.
    let app = spawn_app_with(&[
        "--hash",
        "argon2id",
        "--rate-limit-failed-verify-per-minute",
        "1",
        "--rate-limit-refusal-delay-ms",
        "1500",
    ])
    .await;
    let (cached, _) = app.token_with(&app.admin_token, "cached", &[]).await;
    assert_eq!(app.verify(&cached, &[]).await["code"], "VALID");
    let (guessed, _) = app.token_with(&app.admin_token, "guessed", &[]).await;
    let wrong = |n: u8| forge(&guessed, None, Some([n; 32]));
    for n in 0..2 {
        assert_eq!(app.verify(&wrong(n), &[]).await["code"], "INVALID");
    }

    // Act
    let started = std::time::Instant::now();
    let refused = app.verify(&wrong(3), &[]).await;
    let refused_after = started.elapsed();
    let bearer_started = std::time::Instant::now();
    let bearer = app.get("/v1/tokens", &wrong(4)).await;
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
    // Arrange: the test client (127.0.0.1) is a trusted proxy; Argon2id tokens.
    let app = spawn_app_with(&[
        "--hash",
        "argon2id",
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
    // Failed Argon2id checks from one forwarded client do not limit another.
    let (first, _) = app.token_with(&app.admin_token, "first", &[]).await;
    let (second, _) = app.token_with(&app.admin_token, "second", &[]).await;
    for n in 0..2 {
        verify_as(&app, "203.0.113.1", &forge(&first, None, Some([n; 32]))).await;
    }
    let a = verify_as(&app, "203.0.113.1", &second).await;
    let b = verify_as(&app, "203.0.113.2", &second).await;

    // Assert
    assert_eq!(events["events"][0]["ip"], "198.51.100.7");
    assert_eq!(a["code"], "RATE_LIMITED");
    assert_eq!(b["code"], "VALID");
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
