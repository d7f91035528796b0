//! People: roles and what they allow (computed here, once), inviting, reading, changing,
//! disabling and enabling users, passwords, and the exchange of a password for a token.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use uuid::Uuid;

use super::model::{
    ChangePasswordRequest, CreateUserRequest, CreatedToken, CreatedUser, CurrentUser, Email,
    ExchangePasswordRequest, ListUsersRequest, Name, SetupPasswordRequest, UpdateUserRequest,
    UserPage, UserRole, UserState, UserView,
};
use super::passwords::validate_password;
use super::tokens::{MAX_TTL_SECONDS, Mint, apply_policy, finish_page, page_params};
use super::{Authority, Caller, Principal, PrincipalKind, RequestMeta, audit};
use crate::error::{Error, Result};
use crate::store::{AuditRecord, EndSessions, RevokeOwned, UserChange, UserListQuery, UserRecord};
use crate::token::permissions::check_grant;
use crate::token::{Permissions, Role, Secret, TokenKind};

/// What a role may do, for the system bits. The deployment's own scopes are added by
/// [`Authority::role_permissions`].
const MEMBER_SYSTEM: Permissions = Permissions::from_bits(
    Permissions::TOKENS_CREATE.bits()
        | Permissions::TOKENS_REVOKE.bits()
        | Permissions::TOKENS_READ.bits()
        | Permissions::TOKENS_ROTATE.bits(),
);
const ADMIN_SYSTEM: Permissions = Permissions::from_bits(
    MEMBER_SYSTEM.bits()
        | Permissions::AUDIT_READ.bits()
        | Permissions::ORG_ADMIN.bits()
        | Permissions::USERS_READ.bits()
        | Permissions::USERS_MANAGE.bits()
        | Permissions::TOKENS_WATCH.bits(),
);

/// A user to create from the command line (`latchkey user create`), where whoever reaches the
/// database is trusted.
#[derive(Debug)]
pub struct NewUser {
    pub org_name: String,
    pub email: String,
    pub name: String,
    pub role: UserRole,
    pub platform_admin: bool,
    /// Set now instead of handing out a setup link.
    pub password: Option<Secret<String>>,
}

/// The outcome of [`Authority::create_user_offline`].
#[derive(Debug)]
pub struct UserCreated {
    pub user: UserView,
    /// The one-time setup link, when no password was given.
    pub setup_url: Option<Secret<String>>,
}

impl Authority {
    /// The permissions of a role, computed in this one place: a member manages its own tokens
    /// and may grant the deployment's scopes that are not admin-only; an admin adds every token
    /// and user of its org, its audit log, and the admin-only scopes; the `platform_admin` flag
    /// adds `platform:admin`.
    pub fn role_permissions(&self, role: Role, platform_admin: bool) -> Permissions {
        let scopes = &self.config.scopes;
        let mut p = match role {
            Role::Member => MEMBER_SYSTEM.union(scopes.custom().minus(scopes.admin_only())),
            Role::Admin => ADMIN_SYSTEM.union(scopes.custom()),
        };
        if platform_admin {
            p = p.union(Permissions::PLATFORM_ADMIN);
        }
        p
    }

    /// The principal a user acts as.
    pub(super) fn user_principal(&self, u: &UserRecord) -> Principal {
        Principal {
            kind: PrincipalKind::User(u.id),
            org_id: u.org_id,
            permissions: self.role_permissions(u.role, u.platform_admin),
            user_id: Some(u.id),
        }
    }

    pub(super) fn user_view(&self, u: &UserRecord) -> UserView {
        let permissions = self.role_permissions(u.role, u.platform_admin);
        UserView {
            id: u.id,
            org_id: u.org_id,
            email: u.email.clone(),
            name: u.name.clone(),
            role: u.role.into(),
            platform_admin: u.platform_admin,
            state: if u.disabled_at.is_some() {
                UserState::Disabled
            } else if u.password_hash.is_none() {
                UserState::Invited
            } else {
                UserState::Active
            },
            permissions: permissions.bits(),
            scopes: self.config.scopes.names(permissions),
            created_at: u.created_at,
            created_by: u.created_by.clone(),
            last_login_at: u.last_login_at,
            disabled_at: u.disabled_at,
        }
    }

