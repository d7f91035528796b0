//! The console's people pages: the org's users (invite, change a role, disable and enable), the
//! page a setup link opens (choose a first password), and the account page (change one's own
//! password, see and end one's sessions). Each extracts its input, calls the service, renders.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use uuid::Uuid;

use super::ConsoleState;
use super::pages::{Empty, error_for};
use super::session::{PublicForm, SignedForm, Viewer};
use super::view::Nav;
use super::view::{ErrorPage, When, page, sentence, status_of, when};
use crate::error::Error;
use crate::service::model::{
    ChangePasswordRequest, CreateUserRequest, ListUsersRequest, SetupPasswordRequest,
    UpdateUserRequest, UserRole, UserState, UserView,
};
use crate::token::Secret;

pub(super) fn role_name(r: UserRole) -> &'static str {
    match r {
        UserRole::Member => "member",
        UserRole::Admin => "admin",
    }
}

fn user_state_name(s: UserState) -> &'static str {
    match s {
        UserState::Active => "active",
        UserState::Invited => "invited",
        UserState::Disabled => "disabled",
    }
}

fn parse_role(s: &str) -> Result<UserRole, Error> {
    match s {
        "member" => Ok(UserRole::Member),
        "admin" => Ok(UserRole::Admin),
        _ => Err(Error::invalid("role must be member or admin")),
    }
}

fn user_id(id: &str) -> Result<Uuid, Error> {
    Uuid::try_parse(id).map_err(|_| Error::NotFound)
}

// ---------------------------------------------------------------------------------------------
// Users

/// One row of the users table.
pub struct UserRow {
    pub u: UserView,
    pub role: &'static str,
    pub state: &'static str,
    pub me: bool,
    pub last_login: When,
    /// What went wrong with the last action on this row, in words.
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    nav: Nav,
    rows: Vec<UserRow>,
    next: Option<String>,
    notice: Option<&'static str>,
    /// The invite form as sent, and what went wrong with it.
    invite: InviteForm,
    invite_error: Option<String>,
    invite_field: &'static str,
    /// An error about a user not on this page.
    error: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct UsersQuery {
    page_token: Option<String>,
    done: Option<String>,
}

/// What a users page shows beyond the list: a notice after a change, or a failed form.
#[derive(Default)]
struct UsersExtra {
    page_token: Option<String>,
    notice: Option<&'static str>,
    invite: Option<(InviteForm, Error)>,
    row: Option<(Uuid, Error)>,
}

fn users_notice(done: &str) -> Option<&'static str> {
    match done {
        "role" => Some("The role was changed."),
        "disabled" => {
            Some("The user was disabled: every key it owned was revoked and its sessions ended.")
        }
        "enabled" => Some("The user was enabled. Its revoked keys stay revoked."),
        _ => None,
    }
}

async fn users_page(s: &ConsoleState, v: &Viewer, extra: UsersExtra) -> Response {
    let now = s.clock.now();
    let req = ListUsersRequest {
        page_token: extra.page_token.filter(|t| !t.is_empty()),
        ..Default::default()
    };
    let list = match s.authority.list_users(&v.caller, req).await {
        Ok(l) => l,
        Err(e) => return error_for(v, "users", e),
    };
    let mut status = StatusCode::OK;
    let (row_id, row_error) = match extra.row {
        Some((id, e)) => {
            status = status_of(&e).0;
            (Some(id), Some(sentence(&e.public_message())))
        }
        None => (None, None),
    };
    let mut row_error = row_error;
    let rows = list
        .users
        .into_iter()
        .map(|u| UserRow {
            role: role_name(u.role),
            state: user_state_name(u.state),
            me: u.id == v.user.id,
            last_login: when(u.last_login_at, now, "never"),
            error: if Some(u.id) == row_id {
                row_error.take()
            } else {
                None
            },
            u,
        })
        .collect();
    let (invite, invite_error, invite_field) = match extra.invite {
        Some((form, e)) => {
            status = status_of(&e).0;
            let msg = e.public_message();
            let field = if matches!(e, Error::AlreadyExists(_)) || msg.starts_with("email") {
                "email"
            } else if msg.starts_with("name") {
                "name"
            } else if msg.starts_with("role") || matches!(e, Error::PermissionDenied(_)) {
                "role"
            } else {
                ""
            };
            (form, Some(sentence(&msg)), field)
        }
        None => (InviteForm::default(), None, ""),
    };
    page(
        status,
        &UsersPage {
            nav: Nav::new(v, "users"),
            rows,
            next: list.next_page_token,
            notice: extra.notice,
            invite,
            invite_error,
            invite_field,
            // An error for a row that is not on this page is shown at the top.
            error: row_error,
        },
    )
}

