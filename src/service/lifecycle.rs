//! The lifecycle around create and revoke: rotation with grace and token families, disable /
//! enable, the audit log API and the orgs' lifetime policy.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use uuid::Uuid;

use super::model::{
    AuditEventView, AuditPage, ListAuditRequest, OrgScope, OrgView, RotateTokenRequest,
    RotatedToken, TokenView, UpdateOrgRequest,
};
use super::tokens::{MAX_TTL_SECONDS, apply_policy, finish_page, page_params};
use super::{Authority, Caller, audit};
use crate::error::{Error, Result};
use crate::store::{AuditListQuery, AuditRecord, TokenRecord};
use crate::token::Permissions;

/// The grace of a rotation when none is given: one hour.
pub const DEFAULT_GRACE_SECONDS: i64 = 3600;
/// The longest grace a rotation may give the old token: 30 days.
pub const MAX_GRACE_SECONDS: i64 = 30 * 24 * 3600;

impl Authority {
    /// Issues a new token with the old one's org, name, type, permissions, metadata and lifetime
    /// length; the old token expires after the grace and points to the new one. Rotating a token
    /// that was already rotated revokes its whole family (every token descended from the same
    /// original): a stolen old token used to rotate again is the signal of a leak.
    ///
    /// # Errors
    /// `permission_denied` without `tokens:rotate`; `not_found` outside reach;
    /// `invalid_argument` for a bad grace or a revoked, expired or disabled token;
    /// `already_exists` for an already rotated token (after revoking its family).
    pub async fn rotate_token(
        &self,
        caller: &Caller,
        id: Uuid,
        req: RotateTokenRequest,
        now: DateTime<Utc>,
    ) -> Result<RotatedToken> {
        let p = &caller.principal;
        p.require(Permissions::TOKENS_ROTATE, "tokens:rotate")?;
        self.check_mint_rate(caller)?;
        let grace = req.grace_seconds.unwrap_or(DEFAULT_GRACE_SECONDS);
        if !(0..=MAX_GRACE_SECONDS).contains(&grace) {
            return Err(Error::invalid(format!(
                "grace_seconds must be between 0 and {MAX_GRACE_SECONDS}"
            )));
        }
        let old = self.reachable_token(caller, req.org_id, id).await?;
        if old.replaced_by.is_some() {
            return Err(self.revoke_family_after_reuse(caller, &old, now).await);
        }
        if old.revoked_at.is_some() {
            return Err(Error::invalid("a revoked token cannot be rotated"));
        }
        if old.expires_at.is_some_and(|e| e <= now) {
            return Err(Error::invalid("an expired token cannot be rotated"));
        }
        if old.disabled_at.is_some() {
            return Err(Error::invalid(
                "a disabled token cannot be rotated; enable it first",
            ));
        }

        let lifetime = old.expires_at.map(|e| e - old.created_at);
        let org = self
            .store
            .get_org(old.org_id)
            .await?
            .ok_or(Error::NotFound)?;
        let mut expires_at = lifetime.map(|l| now + l);
        if let (Some(max), Some(at)) = (org.max_ttl_seconds, expires_at) {
            // The policy may have tightened since the old token was made: cap, do not refuse.
            expires_at = Some(at.min(now + TimeDelta::seconds(max)));
        }
        let expires_at = apply_policy(&org, expires_at, now)?;
        let (mut new, plaintext) = self
            .new_token_record(
                old.org_id,
                old.name.clone(),
                old.kind,
                old.permissions,
                expires_at,
                old.metadata.clone(),
                p.actor(),
                now,
            )
            .await?;
        new.family_id = old.family_id;
        // The new token belongs to whoever owned the old one, not to whoever rotated it.
        new.user_id = old.user_id;
        let old_expires_at = now + TimeDelta::seconds(grace);
        let events = [
            audit::event(
                old.org_id,
                p.actor(),
                "token_rotated",
                Some(old.id),
                &caller.meta,
                json!({ "name": old.name, "new_token_id": new.id, "grace_seconds": grace }),
                now,
            ),
            audit::event(
                old.org_id,
                p.actor(),
                "token_created",
                Some(new.id),
                &caller.meta,
                json!({ "name": new.name, "rotated_from": old.id, "expires_at": expires_at }),
                now,
            ),
        ];
        if !self
            .store
            .rotate_token(old.id, old_expires_at, &new, &events, now)
            .await?
        {
            // Rotated (or revoked) by someone else since we read it: the same signal.
            return Err(self.revoke_family_after_reuse(caller, &old, now).await);
        }
        self.cache.invalidate(old.id);
        self.cache.created(new.id);
        events.iter().for_each(audit::log);
        metrics::counter!("latchkey_token_created_total").increment(1);
        let previous = self.store.get_token(old.id).await?.ok_or(Error::NotFound)?;
        Ok(RotatedToken {
            token: self.view(&new, now),
            plaintext: plaintext.expose().clone(),
            previous: self.view(&previous, now),
        })
    }

