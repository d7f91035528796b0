//! Moving in: importing the keys another system stored (its hashes, never plaintexts) as
//! first-class tokens. One transaction per file, all or nothing, idempotent.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use super::model::{ImportLine, ImportReport, ImportedKey, ImportedStatus, Name, RefusedLine};
use super::{Authority, Caller, Principal, PrincipalKind, audit};
use crate::error::{Error, Result};
use crate::store::{ImportRow, ImportStatus, TokenRecord};
use crate::token::TokenKind;
use crate::token::legacy::{LegacyVerifier, Scheme};

/// Most keys one import may carry: a bigger file is split (each part is its own transaction).
pub const MAX_IMPORT_KEYS: usize = 100_000;

/// What an import reads.
#[derive(Debug, Clone)]
pub enum ImportInput {
    /// JSON Lines: one key per line; blank lines are skipped, line numbers count them.
    JsonLines(String),
    /// A JSON array of keys; an item's "line" is its position, from 1.
    Array(String),
}

/// Where keys without an `org_id` of their own go.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    pub org_id: Option<Uuid>,
    /// Validate and report only; nothing is written.
    pub dry_run: bool,
}

/// A line that passed validation, ready for the store.
struct Valid {
    line: usize,
    token: TokenRecord,
    scheme: Scheme,
    id_given: bool,
}

