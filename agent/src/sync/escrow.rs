//! The escrow loop of the sync task (SYNC.md "Escrow"): keeps this agent supplied with grants of
//! its fleet users' pools, off the request path, and returns what it no longer needs. What it
//! decides is [`EscrowState::step`] (pure); [`Syncer::escrow_loop`] asks and books.
//!
//! Guarantees:
//! - The request path never waits on it: the gateway only notes, in memory, that a user asked
//!   for credit and the worst case of the request ([`Demand::record`]), and wakes the task when
//!   one was refused for lack of it.
//! - For a fleet user who asked within [`DEMAND_WINDOW`], the task asks the server for a grant
//!   before this agent runs dry: when what is available falls below one worst case or
//!   [`LOW_WATER`] of recent spend, or the newest grant has less than [`VALIDITY_REFRESH`] left.
//!   It asks for [`GRANT_TARGET`] of recent spend, at least one worst case; the server caps it
//!   at a fair share of the pool.
//! - A grant request is idempotent: one that got no answer is sent again with the same request
//!   id and body until it does, so a lost answer never costs a second grant (the grant also
//!   arrives through the inbox).
//! - Once a user's newest grant here has lapsed, what is available is returned to the pool with
//!   a release entry (pushed like any entry); open holds stay covered.
//! - An empty pool or an unreachable server is retried after [`RETRY_AFTER`]; meanwhile the
//!   gateway answers 402 saying why. When the server cannot be reached (no answer, or a 5xx) and
//!   what is available no longer covers the user's worst case, the overdraft line of their
//!   newest grant, if any, is drawn (once: `Session::draw_overdraft`).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tollgate_schema::money::Credits;
use tollgate_schema::wire::{GrantRequest, PROTOCOL_VERSION};

use super::SyncError;
use super::task::{self, Syncer};
use crate::ledger::escrow::FleetPosition;

/// A user who asked for credit within this long is served ahead of need.
pub const DEMAND_WINDOW: Duration = Duration::from_secs(60);
/// The largest worst case seen within this long is the user's worst case.
pub const WORST_CASE_WINDOW: Duration = Duration::from_secs(300);
/// Users the demand map remembers at most (new ones beyond are not recorded).
pub const DEMAND_USERS_MAX: usize = 100_000;
/// How often the task looks, unless woken.
pub const ESCROW_TICK: Duration = Duration::from_millis(250);
/// Recent spend is measured over this window.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Ask for more when less than this much of recent spend is available…
pub const LOW_WATER: Duration = Duration::from_secs(10);
/// …asking for this much of it.
pub const GRANT_TARGET: Duration = Duration::from_secs(30);
/// Ask again before the newest grant has less than this left.
pub const VALIDITY_REFRESH: Duration = Duration::from_secs(20);
/// After an empty pool or a failed request, wait this long before asking for that user again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// What the gateway saw users ask for, shared with the escrow task; and whether the sync task
/// can reach the server (its grant requests and long polls say so), so a refusal can say why.
#[derive(Debug, Default)]
pub struct Demand {
    users: Mutex<HashMap<String, Seen>>,
    wake: Notify,
    unreachable_since: Mutex<Option<Instant>>,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    at: Instant,
    worst: Credits,
    worst_at: Instant,
}

impl Demand {
    /// Notes that `user` asked for a request of worst case `worst` (the request path: a map
    /// insert, nothing more).
    pub fn record(&self, user: &str, worst: Credits) {
        let now = Instant::now();
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(seen) = users.get_mut(user) {
            seen.at = now;
            if worst >= seen.worst || now.duration_since(seen.worst_at) > WORST_CASE_WINDOW {
                seen.worst = worst;
                seen.worst_at = now;
            }
        } else if users.len() < DEMAND_USERS_MAX {
            users.insert(
                user.to_owned(),
                Seen {
                    at: now,
                    worst,
                    worst_at: now,
                },
            );
        }
    }

    /// Wakes the task: a request was refused for lack of credit.
    pub fn refused(&self) {
        self.wake.notify_one();
    }

    /// Users who asked within [`DEMAND_WINDOW`], with their worst case; forgets the others.
    pub(super) fn active(&self) -> HashMap<String, Credits> {
        let now = Instant::now();
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        users.retain(|_, seen| now.duration_since(seen.at) <= DEMAND_WINDOW);
        users
            .iter()
            .map(|(user, seen)| (user.clone(), seen.worst))
            .collect()
    }

    pub(super) async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Since when the sync task has not reached the server (no answer, or a 5xx) — `None`
    /// while its last request was answered.
    pub fn unreachable_for(&self) -> Option<Duration> {
        self.unreachable_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map(|since| since.elapsed())
    }

    /// Notes that a request to the server was answered (`true`) or could not be (`false`).
    pub(super) fn server_reached(&self, reached: bool) {
        let mut since = self
            .unreachable_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if reached {
            *since = None;
        } else if since.is_none() {
            *since = Some(Instant::now());
        }
    }
}