pub async fn users(
    State(s): State<ConsoleState>,
    v: Viewer,
    Query(q): Query<UsersQuery>,
) -> Response {
    let extra = UsersExtra {
        page_token: q.page_token,
        notice: q.done.as_deref().and_then(users_notice),
        ..Default::default()
    };
    users_page(&s, &v, extra).await
}

#[derive(Deserialize, Default, Clone)]
pub struct InviteForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
}

#[derive(Template)]
#[template(path = "invited.html")]
struct InvitedPage {
    nav: Nav,
    user: UserView,
    role: &'static str,
    setup_url: String,
    hours: i64,
    expires: When,
}

pub async fn invite(State(s): State<ConsoleState>, f: SignedForm<InviteForm>) -> Response {
    let now = s.clock.now();
    let form = f.form;
    let v = f.viewer;
    let created = match parse_role(&form.role) {
        Ok(role) => {
            let req = CreateUserRequest {
                org_id: None,
                email: form.email.trim().to_string(),
                name: form.name.trim().to_string(),
                role,
            };
            s.authority.create_user(&v.caller, req, now).await
        }
        Err(e) => Err(e),
    };
    match created {
        Ok(c) => {
            let hours = (c.setup_expires_at - now).num_minutes().saturating_add(59) / 60;
            page(
                StatusCode::CREATED,
                &InvitedPage {
                    nav: Nav::new(&v, "users"),
                    role: role_name(c.user.role),
                    user: c.user,
                    setup_url: c.setup_url,
                    hours,
                    expires: when(Some(c.setup_expires_at), now, ""),
                },
            )
        }
        Err(e @ (Error::Internal(_) | Error::RateLimited { .. })) => error_for(&v, "users", e),
        Err(e) => {
            let extra = UsersExtra {
                invite: Some((form, e)),
                ..Default::default()
            };
            users_page(&s, &v, extra).await
        }
    }
}

/// After a change to a user: back to the list with a notice, or the list with the error on the
/// user's row.
async fn after_user_change(
    s: &ConsoleState,
    v: &Viewer,
    id: Uuid,
    done: Result<(), Error>,
    notice: &str,
) -> Response {
    match done {
        Ok(()) => Redirect::to(&format!("/ui/users?done={notice}")).into_response(),
        Err(e @ (Error::Internal(_) | Error::NotFound)) => error_for(v, "users", e),
        Err(e) => {
            let extra = UsersExtra {
                row: Some((id, e)),
                ..Default::default()
            };
            users_page(s, v, extra).await
        }
    }
}

#[derive(Deserialize)]
pub struct RoleForm {
    #[serde(default)]
    role: String,
}

pub async fn change_role(
    State(s): State<ConsoleState>,
    Path(id): Path<String>,
    f: SignedForm<RoleForm>,
) -> Response {
    let id = match user_id(&id) {
        Ok(id) => id,
        Err(e) => return error_for(&f.viewer, "users", e),
    };
    let done = match parse_role(&f.form.role) {
        Ok(role) => {
            let req = UpdateUserRequest {
                name: None,
                role: Some(role),
            };
            s.authority
                .update_user(&f.viewer.caller, id, req, s.clock.now())
                .await
                .map(|_| ())
        }
        Err(e) => Err(e),
    };
    after_user_change(&s, &f.viewer, id, done, "role").await
}

#[derive(Deserialize)]
pub struct DisableForm {
    confirm: Option<String>,
}

pub async fn disable_user(
    State(s): State<ConsoleState>,
    Path(id): Path<String>,
    f: SignedForm<DisableForm>,
) -> Response {
    let id = match user_id(&id) {
        Ok(id) => id,
        Err(e) => return error_for(&f.viewer, "users", e),
    };
    let done = if f.form.confirm.is_none() {
        Err(Error::invalid(
            "tick the box to confirm that you want to disable this user",
        ))
    } else {
        s.authority
            .set_user_disabled(&f.viewer.caller, id, true, s.clock.now())
            .await
            .map(|_| ())
    };
    after_user_change(&s, &f.viewer, id, done, "disabled").await
}

