//! Creating, reading, listing and revoking tokens.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use uuid::Uuid;

use super::model::{
    AuditEventView, ClientIpView, CreateTokenRequest, CreatedToken, ListAuditRequest,
    ListTokensRequest, Name, OrgScope, TokenFormat, TokenPage, TokenState, TokenUsage, TokenView,
    UsageHour, UsageQuery,
};
use super::{Authority, Caller, PrincipalKind, audit, off_request_threads};
use crate::error::{Error, Result};
use crate::store::{
    FormatFilter, StateFilter, TokenListQuery, TokenRecord, USAGE_HOURS_KEPT, Visibility,
    hour_start,
};
use crate::token::permissions::{GrantError, check_grant};
use crate::token::{Permissions, Secret, TokenKind, Verifier, format};

/// What a key's page in the console shows; see [`Authority::key_details`].
#[derive(Debug, Clone)]
pub struct KeyDetails {
    pub token: TokenView,
    pub usage: TokenUsage,
    pub family: Vec<TokenView>,
    pub history: Option<Vec<AuditEventView>>,
}

/// A scope a caller may grant, for a form of checkboxes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantableScope {
    pub name: String,
    /// Only callers with `org:admin` may grant it.
    pub admin_only: bool,
}

/// What [`Authority::mint`] makes: every field already checked.
pub(super) struct Mint {
    pub org_id: Uuid,
    pub name: String,
    pub kind: TokenKind,
    pub permissions: Permissions,
    pub expires_at: Option<DateTime<Utc>>,
    pub metadata: Option<serde_json::Value>,
}

/// Metadata objects may be at most this many bytes of JSON.
pub const MAX_METADATA_BYTES: usize = 4096;
/// Default and maximum page sizes of lists.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 500;
/// The longest lifetime a token may be given: ten years.
pub(crate) const MAX_TTL_SECONDS: i64 = 10 * 366 * 24 * 3600;

impl Authority {
    /// The view of a token at `now`.
    pub(crate) fn view(&self, t: &TokenRecord, now: DateTime<Utc>) -> TokenView {
        let state = if t.revoked_at.is_some() {
            TokenState::Revoked
        } else if t.expires_at.is_some_and(|e| e <= now) {
            TokenState::Expired
        } else if t.disabled_at.is_some() {
            TokenState::Disabled
        } else {
            TokenState::Active
        };
        TokenView {
            id: t.id,
            org_id: t.org_id,
            name: t.name.clone(),
            kind: t.kind.into(),
            display_hint: match &t.lookup {
                None => format::display_hint(&self.config.prefix, t.kind, t.id),
                // The plaintext of an imported key is unknown: the hint names its scheme and id.
                // The id's last 8 characters: those of ids made in one import differ.
                Some(l) => format!(
                    "{} key …{}",
                    crate::token::legacy::format_of(Some(l)),
                    &t.id.simple().to_string()[24..]
                ),
            },
            permissions: t.permissions.bits(),
            scopes: self.config.scopes.names(t.permissions),
            state,
            created_at: t.created_at,
            created_by: t.created_by.clone(),
            expires_at: t.expires_at,
            revoked_at: t.revoked_at,
            last_used_at: t.last_used_at,
            request_count: t.request_count,
            replaced_by: t.replaced_by,
            metadata: t.metadata.clone(),
            disabled_at: t.disabled_at,
            client_ips: t
                .client_ips
                .iter()
                .map(|c| ClientIpView {
                    ip: c.ip.clone(),
                    last_seen_at: c.last_seen_at,
                })
                .collect(),
            owner: t.user_id,
            format: TokenFormat::of(t.lookup.as_deref()),
        }
    }

