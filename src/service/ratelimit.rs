//! Rate limits (governor): minting per client IP and per calling token, management calls per
//! client IP, failed Argon2id checks per client IP and per token id, and leaked-token reports
//! per client IP. Each
//! answers `rate_limited` with a retry time and counts `latchkey_rate_limited_total{limit}`.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::{Quota, RateLimiter};

use crate::error::Error;

/// Limits as configured; 0 disables a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Tokens minted (created or rotated) by people (sessions, password exchanges) per hour per
    /// client IP.
    pub mint_per_hour: u32,
    /// Tokens minted by a token per hour, per calling token.
    pub mint_per_token_per_hour: u32,
    /// Sign-ins (password exchanges, console sign-ins, setup links) per 15 minutes per client IP,
    /// counted before any hash is computed.
    pub login_per_15m: u32,
    /// Management requests (everything but verification) per second per client IP.
    pub management_per_second: u32,
    /// Burst of management requests per client IP.
    pub management_burst: u32,
    /// Failed Argon2id checks (verifications and bearer authentications) per minute, per client
    /// IP and per token id.
    pub failed_verify_per_minute: u32,
    /// Leaked-token reports per minute per client IP.
    pub leaked_reports_per_minute: u32,
    /// How long a verification or bearer authentication refused by the failed-verification
    /// limit waits before its answer is sent.
    pub refusal_delay: Duration,
    /// Most refusals waiting at once; beyond it a refusal is answered at once.
    pub max_held_refusals: usize,
}

impl RateLimitConfig {
    /// Every limit off (the library default; the server's flags set real ones).
    pub const DISABLED: RateLimitConfig = RateLimitConfig {
        mint_per_hour: 0,
        mint_per_token_per_hour: 0,
        login_per_15m: 0,
        management_per_second: 0,
        management_burst: 0,
        failed_verify_per_minute: 0,
        leaked_reports_per_minute: 0,
        refusal_delay: Duration::ZERO,
        max_held_refusals: 0,
    };
}

/// The shortest retry time a refusal names.
const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

type Keyed<K, C> = RateLimiter<
    K,
    governor::state::keyed::DefaultKeyedStateStore<K>,
    C,
    governor::middleware::NoOpMiddleware<<C as Clock>::Instant>,
>;

