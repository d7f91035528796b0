//! The verification hot path: parse, checksum, a bounded in-process cache, a constant-time
//! compare, state and expiry. In steady state no database round trip; usage is counted in memory
//! and flushed in batches.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use smallvec::SmallVec;
use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;

use super::model::{VerifiedToken, VerifyCode, VerifyRequest, VerifyResponse};
use super::{Authority, Principal, PrincipalKind, off_request_threads};
use crate::error::{Error, Result};
use crate::store::{
    ClientIp, HourCount, Invalidation, MAX_CLIENT_IPS, Store, StoreError, UsageDelta, VerifyRecord,
    hour_start, merge_client_ips, merge_hours,
};
use crate::token::legacy::{self, Key, LegacyVerifier, Schemes};
use crate::token::{Permissions, TokenKind, Verifier, format, hash};

/// What a successful verification knows about the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedToken {
    pub id: Uuid,
    pub org_id: Uuid,
    pub kind: TokenKind,
    pub permissions: Permissions,
    pub expires_at: Option<DateTime<Utc>>,
    /// The user who owns the token, if any.
    pub user_id: Option<Uuid>,
}

impl AuthenticatedToken {
    pub fn principal(&self) -> Principal {
        Principal {
            kind: PrincipalKind::Token(self.id),
            org_id: self.org_id,
            permissions: self.permissions,
            user_id: self.user_id,
        }
    }
}

pub(super) struct CachedToken {
    pub(super) token: AuthenticatedToken,
    /// Revoked or disabled when loaded: never valid until reloaded.
    blocked: bool,
    verifier: StoredVerifier,
    /// For Argon2id verifiers: SHA-256 of the secret (of the whole presented string, for an
    /// imported key) once it has matched, so later checks of the same token skip Argon2id.
    fast: OnceLock<[u8; 32]>,
    /// What verify answers about this token, built on the first answer.
    verified: OnceLock<Arc<VerifiedToken>>,
    loaded: Instant,
}

/// A token's verifier: native, or the stored hash of a key imported from another system.
#[derive(Debug, PartialEq, Eq)]
enum StoredVerifier {
    Native(Verifier),
    Legacy(LegacyVerifier),
}

impl StoredVerifier {
    fn is_argon2(&self) -> bool {
        matches!(
            self,
            StoredVerifier::Native(Verifier::Argon2id(_))
                | StoredVerifier::Legacy(LegacyVerifier::Argon2id(_))
        )
    }
}

impl std::str::FromStr for StoredVerifier {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.starts_with("legacy:") {
            s.parse()
                .map(StoredVerifier::Legacy)
                .map_err(|e| e.to_string())
        } else {
            s.parse()
                .map(StoredVerifier::Native)
                .map_err(|e: hash::BadVerifier| e.to_string())
        }
    }
}

/// Bounded cache of tokens by id.
pub(super) struct TokenCache {
    entries: quick_cache::sync::Cache<Uuid, Arc<CachedToken>>,
    /// Ids recently looked up and not found, so that well-formed garbage (ids are public and the
    /// checksum is no secret) does not cost a database read every time.
    missing: quick_cache::sync::Cache<Uuid, Instant>,
    /// Imported keys found by a digest: the digest's scheme and first 32 bytes -> the token id
    /// (a row's digest never changes), or `None` when no row had it at that instant.
    legacy_ids: quick_cache::sync::Cache<(u8, [u8; 32]), (Option<Uuid>, Instant)>,
    ttl: Duration,
    /// Bumped on every invalidation. A load during which the epoch moved may have read a row older
    /// than the invalidation, so it is used once and not cached.
    epoch: AtomicU64,
    /// Told of every invalidation (this node's changes and other nodes'): wakes the change
    /// feed's watches (`changes.rs`).
    changes: tokio::sync::watch::Sender<u64>,
}

impl CachedToken {
    /// Neither revoked nor disabled (when loaded), nor expired at `now`.
    pub(super) fn is_valid_at(&self, now: DateTime<Utc>) -> bool {
        !self.blocked && self.token.expires_at.is_none_or(|x| x > now)
    }
}

impl TokenCache {
    pub(super) fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            entries: quick_cache::sync::Cache::new(capacity.max(1)),
            missing: quick_cache::sync::Cache::new((capacity / 10).max(1)),
            legacy_ids: quick_cache::sync::Cache::new(capacity.max(1)),
            ttl,
            epoch: AtomicU64::new(0),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// A receiver woken by every invalidation.
    pub(super) fn subscribe_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn announce(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn get(&self, id: &Uuid) -> Option<Arc<CachedToken>> {
        self.entries
            .get(id)
            .filter(|e| e.loaded.elapsed() < self.ttl)
    }

    fn known_missing(&self, id: &Uuid) -> bool {
        self.missing
            .get(id)
            .is_some_and(|at| at.elapsed() < self.ttl)
    }

    /// Forgets that `id` was missing (it has just been created on this node).
    pub(super) fn created(&self, id: Uuid) {
        self.missing.remove(&id);
    }

    /// Forgets which digests were found missing (keys have just been imported on this node).
    pub(super) fn imported(&self) {
        self.legacy_ids.clear();
        self.announce();
    }

    fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.clear();
        self.missing.clear();
        self.legacy_ids.clear();
        self.announce();
    }

