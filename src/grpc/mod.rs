//! The gRPC transport (tonic): `latchkey.auth.v1.AuthService`, Envoy's
//! `envoy.service.auth.v3.Authorization` (`envoy.rs`, the gateway check for Envoy's ext_authz),
//! with `--compat-ibex` also `ibex.auth.v1.AuthService` (`ibex.rs`), server reflection (v1 and
//! v1alpha) and `grpc.health.v1.Health`. Each RPC extracts its input, calls the same service
//! method as REST and maps the result; errors map to `tonic::Status` in `status.rs`.

mod auth;
mod convert;
pub mod envoy;
pub mod ibex;
mod redacted;
mod status;

use std::sync::Arc;

use axum::Router;
use tonic::{Request, Response, Status};

use crate::clock::Clock;
use crate::edge::ClientIp;
use crate::error::Error;
use crate::service::model::{OrgScope, UsageQuery, VerifyRequest};
use crate::service::{Authority, Caller, RequestMeta};

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

/// Where the request came from, as the bearer layer found it (client address, user agent).
fn meta<T>(req: &Request<T>) -> Result<RequestMeta, Status> {
    req.extensions()
        .get::<RequestMeta>()
        .cloned()
        .ok_or_else(|| {
            // Without it the per-address sign-in limit would see no address: refuse instead.
            Error::Internal(anyhow::anyhow!(
                "no RequestMeta in a gRPC request: the bearer layer did not run"
            ))
            .into()
        })
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

    async fn get_token_usage(
        &self,
        req: Request<pb::GetTokenUsageRequest>,
    ) -> Result<Response<pb::TokenUsage>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let q = UsageQuery {
            org_id: convert::opt_uuid("org_id", &r.org_id)?,
            days: (r.days != 0).then_some(i64::from(r.days)),
        };
        let id = convert::uuid_field("token_id", &r.token_id)?;
        let usage = self
            .authority
            .token_usage(&caller, id, q, self.clock.now())
            .await?;
        Ok(Response::new(convert::usage(usage)))
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

    async fn exchange_password(
        &self,
        req: Request<pb::ExchangePasswordRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let meta = meta(&req)?;
        let input = convert::exchange_password_request(req.into_inner())?;
        let created = self
            .authority
            .exchange_password(input, &meta, self.clock.now())
            .await?;
        Ok(Response::new(convert::created(created)))
    }

    async fn setup_password(
        &self,
        req: Request<pb::SetupPasswordRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let meta = meta(&req)?;
        let input = convert::setup_password_request(req.into_inner());
        let view = self
            .authority
            .setup_password(input, &meta, self.clock.now())
            .await?;
        Ok(Response::new(convert::user(view)))
    }

    async fn create_user(
        &self,
        req: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let caller = caller(&req)?;
        let input = convert::create_user_request(req.into_inner())?;
        let created = self
            .authority
            .create_user(&caller, input, self.clock.now())
            .await?;
        Ok(Response::new(convert::created_user(created)))
    }

    async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let caller = caller(&req)?;
        let input = convert::list_users_request(req.into_inner())?;
        let page = self.authority.list_users(&caller, input).await?;
        Ok(Response::new(convert::user_page(page)))
    }

    async fn get_user(
        &self,
        req: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let caller = caller(&req)?;
        let id = convert::uuid_field("user_id", &req.get_ref().user_id)?;
        let view = self.authority.get_user(&caller, id).await?;
        Ok(Response::new(convert::user(view)))
    }

    async fn get_current_user(
        &self,
        req: Request<pb::GetCurrentUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let caller = caller(&req)?;
        // A gRPC caller is never a session, so there is no CSRF token to pass on.
        let current = self.authority.current_user(&caller).await?;
        Ok(Response::new(convert::user(current.user)))
    }

    async fn update_user(
        &self,
        req: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let caller = caller(&req)?;
        let (id, input) = convert::update_user_request(req.into_inner())?;
        let view = self
            .authority
            .update_user(&caller, id, input, self.clock.now())
            .await?;
        Ok(Response::new(convert::user(view)))
    }

    async fn disable_user(
        &self,
        req: Request<pb::DisableUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let caller = caller(&req)?;
        self.set_user_disabled(&caller, &req.get_ref().user_id, true)
            .await
    }

    async fn enable_user(
        &self,
        req: Request<pb::EnableUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let caller = caller(&req)?;
        self.set_user_disabled(&caller, &req.get_ref().user_id, false)
            .await
    }

    type WatchChangesStream = tonic::codegen::tokio_stream::wrappers::ReceiverStream<
        Result<pb::WatchChangesResponse, Status>,
    >;

    async fn watch_changes(
        &self,
        req: Request<pb::WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        use crate::service::changes::WatchEvent;
        let caller = caller(&req)?;
        let watch_req = convert::watch_request(req.into_inner())?;
        let (mut watch, first) = self
            .authority
            .start_watch(&caller, watch_req, self.clock.now())
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let (authority, clock) = (self.authority.clone(), self.clock.clone());
        // The stream's own task: it reads the feed when a change is announced and sends until
        // the client goes away or the server stops.
        tokio::spawn(async move {
            let mut next = Some(first);
            loop {
                if let Some(event) = next.take() {
                    let msg = convert::watch_message(watch.cursor(), event);
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                    watch.sent_message();
                }
                let go_on = tokio::select! {
                    go_on = watch.wait() => go_on,
                    () = tx.closed() => false,
                };
                if !go_on {
                    return;
                }
                match authority.next_changes(&mut watch, clock.now()).await {
                    Ok(changes) if !changes.is_empty() => next = Some(WatchEvent::Changes(changes)),
                    Ok(_) if watch.heartbeat_due() => {
                        next = Some(WatchEvent::Heartbeat(clock.now()));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(
            tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }

    async fn report_usage(
        &self,
        req: Request<pb::ReportUsageRequest>,
    ) -> Result<Response<pb::ReportUsageResponse>, Status> {
        let caller = caller(&req)?;
        let uses = convert::reported_uses(req.into_inner())?;
        let accepted = self
            .authority
            .report_usage(&caller, uses, self.clock.now())
            .await?;
        Ok(Response::new(pb::ReportUsageResponse {
            accepted: accepted as i64,
        }))
    }

    async fn change_password(
        &self,
        req: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let caller = caller(&req)?;
        let input = convert::change_password_request(req.into_inner());
        self.authority
            .change_password(&caller, input, self.clock.now())
            .await?;
        Ok(Response::new(pb::ChangePasswordResponse {}))
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

    async fn set_user_disabled(
        &self,
        caller: &Caller,
        user_id: &str,
        disabled: bool,
    ) -> Result<Response<pb::User>, Status> {
        let id = convert::uuid_field("user_id", user_id)?;
        let view = self
            .authority
            .set_user_disabled(caller, id, disabled, self.clock.now())
            .await?;
        Ok(Response::new(convert::user(view)))
    }
}

/// The gRPC services as an axum router: AuthService (and, with `compat_ibex`, ibex's
/// AuthService) behind the bearer layer, Envoy's Authorization (which the bearer layer passes
/// through: its bearer is inside the request; `trusted` is `--trusted-proxies`, for the client
/// address Envoy reports), reflection and health. `max_message_bytes` bounds decoded requests.
/// Without `compat_ibex` the ibex service is neither served (its RPCs answer `UNIMPLEMENTED`)
/// nor listed by reflection.
///
/// # Errors
/// Only if the embedded descriptor sets fail to load (a build defect).
pub async fn router(
    authority: Arc<Authority>,
    clock: Arc<dyn Clock>,
    max_message_bytes: usize,
    compat_ibex: bool,
    trusted: Arc<Vec<ipnet::IpNet>>,
) -> anyhow::Result<Router> {
    let auth_state = auth::AuthLayerState {
        authority: authority.clone(),
        clock: clock.clone(),
        compat_ibex,
    };
    let ibex = compat_ibex
        .then(|| ibex::IbexGrpc::server(authority.clone(), clock.clone(), max_message_bytes));
    let envoy =
        envoy::EnvoyGrpc::server(authority.clone(), clock.clone(), trusted, max_message_bytes);
    let service = AuthServiceServer::new(AuthGrpc { authority, clock })
        .max_decoding_message_size(max_message_bytes);
    let reflection = || {
        let builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(envoy::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        if compat_ibex {
            builder.register_encoded_file_descriptor_set(ibex::FILE_DESCRIPTOR_SET)
        } else {
            builder
        }
    };
    // The database is migrated before the router is built, so the service is serving from here.
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AuthServiceServer<AuthGrpc>>()
        .await;
    health_reporter
        .set_service_status(envoy::SERVICE_NAME, tonic_health::ServingStatus::Serving)
        .await;
    let mut routes = tonic::service::Routes::new(service)
        .add_service(envoy)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);
    if let Some(ibex) = ibex {
        health_reporter
            .set_service_status(ibex::SERVICE_NAME, tonic_health::ServingStatus::Serving)
            .await;
        routes = routes.add_service(ibex);
    }
    let routes = routes.add_service(health);
    Ok(routes
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(
            auth_state,
            auth::authenticate,
        )))
}
