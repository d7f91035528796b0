//! The REST transport (axum). Handlers extract input, call one service method and map the
//! result; they hold no rules. The router and the OpenAPI document are built from the same
//! registrations, so the document cannot miss a route.

mod audit;
mod auth;
mod error;
mod extract;
mod gateway;
mod leaked;
mod openapi;
mod ops;
mod orgs;
mod tokens;
mod users;
mod verify;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::MatchedPath;
use axum::handler::Handler;
use axum::http::{Method, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::{ErrorBody, ErrorDetail};

use crate::clock::Clock;
use crate::error::Error;
use crate::service::Authority;

/// The header of every answer that holds a secret shown once (a plaintext token, a setup link).
pub(crate) const NO_STORE: [(axum::http::HeaderName, &str); 1] =
    [(axum::http::header::CACHE_CONTROL, "no-store")];

/// What every handler can reach: one `Arc`, because axum clones the state for every request
/// (once for the route, once for `State`), and each clone of a shared reference count is a cache
/// line that the worker threads pass between them.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The contents of [`AppState`].
pub struct Shared {
    pub authority: Arc<Authority>,
    pub clock: Arc<dyn Clock>,
    pub metrics: PrometheusHandle,
    /// The OpenAPI document, rendered once.
    pub openapi: String,
    /// The largest JSON body a handler reads (413 beyond).
    pub max_body_bytes: usize,
    /// Whether the session cookie carries `Secure` (everywhere but `--plain-http`).
    pub secure_cookies: bool,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Latchkey", description = "Self-hosted API token authority."),
    modifiers(&BearerScheme),
    components(schemas(ErrorBody, ErrorDetail))
)]
struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        // A console session: the cookie, plus its CSRF token in `X-CSRF-Token`.
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(
                crate::service::SESSION_COOKIE,
            ))),
        );
    }
}

/// The routes with their documentation, before state is attached.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(tokens::create_token, tokens::list_tokens))
        .routes(routes!(tokens::revoke_current_token))
        .routes(routes!(tokens::import_tokens))
        .routes(routes!(verify::verify_token))
        .routes(routes!(tokens::get_token, tokens::revoke_token))
        .routes(routes!(orgs::create_org))
        .routes(routes!(orgs::get_org, orgs::update_org))
        .routes(routes!(tokens::rotate_token))
        .routes(routes!(tokens::token_usage))
        .routes(routes!(tokens::disable_token))
        .routes(routes!(tokens::enable_token))
        .routes(routes!(audit::list_audit))
        .routes(routes!(gateway::check))
        .routes(routes!(leaked::report))
        .routes(routes!(users::create_user, users::list_users))
        .routes(routes!(users::current_user))
        .routes(routes!(users::get_user, users::update_user))
        .routes(routes!(users::disable_user))
        .routes(routes!(users::enable_user))
        .routes(routes!(users::change_password))
        .routes(routes!(auth::exchange_password))
        .routes(routes!(auth::sign_in, auth::sign_out))
        .routes(routes!(auth::list_sessions, auth::end_other_sessions))
        .routes(routes!(auth::end_session))
        .routes(routes!(auth::setup_password))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi))
}

/// The OpenAPI 3.1 document of the REST API, as JSON, for a deployment with the system scopes
/// only.
pub fn openapi_json() -> String {
    openapi_json_for(&crate::token::ScopeRegistry::default())
}

/// The OpenAPI 3.1 document of the REST API, as JSON: the route annotations, completed with
/// the answers every route shares and the scope names of this deployment (`scopes`).
pub fn openapi_json_for(scopes: &crate::token::ScopeRegistry) -> String {
    let (_, doc) = api().split_for_parts();
    let Ok(mut doc) = serde_json::to_value(&doc) else {
        return String::new();
    };
    openapi::complete(&mut doc, scopes);
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

async fn no_route() -> Error {
    Error::NotFound
}

async fn wrong_method() -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: "method_not_allowed".into(),
            message: "this endpoint does not accept that method".into(),
        },
    };
    (axum::http::StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}

/// The REST app: the router, except that the two routes called for every request a gateway or
/// a service lets through (`GET /v1/auth/check` and `POST /v1/tokens/verify`) go straight to
/// their handlers, the same ones the router holds. The router's route match, matched-path
/// extension, boxed route service and response mapping cost each of them about 1,500
/// instructions under callgrind.
///
/// While the request log is on (DEBUG), every request goes through the router and its trace
/// layer.
#[derive(Clone)]
pub struct Rest {
    router: Router,
    direct: Option<AppState>,
}

impl Rest {
    /// Adds `other`'s routes (the console's) to the router.
    #[must_use]
    pub fn merge(self, other: Router) -> Self {
        Self {
            router: self.router.merge(other),
            direct: self.direct,
        }
    }
}

impl tower::Service<Request<axum::body::Body>> for Rest {
    type Response = Response;
    type Error = Infallible;
    type Future = RestFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // A `Router` is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<axum::body::Body>) -> RestFuture {
        if let Some(state) = &self.direct {
            let path = req.uri().path();
            if path == "/v1/auth/check" && req.method() == Method::GET {
                return RestFuture::Direct(Handler::call(gateway::check, req, state.clone()));
            }
            if path == "/v1/tokens/verify" && req.method() == Method::POST {
                return RestFuture::Direct(Handler::call(verify::verify_token, req, state.clone()));
            }
        }
        RestFuture::Routed(self.router.call(req))
    }
}

/// The answer of [`Rest`].
// Boxing the router's future (as large as the others together) would cost each request an
// allocation; the future is held in place by its connection, never in a collection.
#[allow(clippy::large_enum_variant)]
pub enum RestFuture {
    /// A handler called directly: its boxed future.
    Direct(Pin<Box<dyn Future<Output = Response> + Send>>),
    /// Through the router.
    Routed(RouteFuture<Infallible>),
}

impl Future for RestFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            RestFuture::Direct(f) => f.as_mut().poll(cx).map(Ok),
            RestFuture::Routed(f) => Pin::new(f).poll(cx),
        }
    }
}

/// Builds the REST app. `max_body_bytes` bounds every JSON body (413 beyond);
/// `secure_cookies` puts `Secure` on the session cookie.
pub fn router(
    authority: Arc<Authority>,
    clock: Arc<dyn Clock>,
    metrics: PrometheusHandle,
    max_body_bytes: usize,
    secure_cookies: bool,
) -> Rest {
    let (router, _) = api().split_for_parts();
    let openapi = openapi_json_for(&authority.config().scopes);
    let state = AppState(Arc::new(Shared {
        authority,
        clock,
        metrics,
        openapi,
        max_body_bytes,
        secure_cookies,
    }));
    let router = router
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(state.clone());
    // `Router::layer` wraps every route, and a wrap costs every request a few allocations even
    // when its span is disabled; the request log exists only at DEBUG, so the layer is added only
    // when DEBUG is on (the level is fixed at start).
    if tracing::level_filters::LevelFilter::current() < tracing::level_filters::LevelFilter::DEBUG {
        return Rest {
            router,
            direct: Some(state),
        };
    }
    let router = router.layer(
        TraceLayer::new_for_http()
            // The route template, never the raw path or query: a client may paste a token there.
            .make_span_with(|req: &Request<_>| {
                let route = req
                    .extensions()
                    .get::<MatchedPath>()
                    .map_or("<unmatched>", MatchedPath::as_str);
                tracing::debug_span!("request", method = %req.method(), route = %route)
            })
            .on_request(())
            .on_response(DefaultOnResponse::new().level(Level::DEBUG)),
    );
    Rest {
        router,
        direct: None,
    }
}
