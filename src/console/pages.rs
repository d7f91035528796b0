//! The console's pages. Each extracts its input, calls the service, and renders the answer.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::ConsoleState;
use super::session::{PublicForm, SignedForm, Viewer};
use super::view::{Chart, ErrorPage, Nav, When, page, when};
use crate::edge::set_session_cookie;
use crate::error::Error;
use crate::service::GrantableScope;
use crate::service::model::{
    CreateTokenRequest, ListTokensRequest, OrgScope, RotateTokenRequest, SignInRequest, TokenState,
    TokenType, TokenView, UserView,
};
use crate::token::Secret;

impl Nav {
    /// The header of a signed-in page, with `section` marked in the navigation.
    pub(super) fn new(v: &Viewer, section: &'static str) -> Self {
        Nav {
            user: v.user.clone(),
            csrf: v.csrf.clone(),
            section,
        }
    }
}

/// An error page for a signed-in person: the words of [`ErrorPage`], the navigation kept.
pub(super) fn error_for(v: &Viewer, section: &'static str, e: Error) -> Response {
    ErrorPage::within(Nav::new(v, section), e)
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    error: Option<String>,
    email: String,
}

pub async fn login_page() -> Response {
    page(
        StatusCode::OK,
        &LoginPage {
            error: None,
            email: String::new(),
        },
    )
}

#[derive(Deserialize)]
pub struct LoginForm {
    email: String,
    password: Secret<String>,
}

pub async fn login(State(s): State<ConsoleState>, f: PublicForm<LoginForm>) -> Response {
    let email = f.form.email.clone();
    let req = SignInRequest {
        email: f.form.email,
        password: f.form.password,
    };
    match s.authority.sign_in(req, &f.meta, s.clock.now()).await {
        Ok(new) => {
            let max_age = s.authority.config().people.session_absolute.as_secs();
            let mut res = Redirect::to("/ui/keys").into_response();
            set_session_cookie(&mut res, new.secret.expose(), max_age, s.secure_cookies);
            res
        }
        Err(e) => {
            let (status, message) = match &e {
                Error::InvalidCredentials => (
                    StatusCode::UNAUTHORIZED,
                    "The email or the password is not right.".to_string(),
                ),
                Error::RateLimited { retry_after } => {
                    let minutes = retry_after.as_secs().div_ceil(60).max(1);
                    let unit = if minutes == 1 { "minute" } else { "minutes" };
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        format!(
                            "Too many sign-in attempts from your address. Try again in {minutes} {unit}."
                        ),
                    )
                }
                _ => return ErrorPage(e).into_response(),
            };
            page(
                status,
                &LoginPage {
                    error: Some(message),
                    email,
                },
            )
        }
    }
}

#[derive(Deserialize)]
pub struct Empty {}

pub async fn logout(State(s): State<ConsoleState>, f: SignedForm<Empty>) -> Response {
    if let Err(e) = s.authority.sign_out(&f.viewer.caller, s.clock.now()).await {
        return ErrorPage(e).into_response();
    }
    let mut res = Redirect::to("/ui/login").into_response();
    set_session_cookie(&mut res, "", 0, s.secure_cookies);
    res
}

/// One row of the key table.
pub struct KeyRow {
    pub t: TokenView,
    pub state: &'static str,
    pub owner: String,
    pub created: When,
    pub last_used: When,
    pub expires: When,
}

fn state_name(s: TokenState) -> &'static str {
    match s {
        TokenState::Active => "active",
        TokenState::Expired => "expired",
        TokenState::Revoked => "revoked",
        TokenState::Disabled => "disabled",
    }
}

fn row(t: TokenView, me: &UserView, now: DateTime<Utc>) -> KeyRow {
    let owner = match t.owner {
        Some(id) if id == me.id => "you".to_string(),
        // The end of a UUID v7 is random; its start is the time, alike for users made together.
        Some(id) => format!("user …{}", &id.simple().to_string()[20..]),
        None => "(machine)".to_string(),
    };
    KeyRow {
        state: state_name(t.state),
        owner,
        created: when(Some(t.created_at), now, ""),
        last_used: when(t.last_used_at, now, "never"),
        expires: when(t.expires_at, now, "never"),
        t,
    }
}

