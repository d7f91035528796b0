//! In-process verification: [`Latchkey`] (the verifier, its cache and its two background
//! tasks), [`LatchkeyLayer`] (a `tower::Layer` for axum routers) and the [`Verified`]
//! extractor.
//!
//! - A bearer is verified once with the server (`ValidateToken`, with the route's required
//!   scopes); the answer is cached under the SHA-256 of the scopes and the token.
//! - A background task follows `WatchChanges` with the watch token: a change of a token drops
//!   every answer about it, a reset drops everything. The cache is used only while that
//!   stream is up; when it is down (not connected yet, broken, no message for the heartbeat
//!   timeout) the cache is dropped and every request asks the server, until the stream is
//!   back (reconnecting with backoff, resuming from the last cursor).
//! - Fail closed: no answer from the server (unreachable, timeout, 5xx, `RATE_LIMITED`) is a
//!   503, never a pass.
//! - The uses answered from the cache are reported with `ReportUsage` every second (and on
//!   [`Latchkey::shutdown`]); answers the server gave are counted by the server.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use tokio::sync::watch;
use uuid::Uuid;

use crate::cache::{Key, Requirement, Verdict, VerdictCache};
use crate::client::{Client, MAX_USES_PER_REPORT};
use crate::error::{Error, ErrorCode};
use crate::types::{TokenUse, Verified, VerifyCode, WatchEvent};
use crate::usage::UsageCounts;

/// The bit of `platform:admin`: a watch token holding it sees every org's changes.
const PLATFORM_ADMIN: u64 = 1 << 6;
/// Most verifications one reported use may carry (the server's limit).
const MAX_COUNT_PER_USE: i64 = 1_000_000;
/// Tokens whose unreported uses are kept while reports fail; beyond, new tokens' uses are lost.
const MAX_PENDING_TOKENS: usize = 100_000;

/// Why a request is refused; its response is what the service answers.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Rejection {
    /// No `Authorization: Bearer ...` header: 401 with `WWW-Authenticate: Bearer`.
    MissingBearer,
    /// The bearer is no live token: 401 with `WWW-Authenticate: Bearer error="invalid_token"`.
    InvalidToken,
    /// A live token lacking a required scope: 403 with `WWW-Authenticate: Bearer
    /// error="insufficient_scope"`.
    InsufficientScope {
        token_id: Uuid,
        required: Arc<[String]>,
    },
    /// Latchkey gave no verdict (unreachable, timed out, 5xx, or rate limited): 503 with
    /// `Retry-After`. Never a pass.
    Unavailable,
    /// The [`Verified`] extractor found neither a [`LatchkeyLayer`]'s answer nor a
    /// [`Latchkey`] extension on the route: 500.
    Misconfigured,
}

impl Rejection {
    /// The status it answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::MissingBearer | Rejection::InvalidToken => StatusCode::UNAUTHORIZED,
            Rejection::InsufficientScope { .. } => StatusCode::FORBIDDEN,
            Rejection::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::Misconfigured => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let (code, message) = match &self {
            Rejection::MissingBearer => ("unauthenticated", "a bearer token is required"),
            Rejection::InvalidToken => ("unauthenticated", "the bearer token is not valid"),
            Rejection::InsufficientScope { .. } => (
                "permission_denied",
                "the bearer token lacks a required scope",
            ),
            Rejection::Unavailable => ("unavailable", "the token could not be verified"),
            Rejection::Misconfigured => ("internal", "internal error"),
        };
        let body = serde_json::json!({ "error": { "code": code, "message": message } });
        let mut res = (self.status(), axum::Json(body)).into_response();
        let h = res.headers_mut();
        match &self {
            Rejection::MissingBearer => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Rejection::InvalidToken => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            Rejection::InsufficientScope { required, .. } => {
                let scope = required.join(" ").replace(['"', '\\'], "");
                if let Ok(v) = HeaderValue::from_str(&format!(
                    "Bearer error=\"insufficient_scope\", scope=\"{scope}\""
                )) {
                    h.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            Rejection::Unavailable => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Rejection::Misconfigured => {}
        }
        res
    }
}

/// The token of an `Authorization: Bearer <token>` header. The scheme is matched without
/// regard to case; the token is trimmed; a value that is not ASCII holds no token.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let token = bearer_bytes(headers)?;
    // What `HeaderValue::to_str` accepts: visible ASCII, spaces and tabs.
    let text = |b: &u8| *b == b'\t' || (0x20..0x7f).contains(b);
    if !token.iter().all(text) {
        return None;
    }
    std::str::from_utf8(token).ok()
}