impl Authority {
    /// Imports keys: validates every line, then writes them all in one transaction, or nothing
    /// when any line is refused (a hash malformed for its scheme, a duplicate within the file,
    /// a name held by a live token, an org or owner out of reach, bits the caller cannot grant).
    /// A key whose hash (or id) is already present changes nothing and is reported as such, so
    /// importing a file twice is harmless. Each imported key gets a `token_imported` event with
    /// the caller as actor (`import` for the command line, which acts as the system).
    ///
    /// Imported keys keep the lifetime, usage and state their source gave them; the org's TTL
    /// policy applies when they are rotated into native tokens.
    ///
    /// # Errors
    /// `permission_denied` without `org:admin` (or `platform:admin`); `not_found` for a default
    /// org out of reach; `invalid_argument` for an empty or oversized input. Refused lines are
    /// not an error here: they are in the report ([`ImportReport::refusal`] makes them one).
    pub async fn import_tokens(
        &self,
        caller: &Caller,
        input: ImportInput,
        opts: ImportOptions,
        now: DateTime<Utc>,
    ) -> Result<ImportReport> {
        let p = &caller.principal;
        p.require(
            crate::token::Permissions::ORG_ADMIN,
            "org:admin (or platform:admin)",
        )?;
        let default_org = match opts.org_id {
            Some(id) => Some(self.target_org(p, Some(id)).await?),
            None if matches!(p.kind, PrincipalKind::System) => None,
            None => Some(p.org_id),
        };
        let items = split(&input)?;
        let actor = match p.kind {
            PrincipalKind::System => "import".to_string(),
            _ => p.actor(),
        };
        let mut refused = Vec::new();
        let mut valid = Vec::new();
        let mut seen_id: HashMap<Uuid, usize> = HashMap::new();
        let mut seen_lookup: HashMap<String, usize> = HashMap::new();
        let mut seen_name: HashMap<(Uuid, String), usize> = HashMap::new();
        for (line, value) in items {
            let checked = match value {
                Ok(v) => self.check_line(p, v, default_org, &actor, now).await,
                Err(why) => Err(why),
            };
            let mut v = match checked {
                Ok(v) => v,
                Err(reason) => {
                    refused.push(RefusedLine { line, reason });
                    continue;
                }
            };
            v.line = line;
            let t = &v.token;
            let lookup = t.lookup.clone().unwrap_or_default();
            let live = t.revoked_at.is_none() && t.expires_at.is_none_or(|x| x > now);
            let same_name = seen_name.get(&(t.org_id, t.name.clone())).filter(|_| live);
            let dup = if let Some(first) = seen_lookup.get(&lookup) {
                Some(format!("the same hash as line {first}"))
            } else if let Some(first) = seen_id.get(&t.id) {
                Some(format!("the same id as line {first}"))
            } else {
                same_name.map(|first| format!("the same live name as line {first}"))
            };
            if let Some(why) = dup {
                refused.push(RefusedLine {
                    line,
                    reason: format!("duplicate: {why}"),
                });
                continue;
            }
            seen_lookup.insert(lookup, line);
            seen_id.insert(t.id, line);
            if live {
                seen_name.insert((t.org_id, t.name.clone()), line);
            }
            valid.push(v);
        }
        let rows: Vec<ImportRow> = valid
            .iter()
            .map(|v| ImportRow {
                id_given: v.id_given,
                token: v.token.clone(),
                event: audit::event(
                    v.token.org_id,
                    actor.clone(),
                    "token_imported",
                    Some(v.token.id),
                    &caller.meta,
                    json!({ "scheme": v.scheme.name(), "line": v.line, "name": v.token.name }),
                    now,
                ),
            })
            .collect();
        let commit = !opts.dry_run && refused.is_empty();
        let statuses = self.store.import_tokens(&rows, commit, now).await?;
        let mut keys = Vec::with_capacity(valid.len());
        for (v, status) in valid.iter().zip(&statuses) {
            match status {
                ImportStatus::Imported => keys.push(ImportedKey {
                    line: v.line,
                    id: v.token.id,
                    status: ImportedStatus::Imported,
                }),
                ImportStatus::AlreadyPresent(id) => keys.push(ImportedKey {
                    line: v.line,
                    id: *id,
                    // Carried over below: a key revoked at its source since the last import.
                    status: if v.token.revoked_at.is_some() {
                        ImportedStatus::Revoked
                    } else {
                        ImportedStatus::AlreadyPresent
                    },
                }),
                ImportStatus::NameTaken => refused.push(RefusedLine {
                    line: v.line,
                    reason: format!(
                        "a live token named {:?} already exists in the org",
                        v.token.name
                    ),
                }),
                // One reason for both, naming no org: another org's keys are out of reach.
                ImportStatus::Taken => refused.push(RefusedLine {
                    line: v.line,
                    reason: "another token already has this id or this hash".into(),
                }),
            }
        }
        refused.sort_by_key(|r| r.line);
        // A catch-up import at cutover carries the source's revocations: a key present and live
        // here, revoked in the file, is revoked now (the only change a re-import makes).
        let mut revoked = 0;
        if commit && refused.is_empty() {
            for k in keys
                .iter_mut()
                .filter(|k| k.status == ImportedStatus::Revoked)
            {
                let event = audit::event(
                    v_org(&valid, k.line),
                    actor.clone(),
                    "token_revoked",
                    Some(k.id),
                    &caller.meta,
                    json!({ "reason": "revoked at its source (import)", "line": k.line }),
                    now,
                );
                let changed = self.store.revoke_token(k.id, now, &event).await?;
                self.cache.invalidate(k.id);
                if changed {
                    audit::log(&event);
                    metrics::counter!("latchkey_token_revoked_total").increment(1);
                    revoked += 1;
                } else {
                    k.status = ImportedStatus::AlreadyPresent;
                }
            }
        } else if !opts.dry_run {
            for k in keys
                .iter_mut()
                .filter(|k| k.status == ImportedStatus::Revoked)
            {
                k.status = ImportedStatus::AlreadyPresent;
            }
        }
        let imported = keys
            .iter()
            .filter(|k| k.status == ImportedStatus::Imported)
            .count();
        let written = commit && refused.is_empty() && (imported > 0 || revoked > 0);
        if written {
            for (row, status) in rows.iter().zip(&statuses) {
                if *status == ImportStatus::Imported {
                    self.cache.created(row.token.id);
                    audit::log(&row.event);
                }
            }
            self.cache.imported();
            for v in &valid {
                self.enable_scheme(v.scheme);
            }
            metrics::counter!("latchkey_token_imported_total").increment(imported as u64);
        }
        Ok(ImportReport {
            dry_run: opts.dry_run,
            written,
            imported: if written || opts.dry_run { imported } else { 0 },
            already_present: keys
                .iter()
                .filter(|k| k.status != ImportedStatus::Imported)
                .count(),
            revoked: keys
                .iter()
                .filter(|k| k.status == ImportedStatus::Revoked)
                .count(),
            refused,
            keys,
        })
    }

