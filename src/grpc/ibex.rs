//! `ibex.auth.v1.AuthService`, the gRPC API of the Go auth service Latchkey replaces, served with
//! `--compat-ibex` so that its clients keep working while they move over. Each RPC extracts its
//! input, calls the same service method as its `latchkey.auth.v1` twin and maps the result: the
//! rules (grants, reach, authentication) are Latchkey's, errors map to `tonic::Status` in
//! `status.rs`. The one answer of its own is ValidateToken's: every kind of invalid token is
//! `UNAUTHENTICATED` `invalid or expired token`, as ibex answered.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::{caller, convert};
use crate::clock::Clock;
use crate::edge::ClientIp;
use crate::error::Error;
use crate::service::Authority;
use crate::service::model::{
    CreateTokenRequest, CreatedToken, ListTokensRequest, OrgScope, TokenPage, TokenType, TokenView,
    VerifyCode, VerifyRequest, VerifyResponse,
};

/// The generated protobuf types and service traits of `proto/ibex/auth/v1/auth.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("ibex.auth.v1");
}

/// The encoded descriptor set of `proto/ibex/` (with its imports), registered with reflection
/// only on a server that serves the ibex service.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ibex_descriptor.bin"));

/// The full name of the service, as it appears in gRPC paths and reflection.
pub const SERVICE_NAME: &str = "ibex.auth.v1.AuthService";

/// What ValidateToken answers for every kind of invalid token, as ibex did.
pub const INVALID_TOKEN: &str = "invalid or expired token";

use pb::auth_service_server::{AuthService, AuthServiceServer};

/// The ibex AuthService implementation.
pub struct IbexGrpc {
    authority: Arc<Authority>,
    clock: Arc<dyn Clock>,
}

impl IbexGrpc {
    /// The tonic service, with decoded requests bounded by `max_message_bytes`.
    pub fn server(
        authority: Arc<Authority>,
        clock: Arc<dyn Clock>,
        max_message_bytes: usize,
    ) -> AuthServiceServer<Self> {
        AuthServiceServer::new(Self { authority, clock })
            .max_decoding_message_size(max_message_bytes)
    }
}

#[tonic::async_trait]
impl AuthService for IbexGrpc {
    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let caller = caller(&req)?;
        let input = create_request(req.into_inner())?;
        let created = self
            .authority
            .create_token(&caller, input, self.clock.now())
            .await?;
        Ok(Response::new(created_response(created)))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let scope = OrgScope {
            org_id: convert::opt_uuid("org_id", &r.org_id)?,
        };
        let id = convert::uuid_field("token_id", &r.token_id)?;
        self.authority
            .revoke_token(&caller, scope, id, self.clock.now())
            .await?;
        Ok(Response::new(()))
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let caller = caller(&req)?;
        let input = list_request(req.into_inner())?;
        let page = self
            .authority
            .list_tokens(&caller, input, self.clock.now())
            .await?;
        Ok(Response::new(list_response(page)))
    }

    async fn validate_token(
        &self,
        req: Request<pb::ValidateTokenRequest>,
    ) -> Result<Response<pb::ValidateTokenResponse>, Status> {
        let ip = req.extensions().get::<ClientIp>().map(|c| c.0);
        let input = VerifyRequest {
            token: req.into_inner().access_token,
            required_scopes: Vec::new(),
        };
        let res = self.authority.verify(&input, ip, self.clock.now()).await?;
        validation(res).map(Response::new)
    }
}

fn token_type(t: i32) -> Result<TokenType, Error> {
    match pb::TokenType::try_from(t) {
        Ok(pb::TokenType::Unspecified | pb::TokenType::Pat) => Ok(TokenType::Pat),
        Ok(pb::TokenType::Svc) => Ok(TokenType::Svc),
        Err(_) => Err(Error::invalid("type must be 1 (pat) or 2 (svc)")),
    }
}

fn to_token_type(t: TokenType) -> pb::TokenType {
    match t {
        TokenType::Pat => pb::TokenType::Pat,
        TokenType::Svc => pb::TokenType::Svc,
    }
}

