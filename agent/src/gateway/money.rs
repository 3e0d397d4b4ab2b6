//! A request's money: the hold that reserves its worst case, as a value the type system makes
//! the request path consume — [`Ticket::settle`] charges the metered cost, [`Ticket::release`]
//! charges nothing — and the admission policy that decides how much a request may hold.
//!
//! Guarantees:
//! - A ticket is `#[must_use]` and closed only by consuming it, so a request is settled or
//!   released once, by construction. One that is dropped unclosed (a bug, or a panic) releases
//!   its hold from `Drop` and logs it, so credit is never locked until the hold expires.
//! - Settles and releases are idempotent by request id in the ledger, and retried when their
//!   batch failed as a whole; a settle that still fails releases the hold and logs the request.
//! - Admission (see [`Ticket::reserve`]): a request first asks for its whole worst case. If the
//!   user cannot afford it while other requests of theirs hold credit, it waits in line (first
//!   come, first served, at most `limits.admission_wait_ms`) for those to settle, since each
//!   settle returns what its hold did not use. A request with nothing left to wait for, or
//!   whose wait is over, takes what the user can afford (a flexible hold: its output is capped
//!   to what that pays for), or is refused (402) when that is not even its prompt and one output
//!   token. So one request never takes the balance away from others that could be served, and
//!   concurrent requests are admitted as their real costs free room.
//! - Every reservation notes, in memory only, that the user asked and its worst case (the
//!   escrow loop's `Demand`, `sync/escrow.rs`); a refusal for lack of credit (or of a valid fleet
//!   grant, a 402 `fleet_credit_unavailable`) wakes that loop. Nothing on the request path
//!   waits for the server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tollgate_schema::money::Credits;

use crate::ledger::{HoldRequest, LedgerError, Op, Receipt, Refusal, Release, Settle, UsageRecord};

use super::Gateway;
use super::error::ApiError;

/// Attempts at a settle or release whose batch failed as a whole.
const SETTLE_ATTEMPTS: u32 = 4;
/// Gates kept before dead ones are swept (it doubles with the live ones).
const GATES_SWEEP_AT: usize = 4_096;

/// One user's line for credit.
#[derive(Debug, Default)]
struct Gate {
    /// The user's requests holding credit now.
    holding: AtomicUsize,
    /// The user's requests waiting for credit.
    waiting: AtomicUsize,
    /// Wakes the head of the line when a holder settles or releases.
    released: Notify,
    /// The line: waiters take turns in arrival order (tokio's mutex is fair).
    line: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct Gates {
    map: HashMap<String, Weak<Gate>>,
    sweep_at: usize,
}

/// Every user's line; an entry lives while a request of the user holds or waits.
#[derive(Debug)]
pub struct Admission {
    gates: Mutex<Gates>,
    /// The longest a request waits in line.
    wait: Duration,
}

impl Admission {
    pub fn new(wait: Duration) -> Admission {
        Admission {
            gates: Mutex::new(Gates {
                map: HashMap::new(),
                sweep_at: GATES_SWEEP_AT,
            }),
            wait,
        }
    }

    fn gate(&self, user: &str) -> Arc<Gate> {
        let mut gates = self
            .gates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(gate) = gates.map.get(user).and_then(Weak::upgrade) {
            return gate;
        }
        if gates.map.len() >= gates.sweep_at {
            gates.map.retain(|_, g| g.strong_count() > 0);
            gates.sweep_at = (gates.map.len() * 2).max(GATES_SWEEP_AT);
        }
        let gate = Arc::new(Gate::default());
        gates.map.insert(user.to_owned(), Arc::downgrade(&gate));
        gate
    }
}

/// Counts a waiter in the line while it lives.
struct Waiting<'a>(&'a Gate);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a request asks to reserve.
#[derive(Debug, Clone)]
pub struct Reserve {
    pub user_id: String,
    pub request_id: String,
    /// Its worst case.
    pub worst: Credits,
    /// The least it can run with (its prompt and one output token per choice).
    pub floor: Credits,
    pub ttl: time::Duration,
}