    /// Revokes every token of `old`'s family and returns the error to answer with.
    async fn revoke_family_after_reuse(
        &self,
        caller: &Caller,
        old: &TokenRecord,
        now: DateTime<Utc>,
    ) -> Error {
        let event = audit::event(
            old.org_id,
            caller.principal.actor(),
            "token_family_revoked",
            Some(old.id),
            &caller.meta,
            json!({ "family_id": old.family_id, "reason": "an already rotated token was rotated again" }),
            now,
        );
        match self.store.revoke_family(old.family_id, now, &event).await {
            Ok(ids) => {
                for id in &ids {
                    self.cache.invalidate(*id);
                }
                audit::log(&event);
                metrics::counter!("latchkey_token_revoked_total").increment(ids.len() as u64);
                tracing::warn!(family_id = %old.family_id, revoked = ids.len(), "rotation reuse: token family revoked");
                Error::AlreadyExists(
                    "this token was already rotated; as a precaution every token of its family has been revoked"
                        .into(),
                )
            }
            Err(e) => e.into(),
        }
    }

    /// Disables (`true`) or enables (`false`) a token without revoking it. Doing it twice
    /// changes nothing the second time.
    ///
    /// # Errors
    /// `permission_denied` without `tokens:revoke`; `not_found` outside reach.
    pub async fn set_token_disabled(
        &self,
        caller: &Caller,
        scope: OrgScope,
        id: Uuid,
        disabled: bool,
        now: DateTime<Utc>,
    ) -> Result<TokenView> {
        caller
            .principal
            .require(Permissions::TOKENS_REVOKE, "tokens:revoke")?;
        let t = self.reachable_token(caller, scope.org_id, id).await?;
        let event = audit::event(
            t.org_id,
            caller.principal.actor(),
            if disabled {
                "token_disabled"
            } else {
                "token_enabled"
            },
            Some(t.id),
            &caller.meta,
            json!({ "name": t.name }),
            now,
        );
        let changed = self
            .store
            .set_disabled(t.id, disabled.then_some(now), &event)
            .await?;
        self.cache.invalidate(t.id);
        if changed {
            audit::log(&event);
        }
        let t = self.store.get_token(t.id).await?.ok_or(Error::NotFound)?;
        Ok(self.view(&t, now))
    }

