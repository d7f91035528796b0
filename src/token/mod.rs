//! The token core: wire format, generation, parsing, verifiers and permissions.
//! Pure functions and newtypes; no I/O.

pub mod format;
pub mod hash;
pub mod legacy;
pub mod permissions;
pub mod secret;

pub use format::{InvalidToken, ParsedToken, Prefix, TokenKind};
pub use hash::{HashAlgorithm, Verifier};
pub use permissions::{Permissions, Role, ScopeRegistry};
pub use secret::Secret;
