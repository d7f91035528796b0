//! The uses answered from the verdict cache and not reported yet.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use uuid::Uuid;

use crate::cache::FoldState;

/// Per token: uses, and the latest (a monotonic instant: the caller has one at hand, and
/// turning it into wall-clock time waits for the report).
pub(crate) type Uses = HashMap<Uuid, (i64, Instant), FoldState>;

/// Shards of [`UsageCounts`]: more than the request threads of most services.
const SHARDS: usize = 16;

/// One shard on cache lines of its own, so two threads counting in neighbouring shards do not
/// pull the same line back and forth.
#[repr(align(128))]
#[derive(Default)]
struct Shard(Mutex<Uses>);

/// Verifications per token (count, latest use), counted by the request threads and taken by
/// the usage report. Each thread counts in a shard of its own (threads beyond [`SHARDS`]
/// share), so counting takes an uncontended lock instead of one lock every thread wants.
/// At most `max_tokens` tokens are held in all (spread over the shards); beyond, a new token's
/// uses are dropped.
pub(crate) struct UsageCounts {
    shards: Box<[Shard]>,
    per_shard: usize,
}

/// The shard of the calling thread, fixed at its first count.
fn my_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    MINE.with(|s| *s)
}

impl UsageCounts {
    pub(crate) fn new(max_tokens: usize) -> Self {
        UsageCounts {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            per_shard: max_tokens.div_ceil(SHARDS).max(1),
        }
    }

    /// Adds `count` uses of `token_id`, the latest at `at`.
    pub(crate) fn add(&self, token_id: Uuid, count: i64, at: Instant) {
        let mut shard = self.shards[my_shard()]
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if shard.len() >= self.per_shard && !shard.contains_key(&token_id) {
            return;
        }
        let e = shard.entry(token_id).or_insert((0, at));
        e.0 += count;
        e.1 = e.1.max(at);
    }

    /// Everything counted so far, per token (the shards merged); the counts start again at zero.
    pub(crate) fn take(&self) -> Uses {
        let mut all = Uses::default();
        for shard in &self.shards {
            let taken = std::mem::take(&mut *shard.0.lock().unwrap_or_else(|e| e.into_inner()));
            for (id, (count, at)) in taken {
                let e = all.entry(id).or_insert((0, at));
                e.0 += count;
                e.1 = e.1.max(at);
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Instant {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *START.get_or_init(Instant::now) + std::time::Duration::from_secs(secs)
    }

    #[test]
    fn counts_from_many_threads_add_up_per_token_with_the_latest_use() {
        let counts = std::sync::Arc::new(UsageCounts::new(100));
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let counts = counts.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        counts.add(a, 1, at(i));
                    }
                    counts.add(b, 2, at(5000 + t));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }

        let taken = counts.take();

        assert_eq!(taken[&a], (8000, at(999)));
        assert_eq!(taken[&b], (16, at(5007)));
        assert!(counts.take().is_empty(), "taking empties the counts");
    }

    #[test]
    fn beyond_the_limit_a_new_token_is_dropped_and_a_known_one_still_counts() {
        let counts = UsageCounts::new(1);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());

        counts.add(a, 1, at(1));
        counts.add(b, 1, at(2));
        counts.add(a, 1, at(3));

        let taken = counts.take();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[&a], (2, at(3)));
    }
}