#[derive(Template)]
#[template(path = "keys.html")]
struct KeysPage {
    nav: Nav,
    rows: Vec<KeyRow>,
    state: String,
    owner: String,
    name: String,
    next: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct KeysQuery {
    state: Option<String>,
    owner: Option<String>,
    name: Option<String>,
    page_token: Option<String>,
}

pub async fn keys(
    State(s): State<ConsoleState>,
    v: Viewer,
    Query(q): Query<KeysQuery>,
) -> Response {
    let now = s.clock.now();
    let state = match q.state.as_deref().unwrap_or("") {
        "" => None,
        "active" => Some(TokenState::Active),
        "expired" => Some(TokenState::Expired),
        "revoked" => Some(TokenState::Revoked),
        "disabled" => Some(TokenState::Disabled),
        _ => return error_for(&v, "keys", Error::invalid("state is not a known key state")),
    };
    let owner = q.owner.clone().filter(|o| !o.is_empty());
    let req = ListTokensRequest {
        state,
        owner: owner.clone(),
        name_contains: q.name.clone(),
        page_token: q.page_token.filter(|t| !t.is_empty()),
        ..Default::default()
    };
    match s.authority.list_tokens(&v.caller, req, now).await {
        Ok(p) => page(
            StatusCode::OK,
            &KeysPage {
                rows: p.tokens.into_iter().map(|t| row(t, &v.user, now)).collect(),
                state: q.state.unwrap_or_default(),
                owner: owner.unwrap_or_default(),
                name: q.name.unwrap_or_default(),
                next: p.next_page_token,
                nav: Nav::new(&v, "keys"),
            },
        ),
        Err(e) => error_for(&v, "keys", e),
    }
}

#[derive(Template)]
#[template(path = "new_key.html")]
struct NewKeyPage {
    nav: Nav,
    scopes: Vec<ScopeBox>,
    presets: Vec<(String, String)>,
    allow_none: bool,
    nonce: String,
    error: Option<String>,
    error_field: &'static str,
    name: String,
    kind: String,
    expiry: String,
    custom_date: String,
}

pub struct ScopeBox {
    pub name: String,
    pub admin_only: bool,
    pub checked: bool,
}

/// The lifetimes offered, within the org's policy.
fn presets(max_ttl: Option<i64>) -> Vec<(String, String)> {
    [7, 30, 60, 90]
        .into_iter()
        .filter(|d| max_ttl.is_none_or(|m| d * 86_400 <= m))
        .map(|d| (d.to_string(), format!("{d} days")))
        .collect()
}

async fn new_key_page(
    s: &ConsoleState,
    v: &Viewer,
    failed: Option<(&CreateForm, Error)>,
) -> Response {
    let form = failed.as_ref().map(|(f, _)| *f);
    let org = match s
        .authority
        .get_org(&v.caller, v.caller.principal.org_id)
        .await
    {
        Ok(o) => o,
        Err(e) => return error_for(v, "keys", e),
    };
    let chosen: Vec<String> = form.map(|f| f.scopes.clone()).unwrap_or_default();
    let scopes = s
        .authority
        .grantable_scopes(&v.caller)
        .into_iter()
        .map(|GrantableScope { name, admin_only }| ScopeBox {
            checked: chosen.contains(&name),
            name,
            admin_only,
        })
        .collect();
    let (status, error, error_field) = match &failed {
        None => (StatusCode::OK, None, ""),
        Some((_, e)) => {
            let msg = e.public_message();
            let field = if msg.starts_with("name") || matches!(e, Error::AlreadyExists(_)) {
                "name"
            } else if msg.contains("expires_at") || msg.contains("ttl") || msg.contains("lifetime")
            {
                "expiry"
            } else if matches!(e, Error::PermissionDenied(_)) {
                "scopes"
            } else {
                ""
            };
            (super::view::status_of(e).0, Some(msg), field)
        }
    };
    let presets = presets(org.max_ttl_seconds);
    let default_expiry = presets
        .iter()
        .find(|(d, _)| d == "30")
        .or(presets.first())
        .map(|(d, _)| d.clone())
        .unwrap_or_else(|| "custom".into());
    page(
        status,
        &NewKeyPage {
            scopes,
            allow_none: org.max_ttl_seconds.is_none(),
            presets,
            nonce: crate::service::new_form_nonce(),
            error,
            error_field,
            name: form.map(|f| f.name.clone()).unwrap_or_default(),
            kind: form.map_or("pat".into(), |f| f.kind.clone()),
            expiry: form.map_or(default_expiry, |f| f.expiry.clone()),
            custom_date: form.map(|f| f.custom_date.clone()).unwrap_or_default(),
            nav: Nav::new(v, "keys"),
        },
    )
}

pub async fn new_key(State(s): State<ConsoleState>, v: Viewer) -> Response {
    new_key_page(&s, &v, None).await
}

/// The create form, read from its fields (checkboxes repeat `scope`).
pub struct CreateForm {
    name: String,
    kind: String,
    scopes: Vec<String>,
    expiry: String,
    custom_date: String,
    nonce: String,
}

impl CreateForm {
    fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        let mut f = CreateForm {
            name: String::new(),
            kind: "pat".into(),
            scopes: Vec::new(),
            expiry: String::new(),
            custom_date: String::new(),
            nonce: String::new(),
        };
        for (k, v) in pairs {
            match k.as_str() {
                "name" => f.name = v,
                "type" => f.kind = v,
                "scope" => f.scopes.push(v),
                "expiry" => f.expiry = v,
                "custom_date" => f.custom_date = v,
                "nonce" => f.nonce = v,
                _ => {}
            }
        }
        f
    }

