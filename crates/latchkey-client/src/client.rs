//! [`Client`]: the REST API for tokens and verification, and the gRPC calls of the change feed
//! (`WatchChanges`, `ReportUsage`), over one base URL.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_core::Stream;
use reqwest::{Method, RequestBuilder, StatusCode};
use rustls::pki_types::CertificateDer;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use uuid::Uuid;

use crate::error::{Error, ErrorCode, innermost};
use crate::pb;
use crate::pb::auth_service_client::AuthServiceClient;
use crate::types::{
    ChangeKind, CreatedToken, ListTokens, NewToken, RotatedToken, TokenChange, TokenPage, TokenUse,
    TokenView, Verification, VerifyCode, WatchEvent, WatchMessage,
};

/// Most uses one `ReportUsage` call may carry (the server's limit).
pub const MAX_USES_PER_REPORT: usize = 10_000;

/// A client of one Latchkey server: REST and gRPC share its address. Cheap to clone (one
/// connection pool and one gRPC channel, shared). `http://`, or `https://` through a TLS proxy
/// in front of Latchkey (see [`Client::new`]).
///
/// ```no_run
/// # async fn f() -> Result<(), latchkey_client::Error> {
/// use latchkey_client::{Client, NewToken};
/// let admin = Client::new("http://127.0.0.1:8080")?.with_bearer("lk_pat_...");
/// let created = admin.create_token(&NewToken::new("ci").scopes(["runs:read"])).await?;
/// let verdict = admin.verify(&created.plaintext, &["runs:read"]).await?;
/// assert!(verdict.valid);
/// admin.revoke_token(created.token.id).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    base: Arc<str>,
    bearer: Option<Arc<str>>,
    http: reqwest::Client,
    grpc: AuthServiceClient<Channel>,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("bearer", &self.bearer.as_ref().map(|_| "[redacted]"))
            .finish_non_exhaustive()
    }
}

/// The error body of the REST API.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

/// What [`Client::new`] was doing when no certificate authority could be loaded.
const NO_AUTHORITIES: &str =
    "loading the certificate authorities to trust (the system's, or SSL_CERT_FILE's)";

/// The authorities an `https://` client trusts: the system's (rustls-native-certs, on every
/// platform: `SSL_CERT_FILE` or `SSL_CERT_DIR` replace them) and `extra`. Both halves, REST and gRPC,
/// check the server's certificate against this one set.
fn authorities(extra: &[CertificateDer<'static>]) -> Result<rustls::RootCertStore, Error> {
    let mut roots = rustls::RootCertStore::empty();
    // An unreadable system certificate is skipped, as reqwest and tonic would; why, is said
    // when nothing is left.
    let system = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(system.certs);
    for cert in extra {
        roots.add(cert.clone()).map_err(|e| {
            Error::Config(format!("a given certificate authority is not usable: {e}"))
        })?;
    }
    if roots.is_empty() {
        let why = system
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(Error::Config(format!(
            "{NO_AUTHORITIES}: there are none{why}; install the system's (ca-certificates), or \
             give one"
        )));
    }
    Ok(roots)
}

/// The certificates of `pem` (text around and other blocks, such as keys, are skipped).
fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("the CA certificates are not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Config(
            "what was given as CA certificates holds no PEM certificate".into(),
        ));
    }
    Ok(certs)
}