pub async fn enable_user(
    State(s): State<ConsoleState>,
    Path(id): Path<String>,
    f: SignedForm<Empty>,
) -> Response {
    let id = match user_id(&id) {
        Ok(id) => id,
        Err(e) => return error_for(&f.viewer, "users", e),
    };
    let done = s
        .authority
        .set_user_disabled(&f.viewer.caller, id, false, s.clock.now())
        .await
        .map(|_| ());
    after_user_change(&s, &f.viewer, id, done, "enabled").await
}

// ---------------------------------------------------------------------------------------------
// Setting a first password from a setup link

#[derive(Template)]
#[template(path = "setup.html")]
struct SetupPage {
    token: String,
    error: Option<String>,
    error_field: &'static str,
}

#[derive(Deserialize)]
pub struct SetupQuery {
    token: Option<String>,
}

pub async fn setup_page(Query(q): Query<SetupQuery>) -> Response {
    let token = q.token.unwrap_or_default();
    let error = token.is_empty().then(|| {
        "This page needs the whole setup link you were sent. Open the link again, or ask an admin for a new one."
            .to_string()
    });
    page(
        if error.is_some() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        },
        &SetupPage {
            token,
            error,
            error_field: "",
        },
    )
}

#[derive(Deserialize)]
pub struct SetupForm {
    token: Secret<String>,
    password: Secret<String>,
    repeat: Secret<String>,
}

pub async fn setup(State(s): State<ConsoleState>, f: PublicForm<SetupForm>) -> Response {
    let form = f.form;
    let token = form.token.expose().clone();
    let again = |status: StatusCode, error: String, field: &'static str| {
        page(
            status,
            &SetupPage {
                token: token.clone(),
                error: Some(error),
                error_field: field,
            },
        )
    };
    if form.password.expose() != form.repeat.expose() {
        return again(
            StatusCode::BAD_REQUEST,
            "The passwords do not match. Type the same password twice.".into(),
            "repeat",
        );
    }
    let req = SetupPasswordRequest {
        setup_token: form.token,
        password: form.password,
    };
    match s
        .authority
        .setup_password(req, &f.meta, s.clock.now())
        .await
    {
        Ok(_) => Redirect::to("/ui/setup/done").into_response(),
        Err(e @ Error::InvalidArgument(_)) => {
            let msg = e.public_message();
            let field = if msg.starts_with("password") {
                "password"
            } else {
                ""
            };
            again(StatusCode::BAD_REQUEST, sentence(&in_words(msg)), field)
        }
        Err(e) => ErrorPage(e).into_response(),
    }
}

#[derive(Template)]
#[template(path = "setup_done.html")]
struct SetupDonePage {}

pub async fn setup_done() -> Response {
    page(StatusCode::OK, &SetupDonePage {})
}

// ---------------------------------------------------------------------------------------------
// The account page

pub struct SessionRow {
    pub id: Uuid,
    pub created: When,
    pub last_seen: When,
    pub ip: String,
    pub user_agent: String,
    pub current: bool,
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    nav: Nav,
    user: UserView,
    role: &'static str,
    state: &'static str,
    created: When,
    last_login: When,
    sessions: Vec<SessionRow>,
    others: usize,
    notice: Option<&'static str>,
    error: Option<String>,
    /// Where the error belongs: `current_password`, `new_password`, `sessions`, or the top.
    error_field: &'static str,
}

#[derive(Deserialize, Default)]
pub struct AccountQuery {
    done: Option<String>,
}

fn account_notice(done: &str) -> Option<&'static str> {
    match done {
        "password" => Some("Your password was changed. Your other sessions were signed out."),
        "session" => Some("That session was signed out."),
        "others" => Some("Every other session was signed out."),
        _ => None,
    }
}

