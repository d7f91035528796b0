//! Conversions between protobuf messages and the service's types. Input checks that only
//! concern the wire (a UUID string, an enum number) live here; every rule stays in `service/`.

use chrono::{DateTime, Utc};
use prost_types::{ListValue, Struct, Timestamp, Value as PValue, value::Kind};
use serde_json::{Map, Number, Value};
use uuid::Uuid;

use super::pb;
use crate::error::Error;
use crate::service::changes::{ReportedUse, WatchEvent, WatchRequest};
use crate::service::model::{
    AuditPage, ChangePasswordRequest, CreateTokenRequest, CreateUserRequest, CreatedToken,
    CreatedUser, ExchangePasswordRequest, ListAuditRequest, ListTokensRequest, ListUsersRequest,
    RotateTokenRequest, RotatedToken, SetupPasswordRequest, TokenFormat, TokenPage, TokenState,
    TokenType, TokenUsage, TokenView, UpdateUserRequest, UserPage, UserRole, UserState, UserView,
    VerifyCode, VerifyResponse,
};
use crate::token::Secret;

pub fn uuid_field(field: &str, s: &str) -> Result<Uuid, Error> {
    Uuid::try_parse(s).map_err(|_| Error::invalid(format!("{field} is not a valid UUID")))
}

/// An optional UUID: empty means absent.
pub fn opt_uuid(field: &str, s: &str) -> Result<Option<Uuid>, Error> {
    if s.is_empty() {
        Ok(None)
    } else {
        uuid_field(field, s).map(Some)
    }
}

pub fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn from_timestamp(field: &str, t: &Timestamp) -> Result<DateTime<Utc>, Error> {
    u32::try_from(t.nanos)
        .ok()
        .and_then(|n| DateTime::from_timestamp(t.seconds, n))
        .ok_or_else(|| Error::invalid(format!("{field} is not a valid timestamp")))
}

pub fn to_struct(v: &Value) -> Option<Struct> {
    match to_value(v).kind {
        Some(Kind::StructValue(s)) => Some(s),
        _ => None,
    }
}

fn to_value(v: &Value) -> PValue {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(to_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
        }),
    };
    PValue { kind: Some(kind) }
}

pub fn from_struct(s: &Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), from_value(v)))
            .collect::<Map<_, _>>(),
    )
}

fn from_value(v: &PValue) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            // Whole numbers come back as integers, as they went in over REST.
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                Value::Number(Number::from(*n as i64))
            } else {
                Number::from_f64(*n).map_or(Value::Null, Value::Number)
            }
        }
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(from_value).collect()),
        Some(Kind::StructValue(s)) => from_struct(s),
    }
}

fn token_type(t: TokenType) -> pb::TokenType {
    match t {
        TokenType::Pat => pb::TokenType::Pat,
        TokenType::Svc => pb::TokenType::Svc,
    }
}

fn token_state(s: TokenState) -> pb::TokenState {
    match s {
        TokenState::Active => pb::TokenState::Active,
        TokenState::Expired => pb::TokenState::Expired,
        TokenState::Revoked => pb::TokenState::Revoked,
        TokenState::Disabled => pb::TokenState::Disabled,
    }
}

pub fn token(v: TokenView) -> pb::Token {
    pb::Token {
        id: v.id.to_string(),
        org_id: v.org_id.to_string(),
        name: v.name,
        r#type: token_type(v.kind) as i32,
        display_hint: v.display_hint,
        permissions: v.permissions as i64,
        scopes: v.scopes,
        state: token_state(v.state) as i32,
        created_at: Some(timestamp(v.created_at)),
        created_by: v.created_by,
        expires_at: v.expires_at.map(timestamp),
        revoked_at: v.revoked_at.map(timestamp),
        last_used_at: v.last_used_at.map(timestamp),
        request_count: v.request_count,
        replaced_by: v.replaced_by.map(|u| u.to_string()).unwrap_or_default(),
        metadata: v.metadata.as_ref().and_then(to_struct),
        disabled_at: v.disabled_at.map(timestamp),
        client_ips: v
            .client_ips
            .into_iter()
            .map(|c| pb::ClientIp {
                ip: c.ip,
                last_seen_at: Some(timestamp(c.last_seen_at)),
            })
            .collect(),
        owner: v.owner.map(|u| u.to_string()).unwrap_or_default(),
        format: v.format.as_str().to_string(),
    }
}

