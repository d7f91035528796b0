//! The gRPC transport (tonic): `latchkey.auth.v1.AuthService`, server reflection (v1 and
//! v1alpha) and `grpc.health.v1.Health`. Each RPC extracts its input, calls the same service
//! method as REST and maps the result; errors map to `tonic::Status` in `status.rs`.

mod auth;
mod convert;
mod status;

use std::sync::Arc;

use axum::Router;
use tonic::{Request, Response, Status};

use crate::clock::Clock;
use crate::error::Error;
use crate::server::ClientIp;
use crate::service::model::{OrgScope, VerifyRequest};
use crate::service::{Authority, Caller};

/// The generated protobuf types and service traits.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("latchkey.auth.v1");
}

/// The encoded descriptor set of `proto/` (with its imports), as served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/latchkey_descriptor.bin"));

use pb::auth_service_server::{AuthService, AuthServiceServer};

/// The AuthService implementation.
pub struct AuthGrpc {
    authority: Arc<Authority>,
    clock: Arc<dyn Clock>,
}

fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Error::Unauthenticated.into())
}

#[tonic::async_trait]
impl AuthService for AuthGrpc {
    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let caller = caller(&req)?;
        let input = convert::create_request(req.into_inner())?;
        let created = self
            .authority
            .create_token(&caller, input, self.clock.now())
            .await?;
        Ok(Response::new(convert::created(created)))
    }

    async fn get_token(
        &self,
        req: Request<pb::GetTokenRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let scope = OrgScope {
            org_id: convert::opt_uuid("org_id", &r.org_id)?,
        };
        let id = convert::uuid_field("token_id", &r.token_id)?;
        let view = self
            .authority
            .get_token(&caller, scope, id, self.clock.now())
            .await?;
        Ok(Response::new(convert::token(view)))
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let caller = caller(&req)?;
        let input = convert::list_request(req.into_inner())?;
        let page = self
            .authority
            .list_tokens(&caller, input, self.clock.now())
            .await?;
        Ok(Response::new(convert::page(page)))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let scope = OrgScope {
            org_id: convert::opt_uuid("org_id", &r.org_id)?,
        };
        let id = convert::uuid_field("token_id", &r.token_id)?;
        let view = self
            .authority
            .revoke_token(&caller, scope, id, self.clock.now())
            .await?;
        Ok(Response::new(convert::token(view)))
    }

    async fn revoke_current_token(
        &self,
        req: Request<pb::RevokeCurrentTokenRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        let caller = caller(&req)?;
        let view = self
            .authority
            .revoke_current(&caller, self.clock.now())
            .await?;
        Ok(Response::new(convert::token(view)))
    }

    async fn rotate_token(
        &self,
        req: Request<pb::RotateTokenRequest>,
    ) -> Result<Response<pb::RotateTokenResponse>, Status> {
        let caller = caller(&req)?;
        let (id, input) = convert::rotate_request(req.get_ref())?;
        let rotated = self
            .authority
            .rotate_token(&caller, id, input, self.clock.now())
            .await?;
        Ok(Response::new(convert::rotated(rotated)))
    }

    async fn validate_token(
        &self,
        req: Request<pb::ValidateTokenRequest>,
    ) -> Result<Response<pb::ValidateTokenResponse>, Status> {
        let ip = req.extensions().get::<ClientIp>().map(|c| c.0);
        let r = req.into_inner();
        let input = VerifyRequest {
            token: r.token,
            required_scopes: r.required_scopes,
        };
        let res = self.authority.verify(&input, ip, self.clock.now()).await?;
        Ok(Response::new(convert::validation(res)))
    }

    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let caller = caller(&req)?;
        let input = convert::audit_request(req.into_inner())?;
        let page = self.authority.list_audit(&caller, input).await?;
        Ok(Response::new(convert::audit_page(page)))
    }

    async fn disable_token(
        &self,
        req: Request<pb::DisableTokenRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        self.set_disabled(&caller, &r.org_id, &r.token_id, true)
            .await
    }

    async fn enable_token(
        &self,
        req: Request<pb::EnableTokenRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        self.set_disabled(&caller, &r.org_id, &r.token_id, false)
            .await
    }
}

impl AuthGrpc {
    async fn set_disabled(
        &self,
        caller: &Caller,
        org_id: &str,
        token_id: &str,
        disabled: bool,
    ) -> Result<Response<pb::Token>, Status> {
        let scope = OrgScope {
            org_id: convert::opt_uuid("org_id", org_id)?,
        };
        let id = convert::uuid_field("token_id", token_id)?;
        let view = self
            .authority
            .set_token_disabled(caller, scope, id, disabled, self.clock.now())
            .await?;
        Ok(Response::new(convert::token(view)))
    }
}

/// The gRPC services as an axum router: AuthService behind the bearer layer, reflection and
/// health. `max_message_bytes` bounds decoded requests.
///
/// # Errors
/// Only if the embedded descriptor sets fail to load (a build defect).
pub async fn router(
    authority: Arc<Authority>,
    clock: Arc<dyn Clock>,
    max_message_bytes: usize,
) -> anyhow::Result<Router> {
    let auth_state = auth::AuthLayerState {
        authority: authority.clone(),
        clock: clock.clone(),
    };
    let service = AuthServiceServer::new(AuthGrpc { authority, clock })
        .max_decoding_message_size(max_message_bytes);
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // The database is migrated before the router is built, so the service is serving from here.
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AuthServiceServer<AuthGrpc>>()
        .await;
    let routes = tonic::service::Routes::new(service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(health);
    Ok(routes
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(
            auth_state,
            auth::authenticate,
        )))
}
