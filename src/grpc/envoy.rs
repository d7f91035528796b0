//! `envoy.service.auth.v3.Authorization/Check`, Envoy's external authorization (the
//! `envoy.filters.http.ext_authz` filter in gRPC mode), always served on the same port: the
//! gateway check `GET /v1/auth/check` in Envoy's protocol. Check extracts the bearer (the
//! `authorization` header of the request Envoy checks, not gRPC metadata), the required scopes
//! (the `require` context extension) and the client address, calls the same service method as
//! the gateway check (`Authority::verify`) and maps its answer onto a `CheckResponse`:
//!
//! | verify answers | `status.code` | Envoy answers the client |
//! |---|---|---|
//! | valid, every scope held | 0 OK | the request goes upstream with `x-latchkey-token-id`, `x-latchkey-org-id`, `x-latchkey-scopes`, without `authorization` |
//! | invalid (one answer for every kind) | 16 UNAUTHENTICATED | 401, `WWW-Authenticate: Bearer` |
//! | a scope lacking | 7 PERMISSION_DENIED | 403 |
//! | past the failed-check limit | 8 RESOURCE_EXHAUSTED | 429, `Retry-After` |
//! | database unavailable | 14 UNAVAILABLE | 503, `Retry-After` |
//!
//! Each denial carries the JSON error body REST answers. The RPC itself answers gRPC OK for
//! every well-formed request (that is how ext_authz works), so a denial never depends on
//! Envoy's `failure_mode_allow`; only a request that is no HTTP check, or names a context
//! extension other than `require`, is `INVALID_ARGUMENT`.

use std::net::IpAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use ipnet::IpNet;
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

use crate::clock::Clock;
use crate::edge::{ClientIp, ErrorBody, ErrorDetail, bearer, reported_client_ip};
use crate::error::Error;
use crate::service::Authority;
use crate::service::model::{VerifiedToken, VerifyCode, VerifyRequest, VerifyResponse};

/// The generated types of `proto/envoy/` and `proto/google/rpc/`, in modules named after their
/// packages (the generated code refers across packages by relative paths).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    pub mod envoy {
        pub mod config {
            pub mod core {
                pub mod v3 {
                    tonic::include_proto!("envoy.config.core.v3");
                }
            }
        }
        pub mod r#type {
            pub mod v3 {
                // prost names this package's file after its module, keyword escape included.
                include!(concat!(env!("OUT_DIR"), "/envoy.r#type.v3.rs"));
            }
        }
        pub mod service {
            pub mod auth {
                pub mod v3 {
                    tonic::include_proto!("envoy.service.auth.v3");
                }
            }
        }
    }
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
}

use pb::envoy::config::core::v3 as core3;
use pb::envoy::service::auth::v3 as authz;
use pb::envoy::r#type::v3 as http_status;

use authz::attribute_context::HttpRequest;
use authz::authorization_server::{Authorization, AuthorizationServer};
use authz::check_response::HttpResponse;

/// The encoded descriptor set of `proto/envoy/` (with its imports), registered with reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptor.bin"));

/// The full name of the service, as it appears in gRPC paths and reflection.
pub const SERVICE_NAME: &str = "envoy.service.auth.v3.Authorization";

/// The context extension naming the scopes a route requires, comma-separated.
pub const REQUIRE: &str = "require";

/// The headers an allowed request carries upstream, as the gateway check answers them.
pub const TOKEN_ID: &str = "x-latchkey-token-id";
pub const ORG_ID: &str = "x-latchkey-org-id";
pub const SCOPES: &str = "x-latchkey-scopes";
/// Any header of this prefix that the client sent is removed before the request goes upstream.
const OURS: &str = "x-latchkey-";

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The Authorization implementation.
pub struct EnvoyGrpc {
    authority: Arc<Authority>,
    clock: Arc<dyn Clock>,
    trusted: Arc<Vec<IpNet>>,
}

