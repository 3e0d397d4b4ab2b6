//! The gateway's one ledger connection, owned by one OS thread: requests send it operations
//! through a bounded queue and await their receipts. Operations that arrive while a transaction
//! commits are taken together into the next one (group commit: one fsync for up to
//! [`GROUP_OPS_MAX`] requests), so the ledger's durability costs little per request.
//!
//! Guarantees: a receipt is sent only after its transaction committed — fsync'd (the ledger runs
//! synchronous=FULL), except a batch of holds only, which is fsync'd with the next settle's
//! commit (`Ledger::apply_with`); an operation's result is its own (the ledger isolates failures within a
//! batch); a full queue is refused at once ([`WriterError::Overloaded`]) instead of growing;
//! reads (`read`) run on the same thread between batches, never inside a write transaction (the
//! alert task's claims run there too: one small write each, a few per user and month).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::ledger::{Durability, Ledger, LedgerError, Op, Receipt};

/// Most operations committed in one transaction.
pub const GROUP_OPS_MAX: usize = 512;

type ReadFn = Box<dyn FnOnce(&mut Ledger) + Send>;

enum Job {
    Write(Box<Op>, oneshot::Sender<Result<Receipt, LedgerError>>),
    Read(ReadFn),
}

/// Why the writer could not take or answer a job.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("the ledger's write queue is full ({0} waiting)")]
    Overloaded(usize),
    #[error("the ledger writer has stopped")]
    Stopped,
}

/// A handle on the writer thread; cheap to clone.
#[derive(Clone, Debug)]
pub struct LedgerWriter {
    jobs: mpsc::Sender<Job>,
    queue_max: usize,
}

/// Called with each committed batch's size and how long it took.
pub type CommitObserver = Arc<dyn Fn(usize, std::time::Duration) + Send + Sync>;

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Job::Write(..) => "Job::Write",
            Job::Read(_) => "Job::Read",
        })
    }
}

impl LedgerWriter {
    /// Starts the thread, which owns `ledger` until every handle is dropped.
    pub fn start(
        ledger: Ledger,
        queue_max: usize,
        observe: CommitObserver,
    ) -> std::io::Result<(LedgerWriter, std::thread::JoinHandle<()>)> {
        let (jobs, rx) = mpsc::channel(queue_max);
        let thread = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || run(ledger, rx, &*observe))?;
        Ok((LedgerWriter { jobs, queue_max }, thread))
    }

    /// Applies one operation in the next group commit; resolves once it is durable.
    pub async fn apply(&self, op: Op) -> Result<Result<Receipt, LedgerError>, WriterError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .try_send(Job::Write(Box::new(op), tx))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => WriterError::Overloaded(self.queue_max),
                mpsc::error::TrySendError::Closed(_) => WriterError::Stopped,
            })?;
        rx.await.map_err(|_| WriterError::Stopped)
    }

    /// Applies one operation, waiting for room in the queue instead of refusing: for settles and
    /// releases, which must not be lost to a momentary burst.
    pub async fn apply_waiting(&self, op: Op) -> Result<Result<Receipt, LedgerError>, WriterError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Write(Box::new(op), tx))
            .await
            .map_err(|_| WriterError::Stopped)?;
        rx.await.map_err(|_| WriterError::Stopped)
    }

    /// Runs `f` on the writer's connection between batches and returns its result.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Ledger) -> T + Send + 'static,
    ) -> Result<T, WriterError> {
        let (tx, rx) = oneshot::channel();
        let job = Job::Read(Box::new(move |ledger| {
            let _ = tx.send(f(ledger));
        }));
        self.jobs
            .send(job)
            .await
            .map_err(|_| WriterError::Stopped)?;
        rx.await.map_err(|_| WriterError::Stopped)
    }
}

fn run(
    mut ledger: Ledger,
    mut rx: mpsc::Receiver<Job>,
    observe: &(dyn Fn(usize, std::time::Duration) + Send + Sync),
) {
    let mut ops = Vec::with_capacity(GROUP_OPS_MAX);
    let mut replies = Vec::with_capacity(GROUP_OPS_MAX);
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        // Gather what is already waiting, up to a group's size; reads run as they come.
        while let Some(job) = next.take() {
            match job {
                Job::Write(op, reply) => {
                    ops.push(*op);
                    replies.push(reply);
                }
                Job::Read(f) => f(&mut ledger),
            }
            if ops.len() >= GROUP_OPS_MAX {
                break;
            }
            next = rx.try_recv().ok();
        }
        if ops.is_empty() {
            continue;
        }
        // A batch of nothing but holds commits without waiting for an fsync: the next batch with
        // a settle (synced) makes it durable, and a hold lost with the machine belongs to a
        // request that died with it (see `Ledger::apply_with`).
        let durability = if ops.iter().all(|op| matches!(op, Op::Hold(_))) {
            Durability::Deferred
        } else {
            Durability::Synced
        };
        let started = Instant::now();
        let outcome = ledger.apply_with(&ops, durability);
        observe(ops.len(), started.elapsed());
        match outcome {
            Ok(results) => {
                for (reply, result) in replies.drain(..).zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                // The whole batch failed (storage): every operation gets the error; nothing of
                // the batch was committed.
                tracing::error!(error = %e, ops = ops.len(), "ledger batch failed");
                let text = e.to_string();
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(LedgerError::BatchFailed(text.clone())));
                }
                if matches!(e, LedgerError::Pragma(_)) {
                    // The connection can no longer promise durability: stop, so every request
                    // from now on is refused (503) instead of being metered unsafely.
                    tracing::error!("the ledger writer stops: its connection is unusable");
                    return;
                }
            }
        }
        ops.clear();
    }
}