/// The bearer's bytes, unchecked: what the cache key is made of on every request (checking
/// them costs as much as the rest of a cache hit; a token that is not ASCII is never asked
/// about, so it is never in the cache).
fn bearer_bytes(headers: &HeaderMap) -> Option<&[u8]> {
    let v = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = v.split_at_checked(7)?;
    let token = token.trim_ascii();
    (scheme.eq_ignore_ascii_case(b"bearer ") && !token.is_empty()).then_some(token)
}

/// How [`Latchkey`] is set up; see [`Latchkey::builder`]. `Debug` does not print the watch
/// token.
#[derive(Clone)]
pub struct LatchkeyBuilder {
    url: String,
    watch_token: Option<String>,
    capacity: usize,
    ttl: Duration,
    negative_ttl: Duration,
    heartbeat_timeout: Duration,
    request_timeout: Duration,
    usage_interval: Duration,
    max_backoff: Duration,
    ca_certificates: Option<Vec<u8>>,
}

impl std::fmt::Debug for LatchkeyBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatchkeyBuilder")
            .field("url", &self.url)
            .field(
                "watch_token",
                &self.watch_token.as_ref().map(|_| "[redacted]"),
            )
            .field("capacity", &self.capacity)
            .field("ttl", &self.ttl)
            .field("negative_ttl", &self.negative_ttl)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("usage_interval", &self.usage_interval)
            .field("ca_certificates", &self.ca_certificates.is_some())
            .finish_non_exhaustive()
    }
}

impl LatchkeyBuilder {
    /// The token the change stream and the usage reports use: it must hold `tokens:watch`
    /// (mint one with `scopes: ["tokens:watch"]`). Without one nothing is cached: every
    /// request asks the server.
    pub fn watch_token(mut self, token: impl Into<String>) -> Self {
        self.watch_token = Some(token.into()).filter(|t: &String| !t.is_empty());
        self
    }

    /// Trust also the certificate authorities of `pem` (PEM certificates) for an `https://`
    /// URL: a private authority, without `SSL_CERT_FILE` replacing the system's for the whole
    /// process. See [`Client::new_with_ca_certificates`]; a bad `pem` fails [`Self::build`].
    pub fn ca_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_certificates = Some(pem.into());
        self
    }

    /// Most answers kept (default 10,000; as many again for refusals).
    pub fn cache_capacity(mut self, entries: usize) -> Self {
        self.capacity = entries;
        self
    }

    /// How long an answer about a genuine token is kept while the stream is up (default
    /// 30 s); never past the token's own expiry. Changes drop it sooner.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long a refusal (an invalid token) is kept (default 2 s). A token enabled again or
    /// a key imported drops every refusal; one of an org the watch token does not see is
    /// refused for this long at most.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// Without a message (the server sends a heartbeat every 5 s) for this long the stream
    /// counts as down (default 15 s).
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.heartbeat_timeout = timeout;
        self
    }

    /// How long a verification may wait for the server before the request is answered 503
    /// (default 2 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How often the uses answered from the cache are reported (default 1 s).
    pub fn usage_interval(mut self, interval: Duration) -> Self {
        self.usage_interval = interval;
        self
    }

    /// Starts the verifier and its background tasks (the change stream and the usage
    /// reports), which end when the last clone of it (layers included) is dropped.
    ///
    /// # Errors
    /// [`Error::Config`] for a malformed URL, for `https://` with no certificate authority at
    /// all, for [`Self::ca_certificates`] that are not PEM certificates, or when called outside
    /// a Tokio runtime.
    pub fn build(self) -> Result<Latchkey, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Config("Latchkey::build must be called inside a Tokio runtime".into())
        })?;
        let client = match &self.ca_certificates {
            Some(pem) => Client::new_with_ca_certificates(&self.url, pem)?,
            None => Client::new(&self.url)?,
        }
        .with_timeout(self.request_timeout);
        let watcher = self
            .watch_token
            .as_ref()
            .map(|t| client.clone().with_bearer(t.clone()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            client,
            watcher,
            cache: VerdictCache::new(self.capacity),
            scope: Mutex::new(None),
            usage: UsageCounts::new(MAX_PENDING_TOKENS),
            config: self,
        });
        if inner.watcher.is_some() {
            runtime.spawn(follow_changes(inner.clone(), stop_rx.clone()));
            runtime.spawn(report_usage(inner.clone(), stop_rx));
        }
        Ok(Latchkey {
            inner,
            stop: Arc::new(Stop(stop_tx)),
        })
    }
}