/// ibex's `prefix`: the display hint without its closing ellipsis, so that it is the literal
/// start of the plaintext (`lk_pat_0192f3c4`).
fn prefix(display_hint: &str) -> String {
    display_hint.trim_end_matches('…').to_string()
}

fn create_request(r: pb::CreateTokenRequest) -> Result<CreateTokenRequest, Error> {
    Ok(CreateTokenRequest {
        org_id: convert::opt_uuid("org_id", &r.org_id)?,
        name: r.name,
        kind: token_type(r.r#type)?,
        permissions: Some(r.permissions),
        scopes: None,
        expires_at: r
            .expires_at
            .as_ref()
            .map(|t| convert::from_timestamp("expires_at", t))
            .transpose()?,
        ttl_seconds: None,
        metadata: None,
    })
}

fn created_response(c: CreatedToken) -> pb::CreateTokenResponse {
    pb::CreateTokenResponse {
        token_id: c.token.id.to_string(),
        plaintext: c.plaintext,
        prefix: prefix(&c.token.display_hint),
        created_at: Some(convert::timestamp(c.token.created_at)),
    }
}

fn list_request(r: pb::ListTokensRequest) -> Result<ListTokensRequest, Error> {
    let page_size = match r.limit {
        0 => None,
        n => Some(u32::try_from(n).map_err(|_| Error::invalid("limit must not be negative"))?),
    };
    Ok(ListTokensRequest {
        org_id: convert::opt_uuid("org_id", &r.org_id)?,
        page_size,
        // The service names a bad cursor `page_token`; ibex's clients know it as `cursor`.
        page_token: (!r.cursor.is_empty()).then_some(r.cursor),
        ..ListTokensRequest::default()
    })
}

fn token(v: TokenView) -> pb::Token {
    pb::Token {
        token_id: v.id.to_string(),
        org_id: v.org_id.to_string(),
        name: v.name,
        r#type: to_token_type(v.kind) as i32,
        permissions: v.permissions,
        prefix: prefix(&v.display_hint),
        created_at: Some(convert::timestamp(v.created_at)),
        expires_at: v.expires_at.map(convert::timestamp),
        revoked_at: v.revoked_at.map(convert::timestamp),
        last_used_at: v.last_used_at.map(convert::timestamp),
    }
}

fn list_response(p: TokenPage) -> pb::ListTokensResponse {
    pb::ListTokensResponse {
        tokens: p.tokens.into_iter().map(token).collect(),
        next_cursor: p.next_page_token.unwrap_or_default(),
    }
}

/// A valid token's identity; `UNAUTHENTICATED` `invalid or expired token` for every invalid one;
/// a refusal of the failed-check limits stays `RESOURCE_EXHAUSTED` with `retry-after`.
fn validation(v: VerifyResponse) -> Result<pb::ValidateTokenResponse, Status> {
    match (v.code, v.token) {
        (VerifyCode::Valid, Some(t)) => Ok(pb::ValidateTokenResponse {
            org_id: t.org_id.to_string(),
            permissions: t.permissions,
            token_id: t.token_id.to_string(),
            expires_at: t.expires_at.map(convert::timestamp),
        }),
        (VerifyCode::RateLimited, _) => Err(Error::RateLimited {
            retry_after: Duration::from_secs(v.retry_after_seconds.unwrap_or(1)),
        }
        .into()),
        _ => Err(Status::unauthenticated(INVALID_TOKEN)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_is_the_display_hint_without_its_ellipsis() {
        assert_eq!(prefix("lk_pat_0192f3c4…"), "lk_pat_0192f3c4");
        assert_eq!(prefix("ibex_svc_0192f3c4"), "ibex_svc_0192f3c4");
    }

    #[test]
    fn every_invalid_answer_is_the_one_unauthenticated_status() {
        let status = validation(VerifyResponse::invalid()).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(status.message(), INVALID_TOKEN);
    }

    #[test]
    fn an_unknown_type_number_is_invalid_argument() {
        assert!(token_type(3).is_err());
        assert_eq!(token_type(0).unwrap(), TokenType::Pat);
        assert_eq!(token_type(2).unwrap(), TokenType::Svc);
    }
}
