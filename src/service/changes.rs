//! The change feed behind `WatchChanges`, and the usage a client answered from its own cache
//! (`ReportUsage`).
//!
//! Every change a verify cache may hold writes an audit event in its own transaction, so the
//! audit log is the feed: a watch reads the events after its cursor. It reads as soon as this
//! node hears of a change (its own, or another node's through LISTEN/NOTIFY: the verify cache's
//! invalidations wake every watch), and once a second anyway, re-reading the last seconds,
//! because an event's id is made before its transaction commits and a slow commit may land
//! behind the cursor. A change may therefore be delivered more than once; dropping a cache entry
//! twice is harmless.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

use super::{Authority, Caller};
use crate::error::{Error, Result};
use crate::store::AuditRecord;
use crate::token::Permissions;

/// The audit actions a verify cache must hear of.
pub const WATCHED_ACTIONS: [&str; 7] = [
    "token_revoked",
    "token_rotated",
    "token_disabled",
    "token_enabled",
    "token_family_revoked",
    "token_leaked",
    "token_imported",
];

/// How often a watch sends a heartbeat when nothing changes.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How often a watch reads the feed even when it heard of no change (a lost wake-up, a slow
/// commit behind the cursor).
const POLL: Duration = Duration::from_secs(1);
/// How far behind its cursor that read starts.
const OVERLAP: TimeDelta = TimeDelta::seconds(5);
/// A resume that would replay more than this, or from further back than [`RESUME_WINDOW`],
/// is answered with a reset instead.
const MAX_CATCH_UP: usize = 10_000;
const RESUME_WINDOW: TimeDelta = TimeDelta::hours(1);
/// Events read at once.
const PAGE: u32 = 1_000;
/// Most uses in one report, and most verifications one use may carry.
pub const MAX_REPORTED_USES: usize = 10_000;
const MAX_COUNT_PER_USE: i64 = 1_000_000;

/// One change of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenChange {
    pub token_id: Uuid,
    pub org_id: Uuid,
    /// The audit action.
    pub kind: String,
    pub at: DateTime<Utc>,
}

/// What a watch has to say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Changes(Vec<TokenChange>),
    Heartbeat(DateTime<Utc>),
    /// Changes may have been missed: the client must drop its cache.
    Reset(DateTime<Utc>),
}

/// `WatchChanges`' request.
#[derive(Debug, Clone, Default)]
pub struct WatchRequest {
    /// The cursor of the last message received.
    pub cursor: Option<String>,
    /// platform:admin only: one org (every org's changes otherwise).
    pub org_id: Option<Uuid>,
}

/// A verification a client answered from its own cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedUse {
    pub token_id: Uuid,
    pub count: i64,
    pub last_used_at: DateTime<Utc>,
}

/// One open watch: its org, its cursor and the events it sent lately.
pub struct Watch {
    org_id: Option<Uuid>,
    /// The watching token: the watch ends when it is revoked, disabled or expires.
    token: Option<Uuid>,
    /// The highest event id delivered (or the instant the watch started).
    cursor: Uuid,
    /// Ids of the events delivered within the overlap, so a re-read does not send them again.
    sent: BTreeSet<Uuid>,
    changed: tokio::sync::watch::Receiver<u64>,
    stopping: tokio::sync::watch::Receiver<bool>,
    last_full_read: Instant,
    last_message: Instant,
}

/// The smallest UUID v7 of the millisecond of `t`: every event made at or after `t` has a
/// greater id.
fn v7_floor(t: DateTime<Utc>) -> Uuid {
    let ms = u128::from(t.timestamp_millis().max(0) as u64);
    Uuid::from_u128((ms << 80) | (0x7 << 76) | (0b10 << 62))
}

/// The instant a UUID v7 was made.
fn v7_time(id: Uuid) -> Option<DateTime<Utc>> {
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    DateTime::from_timestamp(secs as i64, nanos)
}

impl Watch {
    /// The cursor to resume from after the last message.
    pub fn cursor(&self) -> String {
        self.cursor.to_string()
    }

    /// Waits until a change may have happened, a read is due, or a heartbeat is; `false` when
    /// the server is stopping and the watch should end.
    pub async fn wait(&mut self) -> bool {
        let due = POLL
            .saturating_sub(self.last_full_read.elapsed())
            .min(HEARTBEAT.saturating_sub(self.last_message.elapsed()));
        let changed = tokio::time::timeout(due, self.changed.changed());
        let stopped = tokio::select! {
            _ = changed => false,
            _ = self.stopping.wait_for(|s| *s) => true,
        };
        !stopped && !*self.stopping.borrow()
    }