    pub(super) fn invalidate(&self, id: Uuid) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.remove(&id);
        self.announce();
    }
}

/// The verify path's metrics. Each thread tallies into its own shard (as usage is counted),
/// and a shard is handed to the `metrics` registry every [`PUBLISH_EVERY`] verifications and
/// whenever the metrics are read ([`Authority::publish_metrics`], before each `/metrics`
/// answer and each usage flush): the registry's counters and histogram are shared by every
/// worker thread, and writing to them on every verification passed their cache lines from
/// core to core several times per request.
pub(super) struct VerifyMetrics {
    valid: metrics::Counter,
    invalid: metrics::Counter,
    insufficient: metrics::Counter,
    rate_limited: metrics::Counter,
    duration: metrics::Histogram,
    argon2_checks: metrics::Counter,
    cache_hits: metrics::Counter,
    cache_misses: metrics::Counter,
    tallies: [Padded<Mutex<Tally>>; USAGE_SHARDS],
}

/// Verifications a shard tallies before it hands them to the registry.
const PUBLISH_EVERY: usize = 256;

/// One thread's verify metrics not yet in the registry.
#[derive(Default)]
struct Tally {
    results: [u64; 4],
    cache_hits: u64,
    cache_misses: u64,
    /// Verify durations in seconds.
    durations: Vec<f64>,
}

/// A value alone on its cache lines, so that two threads' shards are never on one line.
#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(T);

impl VerifyMetrics {
    pub(super) fn new() -> Self {
        let result = |r: &'static str| metrics::counter!("latchkey_verify_total", "result" => r);
        Self {
            valid: result("valid"),
            invalid: result("invalid"),
            insufficient: result("insufficient_permissions"),
            rate_limited: result("rate_limited"),
            duration: metrics::histogram!("latchkey_verify_duration_seconds"),
            argon2_checks: metrics::counter!("latchkey_argon2_checks_total"),
            cache_hits: metrics::counter!("latchkey_token_cache_total", "result" => "hit"),
            cache_misses: metrics::counter!("latchkey_token_cache_total", "result" => "miss"),
            tallies: Default::default(),
        }
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        lock(&self.tallies[usage_shard()])
    }

    /// Counts one cache lookup of the verify path.
    fn cache(&self, hit: bool) {
        let mut t = self.tally();
        if hit {
            t.cache_hits += 1;
        } else {
            t.cache_misses += 1;
        }
    }

    /// Counts one verification's answer and how long it took.
    fn verified(&self, code: VerifyCode, took: std::time::Duration) {
        let mut t = self.tally();
        let i = match code {
            VerifyCode::Valid => 0,
            VerifyCode::Invalid => 1,
            VerifyCode::InsufficientPermissions => 2,
            VerifyCode::RateLimited => 3,
        };
        t.results[i] += 1;
        t.durations.push(took.as_secs_f64());
        if t.durations.len() >= PUBLISH_EVERY {
            self.publish(&mut t);
        }
    }

    /// Hands a tally to the registry and empties it.
    fn publish(&self, t: &mut Tally) {
        let [valid, invalid, insufficient, rate_limited] = std::mem::take(&mut t.results);
        for (counter, n) in [
            (&self.valid, valid),
            (&self.invalid, invalid),
            (&self.insufficient, insufficient),
            (&self.rate_limited, rate_limited),
            (&self.cache_hits, std::mem::take(&mut t.cache_hits)),
            (&self.cache_misses, std::mem::take(&mut t.cache_misses)),
        ] {
            if n > 0 {
                counter.increment(n);
            }
        }
        for d in t.durations.drain(..) {
            self.duration.record(d);
        }
    }

    /// Hands every shard's tally to the registry.
    fn publish_all(&self) {
        for shard in &self.tallies {
            self.publish(&mut lock(shard));
        }
    }
}

/// Usage of one token counted in memory; addresses stay `IpAddr` until the flush.
// The address and hour lists almost always hold one entry, kept inline: a token's first
// verification of a flush interval allocates nothing but its map slot.
struct PendingUsage {
    count: i64,
    last_used_at: DateTime<Utc>,
    ips: SmallVec<[(IpAddr, DateTime<Utc>); 1]>,
    /// The same count by hour; two entries only when a flush spans an hour's end.
    hours: SmallVec<[HourCount; 1]>,
}

