//! The console's org pages: the audit log with its filters, and the org's lifetime policy.
//! Each extracts its input, calls the service, renders.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::ConsoleState;
use super::pages::error_for;
use super::session::{SignedForm, Viewer};
use super::view::Nav;
use super::view::{When, page, sentence, status_of, when};
use crate::error::Error;
use crate::service::model::{ListAuditRequest, ListUsersRequest, OrgView, UpdateOrgRequest};

// ---------------------------------------------------------------------------------------------
// The audit log

/// The actions offered as suggestions in the action filter.
const ACTIONS: &[&str] = &[
    "token_created",
    "token_revoked",
    "token_rotated",
    "token_disabled",
    "token_enabled",
    "token_family_revoked",
    "token_leaked",
    "user_created",
    "user_updated",
    "user_disabled",
    "user_enabled",
    "password_set",
    "password_changed",
    "login_succeeded",
    "login_failed",
    "logout",
    "session_ended",
    "org_created",
    "org_updated",
];

/// One row of the audit table.
pub struct AuditRow {
    pub at: When,
    pub action: String,
    /// The actor as written in the log (`user:<id>`, `token:<id>`, `bootstrap`, ...).
    pub actor: String,
    /// The actor as a person reads it: a user's name when known.
    pub actor_label: String,
    /// Where the actor links to: a key's page, or the events of a user.
    pub actor_href: Option<String>,
    pub token: Option<Uuid>,
    /// The first characters of the token's id, for the cell.
    pub token_short: String,
    pub ip: String,
    pub details: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    nav: Nav,
    rows: Vec<AuditRow>,
    action: String,
    actor: String,
    since: String,
    until: String,
    actions: &'static [&'static str],
    error: Option<String>,
    /// Which filter the error is about: `since`, `until`, or none.
    error_field: &'static str,
    /// The query of the next page, filters included, when there is one.
    next: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct AuditQuery {
    #[serde(default)]
    action: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    page_token: Option<String>,
}

/// A day typed in a date field (YYYY-MM-DD): blank is none.
fn day(
    field: &'static str,
    label: &str,
    s: &str,
) -> Result<Option<NaiveDate>, (&'static str, String)> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map(Some)
        .map_err(|_| (field, format!("{label}: enter a date as YYYY-MM-DD.")))
}

fn start_of(d: NaiveDate) -> Option<DateTime<Utc>> {
    d.and_hms_opt(0, 0, 0).map(|t| t.and_utc())
}

/// The end of an id, for a cell: the end of a UUID v7 is random, its start is the time (alike
/// for things made together).
fn short(id: Uuid) -> String {
    id.simple().to_string()[20..].to_string()
}

/// The actor of an event as a person reads it, and where it links to.
fn actor_cell(actor: &str, names: &HashMap<Uuid, String>) -> (String, Option<String>) {
    if let Some(id) = actor.strip_prefix("token:")
        && let Ok(id) = Uuid::try_parse(id)
    {
        return (
            format!("key …{}", short(id)),
            Some(format!("/ui/keys/{id}")),
        );
    }
    if let Some(id) = actor.strip_prefix("user:")
        && let Ok(id) = Uuid::try_parse(id)
    {
        let q = serde_urlencoded::to_string([("actor", actor)]).unwrap_or_default();
        let label = names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("user …{}", short(id)));
        return (label, Some(format!("/ui/audit?{q}")));
    }
    (actor.to_string(), None)
}