    /// Whether nothing was sent for a heartbeat's interval.
    pub fn heartbeat_due(&self) -> bool {
        self.last_message.elapsed() >= HEARTBEAT
    }

    /// Records that a message went out.
    pub fn sent_message(&mut self) {
        self.last_message = Instant::now();
    }
}

impl Authority {
    /// Ends every watch: the server is stopping.
    pub fn stop_watches(&self) {
        self.stopping.send_replace(true);
    }

    /// Opens a watch of the changes a verify cache may hold, and says what to send first: the
    /// changes missed since `req.cursor` (a heartbeat when there are none), or a reset when the
    /// cursor is too old to replay, or a heartbeat for a watch from now.
    ///
    /// # Errors
    /// `permission_denied` without `tokens:watch` (or `platform:admin`); `not_found` for an
    /// `org_id` out of reach (only a platform admin may give one); `invalid_argument` for a
    /// cursor that is not one this server gave.
    pub async fn start_watch(
        &self,
        caller: &Caller,
        req: WatchRequest,
        now: DateTime<Utc>,
    ) -> Result<(Watch, WatchEvent)> {
        let p = &caller.principal;
        p.require(Permissions::TOKENS_WATCH, "tokens:watch")?;
        let org_id = match req.org_id {
            None if p.is_platform_admin() => None,
            requested => Some(self.target_org(p, requested).await?),
        };
        let mut watch = Watch {
            org_id,
            token: match p.kind {
                super::PrincipalKind::Token(id) => Some(id),
                _ => None,
            },
            cursor: v7_floor(now),
            sent: BTreeSet::new(),
            changed: self.cache.subscribe_changes(),
            stopping: self.stopping.subscribe(),
            last_full_read: Instant::now(),
            last_message: Instant::now(),
        };
        let Some(cursor) = req.cursor.filter(|c| !c.is_empty()) else {
            return Ok((watch, WatchEvent::Heartbeat(now)));
        };
        let resume = Uuid::try_parse(&cursor)
            .ok()
            .and_then(|id| Some((id, v7_time(id)?)))
            .ok_or_else(|| Error::invalid("cursor is not one this server gave"))?;
        let (id, at) = resume;
        if at < now - RESUME_WINDOW || at > now + TimeDelta::minutes(1) {
            return Ok((watch, WatchEvent::Reset(now)));
        }
        watch.cursor = id;
        let mut missed = Vec::new();
        let mut after = v7_floor(at - OVERLAP);
        loop {
            let page = self
                .store
                .audit_after(org_id, after, &WATCHED_ACTIONS, PAGE)
                .await?;
            let last = page.len() < PAGE as usize;
            if let Some(e) = page.last() {
                after = e.id;
            }
            missed.extend(page);
            if missed.len() > MAX_CATCH_UP {
                watch.cursor = v7_floor(now);
                return Ok((watch, WatchEvent::Reset(now)));
            }
            if last {
                break;
            }
        }
        let changes = self.deliver(&mut watch, missed).await?;
        Ok((
            watch,
            if changes.is_empty() {
                WatchEvent::Heartbeat(now)
            } else {
                WatchEvent::Changes(changes)
            },
        ))
    }

    /// The changes committed since the watch's last read; empty when there are none.
    ///
    /// # Errors
    /// `unauthenticated` once the watching token is revoked, disabled or expired (checked on
    /// every change naming it and once a second); `unavailable` / `internal` when the store
    /// fails.
    pub async fn next_changes(
        &self,
        watch: &mut Watch,
        now: DateTime<Utc>,
    ) -> Result<Vec<TokenChange>> {
        let full = watch.last_full_read.elapsed() >= POLL;
        if full {
            self.watcher_still_valid(watch, now).await?;
        }
        let after = if full {
            watch.last_full_read = Instant::now();
            let behind = v7_time(watch.cursor).unwrap_or(now) - OVERLAP;
            v7_floor(behind)
        } else {
            watch.cursor
        };
        let mut events = Vec::new();
        let mut after = after;
        loop {
            let page = self
                .store
                .audit_after(watch.org_id, after, &WATCHED_ACTIONS, PAGE)
                .await?;
            let last = page.len() < PAGE as usize;
            if let Some(e) = page.last() {
                after = e.id;
            }
            events.extend(page);
            if last {
                break;
            }
        }
        // Forget what fell out of the overlap: it is never read again.
        let keep_from = v7_floor(v7_time(watch.cursor).unwrap_or(now) - OVERLAP * 2);
        watch.sent = watch.sent.split_off(&keep_from);
        let changes = self.deliver(watch, events).await?;
        if full {
            // Everything made before the overlap has been read: a quiet feed's cursor moves on
            // too, so that a client resuming after a long quiet spell is not sent a reset.
            watch.cursor = watch.cursor.max(v7_floor(now - OVERLAP));
        }
        if let Some(me) = watch.token
            && changes.iter().any(|c| c.token_id == me)
        {
            self.watcher_still_valid(watch, now).await?;
        }
        Ok(changes)
    }