    /// Fails unless the caller could grant everything `role` allows: nobody makes a user more
    /// powerful than itself.
    fn check_role_grant(&self, caller: &Principal, role: Role, platform_admin: bool) -> Result<()> {
        let wanted = self.role_permissions(role, platform_admin);
        check_grant(caller.effective(), wanted, self.config.scopes.admin_only()).map_err(|_| {
            Error::PermissionDenied(format!(
                "giving the {} role needs every permission it carries (an admin's)",
                role.as_str()
            ))
        })
    }

    /// A user the caller may reach: itself (for reading), or with `need` a user of its org (any
    /// org for `platform:admin`). Everything else is the uniform not-found.
    async fn reachable_user(
        &self,
        caller: &Principal,
        id: Uuid,
        need: Permissions,
    ) -> Result<UserRecord> {
        // Reading oneself needs no permission; the check comes before the lookup, so a refusal
        // says nothing about whether the id exists.
        if !(caller.user_id == Some(id) && need == Permissions::USERS_READ) {
            caller.require(need, permission_name(need))?;
        }
        let user = self.store.get_user(id).await?.ok_or(Error::NotFound)?;
        if user.org_id != caller.org_id && !caller.is_platform_admin() {
            return Err(Error::NotFound);
        }
        Ok(user)
    }

    /// A new one-time setup token: the plaintext for the link and its stored hash.
    fn setup_secret(&self, now: DateTime<Utc>) -> Result<(Secret<String>, String, DateTime<Utc>)> {
        let token = random_secret()?;
        let hash = sha256_hex(token.expose());
        let ttl = TimeDelta::from_std(self.config.people.setup_link_ttl)
            .map_err(|e| Error::Internal(e.into()))?;
        Ok((token, hash, now + ttl))
    }

    fn setup_url(&self, token: &Secret<String>) -> String {
        format!(
            "{}/ui/setup?token={}",
            self.config.people.public_url.trim_end_matches('/'),
            token.expose()
        )
    }

    /// Invites a person: creates the user (without a password) and returns a one-time setup
    /// link, valid 24 hours, to hand over.
    ///
    /// # Errors
    /// `permission_denied` without `users:manage` or when the role carries more than the
    /// caller holds; `invalid_argument` for a bad email or name; `not_found` for an org outside
    /// reach; `already_exists` for a taken email.
    pub async fn create_user(
        &self,
        caller: &Caller,
        req: CreateUserRequest,
        now: DateTime<Utc>,
    ) -> Result<CreatedUser> {
        let p = &caller.principal;
        p.require(Permissions::USERS_MANAGE, "users:manage")?;
        let email = Email::parse(req.email)?;
        let name = Name::parse("name", req.name)?;
        let role = Role::from(req.role);
        self.check_role_grant(p, role, false)?;
        let org_id = self.target_org(p, req.org_id).await?;
        let (setup, setup_hash, setup_expires_at) = self.setup_secret(now)?;
        let user = UserRecord {
            id: Uuid::now_v7(),
            org_id,
            email: email.into_inner(),
            name: name.into_inner(),
            role,
            platform_admin: false,
            password_hash: None,
            created_at: now,
            created_by: p.actor(),
            last_login_at: None,
            disabled_at: None,
            setup_hash: Some(setup_hash),
            setup_expires_at: Some(setup_expires_at),
        };
        let event = user_event(&user, p.actor(), "user_created", &caller.meta, now);
        self.store
            .insert_user(&user, std::slice::from_ref(&event))
            .await?;
        audit::log(&event);
        Ok(CreatedUser {
            user: self.user_view(&user),
            setup_url: self.setup_url(&setup),
            setup_token: setup.expose().clone(),
            setup_expires_at,
        })
    }