/// Tells the background tasks to end when the last handle goes.
struct Stop(watch::Sender<bool>);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// Which tokens' changes the watch token sees: answers about the others are never cached.
#[derive(Debug, Clone, Copy, PartialEq)]
enum WatchScope {
    Org(Uuid),
    Everything,
}

struct Inner {
    /// Sends no bearer: verifications.
    client: Client,
    /// Sends the watch token: the change stream and the usage reports.
    watcher: Option<Client>,
    cache: VerdictCache,
    scope: Mutex<Option<WatchScope>>,
    usage: UsageCounts,
    config: LatchkeyBuilder,
}

/// The verifier: verifies bearers against the server once, caches the answers while the
/// change stream is up, and makes the layers of a router. Cheap to clone (shared).
///
/// ```no_run
/// # async fn f() -> Result<(), latchkey_client::Error> {
/// use axum::{Router, routing::get};
/// use latchkey_client::{Latchkey, Verified};
/// let latchkey = Latchkey::builder("http://127.0.0.1:8080")
///     .watch_token(std::env::var("LATCHKEY_WATCH_TOKEN").unwrap_or_default())
///     .build()?;
/// let app: Router = Router::new()
///     .route("/runs", get(|v: Verified| async move { v.token_id.to_string() }))
///     .route_layer(latchkey.require(&["runs:read"]));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Latchkey {
    inner: Arc<Inner>,
    stop: Arc<Stop>,
}

impl std::fmt::Debug for Latchkey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Latchkey")
            .field("url", &self.inner.config.url)
            .field("live", &self.is_live())
            .finish_non_exhaustive()
    }
}

impl Latchkey {
    /// A verifier of the Latchkey server at `url` (`http://host:port`, REST and gRPC on one
    /// port, or `https://` through a TLS proxy: see [`Client::new`]), with the defaults: 10,000 entries, 30 s TTL, 2 s for refusals, 15 s heartbeat
    /// timeout, 2 s per verification, usage reported every second.
    pub fn builder(url: impl Into<String>) -> LatchkeyBuilder {
        LatchkeyBuilder {
            url: url.into(),
            watch_token: None,
            capacity: 10_000,
            ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(2),
            heartbeat_timeout: Duration::from_secs(15),
            request_timeout: Duration::from_secs(2),
            usage_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
            ca_certificates: None,
        }
    }

    /// A layer that lets through only requests whose bearer is live (no scope required),
    /// with [`Verified`] in their extensions.
    pub fn layer(&self) -> LatchkeyLayer {
        self.require::<&str>(&[])
    }

    /// A layer that lets through only requests whose bearer is live and holds every scope of
    /// `scopes`, with [`Verified`] in their extensions. Use it with `Router::route_layer`
    /// (or `MethodRouter::layer`) so unknown routes stay 404, or on one handler
    /// (`axum::handler::Handler::layer`), which saves every request an allocation but protects
    /// that handler only: each method's handler needs its own.
    pub fn require<S: AsRef<str>>(&self, scopes: &[S]) -> LatchkeyLayer {
        let requirement = Requirement::new(scopes);
        LatchkeyLayer(Arc::new(LayerState {
            latchkey: self.clone(),
            required: requirement.scopes.clone().into(),
            requirement,
        }))
    }

    /// Whether the change stream is up (so answers are cached).
    pub fn is_live(&self) -> bool {
        self.inner.cache.is_live()
    }

    /// The underlying API client (no bearer).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Verifies the bearer of `headers`, requiring `scopes`: what the layer does.
    ///
    /// # Errors
    /// The [`Rejection`] to answer with.
    pub async fn check(&self, headers: &HeaderMap, scopes: &[&str]) -> Result<Verified, Rejection> {
        let token = bearer(headers).ok_or(Rejection::MissingBearer)?;
        self.verify(token, scopes).await
    }

    /// Verifies `token`, requiring `scopes`, from the cache when it may, from the server
    /// otherwise.
    ///
    /// # Errors
    /// The [`Rejection`] to answer with.
    pub async fn verify(&self, token: &str, scopes: &[&str]) -> Result<Verified, Rejection> {
        let r = Requirement::new(scopes);
        let required: Arc<[String]> = r.scopes.clone().into();
        self.inner.verify(token, &r, &required).await
    }

    /// Stops the background tasks and reports the uses not reported yet (best effort, within
    /// the request timeout). Verification goes on working, without the cache.
    pub async fn shutdown(&self) {
        self.stop.0.send_replace(true);
        self.inner.cache.set_live(false);
        self.inner.flush_usage().await;
    }
}

