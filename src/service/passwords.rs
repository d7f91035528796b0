//! Passwords: the rules a new password must meet, and checking a sign-in's email and password
//! with one answer for every kind of failure.

use std::collections::HashSet;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{Authority, RequestMeta, audit};
use crate::error::{Error, Result};
use crate::store::UserRecord;
use crate::token::Secret;

/// The shortest and longest password accepted, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 128;

/// The 20,000 most common passwords (Django's list, from leaked password sets, BSD licence),
/// compared case-insensitively.
static COMMON: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("../../assets/common-passwords.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect()
});

/// Checks a new password: 8-128 characters, no composition rules, not one of the common
/// passwords. Never truncated. The message names the rule and never repeats the password.
///
/// # Errors
/// `invalid_argument` naming `field` and the rule broken.
pub fn validate_password(field: &str, password: &Secret<String>) -> Result<()> {
    let p = password.expose();
    let n = p.chars().count();
    if n < MIN_PASSWORD_CHARS {
        return Err(Error::invalid(format!(
            "{field} must be at least {MIN_PASSWORD_CHARS} characters long"
        )));
    }
    if n > MAX_PASSWORD_CHARS {
        return Err(Error::invalid(format!(
            "{field} must be at most {MAX_PASSWORD_CHARS} characters long"
        )));
    }
    if COMMON.contains(p.to_lowercase().as_str()) {
        return Err(Error::invalid(format!(
            "{field} is one of the most common passwords; choose another"
        )));
    }
    Ok(())
}

/// A hash that no password matches, checked when the email is unknown so that the answer
/// takes as long as for a known one. Same parameters as real password hashes.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    let mut random = [0u8; 32];
    let _ = getrandom::fill(&mut random);
    crate::token::hash::argon2id_phc(&random).unwrap_or_default()
});

impl Authority {
    /// Hashes a new password on the Argon2id pool.
    ///
    /// # Errors
    /// `rate_limited` when the pool's queue is full; `internal` if hashing failed.
    pub(super) async fn hash_password(&self, password: Secret<String>) -> Result<String> {
        metrics::counter!("latchkey_password_hashes_total").increment(1);
        match self.argon2.hash_password(password).await {
            Ok(Some(phc)) => Ok(phc),
            Ok(None) => Err(Error::Internal(anyhow::anyhow!("password hashing failed"))),
            Err(_) => Err(argon2_busy()),
        }
    }

    /// Checks a password against a hash on the Argon2id pool.
    pub(super) async fn password_matches(
        &self,
        phc: String,
        password: Secret<String>,
    ) -> Result<bool> {
        metrics::counter!("latchkey_password_hashes_total").increment(1);
        self.argon2
            .password_matches(phc, password)
            .await
            .map_err(|_| argon2_busy())
    }

    /// The user that `email` and `password` sign in as. Takes a cell of the sign-in limit
    /// first, then always runs one Argon2id check (against a dummy hash when the email is
    /// unknown or the user has no password), so that every failure looks and takes the same.
    /// A failure for a known user writes `login_failed` with its id; the typed email and the
    /// password are never recorded.
    ///
    /// # Errors
    /// `rate_limited` past the sign-in limit; `invalid_credentials` for an unknown email, a
    /// wrong password, or a disabled user.
    pub(super) async fn check_credentials(
        &self,
        email: &str,
        password: Secret<String>,
        meta: &RequestMeta,
        method: &str,
        now: DateTime<Utc>,
    ) -> Result<UserRecord> {
        self.check_login_rate(meta.ip)?;
        // An address too long to be an email cannot match; it still costs the same check.
        let user = if email.chars().count() <= 254 {
            self.store.find_user_by_email(email).await?
        } else {
            None
        };
        let phc = user
            .as_ref()
            .and_then(|u| u.password_hash.clone())
            .unwrap_or_else(|| DUMMY_HASH.clone());
        let matched = self.password_matches(phc, password).await?;
        match user {
            Some(u) if matched && u.password_hash.is_some() && u.disabled_at.is_none() => {
                metrics::counter!("latchkey_login_total", "result" => "success").increment(1);
                Ok(u)
            }
            found => {
                metrics::counter!("latchkey_login_total", "result" => "failure").increment(1);
                if let Some(u) = found {
                    let reason = if u.disabled_at.is_some() {
                        "user_disabled"
                    } else if u.password_hash.is_none() {
                        "no_password_set"
                    } else {
                        "wrong_password"
                    };
                    let event = audit::event(
                        u.org_id,
                        format!("user:{}", u.id),
                        "login_failed",
                        None,
                        meta,
                        json!({ "user_id": u.id, "method": method, "reason": reason }),
                        now,
                    );
                    self.store
                        .insert_audit(std::slice::from_ref(&event))
                        .await?;
                    audit::log(&event);
                }
                Err(Error::InvalidCredentials)
            }
        }
    }
}

fn argon2_busy() -> Error {
    metrics::counter!("latchkey_rate_limited_total", "limit" => "argon2_queue").increment(1);
    Error::RateLimited {
        retry_after: std::time::Duration::from_secs(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pw(s: &str) -> Secret<String> {
        Secret::new(s.to_string())
    }

    #[test]
    fn passwords_are_held_to_length_and_the_common_list_and_never_echoed() {
        assert!(validate_password("password", &pw("correct horse battery")).is_ok());
        assert!(validate_password("password", &pw(&"é".repeat(128))).is_ok());
        for (bad, rule) in [
            ("short", "at least 8"),
            (&*"x".repeat(129), "at most 128"),
            ("password1", "most common"),
            ("PassWord1", "most common"),
            ("qwertyuiop", "most common"),
        ] {
            let err = validate_password("new_password", &pw(bad)).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(rule), "{bad}: {msg}");
            assert!(msg.starts_with("new_password"), "{msg}");
            assert!(!msg.contains(bad), "the password is echoed: {msg}");
        }
    }

    #[test]
    fn the_common_list_has_at_least_ten_thousand_entries() {
        assert!(COMMON.len() >= 10_000, "{}", COMMON.len());
    }
}
