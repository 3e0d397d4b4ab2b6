//! Reconcile: recompute every balance from the central journal, compare with the cache and with
//! what the agents reported, check every stream's chain and the exactly-once invariants, and list
//! every difference with its cause.
//!
//! Guarantees:
//! - One REPEATABLE READ, READ ONLY transaction: every check sees the same snapshot, and
//!   reconcile never writes.
//! - Set-based SQL for every check (one pass per check over `credit_transactions`, hash and sort
//!   aggregates), and the hash check streams the journal through a cursor in chunks of
//!   [`chain::CHUNK_ROWS`] rows, so memory stays bounded and a million entries take seconds.
//! - A report lists at most [`DIFFERENCES_PER_KIND_MAX`] differences of one kind, then says more
//!   were left out; `ok` is true only when there is no difference at all.
//!
//! Checks (the `kind` of each difference is in [`kind`]):
//! - per user: SUM(amount) = `user_credits.balance` (the cache) = `balance_after` of the user's
//!   latest entry (streams ordered by when the server first saw them, then seq); lifetime
//!   purchased = SUM(purchase); entries only from the home agent — an agent other than the home
//!   whose latest entry for the user leaves a non-zero balance is a difference (a former home
//!   whose entries end at 0, after a legitimate move, is not);
//! - per (user, stream): each entry's `balance_before` = the previous entry's `balance_after`;
//! - per stream: seqs 1..acked_seq all present, none beyond acked_seq, `head_hash` = the hash of
//!   entry acked_seq, every `prev_hash` links to the previous entry's hash (genesis for seq 1),
//!   and every entry's hash recomputes from its stored fields;
//! - exactly once: one usage debit per (agent, request id); each central credit operation's key
//!   on exactly one entry, from the agent it was sent to, for its user, amount and type; an
//!   operation with no entry yet is "not yet applied"; an entry carrying a central key
//!   (`admin:` / `stripe:`) with no operation behind it;
//! - quarantined agents.

mod chain;
mod checks;

use std::collections::{BTreeMap, HashMap};

use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::central::CentralError;

/// Most differences of one kind listed in a report.
pub const DIFFERENCES_PER_KIND_MAX: usize = 1_000;

/// The kinds of difference.
pub mod kind {
    /// `user_credits.balance` ≠ SUM(amount) of the user's entries.
    pub const BALANCE_CACHE: &str = "balance_cache";
    /// SUM(amount) ≠ `balance_after` of the user's latest entry (home users; a fleet user's
    /// chains are per agent: [`FLEET_HOLDING`]).
    pub const BALANCE_AGENT: &str = "balance_agent";
    /// `user_credits.lifetime_credits_purchased` ≠ SUM(purchase).
    pub const LIFETIME_PURCHASED: &str = "lifetime_purchased";
    /// A user's credit is held by an agent other than their home.
    pub const NOT_HOME_AGENT: &str = "entries_from_other_agent";
    /// An entry's `balance_before` ≠ the previous entry's `balance_after` (same user, stream).
    pub const BALANCE_CHAIN: &str = "balance_chain";
    /// Seqs missing at or below a stream's acked head.
    pub const STREAM_GAP: &str = "stream_gap";
    /// Entries stored beyond a stream's acked head.
    pub const BEYOND_ACKED: &str = "beyond_acked";
    /// A stream's `head_hash` is not the hash of its entry `acked_seq`.
    pub const HEAD_HASH: &str = "head_hash";
    /// An entry's `prev_hash` is not its predecessor's hash.
    pub const HASH_CHAIN: &str = "hash_chain";
    /// An entry's hash does not recompute from its stored fields.
    pub const HASH_MISMATCH: &str = "hash_mismatch";
    /// An entry whose stored fields cannot be put back into canonical form.
    pub const UNREADABLE_ENTRY: &str = "unreadable_entry";
    /// More than one usage debit for one (agent, request id).
    pub const DUPLICATE_USAGE: &str = "duplicate_usage";
    /// A central credit operation with no entry yet.
    pub const CREDIT_NOT_APPLIED: &str = "credit_not_applied";
    /// A central credit operation's key on more than one entry.
    pub const CREDIT_DUPLICATED: &str = "credit_duplicated";
    /// The entry for a credit operation differs from it (amount, user, type or agent).
    pub const CREDIT_MISMATCH: &str = "credit_mismatch";
    /// An entry carries a central operation key no operation has.
    pub const ENTRY_WITHOUT_OPERATION: &str = "entry_without_operation";
    /// A fleet user's pool − debt ≠ pool credits − grants + releases − overdrafts.
    pub const FLEET_POOL: &str = "fleet_pool";
    /// A home user's debt ≠ what their operations booked as owed − what later credit repaid.
    pub const DEBT: &str = "debt";
    /// What an agent holds of a fleet user ≠ the sum of its entries for them, or ≠ the
    /// `balance_after` of its latest one.
    pub const FLEET_HOLDING: &str = "fleet_holding";
    /// An agent is quarantined (it replayed an entry with different content).
    pub const AGENT_QUARANTINED: &str = "agent_quarantined";
    /// More differences of one kind than the report lists.
    pub const TRUNCATED: &str = "truncated";
}