/// One keyed limit with its metric label.
pub struct Limiter<K: Hash + Eq + Clone, C: Clock = DefaultClock> {
    label: &'static str,
    inner: Keyed<K, C>,
    clock: C,
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> Limiter<K, C> {
    /// `None` when the quota is 0 (the limit is off).
    pub fn new(label: &'static str, quota: Option<Quota>, clock: C) -> Option<Self> {
        quota.map(|q| Self {
            label,
            inner: RateLimiter::dashmap_with_clock(q, clock.clone()),
            clock,
        })
    }

    /// Takes one cell for `key`, or fails with `rate_limited` and the time until the next one.
    ///
    /// # Errors
    /// `Error::RateLimited` with the retry time (at least one second).
    pub fn take(&self, key: &K) -> Result<(), Error> {
        self.inner.check_key(key).map_err(|not_until| {
            metrics::counter!("latchkey_rate_limited_total", "limit" => self.label).increment(1);
            let wait = not_until.wait_time_from(self.clock.now());
            Error::RateLimited {
                retry_after: wait.max(MIN_RETRY_AFTER),
            }
        })
    }

    /// Forgets keys whose limit has fully recovered, so memory follows the active clients.
    pub fn housekeeping(&self) {
        self.inner.retain_recent();
        self.inner.shrink_to_fit();
    }
}

/// Failed Argon2id checks per key (a client address, or a token id). Failures take cells; once
/// a key is out of cells, Argon2id checks for it are refused until the next cell. Nothing else
/// consults it: cache hits, SHA-256 comparisons, malformed tokens and unknown ids (a batched
/// database read, then remembered as missing) cost too little to be worth refusing, so a client
/// sending garbage through a shared gateway address denies no one behind it.
///
/// A key that ran out stays on probation for [`PROBATION`] after its block ends: each costly
/// attempt then takes a cell before it runs. Otherwise every connection of an attacker would
/// start an Argon2id check the moment the block ends, before the first failure blocks it again
/// (32 connections: 32 checks a second instead of one).
pub struct FailureLimiter<K: Hash + Eq + Clone = IpAddr, C: Clock = DefaultClock> {
    limiter: Limiter<K, C>,
    blocked: quick_cache::sync::Cache<K, C::Instant>,
}

/// How long a client stays on probation after its block ends: the time a per-minute quota takes
/// to refill.
const PROBATION: Duration = Duration::from_secs(60);

impl<K, C> FailureLimiter<K, C>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    C: Clock + Clone,
    C::Instant: Send + Sync + 'static,
{
    pub fn new(label: &'static str, per_minute: u32, clock: C) -> Option<Self> {
        Limiter::new(label, per_minute_quota(per_minute), clock).map(|limiter| Self {
            limiter,
            blocked: quick_cache::sync::Cache::new(10_000),
        })
    }

    /// Records a failure of `key`.
    pub fn failed(&self, key: &K) {
        if let Err(e) = self.limiter.inner.check_key(key) {
            self.blocked.insert(key.clone(), e.earliest_possible());
        }
    }

    /// Whether `key` may do costly verification work now.
    ///
    /// # Errors
    /// `Error::RateLimited` while the key is out of cells.
    pub fn allow_costly(&self, key: &K) -> Result<(), Error> {
        let Some(mut until) = self.blocked.get(key) else {
            return Ok(());
        };
        let now = self.limiter.clock.now();
        if until <= now {
            if Duration::from(now.duration_since(until)) >= PROBATION {
                self.blocked.remove(key);
                return Ok(());
            }
            match self.limiter.inner.check_key(key) {
                Ok(()) => return Ok(()),
                Err(not_until) => {
                    until = not_until.earliest_possible();
                    self.blocked.insert(key.clone(), until);
                }
            }
        }
        metrics::counter!("latchkey_rate_limited_total", "limit" => self.limiter.label)
            .increment(1);
        let wait: Duration = until.duration_since(now).into();
        Err(Error::RateLimited {
            retry_after: wait.max(MIN_RETRY_AFTER),
        })
    }

    pub fn housekeeping(&self) {
        self.limiter.housekeeping();
    }
}

fn nz(n: u32) -> Option<NonZeroU32> {
    NonZeroU32::new(n)
}

pub fn per_hour_quota(n: u32) -> Option<Quota> {
    nz(n).map(Quota::per_hour)
}

/// `n` at once, then one every `15 min / n`.
pub fn per_15_minutes_quota(n: u32) -> Option<Quota> {
    nz(n).and_then(|n| {
        Quota::with_period(Duration::from_secs(900) / n.get()).map(|q| q.allow_burst(n))
    })
}

pub fn per_minute_quota(n: u32) -> Option<Quota> {
    nz(n).map(Quota::per_minute)
}

pub fn per_second_quota(n: u32, burst: u32) -> Option<Quota> {
    nz(n).map(|r| Quota::per_second(r).allow_burst(nz(burst).unwrap_or(r)))
}

/// Holds a refusal of the failed-verification limit for a while before it is answered. A
/// client past its limit that retries in a loop (a guessing attack) then sends a few requests
/// a second per HTTP/1.1 connection instead of thousands, and the CPU it would have taken
/// answers valid traffic. Held answers cost a timer each and count against the node's
/// in-flight bound, so at most `max_held` wait at once; the rest are answered at once.
pub struct RefusalDelay {
    delay: Duration,
    max_held: usize,
    held: AtomicUsize,
}

impl RefusalDelay {
    /// `delay` zero (or `max_held` zero): refusals are answered at once.
    pub fn new(delay: Duration, max_held: usize) -> Self {
        Self {
            delay,
            max_held,
            held: AtomicUsize::new(0),
        }
    }

    /// Waits the delay, unless `max_held` refusals already wait; returns how long it waited.
    pub async fn hold(&self) -> Duration {
        if self.delay.is_zero() {
            return Duration::ZERO;
        }
        struct Place<'a>(&'a AtomicUsize);
        impl Drop for Place<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let taken = self.held.fetch_add(1, Ordering::Relaxed);
        // Given back on drop, so a client that hangs up frees its place.
        let place = Place(&self.held);
        if taken >= self.max_held {
            return Duration::ZERO;
        }
        tokio::time::sleep(self.delay).await;
        drop(place);
        self.delay
    }

