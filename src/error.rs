//! The one domain error. It is turned into an HTTP response in `http::error` and into a
//! `tonic::Status` by the gRPC transport; nothing else decides status codes.

use std::time::Duration;

/// Everything a service operation can refuse with. Messages are safe to show to the client:
/// they never contain a token, a verifier or another org's data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; the message says which field and why.
    #[error("{0}")]
    InvalidArgument(String),
    /// Missing, malformed, unknown, expired or revoked bearer token: always the same message.
    #[error("missing or invalid bearer token")]
    Unauthenticated,
    /// Wrong password, unknown email or disabled user at sign-in: always the same message.
    #[error("invalid email or password")]
    InvalidCredentials,
    /// The caller is authenticated but lacks a permission; the message names it.
    #[error("{0}")]
    PermissionDenied(String),
    /// The resource does not exist or is outside the caller's reach: always the same message,
    /// so ids cannot be enumerated.
    #[error("not found")]
    NotFound,
    /// A live resource with that name exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The change would break a rule about the current state (such as leaving an org without an
    /// active admin); the message says which.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request body is larger than the configured limit.
    #[error("request body is too large")]
    PayloadTooLarge,
    /// A rate limit was hit; retry after the given time.
    #[error("rate limit exceeded")]
    RateLimited { retry_after: Duration },
    /// The database cannot be reached or written right now (down, restarting, out of
    /// connections, locked, read-only or full). Logged with its cause; the client is told to
    /// retry after `retry_after`.
    #[error("the database is unavailable; try again shortly")]
    Unavailable {
        retry_after: Duration,
        cause: anyhow::Error,
    },
    /// Anything unexpected. Logged with its cause chain, shown to the client as `internal error`.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl Error {
    /// The stable machine-readable code of the error body (`{"error": {"code": ...}}`).
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "invalid_argument",
            Error::Unauthenticated => "unauthenticated",
            Error::InvalidCredentials => "invalid_credentials",
            Error::PermissionDenied(_) => "permission_denied",
            Error::NotFound => "not_found",
            Error::AlreadyExists(_) => "already_exists",
            Error::FailedPrecondition(_) => "failed_precondition",
            Error::PayloadTooLarge => "payload_too_large",
            Error::RateLimited { .. } => "rate_limited",
            Error::Unavailable { .. } => "unavailable",
            Error::Internal(_) => "internal",
        }
    }

    /// The message shown to clients: the `Display` text with anything token-shaped redacted, since
    /// some messages quote client input (a serde error, an unknown scope name).
    pub fn public_message(&self) -> String {
        crate::token::format::redact(&self.to_string())
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }

    /// Logs the cause of an internal error (at error level) or of an unavailable database (at
    /// warn), on one line; any other error has nothing to log. Each transport calls it once, as
    /// it turns the error into its answer, which never carries the cause.
    pub fn log_cause(&self) {
        match self {
            Error::Internal(cause) => tracing::error!(error = one_line(cause), "internal error"),
            Error::Unavailable { cause, .. } => {
                tracing::warn!(error = one_line(cause), "database unavailable");
            }
            _ => {}
        }
    }
}

/// The retry time an `unavailable` answer names: a database restart or failover takes seconds.
pub const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(5);

/// `e` and its causes on one line, `a: b: c`, each said once: a cause whose text the line
/// already ends with is left out. sqlx's errors and many others include their cause in their
/// own text, so `{:#}` printed it twice (`error communicating with database: Connection refused
/// (os error 111): Connection refused (os error 111)`).
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !text.is_empty() && line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

impl From<crate::store::StoreError> for Error {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Conflict(what) => Error::AlreadyExists(what),
            crate::store::StoreError::OwnerDisabled => {
                Error::PermissionDenied("the user owning this token is disabled".into())
            }
            crate::store::StoreError::Unavailable(cause) => Error::Unavailable {
                retry_after: UNAVAILABLE_RETRY_AFTER,
                cause,
            },
            crate::store::StoreError::Other(e) => Error::Internal(e),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_the_text_before_it_already_ends_with_is_said_once() {
        // Arrange: sqlx's text of an I/O error ends with the I/O error, which is also its cause.
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let e = anyhow::Error::new(sqlx::Error::Io(io)).context("reading tokens to verify");

        // Act
        let line = one_line(&e);

        // Assert
        assert_eq!(
            format!("{e:#}"),
            "reading tokens to verify: error communicating with database: Connection refused: \
             Connection refused"
        );
        assert_eq!(
            line,
            "reading tokens to verify: error communicating with database: Connection refused"
        );
    }

    #[test]
    fn an_unavailable_database_says_its_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let cause = anyhow::Error::new(sqlx::Error::Io(io));
        let e = anyhow::Error::new(crate::store::StoreError::Unavailable(cause))
            .context("reading tokens to verify");

        assert_eq!(
            one_line(&e),
            "reading tokens to verify: database unavailable: error communicating with database: \
             Connection refused"
        );
    }

    #[test]
    fn distinct_causes_are_all_kept_in_order() {
        let e = anyhow::anyhow!("disk full")
            .context("writing the usage flush")
            .context("flush");

        assert_eq!(one_line(&e), "flush: writing the usage flush: disk full");
    }
}
