//! Who is looking at a page: the session cookie, checked like the API checks it (the same
//! service method), with the CSRF token taken from the form for every POST.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::ConsoleState;
use super::view::ErrorPage;
use crate::edge::{cross_site, request_meta, session_cookie};
use crate::error::Error;
use crate::service::model::UserView;
use crate::service::{Caller, Csrf};

/// A signed-in person viewing a page: the caller, its user (for the header) and the session's
/// CSRF token (for the forms of the page).
pub struct Viewer {
    pub caller: Caller,
    pub user: UserView,
    pub csrf: String,
}

/// What a page answers when the session is missing or over: the sign-in page, then back.
pub struct SignInFirst;

impl IntoResponse for SignInFirst {
    fn into_response(self) -> Response {
        Redirect::to("/ui/login").into_response()
    }
}

async fn viewer(
    state: &ConsoleState,
    parts: &Parts,
    csrf: Csrf<'_>,
) -> Result<Option<Viewer>, Error> {
    let Some(secret) = session_cookie(&parts.headers) else {
        return Ok(None);
    };
    let meta = request_meta(&parts.headers, &parts.extensions);
    let (principal, session) = match state
        .authority
        .authenticate_session(secret, csrf, state.clock.now())
        .await
    {
        Ok(found) => found,
        Err(Error::Unauthenticated) => return Ok(None),
        Err(e) => return Err(e),
    };
    let caller = Caller {
        principal,
        meta,
        session: Some(session),
    };
    let me = state.authority.current_user(&caller).await?;
    let csrf = me.csrf_token.clone().unwrap_or_default();
    Ok(Some(Viewer {
        caller,
        user: me.user,
        csrf,
    }))
}

/// A page that changes nothing: a live session, no CSRF token needed.
impl FromRequestParts<ConsoleState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ConsoleState,
    ) -> Result<Self, Self::Rejection> {
        match viewer(state, parts, Csrf::NotNeeded).await {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(SignInFirst.into_response()),
            Err(e) => Err(ErrorPage::from(e).into_response()),
        }
    }
}

#[derive(Deserialize)]
struct CsrfField {
    csrf_token: Option<String>,
}

/// A form POSTed by a signed-in person: from this site, with the session's CSRF token in its
/// `csrf_token` field, and the rest of the form as `T`.
pub struct SignedForm<T> {
    pub viewer: Viewer,
    pub form: T,
}

impl<T: DeserializeOwned + Send> FromRequest<ConsoleState> for SignedForm<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &ConsoleState) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let form: FormBody<T> = read_form(&parts, body).await.map_err(ErrorPage::respond)?;
        let csrf = form.csrf.as_deref();
        match viewer(state, &parts, Csrf::Presented(csrf)).await {
            Ok(Some(viewer)) => Ok(SignedForm {
                viewer,
                form: form.value,
            }),
            Ok(None) => Err(SignInFirst.into_response()),
            Err(e) => Err(ErrorPage::from(e).into_response()),
        }
    }
}

/// A form POSTed by someone not signed in yet (the sign-in form): from this site only.
pub struct PublicForm<T> {
    pub meta: crate::service::RequestMeta,
    pub form: T,
}

impl<T: DeserializeOwned + Send> FromRequest<ConsoleState> for PublicForm<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &ConsoleState) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let form: FormBody<T> = read_form(&parts, body).await.map_err(ErrorPage::respond)?;
        let meta = request_meta(&parts.headers, &parts.extensions);
        state
            .authority
            .check_management_rate(meta.ip)
            .map_err(ErrorPage::respond)?;
        Ok(PublicForm {
            meta,
            form: form.value,
        })
    }
}

struct FormBody<T> {
    value: T,
    csrf: Option<String>,
}

/// The most a console form may send.
const MAX_FORM_BYTES: usize = 16 * 1024;

async fn read_form<T: DeserializeOwned>(
    parts: &Parts,
    body: axum::body::Body,
) -> Result<FormBody<T>, Error> {
    if cross_site(&parts.headers) {
        return Err(Error::PermissionDenied(
            "this form was sent from another site and was refused".into(),
        ));
    }
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| Error::PayloadTooLarge)?;
    let csrf: CsrfField = serde_urlencoded::from_bytes(&bytes)
        .map_err(|_| Error::invalid("the form could not be read"))?;
    let value: T = serde_urlencoded::from_bytes(&bytes)
        .map_err(|e| Error::invalid(format!("the form could not be read: {e}")))?;
    Ok(FormBody {
        value,
        csrf: csrf.csrf_token,
    })
}
