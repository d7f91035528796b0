//! Extractors that turn every malformed input into the domain error, and the bearer into a
//! [`Caller`].

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use super::AppState;
use crate::edge::{self, CSRF_HEADER, bearer, cross_site, session_cookie};
use crate::error::Error;
use crate::service::{Caller, Csrf, RequestMeta};

/// JSON body with strict parsing, at most `AppState::max_body_bytes` long; a rejection becomes
/// `invalid_argument` (or `payload_too_large`).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(Error::invalid(
                "expected a JSON body with Content-Type: application/json",
            ));
        }
        let body = read_body(req.into_body(), state.max_body_bytes).await?;
        parse_json(&body).map(ApiJson)
    }
}

/// The body of `POST /v1/tokens/import`: JSON Lines (`application/x-ndjson`, `application/jsonl`
/// or `text/plain`) or a JSON array (`application/json`), at most [`MAX_IMPORT_BODY_BYTES`].
pub struct ImportBody(pub crate::service::ImportInput);

/// Largest import body over REST, 16 MiB (about 50,000 keys); larger files go through
/// `latchkey import` or are split.
pub const MAX_IMPORT_BODY_BYTES: usize = 16 << 20;

impl FromRequest<AppState> for ImportBody {
    type Rejection = Error;

    async fn from_request(req: Request, _state: &AppState) -> Result<Self, Self::Rejection> {
        use crate::service::ImportInput;
        let essence = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            });
        let lines = matches!(
            essence.as_deref(),
            Some(
                "application/x-ndjson"
                    | "application/jsonl"
                    | "application/jsonlines"
                    | "text/plain"
            )
        );
        if !lines && !is_json(req.headers()) {
            return Err(Error::invalid(
                "expected JSON Lines (Content-Type: application/x-ndjson) or a JSON array \
                 (Content-Type: application/json)",
            ));
        }
        let body = read_body(req.into_body(), MAX_IMPORT_BODY_BYTES).await?;
        let text = String::from_utf8(body.to_vec())
            .map_err(|_| Error::invalid("the request body must be UTF-8 text"))?;
        Ok(ImportBody(if lines {
            ImportInput::JsonLines(text)
        } else {
            ImportInput::Array(text)
        }))
    }
}

/// The whole body, at most `limit` bytes (413 beyond). A body of one frame (the common case: a
/// small body that arrived with its head) is handed over as it is, without a copy or a list of
/// frames; trailers are ignored.
async fn read_body(mut body: axum::body::Body, limit: usize) -> Result<Bytes, Error> {
    let mut first: Option<Bytes> = None;
    let mut joined: Vec<u8> = Vec::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Error::invalid("the request body could not be read"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len = len.saturating_add(data.len());
        if len > limit {
            return Err(Error::PayloadTooLarge);
        }
        if data.is_empty() {
            continue;
        }
        match first.take() {
            None if joined.is_empty() => first = Some(data),
            earlier => {
                if let Some(earlier) = earlier {
                    joined.reserve(earlier.len() + data.len());
                    joined.extend_from_slice(&earlier);
                }
                joined.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(joined)))
}

/// `application/json` or `application/<anything>+json`, with any parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    if value.as_bytes() == b"application/json" {
        return true;
    }
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let ci_prefix =
        |p: &str| essence.len() >= p.len() && essence[..p.len()].eq_ignore_ascii_case(p);
    let ci_suffix = |p: &str| {
        essence.len() >= p.len() && essence[essence.len() - p.len()..].eq_ignore_ascii_case(p)
    };
    essence.eq_ignore_ascii_case("application/json")
        || (ci_prefix("application/") && ci_suffix("+json"))
}