impl EnvoyGrpc {
    /// The tonic service, with decoded requests bounded by `max_message_bytes`. `trusted` is
    /// `--trusted-proxies`: an Envoy inside it is believed about its client's address.
    pub fn server(
        authority: Arc<Authority>,
        clock: Arc<dyn Clock>,
        trusted: Arc<Vec<IpNet>>,
        max_message_bytes: usize,
    ) -> AuthorizationServer<Self> {
        AuthorizationServer::new(Self {
            authority,
            clock,
            trusted,
        })
        .max_decoding_message_size(max_message_bytes)
    }
}

#[tonic::async_trait]
impl Authorization for EnvoyGrpc {
    async fn check(
        &self,
        req: Request<authz::CheckRequest>,
    ) -> Result<Response<authz::CheckResponse>, Status> {
        let caller = req.extensions().get::<ClientIp>().map(|c| c.0);
        let checked = Checked::read(req.into_inner(), caller, &self.trusted)?;
        let res = self
            .authority
            .verify(&checked.verify, checked.client, self.clock.now())
            .await;
        Ok(Response::new(answer(res, checked.sent_ours)))
    }
}

/// What Check reads from a CheckRequest.
struct Checked {
    verify: VerifyRequest,
    /// The client address for the failed-check limits.
    client: Option<IpAddr>,
    /// The `x-latchkey-*` headers the client sent that the answer does not set itself.
    sent_ours: Vec<String>,
}

impl Checked {
    fn read(
        req: authz::CheckRequest,
        caller: Option<IpAddr>,
        trusted: &[IpNet],
    ) -> Result<Self, Error> {
        let attrs = req.attributes.unwrap_or_default();
        let Some(http) = attrs.request.as_ref().and_then(|r| r.http.as_ref()) else {
            return Err(Error::invalid(
                "the check request has no HTTP request (attributes.request.http)",
            ));
        };
        if let Some(other) = attrs.context_extensions.keys().find(|k| *k != REQUIRE) {
            return Err(Error::invalid(format!(
                "unknown context extension `{other}`: Latchkey reads only `{REQUIRE}`"
            )));
        }
        let headers = edge_headers(http);
        let required_scopes = attrs
            .context_extensions
            .get(REQUIRE)
            .map(String::as_str)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let reported_peer = attrs
            .source
            .as_ref()
            .and_then(|p| p.address.as_ref())
            .and_then(|a| match &a.address {
                Some(core3::address::Address::SocketAddress(s)) => s.address.parse().ok(),
                _ => None,
            });
        Ok(Self {
            verify: VerifyRequest {
                token: bearer(&headers).unwrap_or_default().to_string(),
                required_scopes,
            },
            client: caller.map(|c| reported_client_ip(c, reported_peer, &headers, trusted)),
            sent_ours: sent_ours(http),
        })
    }
}

/// The checked request's headers that the edge rules read (`authorization`, `x-forwarded-for`),
/// from `headers` or, with Envoy's `encode_raw_headers`, `header_map`. Envoy sends names in
/// lower case; any case is accepted.
fn edge_headers(http: &HttpRequest) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in [&header::AUTHORIZATION, &X_FORWARDED_FOR] {
        if let Some(v) = header_value(http, name.as_str()) {
            out.insert(name.clone(), v);
        }
    }
    out
}

fn header_value(http: &HttpRequest, name: &str) -> Option<HeaderValue> {
    let text = http.headers.get(name).map(String::as_bytes).or_else(|| {
        http.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_bytes())
    });
    let raw = || {
        // Unlike `headers`, `header_map` does not join repeated names: the first is taken, as
        // a second `authorization` makes the request ambiguous anyway.
        let h = http
            .header_map
            .as_ref()?
            .headers
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case(name))?;
        Some(if h.value.is_empty() {
            h.raw_value.as_slice()
        } else {
            h.value.as_bytes()
        })
    };
    HeaderValue::from_bytes(text.or_else(raw)?).ok()
}