impl Inner {
    async fn verify(
        &self,
        token: &str,
        r: &Requirement,
        required: &Arc<[String]>,
    ) -> Result<Verified, Rejection> {
        let key = r.key(token.as_bytes());
        match self.cached(&key, required) {
            Some(verdict) => verdict,
            None => self.ask(token, key, r, required).await,
        }
    }

    /// The cached verdict for `key`, counting the use, or `None` to ask the server.
    fn cached(&self, key: &Key, required: &Arc<[String]>) -> Option<Result<Verified, Rejection>> {
        let now = Instant::now();
        Some(match self.cache.get(key, now)? {
            Verdict::Allowed(v) => {
                self.usage.add(v.token_id, 1, now);
                Ok(v)
            }
            Verdict::Forbidden { token_id } => {
                self.usage.add(token_id, 1, now);
                Err(Rejection::InsufficientScope {
                    token_id,
                    required: required.clone(),
                })
            }
            Verdict::Refused => Err(Rejection::InvalidToken),
        })
    }

    /// Asks the server about `token` (its cache key `key`) and caches the answer when it may.
    async fn ask(
        &self,
        token: &str,
        key: Key,
        r: &Requirement,
        required: &Arc<[String]>,
    ) -> Result<Verified, Rejection> {
        let epoch = self.cache.epoch();
        let scopes: Vec<&str> = r.scopes.iter().map(String::as_str).collect();
        let answer = self.client.validate(token, &scopes).await.map_err(|e| {
            tracing::warn!(error = %e, "latchkey: no verdict, refusing the request");
            Rejection::Unavailable
        })?;
        let now = Instant::now();
        let (verdict, until) = match (answer.code, answer.token_id, answer.org_id) {
            (VerifyCode::Valid, Some(token_id), Some(org_id)) if answer.valid => (
                Verdict::Allowed(Verified {
                    token_id,
                    org_id,
                    scopes: answer.scopes.into(),
                    permissions: answer.permissions,
                    expires_at: answer.expires_at,
                }),
                self.keep_until(now, self.cacheable(org_id), answer.expires_at),
            ),
            (VerifyCode::InsufficientPermissions, Some(token_id), org_id) => (
                Verdict::Forbidden { token_id },
                self.keep_until(
                    now,
                    org_id.is_some_and(|o| self.cacheable(o)),
                    answer.expires_at,
                ),
            ),
            (VerifyCode::Invalid, _, _) => (Verdict::Refused, Some(now + self.config.negative_ttl)),
            // RATE_LIMITED, a code this client does not know, a verdict without its ids.
            _ => {
                tracing::warn!(code = ?answer.code, "latchkey: no usable verdict, refusing the request");
                return Err(Rejection::Unavailable);
            }
        };
        if let Some(until) = until {
            self.cache.fill(key, verdict.clone(), until, epoch);
        }
        match verdict {
            Verdict::Allowed(v) => Ok(v),
            Verdict::Forbidden { token_id } => Err(Rejection::InsufficientScope {
                token_id,
                required: required.clone(),
            }),
            Verdict::Refused => Err(Rejection::InvalidToken),
        }
    }

    /// Until when an answer about a token of `org`'s may be kept: never for an org the watch
    /// token does not see, and never past the token's expiry.
    fn keep_until(
        &self,
        now: Instant,
        cacheable: bool,
        expires_at: Option<DateTime<Utc>>,
    ) -> Option<Instant> {
        if !cacheable {
            return None;
        }
        let mut ttl = self.config.ttl;
        if let Some(at) = expires_at {
            let left = (at - Utc::now()).to_std().ok()?;
            ttl = ttl.min(left);
        }
        Some(now + ttl)
    }

    fn cacheable(&self, org_id: Uuid) -> bool {
        match *self.scope.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(WatchScope::Everything) => true,
            Some(WatchScope::Org(o)) => o == org_id,
            None => false,
        }
    }

    /// Reports the uses counted so far; on a failure that may pass, keeps them for the next.
    async fn flush_usage(&self) {
        let Some(watcher) = &self.watcher else { return };
        let pending = self.usage.take();
        if pending.is_empty() {
            return;
        }
        let (wall, mono) = (Utc::now(), Instant::now());
        let mut uses = Vec::with_capacity(pending.len());
        // The instants, to count the uses again if the report fails.
        let mut instants = Vec::with_capacity(pending.len());
        for (token_id, (mut count, at)) in pending {
            let ago =
                chrono::Duration::from_std(mono.saturating_duration_since(at)).unwrap_or_default();
            while count > 0 {
                let n = count.min(MAX_COUNT_PER_USE);
                uses.push(TokenUse {
                    token_id,
                    count: n,
                    last_used_at: wall - ago,
                });
                instants.push(at);
                count -= n;
            }
        }
        for (i, chunk) in uses.chunks(MAX_USES_PER_REPORT).enumerate() {
            match watcher.report_usage(chunk).await {
                Ok(_) => {}
                Err(e) if e.is_unavailable() || e.code() == Some(&ErrorCode::RateLimited) => {
                    tracing::warn!(error = %e, "latchkey: usage report failed; kept for the next one");
                    let from = i * MAX_USES_PER_REPORT;
                    for (u, at) in uses[from..].iter().zip(&instants[from..]) {
                        self.usage.add(u.token_id, u.count, *at);
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "latchkey: usage report refused; dropped");
                }
            }
        }
    }
}