/// What a settle charged and the balance after it.
#[derive(Debug, Clone, Copy)]
pub struct Settled {
    pub charged: Credits,
    pub balance: Credits,
}

/// A request's claim on the ledger: credit it holds (perhaps none), to be settled or released.
#[must_use = "a ticket must be settled or released: it holds the user's credit"]
#[derive(Debug)]
pub struct Ticket {
    /// `None` once closed (only inside `settle`/`release`, which consume the ticket).
    inner: Option<Inner>,
}

#[derive(Debug)]
struct Inner {
    gw: Arc<Gateway>,
    user_id: String,
    request_id: String,
    held: Credits,
    /// The user's line, while this ticket holds credit.
    gate: Option<Arc<Gate>>,
}

impl Ticket {
    /// A request that holds nothing: refused before reserving, or free (BYOK at a 0 % fee).
    pub fn unreserved(gw: Arc<Gateway>, user_id: &str, request_id: &str) -> Ticket {
        Ticket {
            inner: Some(Inner {
                gw,
                user_id: user_id.to_owned(),
                request_id: request_id.to_owned(),
                held: Credits::ZERO,
                gate: None,
            }),
        }
    }

    /// Reserves up to `want.worst` for a request (see the module doc for the policy). The
    /// ticket holds what was reserved: all of the worst case, or less (a flexible hold).
    pub async fn reserve(gw: Arc<Gateway>, want: Reserve) -> Result<Ticket, ApiError> {
        gw.demand.record(&want.user_id, want.worst);
        let reserved = Self::reserve_in_line(gw.clone(), want).await;
        if let Err(ApiError::InsufficientCredit { .. } | ApiError::NoFleetGrant(_)) = &reserved {
            gw.demand.refused();
        }
        reserved
    }