    /// Creates a user from the command line, in the org named `org_name` (created if missing),
    /// with a password or a setup link. Whoever reaches the database is trusted.
    ///
    /// # Errors
    /// `invalid_argument` for a bad email, name, org name or password; `already_exists` for a
    /// taken email.
    pub async fn create_user_offline(
        &self,
        new: NewUser,
        now: DateTime<Utc>,
    ) -> Result<UserCreated> {
        let email = Email::parse(new.email)?;
        let name = Name::parse("name", new.name)?;
        if let Some(pw) = &new.password {
            validate_password("password", pw)?;
        }
        // Checked before the org is made, so a taken email leaves nothing behind.
        if self
            .store
            .find_user_by_email(email.as_str())
            .await?
            .is_some()
        {
            return Err(Error::AlreadyExists(
                "a user with this email already exists".into(),
            ));
        }
        let org = self.org_for_cli(&new.org_name, now).await?;
        let password_hash = match new.password {
            Some(pw) => Some(self.hash_password(pw).await?),
            None => None,
        };
        let setup = match password_hash {
            Some(_) => None,
            None => Some(self.setup_secret(now)?),
        };
        let user = UserRecord {
            id: Uuid::now_v7(),
            org_id: org.id,
            email: email.into_inner(),
            name: name.into_inner(),
            role: new.role.into(),
            platform_admin: new.platform_admin,
            password_hash,
            created_at: now,
            created_by: "system".into(),
            last_login_at: None,
            disabled_at: None,
            setup_hash: setup.as_ref().map(|s| s.1.clone()),
            setup_expires_at: setup.as_ref().map(|s| s.2),
        };
        let event = user_event(
            &user,
            "system".into(),
            "user_created",
            &RequestMeta::default(),
            now,
        );
        self.store
            .insert_user(&user, std::slice::from_ref(&event))
            .await?;
        audit::log(&event);
        Ok(UserCreated {
            user: self.user_view(&user),
            setup_url: setup.map(|(t, _, _)| Secret::new(self.setup_url(&t))),
        })
    }

    /// A page of an org's users, newest first.
    ///
    /// # Errors
    /// `permission_denied` without `users:read`; `invalid_argument` for a bad page token;
    /// `not_found` for an org outside reach.
    pub async fn list_users(&self, caller: &Caller, req: ListUsersRequest) -> Result<UserPage> {
        let p = &caller.principal;
        p.require(Permissions::USERS_READ, "users:read")?;
        let (limit, before_id) = page_params(req.page_size, req.page_token.as_deref())?;
        let org_id = self.target_org(p, req.org_id).await?;
        let mut rows = self
            .store
            .list_users(&UserListQuery {
                org_id,
                before_id,
                limit: limit + 1,
            })
            .await?;
        let next_page_token = finish_page(&mut rows, limit, |u| u.id);
        Ok(UserPage {
            users: rows.iter().map(|u| self.user_view(u)).collect(),
            next_page_token,
        })
    }

    /// One user: the caller itself, or with `users:read` a user of its org.
    ///
    /// # Errors
    /// `permission_denied` without `users:read` (for another user of the org); `not_found`
    /// outside reach.
    pub async fn get_user(&self, caller: &Caller, id: Uuid) -> Result<UserView> {
        let u = self
            .reachable_user(&caller.principal, id, Permissions::USERS_READ)
            .await?;
        Ok(self.user_view(&u))
    }

    /// The caller's user: a session's, or the user owning the calling token; with the CSRF
    /// token of the session, if the caller is one.
    ///
    /// # Errors
    /// `not_found` for a token that no user owns.
    pub async fn current_user(&self, caller: &Caller) -> Result<CurrentUser> {
        let id = caller.principal.user_id.ok_or(Error::NotFound)?;
        let u = self.store.get_user(id).await?.ok_or(Error::NotFound)?;
        Ok(CurrentUser {
            user: self.user_view(&u),
            csrf_token: caller
                .session
                .as_ref()
                .map(|s| s.csrf_token.expose().clone()),
        })
    }

