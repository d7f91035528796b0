//! The console's key pages over real HTTP: sign-in, the key list, creating a key (its secret
//! shown once), a key's actions, and the refusals (no session, no CSRF token, another site,
//! another person's key).

use reqwest::{StatusCode, redirect};
use serde_json::json;

use crate::helpers::{TestApp, spawn_app};

const PASSWORD: &str = "console password 42";

/// Sends a URL-encoded form, as a browser does.
trait FormBody {
    fn form_body<T: serde::Serialize + ?Sized>(self, form: &T) -> Self;
}

impl FormBody for reqwest::RequestBuilder {
    fn form_body<T: serde::Serialize + ?Sized>(self, form: &T) -> Self {
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(form).unwrap())
    }
}

/// A client that does not follow redirects, so the tests see them.
fn browser() -> reqwest::Client {
    crate::helpers::reqwest_builder()
        .redirect(redirect::Policy::none())
        .build()
        .unwrap()
}

/// Makes a user with `PASSWORD` and signs it in through the console; returns its cookie.
async fn signed_in(app: &TestApp, email: &str, role: &str) -> String {
    let res = app
        .post(
            "/v1/users",
            &app.admin_token,
            json!({ "email": email, "name": "Person", "role": role }),
        )
        .await;
    let created: serde_json::Value = res.json().await.unwrap();
    let res = app
        .request(
            reqwest::Method::POST,
            "/v1/auth/setup",
            None,
            Some(json!({ "setup_token": created["setup_token"], "password": PASSWORD })),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = browser()
        .post(format!("{}/ui/login", app.address))
        .form_body(&[("email", email), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let cookie = res.headers()["set-cookie"].to_str().unwrap();
    cookie.split(';').next().unwrap().to_string()
}

async fn get_page(app: &TestApp, path: &str, cookie: &str) -> (StatusCode, String) {
    let res = browser()
        .get(format!("{}{path}", app.address))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    (res.status(), res.text().await.unwrap())
}

/// The key shown once on a page.
fn plaintext_of(html: &str) -> String {
    let marker = "id=\"plaintext\" readonly value=\"";
    let at = html.find(marker).expect("the key on the page") + marker.len();
    html[at..at + html[at..].find('"').unwrap()].to_string()
}

/// The value of the first `<input name=NAME value=...>` of a page.
fn field(html: &str, name: &str) -> String {
    let at = html
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("{name} in page"));
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_string()
}

async fn post_form(
    app: &TestApp,
    path: &str,
    cookie: &str,
    form: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut rb = browser()
        .post(format!("{}{path}", app.address))
        .header("cookie", cookie)
        .form_body(form);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let res = rb.send().await.unwrap();
    (res.status(), res.text().await.unwrap())
}

/// Creates a key through the form; returns (status, page, nonce used).
async fn create_key(app: &TestApp, cookie: &str, name: &str) -> (StatusCode, String, String) {
    let (_, form) = get_page(app, "/ui/keys/new", cookie).await;
    let csrf = field(&form, "csrf_token");
    let nonce = field(&form, "nonce");
    let (status, page) = post_form(
        app,
        "/ui/keys/new",
        cookie,
        &[
            ("csrf_token", &csrf),
            ("nonce", &nonce),
            ("name", name),
            ("type", "pat"),
            ("scope", "tokens:read"),
            ("expiry", "30"),
        ],
        &[],
    )
    .await;
    (status, page, nonce)
}

#[tokio::test]
async fn the_root_and_every_page_without_a_session_lead_to_the_sign_in_page() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let root = browser()
        .get(format!("{}/", app.address))
        .send()
        .await
        .unwrap();
    let keys = browser()
        .get(format!("{}/ui/keys", app.address))
        .send()
        .await
        .unwrap();
    let login = browser()
        .get(format!("{}/ui/login", app.address))
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(root.status(), StatusCode::SEE_OTHER);
    assert_eq!(root.headers()["location"], "/ui");
    assert_eq!(keys.headers()["location"], "/ui/login");
    let h = login.headers();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"));
    assert!(!csp.contains("unsafe-inline"));
    assert_eq!(h["referrer-policy"], "same-origin");
    assert_eq!(h["cache-control"], "no-store");
    let html = login.text().await.unwrap();
    assert!(html.contains("<label for=\"email\">") && html.contains("<label for=\"password\">"));
}

#[tokio::test]
async fn a_wrong_password_shows_the_uniform_message_on_the_sign_in_page() {
    // Arrange
    let app = spawn_app().await;
    let _ = signed_in(&app, "vi@example.com", "member").await;

    // Act
    let res = browser()
        .post(format!("{}/ui/login", app.address))
        .form_body(&[
            ("email", "vi@example.com"),
            ("password", "not the password"),
        ])
        .send()
        .await
        .unwrap();
    let unknown = browser()
        .post(format!("{}/ui/login", app.address))
        .form_body(&[
            ("email", "nobody@example.com"),
            ("password", "not the password"),
        ])
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.headers().get("set-cookie").is_none());
    let a = res.text().await.unwrap();
    let b = unknown.text().await.unwrap();
    assert!(a.contains("The email or the password is not right."));
    assert_eq!(
        a.replace("vi@example.com", ""),
        b.replace("nobody@example.com", "")
    );
    assert!(!a.contains("not the password"));
}