    /// [`Ticket::reserve`]'s admission: straight in, or in line behind the user's other requests.
    async fn reserve_in_line(gw: Arc<Gateway>, want: Reserve) -> Result<Ticket, ApiError> {
        let gate = gw.admission.gate(&want.user_id);
        let deadline = tokio::time::Instant::now() + gw.admission.wait;
        // Straight in when nobody waits: the usual case costs one hold.
        if gate.waiting.load(Ordering::SeqCst) == 0 {
            match hold(&gw, &want, None).await {
                Ok(held) => return Ok(Ticket::holding(gw, &want, held, gate)),
                Err(Denied::Short(_)) => {}
                Err(Denied::Other(e)) => return Err(e),
            }
        }
        gate.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&gate);
        // In line, in arrival order; past the deadline, go for what is left.
        let _turn = tokio::time::timeout_at(deadline, gate.line.lock())
            .await
            .ok();
        loop {
            let released = gate.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            match hold(&gw, &want, None).await {
                Ok(held) => return Ok(Ticket::holding(gw, &want, held, gate.clone())),
                Err(Denied::Other(e)) => return Err(e),
                Err(Denied::Short(_)) => {}
            }
            let others_hold = gate.holding.load(Ordering::SeqCst) > 0;
            if !others_hold || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::select! {
                () = &mut released => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
        match hold(&gw, &want, Some(want.floor)).await {
            Ok(held) => Ok(Ticket::holding(gw, &want, held, gate.clone())),
            Err(Denied::Short(e) | Denied::Other(e)) => Err(e),
        }
    }

    fn holding(gw: Arc<Gateway>, want: &Reserve, held: Credits, gate: Arc<Gate>) -> Ticket {
        gate.holding.fetch_add(1, Ordering::SeqCst);
        gw.metrics.open_holds.inc();
        Ticket {
            inner: Some(Inner {
                gw,
                user_id: want.user_id.clone(),
                request_id: want.request_id.clone(),
                held,
                gate: Some(gate),
            }),
        }
    }

    /// What the ticket holds (zero: nothing; the request costs nothing, or was refused).
    pub fn held(&self) -> Credits {
        self.inner.as_ref().map_or(Credits::ZERO, |i| i.held)
    }

    /// Charges `cost` (at most the hold; any excess is booked as overage) and writes `usage`;
    /// durable when this returns. Without a hold, writes `usage` as a free success.
    pub async fn settle(mut self, cost: Credits, usage: UsageRecord) -> Result<Settled, ApiError> {
        let Some(inner) = self.inner.take() else {
            return Err(internal("-", "a ticket was settled after it was closed"));
        };
        let op = if inner.held.is_positive() {
            Op::Settle(Settle {
                user_id: inner.user_id.clone(),
                request_id: inner.request_id.clone(),
                cost,
                usage: usage.clone(),
            })
        } else {
            Op::Release(Release {
                user_id: inner.user_id.clone(),
                request_id: inner.request_id.clone(),
                usage: Some(usage.clone()),
            })
        };
        let receipt = match apply_retrying(&inner, op).await {
            Ok(receipt) => receipt,
            Err(why) => {
                tracing::error!(request_id = %inner.request_id, %why, "a settle failed; releasing its hold");
                let mut failed = usage;
                failed.error_type = Some(crate::ledger::UsageErrorType::InternalError);
                failed.error_message = Some(format!("settling failed: {why}"));
                let request_id = inner.request_id.clone();
                close(inner, failed).await;
                return Err(ApiError::Internal { request_id });
            }
        };
        let settled = match receipt {
            Receipt::Settle(s) => match s.entry {
                Some(entry) => {
                    after_charge(&inner, entry.balance_after, s.charged);
                    Settled {
                        charged: s.charged,
                        balance: entry.balance_after,
                    }
                }
                None => Settled {
                    charged: s.charged,
                    balance: balance(&inner).await,
                },
            },
            _ => Settled {
                charged: Credits::ZERO,
                balance: balance(&inner).await,
            },
        };
        finish(&inner);
        Ok(settled)
    }

    /// Releases the hold, charging nothing, and writes `usage` (the request's failure).
    pub async fn release(mut self, usage: UsageRecord) {
        if let Some(inner) = self.inner.take() {
            close(inner, usage).await;
        }
    }
}

impl Drop for Ticket {
    /// Only a bug or a panic gets here with the ticket open: release its hold, so the user's
    /// credit is not locked until the hold expires.
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        tracing::error!(request_id = %inner.request_id, "a request ended without settling; releasing its hold");
        let usage = UsageRecord {
            error_type: Some(crate::ledger::UsageErrorType::InternalError),
            error_message: Some("the request ended without settling".into()),
            ..UsageRecord::default()
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(close(inner, usage));
        }
    }
}

/// Why a hold was not granted.
enum Denied {
    /// The user cannot afford it now (a 402 if nothing changes).
    Short(ApiError),
    Other(ApiError),
}

/// One hold attempt: all of `want.worst`, or (flexible) what the user can afford down to
/// `floor`.
async fn hold(gw: &Gateway, want: &Reserve, floor: Option<Credits>) -> Result<Credits, Denied> {
    let op = Op::Hold(HoldRequest {
        user_id: want.user_id.clone(),
        request_id: want.request_id.clone(),
        amount: want.worst,
        min_amount: floor,
        ttl: want.ttl,
    });
    match gw.writer.apply(op).await {
        Err(e) => Err(Denied::Other(ApiError::Overloaded(e.to_string()))),
        Ok(Ok(Receipt::Hold(h))) => Ok(h.amount),
        Ok(Ok(other)) => Err(Denied::Other(internal(
            &want.request_id,
            &format!("a hold returned {other:?}"),
        ))),
        Ok(Err(LedgerError::Refused(Refusal::InsufficientCredit {
            available, needed, ..
        }))) => Err(Denied::Short(ApiError::InsufficientCredit {
            available,
            // The least this request could run with, whichever attempt was refused.
            needed: want.floor.min(needed),
            estimate: want.worst,
        })),
        Ok(Err(LedgerError::Refused(
            refusal @ (Refusal::NoFleetGrant { .. } | Refusal::FleetCreditShort { .. }),
        ))) => Err(Denied::Short(ApiError::NoFleetGrant(format!(
            "{refusal}. {}",
            fleet_outlook(gw.demand.unreachable_for())
        )))),
        Ok(Err(LedgerError::Refused(Refusal::SpendCapReached {
            cap, used, held, ..
        }))) => Err(Denied::Short(ApiError::SpendCap { cap, used, held })),
        Ok(Err(LedgerError::TooManyOpenHolds { open, .. })) => {
            Err(Denied::Other(ApiError::TooManyInFlight(format!(
                "too many requests in flight for this user ({open}); retry when some finish"
            ))))
        }
        Ok(Err(e)) => Err(Denied::Other(internal(&want.request_id, &e.to_string()))),
    }
}