    /// Changes a user's name or role. A demotion revokes the user's live tokens that hold more
    /// than the new role allows, in the same transaction.
    ///
    /// # Errors
    /// `permission_denied` without `users:manage` or when giving a role the caller could not;
    /// `not_found` outside reach; `invalid_argument` for a bad name; `failed_precondition` when
    /// it would leave the org without an active admin.
    pub async fn update_user(
        &self,
        caller: &Caller,
        id: Uuid,
        req: UpdateUserRequest,
        now: DateTime<Utc>,
    ) -> Result<UserView> {
        let p = &caller.principal;
        let mut user = self
            .reachable_user(p, id, Permissions::USERS_MANAGE)
            .await?;
        let before = user.clone();
        if let Some(name) = req.name {
            user.name = Name::parse("name", name)?.into_inner();
        }
        if let Some(role) = req.role {
            let role = Role::from(role);
            if role != user.role {
                self.check_role_grant(p, role, user.platform_admin)?;
                // Taking a role away needs the power to give it, too.
                self.check_role_grant(p, user.role, user.platform_admin)?;
            }
            user.role = role;
        }
        if user == before {
            return Ok(self.user_view(&user));
        }
        if before.role == Role::Admin && user.role != Role::Admin {
            self.keep_an_admin(&before).await?;
        }
        let allowed = self.role_permissions(user.role, user.platform_admin);
        let revoke = if user.role == before.role {
            RevokeOwned::None
        } else {
            RevokeOwned::Exceeding(allowed)
        };
        let event = audit::event(
            user.org_id,
            p.actor(),
            "user_updated",
            None,
            &caller.meta,
            json!({
                "user_id": user.id,
                "name": user.name,
                "role": user.role.as_str(),
                "previous_role": before.role.as_str(),
            }),
            now,
        );
        let revoke_event = revoke_template(&user, p.actor(), &caller.meta, "role_changed", now);
        let revoked = self
            .store
            .update_user(
                &user,
                UserChange {
                    revoke,
                    end_sessions: EndSessions::None,
                    revoke_event: Some(&revoke_event),
                    session_event: None,
                },
                now,
                std::slice::from_ref(&event),
            )
            .await?;
        self.after_revoking(&revoked, &revoke_event);
        audit::log(&event);
        Ok(self.user_view(&user))
    }

    /// Disables (`true`) or enables (`false`) a user. Disabling revokes every live token it owns
    /// and ends its sessions, in one transaction, with an audit event for each. Enabling lets it
    /// sign in again; its revoked tokens stay revoked. Doing either twice changes nothing.
    ///
    /// # Errors
    /// `permission_denied` without `users:manage` or for a user more powerful than the caller;
    /// `not_found` outside reach; `failed_precondition` for the org's last active admin.
    pub async fn set_user_disabled(
        &self,
        caller: &Caller,
        id: Uuid,
        disabled: bool,
        now: DateTime<Utc>,
    ) -> Result<UserView> {
        let p = &caller.principal;
        let mut user = self
            .reachable_user(p, id, Permissions::USERS_MANAGE)
            .await?;
        self.check_role_grant(p, user.role, user.platform_admin)?;
        if user.disabled_at.is_some() == disabled {
            return Ok(self.user_view(&user));
        }
        if disabled && user.role == Role::Admin {
            self.keep_an_admin(&user).await?;
        }
        user.disabled_at = disabled.then_some(now);
        let action = if disabled {
            "user_disabled"
        } else {
            "user_enabled"
        };
        let event = audit::event(
            user.org_id,
            p.actor(),
            action,
            None,
            &caller.meta,
            json!({ "user_id": user.id }),
            now,
        );
        let revoke_event = revoke_template(&user, p.actor(), &caller.meta, "user_disabled", now);
        let session_event = audit::event(
            user.org_id,
            p.actor(),
            "session_ended",
            None,
            &caller.meta,
            json!({ "user_id": user.id, "reason": "user_disabled" }),
            now,
        );
        let revoked = self
            .store
            .update_user(
                &user,
                UserChange {
                    revoke: if disabled {
                        RevokeOwned::All
                    } else {
                        RevokeOwned::None
                    },
                    end_sessions: if disabled {
                        EndSessions::All
                    } else {
                        EndSessions::None
                    },
                    revoke_event: Some(&revoke_event),
                    session_event: Some(&session_event),
                },
                now,
                std::slice::from_ref(&event),
            )
            .await?;
        self.after_revoking(&revoked, &revoke_event);
        audit::log(&event);
        Ok(self.user_view(&user))
    }

    /// Fails if `admin` is its org's last active admin.
    async fn keep_an_admin(&self, admin: &UserRecord) -> Result<()> {
        if admin.disabled_at.is_none() && self.store.count_active_admins(admin.org_id).await? <= 1 {
            return Err(Error::FailedPrecondition(
                "this is the org's last active admin; make another user admin first".into(),
            ));
        }
        Ok(())
    }

    /// Drops revoked tokens from the verify cache (after the commit) and counts them.
    fn after_revoking(&self, ids: &[Uuid], template: &AuditRecord) {
        for id in ids {
            self.cache.invalidate(*id);
        }
        if !ids.is_empty() {
            audit::log(template);
            metrics::counter!("latchkey_token_revoked_total").increment(ids.len() as u64);
        }
    }

