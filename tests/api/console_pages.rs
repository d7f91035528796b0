//! The console's people and org pages over real HTTP, as a browser without JavaScript drives
//! them: a cookie, form posts with the page's CSRF token, and 303 redirects (not followed, so
//! each answer is checked as sent).

use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, ORIGIN, SET_COOKIE, USER_AGENT};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

const PASSWORD: &str = "correct horse battery staple";

/// A browser signed in to the console: its session cookie and the CSRF token of its pages.
struct Browser {
    client: reqwest::Client,
    base: String,
    cookie: String,
    csrf: String,
}

/// A form body, as a browser sends it.
trait FormBody {
    fn form_fields(self, form: &[(&str, &str)]) -> Self;
}

impl FormBody for reqwest::RequestBuilder {
    fn form_fields(self, form: &[(&str, &str)]) -> Self {
        self.header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(form).unwrap())
    }
}

fn no_redirects() -> reqwest::Client {
    crate::helpers::reqwest_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A user of the bootstrap org with `PASSWORD`, made over REST; returns its id.
async fn person(app: &TestApp, email: &str, name: &str, role: &str) -> String {
    let res = app
        .post(
            "/v1/users",
            &app.admin_token,
            json!({ "email": email, "name": name, "role": role }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let created: Value = res.json().await.unwrap();
    let res = app
        .request(
            Method::POST,
            "/v1/auth/setup",
            None,
            Some(json!({ "setup_token": created["setup_token"], "password": PASSWORD })),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    created["user"]["id"].as_str().unwrap().to_string()
}

/// The value of the first `csrf_token` field of a page.
fn csrf_of(html: &str) -> String {
    value_after(html, "name=\"csrf_token\" value=\"")
}

/// The text from the end of the first `marker` up to the next double quote.
fn value_after(html: &str, marker: &str) -> String {
    let start = html
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} missing:\n{html}"))
        + marker.len();
    let len = html[start..].find('"').unwrap();
    html[start..start + len].to_string()
}

/// Signs in through the console's sign-in form with `agent` as the browser's user agent.
async fn sign_in_as(app: &TestApp, email: &str, password: &str, agent: &str) -> Browser {
    let client = no_redirects();
    let res = client
        .post(format!("{}/ui/login", app.address))
        .header(USER_AGENT, agent)
        .form_fields(&[("email", email), ("password", password)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let cookie = res.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let mut b = Browser {
        client,
        base: app.address.clone(),
        cookie,
        csrf: String::new(),
    };
    let page = b.get("/ui/account").await;
    assert_eq!(page.status(), StatusCode::OK);
    b.csrf = csrf_of(&page.text().await.unwrap());
    b
}

async fn sign_in(app: &TestApp, email: &str) -> Browser {
    sign_in_as(app, email, PASSWORD, "test-browser").await
}

impl Browser {
    async fn get(&self, path: &str) -> Response {
        self.client
            .get(format!("{}{}", self.base, path))
            .header(COOKIE, &self.cookie)
            .send()
            .await
            .unwrap()
    }

    /// Posts a form the way the page does: with the page's CSRF token.
    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Response {
        let mut fields = form.to_vec();
        fields.push(("csrf_token", &self.csrf));
        self.post_as_is(path, &fields, &[]).await
    }

    /// Posts exactly `form`, with extra headers.
    async fn post_as_is(
        &self,
        path: &str,
        form: &[(&str, &str)],
        headers: &[(reqwest::header::HeaderName, &str)],
    ) -> Response {
        let mut rb = self
            .client
            .post(format!("{}{}", self.base, path))
            .header(COOKIE, &self.cookie)
            .form_fields(form);
        for (k, v) in headers {
            rb = rb.header(k, *v);
        }
        rb.send().await.unwrap()
    }
}

fn location(res: &Response) -> &str {
    res.headers()[LOCATION].to_str().unwrap()
}

/// A page's status and text.
async fn page(res: Response) -> (StatusCode, String) {
    let status = res.status();
    (status, res.text().await.unwrap())
}

#[tokio::test]
async fn an_admin_invites_a_person_whose_setup_link_sets_a_password_in_the_console() {
    // Arrange
    let app = spawn_app().await;
    person(&app, "ada@example.com", "Ada", "admin").await;
    let ada = sign_in(&app, "ada@example.com").await;
    let public = no_redirects();

    // Act
    let (invited_status, invited) = page(
        ada.post(
            "/ui/users/invite",
            &[
                ("email", "bo@example.com"),
                ("name", "Bo"),
                ("role", "member"),
            ],
        )
        .await,
    )
    .await;
    let (taken_status, taken) = page(
        ada.post(
            "/ui/users/invite",
            &[
                ("email", "BO@example.com"),
                ("name", "Bo"),
                ("role", "member"),
            ],
        )
        .await,
    )
    .await;
    let link = value_after(&invited, "/ui/setup?token=");
    let setup_path = format!("/ui/setup?token={link}");
    let (form_status, form) = page(
        public
            .get(format!("{}{setup_path}", app.address))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let post_setup = |password: &'static str, repeat: &'static str| {
        public
            .post(format!("{}/ui/setup", app.address))
            .form_fields(&[
                ("token", link.as_str()),
                ("password", password),
                ("repeat", repeat),
            ])
            .send()
    };
    let (mismatch_status, mismatch) =
        page(post_setup(PASSWORD, "something else").await.unwrap()).await;
    let set = post_setup(PASSWORD, PASSWORD).await.unwrap();
    let (again_status, again) = page(post_setup(PASSWORD, PASSWORD).await.unwrap()).await;
    let (done_status, done) = page(
        public
            .get(format!("{}{}", app.address, location(&set)))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let bo = sign_in(&app, "bo@example.com").await;
    let (_, users) = page(ada.get("/ui/users").await).await;

    // Assert
    assert_eq!(invited_status, StatusCode::CREATED);
    assert!(invited.contains("data-copy=\"setup-url\""), "{invited}");
    assert!(invited.contains("works once, for 24 hours"), "{invited}");
    assert_eq!(taken_status, StatusCode::CONFLICT);
    assert!(
        taken.contains("A user with this email already exists."),
        "{taken}"
    );
    assert!(taken.contains("id=\"invite-email-error\""), "{taken}");
    assert_eq!(form_status, StatusCode::OK);
    assert!(form.contains(&format!("name=\"token\" value=\"{link}\"")));
    assert!(form.contains("8-128 characters"));
    assert_eq!(mismatch_status, StatusCode::BAD_REQUEST);
    assert!(mismatch.contains("passwords do not match"), "{mismatch}");
    assert_eq!(set.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&set), "/ui/setup/done");
    assert_eq!(again_status, StatusCode::BAD_REQUEST);
    assert!(again.contains("setup link is not valid"), "{again}");
    assert_eq!(done_status, StatusCode::OK);
    assert!(done.contains("Password set"));
    assert!(done.contains("href=\"/ui/login\""));
    assert!(!bo.csrf.is_empty());
    assert!(users.contains("bo@example.com"));
    assert!(users.contains("Last sign-in"));
}

#[tokio::test]
async fn a_member_gets_the_403_page_for_users_and_audit_and_sees_no_admin_links() {
    // Arrange
    let app = spawn_app().await;
    person(&app, "mo@example.com", "Mo", "member").await;
    person(&app, "ada@example.com", "Ada", "admin").await;
    let mo = sign_in(&app, "mo@example.com").await;
    let ada = sign_in(&app, "ada@example.com").await;
    // An event whose actor is a token, with a target token.
    let (_, token) = app
        .token_with(&app.admin_token, "ci", &["tokens:read"])
        .await;

    // Act
    let (users_status, users) = page(mo.get("/ui/users").await).await;
    let (audit_status, audit) = page(mo.get("/ui/audit").await).await;
    let (account_status, account) = page(mo.get("/ui/account").await).await;
    let (admin_audit_status, admin_audit) = page(ada.get("/ui/audit").await).await;
    let (_, filtered) = page(ada.get("/ui/audit?action=token_created").await).await;

    // Assert
    assert_eq!(users_status, StatusCode::FORBIDDEN);
    assert!(users.contains("users:read"), "{users}");
    assert_eq!(audit_status, StatusCode::FORBIDDEN);
    assert!(audit.contains("audit:read"), "{audit}");
    for refused in [&users, &audit] {
        // The error keeps the person's navigation, without the links they may not follow.
        assert!(refused.contains("aria-label=\"Main\""), "{refused}");
        assert!(refused.contains("Sign out"));
        assert!(!refused.contains("href=\"/ui/users\""));
    }
    assert_eq!(account_status, StatusCode::OK);
    assert!(account.contains("href=\"/ui/account\""));
    assert!(!account.contains("href=\"/ui/users\""));
    assert!(!account.contains("href=\"/ui/audit\""));
    assert!(!account.contains("href=\"/ui/settings\""));
    assert_eq!(admin_audit_status, StatusCode::OK);
    // A user actor shows the user's name; a token actor and a target token link to the key.
    assert!(admin_audit.contains(">Ada</a>"), "{admin_audit}");
    assert!(admin_audit.contains("<td>login_succeeded</td>"));
    let id = token["id"].as_str().unwrap();
    assert!(
        filtered.contains(&format!("href=\"/ui/keys/{id}\"")),
        "{filtered}"
    );
    assert!(filtered.contains("title=\"token:"), "{filtered}");
    assert!(filtered.contains("<td>token_created</td>"));
    assert!(!filtered.contains("<td>login_succeeded</td>"));
}

#[tokio::test]
async fn a_console_form_without_its_csrf_token_or_from_another_site_is_refused() {
    // Arrange
    let app = spawn_app().await;
    person(&app, "ada@example.com", "Ada", "admin").await;
    let ada = sign_in(&app, "ada@example.com").await;
    let invite = [
        ("email", "eve@example.com"),
        ("name", "Eve"),
        ("role", "admin"),
    ];
    let mut with_token = invite.to_vec();
    with_token.push(("csrf_token", &ada.csrf));

    // Act
    let without = ada.post_as_is("/ui/users/invite", &invite, &[]).await;
    let wrong = ada
        .post_as_is(
            "/ui/users/invite",
            &[("csrf_token", "0000"), ("email", "eve@example.com")],
            &[],
        )
        .await;
    let cross = ada
        .post_as_is(
            "/ui/users/invite",
            &with_token,
            &[(ORIGIN, "https://evil.example")],
        )
        .await;
    let settings = ada
        .post_as_is("/ui/settings", &[("max_days", "1")], &[])
        .await;
    let users: Value = app
        .get("/v1/users", &app.admin_token)
        .await
        .json()
        .await
        .unwrap();

    // Assert
    assert_eq!(without.status(), StatusCode::FORBIDDEN);
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    let (status, body) = page(cross).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("another site"), "{body}");
    assert_eq!(settings.status(), StatusCode::FORBIDDEN);
    let emails: Vec<&str> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["ada@example.com"]);
}

#[tokio::test]
async fn disabling_a_user_from_the_users_page_revokes_its_tokens() {
    // Arrange
    let app = spawn_app().await;
    let ada_id = person(&app, "ada@example.com", "Ada", "admin").await;
    let mo_id = person(&app, "mo@example.com", "Mo", "member").await;
    let res = app
        .request(
            Method::POST,
            "/v1/auth/token",
            None,
            Some(json!({
                "email": "mo@example.com", "password": PASSWORD, "name": "laptop",
                "scopes": ["tokens:read"],
            })),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let minted: Value = res.json().await.unwrap();
    let plaintext = minted["plaintext"].as_str().unwrap();
    assert_eq!(app.verify(plaintext, &[]).await["code"], "VALID");
    let ada = sign_in(&app, "ada@example.com").await;
    let mo = sign_in(&app, "mo@example.com").await;

    // Act
    let (unconfirmed_status, unconfirmed) =
        page(ada.post(&format!("/ui/users/{mo_id}/disable"), &[]).await).await;
    let disabled = ada
        .post(&format!("/ui/users/{mo_id}/disable"), &[("confirm", "yes")])
        .await;
    let (_, list) = page(ada.get(location(&disabled)).await).await;
    let (last_status, last) = page(
        ada.post(
            &format!("/ui/users/{ada_id}/disable"),
            &[("confirm", "yes")],
        )
        .await,
    )
    .await;
    let (demote_status, demote) = page(
        ada.post(&format!("/ui/users/{ada_id}/role"), &[("role", "member")])
            .await,
    )
    .await;
    let mo_after = mo.get("/ui/keys").await;
    let enabled = ada.post(&format!("/ui/users/{mo_id}/enable"), &[]).await;

    // Assert
    assert_eq!(unconfirmed_status, StatusCode::BAD_REQUEST);
    assert!(unconfirmed.contains("Tick the box"), "{unconfirmed}");
    assert_eq!(disabled.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&disabled), "/ui/users?done=disabled");
    assert!(list.contains("was disabled"));
    assert!(list.contains(&format!("/ui/users/{mo_id}/enable")));
    assert_eq!(app.verify(plaintext, &[]).await["code"], "INVALID");
    assert_eq!(last_status, StatusCode::CONFLICT);
    assert!(last.contains("last active admin"), "{last}");
    assert!(last.contains(&format!("id=\"user-{ada_id}-error\"")));
    assert_eq!(demote_status, StatusCode::CONFLICT);
    assert!(demote.contains("last active admin"));
    assert_eq!(mo_after.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&mo_after), "/ui/login");
    assert_eq!(enabled.status(), StatusCode::SEE_OTHER);
    // Its revoked token stays revoked.
    assert_eq!(app.verify(plaintext, &[]).await["code"], "INVALID");
}

#[tokio::test]
async fn the_account_page_lists_its_sessions_and_ends_another_one() {
    // Arrange
    let app = spawn_app().await;
    person(&app, "mo@example.com", "Mo", "member").await;
    let here = sign_in(&app, "mo@example.com").await;
    let there = sign_in_as(&app, "mo@example.com", PASSWORD, "OtherBrowser/2.0").await;

    // Act
    let (_, account) = page(here.get("/ui/account").await).await;
    let other = value_after(&account, "action=\"/ui/account/sessions/");
    let ended = here
        .post(&format!("/ui/account/sessions/{other}"), &[])
        .await;
    let there_after = there.get("/ui/account").await;
    let (after_status, after) = page(here.get(location(&ended)).await).await;
    let (again_status, again) = page(
        here.post(&format!("/ui/account/sessions/{other}"), &[])
            .await,
    )
    .await;
    let third = sign_in(&app, "mo@example.com").await;
    let everywhere = here.post("/ui/account/sessions/end-others", &[]).await;
    let third_after = third.get("/ui/account").await;
    let still_here = here.get("/ui/account").await;

    // Assert
    assert!(account.contains("This session"), "{account}");
    assert!(account.contains("OtherBrowser/2.0"));
    assert!(account.contains("Sign out everywhere else"));
    assert!(other.ends_with("/end"), "{other}");
    assert_eq!(ended.status(), StatusCode::SEE_OTHER);
    assert_eq!(there_after.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&there_after), "/ui/login");
    assert_eq!(after_status, StatusCode::OK);
    assert!(after.contains("That session was signed out."));
    assert!(!after.contains("OtherBrowser/2.0"));
    assert_eq!(again_status, StatusCode::NOT_FOUND);
    assert!(again.contains("has ended already"));
    assert_eq!(everywhere.status(), StatusCode::SEE_OTHER);
    assert_eq!(third_after.status(), StatusCode::SEE_OTHER);
    assert_eq!(still_here.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_account_page_changes_the_password_and_names_a_wrong_current_one() {
    // Arrange
    let app = spawn_app().await;
    person(&app, "mo@example.com", "Mo", "member").await;
    let mo = sign_in(&app, "mo@example.com").await;
    let new = "a completely different passphrase";

    // Act
    let (wrong_status, wrong) = page(
        mo.post(
            "/ui/account/password",
            &[("current_password", "not it at all"), ("new_password", new)],
        )
        .await,
    )
    .await;
    let (short_status, short) = page(
        mo.post(
            "/ui/account/password",
            &[("current_password", PASSWORD), ("new_password", "short")],
        )
        .await,
    )
    .await;
    let changed = mo
        .post(
            "/ui/account/password",
            &[("current_password", PASSWORD), ("new_password", new)],
        )
        .await;
    let again = sign_in_as(&app, "mo@example.com", new, "test-browser").await;

    // Assert
    assert_eq!(wrong_status, StatusCode::FORBIDDEN);
    assert!(wrong.contains("id=\"current-error\""), "{wrong}");
    assert!(wrong.contains("The current password is not correct"));
    assert_eq!(short_status, StatusCode::BAD_REQUEST);
    assert!(short.contains("id=\"new-error\""), "{short}");
    assert_eq!(changed.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&changed), "/ui/account?done=password");
    assert!(!again.csrf.is_empty());
}

#[tokio::test]
async fn the_settings_page_sets_and_clears_the_lifetime_policy() {
    // Arrange
    let app = spawn_app().await;
    person(&app, "ada@example.com", "Ada", "admin").await;
    let ada = sign_in(&app, "ada@example.com").await;
    let org = format!("/v1/orgs/{}", app.org_id);

    // Act
    let saved = ada
        .post(
            "/ui/settings",
            &[("max_days", "90"), ("default_days", "30")],
        )
        .await;
    let policy: Value = app.get(&org, &app.admin_token).await.json().await.unwrap();
    let (_, shown) = page(ada.get("/ui/settings").await).await;
    let (bad_status, bad) = page(
        ada.post(
            "/ui/settings",
            &[("max_days", "10"), ("default_days", "30")],
        )
        .await,
    )
    .await;
    let (word_status, word) = page(
        ada.post(
            "/ui/settings",
            &[("max_days", "soon"), ("default_days", "")],
        )
        .await,
    )
    .await;
    let cleared = ada
        .post("/ui/settings", &[("max_days", ""), ("default_days", "")])
        .await;
    let after: Value = app.get(&org, &app.admin_token).await.json().await.unwrap();

    // Assert
    assert_eq!(saved.status(), StatusCode::SEE_OTHER);
    assert_eq!(policy["max_ttl_seconds"], 90 * 86_400);
    assert_eq!(policy["default_ttl_seconds"], 30 * 86_400);
    assert!(shown.contains("value=\"90\""), "{shown}");
    assert_eq!(bad_status, StatusCode::BAD_REQUEST);
    assert!(bad.contains("id=\"default-error\""), "{bad}");
    assert_eq!(word_status, StatusCode::BAD_REQUEST);
    assert!(word.contains("id=\"max-error\""), "{word}");
    assert_eq!(cleared.status(), StatusCode::SEE_OTHER);
    assert_eq!(after["max_ttl_seconds"], Value::Null);
    assert_eq!(after["default_ttl_seconds"], Value::Null);
}

#[tokio::test]
async fn a_keys_page_charts_its_verifications_per_hour_and_lists_its_rotation_family() {
    // Arrange
    let app = spawn_app().await;
    person(&app, "ada@example.com", "Ada", "admin").await;
    let (plaintext, view) = app.token_with(&app.admin_token, "charted", &[]).await;
    let old = view["id"].as_str().unwrap().to_string();
    app.verify(&plaintext, &[]).await;
    app.verify(&plaintext, &[]).await;
    let mut total = Value::Null;
    for _ in 0..200 {
        let usage: Value = app
            .get(&format!("/v1/tokens/{old}/usage"), &app.admin_token)
            .await
            .json()
            .await
            .unwrap();
        total = usage["total"].clone();
        if total == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(total, 2, "the flush counted both verifications");
    let res = app
        .post(
            &format!("/v1/tokens/{old}/rotate"),
            &app.admin_token,
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let rotated: Value = res.json().await.unwrap();
    let new = rotated["token"]["id"].as_str().unwrap().to_string();
    let ada = sign_in(&app, "ada@example.com").await;

    // Act
    let (old_status, old_page) = page(ada.get(&format!("/ui/keys/{old}")).await).await;
    let (new_status, new_page) = page(ada.get(&format!("/ui/keys/{new}")).await).await;

    // Assert
    assert_eq!(old_status, StatusCode::OK);
    assert_eq!(new_status, StatusCode::OK);
    assert!(
        old_page.contains("2 verifications in the last 7 days"),
        "{old_page}"
    );
    assert_eq!(
        old_page.matches("<rect class=\"bar\"").count(),
        1,
        "one busy hour"
    );
    assert!(old_page.contains(": 2 verifications</title>"));
    assert!(new_page.contains("No verifications in the last 7 days."));
    assert!(!new_page.contains("<rect class=\"bar\""));
    for (html, other) in [(&old_page, &new), (&new_page, &old)] {
        assert!(html.contains("Rotation family"));
        assert!(html.contains("(this key)"));
        assert!(html.contains(&format!("href=\"/ui/keys/{other}\"")));
    }
}

#[tokio::test]
async fn an_imported_keys_page_names_its_format_and_a_native_keys_page_does_not() {
    // Arrange: a key imported as a SHA-256 digest, and a native one.
    let app = spawn_app().await;
    person(&app, "ada@example.com", "Ada", "admin").await;
    let digest = "ab".repeat(32);
    let res = app
        .request(
            reqwest::Method::POST,
            "/v1/tokens/import",
            Some(&app.admin_token),
            Some(json!([{ "scheme": "sha256", "hash": digest, "name": "from laravel" }])),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let report: Value = res.json().await.unwrap();
    let imported = report["keys"][0]["id"].as_str().unwrap().to_string();
    let (_, native) = app.token_with(&app.admin_token, "native", &[]).await;
    let ada = sign_in(&app, "ada@example.com").await;

    // Act
    let (imported_status, imported_page) =
        page(ada.get(&format!("/ui/keys/{imported}")).await).await;
    let (native_status, native_page) = page(
        ada.get(&format!("/ui/keys/{}", native["id"].as_str().unwrap()))
            .await,
    )
    .await;

    // Assert
    assert_eq!(imported_status, StatusCode::OK);
    assert!(
        imported_page.contains("<code>sha256</code>"),
        "{imported_page}"
    );
    assert!(!imported_page.contains(&digest));
    assert_eq!(native_status, StatusCode::OK);
    assert!(!native_page.contains("<dt>Format</dt>"));
}