#[tokio::test]
async fn a_key_made_in_the_console_is_shown_once_and_a_resent_form_shows_it_never_again() {
    // Arrange
    let app = spawn_app().await;
    let cookie = signed_in(&app, "wyn@example.com", "member").await;

    // Act
    let (status, page, nonce) = create_key(&app, &cookie, "laptop").await;
    let plaintext = plaintext_of(&page);
    let (_, form) = get_page(&app, "/ui/keys/new", &cookie).await;
    let csrf = field(&form, "csrf_token");
    let (again, again_page) = post_form(
        &app,
        "/ui/keys/new",
        &cookie,
        &[
            ("csrf_token", &csrf),
            ("nonce", &nonce),
            ("name", "laptop 2"),
            ("type", "pat"),
            ("expiry", "30"),
        ],
        &[],
    )
    .await;
    let (_, list) = get_page(&app, "/ui/keys", &cookie).await;

    // Assert
    assert_eq!(status, StatusCode::CREATED);
    assert!(page.contains("shown this once"));
    let v = app.verify(&plaintext, &["tokens:read"]).await;
    assert_eq!(v["code"], "VALID", "{plaintext}");
    assert_eq!(again, StatusCode::CONFLICT);
    assert!(!again_page.contains(&plaintext[..20]));
    assert!(list.contains("laptop") && !list.contains("laptop 2"));
    assert!(!list.contains(&plaintext[..30]));
}

#[tokio::test]
async fn a_form_without_its_csrf_token_or_from_another_site_is_refused() {
    // Arrange
    let app = spawn_app().await;
    let cookie = signed_in(&app, "xi@example.com", "member").await;
    let (_, form) = get_page(&app, "/ui/keys/new", &cookie).await;
    let csrf = field(&form, "csrf_token");
    let base = [("name", "x"), ("type", "pat"), ("expiry", "30")];

    // Act
    let (no_csrf, _) = post_form(&app, "/ui/keys/new", &cookie, &base, &[]).await;
    let with = [
        ("csrf_token", csrf.as_str()),
        ("name", "y"),
        ("type", "pat"),
        ("expiry", "30"),
    ];
    let (other_origin, _) = post_form(
        &app,
        "/ui/keys/new",
        &cookie,
        &with,
        &[("origin", "https://evil.example")],
    )
    .await;
    let (other_site, _) = post_form(
        &app,
        "/ui/keys/new",
        &cookie,
        &with,
        &[("sec-fetch-site", "cross-site")],
    )
    .await;
    let (login_elsewhere, _) = post_form(
        &app,
        "/ui/login",
        "",
        &[("email", "xi@example.com"), ("password", PASSWORD)],
        &[("origin", "https://evil.example")],
    )
    .await;

    // Assert
    assert_eq!(no_csrf, StatusCode::FORBIDDEN);
    assert_eq!(other_origin, StatusCode::FORBIDDEN);
    assert_eq!(other_site, StatusCode::FORBIDDEN);
    assert_eq!(login_elsewhere, StatusCode::FORBIDDEN);
    let list: serde_json::Value = app
        .get("/v1/tokens", &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        list["tokens"].as_array().unwrap().len(),
        1,
        "only the bootstrap token"
    );
}