    /// Changes the caller's own password; every other session of the user ends.
    ///
    /// # Errors
    /// `not_found` for a caller without a user; `rate_limited` past the sign-in limit;
    /// `permission_denied` for a wrong current password; `invalid_argument` for a new password
    /// that breaks a rule.
    pub async fn change_password(
        &self,
        caller: &Caller,
        req: ChangePasswordRequest,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let id = caller.principal.user_id.ok_or(Error::NotFound)?;
        validate_password("new_password", &req.new_password)?;
        let user = self.store.get_user(id).await?.ok_or(Error::NotFound)?;
        self.check_login_rate(caller.meta.ip)?;
        let current = user.password_hash.clone().unwrap_or_default();
        if !self.password_matches(current, req.current_password).await? {
            return Err(Error::PermissionDenied(
                "current_password is not correct".into(),
            ));
        }
        let hash = self.hash_password(req.new_password).await?;
        // Read again after the slow hash, so a change made meanwhile (a disable) is kept.
        let mut user = self.store.get_user(id).await?.ok_or(Error::NotFound)?;
        user.password_hash = Some(hash);
        let event = user_event(
            &user,
            caller.principal.actor(),
            "password_changed",
            &caller.meta,
            now,
        );
        let session_event = audit::event(
            user.org_id,
            caller.principal.actor(),
            "session_ended",
            None,
            &caller.meta,
            json!({ "user_id": user.id, "reason": "password_changed" }),
            now,
        );
        let others = match &caller.session {
            Some(s) => EndSessions::AllBut(s.id),
            None => EndSessions::All,
        };
        self.store
            .update_user(
                &user,
                UserChange {
                    revoke: RevokeOwned::None,
                    end_sessions: others,
                    revoke_event: None,
                    session_event: Some(&session_event),
                },
                now,
                std::slice::from_ref(&event),
            )
            .await?;
        audit::log(&event);
        Ok(())
    }

    /// Sets a password with the token of a setup link, which then stops working. Public. A
    /// setup token is 256 random bits, so guessing is pointless; the token is looked up before
    /// any hash, so a wrong one costs no Argon2id (the per-address management limit applies).
    ///
    /// # Errors
    /// `invalid_argument` for a password that breaks a rule, or a setup token that is unknown,
    /// used, expired or of a disabled user (one message for all four).
    pub async fn setup_password(
        &self,
        req: SetupPasswordRequest,
        meta: &RequestMeta,
        now: DateTime<Utc>,
    ) -> Result<UserView> {
        validate_password("password", &req.password)?;
        let invalid = || {
            Error::invalid(
                "this setup link is not valid: it was used, has expired, or never existed; ask an admin for a new one",
            )
        };
        let hash_of_link = sha256_hex(req.setup_token.expose());
        let user = self
            .store
            .find_user_by_setup_hash(&hash_of_link)
            .await?
            .ok_or_else(invalid)?;
        if user.disabled_at.is_some() || user.setup_expires_at.is_none_or(|e| e <= now) {
            return Err(invalid());
        }
        let hash = self.hash_password(req.password).await?;
        // Read again after the slow hash, so a change made meanwhile (a disable) is kept.
        let mut user = self
            .store
            .get_user(user.id)
            .await?
            .filter(|u| u.setup_hash.as_deref() == Some(hash_of_link.as_str()))
            .ok_or_else(invalid)?;
        user.password_hash = Some(hash);
        user.setup_hash = None;
        user.setup_expires_at = None;
        let event = user_event(
            &user,
            format!("user:{}", user.id),
            "password_set",
            meta,
            now,
        );
        self.store
            .update_user(
                &user,
                UserChange {
                    revoke: RevokeOwned::None,
                    end_sessions: EndSessions::All,
                    revoke_event: None,
                    session_event: None,
                },
                now,
                std::slice::from_ref(&event),
            )
            .await?;
        audit::log(&event);
        Ok(self.user_view(&user))
    }