/// The change stream's task: connects, follows, reconnects with backoff until stopped.
async fn follow_changes(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let Some(watcher) = inner.watcher.clone() else {
        return;
    };
    let mut cursor: Option<String> = None;
    let mut backoff = Duration::from_millis(100);
    let mut last_error = String::new();
    loop {
        let session = follow_once(&inner, &watcher, &mut cursor, &mut backoff);
        let ended = tokio::select! {
            r = session => r,
            () = stopped(&mut stop) => break,
        };
        inner.cache.set_live(false);
        if ended != last_error {
            tracing::warn!(reason = %ended, "latchkey: change stream down; asking the server for every request");
            last_error = ended;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stopped(&mut stop) => break,
        }
        backoff = (backoff * 2).min(inner.config.max_backoff);
    }
    inner.cache.set_live(false);
}

/// One connection of the change stream; answers why it ended.
async fn follow_once(
    inner: &Inner,
    watcher: &Client,
    cursor: &mut Option<String>,
    backoff: &mut Duration,
) -> String {
    // Which tokens the watch token sees (and whether it may watch at all).
    let scope = match watcher.validate_bearer().await {
        Ok(s) => s,
        Err(e) => return e,
    };
    *inner.scope.lock().unwrap_or_else(|e| e.into_inner()) = Some(scope);
    let mut stream = match watcher.watch_changes(cursor.as_deref()).await {
        Ok(s) => s,
        Err(e) => {
            if e.code() == Some(&ErrorCode::InvalidArgument) {
                *cursor = None;
            }
            return format!("cannot watch: {e}");
        }
    };
    loop {
        let msg = match tokio::time::timeout(inner.config.heartbeat_timeout, stream.next()).await {
            Err(_) => return format!("no message for {:?}", inner.config.heartbeat_timeout),
            Ok(None) => return "the server ended the stream".into(),
            Ok(Some(Err(e))) => return format!("stream broke: {e}"),
            Ok(Some(Ok(m))) => m,
        };
        match msg.event {
            WatchEvent::Changes(changes) => {
                if changes.iter().any(|c| c.kind.may_admit()) {
                    inner.cache.drop_refusals();
                }
                for c in &changes {
                    inner.cache.invalidate_token(c.token_id);
                }
            }
            WatchEvent::Reset(_) => inner.cache.clear(),
            WatchEvent::Heartbeat(_) => {}
        }
        *cursor = Some(msg.cursor);
        if !inner.cache.is_live() {
            // The first message: everything missed is applied (or there was nothing to
            // miss), so answers from now on may be kept.
            inner.cache.set_live(true);
            *backoff = Duration::from_millis(100);
            tracing::info!("latchkey: change stream up; caching verdicts");
        }
    }
}

impl Client {
    /// The scope of this client's bearer as a watch token.
    async fn validate_bearer(&self) -> Result<WatchScope, String> {
        let token = self.bearer_token().ok_or("no watch token")?;
        let v = self
            .validate(&token, &["tokens:watch"])
            .await
            .map_err(|e| format!("cannot check the watch token: {e}"))?;
        match (v.code, v.org_id) {
            (VerifyCode::Valid, Some(org)) => Ok(if v.permissions & PLATFORM_ADMIN != 0 {
                WatchScope::Everything
            } else {
                WatchScope::Org(org)
            }),
            (VerifyCode::InsufficientPermissions, _) => {
                Err("the watch token lacks tokens:watch".into())
            }
            _ => Err(format!("the watch token is not valid ({:?})", v.code)),
        }
    }
}

/// Resolves once the stop signal is given (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The usage task: reports every interval, and once more when stopped.
async fn report_usage(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(inner.config.usage_interval) => inner.flush_usage().await,
            () = stopped(&mut stop) => break,
        }
    }
    inner.flush_usage().await;
}