async fn account_page(
    s: &ConsoleState,
    v: &Viewer,
    notice: Option<&'static str>,
    failed: Option<(StatusCode, String, &'static str)>,
) -> Response {
    let now = s.clock.now();
    let list = match s.authority.list_sessions(&v.caller, now).await {
        Ok(l) => l,
        Err(e) => return error_for(v, "account", e),
    };
    let sessions: Vec<SessionRow> = list
        .sessions
        .into_iter()
        .map(|x| SessionRow {
            id: x.id,
            created: when(Some(x.created_at), now, ""),
            last_seen: when(Some(x.last_seen_at), now, ""),
            ip: x.ip.unwrap_or_default(),
            user_agent: x.user_agent.unwrap_or_default(),
            current: x.current,
        })
        .collect();
    let (status, error, error_field) = match failed {
        Some((status, message, field)) => (status, Some(message), field),
        None => (StatusCode::OK, None, ""),
    };
    let u = &v.user;
    page(
        status,
        &AccountPage {
            nav: Nav::new(v, "account"),
            role: role_name(u.role),
            state: user_state_name(u.state),
            created: when(Some(u.created_at), now, ""),
            last_login: when(u.last_login_at, now, "never"),
            user: u.clone(),
            others: sessions.iter().filter(|x| !x.current).count(),
            sessions,
            notice,
            error,
            error_field,
        },
    )
}

/// An error as the account page shows it: its status, its words, and the field it belongs to.
fn failure(e: &Error, field: &'static str) -> (StatusCode, String, &'static str) {
    (
        status_of(e).0,
        sentence(&in_words(e.public_message())),
        field,
    )
}

/// A service message that starts with an API field name, starting with the field's label
/// instead: "new_password must be ..." -> "The new password must be ...".
fn in_words(msg: String) -> String {
    for (field, words) in [
        ("current_password ", "The current password "),
        ("new_password ", "The new password "),
        ("password ", "The password "),
    ] {
        if let Some(rest) = msg.strip_prefix(field) {
            return format!("{words}{rest}");
        }
    }
    msg
}

pub async fn account(
    State(s): State<ConsoleState>,
    v: Viewer,
    Query(q): Query<AccountQuery>,
) -> Response {
    let notice = q.done.as_deref().and_then(account_notice);
    account_page(&s, &v, notice, None).await
}

#[derive(Deserialize)]
pub struct PasswordForm {
    current_password: Secret<String>,
    new_password: Secret<String>,
}

pub async fn change_password(
    State(s): State<ConsoleState>,
    f: SignedForm<PasswordForm>,
) -> Response {
    let req = ChangePasswordRequest {
        current_password: f.form.current_password,
        new_password: f.form.new_password,
    };
    match s
        .authority
        .change_password(&f.viewer.caller, req, s.clock.now())
        .await
    {
        Ok(()) => Redirect::to("/ui/account?done=password").into_response(),
        Err(e @ Error::Internal(_)) => error_for(&f.viewer, "account", e),
        Err(e) => {
            let field = match &e {
                Error::PermissionDenied(_) => "current_password",
                Error::InvalidArgument(_) if e.public_message().starts_with("new_password") => {
                    "new_password"
                }
                _ => "",
            };
            account_page(&s, &f.viewer, None, Some(failure(&e, field))).await
        }
    }
}

pub async fn end_session(
    State(s): State<ConsoleState>,
    Path(id): Path<String>,
    f: SignedForm<Empty>,
) -> Response {
    let done = match Uuid::try_parse(&id) {
        Ok(id) => {
            s.authority
                .end_session(&f.viewer.caller, id, s.clock.now())
                .await
        }
        Err(_) => Err(Error::NotFound),
    };
    match done {
        Ok(()) => Redirect::to("/ui/account?done=session").into_response(),
        Err(e @ Error::Internal(_)) => error_for(&f.viewer, "account", e),
        Err(Error::NotFound) => {
            let failed = (
                StatusCode::NOT_FOUND,
                "That session has ended already, or is not one of yours.".to_string(),
                "sessions",
            );
            account_page(&s, &f.viewer, None, Some(failed)).await
        }
        Err(e) => account_page(&s, &f.viewer, None, Some(failure(&e, "sessions"))).await,
    }
}

pub async fn end_other_sessions(State(s): State<ConsoleState>, f: SignedForm<Empty>) -> Response {
    match s
        .authority
        .end_other_sessions(&f.viewer.caller, s.clock.now())
        .await
    {
        Ok(_) => Redirect::to("/ui/account?done=others").into_response(),
        Err(e @ Error::Internal(_)) => error_for(&f.viewer, "account", e),
        Err(e) => account_page(&s, &f.viewer, None, Some(failure(&e, "sessions"))).await,
    }
}