#[tokio::test]
async fn another_persons_key_page_is_not_found_like_a_key_that_never_existed() {
    // Arrange
    let app = spawn_app().await;
    let ann = signed_in(&app, "yo@example.com", "member").await;
    let bob = signed_in(&app, "zed@example.com", "member").await;
    let (_, page, _) = create_key(&app, &ann, "anns").await;
    let id = page.split("/ui/keys/").nth(1).unwrap()[..36].to_string();

    // Act
    let (own, _) = get_page(&app, &format!("/ui/keys/{id}"), &ann).await;
    let (other, other_page) = get_page(&app, &format!("/ui/keys/{id}"), &bob).await;
    let (never, never_page) =
        get_page(&app, &format!("/ui/keys/{}", uuid::Uuid::now_v7()), &bob).await;
    let (garbage, _) = get_page(&app, "/ui/keys/not-a-key", &bob).await;
    let (_, bobs_list) = get_page(&app, "/ui/keys", &bob).await;

    // Assert
    assert_eq!(own, StatusCode::OK);
    assert_eq!(other, StatusCode::NOT_FOUND);
    assert_eq!(never, StatusCode::NOT_FOUND);
    assert_eq!(other_page, never_page);
    assert_eq!(garbage, StatusCode::NOT_FOUND);
    assert!(!bobs_list.contains("anns"));
}

#[tokio::test]
async fn revoking_from_the_key_page_needs_the_confirmation_and_stops_the_key_at_once() {
    // Arrange
    let app = spawn_app().await;
    let cookie = signed_in(&app, "al@example.com", "member").await;
    let (_, page, _) = create_key(&app, &cookie, "to revoke").await;
    let plaintext = plaintext_of(&page);
    let id = page.split("/ui/keys/").nth(1).unwrap()[..36].to_string();
    assert_eq!(app.verify(&plaintext, &[]).await["code"], "VALID");
    let (_, key_page) = get_page(&app, &format!("/ui/keys/{id}"), &cookie).await;
    let csrf = field(&key_page, "csrf_token");
    let path = format!("/ui/keys/{id}/revoke");

    // Act
    let (unconfirmed, _) = post_form(&app, &path, &cookie, &[("csrf_token", &csrf)], &[]).await;
    let still = app.verify(&plaintext, &[]).await;
    let (confirmed, _) = post_form(
        &app,
        &path,
        &cookie,
        &[("csrf_token", &csrf), ("confirm", "yes")],
        &[],
    )
    .await;

    // Assert
    assert_eq!(unconfirmed, StatusCode::BAD_REQUEST);
    assert_eq!(still["code"], "VALID");
    assert_eq!(confirmed, StatusCode::SEE_OTHER);
    assert_eq!(app.verify(&plaintext, &[]).await["code"], "INVALID");
    let (_, after) = get_page(&app, &format!("/ui/keys/{id}"), &cookie).await;
    assert!(after.contains("revoked"));
}

#[tokio::test]
async fn rotating_from_the_key_page_with_no_grace_shows_the_new_key_once_and_stops_the_old() {
    // Arrange
    let app = spawn_app().await;
    let cookie = signed_in(&app, "bo@example.com", "member").await;
    let (_, page, _) = create_key(&app, &cookie, "to rotate").await;
    let old = plaintext_of(&page);
    let id = page.split("/ui/keys/").nth(1).unwrap()[..36].to_string();
    let (_, key_page) = get_page(&app, &format!("/ui/keys/{id}"), &cookie).await;
    let csrf = field(&key_page, "csrf_token");

    // Act
    let (status, rotated) = post_form(
        &app,
        &format!("/ui/keys/{id}/rotate"),
        &cookie,
        &[("csrf_token", &csrf), ("grace_seconds", "0")],
        &[],
    )
    .await;

    // Assert
    assert_eq!(status, StatusCode::CREATED);
    let new = plaintext_of(&rotated);
    assert_ne!(new, old);
    assert_eq!(app.verify(&old, &[]).await["code"], "INVALID");
    assert_eq!(app.verify(&new, &[]).await["code"], "VALID");
}
