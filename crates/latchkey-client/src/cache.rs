//! The middleware's cache of verdicts: pure logic, no I/O, time passed in.
//!
//! Keys are a 128-bit keyed hash of the required scopes and the bearer's bytes (SipHash-1-3,
//! a keyed pseudo-random function, with a random key drawn at start, over the scopes and the
//! bearer, each with its length, finished twice: after the bearer, and after one more byte), so
//! the cache never holds a token. The hash key never leaves the process, so nobody outside can
//! aim two tokens at one cache key, and by chance two of a million cached keys collide with
//! odds of about 2^-88. SHA-256 did the same job at several times the cost on every request.
//!
//! The cache is used only while the change stream is up (`live`). Every invalidation bumps an
//! epoch before and after it runs, and a fill during which the epoch moved (checked after its
//! insert) is taken back: the answer it holds may predate the change, so it serves its own
//! request only.
//!
//! In front of the shared cache, each thread keeps copies of the answers it served lately
//! (`near`: direct-mapped slots, a copy taken at a key's second use in a row), valid only while
//! the epoch has not moved since they were copied. A hit there takes no lock and writes no
//! memory another thread reads: with every thread serving the same few tokens, the shared
//! cache's lock and the answers' reference counts bounced between the CPUs on every request.
//! Any invalidation, of any token, voids every thread's copies.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use uuid::Uuid;

use crate::types::Verified;

/// A cache key: the keyed hash of (required scopes, token).
pub(crate) type Key = [u64; 2];

/// The process's hash key, drawn once.
fn hash_key() -> &'static RandomState {
    static KEY: OnceLock<RandomState> = OnceLock::new();
    KEY.get_or_init(RandomState::new)
}

/// A hasher for keys that are random already (a [`Key`], a token id the server drew): it
/// folds their bytes instead of hashing them again. Only for maps whose keys nobody outside
/// can choose.
#[derive(Default)]
pub(crate) struct Fold(u64);