/// A `tower::Layer` verifying the bearer of every request with the scopes it was made with
/// ([`Latchkey::layer`], [`Latchkey::require`]). A request that passes carries [`Verified`]
/// in its extensions; any other is answered with its [`Rejection`] (401, 403 or 503).
#[derive(Clone)]
pub struct LatchkeyLayer(Arc<LayerState>);

/// What a layer's services share, behind one `Arc`: cloned for every request, so one count
/// moves instead of one per field (the request threads all touch it).
struct LayerState {
    latchkey: Latchkey,
    requirement: Requirement,
    required: Arc<[String]>,
}

/// What [`LayerState::decide`] makes of a request's headers.
enum Decision {
    /// The verdict is at hand: no bearer, a bearer that is not text, or a cached answer.
    Now(Result<Verified, Rejection>),
    /// Ask the server, with this cache key for its answer.
    Ask(Key),
}

impl LayerState {
    /// The decision the layer and the [`RequireToken`] extractor both make first, without I/O.
    fn decide(&self, headers: &HeaderMap) -> Decision {
        let Some(key) = bearer_bytes(headers).map(|t| self.requirement.key(t)) else {
            return Decision::Now(Err(Rejection::MissingBearer));
        };
        if let Some(verdict) = self.latchkey.inner.cached(&key, &self.required) {
            return Decision::Now(verdict);
        }
        if bearer(headers).is_none() {
            // Not text: never asked about, so never cached.
            return Decision::Now(Err(Rejection::MissingBearer));
        }
        Decision::Ask(key)
    }

    /// Asks the server about `token` (its cache key `key`), after [`Decision::Ask`].
    async fn ask(&self, token: &str, key: Key) -> Result<Verified, Rejection> {
        let inner = &self.latchkey.inner;
        inner
            .ask(token, key, &self.requirement, &self.required)
            .await
    }
}

impl<S> tower::Layer<S> for LatchkeyLayer {
    type Service = LatchkeyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LatchkeyService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`LatchkeyLayer`].
#[derive(Clone)]
pub struct LatchkeyService<S> {
    inner: S,
    layer: LatchkeyLayer,
}

pin_project_lite::pin_project! {
    /// The future of [`LatchkeyService`]: the inner service's own when the verdict was at
    /// hand (cached, or no bearer), so a cache hit costs no allocation or extra task state.
    #[project = ResponseFutureProj]
    pub enum ResponseFuture<F, E> {
        /// Let through: the inner service's answer.
        Inner { #[pin] future: F },
        /// Refused without asking the server.
        Refused { response: Option<Response<Body>> },
        /// Asking the server, then the inner service.
        Asking { future: Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>> },
    }
}

impl<F, E> Future for ResponseFuture<F, E>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ResponseFutureProj::Inner { future } => future.poll(cx),
            ResponseFutureProj::Refused { response } => {
                Poll::Ready(Ok(response.take().unwrap_or_default()))
            }
            ResponseFutureProj::Asking { future } => future.as_mut().poll(cx),
        }
    }
}

impl<S, B> tower::Service<Request<B>> for LatchkeyService<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match self.layer.0.decide(req.headers()) {
            Decision::Now(Ok(v)) => {
                req.extensions_mut().insert(v);
                ResponseFuture::Inner {
                    future: self.inner.call(req),
                }
            }
            Decision::Now(Err(r)) => ResponseFuture::Refused {
                response: Some(r.into_response()),
            },
            Decision::Ask(key) => {
                // The clone is the one not yet polled ready; the ready one serves this request.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let layer = self.layer.clone();
                ResponseFuture::Asking {
                    future: Box::pin(async move {
                        let verdict = match bearer(req.headers()) {
                            Some(token) => layer.0.ask(token, key).await,
                            None => Err(Rejection::MissingBearer),
                        };
                        match verdict {
                            Ok(v) => {
                                req.extensions_mut().insert(v);
                                inner.call(req).await
                            }
                            Err(r) => Ok(r.into_response()),
                        }
                    }),
                }
            }
        }
    }
}

/// A route's requirement, kept in the router's state for the [`RequireToken`] extractor
/// ([`Latchkey::guard`]): the check a [`LatchkeyLayer`] with the same scopes makes, made by the
/// extractor itself, with no layer and no request extension (about a third less work per
/// request than the layer). Cheap to clone (shared).
#[derive(Clone)]
pub struct Guard(Arc<LayerState>);

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("required", &self.0.required)
            .finish_non_exhaustive()
    }
}