    /// The permissions a create asks for, checked against the deployment's names and the
    /// grantor's own bits.
    pub(super) fn requested_permissions(
        &self,
        held: Permissions,
        bits: Option<u64>,
        scopes: Option<&[String]>,
    ) -> Result<Permissions> {
        let registry = &self.config.scopes;
        let mut p = Permissions::from_bits(bits.unwrap_or(0));
        if let Some(names) = scopes {
            p = p.union(
                registry
                    .resolve(names)
                    .map_err(|e| Error::invalid(e.to_string()))?,
            );
        }
        registry
            .check_assigned(p)
            .map_err(|e| Error::invalid(e.to_string()))?;
        check_grant(held, p, registry.admin_only()).map_err(|e| match e {
            GrantError::NotHeld(m) => Error::PermissionDenied(format!(
                "cannot grant permissions you do not hold: {}",
                registry.names(m).join(", ")
            )),
            GrantError::AdminOnly(m) => Error::PermissionDenied(format!(
                "granting {} needs the org:admin permission",
                registry.names(m).join(", ")
            )),
        })?;
        Ok(p)
    }

    /// The scopes the caller may put on a token it mints, lowest bit first: each named bit it
    /// holds (every one for `platform:admin`), admin-only ones only with `org:admin`.
    pub fn grantable_scopes(&self, caller: &Caller) -> Vec<GrantableScope> {
        let registry = &self.config.scopes;
        let held = caller.principal.effective();
        let admin_only = registry.admin_only();
        (0..64u32)
            .map(|b| Permissions::from_bits(1u64 << b))
            .filter(|bit| registry.assigned().contains(*bit) && held.contains(*bit))
            .filter(|bit| check_grant(held, *bit, admin_only).is_ok())
            .map(|bit| GrantableScope {
                name: registry.names(bit).remove(0),
                admin_only: admin_only.contains(bit),
            })
            .collect()
    }

    /// Creates a token in the caller's org (or, for `platform:admin`, the named one) and returns
    /// its plaintext once.
    ///
    /// # Errors
    /// `permission_denied` without `tokens:create` or when asking for bits the caller lacks;
    /// `invalid_argument` for a bad name, expiry, metadata or unknown scope; `not_found` for an org
    /// outside reach; `already_exists` for a live token with the same name.
    pub async fn create_token(
        &self,
        caller: &Caller,
        req: CreateTokenRequest,
        now: DateTime<Utc>,
    ) -> Result<CreatedToken> {
        let p = &caller.principal;
        p.require(Permissions::TOKENS_CREATE, "tokens:create")?;
        self.check_mint_rate(caller)?;
        let name = Name::parse("name", req.name)?;
        let requested_expiry = expiry(req.expires_at, req.ttl_seconds, now)?;
        let metadata = check_metadata(req.metadata)?;
        let permissions =
            self.requested_permissions(p.effective(), req.permissions, req.scopes.as_deref())?;
        let org_id = self.target_org(p, req.org_id).await?;
        let org = self.store.get_org(org_id).await?.ok_or(Error::NotFound)?;
        let expires_at = apply_policy(&org, requested_expiry, now)?;

        self.mint(
            caller,
            Mint {
                org_id,
                name: name.into_inner(),
                kind: TokenKind::from(req.kind),
                permissions,
                expires_at,
                metadata,
            },
            Vec::new(),
            now,
        )
        .await
    }

