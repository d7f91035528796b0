//! `POST /v1/tokens/verify`: needs no authentication; 200 for every well-formed request.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::error::ErrorBody;
use super::extract::{ApiJson, ClientAddr};
use crate::error::Error;
use crate::service::model::{VerifyRequest, VerifyResponse};

/// The answer to every well-formed verification: one of three shapes. (The document's view of
/// [`VerifyResponse`], whose flattened optional token serde writes as no fields at all.)
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[schema(as = VerifyResponse)]
#[allow(dead_code)]
enum VerifyAnswer {
    Token(TokenVerdict),
    Invalid(InvalidVerdict),
    RateLimited(RateLimitedVerdict),
}

/// A genuine, live token: `VALID` (`valid` true), or `INSUFFICIENT_PERMISSIONS` (`valid` false)
/// when it lacks a required scope (an unknown scope name is lacked by every token).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct TokenVerdict {
    valid: bool,
    code: TokenVerdictCode,
    token_id: Uuid,
    org_id: Uuid,
    permissions: u64,
    scopes: Vec<String>,
    /// `null` for a token that does not expire.
    #[schema(required = true)]
    expires_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(dead_code)]
enum TokenVerdictCode {
    Valid,
    InsufficientPermissions,
}

/// Malformed, unknown, expired, revoked or disabled: one body for every kind, `valid` false.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct InvalidVerdict {
    valid: bool,
    code: InvalidVerdictCode,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(dead_code)]
enum InvalidVerdictCode {
    Invalid,
}

/// The client is past its failed-verification limit; `valid` false, with `Retry-After`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RateLimitedVerdict {
    valid: bool,
    code: RateLimitedVerdictCode,
    /// Seconds until the client may try again (also in `Retry-After`).
    #[schema(minimum = 1)]
    retry_after_seconds: u64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(dead_code)]
enum RateLimitedVerdictCode {
    RateLimited,
}

/// Verify a token, optionally requiring scopes. Every kind of invalid token gets the same body.
#[utoipa::path(post, path = "/v1/tokens/verify", tag = "verify",
    request_body = VerifyRequest,
    responses(
        (status = 200, description = "The verdict (with `Retry-After` when RATE_LIMITED)", body = VerifyAnswer),
        (status = 400, description = "Malformed body: not a JSON object, no `token` string, or an unknown field", body = ErrorBody),
    ))]
pub async fn verify_token(
    State(s): State<AppState>,
    ClientAddr(ip): ClientAddr,
    ApiJson(req): ApiJson<VerifyRequest>,
) -> Result<Response, Error> {
    let res = s.authority.verify(&req, ip, s.clock.now()).await?;
    // Built directly: one header insert, where a (headers, String) answer sets `text/plain`
    // first and then replaces it.
    let mut out = Response::new(axum::body::Body::from(render(&res)));
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(secs) = res.retry_after_seconds {
        out.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    Ok(out)
}

/// The JSON body of `res`, exactly as serde writes it. An answer about a genuine token copies
/// the token's fields, rendered once per cache entry, instead of serialising them again.
fn render(res: &VerifyResponse) -> String {
    match (&res.token, res.retry_after_seconds) {
        (Some(t), None) => {
            let fields = t.json_fields();
            let mut body = String::with_capacity(fields.len() + 48);
            body.push_str(if res.valid {
                "{\"valid\":true,\"code\":\""
            } else {
                "{\"valid\":false,\"code\":\""
            });
            body.push_str(res.code.as_str());
            body.push_str("\",");
            body.push_str(fields);
            body.push('}');
            body
        }
        _ => serde_json::to_string(res).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::service::model::{VerifiedToken, VerifyCode};

    #[test]
    fn the_copied_fields_render_exactly_what_serde_writes() {
        let t = Arc::new(VerifiedToken::new(
            uuid::Uuid::now_v7(),
            uuid::Uuid::now_v7(),
            5,
            vec!["tokens:create".into(), "say \"hi\"".into()].into(),
            chrono::DateTime::from_timestamp(1_900_000_000, 123_000),
        ));
        for (valid, code) in [
            (true, VerifyCode::Valid),
            (false, VerifyCode::InsufficientPermissions),
        ] {
            let res = VerifyResponse {
                valid,
                code,
                token: Some(t.clone()),
                retry_after_seconds: None,
            };
            assert_eq!(render(&res), serde_json::to_string(&res).unwrap());
        }
        let invalid = VerifyResponse::invalid();
        assert_eq!(render(&invalid), r#"{"valid":false,"code":"INVALID"}"#);
    }
}