impl Hasher for Fold {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(word);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.rotate_left(29) ^ n;
    }

    fn write_usize(&mut self, _len: usize) {
        // Only the length prefix of a slice or array: always the same here.
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type FoldState = BuildHasherDefault<Fold>;

/// What the server said about a token, as the cache keeps it.
#[derive(Debug, Clone)]
pub(crate) enum Verdict {
    /// Live and holding the required scopes.
    Allowed(Verified),
    /// Live, lacking a required scope.
    Forbidden { token_id: Uuid },
    /// Invalid: unknown, revoked, expired, disabled.
    Refused,
}

impl Verdict {
    /// A copy sharing no reference count with `self`, for one thread's own use.
    fn detached(&self) -> Verdict {
        match self {
            Verdict::Allowed(v) => Verdict::Allowed(Verified {
                scopes: Arc::from(v.scopes.to_vec()),
                ..v.clone()
            }),
            other => other.clone(),
        }
    }

    fn token_id(&self) -> Option<Uuid> {
        match self {
            Verdict::Allowed(v) => Some(v.token_id),
            Verdict::Forbidden { token_id } => Some(*token_id),
            Verdict::Refused => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    verdict: Verdict,
    until: Instant,
}

/// The scopes a route requires, sorted and deduplicated, with the hasher of the key prefix.
#[derive(Clone)]
pub(crate) struct Requirement {
    pub(crate) scopes: Vec<String>,
    prefix: DefaultHasher,
}

impl Requirement {
    pub(crate) fn new<S: AsRef<str>>(scopes: &[S]) -> Self {
        let mut scopes: Vec<String> = scopes.iter().map(|s| s.as_ref().to_string()).collect();
        scopes.sort();
        scopes.dedup();
        let mut prefix = hash_key().build_hasher();
        // Lengths first, so ("ab", "c") and ("a", "bc") differ.
        prefix.write_u64(scopes.len() as u64);
        for s in &scopes {
            prefix.write_u64(s.len() as u64);
            prefix.write(s.as_bytes());
        }
        Requirement { scopes, prefix }
    }

    /// The key of `token` under this requirement: the keyed hash's values at (prefix, length,
    /// token) and (prefix, length, token, 0xFF). Scopes and token are each encoded with their
    /// lengths, so no input is the beginning of another: two keys are equal only if the hash
    /// collides twice, and one key's halves never share an input with another key's.
    pub(crate) fn key(&self, token: &[u8]) -> Key {
        let mut h = self.prefix.clone();
        h.write_u64(token.len() as u64);
        h.write(token);
        let first = h.finish();
        h.write_u8(0xFF);
        [first, h.finish()]
    }
}

/// Slots of a thread's `near` copies, over all caches (a power of two).
const NEAR_SLOTS: usize = 1024;

/// One slot of a thread's `near` copies: the key last served through it, and once served twice
/// in a row, a copy of its answer. Copying on the second use keeps a thread that serves many
/// more tokens than it has slots from copying (allocating) on every request for nothing.
struct NearSlot {
    /// The [`VerdictCache::id`] of the cache served from.
    cache: u64,
    key: Key,
    /// The copy and the epoch read before it was taken; `None` after the first use.
    copy: Option<(u64, Entry)>,
}

thread_local! {
    static NEAR: RefCell<Vec<Option<NearSlot>>> = const { RefCell::new(Vec::new()) };
}

fn near_slot(key: &Key) -> usize {
    // The key is a keyed hash: its low bits are as good as any.
    key[0] as usize & (NEAR_SLOTS - 1)
}

type Shared<V> = quick_cache::sync::Cache<
    Key,
    V,
    quick_cache::UnitWeighter,
    FoldState,
    quick_cache::sync::DefaultLifecycle<Key, V>,
>;

fn shared<V: Clone>(capacity: usize) -> Shared<V> {
    quick_cache::sync::Cache::with(
        capacity,
        capacity as u64,
        quick_cache::UnitWeighter,
        FoldState::default(),
        quick_cache::sync::DefaultLifecycle::default(),
    )
}

pub(crate) struct VerdictCache {
    /// Tells this cache's `near` copies from another's.
    id: u64,
    /// Answers about genuine tokens (allowed or forbidden), indexed by token id below.
    tokens: Shared<Entry>,
    /// Refusals: nothing ties them to a token id.
    refusals: Shared<Instant>,
    index: Mutex<HashMap<Uuid, Vec<Key>>>,
    capacity: usize,
    epoch: AtomicU64,
    live: AtomicBool,
}

impl VerdictCache {
    pub(crate) fn new(capacity: usize) -> Self {
        static IDS: AtomicU64 = AtomicU64::new(0);
        let capacity = capacity.max(1);
        VerdictCache {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            tokens: shared(capacity),
            refusals: shared(capacity),
            index: Mutex::new(HashMap::new()),
            capacity,
            epoch: AtomicU64::new(0),
            live: AtomicBool::new(false),
        }
    }

    /// Whether the change stream is up, so answers may be cached and served.
    pub(crate) fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    /// The stream is up (its first message is in) or down: down drops everything.
    pub(crate) fn set_live(&self, live: bool) {
        if live {
            self.bump();
            self.live.store(true, Ordering::SeqCst);
        } else {
            self.live.store(false, Ordering::SeqCst);
            self.clear();
        }
    }

    /// Read before asking the server; handed back to [`Self::fill`].
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Runs `drop`, an invalidation, between two bumps of the epoch: the first voids the fills
    /// in flight, the second the `near` copies taken while `drop` ran (a copy taken after the
    /// first bump may hold an entry `drop` had not removed yet).
    fn invalidate(&self, drop: impl FnOnce()) {
        self.bump();
        drop();
        self.bump();
    }

    /// The cached verdict for `key`, if the stream is up and it has not run out.
    pub(crate) fn get(&self, key: &Key, now: Instant) -> Option<Verdict> {
        if !self.is_live() {
            return None;
        }
        let epoch = self.epoch();
        if let Some(v) = self.near(key, epoch, now) {
            return Some(v);
        }
        if let Some(e) = self.tokens.get(key) {
            if e.until > now {
                self.keep_near(*key, &e, epoch);
                return Some(e.verdict);
            }
            self.tokens.remove(key);
        }
        if let Some(until) = self.refusals.get(key) {
            if until > now {
                return Some(Verdict::Refused);
            }
            self.refusals.remove(key);
        }
        None
    }

    /// This thread's copy of the answer for `key`, if taken at `epoch` and not run out.
    fn near(&self, key: &Key, epoch: u64, now: Instant) -> Option<Verdict> {
        NEAR.try_with(|near| {
            let near = near.borrow();
            let slot = near.get(near_slot(key))?.as_ref()?;
            let (copied_at, entry) = slot.copy.as_ref()?;
            (slot.cache == self.id && slot.key == *key && *copied_at == epoch && entry.until > now)
                .then(|| entry.verdict.clone())
        })
        .ok()
        .flatten()
    }

    /// Notes that this thread served `entry` for `key` from the shared cache; the second time in
    /// a row, keeps a copy of its own.
    fn keep_near(&self, key: Key, entry: &Entry, epoch: u64) {
        let _ = NEAR.try_with(|near| {
            let mut near = near.borrow_mut();
            if near.is_empty() {
                near.resize_with(NEAR_SLOTS, || None);
            }
            let slot = &mut near[near_slot(&key)];
            let again = slot
                .as_ref()
                .is_some_and(|s| s.cache == self.id && s.key == key);
            let copy = again.then(|| {
                let verdict = entry.verdict.detached();
                (
                    epoch,
                    Entry {
                        verdict,
                        until: entry.until,
                    },
                )
            });
            *slot = Some(NearSlot {
                cache: self.id,
                key,
                copy,
            });
        });
    }

    /// Keeps the server's answer until `until`, unless the stream is down or anything was
    /// invalidated since `epoch` was read. Answers whether it is kept.
    pub(crate) fn fill(&self, key: Key, verdict: Verdict, until: Instant, epoch: u64) -> bool {
        if !self.is_live() || self.epoch() != epoch {
            return false;
        }
        match verdict.token_id() {
            Some(id) => {
                {
                    let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
                    let keys = index.entry(id).or_default();
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                    if index.len() > 2 * self.capacity + 1024 {
                        self.prune(&mut index);
                    }
                }
                self.tokens.insert(key, Entry { verdict, until });
                // An invalidation that ran between the check above and the insert either
                // found the key in the index (and removed an entry not there yet) or bumped
                // the epoch first: either way, take the entry back.
                if self.epoch() != epoch || !self.is_live() {
                    self.tokens.remove(&key);
                    return false;
                }
            }
            None => {
                self.refusals.insert(key, until);
                if self.epoch() != epoch || !self.is_live() {
                    self.refusals.remove(&key);
                    return false;
                }
            }
        }
        true
    }

    /// Index entries whose keys the cache evicted.
    fn prune(&self, index: &mut HashMap<Uuid, Vec<Key>>) {
        index.retain(|_, keys| {
            keys.retain(|k| self.tokens.contains_key(k));
            !keys.is_empty()
        });
    }

    /// Drops every answer about token `id`.
    pub(crate) fn invalidate_token(&self, id: Uuid) {
        self.invalidate(|| {
            let keys = self
                .index
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            for k in keys.into_iter().flatten() {
                self.tokens.remove(&k);
            }
        });
    }

    /// Drops every refusal (a token may have become valid).
    pub(crate) fn drop_refusals(&self) {
        self.invalidate(|| self.refusals.clear());
    }

    /// Drops everything.
    pub(crate) fn clear(&self) {
        self.invalidate(|| {
            self.index.lock().unwrap_or_else(|e| e.into_inner()).clear();
            self.tokens.clear();
            self.refusals.clear();
        });
    }

    #[cfg(test)]
    fn indexed(&self) -> usize {
        self.index.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn allowed(id: Uuid) -> Verdict {
        Verdict::Allowed(Verified {
            token_id: id,
            org_id: Uuid::nil(),
            permissions: 0,
            scopes: Arc::from(vec!["runs:read".to_string()]),
            expires_at: None,
        })
    }

    fn live_cache() -> VerdictCache {
        let c = VerdictCache::new(100);
        c.set_live(true);
        c
    }

    const TTL: Duration = Duration::from_secs(30);

    /// `c` holding an answer about token `id` (string "t", no scope required): its key, and now.
    fn filled(c: &VerdictCache, id: Uuid) -> (Key, Instant) {
        let key = Requirement::new::<&str>(&[]).key(b"t");
        let now = Instant::now();
        assert!(c.fill(key, allowed(id), now + TTL, c.epoch()));
        (key, now)
    }

    #[test]
    fn nothing_is_kept_or_served_while_the_stream_is_down() {
        // Arrange
        let c = VerdictCache::new(100);
        let key = Requirement::new::<&str>(&[]).key(b"t");
        let now = Instant::now();

        // Act
        let kept = c.fill(key, allowed(Uuid::now_v7()), now + TTL, c.epoch());

        // Assert
        assert!(!kept);
        c.set_live(true);
        assert!(c.get(&key, now).is_none());
    }

    #[test]
    fn a_kept_answer_is_served_until_it_runs_out() {
        let c = live_cache();
        let key = Requirement::new(&["runs:read"]).key(b"t");
        let now = Instant::now();
        assert!(c.fill(key, allowed(Uuid::now_v7()), now + TTL, c.epoch()));
        assert!(matches!(c.get(&key, now), Some(Verdict::Allowed(_))));
        assert!(c.get(&key, now + TTL).is_none());
    }

    #[test]
    fn going_down_drops_everything_and_stops_serving() {
        let c = live_cache();
        let key = Requirement::new::<&str>(&[]).key(b"t");
        let now = Instant::now();
        assert!(c.fill(key, allowed(Uuid::now_v7()), now + TTL, c.epoch()));
        c.set_live(false);
        c.set_live(true);
        assert!(c.get(&key, now).is_none());
    }

    #[test]
    fn a_change_drops_every_answer_about_that_token_and_only_those() {
        // Arrange: one token under two requirements, and another token.
        let c = live_cache();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let now = Instant::now();
        let k1 = Requirement::new::<&str>(&[]).key(b"a");
        let k2 = Requirement::new(&["runs:write"]).key(b"a");
        let k3 = Requirement::new::<&str>(&[]).key(b"b");
        assert!(c.fill(k1, allowed(a), now + TTL, c.epoch()));
        assert!(c.fill(k2, Verdict::Forbidden { token_id: a }, now + TTL, c.epoch()));
        assert!(c.fill(k3, allowed(b), now + TTL, c.epoch()));

        // Act
        c.invalidate_token(a);

        // Assert
        assert!(c.get(&k1, now).is_none());
        assert!(c.get(&k2, now).is_none());
        assert!(matches!(c.get(&k3, now), Some(Verdict::Allowed(_))));
    }

    #[test]
    fn a_change_voids_the_copies_a_thread_took_of_that_answer() {
        // Arrange: this thread served the answer twice, so it holds its own copy.
        let c = live_cache();
        let id = Uuid::now_v7();
        let (key, now) = filled(&c, id);
        assert!(c.get(&key, now).is_some());
        assert!(c.get(&key, now).is_some());

        // Act
        c.invalidate_token(id);

        // Assert
        assert!(c.get(&key, now).is_none());
    }

    #[test]
    fn a_copy_taken_while_a_change_runs_is_void_once_it_has_run() {
        // Arrange: the change has bumped the epoch but not removed the entry yet, and a
        // request copies the entry meanwhile.
        let c = live_cache();
        let id = Uuid::now_v7();
        let (key, now) = filled(&c, id);
        assert!(c.get(&key, now).is_some());
        let mut copied = false;

        // Act
        c.invalidate(|| {
            copied = c.get(&key, now).is_some();
            c.tokens.remove(&key);
        });

        // Assert
        assert!(copied, "the entry was still there while the change ran");
        assert!(c.get(&key, now).is_none());
    }

    #[test]
    fn a_thread_copies_an_answer_at_its_second_use_in_a_row() {
        // Arrange
        let c = live_cache();
        let (once, twice) = (
            Requirement::new::<&str>(&[]).key(b"once"),
            Requirement::new::<&str>(&[]).key(b"twice"),
        );
        let now = Instant::now();
        for key in [once, twice] {
            assert!(c.fill(key, allowed(Uuid::now_v7()), now + TTL, c.epoch()));
        }

        // Act: served once and twice, then gone from the shared cache (evicted).
        assert!(c.get(&once, now).is_some());
        assert!(c.get(&twice, now).is_some());
        assert!(c.get(&twice, now).is_some());
        c.tokens.remove(&once);
        c.tokens.remove(&twice);

        // Assert: only the answer used twice is still at hand, from this thread's copy.
        assert!(c.get(&once, now).is_none());
        assert!(c.get(&twice, now).is_some());
        let elsewhere = std::thread::scope(|t| t.spawn(|| c.get(&twice, now).is_some()).join());
        assert!(!elsewhere.unwrap(), "another thread has no copy");
    }

    #[test]
    fn copies_of_one_cache_do_not_answer_for_another() {
        let (a, b) = (live_cache(), live_cache());
        let key = Requirement::new::<&str>(&[]).key(b"t");
        let now = Instant::now();
        assert!(a.fill(key, allowed(Uuid::now_v7()), now + TTL, a.epoch()));
        assert!(a.get(&key, now).is_some());
        assert!(a.get(&key, now).is_some());
        assert!(b.get(&key, now).is_none());
    }

    #[test]
    fn a_copy_runs_out_with_its_answer() {
        let c = live_cache();
        let key = Requirement::new::<&str>(&[]).key(b"t");
        let now = Instant::now();
        assert!(c.fill(key, allowed(Uuid::now_v7()), now + TTL, c.epoch()));
        assert!(c.get(&key, now).is_some());
        assert!(c.get(&key, now).is_some());
        assert!(c.get(&key, now + TTL).is_none());
    }

    #[test]
    fn an_answer_read_before_a_change_is_not_kept() {
        // Arrange: the epoch is read before asking the server.
        let c = live_cache();
        let id = Uuid::now_v7();
        let key = Requirement::new::<&str>(&[]).key(b"t");
        let epoch = c.epoch();

        // Act: the token changes while the server's answer is on its way.
        c.invalidate_token(id);
        let kept = c.fill(key, allowed(id), Instant::now() + TTL, epoch);

        // Assert
        assert!(!kept);
        assert!(c.get(&key, Instant::now()).is_none());
    }

    #[test]
    fn refusals_are_dropped_by_a_change_that_may_admit_and_answers_stay() {
        let c = live_cache();
        let now = Instant::now();
        let bad = Requirement::new::<&str>(&[]).key(b"garbage");
        let good = Requirement::new::<&str>(&[]).key(b"good");
        assert!(c.fill(
            bad,
            Verdict::Refused,
            now + Duration::from_secs(2),
            c.epoch()
        ));
        assert!(c.fill(good, allowed(Uuid::now_v7()), now + TTL, c.epoch()));
        assert!(matches!(c.get(&bad, now), Some(Verdict::Refused)));

        c.drop_refusals();

        assert!(c.get(&bad, now).is_none());
        assert!(c.get(&good, now).is_some());
    }

    #[test]
    fn keys_differ_by_token_and_by_required_scopes_in_any_order() {
        let a = Requirement::new(&["x", "y"]);
        let b = Requirement::new(&["y", "x", "x"]);
        let c = Requirement::new(&["x"]);
        assert_eq!(a.key(b"t"), b.key(b"t"));
        assert_ne!(a.key(b"t"), c.key(b"t"));
        assert_ne!(a.key(b"t"), a.key(b"u"));
        // Scope names cannot run into the token: ["ab"] + "c" is not ["a"] + "bc".
        assert_ne!(
            Requirement::new(&["ab"]).key(b"c"),
            Requirement::new(&["a"]).key(b"bc")
        );
    }

    #[test]
    fn the_token_index_stays_bounded_when_the_cache_evicts() {
        let c = VerdictCache::new(10);
        c.set_live(true);
        let now = Instant::now();
        for i in 0..5_000 {
            let key = Requirement::new::<&str>(&[]).key(format!("t{i}").as_bytes());
            c.fill(key, allowed(Uuid::now_v7()), now + TTL, c.epoch());
        }
        assert!(c.indexed() <= 2 * 10 + 1024 + 1, "{}", c.indexed());
    }
}