impl PendingUsage {
    fn new(at: DateTime<Utc>) -> Self {
        Self {
            count: 0,
            last_used_at: at,
            ips: SmallVec::new(),
            hours: SmallVec::new(),
        }
    }

    /// Counts `n` verifications at `at`.
    fn count(&mut self, n: i64, at: DateTime<Utc>) {
        self.count += n;
        self.last_used_at = self.last_used_at.max(at);
        // Same hour as the last count: compared as seconds, without building the hour's time.
        match self.hours.last_mut() {
            Some(last) if at.timestamp().div_euclid(3600) * 3600 == last.hour.timestamp() => {
                last.count += n;
            }
            _ => merge_hours(
                &mut self.hours,
                &[HourCount {
                    hour: hour_start(at),
                    count: n,
                }],
            ),
        }
    }

    /// Adds one address seen at `at`, keeping the most recently seen `MAX_CLIENT_IPS`.
    fn saw(&mut self, ip: IpAddr, at: DateTime<Utc>) {
        match self.ips.iter_mut().find(|(known, _)| *known == ip) {
            Some(seen) => seen.1 = seen.1.max(at),
            None => {
                self.ips.push((ip, at));
                if self.ips.len() > MAX_CLIENT_IPS {
                    self.ips.sort_by_key(|e| std::cmp::Reverse(e.1));
                    self.ips.truncate(MAX_CLIENT_IPS);
                }
            }
        }
    }

    fn absorb(&mut self, other: PendingUsage) {
        self.count += other.count;
        self.last_used_at = self.last_used_at.max(other.last_used_at);
        merge_hours(&mut self.hours, &other.hours);
        for (ip, at) in other.ips {
            self.saw(ip, at);
        }
    }
}

/// Keyed by foldhash, not SipHash: the ids are of tokens this server issued and verified (or
/// reported by a client holding `tokens:watch`), not keys an attacker picks to collide, and
/// the map takes an entry per verification.
type UsageMap = HashMap<Uuid, PendingUsage, foldhash::fast::RandomState>;

/// Shards of the usage buffer. Each thread counts into its own shard, so the worker threads
/// never wait for each other's lock, and a hot token's counter is not a cache line they pass
/// back and forth; the flush merges the shards.
const USAGE_SHARDS: usize = 8;

/// Usage counted in memory since the last flush.
pub(super) struct UsageBuffer([Padded<Mutex<UsageMap>>; USAGE_SHARDS]);

impl Default for UsageBuffer {
    fn default() -> Self {
        Self(std::array::from_fn(|_| Padded::default()))
    }
}

/// This thread's shard: threads take shard numbers in turn as they first count usage.
fn usage_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % USAGE_SHARDS;
    }
    SHARD.with(|s| *s)
}

/// A shard's lock; a panic elsewhere while holding it leaves counts, which stay usable.
fn lock<T>(shard: &Padded<Mutex<T>>) -> std::sync::MutexGuard<'_, T> {
    shard.0.lock().unwrap_or_else(|e| e.into_inner())
}

/// Adds `u` to what `map` holds for `id`.
fn add_usage(map: &mut UsageMap, id: Uuid, u: PendingUsage) {
    match map.entry(id) {
        Entry::Occupied(mut e) => e.get_mut().absorb(u),
        Entry::Vacant(e) => {
            e.insert(u);
        }
    }
}

impl UsageBuffer {
    fn record(&self, id: Uuid, ip: Option<IpAddr>, now: DateTime<Utc>) {
        let mut map = lock(&self.0[usage_shard()]);
        let entry = map.entry(id).or_insert_with(|| PendingUsage::new(now));
        entry.count(1, now);
        if let Some(ip) = ip {
            entry.saw(ip, now);
        }
    }

