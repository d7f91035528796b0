//! Placeholder: the client crate (issue 22) is being written.
