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
}

/// The retry time an `unavailable` answer names: a database restart or failover takes seconds.
pub const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(5);

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