    /// Makes a token for `caller`, owned by the caller's user (if it has one), and writes
    /// `token_created` after `events`, in one transaction. Every check is the caller's.
    pub(super) async fn mint(
        &self,
        caller: &Caller,
        m: Mint,
        mut events: Vec<crate::store::AuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<CreatedToken> {
        let p = &caller.principal;
        let (mut record, plaintext) = self
            .new_token_record(
                m.org_id,
                m.name,
                m.kind,
                m.permissions,
                m.expires_at,
                m.metadata,
                p.actor(),
                now,
            )
            .await?;
        // Owned only inside the owner's org: a platform operator minting into another org makes
        // a token of that org, which its people cannot be held to.
        record.user_id = p.user_id.filter(|_| m.org_id == p.org_id);
        events.push(audit::event(
            m.org_id,
            p.actor(),
            "token_created",
            Some(record.id),
            &caller.meta,
            json!({
                "name": record.name,
                "type": m.kind.as_str(),
                "permissions": m.permissions.bits(),
                "expires_at": m.expires_at,
                "owner": record.user_id,
            }),
            now,
        ));
        self.store.insert_token(&record, &events, now).await?;
        self.cache.created(record.id);
        events.iter().for_each(audit::log);
        metrics::counter!("latchkey_token_created_total").increment(1);
        Ok(CreatedToken {
            token: self.view(&record, now),
            plaintext: plaintext.expose().clone(),
        })
    }

    /// Generates a token and its verifier (Argon2id on a blocking thread).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn new_token_record(
        &self,
        org_id: Uuid,
        name: String,
        kind: TokenKind,
        permissions: Permissions,
        expires_at: Option<DateTime<Utc>>,
        metadata: Option<serde_json::Value>,
        created_by: String,
        now: DateTime<Utc>,
    ) -> Result<(TokenRecord, Secret<String>)> {
        let generated = format::generate(&self.config.prefix, kind)
            .map_err(|e| Error::Internal(anyhow::anyhow!("OS random source failed: {e}")))?;
        let alg = self.config.hash;
        let secret = generated.secret.clone();
        let verifier = match alg {
            crate::token::HashAlgorithm::Sha256 => Verifier::compute(alg, &secret)?,
            crate::token::HashAlgorithm::Argon2id => {
                off_request_threads(move || Verifier::compute(alg, &secret)).await??
            }
        };
        let record = TokenRecord {
            id: generated.id,
            org_id,
            name,
            kind,
            verifier: verifier.encode(),
            permissions,
            created_at: now,
            created_by,
            expires_at,
            revoked_at: None,
            last_used_at: None,
            request_count: 0,
            replaced_by: None,
            metadata,
            family_id: generated.id,
            disabled_at: None,
            client_ips: Vec::new(),
            user_id: None,
            lookup: None,
        };
        Ok((record, generated.plaintext))
    }

    /// Loads a token the caller may see, or the uniform not-found.
    pub(super) async fn reachable_token(
        &self,
        caller: &Caller,
        org: Option<Uuid>,
        id: Uuid,
    ) -> Result<TokenRecord> {
        let org_id = self.target_org(&caller.principal, org).await?;
        match self.store.get_token(id).await? {
            Some(t) if t.org_id == org_id && caller.principal.reaches(&t) => Ok(t),
            _ => Err(Error::NotFound),
        }
    }