    /// The API request this form stands for, at `now`.
    fn request(&self, now: DateTime<Utc>) -> Result<CreateTokenRequest, Error> {
        let kind = match self.kind.as_str() {
            "pat" => TokenType::Pat,
            "svc" => TokenType::Svc,
            _ => {
                return Err(Error::invalid(
                    "type must be personal (pat) or service (svc)",
                ));
            }
        };
        let (ttl_seconds, expires_at) = match self.expiry.as_str() {
            "none" => (None, None),
            "custom" => {
                let day =
                    NaiveDate::parse_from_str(&self.custom_date, "%Y-%m-%d").map_err(|_| {
                        Error::invalid("expires_at: choose a date (YYYY-MM-DD) for a custom expiry")
                    })?;
                // The end of the chosen day, UTC.
                let at = day
                    .and_hms_opt(23, 59, 59)
                    .map(|t| t.and_utc())
                    .ok_or_else(|| Error::invalid("expires_at: not a valid date"))?;
                (None, Some(at))
            }
            days => {
                let d: i64 = days
                    .parse()
                    .map_err(|_| Error::invalid("expiry: choose one of the offered lifetimes"))?;
                let secs = d
                    .checked_mul(86_400)
                    .ok_or_else(|| Error::invalid("expiry: choose one of the offered lifetimes"))?;
                (Some(secs), None)
            }
        };
        let _ = now;
        Ok(CreateTokenRequest {
            org_id: None,
            name: self.name.trim().to_string(),
            kind,
            permissions: None,
            scopes: Some(self.scopes.clone()),
            expires_at,
            ttl_seconds,
            metadata: None,
        })
    }
}

#[derive(Template)]
#[template(path = "created.html")]
struct CreatedPage {
    nav: Nav,
    heading: &'static str,
    token: TokenView,
    plaintext: String,
}

#[derive(Template)]
#[template(path = "already.html")]
struct AlreadyPage {
    nav: Nav,
}

pub async fn create_key(
    State(s): State<ConsoleState>,
    f: SignedForm<Vec<(String, String)>>,
) -> Response {
    let now = s.clock.now();
    let form = CreateForm::from_pairs(f.form);
    let v = f.viewer;
    // A form sent twice (a reload, the back button) neither mints again nor shows a secret.
    if !form.nonce.is_empty() && s.used_nonces.get(&form.nonce).is_some() {
        return page(
            StatusCode::CONFLICT,
            &AlreadyPage {
                nav: Nav::new(&v, "keys"),
            },
        );
    }
    let created = match form.request(now) {
        Ok(req) => s.authority.create_token(&v.caller, req, now).await,
        Err(e) => Err(e),
    };
    match created {
        Ok(c) => {
            if !form.nonce.is_empty() {
                s.used_nonces.insert(form.nonce.clone(), ());
            }
            page(
                StatusCode::CREATED,
                &CreatedPage {
                    heading: "Your new API key",
                    token: c.token,
                    plaintext: c.plaintext,
                    nav: Nav::new(&v, "keys"),
                },
            )
        }
        Err(e @ (Error::Internal(_) | Error::RateLimited { .. })) => error_for(&v, "keys", e),
        Err(e) => new_key_page(&s, &v, Some((&form, e))).await,
    }
}

