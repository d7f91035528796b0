//! How pages show things: the one mapping from the domain error to an error page, and times as
//! a person reads them.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};

use crate::error::Error;

/// Renders a template into a page with `status`.
pub fn page<T: Template>(status: StatusCode, t: &T) -> Response {
    match t.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering a console page failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorTemplate {
    status: u16,
    title: &'static str,
    message: String,
}

/// An error as a page: the same status and words as the API's answer.
pub struct ErrorPage(pub Error);

impl From<Error> for ErrorPage {
    fn from(e: Error) -> Self {
        ErrorPage(e)
    }
}

impl ErrorPage {
    pub fn respond(e: Error) -> Response {
        ErrorPage(e).into_response()
    }
}

impl IntoResponse for ErrorPage {
    fn into_response(self) -> Response {
        let (status, title) = status_of(&self.0);
        if let Error::Internal(cause) = &self.0 {
            tracing::error!(error = format!("{cause:#}"), "internal error");
        }
        let t = ErrorTemplate {
            status: status.as_u16(),
            title,
            message: sentence(&self.0.public_message()),
        };
        page(status, &t)
    }
}

/// The status and heading of an error page.
pub fn status_of(e: &Error) -> (StatusCode, &'static str) {
    match e {
        Error::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "That did not work"),
        Error::Unauthenticated | Error::InvalidCredentials => {
            (StatusCode::UNAUTHORIZED, "Please sign in")
        }
        Error::PermissionDenied(_) => (StatusCode::FORBIDDEN, "Not allowed"),
        Error::NotFound => (StatusCode::NOT_FOUND, "Not found"),
        Error::AlreadyExists(_) | Error::FailedPrecondition(_) => {
            (StatusCode::CONFLICT, "That did not work")
        }
        Error::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "Too much"),
        Error::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "Too many attempts"),
        Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong"),
    }
}

/// A message as a sentence: a capital first letter and a full stop.
pub fn sentence(msg: &str) -> String {
    let mut chars = msg.chars();
    let mut out: String = match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => return String::new(),
    };
    if !out.ends_with(['.', '!', '?']) {
        out.push('.');
    }
    out
}

/// A time as a person reads it next to `now`: "just now", "5 minutes ago", "in 29 days".
pub fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (t - now).num_seconds();
    let abs = secs.unsigned_abs();
    if abs < 45 {
        return "just now".into();
    }
    // Rounded to the nearest unit: a key made for 30 days reads "in 30 days", not 29.
    let near = |s: u64, unit: u64| ((s + unit / 2) / unit).max(1);
    let (n, unit) = match abs {
        s if s < 3_570 => (near(s, 60), "minute"),
        s if s < 86_400 - 1_800 => (near(s, 3_600), "hour"),
        s if s < 86_400 * 60 => (near(s, 86_400), "day"),
        s if s < 86_400 * 730 => (near(s, 86_400 * 30), "month"),
        s => (near(s, 86_400 * 365), "year"),
    };
    let unit = if n == 1 {
        unit.to_string()
    } else {
        format!("{unit}s")
    };
    if secs < 0 {
        format!("{n} {unit} ago")
    } else {
        format!("in {n} {unit}")
    }
}

/// A time in full, for the `title` shown on hover and for `<time datetime>`.
pub fn exact(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A time cell: relative words and the exact time.
pub struct When {
    pub words: String,
    pub exact: String,
    pub iso: String,
}

pub fn when(t: Option<DateTime<Utc>>, now: DateTime<Utc>, never: &str) -> When {
    match t {
        Some(t) => When {
            words: relative(t, now),
            exact: exact(t),
            iso: t.to_rfc3339(),
        },
        None => When {
            words: never.into(),
            exact: String::new(),
            iso: String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_words_on_both_sides_of_now() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let at = |s: i64| now + chrono::TimeDelta::seconds(s);
        assert_eq!(relative(at(-10), now), "just now");
        assert_eq!(relative(at(-300), now), "5 minutes ago");
        assert_eq!(relative(at(3_600), now), "in 1 hour");
        assert_eq!(relative(at(29 * 86_400 + 100), now), "in 29 days");
        assert_eq!(relative(at(30 * 86_400 - 5), now), "in 30 days");
        assert_eq!(relative(at(90 * 86_400 - 5), now), "in 3 months");
        assert_eq!(relative(at(-400 * 86_400), now), "13 months ago");
        assert_eq!(relative(at(3 * 365 * 86_400), now), "in 3 years");
    }
}
