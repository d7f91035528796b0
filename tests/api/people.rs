//! People over REST: inviting users, setting passwords, trading them for tokens, roles and
//! reach, disabling, sessions with their CSRF token, and what never leaks.

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, error_of, spawn_app, spawn_app_with, spawn_with_clock};

const PASSWORD: &str = "correct horse battery staple";

/// A user with a password.
struct Person {
    id: String,
    email: String,
}

/// A signed-in console session.
struct Session {
    cookie: String,
    csrf: String,
    body: Value,
}

/// Invites a user as `admin`; returns the creation answer (with the setup token).
async fn invite(app: &TestApp, admin: &str, email: &str, role: &str) -> Value {
    let res = app
        .post(
            "/v1/users",
            admin,
            json!({ "email": email, "name": "Some One", "role": role }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    res.json().await.unwrap()
}

async fn setup(app: &TestApp, setup_token: &str, password: &str) -> Response {
    app.request(
        Method::POST,
        "/v1/auth/setup",
        None,
        Some(json!({ "setup_token": setup_token, "password": password })),
    )
    .await
}

/// A user of the bootstrap admin's org with `PASSWORD`.
async fn person(app: &TestApp, email: &str, role: &str) -> Person {
    let created = invite(app, &app.admin_token, email, role).await;
    let res = setup(app, created["setup_token"].as_str().unwrap(), PASSWORD).await;
    assert_eq!(res.status(), StatusCode::OK);
    Person {
        id: created["user"]["id"].as_str().unwrap().to_string(),
        email: email.to_string(),
    }
}

async fn exchange(app: &TestApp, email: &str, password: &str, body: Value) -> Response {
    let mut req = json!({ "email": email, "password": password, "name": "script" });
    for (k, v) in body.as_object().unwrap() {
        req[k] = v.clone();
    }
    app.request(Method::POST, "/v1/auth/token", None, Some(req))
        .await
}

/// A token of `p`, minted by the password exchange with `body`'s extra fields.
async fn token_of(app: &TestApp, p: &Person, name: &str, body: Value) -> (String, Value) {
    let mut body = body;
    body["name"] = json!(name);
    let res = exchange(app, &p.email, PASSWORD, body).await;
    let status = res.status();
    let v: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{v}");
    (
        v["plaintext"].as_str().unwrap().to_string(),
        v["token"].clone(),
    )
}

async fn sign_in(app: &TestApp, email: &str, password: &str) -> Response {
    app.request(
        Method::POST,
        "/v1/auth/session",
        None,
        Some(json!({ "email": email, "password": password })),
    )
    .await
}

async fn session_of(app: &TestApp, p: &Person) -> Session {
    let res = sign_in(app, &p.email, PASSWORD).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let set_cookie = res
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let body: Value = res.json().await.unwrap();
    Session {
        cookie,
        csrf: body["csrf_token"].as_str().unwrap().to_string(),
        body,
    }
}

/// A request with the session cookie, its CSRF token (when `csrf`) and extra headers.
async fn with_session(
    app: &TestApp,
    method: Method,
    path: &str,
    s: &Session,
    csrf: bool,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Response {
    let mut rb = app
        .client
        .request(method, format!("{}{}", app.address, path))
        .header("cookie", &s.cookie);
    if csrf {
        rb = rb.header("x-csrf-token", &s.csrf);
    }
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    rb.send().await.unwrap()
}

#[tokio::test]
async fn an_invited_user_sets_a_password_and_trades_it_for_a_token_it_owns() {
    // Arrange
    let app = spawn_app().await;
    let created = invite(&app, &app.admin_token, "Ada@Example.com", "member").await;
    let setup_token = created["setup_token"].as_str().unwrap();
    let user_id = created["user"]["id"].as_str().unwrap();

    // Act
    let set = setup(&app, setup_token, PASSWORD).await;
    let reused = setup(&app, setup_token, "another fine password").await;
    let (plaintext, token) = token_of(
        &app,
        &Person {
            id: user_id.into(),
            email: "ada@EXAMPLE.com".into(),
        },
        "laptop",
        json!({ "scopes": ["tokens:read"] }),
    )
    .await;

    // Assert
    assert!(
        created["setup_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/ui/setup?token={setup_token}"))
    );
    assert_eq!(created["user"]["state"], "invited");
    assert_eq!(created["user"]["email"], "Ada@Example.com");
    assert_eq!(set.status(), StatusCode::OK);
    let body = error_of(reused, StatusCode::BAD_REQUEST).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("setup link")
    );
    assert_eq!(token["owner"], user_id);
    assert_eq!(token["created_by"], format!("user:{user_id}"));
    assert_eq!(token["scopes"], json!(["tokens:read"]));
    let v = app.verify(&plaintext, &[]).await;
    assert_eq!(v["code"], "VALID");
    // At most 30 days by default.
    let expires: chrono::DateTime<chrono::Utc> =
        token["expires_at"].as_str().unwrap().parse().unwrap();
    let days = (expires - chrono::Utc::now()).num_hours() as f64 / 24.0;
    assert!((29.9..=30.0).contains(&days), "{days}");
    let me: Value = app
        .get("/v1/users/me", &plaintext)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["id"], user_id);
    assert_eq!(me["state"], "active");
    assert!(me.get("csrf_token").is_none());
}

