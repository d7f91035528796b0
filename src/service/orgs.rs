//! Orgs and the bootstrap of a fresh deployment.

use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use super::model::{CreateOrgRequest, Name, OrgView};
use super::{Authority, Caller, RequestMeta, audit};
use crate::error::{Error, Result};
use crate::store::{OrgRecord, StoreError};
use crate::token::{Permissions, Secret, TokenKind};

/// The result of a bootstrap: the org, whether it was created now, and the admin token's
/// plaintext (to be shown once).
#[derive(Debug)]
pub struct BootstrapOutcome {
    pub org: OrgRecord,
    pub created_org: bool,
    pub token_id: Uuid,
    pub plaintext: Secret<String>,
}

pub(super) fn org_view(o: &OrgRecord) -> OrgView {
    OrgView {
        id: o.id,
        name: o.name.clone(),
        created_at: o.created_at,
        max_ttl_seconds: o.max_ttl_seconds,
        default_ttl_seconds: o.default_ttl_seconds,
    }
}

impl Authority {
    /// Creates an org. Needs `platform:admin`.
    ///
    /// # Errors
    /// `permission_denied`, `invalid_argument` for a bad name, `already_exists` for a taken name.
    pub async fn create_org(
        &self,
        caller: &Caller,
        req: CreateOrgRequest,
        now: DateTime<Utc>,
    ) -> Result<OrgView> {
        caller
            .principal
            .require(Permissions::PLATFORM_ADMIN, "platform:admin")?;
        let name = Name::parse("name", req.name)?.into_inner();
        let org = OrgRecord {
            id: Uuid::now_v7(),
            name,
            created_at: now,
            max_ttl_seconds: None,
            default_ttl_seconds: None,
        };
        let event = audit::event(
            org.id,
            caller.principal.actor(),
            "org_created",
            None,
            &caller.meta,
            json!({ "name": org.name }),
            now,
        );
        self.store
            .create_org(&org, None, std::slice::from_ref(&event))
            .await?;
        audit::log(&event);
        Ok(org_view(&org))
    }

    /// An org the caller belongs to (any `platform:admin` sees every org).
    ///
    /// # Errors
    /// `not_found` for every other id.
    pub async fn get_org(&self, caller: &Caller, id: Uuid) -> Result<OrgView> {
        let p = &caller.principal;
        if id != p.org_id && !p.is_platform_admin() {
            return Err(Error::NotFound);
        }
        let org = self.store.get_org(id).await?.ok_or(Error::NotFound)?;
        Ok(org_view(&org))
    }

    /// Mints an admin token (every system bit, `platform:admin` included) in the org named
    /// `org_name`, creating the org if it does not exist. For `latchkey bootstrap`, run on the
    /// server's machine: whoever can reach the database is trusted.
    ///
    /// # Errors
    /// `invalid_argument` for a bad org name; `internal` for store failures.
    /// The id of the org named `name`, for commands run against the database.
    ///
    /// # Errors
    /// `not_found` when there is no such org.
    pub async fn org_id_by_name(&self, name: &str) -> Result<Uuid> {
        match self.store.find_org_by_name(name).await? {
            Some(org) => Ok(org.id),
            None => Err(Error::NotFound),
        }
    }

    pub async fn bootstrap(&self, org_name: &str, now: DateTime<Utc>) -> Result<BootstrapOutcome> {
        let name = Name::parse("org name", org_name.to_string())?.into_inner();
        match self.store.find_org_by_name(&name).await? {
            Some(org) => {
                let (record, plaintext) = self.admin_token(org.id, now).await?;
                let event = bootstrap_event(org.id, record.id, now);
                self.store
                    .insert_token(&record, std::slice::from_ref(&event), now)
                    .await?;
                audit::log(&event);
                Ok(BootstrapOutcome {
                    org,
                    created_org: false,
                    token_id: record.id,
                    plaintext,
                })
            }
            None => self.bootstrap_new_org(name, now).await,
        }
    }

    /// The org named `org_name`, created (by `system`) if it does not exist: for the command
    /// line's `user create`.
    ///
    /// # Errors
    /// `invalid_argument` for a bad name; `internal` for store failures.
    pub(super) async fn org_for_cli(
        &self,
        org_name: &str,
        now: DateTime<Utc>,
    ) -> Result<OrgRecord> {
        let name = Name::parse("org name", org_name.to_string())?.into_inner();
        if let Some(org) = self.store.find_org_by_name(&name).await? {
            return Ok(org);
        }
        let org = OrgRecord {
            id: Uuid::now_v7(),
            name,
            created_at: now,
            max_ttl_seconds: None,
            default_ttl_seconds: None,
        };
        let event = audit::event(
            org.id,
            "system".into(),
            "org_created",
            None,
            &RequestMeta::default(),
            json!({ "name": org.name }),
            now,
        );
        match self
            .store
            .create_org(&org, None, std::slice::from_ref(&event))
            .await
        {
            Ok(()) => {
                audit::log(&event);
                Ok(org)
            }
            // Created by someone else meanwhile.
            Err(StoreError::Conflict(_)) => self
                .store
                .find_org_by_name(&org.name)
                .await?
                .ok_or(Error::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    /// On a database with no org at all, creates the `default` org and an admin token. `None`
    /// when the database already has orgs (or another node bootstrapped it first).
    ///
    /// # Errors
    /// `internal` for store failures.
    pub async fn bootstrap_if_empty(&self, now: DateTime<Utc>) -> Result<Option<BootstrapOutcome>> {
        if self.store.org_count().await? > 0 {
            return Ok(None);
        }
        match self.bootstrap_new_org("default".into(), now).await {
            Ok(out) => Ok(Some(out)),
            Err(Error::AlreadyExists(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn bootstrap_new_org(
        &self,
        name: String,
        now: DateTime<Utc>,
    ) -> Result<BootstrapOutcome> {
        let org = OrgRecord {
            id: Uuid::now_v7(),
            name,
            created_at: now,
            max_ttl_seconds: None,
            default_ttl_seconds: None,
        };
        let (record, plaintext) = self.admin_token(org.id, now).await?;
        let events = [
            audit::event(
                org.id,
                "bootstrap".into(),
                "org_created",
                None,
                &RequestMeta::default(),
                json!({ "name": org.name }),
                now,
            ),
            bootstrap_event(org.id, record.id, now),
        ];
        match self.store.create_org(&org, Some(&record), &events).await {
            Ok(()) => {}
            Err(StoreError::Conflict(m)) => return Err(Error::AlreadyExists(m)),
            Err(e) => return Err(e.into()),
        }
        events.iter().for_each(audit::log);
        Ok(BootstrapOutcome {
            org,
            created_org: true,
            token_id: record.id,
            plaintext,
        })
    }

    async fn admin_token(
        &self,
        org_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(crate::store::TokenRecord, Secret<String>)> {
        // The timestamp keeps the name unique among the org's live tokens.
        let name = format!("bootstrap {}", now.format("%Y-%m-%dT%H:%M:%S%.6fZ"));
        self.new_token_record(
            org_id,
            name,
            TokenKind::Pat,
            Permissions::ALL_SYSTEM,
            None,
            None,
            "bootstrap".into(),
            now,
        )
        .await
    }
}

fn bootstrap_event(org_id: Uuid, token_id: Uuid, now: DateTime<Utc>) -> crate::store::AuditRecord {
    audit::event(
        org_id,
        "bootstrap".into(),
        "bootstrap",
        Some(token_id),
        &RequestMeta::default(),
        json!({ "permissions": Permissions::ALL_SYSTEM.bits() }),
        now,
    )
}