    /// Counts `n` verifications answered elsewhere (a client's cache), the last at `at`.
    pub(super) fn record_many(&self, id: Uuid, n: i64, at: DateTime<Utc>) {
        let mut map = lock(&self.0[usage_shard()]);
        map.entry(id)
            .or_insert_with(|| PendingUsage::new(at))
            .count(n, at);
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|shard| lock(shard).is_empty())
    }

    /// Everything counted so far, merged across shards, in token id order; the buffer is left
    /// empty. The order makes the store's writes walk its index once, front to back, instead of
    /// jumping around it (on SQLite that halves the flush), and gives concurrent flushes of
    /// several nodes one lock order on PostgreSQL.
    fn take(&self) -> Vec<UsageDelta> {
        let maps = self.0.each_ref().map(|shard| {
            // The next second's map starts at this one's size (allocated outside the lock):
            // growing a map of thousands of tokens, one rehash after another, would happen on
            // the request threads.
            let fresh = UsageMap::with_capacity_and_hasher(lock(shard).len(), Default::default());
            std::mem::replace(&mut *lock(shard), fresh)
        });
        // One list sorted by id rather than a merged map: no rehash as it grows, and a token
        // counted on two threads has its entries side by side, to be folded into one.
        let mut all: Vec<(Uuid, PendingUsage)> =
            Vec::with_capacity(maps.iter().map(UsageMap::len).sum());
        for map in maps {
            all.extend(map);
        }
        all.sort_unstable_by_key(|(id, _)| *id);
        all.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0;
            if same {
                let at = later.1.last_used_at;
                let u = std::mem::replace(&mut later.1, PendingUsage::new(at));
                earlier.1.absorb(u);
            }
            same
        });
        all.into_iter()
            .map(|(token_id, u)| {
                let mut ips = Vec::new();
                let seen: Vec<ClientIp> = u
                    .ips
                    .iter()
                    .map(|(ip, at)| ClientIp {
                        ip: ip.to_string(),
                        last_seen_at: *at,
                    })
                    .collect();
                merge_client_ips(&mut ips, &seen);
                UsageDelta {
                    token_id,
                    count: u.count,
                    last_used_at: u.last_used_at,
                    ips,
                    hours: u.hours.into_vec(),
                }
            })
            .collect()
    }

    /// Puts a batch that could not be written back, to be counted in the next flush.
    fn put_back(&self, batch: &[UsageDelta]) {
        let mut map = lock(&self.0[usage_shard()]);
        for u in batch {
            let mut back = PendingUsage::new(u.last_used_at);
            back.count = u.count;
            back.hours = SmallVec::from_slice(&u.hours);
            for c in &u.ips {
                if let Ok(ip) = c.ip.parse() {
                    back.saw(ip, c.last_seen_at);
                }
            }
            add_usage(&mut map, u.token_id, back);
        }
    }
}

/// A cache miss waiting for the batch loader.
struct Miss {
    id: Uuid,
    reply: oneshot::Sender<Result<Option<Arc<CachedToken>>>>,
}

/// Most ids read in one round trip.
const MAX_LOAD_BATCH: usize = 128;
/// Batch reads in flight at once.
const LOADS_IN_FLIGHT: usize = 2;

/// Coalesces cache misses: every miss that arrives while earlier reads are in flight joins the
/// next batch, read with one `Store::get_tokens_for_verify`. Under load a batch holds many ids
/// for the cost of one round trip; an idle server reads each miss at once, alone.
#[derive(Default)]
pub(super) struct Loader(OnceLock<mpsc::Sender<Miss>>);

async fn run_loader(store: Arc<dyn Store>, cache: Arc<TokenCache>, mut rx: mpsc::Receiver<Miss>) {
    let permits = Arc::new(Semaphore::new(LOADS_IN_FLIGHT));
    let mut batch = Vec::with_capacity(MAX_LOAD_BATCH);
    while rx.recv_many(&mut batch, MAX_LOAD_BATCH).await > 0 {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        // Let the requests that are ready to run reach their miss first (no timer: a yield
        // puts the loader behind them), then take everything that queued.
        tokio::task::yield_now().await;
        while batch.len() < MAX_LOAD_BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let misses = std::mem::replace(&mut batch, Vec::with_capacity(MAX_LOAD_BATCH));
        let (store, cache) = (store.clone(), cache.clone());
        // A task of its own: a request that gives up does not cut short the others' read.
        tokio::spawn(async move {
            load_batch(store.as_ref(), &cache, misses).await;
            drop(permit);
        });
    }
}

