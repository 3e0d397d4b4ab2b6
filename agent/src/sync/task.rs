//! The sync task: push the journal to the server, apply its inbox and keep fleet users' grants
//! topped up, in the background of `tollgate serve`; push and pull once on demand (`tollgate
//! sync now`).
//!
//! Guarantees:
//! - Off the request path: the task has its own ledger connection (never the gateway's writer),
//!   used only from `spawn_blocking`; a slow or absent server delays nothing but sync.
//! - Entries are marked acknowledged only up to the head the server answers with, never past the
//!   local head. A `gap` answer resends from the server's head + 1; a `conflict` or `quarantined`
//!   answer stops the fast push cadence: pushes are retried only every [`BACKOFF_MAX`], each
//!   failure logged as an error, until the server accepts again (an admin cleared it).
//! - Pushing and pulling are two loops, so a long poll never delays a push; new entries are
//!   pushed within [`PUSH_INTERVAL`] while the server answers. A third loop keeps fleet users
//!   supplied with grants (`escrow.rs`); it asks and releases through the same ledger
//!   connection, and its entries are pushed like any other.
//! - Failures back off exponentially with jitter, from [`BACKOFF_INITIAL`] to [`BACKOFF_MAX`],
//!   and each is recorded in `sync_state.last_error`.
//! - [`Syncer::sync_once`] (the CLI) and [`Syncer::run`] (serve) share the same push and pull
//!   steps.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tollgate_schema::wire::{
    PROTOCOL_VERSION, PUSH_BODY_BYTES_MAX, PUSH_ENTRIES_MAX, PushRequest, WireEntry,
};

use super::SyncError;
use super::client::{ClientError, ErrorCode, SyncClient};
use super::config::SyncConfig;
use super::escrow::Demand;
use crate::ledger::{InboxOutcome, Ledger, LedgerError, SnapshotApplied, SyncResult};

/// How often the push loop looks for entries not yet acknowledged.
pub const PUSH_INTERVAL: Duration = Duration::from_millis(200);
/// An empty push (a heartbeat) after this long without one, so the server sees the agent.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// How long a pull waits on the server for a first event.
pub const LONG_POLL_WAIT: Duration = Duration::from_secs(25);
/// The least time between two pulls that found nothing (a server that does not wait).
pub const PULL_INTERVAL_MIN: Duration = Duration::from_secs(1);
/// The first delay after a failure; it doubles per failure up to [`BACKOFF_MAX`].
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(250);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Room left in a push body for everything but the entries.
const PUSH_BODY_OVERHEAD: usize = 4 * 1024;
/// Consecutive `gap` answers to one push before giving up until the next attempt.
const GAP_RETRIES_MAX: u32 = 3;
/// Snapshots one [`Syncer::sync_once`] applies at most.
const SNAPSHOTS_PER_DRAIN_MAX: u32 = 2;

/// What pushing did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PushReport {
    /// Pushes answered (a heartbeat counts).
    pub batches: u32,
    pub entries: u64,
    /// The acknowledged head afterwards.
    pub acked_seq: i64,
    /// The local head the last push announced.
    pub head_seq: i64,
}

/// What pulling did.
/// Why a pull applied a snapshot instead of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SnapshotReason {
    /// The first pull after enrolment.
    FirstPull,
    /// The server no longer holds the events after the cursor.
    CursorGone,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PullReport {
    pub pages: u32,
    pub applied: u32,
    pub refused: u32,
    pub already_applied: u32,
    /// Set when the server no longer held the events after the cursor and sent a snapshot.
    pub snapshot: Option<SnapshotApplied>,
    /// The inbox cursor afterwards, and the server's inbox head.
    pub cursor: i64,
    pub server_head: i64,
}

/// One full cycle: push until caught up, then drain the inbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CycleReport {
    pub push: PushReport,
    pub pull: PullReport,
}

/// The push side's state between pushes.
#[derive(Debug, Default)]
pub struct PushState {
    /// Resend the entries after this seq although they are recorded as acknowledged: the server
    /// said it holds less (restored from a backup).
    resend_after: Option<i64>,
    /// Why the server stopped accepting pushes (`conflict`, `quarantined`).
    blocked: Option<String>,
}

/// A sync client bound to its own ledger connection.
#[derive(Debug, Clone)]
pub struct Syncer {
    ledger: Arc<Mutex<Ledger>>,
    pub(super) client: SyncClient,
    incarnation: String,
    /// What the gateway saw users ask for (the escrow loop's input, `escrow.rs`).
    pub(super) demand: Arc<Demand>,
}