/// What the task remembers between ticks.
#[derive(Debug, Default)]
pub(super) struct EscrowState {
    /// Requests sent without an answer yet, resent as they are.
    pending: HashMap<String, GrantRequest>,
    /// Users not to ask for before this.
    retry_at: HashMap<String, Instant>,
}

/// What to do for one fleet user this tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    Ask(GrantRequest),
    Release,
    Nothing,
}

fn scaled(rate_window_spend: Credits, over: Duration) -> Credits {
    let window_ms = i128::try_from(RATE_WINDOW.as_millis()).unwrap_or(i128::MAX);
    let over_ms = i128::try_from(over.as_millis()).unwrap_or(i128::MAX);
    let nanos = i128::from(rate_window_spend.nanos()) * over_ms / window_ms.max(1);
    Credits::from_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
}

impl EscrowState {
    /// Decides the step for `position` (see the module's guarantees). `worst` is the user's
    /// worst case if they asked lately; `now` is the ledger's clock, `instant` the task's.
    pub(super) fn step(
        &mut self,
        position: &FleetPosition,
        worst: Option<Credits>,
        now: time::OffsetDateTime,
        instant: Instant,
    ) -> Step {
        let user = &position.user_id;
        let left = position
            .valid_until
            .map_or(time::Duration::ZERO, |until| until - now);
        let lapsed = !left.is_positive();
        if let Some(worst) = worst {
            if let Some(pending) = self.pending.get(user) {
                return Step::Ask(pending.clone());
            }
            let waiting = self.retry_at.get(user).is_some_and(|at| instant < *at);
            let low = worst.max(scaled(position.spent_recently, LOW_WATER));
            let refresh = left < time::Duration::try_from(VALIDITY_REFRESH).unwrap_or_default();
            if !waiting && (position.available() < low || refresh) {
                let request = GrantRequest {
                    protocol_version: PROTOCOL_VERSION,
                    request_id: uuid::Uuid::now_v7().simple().to_string(),
                    user_id: user.clone(),
                    want: worst.max(scaled(position.spent_recently, GRANT_TARGET)),
                    worst_case: worst,
                };
                self.pending.insert(user.clone(), request.clone());
                return Step::Ask(request);
            }
        }
        if lapsed && position.available().is_positive() {
            return Step::Release;
        }
        Step::Nothing
    }

    /// The request for `user` was answered (a grant, or an empty pool).
    pub(super) fn answered(&mut self, user: &str, empty: bool, instant: Instant) {
        self.pending.remove(user);
        if empty {
            self.retry_at.insert(user.to_owned(), instant + RETRY_AFTER);
        } else {
            self.retry_at.remove(user);
        }
    }

    /// The request for `user` failed; it is resent as it is after [`RETRY_AFTER`].
    pub(super) fn failed(&mut self, user: &str, instant: Instant) {
        self.retry_at.insert(user.to_owned(), instant + RETRY_AFTER);
    }

    /// Forgets users no longer fleet users here.
    pub(super) fn keep_only(&mut self, users: &[FleetPosition]) {
        let known = |u: &String| users.iter().any(|p| &p.user_id == u);
        self.pending.retain(|u, _| known(u));
        self.retry_at.retain(|u, _| known(u));
    }
}

/// Whether `position` should draw its overdraft line now that the server cannot be reached: it
/// has one, and what is available no longer covers the user's worst case.
fn needs_overdraft(position: &FleetPosition, worst: Option<Credits>) -> bool {
    position.overdraft_line.is_some() && worst.is_some_and(|worst| position.available() < worst)
}

impl Syncer {
    /// Keeps fleet users supplied with grants and returns lapsed ones (`escrow.rs`).
    pub(super) async fn escrow_loop(&self, mut stop: watch::Receiver<bool>) {
        let mut state = EscrowState::default();
        loop {
            if let Err(e) = self.escrow_tick(&mut state).await {
                self.record_failure("escrow", &e).await;
            }
            tokio::select! {
                () = tokio::time::sleep(ESCROW_TICK) => {}
                () = self.demand.woken() => {}
                () = task::stopped(&mut stop) => return,
            }
        }
    }

