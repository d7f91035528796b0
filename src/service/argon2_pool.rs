//! Argon2id checks on a fixed set of worker threads with a bounded queue. The verify path's other
//! work keeps a core to itself (one worker fewer than cores), memory stays at one block buffer
//! per worker, and when the queue is full a check is refused at once instead of waiting behind
//! attack traffic. The workers run at a lower scheduling priority (nice +10, Linux), so that
//! when the machine is saturated a stream of Argon2id checks (new tokens, wrong secrets) does not
//! take CPU time from verifications answered from the cache: those preempt it.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use crate::token::Secret;
use crate::token::hash::Argon2Workspace;

enum Job {
    /// A token's secret against its verifier.
    Check {
        phc: String,
        secret: Secret<[u8; 32]>,
        reply: tokio::sync::oneshot::Sender<bool>,
    },
    /// A password against its hash.
    CheckPassword {
        phc: String,
        password: Secret<String>,
        reply: tokio::sync::oneshot::Sender<bool>,
    },
    /// A new password hash.
    HashPassword {
        password: Secret<String>,
        reply: tokio::sync::oneshot::Sender<Option<String>>,
    },
}

/// The pool. Dropping it ends its threads once the queue drains.
pub(super) struct Argon2Pool {
    queue: SyncSender<Job>,
}

/// The queue is full (or the pool is gone): the caller answers "try later".
#[derive(Debug)]
pub(super) struct Busy;

impl Argon2Pool {
    /// `workers` threads and room for `queue` waiting checks.
    pub(super) fn new(workers: usize, queue: usize) -> Self {
        let (tx, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("latchkey-argon2-{i}"))
                .spawn(move || {
                    lower_priority();
                    work(&rx)
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start an Argon2id worker");
            }
        }
        Self { queue: tx }
    }

    /// Checks `secret` against the PHC string on a worker.
    ///
    /// # Errors
    /// [`Busy`] when the queue is full.
    pub(super) async fn matches(
        &self,
        phc: String,
        secret: Secret<[u8; 32]>,
    ) -> Result<bool, Busy> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.submit(Job::Check { phc, secret, reply })?;
        answer.await.map_err(|_| Busy)
    }

    /// Checks a password against its Argon2id PHC string on a worker.
    ///
    /// # Errors
    /// [`Busy`] when the queue is full.
    pub(super) async fn password_matches(
        &self,
        phc: String,
        password: Secret<String>,
    ) -> Result<bool, Busy> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.submit(Job::CheckPassword {
            phc,
            password,
            reply,
        })?;
        answer.await.map_err(|_| Busy)
    }

    /// Hashes a password on a worker; `Ok(None)` if Argon2 failed.
    ///
    /// # Errors
    /// [`Busy`] when the queue is full.
    pub(super) async fn hash_password(
        &self,
        password: Secret<String>,
    ) -> Result<Option<String>, Busy> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.submit(Job::HashPassword { password, reply })?;
        answer.await.map_err(|_| Busy)
    }

    fn submit(&self, job: Job) -> Result<(), Busy> {
        match self.queue.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy),
        }
    }
}

/// The niceness of Argon2id workers: a nice +10 thread gets about a tenth of the CPU share of a
/// normal one while both want to run, and all of an idle core.
const ARGON2_NICE: libc::c_int = 10;

/// Lowers this thread's priority to [`ARGON2_NICE`]. Raising one's own niceness needs no
/// privilege; if it fails anyway the worker runs at normal priority, which is only slower for
/// the rest under attack.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread's id; no memory is shared with them.
    unsafe {
        // On Linux the nice value belongs to a thread, named by its thread id.
        let tid = libc::gettid();
        if libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, ARGON2_NICE) != 0 {
            tracing::warn!("could not lower the priority of an Argon2id worker");
        }
    }
}

fn work(rx: &Mutex<Receiver<Job>>) {
    let mut workspace = Argon2Workspace::default();
    loop {
        let job = {
            let Ok(guard) = rx.lock() else { return };
            match guard.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        match job {
            Job::Check { phc, secret, reply } => {
                let _ = reply.send(workspace.matches(&phc, &secret));
            }
            Job::CheckPassword {
                phc,
                password,
                reply,
            } => {
                let _ = reply.send(workspace.matches_bytes(&phc, password.expose().as_bytes()));
            }
            Job::HashPassword { password, reply } => {
                let phc = crate::token::hash::argon2id_phc(password.expose().as_bytes());
                if let Err(e) = &phc {
                    tracing::error!(error = %e, "password hashing failed");
                }
                let _ = reply.send(phc.ok());
            }
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::token::hash::{HashAlgorithm, Verifier};

    /// The nice values of this process's threads whose name starts with `prefix` (the kernel
    /// keeps the first 15 bytes of a thread's name), from /proc.
    fn nice_of(prefix: &str) -> Vec<i64> {
        let mut found = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let dir = task.unwrap().path();
            let (Ok(comm), Ok(stat)) = (
                std::fs::read_to_string(dir.join("comm")),
                std::fs::read_to_string(dir.join("stat")),
            ) else {
                continue; // the thread ended meanwhile
            };
            if comm.trim_end().starts_with(prefix) {
                // Field 19 is the nice value; the fields after the ")" closing the name are 3 on.
                let rest = &stat[stat.rfind(')').unwrap() + 2..];
                found.push(rest.split(' ').nth(16).unwrap().parse().unwrap());
            }
        }
        found
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn argon2_workers_run_at_a_lower_priority_than_the_request_threads() {
        // Arrange
        let pool = Argon2Pool::new(1, 4);
        let secret = Secret::new([7u8; 32]);
        let phc = Verifier::compute(HashAlgorithm::Argon2id, &secret)
            .unwrap()
            .encode();

        // Act: one check, so the worker has surely started.
        let matched = pool.matches(phc, secret).await;

        // Assert
        assert!(matched.unwrap());
        let nice = nice_of("latchkey-argon2");
        assert!(!nice.is_empty());
        assert!(
            nice.iter().all(|n| *n == i64::from(ARGON2_NICE)),
            "{nice:?}"
        );
        let request_threads = nice_of("tokio-rt-worker");
        assert!(!request_threads.is_empty());
        assert!(
            request_threads.iter().all(|n| *n == 0),
            "the request threads keep their priority: {request_threads:?}"
        );
    }
}
