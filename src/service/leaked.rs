//! Leaked-token reports: whoever finds a token in the open may report it, without
//! authentication (as in GitHub's secret scanning partner programme). Every genuine, live token
//! in a report is revoked; the answer never says which were.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::model::{LeakedAck, LeakedReport};
use super::{Authority, RequestMeta, audit};
use crate::error::{Error, Result};
use crate::token::format;

/// Most tokens in one report.
pub const MAX_REPORTED_TOKENS: usize = 100;
/// Longest `source` description.
pub const MAX_SOURCE_CHARS: usize = 200;

impl Authority {
    /// Revokes every well-formed, genuine (secret matches), not yet revoked token of the report,
    /// each with a `token_leaked` audit event carrying the source. Answers only how many entries
    /// were examined.
    ///
    /// # Errors
    /// `rate_limited` past the client's report limit; `invalid_argument` for more than 100 tokens
    /// or a source over 200 characters.
    pub async fn report_leaked(
        &self,
        report: LeakedReport,
        meta: &RequestMeta,
        now: DateTime<Utc>,
    ) -> Result<LeakedAck> {
        if let (Some(l), Some(ip)) = (&self.limits.leaked, meta.ip) {
            l.take(&ip)?;
        }
        if report.tokens.len() > MAX_REPORTED_TOKENS {
            return Err(Error::invalid(format!(
                "a report holds at most {MAX_REPORTED_TOKENS} tokens"
            )));
        }
        let source = report.source.unwrap_or_default();
        if source.chars().count() > MAX_SOURCE_CHARS {
            return Err(Error::invalid(format!(
                "source must be at most {MAX_SOURCE_CHARS} characters"
            )));
        }
        // The source is the reporter's free text: it may quote the token itself.
        let source = format::redact(&source);
        for presented in &report.tokens {
            let Ok(parsed) = format::parse(&self.config.prefix, presented) else {
                continue;
            };
            let Some(entry) = self.matching_entry(&parsed, None, false).await? else {
                continue;
            };
            let event = audit::event(
                entry.token.org_id,
                "system".into(),
                "token_leaked",
                Some(entry.token.id),
                meta,
                json!({ "source": source }),
                now,
            );
            if self.store.revoke_token(entry.token.id, now, &event).await? {
                audit::log(&event);
                metrics::counter!("latchkey_token_revoked_total").increment(1);
                tracing::warn!(token_id = %entry.token.id, "leaked token reported and revoked");
            }
            self.cache.invalidate(entry.token.id);
        }
        Ok(LeakedAck {
            examined: report.tokens.len(),
        })
    }
}