/// An event's details on one line: `key: value` pairs, user ids as names when known.
fn details_line(d: &serde_json::Value, names: &HashMap<Uuid, String>) -> String {
    let Some(map) = d.as_object() else {
        return String::new();
    };
    map.iter()
        .map(|(k, v)| {
            let shown = match v {
                serde_json::Value::String(s) => Uuid::try_parse(s)
                    .ok()
                    .and_then(|id| names.get(&id).cloned())
                    .unwrap_or_else(|| s.clone()),
                serde_json::Value::Null => "none".into(),
                other => other.to_string(),
            };
            format!("{k}: {shown}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn audit(
    State(s): State<ConsoleState>,
    v: Viewer,
    Query(q): Query<AuditQuery>,
) -> Response {
    let now = s.clock.now();
    let filters =
        day("since", "From", &q.since).and_then(|since| Ok((since, day("until", "To", &q.until)?)));
    let (since, until) = match filters {
        Ok(d) => d,
        Err((field, msg)) => {
            return render_audit(
                &v,
                &q,
                Vec::new(),
                None,
                Some((StatusCode::BAD_REQUEST, msg, field)),
            );
        }
    };
    let req = ListAuditRequest {
        action: Some(q.action.trim().to_string()).filter(|a| !a.is_empty()),
        actor: Some(q.actor.trim().to_string()).filter(|a| !a.is_empty()),
        since: since.and_then(start_of),
        // "Until" a day includes that day.
        until: until
            .and_then(|d| d.checked_add_signed(TimeDelta::days(1)))
            .and_then(start_of),
        page_token: q.page_token.clone().filter(|t| !t.is_empty()),
        ..Default::default()
    };
    let events = match s.authority.list_audit(&v.caller, req).await {
        Ok(p) => p,
        Err(e @ Error::InvalidArgument(_)) => {
            let msg = e.public_message();
            let (msg, field) = if msg.starts_with("since must be before until") {
                (
                    "The From date must not be after the To date.".to_string(),
                    "until",
                )
            } else {
                (sentence(&msg), "")
            };
            return render_audit(
                &v,
                &q,
                Vec::new(),
                None,
                Some((status_of(&e).0, msg, field)),
            );
        }
        Err(e) => return error_for(&v, "audit", e),
    };
    // People's names, when the viewer may read them: one page of users, not one call per row.
    let names: HashMap<Uuid, String> = if events.events.iter().any(|e| e.actor.starts_with("user:"))
    {
        let req = ListUsersRequest {
            page_size: Some(500),
            ..Default::default()
        };
        match s.authority.list_users(&v.caller, req).await {
            Ok(p) => p.users.into_iter().map(|u| (u.id, u.name)).collect(),
            Err(_) => HashMap::new(),
        }
    } else {
        HashMap::new()
    };
    let rows = events
        .events
        .into_iter()
        .map(|e| {
            let (actor_label, actor_href) = actor_cell(&e.actor, &names);
            AuditRow {
                at: when(Some(e.occurred_at), now, ""),
                details: details_line(&e.details, &names),
                action: e.action,
                actor: e.actor,
                actor_label,
                actor_href,
                token_short: e
                    .token_id
                    .map(|t| format!("…{}", short(t)))
                    .unwrap_or_default(),
                token: e.token_id,
                ip: e.ip.unwrap_or_default(),
            }
        })
        .collect();
    let next = events.next_page_token.map(|t| {
        serde_urlencoded::to_string([
            ("action", q.action.as_str()),
            ("actor", q.actor.as_str()),
            ("since", q.since.as_str()),
            ("until", q.until.as_str()),
            ("page_token", t.as_str()),
        ])
        .unwrap_or_default()
    });
    render_audit(&v, &q, rows, next, None)
}

fn render_audit(
    v: &Viewer,
    q: &AuditQuery,
    rows: Vec<AuditRow>,
    next: Option<String>,
    failed: Option<(StatusCode, String, &'static str)>,
) -> Response {
    let (status, error, error_field) = match failed {
        Some((status, msg, field)) => (status, Some(msg), field),
        None => (StatusCode::OK, None, ""),
    };
    page(
        status,
        &AuditPage {
            nav: Nav::new(v, "audit"),
            rows,
            action: q.action.clone(),
            actor: q.actor.clone(),
            since: q.since.clone(),
            until: q.until.clone(),
            actions: ACTIONS,
            error,
            error_field,
            next,
        },
    )
}

// ---------------------------------------------------------------------------------------------
// The org's lifetime policy

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    nav: Nav,
    org: OrgView,
    max_words: String,
    default_words: String,
    /// The fields as shown (days), or as sent when the form failed.
    max_days: String,
    default_days: String,
    notice: Option<&'static str>,
    error: Option<String>,
    /// `max_days`, `default_days`, or the top.
    error_field: &'static str,
}

/// A lifetime in seconds as a person reads it.
fn lifetime_words(seconds: Option<i64>, none: &str) -> String {
    let plural = |n: i64, unit: &str| {
        if n == 1 {
            format!("1 {unit}")
        } else {
            format!("{n} {unit}s")
        }
    };
    match seconds {
        None => none.to_string(),
        Some(s) if s % 86_400 == 0 => plural(s / 86_400, "day"),
        Some(s) if s % 3_600 == 0 => plural(s / 3_600, "hour"),
        Some(s) if s % 60 == 0 => plural(s / 60, "minute"),
        Some(s) => plural(s, "second"),
    }
}

/// A lifetime in seconds as the days typed in the form: whole days, or a decimal.
fn days_field(seconds: Option<i64>) -> String {
    match seconds {
        None => String::new(),
        Some(s) if s % 86_400 == 0 => (s / 86_400).to_string(),
        Some(s) => {
            let d = format!("{:.6}", s as f64 / 86_400.0);
            d.trim_end_matches('0').trim_end_matches('.').to_string()
        }
    }
}

/// The days typed in a field as seconds: blank is no limit (`None`).
fn seconds_of(field: &'static str, s: &str) -> Result<Option<i64>, (&'static str, String)> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    match s.parse::<f64>() {
        Ok(d) if d.is_finite() => Ok(Some((d * 86_400.0).round() as i64)),
        _ => Err((
            field,
            "Enter a number of days, or leave the field blank for no limit.".into(),
        )),
    }
}

#[derive(Deserialize, Default)]
pub struct SettingsQuery {
    done: Option<String>,
}

#[derive(Deserialize)]
pub struct SettingsForm {
    #[serde(default)]
    max_days: String,
    #[serde(default)]
    default_days: String,
}

async fn settings_page(
    s: &ConsoleState,
    v: &Viewer,
    notice: Option<&'static str>,
    failed: Option<(&SettingsForm, StatusCode, String, &'static str)>,
) -> Response {
    let org = match s
        .authority
        .get_org(&v.caller, v.caller.principal.org_id)
        .await
    {
        Ok(o) => o,
        Err(e) => return error_for(v, "settings", e),
    };
    let (status, max_days, default_days, error, error_field) = match failed {
        Some((f, status, msg, field)) => (
            status,
            f.max_days.clone(),
            f.default_days.clone(),
            Some(msg),
            field,
        ),
        None => (
            StatusCode::OK,
            days_field(org.max_ttl_seconds),
            days_field(org.default_ttl_seconds),
            None,
            "",
        ),
    };
    page(
        status,
        &SettingsPage {
            nav: Nav::new(v, "settings"),
            max_words: lifetime_words(org.max_ttl_seconds, "no limit"),
            default_words: lifetime_words(org.default_ttl_seconds, "none: keys do not expire"),
            org,
            max_days,
            default_days,
            notice,
            error,
            error_field,
        },
    )
}

pub async fn settings(
    State(s): State<ConsoleState>,
    v: Viewer,
    Query(q): Query<SettingsQuery>,
) -> Response {
    let notice = match q.done.as_deref() {
        Some("saved") => {
            Some("The lifetime policy was saved. It applies to keys created from now on.")
        }
        _ => None,
    };
    settings_page(&s, &v, notice, None).await
}

pub async fn save_settings(State(s): State<ConsoleState>, f: SignedForm<SettingsForm>) -> Response {
    let v = &f.viewer;
    let parsed = seconds_of("max_days", &f.form.max_days)
        .and_then(|max| Ok((max, seconds_of("default_days", &f.form.default_days)?)));
    let (max, default) = match parsed {
        Ok(p) => p,
        Err((field, msg)) => {
            let failed = (&f.form, StatusCode::BAD_REQUEST, msg, field);
            return settings_page(&s, v, None, Some(failed)).await;
        }
    };
    let req = UpdateOrgRequest {
        max_ttl_seconds: Some(max),
        default_ttl_seconds: Some(default),
    };
    match s
        .authority
        .update_org(&v.caller, v.caller.principal.org_id, req, s.clock.now())
        .await
    {
        Ok(_) => Redirect::to("/ui/settings?done=saved").into_response(),
        Err(e @ Error::InvalidArgument(_)) => {
            let msg = e.public_message();
            let field = if msg.starts_with("max_ttl_seconds") {
                "max_days"
            } else if msg.starts_with("default_ttl_seconds") {
                "default_days"
            } else {
                ""
            };
            // The service names the API's fields, in seconds; the form asks for days.
            let msg = msg
                .replace("max_ttl_seconds", "the maximum lifetime")
                .replace("default_ttl_seconds", "the default lifetime")
                .replace(", or null", " seconds, or blank for no limit");
            let msg = sentence(&msg);
            let failed = (&f.form, status_of(&e).0, msg, field);
            settings_page(&s, v, None, Some(failed)).await
        }
        Err(e) => error_for(&f.viewer, "settings", e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_read_as_days_and_back() {
        assert_eq!(days_field(Some(30 * 86_400)), "30");
        assert_eq!(days_field(Some(3_600)), "0.041667");
        assert_eq!(seconds_of("max_days", "0.041667"), Ok(Some(3_600)));
        assert_eq!(days_field(None), "");
        assert_eq!(seconds_of("max_days", " "), Ok(None));
        assert_eq!(seconds_of("max_days", "90"), Ok(Some(90 * 86_400)));
        assert!(seconds_of("max_days", "soon").is_err());
        assert!(seconds_of("max_days", "inf").is_err());
        assert_eq!(lifetime_words(Some(86_400), ""), "1 day");
        assert_eq!(lifetime_words(Some(7_200), ""), "2 hours");
        assert_eq!(lifetime_words(None, "no limit"), "no limit");
    }
}
