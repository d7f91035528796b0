//! Argon2id checks on a fixed set of worker threads with a bounded queue. The verify path's other
//! work keeps a core to itself (one worker fewer than cores), memory stays at one block buffer
//! per worker, and when the queue is full a check is refused at once instead of waiting behind
//! attack traffic.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use crate::token::Secret;
use crate::token::hash::Argon2Workspace;

struct Job {
    phc: String,
    secret: Secret<[u8; 32]>,
    reply: tokio::sync::oneshot::Sender<bool>,
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
                .spawn(move || work(&rx));
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
        match self.queue.try_send(Job { phc, secret, reply }) {
            Ok(()) => answer.await.map_err(|_| Busy),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy),
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
        let ok = workspace.matches(&job.phc, &job.secret);
        let _ = job.reply.send(ok);
    }
}