#[derive(Template)]
#[template(path = "key.html")]
struct KeyPage {
    nav: Nav,
    k: KeyRow,
    used_recently: bool,
    chart: Chart,
    family: Vec<FamilyRow>,
    events: Vec<EventRow>,
    audit_hidden: bool,
    graces: Vec<(i64, &'static str)>,
    nonce: String,
}

pub struct EventRow {
    pub action: String,
    pub actor: String,
    pub at: When,
    pub ip: String,
}

/// A member of the key's rotation family.
pub struct FamilyRow {
    pub id: Uuid,
    pub hint: String,
    pub state: &'static str,
    pub created: When,
    pub this: bool,
}

pub async fn key(State(s): State<ConsoleState>, v: Viewer, Path(id): Path<String>) -> Response {
    let now = s.clock.now();
    let Ok(id) = Uuid::try_parse(&id) else {
        return error_for(&v, "keys", Error::NotFound);
    };
    let d = match s.authority.key_details(&v.caller, id, now).await {
        Ok(d) => d,
        Err(e) => return error_for(&v, "keys", e),
    };
    let audit_hidden = d.history.is_none();
    let events = d
        .history
        .unwrap_or_default()
        .into_iter()
        .map(|e| EventRow {
            action: e.action,
            actor: e.actor,
            at: when(Some(e.occurred_at), now, ""),
            ip: e.ip.unwrap_or_default(),
        })
        .collect();
    let family = d
        .family
        .iter()
        .map(|t| FamilyRow {
            id: t.id,
            hint: t.display_hint.clone(),
            state: state_name(t.state),
            created: when(Some(t.created_at), now, ""),
            this: t.id == id,
        })
        .collect();
    let hours: Vec<_> = d.usage.hours.iter().map(|h| (h.hour, h.count)).collect();
    let used_recently = d
        .token
        .last_used_at
        .is_some_and(|u| now - u < TimeDelta::days(7));
    page(
        StatusCode::OK,
        &KeyPage {
            k: row(d.token, &v.user, now),
            used_recently,
            chart: Chart::hourly(&hours),
            family,
            events,
            audit_hidden,
            graces: vec![
                (0, "immediately"),
                (900, "after 15 minutes"),
                (3600, "after 1 hour"),
                (86_400, "after 24 hours"),
                (604_800, "after 7 days"),
            ],
            nonce: crate::service::new_form_nonce(),
            nav: Nav::new(&v, "keys"),
        },
    )
}

fn key_id(id: &str) -> Result<Uuid, Error> {
    Uuid::try_parse(id).map_err(|_| Error::NotFound)
}

fn back_to(id: Uuid) -> Response {
    Redirect::to(&format!("/ui/keys/{id}")).into_response()
}

#[derive(Deserialize)]
pub struct RevokeForm {
    confirm: Option<String>,
}

pub async fn revoke_key(
    State(s): State<ConsoleState>,
    Path(id): Path<String>,
    f: SignedForm<RevokeForm>,
) -> Response {
    let result = async {
        let id = key_id(&id)?;
        if f.form.confirm.is_none() {
            return Err(Error::invalid(
                "tick the box to confirm that you want to revoke this key",
            ));
        }
        s.authority
            .revoke_token(&f.viewer.caller, OrgScope::default(), id, s.clock.now())
            .await?;
        Ok(id)
    }
    .await;
    match result {
        Ok(id) => back_to(id),
        Err(e) => error_for(&f.viewer, "keys", e),
    }
}

#[derive(Deserialize)]
pub struct RotateForm {
    grace_seconds: i64,
    #[serde(default)]
    nonce: String,
}

pub async fn rotate_key(
    State(s): State<ConsoleState>,
    Path(id): Path<String>,
    f: SignedForm<RotateForm>,
) -> Response {
    // A rotate form sent twice would rotate an already rotated key: that revokes its family.
    if !f.form.nonce.is_empty() && s.used_nonces.get(&f.form.nonce).is_some() {
        return page(
            StatusCode::CONFLICT,
            &AlreadyPage {
                nav: Nav::new(&f.viewer, "keys"),
            },
        );
    }
    let req = RotateTokenRequest {
        org_id: None,
        grace_seconds: Some(f.form.grace_seconds),
    };
    let rotated = match key_id(&id) {
        Ok(id) => {
            s.authority
                .rotate_token(&f.viewer.caller, id, req, s.clock.now())
                .await
        }
        Err(e) => Err(e),
    };
    match rotated {
        Ok(r) => {
            if !f.form.nonce.is_empty() {
                s.used_nonces.insert(f.form.nonce.clone(), ());
            }
            page(
                StatusCode::CREATED,
                &CreatedPage {
                    heading: "The rotated API key",
                    token: r.token,
                    plaintext: r.plaintext,
                    nav: Nav::new(&f.viewer, "keys"),
                },
            )
        }
        Err(e) => error_for(&f.viewer, "keys", e),
    }
}

async fn set_disabled(
    s: ConsoleState,
    id: String,
    f: SignedForm<Empty>,
    disabled: bool,
) -> Response {
    let done = match key_id(&id) {
        Ok(id) => s
            .authority
            .set_token_disabled(
                &f.viewer.caller,
                OrgScope::default(),
                id,
                disabled,
                s.clock.now(),
            )
            .await
            .map(|_| id),
        Err(e) => Err(e),
    };
    match done {
        Ok(id) => back_to(id),
        Err(e) => error_for(&f.viewer, "keys", e),
    }
}

pub async fn disable_key(
    State(s): State<ConsoleState>,
    Path(id): Path<String>,
    f: SignedForm<Empty>,
) -> Response {
    set_disabled(s, id, f, true).await
}

pub async fn enable_key(
    State(s): State<ConsoleState>,
    Path(id): Path<String>,
    f: SignedForm<Empty>,
) -> Response {
    set_disabled(s, id, f, false).await
}

pub async fn not_found() -> Response {
    ErrorPage(Error::NotFound).into_response()
}
