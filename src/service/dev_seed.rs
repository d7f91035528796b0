//! `latchkey dev-seed`: fixed, documented ids and a fixed local-only token, so a developer's
//! services and scripts can be configured once. Never for a shared database: the transport
//! (`offline.rs`) refuses non-loopback PostgreSQL hosts and `LATCHKEY_ENV=production`.

use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use super::{Authority, RequestMeta, audit};
use crate::error::{Error, Result};
use crate::store::{ImportRow, ImportStatus, OrgRecord, TokenRecord, UserRecord};
use crate::token::legacy::LegacyVerifier;
use crate::token::{Role, Secret, TokenKind};

/// The dev org's id.
pub const DEV_ORG_ID: Uuid = Uuid::from_u128(1);
/// The dev admin user's id.
pub const DEV_USER_ID: Uuid = Uuid::from_u128(2);
/// The dev token's id.
pub const DEV_TOKEN_ID: Uuid = Uuid::from_u128(4);
/// The dev token's secret: anyone may read it, so it must never reach a shared database.
pub const DEV_TOKEN_SECRET: &str = "LOCALDEVELOPMENTONLY";
/// The dev admin's email and password.
pub const DEV_USER_EMAIL: &str = "dev-admin@latchkey.localhost";
pub const DEV_USER_PASSWORD: &str = "local-development-only";
const DEV_ORG_NAME: &str = "dev";

/// What `dev-seed` made (or found).
#[derive(Debug)]
pub struct DevSeed {
    pub org_id: Uuid,
    pub user_id: Uuid,
    pub token_id: Uuid,
    /// `<prefix>_pat_00000000-0000-0000-0000-000000000004_LOCALDEVELOPMENTONLY`.
    pub token: Secret<String>,
    pub email: &'static str,
    pub password: Secret<String>,
    /// How many of the org, the user and the token were created by this run.
    pub created: usize,
}

impl Authority {
    /// Creates the dev org, its admin user (password [`DEV_USER_PASSWORD`]) and the dev token
    /// (an admin's bits, owned by the user) with their fixed ids, each only if missing, so a
    /// second run changes nothing. The token is not in the native grammar (its id is not a
    /// UUID v7): it is stored like an imported key of the `argon2id-embedded-uuid` scheme,
    /// Argon2id of the whole token, found by the id inside it.
    ///
    /// # Errors
    /// `already_exists` when another org is named `dev` or another user has the dev email;
    /// `internal` for store failures.
    pub async fn dev_seed(&self, now: DateTime<Utc>) -> Result<DevSeed> {
        let meta = RequestMeta::default();
        let mut created = 0;
        if self.store.get_org(DEV_ORG_ID).await?.is_none() {
            let org = OrgRecord {
                id: DEV_ORG_ID,
                name: DEV_ORG_NAME.into(),
                created_at: now,
                max_ttl_seconds: None,
                default_ttl_seconds: None,
            };
            let event = audit::event(
                DEV_ORG_ID,
                "system".into(),
                "org_created",
                None,
                &meta,
                json!({ "name": DEV_ORG_NAME, "via": "dev-seed" }),
                now,
            );
            self.store
                .create_org(&org, None, std::slice::from_ref(&event))
                .await?;
            audit::log(&event);
            created += 1;
        }
        if self.store.get_user(DEV_USER_ID).await?.is_none() {
            let password = Secret::new(DEV_USER_PASSWORD.to_string());
            let hash = self
                .argon2
                .hash_password(password)
                .await
                .ok()
                .flatten()
                .ok_or_else(|| Error::Internal(anyhow::anyhow!("hashing the dev password")))?;
            let user = UserRecord {
                id: DEV_USER_ID,
                org_id: DEV_ORG_ID,
                email: DEV_USER_EMAIL.into(),
                name: "Dev Admin".into(),
                role: Role::Admin,
                platform_admin: false,
                password_hash: Some(hash),
                created_at: now,
                created_by: "system".into(),
                last_login_at: None,
                disabled_at: None,
                setup_hash: None,
                setup_expires_at: None,
            };
            let event = audit::event(
                DEV_ORG_ID,
                "system".into(),
                "user_created",
                None,
                &meta,
                json!({ "user_id": DEV_USER_ID, "role": "admin", "via": "dev-seed" }),
                now,
            );
            self.store
                .insert_user(&user, std::slice::from_ref(&event))
                .await?;
            audit::log(&event);
            created += 1;
        }
        let plaintext = format!(
            "{}_pat_{DEV_TOKEN_ID}_{DEV_TOKEN_SECRET}",
            self.config.prefix.as_str()
        );
        if self.store.get_token(DEV_TOKEN_ID).await?.is_none() {
            let whole = plaintext.clone();
            let phc = super::off_request_threads(move || {
                crate::token::hash::argon2id_phc(whole.as_bytes())
            })
            .await??;
            let verifier = LegacyVerifier::Argon2id(phc);
            let token = TokenRecord {
                id: DEV_TOKEN_ID,
                org_id: DEV_ORG_ID,
                name: "dev".into(),
                kind: TokenKind::Pat,
                verifier: verifier.encode(),
                permissions: self.role_permissions(Role::Admin, false),
                created_at: now,
                created_by: "system".into(),
                expires_at: None,
                revoked_at: None,
                last_used_at: None,
                request_count: 0,
                replaced_by: None,
                metadata: Some(json!({ "dev_seed": true })),
                family_id: DEV_TOKEN_ID,
                disabled_at: None,
                client_ips: Vec::new(),
                user_id: Some(DEV_USER_ID),
                lookup: Some(verifier.lookup(DEV_TOKEN_ID)),
            };
            let event = audit::event(
                DEV_ORG_ID,
                "system".into(),
                "token_created",
                Some(DEV_TOKEN_ID),
                &meta,
                json!({ "name": "dev", "via": "dev-seed" }),
                now,
            );
            let row = ImportRow {
                token,
                event,
                id_given: true,
            };
            let status = self
                .store
                .import_tokens(std::slice::from_ref(&row), true, now)
                .await?;
            match status.first() {
                Some(ImportStatus::Imported) => {
                    audit::log(&row.event);
                    self.cache.created(DEV_TOKEN_ID);
                    self.enable_scheme(verifier.scheme());
                    created += 1;
                }
                Some(ImportStatus::AlreadyPresent(_)) => {}
                _ => {
                    return Err(Error::AlreadyExists(
                        "a live token named \"dev\" already exists in the dev org".into(),
                    ));
                }
            }
        }
        Ok(DevSeed {
            org_id: DEV_ORG_ID,
            user_id: DEV_USER_ID,
            token_id: DEV_TOKEN_ID,
            token: Secret::new(plaintext),
            email: DEV_USER_EMAIL,
            password: Secret::new(DEV_USER_PASSWORD.to_string()),
            created,
        })
    }
}