    /// Trades an email and password for a token owned by the user, created by `user:<id>`. The
    /// sign-in limit is taken before any hash; every failure is the same `invalid_credentials`.
    /// No scopes named: the deployment's `default_scopes`. Lifetime: the org's policy, and at
    /// most the login maximum (`--login-token-max-days`), which is also the default.
    ///
    /// # Errors
    /// `rate_limited`; `invalid_credentials`; `invalid_argument` for a bad name or lifetime;
    /// `permission_denied` for a scope the role may not grant; `already_exists` for a taken
    /// token name.
    pub async fn exchange_password(
        &self,
        req: ExchangePasswordRequest,
        meta: &RequestMeta,
        now: DateTime<Utc>,
    ) -> Result<CreatedToken> {
        let user = self
            .check_credentials(&req.email, req.password, meta, "password_exchange", now)
            .await?;
        let caller = Caller::new(self.user_principal(&user), meta.clone());
        self.check_mint_rate(&caller)?;
        let name = Name::parse("name", req.name)?;
        let permissions = if req.scopes.is_none() && req.permissions.is_none() {
            self.requested_permissions(
                caller.principal.effective(),
                Some(self.config.scopes.default_scopes().bits()),
                None,
            )?
        } else {
            self.requested_permissions(
                caller.principal.effective(),
                req.permissions,
                req.scopes.as_deref(),
            )?
        };
        let max_seconds = self.config.people.login_token_max_days * 86_400;
        let requested = match (req.ttl_seconds, req.expires_in_days) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "give at most one of ttl_seconds and expires_in_days",
                ));
            }
            (Some(s), None) => Some(s),
            (None, Some(d)) => Some(d.checked_mul(86_400).unwrap_or(i64::MAX)),
            (None, None) => None,
        };
        let org = self
            .store
            .get_org(user.org_id)
            .await?
            .ok_or(Error::NotFound)?;
        let seconds = match requested {
            Some(s) if !(1..=MAX_TTL_SECONDS).contains(&s) => {
                return Err(Error::invalid("the lifetime must be at least 1 second"));
            }
            Some(s) if s > max_seconds => {
                return Err(Error::invalid(format!(
                    "tokens minted with a password live at most {} days (--login-token-max-days)",
                    self.config.people.login_token_max_days
                )));
            }
            Some(s) => s,
            None => org
                .default_ttl_seconds
                .unwrap_or(max_seconds)
                .min(max_seconds),
        };
        let expires_at = apply_policy(&org, Some(now + TimeDelta::seconds(seconds)), now)?;
        let login = audit::event(
            user.org_id,
            caller.principal.actor(),
            "login_succeeded",
            None,
            meta,
            json!({ "user_id": user.id, "method": "password_exchange" }),
            now,
        );
        let created = self
            .mint(
                &caller,
                Mint {
                    org_id: user.org_id,
                    name: name.into_inner(),
                    kind: TokenKind::from(req.kind),
                    permissions,
                    expires_at,
                    metadata: None,
                },
                vec![login],
                now,
            )
            .await?;
        self.store.record_login(user.id, now, &[]).await?;
        Ok(created)
    }
}

fn permission_name(p: Permissions) -> &'static str {
    if p == Permissions::USERS_MANAGE {
        "users:manage"
    } else {
        "users:read"
    }
}

fn user_event(
    u: &UserRecord,
    actor: String,
    action: &str,
    meta: &RequestMeta,
    now: DateTime<Utc>,
) -> AuditRecord {
    audit::event(
        u.org_id,
        actor,
        action,
        None,
        meta,
        json!({ "user_id": u.id, "role": u.role.as_str() }),
        now,
    )
}

/// The `token_revoked` event written for each token a user change revokes.
fn revoke_template(
    u: &UserRecord,
    actor: String,
    meta: &RequestMeta,
    reason: &str,
    now: DateTime<Utc>,
) -> AuditRecord {
    audit::event(
        u.org_id,
        actor,
        "token_revoked",
        None,
        meta,
        json!({ "owner": u.id, "reason": reason }),
        now,
    )
}

/// 32 bytes from the OS CSPRNG, base62 (43 characters): setup tokens and session ids.
pub(super) fn random_secret() -> Result<Secret<String>> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Internal(anyhow::anyhow!("OS random source failed: {e}")))?;
    Ok(Secret::new(crate::token::format::base62_secret(&bytes)))
}

/// Lowercase hex SHA-256 of a secret string: what is stored of setup tokens and session ids.
pub(super) fn sha256_hex(s: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(s.as_bytes());
    let mut out = String::with_capacity(64);
    for b in d {
        out.push_str(&format!("{b:02x}"));
    }
    out
}
