//! Console sessions: sign-in, the session behind a cookie (idle and absolute timeouts), its
//! CSRF token, listing and ending sessions, and the cleanup of ended ones.
//!
//! A session id is 256 random bits, base62, sent only in the `latchkey_session` cookie; the
//! database keeps its SHA-256, so a copy of the database opens no session. The CSRF token is
//! derived from the id (SHA-256 of a fixed label and the id), so it is bound to the session,
//! needs no storage, and says nothing about the id.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::model::{SessionList, SessionView, SessionsEnded, SignInRequest, SignedIn};
use super::users::{random_secret, sha256_hex};
use super::{Authority, Caller, CallerSession, Principal, RequestMeta, audit};
use crate::error::{Error, Result};
use crate::store::{EndSessions, SessionRecord};
use crate::token::Secret;

/// The name of the session cookie.
pub const SESSION_COOKIE: &str = "latchkey_session";

/// The user of a session caller. Sessions are managed from a session only: a token (which may
/// hold no permission at all) neither reads a person's sign-ins nor signs its browser out.
fn session_user(caller: &Caller) -> Result<Uuid> {
    match (&caller.session, caller.principal.user_id) {
        (Some(_), Some(user)) => Ok(user),
        _ => Err(not_a_session()),
    }
}

fn not_a_session() -> Error {
    Error::PermissionDenied(
        "sessions are managed from a signed-in session (the console), not with a token".into(),
    )
}

/// The CSRF token a session request presented.
#[derive(Debug, Clone, Copy)]
pub enum Csrf<'a> {
    /// The token the request carried (`None`: it carried none). Every request that can change
    /// something.
    Presented(Option<&'a str>),
    /// A request that changes nothing (a page view).
    NotNeeded,
}

/// A session just signed in: the id for the cookie (shown nowhere else) and the answer.
#[derive(Debug)]
pub struct NewSession {
    pub secret: Secret<String>,
    pub signed_in: SignedIn,
}

/// A session's `last_seen_at` is written at most this often: the idle timeout counts in
/// minutes, and a write per console request would be a write per page.
const TOUCH_EVERY: TimeDelta = TimeDelta::seconds(60);

fn csrf_for(secret: &str) -> String {
    sha256_hex(&format!("latchkey-csrf:{secret}"))
}

impl Authority {
    fn session_view(&self, s: &SessionRecord, current: Option<Uuid>) -> SessionView {
        SessionView {
            id: s.id,
            created_at: s.created_at,
            last_seen_at: s.last_seen_at,
            expires_at: s.expires_at,
            ip: s.ip.clone(),
            user_agent: s.user_agent.clone(),
            current: current == Some(s.id),
        }
    }

    /// The instant before which a session not seen since has ended (the idle timeout).
    fn idle_cutoff(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now - TimeDelta::from_std(self.config.people.session_idle).unwrap_or(TimeDelta::MAX)
    }

    /// Signs a person in for the console: the same limit and uniform failure as the password
    /// exchange, then a new session (a new id at every sign-in).
    ///
    /// # Errors
    /// `rate_limited`; `invalid_credentials`.
    pub async fn sign_in(
        &self,
        req: SignInRequest,
        meta: &RequestMeta,
        now: DateTime<Utc>,
    ) -> Result<NewSession> {
        let user = self
            .check_credentials(&req.email, req.password, meta, "session", now)
            .await?;
        let secret = random_secret()?;
        let absolute = TimeDelta::from_std(self.config.people.session_absolute)
            .map_err(|e| Error::Internal(e.into()))?;
        let session = SessionRecord {
            id: Uuid::now_v7(),
            secret_hash: sha256_hex(secret.expose()),
            user_id: user.id,
            org_id: user.org_id,
            created_at: now,
            last_seen_at: now,
            expires_at: now + absolute,
            ip: meta.ip.map(|ip| ip.to_string()),
            user_agent: meta.user_agent.clone(),
        };
        let event = audit::event(
            user.org_id,
            format!("user:{}", user.id),
            "login_succeeded",
            None,
            meta,
            json!({ "user_id": user.id, "method": "session", "session_id": session.id }),
            now,
        );
        self.store
            .insert_session(&session, std::slice::from_ref(&event))
            .await?;
        audit::log(&event);
        let mut user = user;
        user.last_login_at = Some(now);
        Ok(NewSession {
            signed_in: SignedIn {
                user: self.user_view(&user),
                session: self.session_view(&session, Some(session.id)),
                csrf_token: csrf_for(secret.expose()),
            },
            secret,
        })
    }