impl Latchkey {
    /// A [`Guard`] requiring every scope of `scopes` (none: any live bearer), for the
    /// [`RequireToken`] extractor: `Router::new().route("/runs", get(list)).with_state(guard)`,
    /// or a field of your state with `FromRef`. One guard serves every route of the router
    /// it is the state of; routes with other scopes go in another router, merged.
    pub fn guard<S: AsRef<str>>(&self, scopes: &[S]) -> Guard {
        Guard(self.require(scopes).0)
    }
}

/// The extractor of a route guarded by the [`Guard`] in the router's state: the bearer
/// verified (from the cache when it may) and holding the guard's scopes, or the [`Rejection`]
/// (401, 403, 503) as the response. The same decisions as a [`LatchkeyLayer`].
#[derive(Debug, Clone, PartialEq)]
pub struct RequireToken(pub Verified);

impl<S: Send + Sync> FromRequestParts<S> for RequireToken
where
    Guard: axum::extract::FromRef<S>,
{
    type Rejection = Rejection;

    fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> impl Future<Output = Result<Self, Rejection>> + Send {
        let guard = <Guard as axum::extract::FromRef<S>>::from_ref(state);
        let key = match guard.0.decide(&parts.headers) {
            Decision::Now(verdict) => return Extracted::Ready(Some(verdict.map(RequireToken))),
            Decision::Ask(key) => key,
        };
        let token = bearer(&parts.headers).map(str::to_owned);
        Extracted::Checking(Box::pin(async move {
            match token {
                Some(token) => guard.0.ask(&token, key).await.map(RequireToken),
                None => Err(Rejection::MissingBearer),
            }
        }))
    }
}

/// The extractor: what a [`LatchkeyLayer`] put in the request's extensions. On a route
/// without the layer, it verifies the bearer itself (no scope required) with the
/// [`Latchkey`] found in the extensions (`.layer(axum::Extension(latchkey))`); with neither,
/// it answers 500 ([`Rejection::Misconfigured`]): a route never opens up by mistake.
impl<S: Send + Sync> FromRequestParts<S> for Verified {
    type Rejection = Rejection;

    fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> impl Future<Output = Result<Self, Rejection>> + Send {
        // The layer's answer is at hand: a small future. The check (a request to the server)
        // is boxed, so its state does not make every handler's future kilobytes larger.
        match parts.extensions.get::<Verified>() {
            Some(v) => Extracted::Ready(Some(Ok(v.clone()))),
            None => Extracted::Checking(Box::pin(check_parts(parts))),
        }
    }
}

/// The future of the [`Verified`] and [`RequireToken`] extractors: the answer at hand, or the
/// check with the server (boxed, so its state does not make every handler's future larger).
enum Extracted<'a, T> {
    Ready(Option<Result<T, Rejection>>),
    Checking(Pin<Box<dyn Future<Output = Result<T, Rejection>> + Send + 'a>>),
}

impl<T: Unpin> Future for Extracted<'_, T> {
    type Output = Result<T, Rejection>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            // Taken once; polled again after that (a misuse), it refuses.
            Extracted::Ready(v) => Poll::Ready(v.take().unwrap_or(Err(Rejection::Misconfigured))),
            Extracted::Checking(f) => f.as_mut().poll(cx),
        }
    }
}