/// Parses a JSON body, which must be an object: every body of the API is one, and serde would
/// otherwise take an array as the fields in order (`["lk_..."]` as a verify request). Only when
/// parsing fails is it parsed again, to name the field that was wrong in the message (the verify
/// path does not pay for the path tracking).
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    let first = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(Error::invalid("the request body must be a JSON object"));
    }
    serde_json::from_slice(body).or_else(|e| {
        // JSON has one number type: `3600.0` is the integer 3600 to JSON Schema (and to the
        // document), so a whole number written with a fraction or an exponent is taken where an
        // integer field is expected. Tried only after a failure: the common path parses once.
        if e.classify() == serde_json::error::Category::Data
            && let Some(v) = whole_numbers_as_integers(body)
            && let Ok(t) = serde_json::from_value(v)
        {
            return Ok(t);
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        let detail = match serde_path_to_error::deserialize::<_, T>(&mut de) {
            Err(with_path) => with_path.to_string(),
            Ok(_) => e.to_string(),
        };
        Err(Error::invalid(match e.classify() {
            serde_json::error::Category::Data => {
                format!("Failed to deserialize the JSON body into the target type: {detail}")
            }
            _ => format!("Failed to parse the request body as JSON: {detail}"),
        }))
    })
}

/// The body with each top-level field that is a whole number written as a float (`3600.0`,
/// `3.6e3`) turned into that integer; `None` when there is none. Only top-level fields: every
/// integer of the API's bodies is one, and free-form values (`metadata`) are kept as given.
fn whole_numbers_as_integers(body: &[u8]) -> Option<serde_json::Value> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut changed = false;
    for field in v.as_object_mut()?.values_mut() {
        if let Some(f) = field.as_f64().filter(|_| field.is_f64())
            && f.fract() == 0.0
            && (-9.0e18..9.0e18).contains(&f)
        {
            // Exact: a whole f64 below 2^63 in magnitude converts to i64 without loss.
            #[allow(clippy::cast_possible_truncation)]
            let n = f as i64;
            *field = serde_json::Value::from(n);
            changed = true;
        }
    }
    changed.then_some(v)
}

/// Query string with strict parsing.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|r: QueryRejection| Error::invalid(r.body_text()))
    }
}

/// Path parameters; a malformed id is `invalid_argument`.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            // A fixed message: the rejection would quote the value, which may be a pasted token.
            .map_err(|_: PathRejection| Error::invalid("malformed path: expected a UUID"))
    }
}

/// The client's address only, for the verify paths, which record no user agent.
pub struct ClientAddr(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(edge::client_addr(&parts.extensions)))
    }
}

/// The bearer token of the request, if any (see [`bearer`]).
pub struct Bearer(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Bearer {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Bearer(bearer(&parts.headers).map(str::to_string)))
    }
}

/// The client's address and user agent.
pub struct Meta(pub RequestMeta);

impl<S: Send + Sync> FromRequestParts<S> for Meta {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Meta(edge::request_meta(&parts.headers, &parts.extensions)))
    }
}

/// An authenticated caller: a valid bearer token, or a live session cookie with its CSRF token
/// in `X-CSRF-Token` from this site; otherwise `unauthenticated` (no credential, or a bad one)
/// or `permission_denied` (a session request without its CSRF token, or from another site).
pub struct Authenticated(pub Caller);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Meta(meta) = Meta::from_request_parts(parts, state).await?;
        state.authority.check_management_rate(meta.ip)?;
        if let Some(token) = bearer(&parts.headers) {
            let principal = state
                .authority
                .authenticate(token, meta.ip, state.clock.now())
                .await?;
            return Ok(Authenticated(Caller::new(principal, meta)));
        }
        let secret = session_cookie(&parts.headers).ok_or(Error::Unauthenticated)?;
        if cross_site(&parts.headers) {
            return Err(Error::PermissionDenied(
                "requests from another site are refused with the session cookie".into(),
            ));
        }
        let csrf = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        let (principal, session) = state
            .authority
            .authenticate_session(secret, Csrf::Presented(csrf), state.clock.now())
            .await?;
        Ok(Authenticated(Caller {
            principal,
            meta,
            session: Some(session),
        }))
    }
}

/// The request metadata of a public endpoint, after the per-address management limit.
pub struct Public(pub RequestMeta);

impl FromRequestParts<AppState> for Public {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Meta(meta) = Meta::from_request_parts(parts, state).await?;
        state.authority.check_management_rate(meta.ip)?;
        Ok(Public(meta))
    }
}