    /// Answers `refused` after [`Self::hold`], its retry time shortened by the wait.
    pub async fn refuse(&self, refused: Error) -> Error {
        let held = self.hold().await;
        match refused {
            Error::RateLimited { retry_after } => Error::RateLimited {
                retry_after: retry_after.saturating_sub(held).max(MIN_RETRY_AFTER),
            },
            other => other,
        }
    }
}

/// Every limiter of a node.
pub struct RateLimits {
    pub login: Option<Limiter<IpAddr>>,
    pub mint_per_ip: Option<Limiter<IpAddr>>,
    pub mint_per_token: Option<Limiter<String>>,
    pub management: Option<Limiter<IpAddr>>,
    /// Failed Argon2id checks per client address.
    pub failed_verify: Option<FailureLimiter<IpAddr>>,
    /// Failed Argon2id checks per token id: a guesser slows down only the token it guesses at.
    pub failed_guess: Option<FailureLimiter<uuid::Uuid>>,
    pub leaked: Option<Limiter<IpAddr>>,
    pub refusal_delay: RefusalDelay,
}

impl RateLimits {
    pub fn new(cfg: &RateLimitConfig) -> Self {
        let clock = DefaultClock::default();
        Self {
            login: Limiter::new(
                "login",
                per_15_minutes_quota(cfg.login_per_15m),
                clock.clone(),
            ),
            mint_per_ip: Limiter::new("mint_ip", per_hour_quota(cfg.mint_per_hour), clock.clone()),
            mint_per_token: Limiter::new(
                "mint_token",
                per_hour_quota(cfg.mint_per_token_per_hour),
                clock.clone(),
            ),
            management: Limiter::new(
                "management",
                per_second_quota(cfg.management_per_second, cfg.management_burst),
                clock.clone(),
            ),
            failed_verify: FailureLimiter::new(
                "failed_verify",
                cfg.failed_verify_per_minute,
                clock.clone(),
            ),
            failed_guess: FailureLimiter::new(
                "failed_guess",
                cfg.failed_verify_per_minute,
                clock.clone(),
            ),
            leaked: Limiter::new(
                "leaked_report",
                per_minute_quota(cfg.leaked_reports_per_minute),
                clock,
            ),
            refusal_delay: RefusalDelay::new(cfg.refusal_delay, cfg.max_held_refusals),
        }
    }

    pub fn housekeeping(&self) {
        for l in [
            &self.login,
            &self.mint_per_ip,
            &self.management,
            &self.leaked,
        ]
        .into_iter()
        .flatten()
        {
            l.housekeeping();
        }
        if let Some(l) = &self.mint_per_token {
            l.housekeeping();
        }
        if let Some(l) = &self.failed_verify {
            l.housekeeping();
        }
        if let Some(l) = &self.failed_guess {
            l.housekeeping();
        }
    }
}