async fn load_batch(store: &dyn Store, cache: &TokenCache, misses: Vec<Miss>) {
    let epoch = cache.epoch.load(Ordering::SeqCst);
    let mut ids: Vec<Uuid> = misses.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    ids.dedup();
    metrics::histogram!("latchkey_verify_load_batch_size").record(ids.len() as f64);
    let rows = match store.get_tokens_for_verify(&ids).await {
        Ok(rows) => rows,
        Err(e) => {
            // Every waiting miss gets the same answer: unavailable (503, retry) when the
            // database cannot be reached, internal otherwise.
            let unavailable = matches!(e, StoreError::Unavailable(_));
            let cause = crate::error::one_line(&anyhow::Error::new(e));
            for m in misses {
                let err = anyhow::anyhow!("{cause}").context("reading tokens to verify");
                let answer = if unavailable {
                    Error::Unavailable {
                        retry_after: crate::error::UNAVAILABLE_RETRY_AFTER,
                        cause: err,
                    }
                } else {
                    Error::Internal(err)
                };
                let _ = m.reply.send(Err(answer));
            }
            return;
        }
    };
    let loaded_at = Instant::now();
    let found: HashMap<Uuid, std::result::Result<Arc<CachedToken>, String>> = rows
        .into_iter()
        .map(|row| (row.id, cache.entry_for(row, loaded_at)))
        .collect();
    for id in &ids {
        if !found.contains_key(id) {
            cache.missing.insert(*id, loaded_at);
        }
    }
    if cache.epoch.load(Ordering::SeqCst) == epoch {
        let fresh = || found.values().filter_map(|e| e.as_ref().ok());
        for e in fresh() {
            cache.entries.insert(e.token.id, e.clone());
        }
        // An invalidation between the check and the inserts would find nothing to remove, so
        // look again: if one happened, the entries may be older than it and must go.
        if cache.epoch.load(Ordering::SeqCst) != epoch {
            for e in fresh() {
                cache.entries.remove(&e.token.id);
            }
        }
    }
    for m in misses {
        let answer = match found.get(&m.id) {
            None => Ok(None),
            Some(Ok(e)) => Ok(Some(e.clone())),
            Some(Err(why)) => Err(Error::Internal(anyhow::anyhow!("{why}"))),
        };
        let _ = m.reply.send(answer);
    }
}

impl TokenCache {
    /// The cache entry for a row just read. An Argon2id token keeps the fast digest of the entry
    /// it replaces when the verifier is the same, so that a TTL refresh does not send every
    /// request of a busy token back to Argon2id.
    fn entry_for(
        &self,
        row: VerifyRecord,
        loaded_at: Instant,
    ) -> std::result::Result<Arc<CachedToken>, String> {
        let verifier: StoredVerifier = row
            .verifier
            .parse()
            .map_err(|e| format!("token {}: {e}", row.id))?;
        let fast = OnceLock::new();
        if let Some(old) = self.entries.peek(&row.id)
            && old.verifier == verifier
            && let Some(d) = old.fast.get()
        {
            let _ = fast.set(*d);
        }
        Ok(Arc::new(CachedToken {
            token: AuthenticatedToken {
                id: row.id,
                org_id: row.org_id,
                kind: row.kind,
                permissions: row.permissions,
                expires_at: row.expires_at,
                user_id: row.user_id,
            },
            blocked: row.blocked,
            verifier,
            fast,
            verified: OnceLock::new(),
            loaded: loaded_at,
        }))
    }
}