/// One difference between what the books should say and what they say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    /// One of [`kind`].
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The agent concerned, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// What differs and, where known, why.
    pub detail: String,
}

/// How much was checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checked {
    pub users: i64,
    pub agents: i64,
    pub quarantined_agents: i64,
    pub streams: i64,
    pub entries: i64,
    pub hashes_verified: i64,
    pub usage_debits: i64,
    pub credit_operations: i64,
}

/// The reconcile report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// True when there is no difference.
    pub ok: bool,
    pub checked: Checked,
    pub differences: Vec<Difference>,
}

/// Collects differences, at most [`DIFFERENCES_PER_KIND_MAX`] per kind.
#[derive(Debug, Default)]
pub(crate) struct Collector {
    differences: Vec<Difference>,
    per_kind: BTreeMap<&'static str, usize>,
}

impl Collector {
    pub(crate) fn push(
        &mut self,
        kind: &'static str,
        user_id: Option<&str>,
        agent: Option<&str>,
        detail: String,
    ) {
        let n = self.per_kind.entry(kind).or_default();
        *n += 1;
        if *n <= DIFFERENCES_PER_KIND_MAX {
            self.differences.push(Difference {
                kind: kind.to_owned(),
                user_id: user_id.map(str::to_owned),
                agent: agent.map(str::to_owned),
                detail,
            });
        }
    }

    fn finish(mut self, checked: Checked) -> Report {
        for (kind, n) in &self.per_kind {
            if *n > DIFFERENCES_PER_KIND_MAX {
                self.differences.push(Difference {
                    kind: kind::TRUNCATED.to_owned(),
                    user_id: None,
                    agent: None,
                    detail: format!(
                        "further {kind} differences not listed (a report lists at most \
                         {DIFFERENCES_PER_KIND_MAX} per kind)"
                    ),
                });
            }
        }
        Report {
            ok: self.differences.is_empty(),
            checked,
            differences: self.differences,
        }
    }
}

/// Agent names by id (for messages).
#[derive(Debug, Default)]
pub(crate) struct Names(HashMap<Uuid, String>);

impl Names {
    pub(crate) fn of(&self, id: Uuid) -> String {
        self.0.get(&id).cloned().unwrap_or_else(|| id.to_string())
    }

    pub(crate) fn of_opt(&self, id: Option<Uuid>) -> String {
        id.map_or_else(|| "none".to_owned(), |id| self.of(id))
    }
}

/// Runs every check on one consistent snapshot and returns the report.
pub async fn run(pool: &Pool) -> Result<Report, CentralError> {
    let mut conn = pool.get().await?;
    let tx = conn
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let mut out = Collector::default();
    let mut checked = Checked::default();
    let mut clock = Clock::start();
    let names = checks::agents(&tx, &mut out, &mut checked).await?;
    checks::users(&tx, &mut out, &mut checked, &names).await?;
    clock.lap("balances");
    checks::homes(&tx, &mut out, &names).await?;
    clock.lap("homes");
    checks::fleet(&tx, &mut out, &names).await?;
    checks::home_debts(&tx, &mut out).await?;
    clock.lap("fleet");
    checks::balance_chains(&tx, &mut out, &names).await?;
    clock.lap("balance chains");
    checks::streams(&tx, &mut out, &mut checked, &names).await?;
    clock.lap("streams");
    checks::usage(&tx, &mut out, &mut checked, &names).await?;
    checks::credit_operations(&tx, &mut out, &mut checked, &names).await?;
    checks::orphan_central_keys(&tx, &mut out, &names).await?;
    clock.lap("exactly once");
    checked.hashes_verified = chain::verify(&tx, &mut out, &names).await?;
    clock.lap("hashes");
    tx.rollback().await?;
    Ok(out.finish(checked))
}

/// Logs how long each group of checks took (debug level).
struct Clock(std::time::Instant);

impl Clock {
    fn start() -> Clock {
        Clock(std::time::Instant::now())
    }

    fn lap(&mut self, what: &str) {
        let now = std::time::Instant::now();
        tracing::debug!(
            check = what,
            elapsed_ms = (now - self.0).as_millis() as u64,
            "reconcile"
        );
        self.0 = now;
    }
}