/// The metric labels, so every limit shows in `/metrics` from the start.
pub const LABELS: [&str; 8] = [
    "login",
    "mint_ip",
    "mint_token",
    "management",
    "failed_verify",
    "failed_guess",
    "leaked_report",
    "argon2_queue",
];

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn a_limit_trips_at_its_quota_says_when_to_retry_and_recovers() {
        let clock = FakeRelativeClock::default();
        let l = Limiter::new("mint_ip", per_hour_quota(10), clock.clone()).unwrap();
        for _ in 0..10 {
            l.take(&ip(1)).unwrap();
        }
        let Err(Error::RateLimited { retry_after }) = l.take(&ip(1)) else {
            panic!("the 11th mint in an hour must be refused");
        };
        assert_eq!(retry_after, Duration::from_secs(360));
        assert!(l.take(&ip(2)).is_ok(), "another client is not affected");
        clock.advance(Duration::from_secs(360));
        assert!(l.take(&ip(1)).is_ok(), "one cell back after 6 minutes");
        assert!(l.take(&ip(1)).is_err());
    }

    #[test]
    fn the_login_limit_allows_five_in_fifteen_minutes_then_one_every_three() {
        let clock = FakeRelativeClock::default();
        let l = Limiter::new("login", per_15_minutes_quota(5), clock.clone()).unwrap();
        for _ in 0..5 {
            l.take(&ip(1)).unwrap();
        }
        let Err(Error::RateLimited { retry_after }) = l.take(&ip(1)) else {
            panic!("the 6th sign-in must be refused");
        };
        assert_eq!(retry_after, Duration::from_secs(180));
        clock.advance(Duration::from_secs(180));
        assert!(l.take(&ip(1)).is_ok());
        assert!(l.take(&ip(1)).is_err());
    }

    #[test]
    fn a_zero_quota_disables_the_limit() {
        assert!(
            Limiter::<IpAddr, _>::new("x", per_hour_quota(0), FakeRelativeClock::default())
                .is_none()
        );
        assert!(FailureLimiter::<IpAddr, _>::new("x", 0, FakeRelativeClock::default()).is_none());
    }

    #[test]
    fn the_management_limit_allows_its_burst_then_its_rate() {
        let clock = FakeRelativeClock::default();
        let l = Limiter::new("management", per_second_quota(50, 100), clock.clone()).unwrap();
        for _ in 0..100 {
            l.take(&ip(1)).unwrap();
        }
        assert!(l.take(&ip(1)).is_err());
        clock.advance(Duration::from_millis(20));
        assert!(l.take(&ip(1)).is_ok());
    }

    #[test]
    fn failures_block_costly_work_only_after_the_quota_and_only_until_the_next_cell() {
        let clock = FakeRelativeClock::default();
        let f = FailureLimiter::new("failed_verify", 3, clock.clone()).unwrap();
        for _ in 0..3 {
            f.failed(&ip(1));
            assert!(f.allow_costly(&ip(1)).is_ok());
        }
        f.failed(&ip(1));
        let Err(Error::RateLimited { retry_after }) = f.allow_costly(&ip(1)) else {
            panic!("a client past its failures must be refused costly work");
        };
        assert_eq!(retry_after, Duration::from_secs(20));
        assert!(f.allow_costly(&ip(2)).is_ok());
        clock.advance(Duration::from_secs(20));
        assert!(f.allow_costly(&ip(1)).is_ok());
    }

    #[test]
    fn after_a_block_ends_concurrent_costly_attempts_of_that_client_take_a_cell_each() {
        // Arrange: a client out of cells, its block just over.
        let clock = FakeRelativeClock::default();
        let f = FailureLimiter::new("failed_verify", 3, clock.clone()).unwrap();
        for _ in 0..4 {
            f.failed(&ip(1));
        }
        clock.advance(Duration::from_secs(20));

        // Act: five attempts at once, before any of them has failed.
        let allowed = (0..5).filter(|_| f.allow_costly(&ip(1)).is_ok()).count();
        clock.advance(Duration::from_secs(20));
        let next_cell = f.allow_costly(&ip(1));
        clock.advance(PROBATION * 2);
        let after_probation = (0..5).filter(|_| f.allow_costly(&ip(1)).is_ok()).count();

        // Assert
        assert_eq!(allowed, 1, "one cell came back, so one costly attempt runs");
        assert!(next_cell.is_ok());
        assert_eq!(
            after_probation, 5,
            "a client that stopped failing is trusted again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_waits_the_delay_unless_the_held_ones_are_at_their_bound() {
        // Arrange: one place.
        let delay = std::sync::Arc::new(RefusalDelay::new(Duration::from_millis(100), 1));
        let started = tokio::time::Instant::now();

        // Act: one refusal holds the place; a second arrives while it waits.
        let first = tokio::spawn({
            let delay = delay.clone();
            async move {
                let waited = delay.hold().await;
                (started.elapsed(), waited)
            }
        });
        tokio::task::yield_now().await;
        let second_waited = delay.hold().await;
        let second = started.elapsed();
        let (first, first_waited) = first.await.unwrap();
        // The place is free again.
        let third_started = tokio::time::Instant::now();
        delay.hold().await;
        let third = third_started.elapsed();

        // Assert
        assert_eq!((second, second_waited), (Duration::ZERO, Duration::ZERO));
        assert_eq!(first, Duration::from_millis(100));
        assert_eq!(first_waited, Duration::from_millis(100));
        assert_eq!(third, Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_dropped_while_it_waits_frees_its_place() {
        // Arrange
        let delay = RefusalDelay::new(Duration::from_millis(100), 1);

        // Act: the client hangs up (the request future is dropped) half-way.
        let _ = tokio::time::timeout(Duration::from_millis(50), delay.hold()).await;
        let started = tokio::time::Instant::now();
        delay.hold().await;

        // Assert
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        assert_eq!(delay.held.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_delay_a_refusal_is_answered_at_once() {
        let delay = RefusalDelay::new(Duration::ZERO, 8);
        let started = tokio::time::Instant::now();
        delay.hold().await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