impl Authority {
    /// Reads a token that missed the cache, through the batch loader.
    async fn load(&self, id: Uuid) -> Result<Option<Arc<CachedToken>>> {
        let loader = self.loader.0.get_or_init(|| {
            let (tx, rx) = mpsc::channel(4 * MAX_LOAD_BATCH);
            tokio::spawn(run_loader(self.store.clone(), self.cache.clone(), rx));
            tx
        });
        let stopped = || Error::Internal(anyhow::anyhow!("the token loader has stopped"));
        let (reply, answer) = oneshot::channel();
        loader
            .send(Miss { id, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    async fn secret_matches(
        &self,
        entry: &CachedToken,
        secret: &crate::token::Secret<[u8; 32]>,
    ) -> Result<bool> {
        match &entry.verifier {
            // An imported key is never matched by a native token string.
            StoredVerifier::Legacy(_) => Ok(false),
            StoredVerifier::Native(Verifier::Sha256(d)) => {
                Ok(hash::digest_eq(d, &hash::sha256(secret.expose())))
            }
            StoredVerifier::Native(Verifier::Argon2id(phc)) => {
                let digest = hash::sha256(secret.expose());
                if let Some(known) = entry.fast.get() {
                    return Ok(hash::digest_eq(known, &digest));
                }
                self.verify_metrics.argon2_checks.increment(1);
                let ok = self
                    .argon2
                    .matches(phc.clone(), secret.clone())
                    .await
                    .map_err(|_| {
                        metrics::counter!("latchkey_rate_limited_total", "limit" => "argon2_queue")
                            .increment(1);
                        Error::RateLimited {
                            retry_after: std::time::Duration::from_secs(1),
                        }
                    })?;
                if ok {
                    let _ = entry.fast.set(digest);
                }
                Ok(ok)
            }
        }
    }

    /// Whether an Argon2id check of token `id` for `ip` may start: neither the client address
    /// nor the token may be past its failed-check limit. A refusal is answered after the refusal
    /// delay, with the time left until the next cell.
    ///
    /// # Errors
    /// `rate_limited`.
    async fn allow_argon2(&self, ip: Option<IpAddr>, id: Uuid) -> Result<()> {
        let by_address = match (&self.limits.failed_verify, ip) {
            (Some(limit), Some(ip)) => limit.allow_costly(&ip),
            _ => Ok(()),
        };
        let allowed = by_address.and_then(|()| match &self.limits.failed_guess {
            Some(limit) => limit.allow_costly(&id),
            None => Ok(()),
        });
        match allowed {
            Ok(()) => Ok(()),
            // Boxed: its timer would otherwise enlarge every verification's future.
            Err(refused) => Err(Box::pin(self.limits.refusal_delay.refuse(refused)).await),
        }
    }

    /// Counts a failed Argon2id check against the client address and the token.
    fn argon2_failed(&self, ip: Option<IpAddr>, id: Uuid) {
        if let (Some(l), Some(ip)) = (&self.limits.failed_verify, ip) {
            l.failed(&ip);
        }
        if let Some(l) = &self.limits.failed_guess {
            l.failed(&id);
        }
    }

    /// The cached (or freshly loaded) entry of a parsed token whose secret matches, whatever its
    /// state; `None` when there is no such token or the secret is wrong. An Argon2id check (a
    /// token's first since it was loaded) is held to the failed-check limits of `ip` and of the
    /// token, and counts against both when it fails; nothing else is limited here, so garbage,
    /// unknown ids and wrong SHA-256 secrets cost no one else a refusal. Without `limited`
    /// (leaked-token reports, which never reveal a match) no limit applies.
    pub(super) async fn matching_entry(
        &self,
        parsed: &format::ParsedToken,
        ip: Option<IpAddr>,
        limited: bool,
    ) -> Result<Option<Arc<CachedToken>>> {
        let Some(entry) = self.cached_or_loaded(parsed.id).await? else {
            return Ok(None);
        };
        if entry.token.kind != parsed.kind {
            return Ok(None);
        }
        let cold_argon2 = limited && entry.verifier.is_argon2() && entry.fast.get().is_none();
        if cold_argon2 {
            self.allow_argon2(ip, parsed.id).await?;
        }
        let matched = self.secret_matches(&entry, &parsed.secret).await?;
        if cold_argon2 && !matched {
            self.argon2_failed(ip, parsed.id);
        }
        Ok(matched.then_some(entry))
    }

    /// The entry of token `id`: from the cache, or read through the batch loader; `None` when
    /// there is no such token.
    pub(super) async fn cached_or_loaded(&self, id: Uuid) -> Result<Option<Arc<CachedToken>>> {
        let m = &self.verify_metrics;
        match self.cache.get(&id) {
            Some(e) => {
                m.cache(true);
                Ok(Some(e))
            }
            None if self.cache.known_missing(&id) => {
                m.cache(true);
                Ok(None)
            }
            None => {
                m.cache(false);
                self.load(id).await
            }
        }
    }

    /// The schemes of imported keys present in the database, which the verify path tries.
    fn legacy_schemes(&self) -> Schemes {
        Schemes(self.legacy_schemes.load(Ordering::Relaxed))
    }

    /// Learns which import schemes have keys in the database. Run at start, by the
    /// housekeeping tick (so that a key imported through another node is recognised within a
    /// minute) and after an import.
    ///
    /// # Errors
    /// The store's error.
    pub async fn refresh_legacy_schemes(&self) -> Result<()> {
        let mut found = Schemes::default();
        for scheme in legacy::Scheme::ALL {
            let (start, end) = scheme.lookup_range();
            if self.store.any_lookup_in(&start, &end).await? {
                found = found.with(scheme);
            }
        }
        self.legacy_schemes.fetch_or(found.0, Ordering::Relaxed);
        Ok(())
    }

    /// Makes the verify path try `scheme` (keys of it have just been imported).
    pub(super) fn enable_scheme(&self, scheme: legacy::Scheme) {
        self.legacy_schemes
            .fetch_or(Schemes::default().with(scheme).0, Ordering::Relaxed);
    }

    /// The id of the imported key whose digest `p` carries, through the digest cache.
    async fn legacy_id(&self, p: &legacy::Presented<'_>) -> Result<Option<Uuid>> {
        let key = p.cache_key();
        if let Some((id, at)) = self.cache.legacy_ids.get(&key)
            && (id.is_some() || at.elapsed() < self.cache.ttl)
        {
            self.verify_metrics.cache(true);
            return Ok(id);
        }
        self.verify_metrics.cache(false);
        let id = self.store.find_lookup(&p.lookup()).await?;
        self.cache.legacy_ids.insert(key, (id, Instant::now()));
        Ok(id)
    }

    /// The entry of an imported key matching `presented`, whatever its state; `None` when the
    /// string has no enabled scheme's shape (no read), no row has it, or it does not match.
    /// Argon2id checks are held to the same failed-check limits as native ones.
    async fn matching_legacy(
        &self,
        presented: &str,
        ip: Option<IpAddr>,
    ) -> Result<Option<Arc<CachedToken>>> {
        let enabled = self.legacy_schemes();
        if enabled.is_empty() {
            return Ok(None);
        }
        for p in legacy::recognise(enabled, presented) {
            let id = match p.key {
                Key::Id(id) => id,
                Key::Digest { .. } => match self.legacy_id(&p).await? {
                    Some(id) => id,
                    None => continue,
                },
            };
            let Some(entry) = self.cached_or_loaded(id).await? else {
                continue;
            };
            let StoredVerifier::Legacy(v) = &entry.verifier else {
                continue;
            };
            if v.scheme() != p.scheme {
                continue;
            }
            let matched = match (v.matches_digest(&p), v) {
                (Some(m), _) => m,
                (None, LegacyVerifier::Argon2id(phc)) => {
                    if let Some(known) = entry.fast.get() {
                        hash::digest_eq(known, &p.sha256)
                    } else {
                        self.allow_argon2(ip, id).await?;
                        self.verify_metrics.argon2_checks.increment(1);
                        let whole = crate::token::Secret::new(p.text.to_string());
                        let ok = self
                            .argon2
                            .password_matches(phc.clone(), whole)
                            .await
                            .map_err(|_| {
                                metrics::counter!("latchkey_rate_limited_total", "limit" => "argon2_queue")
                                    .increment(1);
                                Error::RateLimited {
                                    retry_after: std::time::Duration::from_secs(1),
                                }
                            })?;
                        if ok {
                            let _ = entry.fast.set(p.sha256);
                        } else {
                            self.argon2_failed(ip, id);
                        }
                        ok
                    }
                }
                (None, _) => false,
            };
            if matched {
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }

    /// Checks a presented token string. `None` for every kind of invalid: malformed, unknown,
    /// wrong secret, revoked, disabled, expired at `now`. Counts usage on success.
    ///
    /// # Errors
    /// `rate_limited` when the check needs an Argon2id computation and the client address or
    /// the token is past its failed-check limit (answered after the refusal delay,
    /// `RateLimitConfig::refusal_delay`), or the Argon2id queue is full; `internal` (database
    /// unreachable, corrupt row).
    pub async fn check_token(
        &self,
        presented: &str,
        ip: Option<IpAddr>,
        now: DateTime<Utc>,
    ) -> Result<Option<AuthenticatedToken>> {
        Ok(self
            .valid_entry(presented, ip, now)
            .await?
            .map(|e| e.token.clone()))
    }

    /// [`Self::check_token`], answering with the cache entry.
    async fn valid_entry(
        &self,
        presented: &str,
        ip: Option<IpAddr>,
        now: DateTime<Utc>,
    ) -> Result<Option<Arc<CachedToken>>> {
        let found = match format::parse(&self.config.prefix, presented) {
            Ok(parsed) => self.matching_entry(&parsed, ip, true).await?,
            Err(_) => self.matching_legacy(presented, ip).await?,
        };
        match found {
            Some(e) if e.is_valid_at(now) => {
                self.usage.record(e.token.id, ip, now);
                Ok(Some(e))
            }
            _ => Ok(None),
        }
    }

    /// Authenticates a bearer token for a management call; a bearer that is no valid token may
    /// be the break-glass secret (`break_glass.rs`).
    ///
    /// # Errors
    /// `unauthenticated` for every kind of invalid token; `internal` if the store fails.
    pub async fn authenticate(
        &self,
        bearer: &str,
        ip: Option<IpAddr>,
        now: DateTime<Utc>,
    ) -> Result<Principal> {
        match self.check_token(bearer, ip, now).await? {
            Some(t) => Ok(t.principal()),
            None => self.break_glass(bearer, ip, now).await,
        }
    }

    /// Verifies a token for an API that it protects: `VALID`, `INVALID` (one body for every
    /// kind), or `INSUFFICIENT_PERMISSIONS` when it lacks one of `required_scopes` (an unknown
    /// scope name is lacked by every token). The token's own bits are compared; `platform:admin`
    /// does not stand for downstream scopes.
    ///
    /// # Errors
    /// Only `internal`, if the store fails.
    pub async fn verify(
        &self,
        req: &VerifyRequest,
        ip: Option<IpAddr>,
        now: DateTime<Utc>,
    ) -> Result<VerifyResponse> {
        let started = Instant::now();
        // A scope this deployment does not know is held by no token: the answer is
        // INSUFFICIENT_PERMISSIONS, as the design keeps 400 for a missing token string only.
        let required = self.config.scopes.resolve(&req.required_scopes).ok();
        let res = match self.valid_entry(&req.token, ip, now).await {
            Err(Error::RateLimited { retry_after }) => VerifyResponse::rate_limited(retry_after),
            Err(e) => return Err(e),
            Ok(None) => VerifyResponse::invalid(),
            Ok(Some(e)) => {
                let t = &e.token;
                let ok = required.is_some_and(|r| t.permissions.contains(r));
                let verified = e.verified.get_or_init(|| {
                    Arc::new(VerifiedToken::new(
                        t.id,
                        t.org_id,
                        t.permissions.bits(),
                        self.scope_names(t.permissions),
                        t.expires_at,
                    ))
                });
                VerifyResponse {
                    valid: ok,
                    code: if ok {
                        VerifyCode::Valid
                    } else {
                        VerifyCode::InsufficientPermissions
                    },
                    token: Some(verified.clone()),
                    retry_after_seconds: None,
                }
            }
        };
        self.verify_metrics.verified(res.code, started.elapsed());
        Ok(res)
    }

    /// The names of `p`'s bits, shared by every cached token with the same permissions.
    fn scope_names(&self, p: Permissions) -> Arc<[String]> {
        if let Some(names) = self.scope_names.get(&p.bits()) {
            return names;
        }
        let names: Arc<[String]> = self.config.scopes.names(p).into();
        self.scope_names.insert(p.bits(), names.clone());
        names
    }

    /// Applies a change published by another node: drops the token, or everything.
    pub fn apply_invalidation(&self, inv: Invalidation) {
        match inv {
            Invalidation::Token(id) => self.cache.invalidate(id),
            Invalidation::All => self.cache.clear(),
        }
    }

    /// Hands every thread's tally of verify metrics to the `metrics` registry, so that what it
    /// renders next counts every verification answered so far (tallies otherwise reach it every
    /// 256 verifications of a thread and at each usage flush).
    pub fn publish_metrics(&self) {
        self.verify_metrics.publish_all();
    }

    /// Writes the usage counted since the last flush. On failure the counts are kept for the
    /// next flush, so none are lost.
    ///
    /// # Errors
    /// The store's error.
    pub async fn flush_usage(&self) -> Result<usize> {
        self.publish_metrics();
        if self.usage.is_empty() {
            return Ok(0);
        }
        // A flush can carry tens of thousands of tokens. Building the batch and freeing it take
        // milliseconds, which on a request thread would stall every request queued behind them.
        let usage = self.usage.clone();
        let batch: Arc<[UsageDelta]> = off_request_threads(move || usage.take().into()).await?;
        let n = batch.len();
        let started = std::time::Instant::now();
        let written = self.store.add_usage(batch.clone()).await;
        let elapsed = started.elapsed();
        // A failed batch goes back for the next flush; either way it is freed off the request threads.
        let keep = written.is_err().then(|| self.usage.clone());
        off_request_threads(move || {
            if let Some(usage) = keep {
                usage.put_back(&batch);
            }
        })
        .await?;
        written?;
        metrics::histogram!("latchkey_usage_flush_seconds").record(elapsed);
        metrics::histogram!("latchkey_usage_flush_tokens").record(n as f64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_900_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn usage_counted_on_many_threads_is_merged_into_one_delta_per_token() {
        // Arrange
        let usage = Arc::new(UsageBuffer::default());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let ip1: IpAddr = "192.0.2.1".parse().unwrap();
        let ip2: IpAddr = "192.0.2.2".parse().unwrap();

        // Act: more threads than shards, each counting both tokens.
        let threads: Vec<_> = (0..USAGE_SHARDS as i64 + 3)
            .map(|i| {
                let usage = usage.clone();
                std::thread::spawn(move || {
                    usage.record(a, Some(if i % 2 == 0 { ip1 } else { ip2 }), at(i));
                    usage.record(a, None, at(i));
                    usage.record(b, None, at(100 - i));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // `a` was made first, so it comes first: the batch is in token id order.
        let batch = usage.take();

        // Assert
        let n = USAGE_SHARDS as i64 + 3;
        assert_eq!(batch.len(), 2);
        assert_eq!((batch[0].token_id, batch[0].count), (a, 2 * n));
        assert_eq!(batch[0].last_used_at, at(n - 1));
        assert_eq!(batch[0].ips.len(), 2);
        assert_eq!((batch[1].token_id, batch[1].count), (b, n));
        assert_eq!(batch[1].last_used_at, at(100));
        assert!(usage.is_empty());
    }

    #[test]
    fn a_batch_put_back_is_added_to_what_was_counted_since() {
        // Arrange
        let usage = UsageBuffer::default();
        let id = Uuid::now_v7();
        usage.record(id, Some("192.0.2.1".parse().unwrap()), at(1));
        let batch = usage.take();

        // Act
        usage.record(id, None, at(5));
        usage.put_back(&batch);
        let again = usage.take();

        // Assert
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].count, 2);
        assert_eq!(again[0].last_used_at, at(5));
        assert_eq!(again[0].ips, batch[0].ips);
    }
}