/// The extractor on a route without the layer: checks the bearer with the [`Latchkey`] in the
/// extensions.
async fn check_parts(parts: &mut Parts) -> Result<Verified, Rejection> {
    let Some(latchkey) = parts.extensions.get::<Latchkey>().cloned() else {
        tracing::error!(
            "latchkey: the Verified extractor needs a LatchkeyLayer or a Latchkey extension on the route"
        );
        return Err(Rejection::Misconfigured);
    };
    let v = latchkey.check(&parts.headers, &[]).await?;
    parts.extensions.insert(v.clone());
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_runtime_building_is_an_error_not_a_panic() {
        let r = Latchkey::builder("http://127.0.0.1:1").build();
        assert!(matches!(r, Err(Error::Config(_))));
        assert!(matches!(
            Client::new("http://127.0.0.1:1"),
            Err(Error::Config(_))
        ));
    }

    #[tokio::test]
    async fn an_http_url_is_taken_and_one_of_another_scheme_is_a_config_error() {
        // (https:// is taken in tests/no_authorities.rs: its authorities come from the
        // environment, which that binary alone changes.)
        assert!(Client::new("http://127.0.0.1:1/").is_ok());
        for bad in ["ftp://127.0.0.1:1", "127.0.0.1:8080", "HTTPS//x"] {
            let e = Client::new(bad).unwrap_err();
            assert!(
                matches!(&e, Error::Config(m) if m.contains("http:// or https://")),
                "{bad}: {e:?}"
            );
        }
    }

    #[tokio::test]
    async fn debug_never_prints_the_watch_token() {
        let b = Latchkey::builder("http://127.0.0.1:1").watch_token("lk_pat_secret");
        assert!(!format!("{b:?}").contains("lk_pat_secret"));
        let c = Client::new("http://127.0.0.1:1")
            .unwrap()
            .with_bearer("lk_pat_secret");
        assert!(!format!("{c:?}").contains("lk_pat_secret"));
    }

    #[test]
    fn the_bearer_is_read_from_the_authorization_header_only() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("BEARER x"));
        assert_eq!(bearer(&h), Some("x"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer\tabc"),
        );
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearerabc"));
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_bytes("Bearer ab\u{e9}".as_bytes()).unwrap(),
        );
        assert_eq!(bearer(&h), None, "not ASCII");
    }

    #[test]
    fn rejections_answer_with_their_status_and_challenge() {
        let r = Rejection::MissingBearer.into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let r = Rejection::InsufficientScope {
            token_id: Uuid::nil(),
            required: Arc::from(vec!["runs:read".to_string()]),
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            "Bearer error=\"insufficient_scope\", scope=\"runs:read\""
        );
        let r = Rejection::Unavailable.into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }

    #[tokio::test]
    async fn with_no_server_every_request_is_refused_with_503() {
        // Arrange: nothing listens on port 1.
        let latchkey = Latchkey::builder("http://127.0.0.1:1")
            .watch_token("lk_pat_x")
            .request_timeout(Duration::from_millis(500))
            .build()
            .unwrap();

        // Act
        let r = latchkey.verify("lk_pat_anything", &["runs:read"]).await;

        // Assert
        assert_eq!(r, Err(Rejection::Unavailable));
        assert!(!latchkey.is_live());
    }

    /// A router as a service would write it, on a Latchkey nobody answers for.
    fn router() -> axum::Router {
        use axum::routing::get;
        let latchkey = Latchkey::builder("http://127.0.0.1:1")
            .request_timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        let id = |v: Verified| async move { v.token_id.to_string() };
        axum::Router::new()
            .route(
                "/layer",
                get(id).route_layer(latchkey.require(&["runs:read"])),
            )
            .route(
                "/extension",
                get(id).layer(axum::Extension(latchkey.clone())),
            )
            .route("/forgotten", get(id))
            .route("/open", get(|| async { "open" }))
            .merge(
                axum::Router::new()
                    .route(
                        "/guarded",
                        get(|RequireToken(v): RequireToken| async move { v.token_id.to_string() }),
                    )
                    .with_state(latchkey.guard(&["runs:read"])),
            )
    }

    async fn status(path: &str, bearer: Option<&str>) -> StatusCode {
        use tower::ServiceExt;
        let mut req = Request::get(path);
        if let Some(t) = bearer {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        router()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
            .status()
    }

    #[tokio::test]
    async fn routes_fail_closed_whichever_way_they_are_protected() {
        const NOT_ASCII: &str = "t\u{e9}";
        let cases = [
            ("/layer", None, StatusCode::UNAUTHORIZED),
            ("/layer", Some("t"), StatusCode::SERVICE_UNAVAILABLE),
            // Not ASCII: refused as no bearer at all, without asking the server (503).
            ("/layer", Some(NOT_ASCII), StatusCode::UNAUTHORIZED),
            ("/guarded", None, StatusCode::UNAUTHORIZED),
            ("/guarded", Some("t"), StatusCode::SERVICE_UNAVAILABLE),
            ("/guarded", Some(NOT_ASCII), StatusCode::UNAUTHORIZED),
            ("/extension", None, StatusCode::UNAUTHORIZED),
            ("/extension", Some("t"), StatusCode::SERVICE_UNAVAILABLE),
            ("/forgotten", Some("t"), StatusCode::INTERNAL_SERVER_ERROR),
            ("/open", None, StatusCode::OK),
            ("/nowhere", None, StatusCode::NOT_FOUND),
        ];
        for (path, bearer, expected) in cases {
            assert_eq!(status(path, bearer).await, expected, "{path} {bearer:?}");
        }
    }

    #[tokio::test]
    async fn without_a_layer_or_an_extension_the_extractor_refuses() {
        let (mut parts, ()) = Request::new(()).into_parts();
        let r = Verified::from_request_parts(&mut parts, &()).await;
        assert_eq!(r, Err(Rejection::Misconfigured));
    }
}