pub fn rotate_request(r: &pb::RotateTokenRequest) -> Result<(Uuid, RotateTokenRequest), Error> {
    Ok((
        uuid_field("token_id", &r.token_id)?,
        RotateTokenRequest {
            org_id: opt_uuid("org_id", &r.org_id)?,
            grace_seconds: r.grace_seconds,
        },
    ))
}

pub fn rotated(r: RotatedToken) -> pb::RotateTokenResponse {
    pb::RotateTokenResponse {
        token: Some(token(r.token)),
        plaintext: r.plaintext,
        previous: Some(token(r.previous)),
    }
}

fn opt_str(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

pub fn audit_request(r: pb::ListAuditEventsRequest) -> Result<ListAuditRequest, Error> {
    Ok(ListAuditRequest {
        org_id: opt_uuid("org_id", &r.org_id)?,
        token_id: opt_uuid("token_id", &r.token_id)?,
        action: opt_str(r.action),
        actor: opt_str(r.actor),
        since: r
            .since
            .as_ref()
            .map(|t| from_timestamp("since", t))
            .transpose()?,
        until: r
            .until
            .as_ref()
            .map(|t| from_timestamp("until", t))
            .transpose()?,
        page_size: page_size(r.page_size)?,
        page_token: opt_str(r.page_token),
    })
}

pub fn audit_page(p: AuditPage) -> pb::ListAuditEventsResponse {
    pb::ListAuditEventsResponse {
        events: p
            .events
            .into_iter()
            .map(|e| pb::AuditEvent {
                id: e.id.to_string(),
                org_id: e.org_id.to_string(),
                occurred_at: Some(timestamp(e.occurred_at)),
                actor: e.actor,
                action: e.action,
                token_id: e.token_id.map(|u| u.to_string()).unwrap_or_default(),
                ip: e.ip.unwrap_or_default(),
                user_agent: e.user_agent.unwrap_or_default(),
                details: to_struct(&e.details),
            })
            .collect(),
        next_page_token: p.next_page_token.unwrap_or_default(),
    }
}

fn from_token_type(t: i32) -> Result<TokenType, Error> {
    match pb::TokenType::try_from(t) {
        Ok(pb::TokenType::Unspecified | pb::TokenType::Pat) => Ok(TokenType::Pat),
        Ok(pb::TokenType::Svc) => Ok(TokenType::Svc),
        Err(_) => Err(Error::invalid("type must be 1 (pat) or 2 (svc)")),
    }
}

/// 0 means the default; a negative size is refused.
fn page_size(n: i32) -> Result<Option<u32>, Error> {
    match n {
        0 => Ok(None),
        n => u32::try_from(n)
            .map(Some)
            .map_err(|_| Error::invalid("page_size must not be negative")),
    }
}

pub fn create_request(r: pb::CreateTokenRequest) -> Result<CreateTokenRequest, Error> {
    Ok(CreateTokenRequest {
        org_id: opt_uuid("org_id", &r.org_id)?,
        name: r.name,
        kind: from_token_type(r.r#type)?,
        permissions: (r.permissions != 0).then_some(r.permissions as u64),
        scopes: (!r.scopes.is_empty()).then_some(r.scopes),
        expires_at: r
            .expires_at
            .as_ref()
            .map(|t| from_timestamp("expires_at", t))
            .transpose()?,
        ttl_seconds: r.ttl_seconds,
        metadata: r.metadata.as_ref().map(from_struct),
    })
}

pub fn created(c: CreatedToken) -> pb::CreateTokenResponse {
    pb::CreateTokenResponse {
        token: Some(token(c.token)),
        plaintext: c.plaintext,
    }
}

pub fn list_request(r: pb::ListTokensRequest) -> Result<ListTokensRequest, Error> {
    let page_size = page_size(r.page_size)?;
    let state = match pb::TokenState::try_from(r.state) {
        Ok(pb::TokenState::Unspecified) => None,
        Ok(pb::TokenState::Active) => Some(TokenState::Active),
        Ok(pb::TokenState::Expired) => Some(TokenState::Expired),
        Ok(pb::TokenState::Revoked) => Some(TokenState::Revoked),
        Ok(pb::TokenState::Disabled) => Some(TokenState::Disabled),
        Err(_) => return Err(Error::invalid("state is not a known token state")),
    };
    Ok(ListTokensRequest {
        org_id: opt_uuid("org_id", &r.org_id)?,
        page_size,
        page_token: (!r.page_token.is_empty()).then_some(r.page_token),
        state,
        owner: opt_str(r.owner),
        name_contains: opt_str(r.name_contains),
        format: match opt_str(r.format) {
            None => None,
            Some(f) => Some(TokenFormat::from_name(&f).ok_or_else(|| {
                Error::invalid(
                    "format must be native, argon2id-embedded-uuid, sha256, sha512 or sanctum",
                )
            })?),
        },
    })
}

pub fn usage(u: TokenUsage) -> pb::TokenUsage {
    pb::TokenUsage {
        token_id: u.token_id.to_string(),
        from: Some(timestamp(u.from)),
        to: Some(timestamp(u.to)),
        total: u.total,
        hours: u
            .hours
            .into_iter()
            .map(|h| pb::UsageHour {
                hour: Some(timestamp(h.hour)),
                count: h.count,
            })
            .collect(),
    }
}

pub fn page(p: TokenPage) -> pb::ListTokensResponse {
    pb::ListTokensResponse {
        tokens: p.tokens.into_iter().map(token).collect(),
        next_page_token: p.next_page_token.unwrap_or_default(),
    }
}

pub fn validation(v: VerifyResponse) -> pb::ValidateTokenResponse {
    let code = match v.code {
        VerifyCode::Valid => pb::ValidationCode::Valid,
        VerifyCode::Invalid => pb::ValidationCode::Invalid,
        VerifyCode::InsufficientPermissions => pb::ValidationCode::InsufficientPermissions,
        VerifyCode::RateLimited => pb::ValidationCode::RateLimited,
    };
    let mut out = pb::ValidateTokenResponse {
        valid: v.valid,
        code: code as i32,
        ..Default::default()
    };
    if let Some(t) = v.token {
        out.token_id = t.token_id.to_string();
        out.org_id = t.org_id.to_string();
        out.permissions = t.permissions as i64;
        out.scopes = t.scopes.to_vec();
        out.expires_at = t.expires_at.map(timestamp);
    }
    out
}

fn user_role(r: UserRole) -> pb::UserRole {
    match r {
        UserRole::Member => pb::UserRole::Member,
        UserRole::Admin => pb::UserRole::Admin,
    }
}

/// A role the caller named; `unspecified` is the caller's to interpret (see the callers).
fn from_user_role(r: i32) -> Result<Option<UserRole>, Error> {
    match pb::UserRole::try_from(r) {
        Ok(pb::UserRole::Unspecified) => Ok(None),
        Ok(pb::UserRole::Member) => Ok(Some(UserRole::Member)),
        Ok(pb::UserRole::Admin) => Ok(Some(UserRole::Admin)),
        Err(_) => Err(Error::invalid("role must be 1 (member) or 2 (admin)")),
    }
}

pub fn user(v: UserView) -> pb::User {
    let state = match v.state {
        UserState::Active => pb::UserState::Active,
        UserState::Invited => pb::UserState::Invited,
        UserState::Disabled => pb::UserState::Disabled,
    };
    pb::User {
        id: v.id.to_string(),
        org_id: v.org_id.to_string(),
        email: v.email,
        name: v.name,
        role: user_role(v.role) as i32,
        platform_admin: v.platform_admin,
        state: state as i32,
        permissions: v.permissions as i64,
        scopes: v.scopes,
        created_at: Some(timestamp(v.created_at)),
        created_by: v.created_by,
        last_login_at: v.last_login_at.map(timestamp),
        disabled_at: v.disabled_at.map(timestamp),
    }
}

pub fn create_user_request(r: pb::CreateUserRequest) -> Result<CreateUserRequest, Error> {
    Ok(CreateUserRequest {
        org_id: opt_uuid("org_id", &r.org_id)?,
        email: r.email,
        name: r.name,
        // Unspecified: the default role, as an absent `role` over REST.
        role: from_user_role(r.role)?.unwrap_or_default(),
    })
}

pub fn created_user(c: CreatedUser) -> pb::CreateUserResponse {
    pb::CreateUserResponse {
        user: Some(user(c.user)),
        setup_url: c.setup_url,
        setup_token: c.setup_token,
        setup_expires_at: Some(timestamp(c.setup_expires_at)),
    }
}

pub fn list_users_request(r: pb::ListUsersRequest) -> Result<ListUsersRequest, Error> {
    Ok(ListUsersRequest {
        org_id: opt_uuid("org_id", &r.org_id)?,
        page_size: page_size(r.page_size)?,
        page_token: opt_str(r.page_token),
    })
}

pub fn user_page(p: UserPage) -> pb::ListUsersResponse {
    pb::ListUsersResponse {
        users: p.users.into_iter().map(user).collect(),
        next_page_token: p.next_page_token.unwrap_or_default(),
    }
}

pub fn update_user_request(r: pb::UpdateUserRequest) -> Result<(Uuid, UpdateUserRequest), Error> {
    let role = match r.role {
        None => None,
        // A role that is present must name one: "unspecified" is no change to ask for.
        Some(n) => Some(
            from_user_role(n)?
                .ok_or_else(|| Error::invalid("role must be 1 (member) or 2 (admin)"))?,
        ),
    };
    Ok((
        uuid_field("user_id", &r.user_id)?,
        UpdateUserRequest { name: r.name, role },
    ))
}

/// The passwords become `Secret`s here, before anything else sees them.
pub fn change_password_request(r: pb::ChangePasswordRequest) -> ChangePasswordRequest {
    ChangePasswordRequest {
        current_password: Secret::new(r.current_password),
        new_password: Secret::new(r.new_password),
    }
}

pub fn setup_password_request(r: pb::SetupPasswordRequest) -> SetupPasswordRequest {
    SetupPasswordRequest {
        setup_token: Secret::new(r.setup_token),
        password: Secret::new(r.password),
    }
}

pub fn exchange_password_request(
    r: pb::ExchangePasswordRequest,
) -> Result<ExchangePasswordRequest, Error> {
    let password = Secret::new(r.password);
    Ok(ExchangePasswordRequest {
        email: r.email,
        password,
        name: r.name,
        // Like CreateToken: an empty list and 0 are "not given", so neither means the
        // deployment's default scopes.
        scopes: (!r.scopes.is_empty()).then_some(r.scopes),
        permissions: (r.permissions != 0).then_some(r.permissions as u64),
        ttl_seconds: r.ttl_seconds,
        expires_in_days: r.expires_in_days,
        kind: from_token_type(r.r#type)?,
    })
}

pub fn watch_request(r: pb::WatchChangesRequest) -> Result<WatchRequest, Error> {
    Ok(WatchRequest {
        cursor: opt_str(r.cursor),
        org_id: opt_uuid("org_id", &r.org_id)?,
    })
}

pub fn watch_message(cursor: String, event: WatchEvent) -> pb::WatchChangesResponse {
    use pb::watch_changes_response::Event;
    let event = match event {
        WatchEvent::Changes(changes) => Event::Changes(pb::TokenChanges {
            changes: changes
                .into_iter()
                .map(|c| pb::TokenChange {
                    token_id: c.token_id.to_string(),
                    org_id: c.org_id.to_string(),
                    kind: c.kind,
                    at: Some(timestamp(c.at)),
                })
                .collect(),
        }),
        WatchEvent::Heartbeat(at) => Event::Heartbeat(pb::Heartbeat {
            at: Some(timestamp(at)),
        }),
        WatchEvent::Reset(at) => Event::Reset(pb::Reset {
            at: Some(timestamp(at)),
        }),
    };
    pb::WatchChangesResponse {
        cursor,
        event: Some(event),
    }
}

pub fn reported_uses(r: pb::ReportUsageRequest) -> Result<Vec<ReportedUse>, Error> {
    r.uses
        .into_iter()
        .map(|u| {
            Ok(ReportedUse {
                token_id: uuid_field("token_id", &u.token_id)?,
                count: u.count,
                last_used_at: match &u.last_used_at {
                    Some(t) => from_timestamp("last_used_at", t)?,
                    None => return Err(Error::invalid("last_used_at is required")),
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metadata_survives_a_round_trip_through_struct() {
        let v = json!({"team": "infra", "n": 3, "ratio": 0.5, "tags": ["a", null, true], "nested": {"k": "v"}});
        assert_eq!(from_struct(&to_struct(&v).unwrap()), v);
    }

    #[test]
    fn timestamps_round_trip_at_microsecond_precision() {
        let t = DateTime::from_timestamp_micros(1_790_000_000_123_456).unwrap();
        assert_eq!(from_timestamp("t", &timestamp(t)).unwrap(), t);
        assert!(
            from_timestamp(
                "t",
                &Timestamp {
                    seconds: 0,
                    nanos: -1
                }
            )
            .is_err()
        );
    }
}
