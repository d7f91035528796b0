//! The web console under `/ui`: server-rendered pages (askama templates compiled into the
//! binary), a stylesheet and a little JavaScript embedded too. It is a transport like `http/`
//! and `grpc/`: each page extracts its input, calls the same service methods as the API and
//! renders the result; it holds no rules. Every form works without JavaScript (a plain POST
//! with the session's CSRF token, then a redirect); the script only adds the copy button and
//! confirmations.

mod admin;
mod pages;
mod people;
mod session;
mod view;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::clock::Clock;
use crate::service::Authority;

/// What every page can reach.
#[derive(Clone)]
pub struct ConsoleState(Arc<Shared>);

pub struct Shared {
    pub authority: Arc<Authority>,
    pub clock: Arc<dyn Clock>,
    /// Whether the session cookie carries `Secure`.
    pub secure_cookies: bool,
    /// Create forms already answered, so a resubmitted form (reload, back) never mints again
    /// nor shows a secret again.
    pub used_nonces: quick_cache::sync::Cache<String, ()>,
}

impl std::ops::Deref for ConsoleState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The Content-Security-Policy of every page: scripts and styles from this server only, no
/// inline script, no framing, forms posting only here.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's routes, mounted under `/ui` (and `/` redirecting there).
pub fn router(authority: Arc<Authority>, clock: Arc<dyn Clock>, secure_cookies: bool) -> Router {
    let state = ConsoleState(Arc::new(Shared {
        authority,
        clock,
        secure_cookies,
        used_nonces: quick_cache::sync::Cache::new(10_000),
    }));
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui") }))
        .route("/ui", get(|| async { Redirect::to("/ui/keys") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/keys") }))
        .route("/ui/login", get(pages::login_page).post(pages::login))
        .route("/ui/logout", post(pages::logout))
        .route("/ui/keys", get(pages::keys))
        .route("/ui/keys/new", get(pages::new_key).post(pages::create_key))
        .route("/ui/keys/{id}", get(pages::key))
        .route("/ui/keys/{id}/revoke", post(pages::revoke_key))
        .route("/ui/keys/{id}/rotate", post(pages::rotate_key))
        .route("/ui/keys/{id}/disable", post(pages::disable_key))
        .route("/ui/keys/{id}/enable", post(pages::enable_key))
        .route("/ui/users", get(people::users))
        .route("/ui/users/invite", post(people::invite))
        .route("/ui/users/{id}/role", post(people::change_role))
        .route("/ui/users/{id}/disable", post(people::disable_user))
        .route("/ui/users/{id}/enable", post(people::enable_user))
        .route("/ui/setup", get(people::setup_page).post(people::setup))
        .route("/ui/setup/done", get(people::setup_done))
        .route("/ui/account", get(people::account))
        .route("/ui/account/password", post(people::change_password))
        .route("/ui/account/sessions/{id}/end", post(people::end_session))
        .route(
            "/ui/account/sessions/end-others",
            post(people::end_other_sessions),
        )
        .route("/ui/audit", get(admin::audit))
        .route(
            "/ui/settings",
            get(admin::settings).post(admin::save_settings),
        )
        .route("/ui/assets/{name}", get(asset))
        .route("/ui/{*rest}", get(pages::not_found))
        .with_state(state)
        .layer(axum::middleware::map_response(security_headers))
}

/// Headers every console answer carries. Pages are never cached: they show a person's data,
/// and some show a secret once.
async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}

const CSS: &str = include_str!("../../assets/console.css");
const JS: &str = include_str!("../../assets/console.js");

/// The embedded stylesheet and script, cached for a day (their URLs carry the version).
async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        body,
    )
        .into_response()
}