#[tokio::test]
async fn the_sixth_exchange_from_one_address_in_fifteen_minutes_is_429_and_runs_no_hash() {
    // Arrange
    let app = spawn_app_with(&["--rate-limit-login-per-15m", "5"]).await;
    let p = person(&app, "bea@example.com", "member").await;

    // Act
    let mut statuses = Vec::new();
    for i in 0..5 {
        let pw = if i % 2 == 0 {
            PASSWORD
        } else {
            "wrong password!"
        };
        let res = exchange(&app, &p.email, pw, json!({ "name": format!("t{i}") })).await;
        statuses.push(res.status());
    }
    let hashes_before = app.metric("latchkey_password_hashes_total").await;
    let sixth = exchange(&app, &p.email, PASSWORD, json!({ "name": "t6" })).await;
    let hashes_after = app.metric("latchkey_password_hashes_total").await;

    // Assert
    assert_eq!(
        statuses,
        [201, 401, 201, 401, 201].map(|s| StatusCode::from_u16(s).unwrap())
    );
    assert!(sixth.headers().get("retry-after").is_some());
    let body = error_of(sixth, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(
        hashes_after, hashes_before,
        "no hash ran for the refused exchange"
    );
    assert!(
        app.metric("latchkey_login_total{result=\"rate_limited\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn wrong_password_unknown_email_and_disabled_user_get_the_same_401_and_one_hash_each() {
    // Arrange
    let app = spawn_app().await;
    let p = person(&app, "cy@example.com", "member").await;
    let gone = person(&app, "dee@example.com", "member").await;
    let res = app
        .post(
            &format!("/v1/users/{}/disable", gone.id),
            &app.admin_token,
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);

    // Act
    let mut bodies = Vec::new();
    let mut hashes = Vec::new();
    for (email, pw) in [
        (p.email.as_str(), "not the password"),
        ("nobody@example.com", PASSWORD),
        (gone.email.as_str(), PASSWORD),
    ] {
        let before = app.metric("latchkey_password_hashes_total").await;
        let res = exchange(&app, email, pw, json!({})).await;
        hashes.push(app.metric("latchkey_password_hashes_total").await - before);
        bodies.push(error_of(res, StatusCode::UNAUTHORIZED).await);
    }

    // Assert
    assert_eq!(bodies[0]["error"]["code"], "invalid_credentials");
    assert!(bodies.iter().all(|b| b == &bodies[0]), "{bodies:?}");
    assert_eq!(hashes, [1.0, 1.0, 1.0]);
    let audit: Value = app
        .get("/v1/audit?action=login_failed", &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    let events = audit["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "one per known user: {events:?}");
    let text = audit.to_string();
    assert!(!text.contains("nobody@example.com"));
    assert!(!text.contains("not the password"));
    assert!(text.contains(&p.id) && text.contains(&gone.id));
}

#[tokio::test]
async fn an_admin_only_scope_is_403_for_a_member_and_201_for_an_admin() {
    // Arrange
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("scopes.toml");
    std::fs::write(
        &config,
        "default_scopes = [\"runs:read\"]\n\
         [[scopes]]\nname = \"runs:read\"\nbit = 16\n\
         [[scopes]]\nname = \"billing:write\"\nbit = 17\nadmin_only = true\n",
    )
    .unwrap();
    let app = spawn_app_with(&["--config", config.to_str().unwrap()]).await;
    let member = person(&app, "eve@example.com", "member").await;
    let admin = person(&app, "fay@example.com", "admin").await;

    // Act
    let by_member = exchange(
        &app,
        &member.email,
        PASSWORD,
        json!({ "scopes": ["billing:write"] }),
    )
    .await;
    let by_admin = exchange(
        &app,
        &admin.email,
        PASSWORD,
        json!({ "scopes": ["billing:write"] }),
    )
    .await;
    let (_, defaulted) = token_of(&app, &member, "defaults", json!({})).await;
    let beyond_role = exchange(
        &app,
        &member.email,
        PASSWORD,
        json!({ "name": "x", "scopes": ["audit:read"] }),
    )
    .await;

    // Assert
    let body = error_of(by_member, StatusCode::FORBIDDEN).await;
    assert_eq!(body["error"]["code"], "permission_denied");
    assert_eq!(by_admin.status(), StatusCode::CREATED);
    assert_eq!(defaulted["scopes"], json!(["runs:read"]));
    error_of(beyond_role, StatusCode::FORBIDDEN).await;
}

#[tokio::test]
async fn a_member_cannot_see_or_revoke_another_members_token_but_an_admin_can() {
    // Arrange
    let app = spawn_app().await;
    let ann = person(&app, "ann@example.com", "member").await;
    let bob = person(&app, "bob@example.com", "member").await;
    let boss = person(&app, "boss@example.com", "admin").await;
    let rw = json!({ "scopes": ["tokens:read", "tokens:revoke"] });
    let (ann_token, _) = token_of(&app, &ann, "ann", rw.clone()).await;
    let (_, bobs) = token_of(&app, &bob, "bob", rw.clone()).await;
    let admin_rw = json!({ "scopes": ["tokens:read", "tokens:revoke", "org:admin"] });
    let (boss_token, _) = token_of(&app, &boss, "boss", admin_rw).await;
    let bob_id = bobs["id"].as_str().unwrap();
    let never = Uuid::now_v7();

    // Act
    let get = app.get(&format!("/v1/tokens/{bob_id}"), &ann_token).await;
    let revoke = app
        .delete(&format!("/v1/tokens/{bob_id}"), &ann_token)
        .await;
    let missing = app.get(&format!("/v1/tokens/{never}"), &ann_token).await;
    let list: Value = app
        .get("/v1/tokens", &ann_token)
        .await
        .json()
        .await
        .unwrap();
    let mine: Value = app
        .get("/v1/tokens?owner=me", &boss_token)
        .await
        .json()
        .await
        .unwrap();
    let of_bob: Value = app
        .get(&format!("/v1/tokens?owner={}", bob.id), &boss_token)
        .await
        .json()
        .await
        .unwrap();
    let by_admin = app
        .delete(&format!("/v1/tokens/{bob_id}"), &boss_token)
        .await;

    // Assert
    let a = error_of(get, StatusCode::NOT_FOUND).await;
    let b = error_of(revoke, StatusCode::NOT_FOUND).await;
    let c = error_of(missing, StatusCode::NOT_FOUND).await;
    assert!(a == b && b == c);
    let names: Vec<&str> = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ann"]);
    assert_eq!(mine["tokens"].as_array().unwrap().len(), 1);
    assert_eq!(mine["tokens"][0]["owner"], boss.id);
    assert_eq!(of_bob["tokens"].as_array().unwrap().len(), 1);
    assert_eq!(of_bob["tokens"][0]["id"], bob_id);
    assert_eq!(by_admin.status(), StatusCode::OK);
}

#[tokio::test]
async fn disabling_a_user_fails_its_tokens_on_the_next_request_and_ends_its_session() {
    // Arrange
    let app = spawn_app().await;
    let p = person(&app, "gus@example.com", "member").await;
    let (token, view) = token_of(&app, &p, "cli", json!({})).await;
    assert_eq!(app.verify(&token, &[]).await["code"], "VALID"); // now cached
    let s = session_of(&app, &p).await;
    let before = with_session(&app, Method::GET, "/v1/users/me", &s, true, &[], None).await;
    assert_eq!(before.status(), StatusCode::OK);

    // Act
    let res = app
        .post(
            &format!("/v1/users/{}/disable", p.id),
            &app.admin_token,
            json!({}),
        )
        .await;

    // Assert
    assert_eq!(res.status(), StatusCode::OK);
    let user: Value = res.json().await.unwrap();
    assert_eq!(user["state"], "disabled");
    assert_eq!(app.verify(&token, &[]).await["code"], "INVALID");
    let after = with_session(&app, Method::GET, "/v1/users/me", &s, true, &[], None).await;
    error_of(after, StatusCode::UNAUTHORIZED).await;
    let audit: Value = app
        .get(
            &format!("/v1/audit?token_id={}", view["id"].as_str().unwrap()),
            &app.admin_token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(
        audit["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "token_revoked")
    );
    let ended: Value = app
        .get("/v1/audit?action=session_ended", &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ended["events"].as_array().unwrap().len(), 1);
    // Enabling lets the user in again; the token stays revoked.
    let res = app
        .post(
            &format!("/v1/users/{}/enable", p.id),
            &app.admin_token,
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(app.verify(&token, &[]).await["code"], "INVALID");
    assert_eq!(
        sign_in(&app, &p.email, PASSWORD).await.status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn a_session_request_without_its_csrf_token_or_from_another_site_is_403() {
    // Arrange
    let app = spawn_app().await;
    let p = person(&app, "hal@example.com", "member").await;
    let s = session_of(&app, &p).await;
    let host = app.address.trim_start_matches("http://").to_string();

    // Act
    let ok = with_session(&app, Method::GET, "/v1/tokens", &s, true, &[], None).await;
    let no_csrf = with_session(&app, Method::GET, "/v1/tokens", &s, false, &[], None).await;
    let wrong_csrf = with_session(
        &app,
        Method::GET,
        "/v1/tokens",
        &s,
        false,
        &[("x-csrf-token", "0".repeat(64).as_str())],
        None,
    )
    .await;
    let cross_origin = with_session(
        &app,
        Method::POST,
        "/v1/tokens",
        &s,
        true,
        &[("origin", "https://evil.example")],
        Some(json!({ "name": "x" })),
    )
    .await;
    let cross_fetch = with_session(
        &app,
        Method::POST,
        "/v1/tokens",
        &s,
        true,
        &[("sec-fetch-site", "cross-site")],
        Some(json!({ "name": "x" })),
    )
    .await;
    let same_origin = with_session(
        &app,
        Method::POST,
        "/v1/tokens",
        &s,
        true,
        &[
            ("origin", format!("http://{host}").as_str()),
            ("sec-fetch-site", "same-origin"),
        ],
        Some(json!({ "name": "from console" })),
    )
    .await;

    // Assert
    assert_eq!(ok.status(), StatusCode::OK);
    for res in [no_csrf, wrong_csrf, cross_origin, cross_fetch] {
        let body = error_of(res, StatusCode::FORBIDDEN).await;
        assert_eq!(body["error"]["code"], "permission_denied");
    }
    assert_eq!(same_origin.status(), StatusCode::CREATED);
    let created: Value = same_origin.json().await.unwrap();
    assert_eq!(created["token"]["owner"], p.id);
    assert_eq!(created["token"]["created_by"], format!("user:{}", p.id));
}

#[tokio::test]
async fn a_person_lists_ends_and_signs_out_of_its_sessions() {
    // Arrange
    let app = spawn_app().await;
    let p = person(&app, "ida@example.com", "member").await;
    let first = session_of(&app, &p).await;
    let second = session_of(&app, &p).await;
    let third = session_of(&app, &p).await;
    assert_ne!(first.cookie, second.cookie, "a new id at every sign-in");

    // Act
    let listed: Value = with_session(
        &app,
        Method::GET,
        "/v1/auth/sessions",
        &first,
        true,
        &[],
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    let second_id = second.body["session"]["id"].as_str().unwrap();
    let ended = with_session(
        &app,
        Method::DELETE,
        &format!("/v1/auth/sessions/{second_id}"),
        &first,
        true,
        &[],
        None,
    )
    .await;
    let others = with_session(
        &app,
        Method::DELETE,
        "/v1/auth/sessions",
        &first,
        true,
        &[],
        None,
    )
    .await;
    let out = with_session(
        &app,
        Method::DELETE,
        "/v1/auth/session",
        &first,
        true,
        &[],
        None,
    )
    .await;

    // Assert
    let sessions = listed["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 3);
    assert_eq!(sessions.iter().filter(|s| s["current"] == true).count(), 1);
    assert_eq!(ended.status(), StatusCode::NO_CONTENT);
    let others: Value = others.json().await.unwrap();
    assert_eq!(others["ended"], 1, "the third only");
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    for s in [&first, &second, &third] {
        let res = with_session(&app, Method::GET, "/v1/users/me", s, true, &[], None).await;
        error_of(res, StatusCode::UNAUTHORIZED).await;
    }
    // A token of the same person may not read or end its sessions.
    let again = session_of(&app, &p).await;
    let (token, _) = token_of(&app, &p, "no perms", json!({})).await;
    error_of(
        app.get("/v1/auth/sessions", &token).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    error_of(
        app.delete("/v1/auth/sessions", &token).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    error_of(
        app.delete("/v1/auth/session", &token).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    let still = with_session(&app, Method::GET, "/v1/users/me", &again, true, &[], None).await;
    assert_eq!(still.status(), StatusCode::OK);
    let logout: Value = app
        .get("/v1/audit?action=logout", &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(logout["events"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_session_cookie_is_httponly_strict_and_secure() {
    // Arrange
    let app = spawn_app().await;
    let p = person(&app, "jo@example.com", "member").await;

    // Act
    let res = sign_in(&app, &p.email, PASSWORD).await;

    // Assert
    let c = res.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(c.starts_with("latchkey_session="));
    for part in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
        "Secure",
        "Max-Age=28800",
    ] {
        assert!(c.contains(part), "{part} missing: {c}");
    }
    let body: Value = res.json().await.unwrap();
    let secret = c
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("latchkey_session=");
    assert!(
        !body.to_string().contains(secret),
        "the id travels in the cookie only"
    );
}

#[tokio::test]
async fn an_idle_session_expires_and_a_used_one_lasts_until_the_absolute_timeout() {
    // Arrange
    let app = spawn_with_clock().await;
    let clock = app.clock.clone().unwrap();
    let p = person(&app, "kim@example.com", "member").await;
    let idle = session_of(&app, &p).await;
    let busy = session_of(&app, &p).await;

    // Act: the busy one is used every 20 minutes, the idle one never.
    let mut busy_statuses = Vec::new();
    for _ in 0..3 {
        clock.advance(chrono::TimeDelta::minutes(20));
        let res = with_session(&app, Method::GET, "/v1/users/me", &busy, true, &[], None).await;
        busy_statuses.push(res.status());
    }
    let idle_after = with_session(&app, Method::GET, "/v1/users/me", &idle, true, &[], None).await;
    clock.advance(chrono::TimeDelta::hours(7));
    let busy_after_8h =
        with_session(&app, Method::GET, "/v1/users/me", &busy, true, &[], None).await;

    // Assert
    assert!(
        busy_statuses.iter().all(|s| *s == StatusCode::OK),
        "{busy_statuses:?}"
    );
    error_of(idle_after, StatusCode::UNAUTHORIZED).await;
    error_of(busy_after_8h, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn passwords_breaking_a_rule_are_400_naming_the_rule_without_echoing_it() {
    // Arrange
    let app = spawn_app().await;
    let created = invite(&app, &app.admin_token, "lee@example.com", "member").await;
    let token = created["setup_token"].as_str().unwrap();
    let long = "y".repeat(129);

    // Act / Assert
    for (pw, rule) in [
        ("short1", "at least 8"),
        (long.as_str(), "at most 128"),
        ("iloveyou123", "most common"),
    ] {
        let body = error_of(setup(&app, token, pw).await, StatusCode::BAD_REQUEST).await;
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains(rule), "{msg}");
        assert!(!msg.contains(pw), "{msg}");
    }
    assert_eq!(
        setup(&app, token, "ünïcödé pässwörd").await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_last_active_admin_cannot_be_demoted_or_disabled() {
    // Arrange
    let app = spawn_app().await;
    let only = person(&app, "max@example.com", "admin").await;

    // Act
    let demote = app
        .request(
            Method::PATCH,
            &format!("/v1/users/{}", only.id),
            Some(&app.admin_token),
            Some(json!({ "role": "member" })),
        )
        .await;
    let disable = app
        .post(
            &format!("/v1/users/{}/disable", only.id),
            &app.admin_token,
            json!({}),
        )
        .await;
    let second = person(&app, "ned@example.com", "admin").await;
    let demote_now = app
        .request(
            Method::PATCH,
            &format!("/v1/users/{}", only.id),
            Some(&app.admin_token),
            Some(json!({ "role": "member" })),
        )
        .await;

    // Assert
    for res in [demote, disable] {
        let body = error_of(res, StatusCode::CONFLICT).await;
        assert_eq!(body["error"]["code"], "failed_precondition");
    }
    assert_eq!(demote_now.status(), StatusCode::OK, "{}", second.id);
}

#[tokio::test]
async fn a_demotion_revokes_the_tokens_that_hold_more_than_the_new_role() {
    // Arrange
    let app = spawn_app().await;
    let p = person(&app, "ola@example.com", "admin").await;
    let _other_admin = person(&app, "pia@example.com", "admin").await;
    let (audit_token, _) = token_of(&app, &p, "auditor", json!({ "scopes": ["audit:read"] })).await;
    let (plain_token, _) = token_of(&app, &p, "plain", json!({ "scopes": ["tokens:read"] })).await;

    // Act
    let res = app
        .request(
            Method::PATCH,
            &format!("/v1/users/{}", p.id),
            Some(&app.admin_token),
            Some(json!({ "role": "member" })),
        )
        .await;

    // Assert
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(app.verify(&audit_token, &[]).await["code"], "INVALID");
    assert_eq!(app.verify(&plain_token, &[]).await["code"], "VALID");
}

#[tokio::test]
async fn users_endpoints_refuse_the_unauthenticated_the_malformed_the_insufficient_and_other_orgs()
{
    // Arrange
    let app = spawn_app().await;
    let member = person(&app, "quin@example.com", "member").await;
    let (member_token, _) = token_of(&app, &member, "m", json!({})).await;
    let (org2, _) = app.second_org("other").await;
    let res = app
        .post(
            "/v1/users",
            &app.admin_token,
            json!({ "org_id": org2, "email": "ray@example.com", "name": "Ray" }),
        )
        .await;
    let other: Value = res.json().await.unwrap();
    let other_id = other["user"]["id"].as_str().unwrap();
    let never = Uuid::now_v7();

    // Act / Assert: unauthenticated.
    let res = app.request(Method::GET, "/v1/users", None, None).await;
    assert_eq!(
        error_of(res, StatusCode::UNAUTHORIZED).await["error"]["code"],
        "unauthenticated"
    );
    // Malformed.
    for body in [
        json!({ "email": "no-at-sign", "name": "x" }),
        json!({ "email": "a@b@c", "name": "x" }),
        json!({ "email": "s@example.com", "name": "x", "role": "owner" }),
        json!({ "email": "s@example.com", "name": "x", "extra": 1 }),
        json!({ "email": "s@example.com", "name": "" }),
    ] {
        error_of(
            app.post("/v1/users", &app.admin_token, body).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    error_of(
        app.get("/v1/users/not-a-uuid", &app.admin_token).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    error_of(
        exchange(&app, &member.email, PASSWORD, json!({ "nope": true })).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    // Insufficient role.
    error_of(
        app.get("/v1/users", &member_token).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    error_of(
        app.post(
            "/v1/users",
            &member_token,
            json!({ "email": "t@example.com", "name": "t" }),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    error_of(
        app.post(
            &format!("/v1/users/{}/disable", member.id),
            &member_token,
            json!({}),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(
        app.get(&format!("/v1/users/{}", member.id), &member_token)
            .await
            .status(),
        StatusCode::OK
    );
    // A token with users:manage but not everything an admin holds cannot make an admin.
    let (manager, _) = app
        .create_token(
            &app.admin_token,
            json!({ "name": "mgr", "scopes": ["users:manage", "users:read", "tokens:create", "tokens:read", "tokens:revoke", "tokens:rotate"] }),
        )
        .await;
    error_of(
        app.post(
            "/v1/users",
            &manager,
            json!({ "email": "u@example.com", "name": "u", "role": "admin" }),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(
        app.post(
            "/v1/users",
            &manager,
            json!({ "email": "u@example.com", "name": "u" })
        )
        .await
        .status(),
        StatusCode::CREATED
    );
    // Another org's user answers like one that never existed.
    let a = error_of(
        app.get(&format!("/v1/users/{other_id}"), &manager).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let b = error_of(
        app.get(&format!("/v1/users/{never}"), &manager).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(a, b);
    error_of(
        app.post(
            &format!("/v1/users/{other_id}/disable"),
            &manager,
            json!({}),
        )
        .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let listed: Value = app.get("/v1/users", &manager).await.json().await.unwrap();
    assert!(!listed.to_string().contains(other_id));
    let listed2: Value = app
        .get(&format!("/v1/users?org_id={org2}"), &manager)
        .await
        .json()
        .await
        .unwrap_or(Value::Null);
    assert!(!listed2.to_string().contains(other_id));
    // An email is unique in the deployment, whatever its case.
    error_of(
        app.post(
            "/v1/users",
            &app.admin_token,
            json!({ "email": "RAY@example.com", "name": "r" }),
        )
        .await,
        StatusCode::CONFLICT,
    )
    .await;
    // A token without an owner has no "me".
    error_of(
        app.get("/v1/users/me", &app.admin_token).await,
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn a_person_changes_its_password_and_its_other_sessions_end() {
    // Arrange
    let app = spawn_app().await;
    let p = person(&app, "sue@example.com", "member").await;
    let here = session_of(&app, &p).await;
    let elsewhere = session_of(&app, &p).await;

    // Act
    let wrong = with_session(
        &app,
        Method::POST,
        "/v1/users/me/password",
        &here,
        true,
        &[],
        Some(json!({ "current_password": "not it at all", "new_password": "a brand new secret" })),
    )
    .await;
    let ok = with_session(
        &app,
        Method::POST,
        "/v1/users/me/password",
        &here,
        true,
        &[],
        Some(json!({ "current_password": PASSWORD, "new_password": "a brand new secret" })),
    )
    .await;

    // Assert
    error_of(wrong, StatusCode::FORBIDDEN).await;
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        with_session(&app, Method::GET, "/v1/users/me", &here, true, &[], None)
            .await
            .status(),
        StatusCode::OK
    );
    error_of(
        with_session(
            &app,
            Method::GET,
            "/v1/users/me",
            &elsewhere,
            true,
            &[],
            None,
        )
        .await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    error_of(
        sign_in(&app, &p.email, PASSWORD).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(
        sign_in(&app, &p.email, "a brand new secret").await.status(),
        StatusCode::CREATED
    );
    let audit: Value = app
        .get(&format!("/v1/audit?actor=user:{}", p.id), &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"password_changed"), "{actions:?}");
    assert!(actions.contains(&"login_succeeded"), "{actions:?}");
}

#[tokio::test]
async fn a_token_minting_tokens_is_limited_per_token_and_a_person_per_address() {
    // Arrange
    let app = spawn_app_with(&[
        "--rate-limit-mint-per-hour",
        "2",
        "--rate-limit-mint-per-token-per-hour",
        "1000",
    ])
    .await;
    let p = person(&app, "tom@example.com", "member").await;

    // Act: a backend's token mints 12 keys; a person mints 3 through the exchange.
    let mut by_token = Vec::new();
    for i in 0..12 {
        by_token.push(
            app.post(
                "/v1/tokens",
                &app.admin_token,
                json!({ "name": format!("k{i}") }),
            )
            .await
            .status(),
        );
    }
    let mut by_person = Vec::new();
    for i in 0..3 {
        by_person.push(
            exchange(&app, &p.email, PASSWORD, json!({ "name": format!("p{i}") }))
                .await
                .status(),
        );
    }

    // Assert
    assert!(
        by_token.iter().all(|s| *s == StatusCode::CREATED),
        "{by_token:?}"
    );
    assert_eq!(
        by_person,
        [
            StatusCode::CREATED,
            StatusCode::CREATED,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
}

#[tokio::test]
async fn no_password_session_id_setup_token_or_csrf_token_reaches_logs_audit_or_metrics() {
    // Arrange
    let app = spawn_app().await;
    let created = invite(&app, &app.admin_token, "uma@example.com", "admin").await;
    let setup_token = created["setup_token"].as_str().unwrap().to_string();
    assert_eq!(
        setup(&app, &setup_token, PASSWORD).await.status(),
        StatusCode::OK
    );
    let p = Person {
        id: created["user"]["id"].as_str().unwrap().into(),
        email: "uma@example.com".into(),
    };
    let _ = exchange(&app, &p.email, "wrong wrong wrong", json!({})).await;
    let s = session_of(&app, &p).await;
    let _ = with_session(&app, Method::GET, "/v1/users/me", &s, true, &[], None).await;
    let session_secret = s.cookie.trim_start_matches("latchkey_session=").to_string();

    // Act
    let audit = app
        .get("/v1/audit?page_size=500", &app.admin_token)
        .await
        .text()
        .await
        .unwrap();
    let metrics = app
        .request(Method::GET, "/metrics", None, None)
        .await
        .text()
        .await
        .unwrap();
    let logs = app.logs();

    // Assert
    for secret in [
        PASSWORD,
        "wrong wrong wrong",
        setup_token.as_str(),
        session_secret.as_str(),
        s.csrf.as_str(),
    ] {
        for (what, text) in [("audit", &audit), ("metrics", &metrics), ("logs", &logs)] {
            assert!(!text.contains(secret), "{what} holds a secret");
        }
    }
    assert!(metrics.contains("latchkey_login_total"));
    assert!(metrics.contains("latchkey_sessions_active"));
}