    /// One look at every fleet user: ask for what is needed, release what lapsed.
    async fn escrow_tick(&self, state: &mut EscrowState) -> Result<(), SyncError> {
        let window = time::Duration::try_from(RATE_WINDOW).unwrap_or(time::Duration::MINUTE);
        let demand = self.demand.active();
        let active: Vec<String> = demand.keys().cloned().collect();
        let (now, positions) = self
            .ledger(move |l| l.fleet_positions(window, &active))
            .await?;
        state.keep_only(&positions);
        if positions.is_empty() {
            return Ok(());
        }
        for position in &positions {
            let user = position.user_id.clone();
            let worst = demand.get(&user).copied();
            let step = state.step(position, worst, now, Instant::now());
            match step {
                Step::Ask(request) => match self.client.grant(&request).await {
                    Ok(answer) => {
                        self.demand.server_reached(true);
                        state.answered(&user, answer.grant.is_none(), Instant::now());
                        if let Some(grant) = answer.grant {
                            tracing::info!(user = %user, amount = %grant.amount, key = %grant.key, pool_left = %answer.pool_free, "fleet grant received");
                            self.ledger(move |l| l.book_grant(&grant)).await?;
                        } else {
                            tracing::debug!(user = %user, "the fleet pool is empty");
                            self.release_if_lapsed(position, now).await?;
                        }
                    }
                    Err(e) => {
                        state.failed(&user, Instant::now());
                        tracing::warn!(user = %user, error = %e, "asking for a fleet grant failed; retrying the same request");
                        if e.unreachable() {
                            self.demand.server_reached(false);
                        }
                        if e.unreachable() && needs_overdraft(position, worst) {
                            self.draw_overdraft(&user).await?;
                        } else {
                            self.release_if_lapsed(position, now).await?;
                        }
                    }
                },
                Step::Release => self.release(&user).await?,
                Step::Nothing => {}
            }
        }
        Ok(())
    }

    /// Releases what `position` has available if its newest grant had lapsed at `now`.
    async fn release_if_lapsed(
        &self,
        position: &FleetPosition,
        now: time::OffsetDateTime,
    ) -> Result<(), SyncError> {
        let lapsed = position.valid_until.is_none_or(|until| until <= now);
        if lapsed && position.available().is_positive() {
            self.release(&position.user_id).await?;
        }
        Ok(())
    }

    async fn draw_overdraft(&self, user: &str) -> Result<(), SyncError> {
        let owned = user.to_owned();
        if let Some(receipt) = self.ledger(move |l| l.draw_overdraft(&owned)).await? {
            tracing::warn!(user = %user, amount = %receipt.amount, "the sync server is unreachable: drew the fleet user's overdraft line (booked as their debt)");
        }
        Ok(())
    }

    async fn release(&self, user: &str) -> Result<(), SyncError> {
        let owned = user.to_owned();
        if let Some(receipt) = self.ledger(move |l| l.release_escrow(&owned)).await? {
            tracing::info!(user = %user, amount = %receipt.amount, "lapsed fleet grants returned to the pool");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(text: &str) -> Credits {
        text.parse().unwrap()
    }

    fn position(
        balance: &str,
        spent: &str,
        valid_s: Option<i64>,
    ) -> (FleetPosition, time::OffsetDateTime) {
        let now = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        (
            FleetPosition {
                user_id: "ann".to_owned(),
                balance: c(balance),
                held: Credits::ZERO,
                valid_until: valid_s.map(|s| now + time::Duration::seconds(s)),
                spent_recently: c(spent),
                overdraft_line: None,
            },
            now,
        )
    }

    #[test]
    fn it_asks_ahead_of_need_releases_when_lapsed_and_resends_the_same_request() {
        let mut state = EscrowState::default();
        let t = Instant::now();
        // Asked lately, nothing here: ask for one worst case at least.
        let (p, now) = position("0", "0", None);
        let Step::Ask(first) = state.step(&p, Some(c("0.5")), now, t) else {
            panic!("expected a request");
        };
        assert_eq!((first.want, first.worst_case), (c("0.5"), c("0.5")));
        // No answer yet: the same request goes again, byte for byte.
        assert_eq!(
            state.step(&p, Some(c("0.5")), now, t),
            Step::Ask(first.clone())
        );
        state.answered("ann", false, t);
        // 6 credits spent in the last minute: 1 available is below 10 s of it (1); at 1.5 and a
        // grant valid for a minute, nothing to do; the ask is for 30 s of spend (3).
        let (p, now) = position("0.9", "6", Some(60));
        let Step::Ask(second) = state.step(&p, Some(c("0.5")), now, t) else {
            panic!("expected a top-up");
        };
        assert_eq!(second.want, c("3"));
        assert_ne!(second.request_id, first.request_id);
        state.answered("ann", false, t);
        let (p, now) = position("1.5", "6", Some(60));
        assert_eq!(state.step(&p, Some(c("0.5")), now, t), Step::Nothing);
        // A grant about to lapse is refreshed while the user is active.
        let (p, now) = position("5", "6", Some(10));
        assert!(matches!(
            state.step(&p, Some(c("0.5")), now, t),
            Step::Ask(_)
        ));
        state.answered("ann", true, t);
        // The pool was empty: no asking for a second; a lapsed grant's rest goes back.
        let (p, now) = position("5", "6", Some(-1));
        assert_eq!(state.step(&p, Some(c("0.5")), now, t), Step::Release);
        // An idle user's lapsed grant goes back too; a valid one stays.
        assert_eq!(state.step(&p, None, now, t), Step::Release);
        let (p, now) = position("5", "0", Some(5));
        assert_eq!(state.step(&p, None, now, t), Step::Nothing);
    }
}