/// [`authorities`] for `https://`; none at all for `http://`, so that a machine without
/// ca-certificates can still speak plain HTTP (reqwest's own TLS would load the system's
/// authorities and fail without any), and a redirect to `https://` would trust nothing.
fn roots_for(
    base: &str,
    extra: &[CertificateDer<'static>],
) -> Result<rustls::RootCertStore, Error> {
    if base.starts_with("https://") {
        authorities(extra)
    } else {
        Ok(rustls::RootCertStore::empty())
    }
}

/// rustls trusting `roots`, with the application's default crypto provider, else ring's: a
/// library installs no process default (rustls's advice).
fn rustls_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, Error> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS versions: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The TLS a [`Client`] of `base_url` uses for REST, for another HTTP client of Latchkey (the
/// `latchkey` CLI gives it to reqwest): for `https://`, the system's authorities (or those of
/// `SSL_CERT_FILE`/`SSL_CERT_DIR`) and those of `ca_pem`; for `http://`, none.
///
/// # Errors
/// [`Error::Config`] for `https://` with no authority at all, or a `ca_pem` that holds no PEM
/// certificate.
pub fn tls_config(base_url: &str, ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, Error> {
    let extra = ca_pem
        .map(pem_certificates)
        .transpose()?
        .unwrap_or_default();
    rustls_config(roots_for(base_url, &extra)?)
}

/// The REST half (reqwest) and the gRPC half (tonic) of a client of `base`, both trusting
/// [`roots_for`] it.
fn connect(
    base: &str,
    extra: &[CertificateDer<'static>],
    timeout: Duration,
) -> Result<(reqwest::Client, AuthServiceClient<Channel>), Error> {
    let roots = roots_for(base, extra)?;
    let rest_tls = rustls_config(roots.clone())?;
    let mut endpoint = Endpoint::from_shared(base.to_string())
        .map_err(|e| Error::Config(format!("base URL {base:?}: {e}")))?;
    if base.starts_with("https://") {
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().trust_anchors(roots.roots))
            .map_err(|e| Error::Config(format!("TLS for {base:?}: {}", innermost(&e))))?;
    }
    let endpoint = endpoint
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    // Latchkey closes an HTTP/1.1 connection that sends no request for its header timeout
    // (10 s by default): an idle connection kept longer may be reused just as it closes, and
    // the request fails.
    let http = reqwest::Client::builder()
        .connect_timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("latchkey-client/", env!("CARGO_PKG_VERSION")))
        .tls_backend_preconfigured(rest_tls)
        .build()
        .map_err(|e| Error::Config(format!("building the HTTP client: {}", innermost(&e))))?;
    Ok((http, AuthServiceClient::new(endpoint.connect_lazy())))
}

impl Client {
    /// A client of the server at `base_url` (`http://host:port`, or `https://host` through a
    /// TLS proxy such as `examples/nginx/latchkey-tls.conf`), without a bearer; calls time out
    /// after 2 seconds. Connects lazily: this never fails for an unreachable server.
    ///
    /// An `https://` server's certificate must chain to an authority of the system's store
    /// (`SSL_CERT_FILE`, a PEM bundle, or `SSL_CERT_DIR` name other authorities instead), or to
    /// one given to [`Client::new_with_ca_certificates`]. TLS is rustls with the
    /// process's default crypto provider, or ring's where the application installed none (this
    /// installs nothing). Redirects are not followed: the API sends none, and one to `http://`
    /// would resend a body in the clear.
    ///
    /// # Errors
    /// [`Error::Config`] for a URL that is neither `http://...` nor `https://...`, for
    /// `https://` on a machine with no certificate authority at all, or when called outside a
    /// Tokio runtime (the gRPC channel runs a task of its own).
    pub fn new(base_url: &str) -> Result<Self, Error> {
        Self::open(base_url, &[])
    }

    /// [`Client::new`], trusting also the certificate authorities of `pem` (one or more PEM
    /// certificates) for an `https://` server: a private authority, without replacing the
    /// system's for the whole process as `SSL_CERT_FILE` would. `pem` is checked for any URL,
    /// though an `http://` client never uses it.
    ///
    /// # Errors
    /// Those of [`Client::new`] (but not for a machine with no authority of its own), and
    /// [`Error::Config`] when `pem` holds no certificate, or one that cannot be parsed.
    pub fn new_with_ca_certificates(base_url: &str, pem: &[u8]) -> Result<Self, Error> {
        Self::open(base_url, &pem_certificates(pem)?)
    }

    fn open(base_url: &str, extra: &[CertificateDer<'static>]) -> Result<Self, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Config(
                "a Client must be made inside a Tokio runtime".into(),
            ));
        }
        let base = base_url.trim_end_matches('/');
        if !base.starts_with("https://") && !base.starts_with("http://") {
            return Err(Error::Config(format!(
                "the base URL must start with http:// or https:// (got {base_url:?})"
            )));
        }
        let timeout = Duration::from_secs(2);
        let (http, grpc) = connect(base, extra, timeout)?;
        Ok(Client {
            base: base.into(),
            bearer: None,
            http,
            grpc,
            timeout,
        })
    }

    /// The same client, sending `token` as its bearer (every call but verification needs one).
    pub fn with_bearer(mut self, token: impl Into<String>) -> Self {
        self.bearer = Some(token.into().into());
        self
    }

    /// The same client with another per-call timeout (default 2 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The bearer this client sends, if any.
    pub(crate) fn bearer_token(&self) -> Option<String> {
        self.bearer.as_deref().map(str::to_string)
    }

    /// The base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    // --- REST -----------------------------------------------------------------------------

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let rb = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(self.timeout);
        match &self.bearer {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    async fn send<T: DeserializeOwned>(rb: RequestBuilder) -> Result<T, Error> {
        let res = rb.send().await.map_err(Error::from_reqwest)?;
        let status = res.status();
        if status.is_success() {
            return res.json().await.map_err(Error::from_reqwest);
        }
        if matches!(
            status,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
        ) {
            return Err(Error::Unavailable(format!("answered {status}")));
        }
        if status.is_redirection() {
            let to = res.headers().get(reqwest::header::LOCATION);
            return Err(Error::Protocol(format!(
                "answered {status} to {:?}: redirects are not followed (give the server's own \
                 address)",
                to.and_then(|l| l.to_str().ok()).unwrap_or("")
            )));
        }
        let retry_after = res
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .map(Duration::from_secs);
        let body = res.bytes().await.map_err(Error::from_reqwest)?;
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(b) => Err(Error::Api {
                status: status.as_u16(),
                code: ErrorCode::parse(&b.error.code),
                message: b.error.message,
                retry_after,
            }),
            Err(_) => Err(Error::Protocol(format!(
                "answered {status} without an error body"
            ))),
        }
    }

    /// `POST /v1/tokens/verify`: whether `token` is live and holds every scope of
    /// `required_scopes`. Needs no bearer; every well-formed request gets a [`Verification`].
    ///
    /// # Errors
    /// [`Error::Unavailable`] when no answer came.
    pub async fn verify(
        &self,
        token: &str,
        required_scopes: &[&str],
    ) -> Result<Verification, Error> {
        let body = serde_json::json!({ "token": token, "required_scopes": required_scopes });
        let rb = self
            .http
            .post(format!("{}/v1/tokens/verify", self.base))
            .timeout(self.timeout)
            .json(&body);
        Self::send(rb).await
    }

    /// `POST /v1/tokens` (needs `tokens:create`). The plaintext is in this answer only.
    ///
    /// # Errors
    /// [`Error::Api`] for a refusal (409 `already_exists` for a live token of that name).
    pub async fn create_token(&self, new: &NewToken) -> Result<CreatedToken, Error> {
        Self::send(self.request(Method::POST, "/v1/tokens").json(new)).await
    }

    /// `GET /v1/tokens/{id}` (needs `tokens:read`).
    ///
    /// # Errors
    /// [`Error::Api`] 404 for a token out of reach.
    pub async fn get_token(&self, id: Uuid) -> Result<TokenView, Error> {
        Self::send(self.request(Method::GET, &format!("/v1/tokens/{id}"))).await
    }

    /// `GET /v1/tokens` (needs `tokens:read`): one page, newest first.
    ///
    /// # Errors
    /// [`Error::Api`] for a refusal.
    pub async fn list_tokens(&self, query: &ListTokens) -> Result<TokenPage, Error> {
        let query = serde_urlencoded::to_string(query)
            .map_err(|e| Error::Config(format!("list query: {e}")))?;
        let path = if query.is_empty() {
            "/v1/tokens".to_string()
        } else {
            format!("/v1/tokens?{query}")
        };
        Self::send(self.request(Method::GET, &path)).await
    }

    /// `DELETE /v1/tokens/{id}` (needs `tokens:revoke`): at once, idempotent.
    ///
    /// # Errors
    /// [`Error::Api`] 404 for a token out of reach.
    pub async fn revoke_token(&self, id: Uuid) -> Result<TokenView, Error> {
        Self::send(self.request(Method::DELETE, &format!("/v1/tokens/{id}"))).await
    }

    /// `POST /v1/tokens/{id}/rotate` (needs `tokens:rotate`): a new token; the old one keeps
    /// working for `grace_seconds` (`None`: the server's default, 3600; 0: stops at once).
    ///
    /// # Errors
    /// [`Error::Api`] 409 when the token was rotated already (its family is now revoked).
    pub async fn rotate_token(
        &self,
        id: Uuid,
        grace_seconds: Option<i64>,
    ) -> Result<RotatedToken, Error> {
        let body = match grace_seconds {
            Some(g) => serde_json::json!({ "grace_seconds": g }),
            None => serde_json::json!({}),
        };
        Self::send(
            self.request(Method::POST, &format!("/v1/tokens/{id}/rotate"))
                .json(&body),
        )
        .await
    }

    /// `POST /v1/tokens/{id}/disable` (needs `tokens:revoke`): verifies as invalid until
    /// enabled again.
    ///
    /// # Errors
    /// [`Error::Api`] for a refusal.
    pub async fn disable_token(&self, id: Uuid) -> Result<TokenView, Error> {
        Self::send(self.request(Method::POST, &format!("/v1/tokens/{id}/disable"))).await
    }

    /// `POST /v1/tokens/{id}/enable` (needs `tokens:revoke`).
    ///
    /// # Errors
    /// [`Error::Api`] for a refusal.
    pub async fn enable_token(&self, id: Uuid) -> Result<TokenView, Error> {
        Self::send(self.request(Method::POST, &format!("/v1/tokens/{id}/enable"))).await
    }

    // --- gRPC -----------------------------------------------------------------------------

    fn grpc_request<T>(&self, msg: T) -> Result<tonic::Request<T>, Error> {
        let mut req = tonic::Request::new(msg);
        if let Some(t) = &self.bearer {
            let value = format!("Bearer {t}")
                .parse()
                .map_err(|_| Error::Config("the bearer is not a valid header value".into()))?;
            req.metadata_mut().insert("authorization", value);
        }
        Ok(req)
    }

    async fn within<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(res)) => Ok(res.into_inner()),
            Ok(Err(status)) => Err(Error::from_status(&status)),
            Err(_) => Err(Error::Unavailable(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// `ValidateToken` over gRPC: [`Client::verify`]'s twin, on the multiplexed channel
    /// (what the middleware uses). Sends no bearer.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when no answer came; [`Error::Protocol`] for a malformed id.
    pub async fn validate(
        &self,
        token: &str,
        required_scopes: &[&str],
    ) -> Result<Verification, Error> {
        let req = tonic::Request::new(pb::ValidateTokenRequest {
            token: token.to_string(),
            required_scopes: required_scopes.iter().map(|s| s.to_string()).collect(),
        });
        let mut grpc = self.grpc.clone();
        let res = self.within(grpc.validate_token(req)).await?;
        let code = match pb::ValidationCode::try_from(res.code) {
            Ok(pb::ValidationCode::Valid) => VerifyCode::Valid,
            Ok(pb::ValidationCode::Invalid) => VerifyCode::Invalid,
            Ok(pb::ValidationCode::InsufficientPermissions) => VerifyCode::InsufficientPermissions,
            Ok(pb::ValidationCode::RateLimited) => VerifyCode::RateLimited,
            _ => VerifyCode::Unknown,
        };
        let id = |field: &str, s: &str| -> Result<Option<Uuid>, Error> {
            if s.is_empty() {
                return Ok(None);
            }
            Uuid::try_parse(s)
                .map(Some)
                .map_err(|_| Error::Protocol(format!("{field} {s:?} is not a UUID")))
        };
        Ok(Verification {
            valid: res.valid,
            code,
            token_id: id("token_id", &res.token_id)?,
            org_id: id("org_id", &res.org_id)?,
            permissions: res.permissions as u64,
            scopes: res.scopes,
            expires_at: res.expires_at.as_ref().and_then(from_timestamp),
            retry_after_seconds: None,
        })
    }

    /// `WatchChanges` (needs `tokens:watch`): the stream of changes a verify cache may hold,
    /// from now (`cursor` `None`) or after the message whose cursor is given.
    ///
    /// # Errors
    /// [`Error::Api`] 401 / 403 for a bearer that may not watch; [`Error::Unavailable`].
    pub async fn watch_changes(&self, cursor: Option<&str>) -> Result<ChangeStream, Error> {
        let req = self.grpc_request(pb::WatchChangesRequest {
            cursor: cursor.unwrap_or_default().to_string(),
            org_id: String::new(),
        })?;
        let mut grpc = self.grpc.clone();
        let inner = self.within(grpc.watch_changes(req)).await?;
        Ok(ChangeStream { inner })
    }

    /// `ReportUsage` (needs `tokens:watch`): verifications answered from a local cache, added
    /// to the tokens' `request_count` and `last_used_at`. Answers how many were accepted
    /// (tokens out of the bearer's reach are skipped).
    ///
    /// # Errors
    /// [`Error::Api`] 400 for more than [`MAX_USES_PER_REPORT`] uses or a count outside 1 to
    /// 1,000,000.
    pub async fn report_usage(&self, uses: &[TokenUse]) -> Result<u64, Error> {
        let req = self.grpc_request(pb::ReportUsageRequest {
            uses: uses
                .iter()
                .map(|u| pb::TokenUse {
                    token_id: u.token_id.to_string(),
                    count: u.count,
                    last_used_at: Some(to_timestamp(u.last_used_at)),
                })
                .collect(),
        })?;
        let mut grpc = self.grpc.clone();
        let res = self.within(grpc.report_usage(req)).await?;
        Ok(res.accepted.max(0) as u64)
    }
}

/// The messages of a `WatchChanges` call, read with [`ChangeStream::next`] or as a
/// [`Stream`]. `None` when the server ended the stream (it does when it stops).
pub struct ChangeStream {
    inner: tonic::Streaming<pb::WatchChangesResponse>,
}

impl ChangeStream {
    /// The next message; `None` when the stream ended.
    pub async fn next(&mut self) -> Option<Result<WatchMessage, Error>> {
        match self.inner.message().await {
            Ok(Some(m)) => Some(watch_message(m)),
            Ok(None) => None,
            Err(s) => Some(Err(Error::from_status(&s))),
        }
    }
}

impl Stream for ChangeStream {
    type Item = Result<WatchMessage, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx).map(|m| {
            m.map(|r| match r {
                Ok(m) => watch_message(m),
                Err(s) => Err(Error::from_status(&s)),
            })
        })
    }
}

