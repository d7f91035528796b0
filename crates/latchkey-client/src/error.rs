//! The one error type of the client: what the server refused (its `{"error": {"code",
//! "message"}}` body, or the gRPC status of the same meaning), or why no answer came.

use std::time::Duration;

/// The machine-readable code of an error the server answered (`{"error": {"code": ...}}`;
/// gRPC statuses map to the code REST would give).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 400: a malformed request.
    InvalidArgument,
    /// 401: a missing or invalid bearer.
    Unauthenticated,
    /// 401: a wrong email or password.
    InvalidCredentials,
    /// 403: the bearer lacks a permission.
    PermissionDenied,
    /// 404: no such resource within the bearer's reach.
    NotFound,
    /// 409: a live token already has that name.
    AlreadyExists,
    /// 409: the state of the resource forbids the change.
    FailedPrecondition,
    /// 413.
    PayloadTooLarge,
    /// 429, with `retry_after`.
    RateLimited,
    /// 500: opaque.
    Internal,
    /// A code this client does not know.
    Other(String),
}

impl ErrorCode {
    /// The code as the server writes it.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::InvalidCredentials => "invalid_credentials",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::FailedPrecondition => "failed_precondition",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::Other(s) => s,
        }
    }

    /// The code of a server's error body.
    pub fn parse(s: &str) -> Self {
        match s {
            "invalid_argument" => ErrorCode::InvalidArgument,
            "unauthenticated" => ErrorCode::Unauthenticated,
            "invalid_credentials" => ErrorCode::InvalidCredentials,
            "permission_denied" => ErrorCode::PermissionDenied,
            "not_found" => ErrorCode::NotFound,
            "already_exists" => ErrorCode::AlreadyExists,
            "failed_precondition" => ErrorCode::FailedPrecondition,
            "payload_too_large" => ErrorCode::PayloadTooLarge,
            "rate_limited" => ErrorCode::RateLimited,
            "internal" => ErrorCode::Internal,
            other => ErrorCode::Other(other.to_string()),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything a call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered, and refused: its error body (REST) or status (gRPC).
    #[error("latchkey answered {status} {code}: {message}")]
    Api {
        /// The HTTP status (for gRPC, the status REST gives for the same error).
        status: u16,
        code: ErrorCode,
        message: String,
        /// With 429 `rate_limited`: when to try again.
        retry_after: Option<Duration>,
    },
    /// No answer: the server is unreachable, timed out, is overloaded or unavailable (502,
    /// 503, 504, gRPC `UNAVAILABLE`), or the connection broke.
    #[error("latchkey is unavailable: {0}")]
    Unavailable(String),
    /// An answer this client cannot read (a body of another shape, a malformed id).
    #[error("unexpected answer from latchkey: {0}")]
    Protocol(String),
    /// The client was set up with something unusable (a malformed base URL).
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl Error {
    /// The code of an [`Error::Api`].
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the server was not there to answer (as opposed to refusing).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }

    /// The error a gRPC status stands for.
    pub(crate) fn from_status(s: &tonic::Status) -> Self {
        use tonic::Code;
        let (status, code) = match s.code() {
            Code::InvalidArgument | Code::OutOfRange => (400, ErrorCode::InvalidArgument),
            Code::Unauthenticated => (401, ErrorCode::Unauthenticated),
            Code::PermissionDenied => (403, ErrorCode::PermissionDenied),
            Code::NotFound => (404, ErrorCode::NotFound),
            Code::AlreadyExists => (409, ErrorCode::AlreadyExists),
            Code::FailedPrecondition => (409, ErrorCode::FailedPrecondition),
            Code::ResourceExhausted => (429, ErrorCode::RateLimited),
            Code::Internal | Code::DataLoss => (500, ErrorCode::Internal),
            // Unavailable, DeadlineExceeded, Cancelled, Aborted, Unknown (a broken
            // connection surfaces as Unknown or Unavailable), Unimplemented (a server too old
            // for the RPC): no answer to act on.
            _ => return Error::Unavailable(format!("{}: {}", s.code(), s.message())),
        };
        let retry_after = s
            .metadata()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .map(Duration::from_secs);
        Error::Api {
            status,
            code,
            message: s.message().to_string(),
            retry_after,
        }
    }

    pub(crate) fn from_reqwest(e: reqwest::Error) -> Self {
        // reqwest's own text names the URL only; the cause says why (a refused certificate,
        // a refused connection).
        let text = match std::error::Error::source(&e) {
            Some(_) => format!("{e}: {}", innermost(&e)),
            None => e.to_string(),
        };
        if e.is_decode() {
            Error::Protocol(text)
        } else if e.is_builder() {
            Error::Config(text)
        } else {
            Error::Unavailable(text)
        }
    }
}

/// The text of the last cause of `e`: reqwest's and tonic's own texts say only "builder error"
/// and "transport error".
pub(crate) fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut e = e;
    while let Some(source) = e.source() {
        e = source;
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_statuses_map_to_the_codes_rest_would_give() {
        let e = Error::from_status(&tonic::Status::not_found("not found"));
        assert!(matches!(
            e,
            Error::Api {
                status: 404,
                code: ErrorCode::NotFound,
                ..
            }
        ));
        let e = Error::from_status(&tonic::Status::unavailable("down"));
        assert!(e.is_unavailable());
        let e = Error::from_status(&tonic::Status::permission_denied("no"));
        assert_eq!(e.code(), Some(&ErrorCode::PermissionDenied));
    }

    #[test]
    fn codes_round_trip_and_unknown_ones_are_kept() {
        for c in ["invalid_argument", "not_found", "rate_limited", "internal"] {
            assert_eq!(ErrorCode::parse(c).as_str(), c);
        }
        assert_eq!(
            ErrorCode::parse("brand_new"),
            ErrorCode::Other("brand_new".into())
        );
    }
}