    /// The principal behind a session cookie. `csrf` is what the request presented as the
    /// session's CSRF token (`Csrf::NotNeeded` only for requests that change nothing: the
    /// console's pages); a missing or wrong one is refused before the session is looked up. A
    /// session past its idle or absolute timeout, of a disabled user, or unknown, is
    /// `unauthenticated`, like a bad bearer.
    ///
    /// # Errors
    /// `permission_denied` for a missing or wrong CSRF token; `unauthenticated`.
    pub async fn authenticate_session(
        &self,
        secret: &str,
        csrf: Csrf<'_>,
        now: DateTime<Utc>,
    ) -> Result<(Principal, CallerSession)> {
        if let Csrf::Presented(presented) = csrf {
            let expected = csrf_for(secret);
            let ok = presented.is_some_and(|p| bool::from(expected.as_bytes().ct_eq(p.as_bytes())));
            if !ok {
                return Err(Error::PermissionDenied(
                    "a request made with the session cookie needs its session's X-CSRF-Token"
                        .into(),
                ));
            }
        }
        // A session id is 43 base62 characters; anything else is not looked up.
        if secret.len() != 43 || !secret.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(Error::Unauthenticated);
        }
        let s = self
            .store
            .get_session(&sha256_hex(secret))
            .await?
            .ok_or(Error::Unauthenticated)?;
        if s.expires_at <= now || s.last_seen_at < self.idle_cutoff(now) {
            return Err(Error::Unauthenticated);
        }
        let user = self
            .store
            .get_user(s.user_id)
            .await?
            .ok_or(Error::Unauthenticated)?;
        if user.disabled_at.is_some() {
            return Err(Error::Unauthenticated);
        }
        if now - s.last_seen_at >= TOUCH_EVERY {
            self.store.touch_session(s.id, now).await?;
        }
        Ok((
            self.user_principal(&user),
            CallerSession {
                id: s.id,
                csrf_token: Secret::new(csrf_for(secret)),
            },
        ))
    }

    /// Signs the caller's session out (deletes it).
    ///
    /// # Errors
    /// `permission_denied` for a caller that is not a session (as for the other session calls).
    pub async fn sign_out(&self, caller: &Caller, now: DateTime<Utc>) -> Result<()> {
        let (Some(s), Some(user)) = (&caller.session, caller.principal.user_id) else {
            return Err(not_a_session());
        };
        let event = audit::event(
            caller.principal.org_id,
            caller.principal.actor(),
            "logout",
            None,
            &caller.meta,
            json!({ "user_id": user }),
            now,
        );
        self.store
            .end_sessions(user, EndSessions::One(s.id), Some(&event))
            .await?;
        audit::log(&event);
        Ok(())
    }

    /// The sessions of the caller's user, newest first, live ones only.
    ///
    /// # Errors
    /// `permission_denied` for a caller that is not a session.
    pub async fn list_sessions(&self, caller: &Caller, now: DateTime<Utc>) -> Result<SessionList> {
        let user = session_user(caller)?;
        let cutoff = self.idle_cutoff(now);
        let current = caller.session.as_ref().map(|s| s.id);
        let sessions = self.store.list_sessions(user).await?;
        Ok(SessionList {
            sessions: sessions
                .iter()
                .filter(|s| s.expires_at > now && s.last_seen_at >= cutoff)
                .map(|s| self.session_view(s, current))
                .collect(),
        })
    }

    /// Ends one of the caller's own sessions (another user's answers not-found).
    ///
    /// # Errors
    /// `permission_denied` for a caller that is not a session; `not_found` for a session that is
    /// not the caller's.
    pub async fn end_session(&self, caller: &Caller, id: Uuid, now: DateTime<Utc>) -> Result<()> {
        let user = session_user(caller)?;
        let event = self.session_ended(caller, user, "signed_out_by_user", now);
        let n = self
            .store
            .end_sessions(user, EndSessions::One(id), Some(&event))
            .await?;
        if n == 0 {
            return Err(Error::NotFound);
        }
        audit::log(&event);
        Ok(())
    }

    /// Ends every session of the caller's user but the current one ("sign out everywhere
    /// else").
    ///
    /// # Errors
    /// `permission_denied` for a caller that is not a session.
    pub async fn end_other_sessions(
        &self,
        caller: &Caller,
        now: DateTime<Utc>,
    ) -> Result<SessionsEnded> {
        let user = session_user(caller)?;
        let which = match &caller.session {
            Some(s) => EndSessions::AllBut(s.id),
            None => EndSessions::None,
        };
        let event = self.session_ended(caller, user, "signed_out_elsewhere", now);
        let ended = self.store.end_sessions(user, which, Some(&event)).await?;
        if ended > 0 {
            audit::log(&event);
        }
        Ok(SessionsEnded { ended })
    }

    fn session_ended(
        &self,
        caller: &Caller,
        user: Uuid,
        reason: &str,
        now: DateTime<Utc>,
    ) -> crate::store::AuditRecord {
        audit::event(
            caller.principal.org_id,
            caller.principal.actor(),
            "session_ended",
            None,
            &caller.meta,
            json!({ "user_id": user, "reason": reason }),
            now,
        )
    }

    /// Deletes ended sessions and sets the `latchkey_sessions_active` gauge. Run by the
    /// housekeeping tick.
    ///
    /// # Errors
    /// `internal` for store failures.
    pub async fn clean_sessions(&self, now: DateTime<Utc>) -> Result<u64> {
        let cutoff = self.idle_cutoff(now);
        let deleted = self.store.delete_expired_sessions(now, cutoff).await?;
        let live = self.store.count_live_sessions(now, cutoff).await?;
        metrics::gauge!("latchkey_sessions_active").set(live as f64);
        Ok(deleted)
    }
}