fn watch_message(m: pb::WatchChangesResponse) -> Result<WatchMessage, Error> {
    use pb::watch_changes_response::Event;
    let at = |t: Option<prost_types::Timestamp>| -> DateTime<Utc> {
        t.as_ref().and_then(from_timestamp).unwrap_or_else(Utc::now)
    };
    let event = match m.event {
        Some(Event::Changes(c)) => WatchEvent::Changes(
            c.changes
                .into_iter()
                .map(|c| {
                    let parse = |field: &str, s: &str| {
                        Uuid::try_parse(s).map_err(|_| {
                            Error::Protocol(format!("change with {field} {s:?}, not a UUID"))
                        })
                    };
                    Ok(TokenChange {
                        token_id: parse("token_id", &c.token_id)?,
                        org_id: parse("org_id", &c.org_id)?,
                        kind: ChangeKind::parse(&c.kind),
                        at: at(c.at),
                    })
                })
                .collect::<Result<_, Error>>()?,
        ),
        Some(Event::Heartbeat(h)) => WatchEvent::Heartbeat(at(h.at)),
        Some(Event::Reset(r)) => WatchEvent::Reset(at(r.at)),
        // An event this client does not know may have been a change: treat it as a reset.
        None => WatchEvent::Reset(Utc::now()),
    };
    Ok(WatchMessage {
        cursor: m.cursor,
        event,
    })
}

fn from_timestamp(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

fn to_timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}