/// What a refused fleet user can expect, as far as this host knows.
fn fleet_outlook(unreachable_for: Option<std::time::Duration>) -> String {
    match unreachable_for {
        Some(for_) => format!(
            "This host cannot reach the sync server (for {} s) to get more of the user's credit: \
             it has spent what it was granted, and any overdraft line. Retry on another host or \
             later",
            for_.as_secs()
        ),
        None => "More is being asked of the user's central pool: retry in a moment; if the pool \
                 is spent, more credit must be bought"
            .to_owned(),
    }
}

fn internal(request_id: &str, detail: &str) -> ApiError {
    tracing::error!(request_id, detail, "internal error");
    ApiError::Internal {
        request_id: request_id.to_owned(),
    }
}

/// Applies a settle or release, retrying a batch that failed as a whole (both are idempotent by
/// request id, so a retry never charges twice). `Err` says why it could not be applied.
async fn apply_retrying(inner: &Inner, op: Op) -> Result<Receipt, String> {
    let mut wait = Duration::from_millis(20);
    for attempt in 1..=SETTLE_ATTEMPTS {
        match inner.gw.writer.apply_waiting(op.clone()).await {
            Err(e) => return Err(e.to_string()),
            Ok(Err(LedgerError::BatchFailed(why))) if attempt < SETTLE_ATTEMPTS => {
                tracing::warn!(request_id = %inner.request_id, %why, "retrying a settle");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Ok(result) => return result.map_err(|e| e.to_string()),
        }
    }
    Err("the ledger refused every attempt".into())
}

/// Releases `inner`'s hold with `usage` as its usage row.
async fn close(inner: Inner, usage: UsageRecord) {
    let op = Op::Release(Release {
        user_id: inner.user_id.clone(),
        request_id: inner.request_id.clone(),
        usage: Some(usage),
    });
    if let Err(why) = apply_retrying(&inner, op).await {
        tracing::error!(request_id = %inner.request_id, %why, "could not release a request's hold");
    }
    finish(&inner);
}

/// The ticket no longer holds credit: count it and wake the user's line.
fn finish(inner: &Inner) {
    if let Some(gate) = &inner.gate {
        gate.holding.fetch_sub(1, Ordering::SeqCst);
        gate.released.notify_waiters();
        inner.gw.metrics.open_holds.dec();
    }
}

async fn balance(inner: &Inner) -> Credits {
    let user = inner.user_id.clone();
    inner
        .gw
        .writer
        .read(move |l| l.account(&user).map(|a| a.balance))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(Credits::ZERO)
}

/// Counts the charge and sends a low-balance alert if this charge crossed the threshold.
fn after_charge(inner: &Inner, balance_after: Credits, charged: Credits) {
    let gw = &inner.gw;
    gw.metrics
        .credits_charged_nanos
        .inc_by(u64::try_from(charged.nanos()).unwrap_or(0));
    let Some(threshold) = gw.config.alerts.low_balance_threshold else {
        return;
    };
    let before = balance_after.checked_add(charged).unwrap_or(Credits::MAX);
    if before >= threshold
        && balance_after < threshold
        && let Some(alerts) = &gw.alerts
    {
        alerts.send(super::alerts::Alert {
            user_id: inner.user_id.clone(),
            balance: balance_after,
            threshold,
            request_id: inner.request_id.clone(),
        });
    }
}
