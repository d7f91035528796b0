//! Break-glass access: an operator secret, configured only as its SHA-256
//! (`--break-glass-sha256`), that acts as `platform:admin` when every admin token is lost.
//!
//! It is an admin credential for management calls (REST and gRPC, as a bearer), not an API key:
//! verification and the gateway check never consult it. It is consulted only for a bearer that
//! is not a native token and only when configured, so native tokens pay nothing for it. Every
//! use writes a `break_glass_used` audit event (org id nil: the deployment's own events, which
//! any `platform:admin` may read) and a WARN log line; neither holds the secret or its hash.
//!
//! There is no "no tokens yet, so let everyone in" mode, by design: an empty database is
//! covered by the bootstrap token printed once and `latchkey bootstrap`, and a mode that opens
//! up when the data looks empty turns any loss of state into full access.

use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::{Authority, Principal, PrincipalKind, RequestMeta, audit};
use crate::error::{Error, Result};
use crate::token::{Permissions, format};

/// The audit action written on every use of the break-glass secret.
pub const BREAK_GLASS_USED: &str = "break_glass_used";

/// The SHA-256 of the break-glass secret. Its `Debug` prints no digest.
#[derive(Clone, PartialEq, Eq)]
pub struct BreakGlassDigest([u8; 32]);

impl BreakGlassDigest {
    /// Parses exactly 64 hex digits (either case; surrounding whitespace ignored); `None` for
    /// anything else.
    pub fn from_hex(hex: &str) -> Option<Self> {
        crate::token::hash::unhex(hex.trim()).map(Self)
    }

    /// Whether the SHA-256 of `presented` is this digest, compared in constant time.
    fn matches(&self, presented: &str) -> bool {
        let d = Sha256::digest(presented.as_bytes());
        bool::from(self.0.as_slice().ct_eq(d.as_slice()))
    }
}

impl fmt::Debug for BreakGlassDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BreakGlassDigest([redacted])")
    }
}

impl Authority {
    /// The break-glass principal for `bearer`, when the option is set, `bearer` is not a native
    /// token and its SHA-256 is the configured one; the use is audited before it is answered
    /// (an event that cannot be written refuses the use). `unauthenticated` otherwise.
    ///
    /// # Errors
    /// `unauthenticated`; the store's error when the audit event cannot be written.
    pub(super) async fn break_glass(
        &self,
        bearer: &str,
        ip: Option<IpAddr>,
        now: DateTime<Utc>,
    ) -> Result<Principal> {
        let Some(digest) = &self.config.break_glass else {
            return Err(Error::Unauthenticated);
        };
        if format::parse(&self.config.prefix, bearer).is_ok() || !digest.matches(bearer) {
            return Err(Error::Unauthenticated);
        }
        let principal = Principal {
            kind: PrincipalKind::BreakGlass,
            org_id: Uuid::nil(),
            permissions: Permissions::ALL_SYSTEM,
            user_id: None,
        };
        let event = audit::event(
            Uuid::nil(),
            principal.actor(),
            BREAK_GLASS_USED,
            None,
            &RequestMeta::new(ip, None),
            json!({}),
            now,
        );
        self.store
            .insert_audit(std::slice::from_ref(&event))
            .await?;
        audit::log(&event);
        tracing::warn!(
            ip = ip.map(|ip| ip.to_string()),
            audit_event = %event.id,
            "break-glass secret used: acting as platform:admin"
        );
        Ok(principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 64 hex digits (the SHA-256 of nothing in particular).
    const DIGEST: &str = "5d7bdee6b6a6e5f5f0b10a8c0a0d8a6d2c6c3b4f0f7e0e7e0c1f2a3b4c5d6e7f";

    #[test]
    fn only_sixty_four_hex_digits_make_a_digest() {
        assert!(BreakGlassDigest::from_hex(DIGEST).is_some());
        assert!(BreakGlassDigest::from_hex(&DIGEST.to_uppercase()).is_some());
        assert!(BreakGlassDigest::from_hex(&format!(" {DIGEST}\n")).is_some());
        for bad in [
            "",
            &DIGEST[..63],
            &format!("{DIGEST}0"),
            &format!("{}g", &DIGEST[..63]),
            &format!("+{}", &DIGEST[..63]),
            &format!("é{}", &DIGEST[..62]),
            "open sesame",
        ] {
            assert!(BreakGlassDigest::from_hex(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_digest_matches_only_the_secret_it_was_made_from() {
        let hex: String = Sha256::digest(b"open sesame")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let d = BreakGlassDigest::from_hex(&hex).unwrap();
        assert!(d.matches("open sesame"));
        assert!(!d.matches("open sesame "));
        assert!(!d.matches(&hex));
    }

    #[test]
    fn the_debug_form_shows_no_digest() {
        let d = BreakGlassDigest::from_hex(DIGEST).unwrap();
        let out = format!("{d:?} {d:#?}");
        assert!(!out.contains("5d7b"), "{out}");
        assert!(out.contains("[redacted]"));
    }
}