impl Syncer {
    /// Binds `ledger` (a connection of its own) to the server in `config`, recording the agent id
    /// the file names (which also heals an enrolment interrupted between writing the file and
    /// the database).
    pub fn new(mut ledger: Ledger, config: &SyncConfig) -> Result<Syncer, SyncError> {
        ledger.set_agent_id(&config.agent_id)?;
        let incarnation = ledger.sync_identity()?.incarnation;
        Ok(Syncer {
            ledger: Arc::new(Mutex::new(ledger)),
            client: SyncClient::new(config)?,
            incarnation,
            demand: Arc::new(Demand::default()),
        })
    }

    /// Shares `demand` with the gateway, so the escrow loop sees what users ask for.
    pub fn with_demand(mut self, demand: Arc<Demand>) -> Syncer {
        self.demand = demand;
        self
    }

    /// Runs `f` on the ledger on a blocking thread.
    pub(super) async fn ledger<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Ledger) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, SyncError> {
        let ledger = self.ledger.clone();
        tokio::task::spawn_blocking(move || {
            let mut ledger = ledger.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut ledger)
        })
        .await
        .map_err(|e| SyncError::Task(e.to_string()))?
        .map_err(SyncError::from)
    }

    /// Pushes entries until the server has acknowledged the local head as it was when the call
    /// began (so a busy gateway cannot keep it going forever); with nothing to push, sends one
    /// heartbeat.
    pub async fn push_until_caught_up(
        &self,
        state: &mut PushState,
    ) -> Result<PushReport, SyncError> {
        let mut report = PushReport::default();
        let mut gaps = 0;
        let mut target = None;
        loop {
            let resend_after = state.resend_after;
            let (identity, entries) = self
                .ledger(move |l| {
                    let identity = l.sync_identity()?;
                    let entries = match resend_after {
                        Some(after) => l.entries_after(after, PUSH_ENTRIES_MAX)?,
                        None => l.unacked_entries(PUSH_ENTRIES_MAX)?,
                    };
                    Ok((identity, entries))
                })
                .await?;
            let target = *target.get_or_insert(identity.head_seq);
            let caught_up = entries.is_empty() || identity.acked_seq >= target;
            if report.batches > 0 && resend_after.is_none() && caught_up {
                return Ok(report);
            }
            let entries = fit_body(entries)?;
            let sent_after = resend_after.unwrap_or(identity.acked_seq);
            let sent_to = entries.last().map(|e| e.seq);
            let count = entries.len() as u64;
            let body = PushRequest {
                protocol_version: PROTOCOL_VERSION,
                incarnation: self.incarnation.clone(),
                head_seq: identity.head_seq,
                entries,
            };
            match self.client.push(&body).await {
                Ok(answer) => {
                    if answer.incarnation != self.incarnation {
                        return Err(SyncError::WrongIncarnation {
                            ours: self.incarnation.clone(),
                            theirs: answer.incarnation,
                        });
                    }
                    let server_acked = answer.acked_seq;
                    let acked = self
                        .ledger(move |l| {
                            l.record_sync_result(SyncResult::Pushed {
                                acked_seq: server_acked,
                            })?;
                            Ok(l.sync_identity()?.acked_seq)
                        })
                        .await?;
                    if let Some(blocked) = state.blocked.take() {
                        tracing::info!(was = %blocked, "the sync server accepts pushes again");
                    }
                    // A server that holds less than it acknowledged before (restored from a
                    // backup) gets those entries again.
                    if server_acked < acked && state.resend_after.is_none() {
                        server_lost_entries(server_acked, acked);
                    }
                    state.resend_after = (server_acked < acked).then_some(server_acked.max(0));
                    gaps = 0;
                    report.batches += 1;
                    report.entries += count;
                    report.acked_seq = acked;
                    report.head_seq = identity.head_seq;
                    if let Some(last) = sent_to
                        && server_acked < last
                        && server_acked <= sent_after
                    {
                        return Err(SyncError::NoProgress {
                            first: sent_after + 1,
                            last,
                            acked: server_acked,
                        });
                    }
                    if sent_to.is_none() && state.resend_after.is_none() {
                        return Ok(report); // a heartbeat, answered
                    }
                }
                Err(ClientError::Server {
                    code: ErrorCode::Gap,
                    acked_seq: Some(server_acked),
                    message,
                    ..
                }) if gaps < GAP_RETRIES_MAX => {
                    gaps += 1;
                    tracing::warn!(server_acked, %message, "the sync server reported a gap; resending from its head");
                    self.resend_from_server_head(state, server_acked, &identity)
                        .await?;
                }
                Err(
                    e @ ClientError::Server {
                        code: ErrorCode::Conflict | ErrorCode::Quarantined,
                        ..
                    },
                ) => {
                    tracing::error!(
                        error = %e,
                        "the sync server refuses this agent's entries: pushes are retried only \
                         every {} s until an admin clears the agent",
                        BACKOFF_MAX.as_secs()
                    );
                    state.blocked = Some(e.to_string());
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// After a `gap`: the server holds every entry up to `server_acked`.
    async fn resend_from_server_head(
        &self,
        state: &mut PushState,
        server_acked: i64,
        identity: &crate::ledger::SyncIdentity,
    ) -> Result<(), SyncError> {
        match server_acked.cmp(&identity.acked_seq) {
            std::cmp::Ordering::Greater => {
                // Ahead of what this agent recorded (an answer lost on the way): record it; a
                // value past the local head is refused by the ledger.
                self.ledger(move |l| l.mark_acked(server_acked)).await?;
                state.resend_after = None;
            }
            std::cmp::Ordering::Less => {
                if state.resend_after.is_none() {
                    server_lost_entries(server_acked, identity.acked_seq);
                }
                state.resend_after = Some(server_acked.max(0));
            }
            std::cmp::Ordering::Equal => state.resend_after = None,
        }
        Ok(())
    }

    /// One pull: the events after the cursor (waiting up to `wait` for the first), each applied
    /// in its own transaction; on `cursor_gone`, the snapshot instead.
    pub async fn pull(&self, wait: Duration) -> Result<PullReport, SyncError> {
        let (cursor, never_pulled) = self
            .ledger(|l| {
                let status = l.sync_status()?;
                Ok((status.inbox_cursor, status.last_pull_at.is_none()))
            })
            .await?;
        let mut report = PullReport {
            pages: 1,
            cursor,
            ..PullReport::default()
        };
        if never_pulled && cursor == 0 {
            // A newly enrolled agent starts from the server's state (its catalog may have
            // changed since the seeds), then pulls the events after the snapshot's cursor.
            self.take_snapshot(&mut report, SnapshotReason::FirstPull)
                .await?;
            return Ok(report);
        }
        match self.client.pull(cursor, wait).await {
            Ok(page) => {
                let head = page.head;
                let outcomes = self
                    .ledger(move |l| {
                        let mut outcomes = Vec::with_capacity(page.events.len());
                        for event in &page.events {
                            outcomes.push((event.seq, l.apply_inbox_event(event)?));
                        }
                        l.record_sync_result(SyncResult::Pulled {
                            server_inbox_head: head,
                        })?;
                        Ok((outcomes, l.sync_identity()?.inbox_cursor))
                    })
                    .await?;
                let (outcomes, cursor) = outcomes;
                for (seq, outcome) in outcomes {
                    match outcome {
                        InboxOutcome::Applied { .. } => report.applied += 1,
                        InboxOutcome::AlreadyApplied => report.already_applied += 1,
                        InboxOutcome::Refused { detail } => {
                            tracing::warn!(seq, %detail, "inbox event refused by the books");
                            report.refused += 1;
                        }
                    }
                }
                report.cursor = cursor;
                report.server_head = head;
            }
            Err(ClientError::Server {
                code: ErrorCode::CursorGone,
                ..
            }) => {
                self.take_snapshot(&mut report, SnapshotReason::CursorGone)
                    .await?;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(report)
    }

    /// Fetches the server's snapshot for this agent and applies it (one transaction).
    async fn take_snapshot(
        &self,
        report: &mut PullReport,
        reason: SnapshotReason,
    ) -> Result<(), SyncError> {
        let snapshot = self.client.snapshot().await?;
        let head = snapshot.cursor;
        let applied = self
            .ledger(move |l| {
                let applied = l.apply_snapshot(&snapshot)?;
                l.record_sync_result(SyncResult::Pulled {
                    server_inbox_head: head,
                })?;
                Ok(applied)
            })
            .await?;
        match reason {
            SnapshotReason::CursorGone => tracing::warn!(
                from = applied.previous_cursor,
                to = applied.cursor,
                refused = applied.refused.len(),
                "the sync server no longer held this agent's inbox after its cursor: applied \
                 its snapshot"
            ),
            SnapshotReason::FirstPull => tracing::info!(
                cursor = applied.cursor,
                refused = applied.refused.len(),
                "first pull since enrolment: applied the server's snapshot (catalog, users)"
            ),
        }
        for refusal in &applied.refused {
            tracing::warn!(%refusal, "snapshot item refused by the books");
        }
        report.cursor = applied.cursor;
        report.server_head = head;
        report.snapshot = Some(applied);
        Ok(())
    }

    /// One cycle, for `tollgate sync now`: push until caught up, then pull without waiting until
    /// the inbox is drained. Both halves run even if the first fails; a failure is recorded and
    /// the first one returned.
    pub async fn sync_once(&self) -> Result<CycleReport, SyncError> {
        let push = self.push_until_caught_up(&mut PushState::default()).await;
        if let Err(e) = &push {
            self.record_failure("push", e).await;
        }
        let pull = self.drain_inbox().await;
        if let Err(e) = &pull {
            self.record_failure("pull", e).await;
        }
        Ok(CycleReport {
            push: push?,
            pull: pull?,
        })
    }

    /// Pulls (without waiting) until a page brings nothing or the cursor reaches the head. After
    /// a snapshot it pulls again (events may follow the snapshot's cursor), but takes at most
    /// [`SNAPSHOTS_PER_DRAIN_MAX`] snapshots, so a server that keeps answering `cursor_gone`
    /// cannot keep it busy.
    async fn drain_inbox(&self) -> Result<PullReport, SyncError> {
        let mut total = PullReport::default();
        let mut snapshots = 0;
        loop {
            let page = self.pull(Duration::ZERO).await?;
            let brought = page.applied + page.refused + page.already_applied;
            total.pages += page.pages;
            total.applied += page.applied;
            total.refused += page.refused;
            total.already_applied += page.already_applied;
            total.cursor = page.cursor;
            total.server_head = page.server_head;
            if page.snapshot.is_some() {
                total.snapshot = page.snapshot;
                snapshots += 1;
                if snapshots < SNAPSHOTS_PER_DRAIN_MAX {
                    continue;
                }
            }
            if brought == 0 || total.cursor >= total.server_head {
                return Ok(total);
            }
        }
    }

    /// Records a failure in `sync_state` and the log (never fails: a ledger that cannot record
    /// it is logged too).
    pub(super) async fn record_failure(&self, what: &'static str, error: &SyncError) {
        let text = format!("{what}: {error}");
        tracing::warn!(error = %text, "sync failed");
        let recorded = self
            .ledger(move |l| l.record_sync_result(SyncResult::Failed { error: &text }))
            .await;
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "could not record the sync failure");
        }
    }

    /// Pushes and pulls until `stop` turns true (or its sender is gone).
    pub async fn run(self, stop: watch::Receiver<bool>) {
        tracing::info!(server = %self.client.server(), "sync started");
        tokio::join!(
            self.push_loop(stop.clone()),
            self.pull_loop(stop.clone()),
            self.escrow_loop(stop)
        );
        tracing::info!("sync stopped");
    }

    async fn push_loop(&self, mut stop: watch::Receiver<bool>) {
        let mut state = PushState::default();
        let mut backoff = Backoff::default();
        let mut last_push: Option<Instant> = None;
        loop {
            let due = match self.ledger(|l| l.sync_identity()).await {
                Ok(identity) => {
                    identity.head_seq > identity.acked_seq
                        || state.resend_after.is_some()
                        || last_push.is_none_or(|at| at.elapsed() >= HEARTBEAT_INTERVAL)
                }
                Err(_) => true, // let the push report the failure
            };
            if due {
                let pushed = tokio::select! {
                    pushed = self.push_until_caught_up(&mut state) => pushed,
                    () = stopped(&mut stop) => return,
                };
                match pushed {
                    Ok(_) => {
                        backoff.reset();
                        last_push = Some(Instant::now());
                    }
                    Err(e) => {
                        self.record_failure("push", &e).await;
                        let delay = if state.blocked.is_some() {
                            BACKOFF_MAX
                        } else {
                            backoff.next_delay()
                        };
                        if sleep_or_stop(&mut stop, delay).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            if sleep_or_stop(&mut stop, PUSH_INTERVAL).await {
                return;
            }
        }
    }

    async fn pull_loop(&self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::default();
        loop {
            let started = Instant::now();
            let pulled = tokio::select! {
                pulled = self.pull(LONG_POLL_WAIT) => pulled,
                () = stopped(&mut stop) => return,
            };
            let delay = match pulled {
                Ok(report) => {
                    backoff.reset();
                    self.demand.server_reached(true);
                    let brought = report.applied + report.refused + report.already_applied;
                    if brought == 0 && report.snapshot.is_none() {
                        PULL_INTERVAL_MIN.saturating_sub(started.elapsed())
                    } else {
                        Duration::ZERO
                    }
                }
                Err(e) => {
                    if e.unreachable() {
                        self.demand.server_reached(false);
                    }
                    self.record_failure("pull", &e).await;
                    backoff.next_delay()
                }
            };
            if sleep_or_stop(&mut stop, delay).await {
                return;
            }
        }
    }
}

fn server_lost_entries(server_acked: i64, local_acked: i64) {
    tracing::error!(
        server_acked,
        local_acked,
        "the sync server holds fewer entries than it acknowledged before (restored from a \
         backup?): resending them"
    );
}

/// Cuts `entries` to what fits a push body; an entry too large alone is an error (it would
/// never be accepted, and nothing after it could be).
fn fit_body(mut entries: Vec<WireEntry>) -> Result<Vec<WireEntry>, SyncError> {
    let room = PUSH_BODY_BYTES_MAX - PUSH_BODY_OVERHEAD;
    let mut used = 0usize;
    for (i, entry) in entries.iter().enumerate() {
        let size = serde_json::to_vec(entry).map_or(usize::MAX, |b| b.len() + 1);
        if used.saturating_add(size) > room {
            if i == 0 {
                return Err(SyncError::EntryTooLarge {
                    seq: entry.seq,
                    bytes: size,
                });
            }
            entries.truncate(i);
            break;
        }
        used += size;
    }
    Ok(entries)
}

/// Resolves once `stop` is true or its sender is gone.
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Sleeps `delay`; true if told to stop meanwhile (or before).
async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => *stop.borrow(),
        () = stopped(stop) => true,
    }
}

/// Capped exponential backoff with jitter: each delay is drawn from [d/2, d], d doubling from
/// [`BACKOFF_INITIAL`] to [`BACKOFF_MAX`].
#[derive(Debug, Clone)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: BACKOFF_INITIAL,
        }
    }
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let nanos = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX);
        let half = nanos / 2;
        let jitter = getrandom::u64().unwrap_or(0) % (half + 1);
        Duration::from_nanos(half + jitter)
    }

    fn reset(&mut self) {
        self.next = BACKOFF_INITIAL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry whose metadata is `bytes` long (its hash is irrelevant to sizing).
    fn entry(seq: i64, bytes: usize) -> WireEntry {
        serde_json::from_value(serde_json::json!({
            "seq": seq, "entry_id": "e", "user_id": "u", "transaction_type": "expiry",
            "amount": "-1", "balance_before": "1", "balance_after": "0", "provider": null,
            "model": null, "prompt_tokens": null, "completion_tokens": null,
            "cost_per_token": null, "power_level": null, "is_byok": false,
            "payment_method": null, "request_id": null, "package_id": null,
            "metadata": "m".repeat(bytes), "notes": null, "admin_user_id": null,
            "idempotency_key": null, "corrects_entry_id": null, "created_at": "t",
            "total_tokens": null, "stripe_payment_intent_id": null, "stripe_charge_id": null,
            "invoice_id": null, "prev_hash": "0", "hash": "0"
        }))
        .unwrap()
    }

    #[test]
    fn a_push_is_cut_to_what_fits_its_body() {
        let third = PUSH_BODY_BYTES_MAX / 3;
        let entries: Vec<WireEntry> = (1..=4).map(|seq| entry(seq, third)).collect();
        let fitted = fit_body(entries).unwrap();
        assert_eq!(fitted.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        let small: Vec<WireEntry> = (1..=3).map(|seq| entry(seq, 10)).collect();
        assert_eq!(fit_body(small).unwrap().len(), 3);
        let err = fit_body(vec![entry(7, PUSH_BODY_BYTES_MAX)]).unwrap_err();
        assert!(
            matches!(err, SyncError::EntryTooLarge { seq: 7, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_and_resets() {
        let mut backoff = Backoff::default();
        let mut ceiling = BACKOFF_INITIAL;
        for _ in 0..12 {
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(BACKOFF_MAX);
        }
        assert_eq!(backoff.next, BACKOFF_MAX);
        backoff.reset();
        assert!(backoff.next_delay() <= BACKOFF_INITIAL);
    }
}