    /// A page of the org's audit events, newest first, filtered. Without `audit:read`, only the
    /// events of one token the caller reaches (`token_id`): a person reads its own key's history.
    /// The nil org id names the deployment's own events (uses of the break-glass secret), which
    /// any `platform:admin` may read.
    ///
    /// # Errors
    /// `permission_denied` without `audit:read` (and without a reachable `token_id`); `invalid_argument` for a bad page token or
    /// time range; `not_found` for an org outside reach.
    pub async fn list_audit(&self, caller: &Caller, req: ListAuditRequest) -> Result<AuditPage> {
        let p = &caller.principal;
        // Without audit:read, the history of one token within reach (a person's own key).
        match req.token_id {
            Some(t) if !p.effective().contains(Permissions::AUDIT_READ) => {
                self.reachable_token(caller, req.org_id, t)
                    .await
                    .map_err(|_| missing_audit_read())?;
            }
            _ => p.require(Permissions::AUDIT_READ, "audit:read")?,
        }
        let (limit, before_id) = page_params(req.page_size, req.page_token.as_deref())?;
        if let (Some(s), Some(u)) = (req.since, req.until)
            && s >= u
        {
            return Err(Error::invalid("since must be before until"));
        }
        let org_id = match req.org_id {
            // The deployment's own events (uses of the break-glass secret) carry the nil org id.
            Some(id) if id.is_nil() && p.is_platform_admin() => id,
            requested => self.target_org(p, requested).await?,
        };
        let mut rows = self
            .store
            .list_audit(&AuditListQuery {
                org_id,
                token_id: req.token_id,
                action: req.action,
                actor: req.actor,
                since: req.since,
                until: req.until,
                before_id,
                limit: limit + 1,
            })
            .await?;
        let next_page_token = finish_page(&mut rows, limit, |e| e.id);
        Ok(AuditPage {
            events: rows.into_iter().map(audit_view).collect(),
            next_page_token,
        })
    }

    /// Sets an org's lifetime policy. Needs `org:admin` in that org (or `platform:admin`).
    ///
    /// # Errors
    /// `permission_denied` without `org:admin`; `not_found` outside reach; `invalid_argument`
    /// for a limit outside 1 s - 10 years or a default above the maximum.
    pub async fn update_org(
        &self,
        caller: &Caller,
        id: Uuid,
        req: UpdateOrgRequest,
        now: DateTime<Utc>,
    ) -> Result<OrgView> {
        let p = &caller.principal;
        p.require(Permissions::ORG_ADMIN, "org:admin")?;
        let org_id = self.target_org(p, Some(id)).await?;
        let mut org = self.store.get_org(org_id).await?.ok_or(Error::NotFound)?;
        if let Some(v) = req.max_ttl_seconds {
            org.max_ttl_seconds = v;
        }
        if let Some(v) = req.default_ttl_seconds {
            org.default_ttl_seconds = v;
        }
        for (field, v) in [
            ("max_ttl_seconds", org.max_ttl_seconds),
            ("default_ttl_seconds", org.default_ttl_seconds),
        ] {
            if v.is_some_and(|s| !(1..=MAX_TTL_SECONDS).contains(&s)) {
                return Err(Error::invalid(format!(
                    "{field} must be between 1 and {MAX_TTL_SECONDS}, or null"
                )));
            }
        }
        if let (Some(d), Some(m)) = (org.default_ttl_seconds, org.max_ttl_seconds)
            && d > m
        {
            return Err(Error::invalid(
                "default_ttl_seconds must not exceed max_ttl_seconds",
            ));
        }
        let event = audit::event(
            org.id,
            p.actor(),
            "org_updated",
            None,
            &caller.meta,
            json!({
                "max_ttl_seconds": org.max_ttl_seconds,
                "default_ttl_seconds": org.default_ttl_seconds,
            }),
            now,
        );
        self.store.update_org(&org, &event).await?;
        audit::log(&event);
        Ok(super::orgs::org_view(&org))
    }
}

fn missing_audit_read() -> Error {
    Error::PermissionDenied("this operation needs the audit:read permission".into())
}

fn audit_view(e: AuditRecord) -> AuditEventView {
    AuditEventView {
        id: e.id,
        org_id: e.org_id,
        occurred_at: e.occurred_at,
        actor: e.actor,
        action: e.action,
        token_id: e.token_id,
        ip: e.ip,
        user_agent: e.user_agent,
        details: e.details,
    }
}
