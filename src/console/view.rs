//! How pages show things: the one mapping from the domain error to an error page, and times as
//! a person reads them.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};

use crate::error::Error;
use crate::service::model::{UserRole, UserView};

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

/// The header of every signed-in page.
pub struct Nav {
    pub user: UserView,
    pub csrf: String,
    pub section: &'static str,
}

impl Nav {
    pub fn is_admin(&self) -> bool {
        self.user.role == UserRole::Admin
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorTemplate {
    status: u16,
    title: &'static str,
    message: String,
}

/// The same error inside the signed-in layout.
#[derive(Template)]
#[template(path = "error_app.html")]
struct AppErrorTemplate {
    nav: Nav,
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

impl ErrorPage {
    /// The error inside the signed-in layout, with `nav`.
    pub fn within(nav: Nav, e: Error) -> Response {
        let (status, title, message) = described(&e);
        let t = AppErrorTemplate {
            nav,
            status: status.as_u16(),
            title,
            message,
        };
        page(status, &t)
    }
}

/// An error's status, heading and sentence; an internal error's cause is logged here, once.
fn described(e: &Error) -> (StatusCode, &'static str, String) {
    let (status, title) = status_of(e);
    e.log_cause();
    (status, title, sentence(&e.public_message()))
}

impl IntoResponse for ErrorPage {
    fn into_response(self) -> Response {
        let (status, title, message) = described(&self.0);
        let t = ErrorTemplate {
            status: status.as_u16(),
            title,
            message,
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
        Error::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "Try again shortly"),
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

/// A bar chart of hourly counts, laid out here and drawn by the template as inline SVG: no
/// script and no chart library. Coordinates are in the SVG's own units ([`Chart::WIDTH`] by
/// [`Chart::HEIGHT`]); hours without counts have no bar.
pub struct Chart {
    pub bars: Vec<Bar>,
    /// Day boundaries (00:00 UTC) along the bottom.
    pub ticks: Vec<Tick>,
    /// The busiest hour's count: the top of the scale.
    pub max: i64,
    /// The chart in one sentence, for screen readers and as its caption.
    pub summary: String,
}

pub struct Bar {
    pub x: String,
    pub y: String,
    pub w: String,
    pub h: String,
    /// The hour and its count, shown on hover.
    pub label: String,
}

pub struct Tick {
    pub x: String,
    pub label: String,
}

impl Chart {
    pub const WIDTH: f64 = 720.0;
    pub const HEIGHT: f64 = 150.0;
    /// Room for the scale on the left and the day labels below.
    const LEFT: f64 = 44.0;
    const BOTTOM: f64 = 20.0;
    const TOP: f64 = 8.0;

    /// Lays out `hours` (hour start, count), oldest first, one per hour.
    pub fn hourly(hours: &[(DateTime<Utc>, i64)]) -> Self {
        let max = hours.iter().map(|h| h.1).max().unwrap_or(0);
        let total: i64 = hours.iter().map(|h| h.1).sum();
        let slot = (Self::WIDTH - Self::LEFT) / hours.len().max(1) as f64;
        let plot = Self::HEIGHT - Self::BOTTOM - Self::TOP;
        let x_of = |i: usize| Self::LEFT + i as f64 * slot;
        let bars = hours
            .iter()
            .enumerate()
            .filter(|(_, h)| h.1 > 0)
            .map(|(i, (hour, count))| {
                // At least a pixel tall, so that one verification among thousands still shows.
                let h = (plot * *count as f64 / max as f64).max(1.0);
                Bar {
                    x: format!("{:.2}", x_of(i) + slot * 0.1),
                    y: format!("{:.2}", Self::TOP + plot - h),
                    w: format!("{:.2}", slot * 0.8),
                    h: format!("{h:.2}"),
                    label: format!(
                        "{}: {count} verification{}",
                        hour.format("%a %-d %b %H:00 UTC"),
                        if *count == 1 { "" } else { "s" }
                    ),
                }
            })
            .collect();
        let ticks = hours
            .iter()
            .enumerate()
            .filter(|(_, (hour, _))| hour.format("%H").to_string() == "00")
            .map(|(i, (hour, _))| Tick {
                x: format!("{:.2}", x_of(i)),
                label: hour.format("%a %-d").to_string(),
            })
            .collect();
        let period = match hours.len().div_ceil(24) {
            1 => "day".to_string(),
            n => format!("{n} days"),
        };
        let summary = match hours.iter().max_by_key(|h| h.1) {
            Some((busiest, n)) if *n > 0 => format!(
                "{total} verification{} in the last {period}; the busiest hour was {} with {n}.",
                if total == 1 { "" } else { "s" },
                busiest.format("%a %-d %b %H:00 UTC"),
            ),
            _ => format!("No verifications in the last {period}."),
        };
        Chart {
            bars,
            ticks,
            max,
            summary,
        }
    }

    /// The y of the scale's top line and of the baseline.
    pub fn top(&self) -> String {
        format!("{:.2}", Self::TOP)
    }

    pub fn base(&self) -> String {
        format!("{:.2}", Self::HEIGHT - Self::BOTTOM)
    }

    pub fn left(&self) -> String {
        format!("{:.2}", Self::LEFT)
    }

    pub fn label_y(&self) -> String {
        format!("{:.2}", Self::HEIGHT - 5.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_scales_its_bars_to_the_busiest_hour_and_marks_each_day() {
        let start = DateTime::from_timestamp(1_800_000_000 / 86_400 * 86_400, 0).unwrap();
        let mut hours: Vec<(DateTime<Utc>, i64)> = (0..48)
            .map(|i| (start + chrono::TimeDelta::hours(i), 0))
            .collect();
        hours[3].1 = 10;
        hours[30].1 = 5;
        hours[31].1 = 1;

        let chart = Chart::hourly(&hours);

        assert_eq!(chart.max, 10);
        assert_eq!(chart.bars.len(), 3, "no bars for empty hours");
        let height = |b: &Bar| b.h.parse::<f64>().unwrap();
        assert_eq!(
            height(&chart.bars[0]),
            122.0,
            "the busiest hour fills the plot"
        );
        assert_eq!(height(&chart.bars[1]), 61.0);
        assert!(height(&chart.bars[2]) >= 1.0);
        assert!(chart.bars[0].label.ends_with("03:00 UTC: 10 verifications"));
        assert!(chart.bars[2].label.ends_with(": 1 verification"));
        assert_eq!(chart.ticks.len(), 2, "midnight of each day");
        assert!(
            chart
                .summary
                .starts_with("16 verifications in the last 2 days")
        );
        assert_eq!(
            Chart::hourly(&hours[..24].iter().map(|h| (h.0, 0)).collect::<Vec<_>>()).summary,
            "No verifications in the last day."
        );
    }

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