    /// Validates one line into a token row; the refusal's reason otherwise.
    async fn check_line(
        &self,
        p: &Principal,
        v: serde_json::Value,
        default_org: Option<Uuid>,
        actor: &str,
        now: DateTime<Utc>,
    ) -> std::result::Result<Valid, String> {
        let l: ImportLine = serde_json::from_value(v).map_err(|e| {
            // serde's message names the field, never the value.
            format!(
                "not a valid key: {}",
                crate::token::format::redact(&e.to_string())
            )
        })?;
        let reason = |e: Error| e.public_message();
        let scheme = Scheme::from_name(&l.scheme).ok_or_else(|| {
            "scheme must be argon2id-embedded-uuid, sha256, sha512 or sanctum".to_string()
        })?;
        if l.sanctum_id.is_some() && scheme != Scheme::Sanctum {
            return Err("sanctum_id is only for the sanctum scheme".into());
        }
        let verifier = LegacyVerifier::from_import(scheme, &l.hash, l.sanctum_id)
            .map_err(|e| e.to_string())?;
        let id = match (scheme, l.id) {
            (Scheme::Argon2idEmbeddedUuid, None) => {
                return Err(
                    "id is required for argon2id-embedded-uuid: the UUID in the token".into(),
                );
            }
            (_, Some(id)) => id,
            (_, None) => Uuid::now_v7(),
        };
        let name = Name::parse("name", l.name).map_err(reason)?.into_inner();
        let org_id = match l.org_id.or(default_org) {
            Some(org) => self
                .target_org(p, Some(org))
                .await
                .map_err(|_| "org not found".to_string())?,
            None => return Err("org_id is missing (on the line, or --org-id / --org-name)".into()),
        };
        let permissions = self
            .requested_permissions(p.effective(), l.permissions, l.scopes.as_deref())
            .map_err(reason)?;
        let user_id = match l.owner_email {
            None => None,
            Some(email) => match self.store.find_user_by_email(email.trim()).await {
                Ok(Some(u)) if u.org_id == org_id && u.disabled_at.is_none() => Some(u.id),
                Ok(_) => {
                    return Err("owner_email: no active user with that email in the org".into());
                }
                Err(e) => return Err(reason(e.into())),
            },
        };
        for (field, at) in [
            ("created_at", l.created_at),
            ("revoked_at", l.revoked_at),
            ("last_used_at", l.last_used_at),
        ] {
            if at.is_some_and(|t| t > now) {
                return Err(format!("{field} is in the future"));
            }
        }
        let request_count = l.request_count.unwrap_or(0);
        if request_count < 0 {
            return Err("request_count must not be negative".into());
        }
        let metadata = super::tokens::check_metadata(l.metadata).map_err(reason)?;
        let kind: TokenKind = l.kind.unwrap_or_default().into();
        Ok(Valid {
            line: 0,
            scheme,
            id_given: l.id.is_some(),
            token: TokenRecord {
                id,
                org_id,
                name,
                kind,
                verifier: verifier.encode(),
                permissions,
                created_at: l.created_at.unwrap_or(now),
                created_by: actor.to_string(),
                expires_at: l.expires_at,
                revoked_at: l.revoked_at,
                last_used_at: l.last_used_at,
                request_count,
                replaced_by: None,
                metadata,
                family_id: id,
                disabled_at: None,
                client_ips: Vec::new(),
                user_id,
                lookup: Some(verifier.lookup(id)),
            },
        })
    }
}

impl ImportReport {
    /// The report, or `invalid_argument` listing the refused lines (at most 20, then how many
    /// more) when there are any.
    ///
    /// # Errors
    /// `invalid_argument` when a line was refused.
    pub fn refusal(self) -> Result<Self> {
        if self.refused.is_empty() {
            return Ok(self);
        }
        let mut msg = format!(
            "{} line(s) refused; nothing was imported: ",
            self.refused.len()
        );
        let shown: Vec<String> = self
            .refused
            .iter()
            .take(20)
            .map(|r| format!("line {}: {}", r.line, r.reason))
            .collect();
        msg.push_str(&shown.join("; "));
        if self.refused.len() > 20 {
            msg.push_str(&format!("; and {} more", self.refused.len() - 20));
        }
        Err(Error::invalid(msg))
    }
}

/// The items of an import with their line numbers; a line that is not JSON is its refusal.
///
/// # Errors
/// `invalid_argument` for input with no keys, more than [`MAX_IMPORT_KEYS`], or an array
/// body that is not a JSON array.
fn split(
    input: &ImportInput,
) -> Result<Vec<(usize, std::result::Result<serde_json::Value, String>)>> {
    let items: Vec<_> = match input {
        ImportInput::JsonLines(text) => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                (
                    i + 1,
                    serde_json::from_str::<serde_json::Value>(l).map_err(|e| {
                        format!(
                            "not JSON ({})",
                            e.to_string()
                                .split(" at line")
                                .next()
                                .unwrap_or("syntax error")
                        )
                    }),
                )
            })
            .collect(),
        ImportInput::Array(text) => serde_json::from_str::<Vec<serde_json::Value>>(text)
            .map_err(|_| Error::invalid("the body must be a JSON array of keys"))?
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i + 1, Ok(v)))
            .collect(),
    };
    if items.is_empty() {
        return Err(Error::invalid("the import holds no keys"));
    }
    if items.len() > MAX_IMPORT_KEYS {
        return Err(Error::invalid(format!(
            "an import holds at most {MAX_IMPORT_KEYS} keys; split the file"
        )));
    }
    Ok(items)
}

/// The org of the valid line `line`.
fn v_org(valid: &[Valid], line: usize) -> Uuid {
    valid
        .iter()
        .find(|v| v.line == line)
        .map_or(Uuid::nil(), |v| v.token.org_id)
}
