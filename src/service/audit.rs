//! Audit events: built here, written by the store in the same transaction as the change, and
//! logged as one JSON line each (target `latchkey::audit`) once committed.

use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use super::RequestMeta;
use crate::store::AuditRecord;

/// Builds an event. `details` must never hold a plaintext token or a verifier.
pub(crate) fn event(
    org_id: Uuid,
    actor: String,
    action: &str,
    token_id: Option<Uuid>,
    meta: &RequestMeta,
    details: serde_json::Value,
    now: DateTime<Utc>,
) -> AuditRecord {
    AuditRecord {
        id: Uuid::now_v7(),
        org_id,
        occurred_at: now,
        actor,
        action: action.to_string(),
        token_id,
        ip: meta.ip.map(|ip| ip.to_string()),
        user_agent: meta.user_agent.clone(),
        details,
    }
}

/// Logs a committed event as one JSON line.
pub(crate) fn log(e: &AuditRecord) {
    let line = json!({
        "id": e.id,
        "org_id": e.org_id,
        "occurred_at": e.occurred_at,
        "actor": e.actor,
        "action": e.action,
        "token_id": e.token_id,
        "ip": e.ip,
        "user_agent": e.user_agent,
        "details": e.details,
    });
    // One JSON object per line on stderr, whatever the log format, so the audit trail can be
    // shipped and parsed on its own.
    let line = json!({ "timestamp": Utc::now(), "target": "latchkey::audit", "audit": line });
    eprintln!("{line}");
}