    /// `unauthenticated` when the token a watch runs on is no longer valid at `now`.
    async fn watcher_still_valid(&self, watch: &Watch, now: DateTime<Utc>) -> Result<()> {
        let Some(id) = watch.token else {
            return Ok(());
        };
        match self.cached_or_loaded(id).await? {
            Some(e) if e.is_valid_at(now) => Ok(()),
            _ => Err(Error::Unauthenticated),
        }
    }

    /// The changes of `events` not delivered yet (a family's revocation names every token of
    /// it), advancing the cursor.
    async fn deliver(
        &self,
        watch: &mut Watch,
        events: Vec<AuditRecord>,
    ) -> Result<Vec<TokenChange>> {
        let mut changes = Vec::new();
        for e in events {
            if !watch.sent.insert(e.id) {
                continue;
            }
            watch.cursor = watch.cursor.max(e.id);
            let Some(token_id) = e.token_id else { continue };
            if e.action == "token_family_revoked" {
                let family = e.details["family_id"]
                    .as_str()
                    .and_then(|f| Uuid::try_parse(f).ok())
                    .unwrap_or(token_id);
                for t in self.store.list_family(family).await? {
                    changes.push(TokenChange {
                        token_id: t.id,
                        org_id: e.org_id,
                        kind: e.action.clone(),
                        at: e.occurred_at,
                    });
                }
                continue;
            }
            changes.push(TokenChange {
                token_id,
                org_id: e.org_id,
                kind: e.action,
                at: e.occurred_at,
            });
        }
        Ok(changes)
    }

    /// Adds verifications a client answered from its own cache to the tokens' usage (written
    /// with the next usage flush). Uses of tokens out of the caller's reach, or unknown, are
    /// skipped; `last_used_at` after `now` counts as `now`.
    ///
    /// # Errors
    /// `permission_denied` without `tokens:watch`; `invalid_argument` for more than
    /// [`MAX_REPORTED_USES`] uses or a count outside 1 to 1,000,000.
    pub async fn report_usage(
        &self,
        caller: &Caller,
        uses: Vec<ReportedUse>,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let p = &caller.principal;
        p.require(Permissions::TOKENS_WATCH, "tokens:watch")?;
        if uses.len() > MAX_REPORTED_USES {
            return Err(Error::invalid(format!(
                "at most {MAX_REPORTED_USES} uses per report"
            )));
        }
        if uses
            .iter()
            .any(|u| !(1..=MAX_COUNT_PER_USE).contains(&u.count))
        {
            return Err(Error::invalid("count must be between 1 and 1000000"));
        }
        let mut accepted = 0;
        for u in uses {
            let Some(entry) = self.cached_or_loaded(u.token_id).await? else {
                continue;
            };
            if entry.token.org_id != p.org_id && !p.is_platform_admin() {
                continue;
            }
            self.usage
                .record_many(u.token_id, u.count, u.last_used_at.min(now));
            accepted += u.count as u64;
        }
        Ok(accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v7_floor_of_an_instant_is_below_every_id_made_from_then_on() {
        let t = DateTime::from_timestamp_millis(1_900_000_000_123).unwrap();
        let floor = v7_floor(t);
        assert_eq!(floor.get_version_num(), 7);
        assert_eq!(v7_time(floor), Some(t));
        let later = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            1_900_000_000,
            123_000_000,
        ));
        assert!(floor <= later);
        assert!(floor.to_string() <= later.to_string());
        assert!(v7_floor(t - TimeDelta::milliseconds(1)) < floor);
    }
}