    /// One token's metadata.
    ///
    /// # Errors
    /// `permission_denied` without `tokens:read`; `not_found` when outside reach.
    pub async fn get_token(
        &self,
        caller: &Caller,
        scope: OrgScope,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<TokenView> {
        caller
            .principal
            .require(Permissions::TOKENS_READ, "tokens:read")?;
        let t = self.reachable_token(caller, scope.org_id, id).await?;
        Ok(self.view(&t, now))
    }

    /// A token's verifications per hour over the last `days` (default and most 7, the hours
    /// kept), ending with the hour that holds `now`. Visible to whoever may read the token.
    ///
    /// # Errors
    /// `permission_denied` without `tokens:read`; `invalid_argument` for `days` outside 1..=7;
    /// `not_found` when outside reach.
    pub async fn token_usage(
        &self,
        caller: &Caller,
        id: Uuid,
        q: UsageQuery,
        now: DateTime<Utc>,
    ) -> Result<TokenUsage> {
        caller
            .principal
            .require(Permissions::TOKENS_READ, "tokens:read")?;
        let days = q.days.unwrap_or(7);
        if !(1..=USAGE_HOURS_KEPT.num_days()).contains(&days) {
            return Err(Error::invalid("days must be between 1 and 7"));
        }
        let t = self.reachable_token(caller, q.org_id, id).await?;
        self.usage_window(t.id, days, now).await
    }

    /// The hourly counts of `token_id` for the `days` ending with the hour that holds `now`,
    /// every hour listed.
    async fn usage_window(
        &self,
        token_id: Uuid,
        days: i64,
        now: DateTime<Utc>,
    ) -> Result<TokenUsage> {
        let hours = days * 24;
        let from = hour_start(now) - TimeDelta::hours(hours - 1);
        let stored = self.store.usage_hours(token_id, from).await?;
        let mut stored = stored.into_iter().peekable();
        let hours: Vec<UsageHour> = (0..hours)
            .map(|i| {
                let hour = from + TimeDelta::hours(i);
                let count = stored.next_if(|h| h.hour == hour).map_or(0, |h| h.count);
                UsageHour { hour, count }
            })
            .collect();
        Ok(TokenUsage {
            token_id,
            from,
            to: hour_start(now) + TimeDelta::hours(1),
            total: hours.iter().map(|h| h.count).sum(),
            hours,
        })
    }

    /// Everything a key's page shows, read with the same rules as the API: the token, its
    /// verifications per hour over 7 days, the members of its rotation family within the
    /// caller's reach (oldest first), and its latest 50 audit events (`None` when the caller may
    /// read neither the audit log nor this token's history).
    ///
    /// # Errors
    /// As [`Authority::get_token`].
    pub async fn key_details(
        &self,
        caller: &Caller,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<KeyDetails> {
        caller
            .principal
            .require(Permissions::TOKENS_READ, "tokens:read")?;
        // One read of the token for the view, the usage and the family.
        let record = self.reachable_token(caller, None, id).await?;
        let token = self.view(&record, now);
        let usage = self
            .usage_window(record.id, USAGE_HOURS_KEPT.num_days(), now)
            .await?;
        let family = self
            .store
            .list_family(record.family_id)
            .await?
            .iter()
            .filter(|t| t.org_id == token.org_id && caller.principal.reaches(t))
            .map(|t| self.view(t, now))
            .collect();
        let history = match self
            .list_audit(
                caller,
                ListAuditRequest {
                    token_id: Some(id),
                    page_size: Some(50),
                    ..Default::default()
                },
            )
            .await
        {
            Ok(page) => Some(page.events),
            Err(Error::PermissionDenied(_)) => None,
            Err(e) => return Err(e),
        };
        Ok(KeyDetails {
            token,
            usage,
            family,
            history,
        })
    }

    /// Deletes hourly verification counts older than the 7 days kept. Run by the housekeeping
    /// tick.
    ///
    /// # Errors
    /// `internal` for store failures.
    pub async fn clean_usage_hours(&self, now: DateTime<Utc>) -> Result<u64> {
        Ok(self
            .store
            .delete_usage_hours_before(now - USAGE_HOURS_KEPT)
            .await?)
    }

    /// A page of the org's tokens, newest first. Without `org:admin`, only the tokens the caller
    /// created or its user owns; `owner` narrows to one user's tokens.
    ///
    /// # Errors
    /// `permission_denied` without `tokens:read`; `invalid_argument` for a bad page token;
    /// `not_found` for an org outside reach.
    pub async fn list_tokens(
        &self,
        caller: &Caller,
        req: ListTokensRequest,
        now: DateTime<Utc>,
    ) -> Result<TokenPage> {
        let p = &caller.principal;
        p.require(Permissions::TOKENS_READ, "tokens:read")?;
        let (limit, before_id) = page_params(req.page_size, req.page_token.as_deref())?;
        let org_id = self.target_org(p, req.org_id).await?;
        let sees_all = p.effective().contains(Permissions::ORG_ADMIN);
        let owner = match req.owner.as_deref() {
            None => None,
            Some("me") => Some(p.user_id.ok_or_else(|| {
                Error::invalid("owner=me needs a signed-in user or a token owned by one")
            })?),
            Some(id) => Some(
                Uuid::try_parse(id)
                    .map_err(|_| Error::invalid("owner must be \"me\" or a user id"))?,
            ),
        };
        let mut rows = self
            .store
            .list_tokens(&TokenListQuery {
                org_id,
                visible_to: (!sees_all).then(|| Visibility {
                    actor: p.actor(),
                    user_id: p.user_id,
                }),
                owner,
                name_contains: req
                    .name_contains
                    .map(|n| n.trim().to_string())
                    .filter(|n| !n.is_empty()),
                state: req.state.map(|s| match s {
                    TokenState::Active => StateFilter::Active,
                    TokenState::Expired => StateFilter::Expired,
                    TokenState::Revoked => StateFilter::Revoked,
                    TokenState::Disabled => StateFilter::Disabled,
                }),
                format: req.format.map(|f| match f.scheme() {
                    None => FormatFilter::Native,
                    Some(s) => {
                        let (start, end) = s.lookup_range();
                        FormatFilter::Lookup { start, end }
                    }
                }),
                before_id,
                limit: limit + 1,
                now,
            })
            .await?;
        let next_page_token = finish_page(&mut rows, limit, |t| t.id);
        metrics::counter!("latchkey_list_tokens_total").increment(1);
        Ok(TokenPage {
            tokens: rows.iter().map(|t| self.view(t, now)).collect(),
            next_page_token,
        })
    }

    /// Revokes a token at once. Revoking a revoked token succeeds and changes nothing.
    ///
    /// # Errors
    /// `permission_denied` without `tokens:revoke`; `not_found` when outside reach.
    pub async fn revoke_token(
        &self,
        caller: &Caller,
        scope: OrgScope,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<TokenView> {
        caller
            .principal
            .require(Permissions::TOKENS_REVOKE, "tokens:revoke")?;
        let t = self.reachable_token(caller, scope.org_id, id).await?;
        self.revoke(caller, t, now).await
    }

    /// Revokes the token the caller authenticated with. Needs no permission.
    ///
    /// # Errors
    /// `invalid_argument` when the caller is not a token.
    pub async fn revoke_current(&self, caller: &Caller, now: DateTime<Utc>) -> Result<TokenView> {
        let PrincipalKind::Token(id) = caller.principal.kind else {
            return Err(Error::invalid("the caller is not a token"));
        };
        let t = self.store.get_token(id).await?.ok_or(Error::NotFound)?;
        self.revoke(caller, t, now).await
    }

    async fn revoke(
        &self,
        caller: &Caller,
        t: TokenRecord,
        now: DateTime<Utc>,
    ) -> Result<TokenView> {
        let event = audit::event(
            t.org_id,
            caller.principal.actor(),
            "token_revoked",
            Some(t.id),
            &caller.meta,
            json!({ "name": t.name }),
            now,
        );
        let changed = self.store.revoke_token(t.id, now, &event).await?;
        // Dropped after the commit, so the next verify on this node reads the revoked row.
        self.cache.invalidate(t.id);
        if changed {
            audit::log(&event);
            metrics::counter!("latchkey_token_revoked_total").increment(1);
        }
        let t = self.store.get_token(t.id).await?.ok_or(Error::NotFound)?;
        Ok(self.view(&t, now))
    }
}

/// The page size and cursor of a list request: absent or 0 is the default, above the maximum is
/// the maximum. The store is asked for one row more, to learn whether a next page exists.
pub(crate) fn page_params(size: Option<u32>, token: Option<&str>) -> Result<(u32, Option<Uuid>)> {
    let limit = match size {
        None | Some(0) => DEFAULT_PAGE_SIZE,
        Some(n) => n.min(MAX_PAGE_SIZE),
    };
    let before_id = token
        .map(|s| Uuid::try_parse(s).map_err(|_| Error::invalid("page_token is not valid")))
        .transpose()?;
    Ok((limit, before_id))
}

/// Drops the extra row of a page and returns the cursor of the next page, if there is one.
pub(crate) fn finish_page<T>(
    rows: &mut Vec<T>,
    limit: u32,
    id: impl Fn(&T) -> Uuid,
) -> Option<String> {
    if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|r| id(r).to_string())
    } else {
        None
    }
}

/// The org's lifetime policy applied to a requested expiry: no expiry requested gets the default
/// lifetime (or, with only a maximum set, the maximum); a lifetime beyond the maximum is refused.
pub(crate) fn apply_policy(
    org: &crate::store::OrgRecord,
    requested: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>> {
    let expires_at = match requested {
        Some(at) => Some(at),
        None => org
            .default_ttl_seconds
            .or(org.max_ttl_seconds)
            .map(|ttl| now + TimeDelta::seconds(ttl)),
    };
    if let (Some(max), Some(at)) = (org.max_ttl_seconds, expires_at)
        && at - now > TimeDelta::seconds(max)
    {
        return Err(Error::invalid(format!(
            "the lifetime exceeds this org's maximum of {max} seconds (max_ttl_seconds)"
        )));
    }
    Ok(expires_at)
}

fn expiry(
    expires_at: Option<DateTime<Utc>>,
    ttl_seconds: Option<i64>,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>> {
    match (expires_at, ttl_seconds) {
        (Some(_), Some(_)) => Err(Error::invalid(
            "give at most one of expires_at and ttl_seconds",
        )),
        (Some(at), None) => {
            if at <= now {
                Err(Error::invalid("expires_at must be in the future"))
            } else if at - now > TimeDelta::seconds(MAX_TTL_SECONDS) {
                Err(Error::invalid(
                    "expires_at must be at most 10 years from now",
                ))
            } else {
                // Stored with microsecond precision, like every timestamp.
                Ok(DateTime::from_timestamp_micros(at.timestamp_micros()))
            }
        }
        (None, Some(ttl)) => {
            if (1..=MAX_TTL_SECONDS).contains(&ttl) {
                Ok(Some(now + TimeDelta::seconds(ttl)))
            } else {
                Err(Error::invalid(format!(
                    "ttl_seconds must be between 1 and {MAX_TTL_SECONDS}"
                )))
            }
        }
        (None, None) => Ok(None),
    }
}

pub(super) fn check_metadata(m: Option<serde_json::Value>) -> Result<Option<serde_json::Value>> {
    match m {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v @ serde_json::Value::Object(_)) => {
            let text = v.to_string();
            // PostgreSQL's jsonb cannot hold U+0000; refuse it on every backend alike.
            if text.contains("\\u0000") {
                Err(Error::invalid(
                    "metadata must not contain the character U+0000",
                ))
            } else if text.len() > MAX_METADATA_BYTES {
                Err(Error::invalid(
                    "metadata must be at most 4096 bytes of JSON",
                ))
            } else {
                Ok(Some(v))
            }
        }
        Some(_) => Err(Error::invalid("metadata must be a JSON object")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_accepts_one_future_form_and_refuses_the_rest() {
        let now = Utc::now();
        assert_eq!(expiry(None, None, now).unwrap(), None);
        assert_eq!(
            expiry(None, Some(60), now).unwrap(),
            Some(now + TimeDelta::seconds(60))
        );
        assert!(expiry(None, Some(0), now).is_err());
        assert!(expiry(None, Some(-5), now).is_err());
        assert!(expiry(None, Some(MAX_TTL_SECONDS + 1), now).is_err());
        assert!(expiry(Some(now), None, now).is_err());
        assert!(expiry(Some(now + TimeDelta::days(1)), Some(5), now).is_err());
        assert!(
            expiry(Some(now + TimeDelta::days(1)), None, now)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn metadata_must_be_a_small_object() {
        assert!(
            check_metadata(Some(json!({"team": "a"})))
                .unwrap()
                .is_some()
        );
        assert!(check_metadata(Some(json!([1, 2]))).is_err());
        assert!(check_metadata(Some(json!("x"))).is_err());
        let big = "x".repeat(MAX_METADATA_BYTES);
        assert!(check_metadata(Some(json!({ "k": big }))).is_err());
        assert_eq!(check_metadata(Some(serde_json::Value::Null)).unwrap(), None);
        assert!(check_metadata(Some(json!({ "k": "a\u{0}b" }))).is_err());
        assert!(check_metadata(Some(json!({ "k\u{0}": 1 }))).is_err());
    }
}
