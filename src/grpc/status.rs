//! The one mapping from the domain error to `tonic::Status`, with the same messages as REST
//! (`Error::public_message`: anything token-shaped redacted).

use tonic::{Code, Status};

use crate::error::Error;

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::Unauthenticated | Error::InvalidCredentials => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::NotFound => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::PayloadTooLarge | Error::RateLimited { .. } => Code::ResourceExhausted,
            Error::Unavailable { .. } => Code::Unavailable,
            Error::Internal(_) => Code::Internal,
        };
        e.log_cause();
        let mut status = Status::new(code, e.public_message());
        if let Error::RateLimited { retry_after } | Error::Unavailable { retry_after, .. } = &e
            && let Ok(v) = retry_after.as_secs().max(1).to_string().parse()
        {
            status.metadata_mut().insert("retry-after", v);
        }
        status
    }
}