/// The names of the `x-latchkey-*` headers the client sent, but for the three the answer sets
/// (which replace whatever the client sent).
fn sent_ours(http: &HttpRequest) -> Vec<String> {
    let raw = http.header_map.iter().flat_map(|m| &m.headers);
    let mut names: Vec<String> = http
        .headers
        .keys()
        .chain(raw.map(|h| &h.key))
        .filter(|k| {
            k.get(..OURS.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(OURS))
        })
        .map(|k| k.to_ascii_lowercase())
        .filter(|k| ![TOKEN_ID, ORG_ID, SCOPES].contains(&k.as_str()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The CheckResponse for verify's answer.
fn answer(res: Result<VerifyResponse, Error>, sent_ours: Vec<String>) -> authz::CheckResponse {
    let res = match res {
        Ok(res) => res,
        Err(e) => return denied(e),
    };
    match (res.code, res.token) {
        (VerifyCode::Valid, Some(t)) => allowed(&t, sent_ours),
        (VerifyCode::InsufficientPermissions, _) => denied(Error::PermissionDenied(
            "the token lacks a required scope".into(),
        )),
        (VerifyCode::RateLimited, _) => denied(Error::RateLimited {
            retry_after: std::time::Duration::from_secs(res.retry_after_seconds.unwrap_or(1)),
        }),
        _ => denied(Error::Unauthenticated),
    }
}

/// A header Envoy sets, replacing any value of that name. `append: false` is the one setting
/// every Envoy reads as "replace": an unset `append` is "replace" to older versions but the
/// `append_action` default, "append", to newer ones, and `append_action` is unknown to older
/// ones. `keep_empty_value` keeps an empty `x-latchkey-scopes` (a token without scopes) instead
/// of dropping it and leaving the client's.
#[allow(deprecated)] // `append`: deprecated in Envoy's API, set on purpose (above).
fn set(name: &str, value: String) -> core3::HeaderValueOption {
    core3::HeaderValueOption {
        header: Some(core3::HeaderValue {
            key: name.to_string(),
            value,
            raw_value: Vec::new(),
        }),
        append: Some(false),
        append_action: 0,
        keep_empty_value: true,
    }
}

fn allowed(t: &VerifiedToken, sent_ours: Vec<String>) -> authz::CheckResponse {
    let mut buf = Uuid::encode_buffer();
    let mut id = |u: Uuid| u.hyphenated().encode_lower(&mut buf).to_string();
    let mut headers_to_remove = vec![header::AUTHORIZATION.as_str().to_string()];
    headers_to_remove.extend(sent_ours);
    authz::CheckResponse {
        status: Some(pb::google::rpc::Status {
            code: Code::Ok as i32,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::OkResponse(authz::OkHttpResponse {
            headers: vec![
                set(TOKEN_ID, id(t.token_id)),
                set(ORG_ID, id(t.org_id)),
                set(SCOPES, t.scopes.join(",")),
            ],
            headers_to_remove,
            ..Default::default()
        })),
        dynamic_metadata: None,
    }
}

/// A denial: the gRPC code and message of the error (`status.rs`, which also logs an
/// unavailable database or an internal error), the HTTP status REST would answer, its headers
/// and its JSON body.
fn denied(e: Error) -> authz::CheckResponse {
    let body = ErrorBody {
        error: ErrorDetail {
            code: e.code().to_string(),
            message: e.public_message(),
        },
    };
    let status = Status::from(e);
    let http = match status.code() {
        Code::Unauthenticated => http_status::StatusCode::Unauthorized,
        Code::PermissionDenied => http_status::StatusCode::Forbidden,
        Code::ResourceExhausted => http_status::StatusCode::TooManyRequests,
        Code::Unavailable => http_status::StatusCode::ServiceUnavailable,
        _ => http_status::StatusCode::InternalServerError,
    };
    let mut headers = vec![set(
        header::CONTENT_TYPE.as_str(),
        "application/json".into(),
    )];
    if status.code() == Code::Unauthenticated {
        headers.push(set(header::WWW_AUTHENTICATE.as_str(), "Bearer".into()));
    }
    if let Some(secs) = status
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
    {
        headers.push(set(header::RETRY_AFTER.as_str(), secs.to_string()));
    }
    authz::CheckResponse {
        status: Some(pb::google::rpc::Status {
            code: status.code() as i32,
            message: status.message().to_string(),
            details: Vec::new(),
        }),
        http_response: Some(HttpResponse::DeniedResponse(authz::DeniedHttpResponse {
            status: Some(http_status::HttpStatus { code: http as i32 }),
            headers,
            body: serde_json::to_string(&body).unwrap_or_default(),
        })),
        dynamic_metadata: None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;

    fn denial(r: &authz::CheckResponse) -> (i32, i32, HashMap<String, String>, serde_json::Value) {
        let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else {
            panic!("not a denial: {r:?}");
        };
        let headers = d
            .headers
            .iter()
            .map(|h| {
                let h = h.header.as_ref().unwrap();
                (h.key.clone(), h.value.clone())
            })
            .collect();
        (
            r.status.as_ref().unwrap().code,
            d.status.as_ref().unwrap().code,
            headers,
            serde_json::from_str(&d.body).unwrap(),
        )
    }

    #[test]
    fn an_unavailable_database_is_denied_503_with_retry_after_never_allowed() {
        // Arrange
        let e = Error::Unavailable {
            retry_after: Duration::from_secs(5),
            cause: anyhow::anyhow!("connection refused"),
        };

        // Act
        let r = answer(Err(e), Vec::new());

        // Assert
        let (code, http, headers, body) = denial(&r);
        assert_eq!(code, Code::Unavailable as i32);
        assert_eq!(http, 503);
        assert_eq!(headers["retry-after"], "5");
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(body["error"]["code"], "unavailable");
    }

    #[test]
    fn an_internal_error_is_denied_500_with_the_opaque_body() {
        // Act
        let r = answer(
            Err(Error::Internal(anyhow::anyhow!("secret cause"))),
            Vec::new(),
        );

        // Assert
        let (code, http, _, body) = denial(&r);
        assert_eq!(code, Code::Internal as i32);
        assert_eq!(http, 500);
        assert_eq!(body["error"]["message"], "internal error");
    }

    #[test]
    fn rate_limited_is_denied_429_with_retry_after() {
        // Act
        let r = answer(
            Ok(VerifyResponse::rate_limited(Duration::from_secs(42))),
            Vec::new(),
        );

        // Assert
        let (code, http, headers, body) = denial(&r);
        assert_eq!(code, Code::ResourceExhausted as i32);
        assert_eq!(http, 429);
        assert_eq!(headers["retry-after"], "42");
        assert_eq!(body["error"]["code"], "rate_limited");
    }

    #[test]
    fn raw_headers_are_read_when_envoy_sends_no_header_map_of_strings() {
        // Arrange
        let http = HttpRequest {
            header_map: Some(core3::HeaderMap {
                headers: vec![
                    core3::HeaderValue {
                        key: "Authorization".into(),
                        value: String::new(),
                        raw_value: b"Bearer abc".to_vec(),
                    },
                    core3::HeaderValue {
                        key: "X-Latchkey-Org-Id".into(),
                        value: "forged".into(),
                        raw_value: Vec::new(),
                    },
                    core3::HeaderValue {
                        key: "x-latchkey-user".into(),
                        value: "forged".into(),
                        raw_value: Vec::new(),
                    },
                ],
            }),
            ..Default::default()
        };

        // Act
        let headers = edge_headers(&http);

        // Assert
        assert_eq!(bearer(&headers), Some("abc"));
        assert_eq!(sent_ours(&http), vec!["x-latchkey-user".to_string()]);
    }
}
