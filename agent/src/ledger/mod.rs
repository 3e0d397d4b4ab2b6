//! The ledger: the agent's prepaid credit books in one SQLite file. This module and its children
//! are the only code that touches SQLite.
//!
//! Shape: [`Ledger`] owns a connection and a [`Clock`]. Writes run as batches ([`Ledger::apply`]):
//! one `BEGIN IMMEDIATE` transaction, one commit (group commit), each operation with its own
//! result. A batch runs first without savepoints; if any operation fails, that attempt is rolled
//! back and the batch runs again with a savepoint per operation, so a failed operation never
//! disturbs the others. Decisions are pure functions in [`rules`]; the SQL modules load
//! values, ask `rules`, and write what it says.
//!
//! Invariants (checked by `tollgate verify`, see [`verify`]):
//! - a user's balance = the sum of their journal amounts = the sum of their lots' remaining;
//! - 0 ≤ open holds ≤ balance, so available credit is never negative;
//! - the journal is append-only, chained per user by balances and globally by seq and hash;
//! - every keyed operation from outside has one permanent outcome.
//!
//! Sync (SYNC.md) lives here too: [`sync`] exports entries as hashed and keeps the acknowledged
//! head (forward only, never past the local head); [`inbox`] applies the server's events, each
//! with its inbox cursor in one transaction.

pub mod alerts;
pub mod api_keys;
pub mod catalog;
pub mod clock;
mod credits;
pub mod db;
mod error;
pub mod escrow;
pub mod health;
mod holds;
mod idempotency;
pub mod inbox;
pub mod journal;
mod lots;
pub mod overview;
pub mod prices;
pub mod provider_keys;
pub mod reports;
pub mod responses;
pub mod rules;
mod session;
pub mod sql;
pub mod sync;
mod types;
mod users;
pub mod verify;

use std::path::Path;
use std::sync::Arc;

use rusqlite::{Connection, TransactionBehavior};

pub use clock::{Clock, ManualClock, SystemClock};
pub use credits::NOTE_LEN_MAX;
pub use db::OpenMode;
pub use error::{LedgerError, Refusal};
pub use holds::{HOLD_TTL_DEFAULT, OPEN_HOLDS_PER_USER_MAX, REQUEST_ID_LEN_MAX};
pub use idempotency::IDEMPOTENCY_KEY_LEN_MAX;
pub use inbox::{InboxOutcome, SnapshotApplied};
pub use sync::{SyncIdentity, SyncResult, SyncStatus};
pub use types::*;
pub use users::{USER_ID_LEN_MAX, validate_user_id};

use idempotency::{Outcome, fingerprint, validate_key};
use session::Session;

/// Most operations accepted in one batch: bounds a transaction's size and a writer's lock time.
pub const BATCH_OPS_MAX: usize = 1_000;

/// The agent's ledger over one SQLite file.
#[derive(Debug)]
pub struct Ledger {
    conn: Connection,
    clock: Arc<dyn Clock>,
}

impl Ledger {
    /// Opens the ledger at `path` (see [`db::open`] for what opening guarantees).
    pub fn open(path: &Path, mode: OpenMode, clock: Arc<dyn Clock>) -> Result<Ledger, LedgerError> {
        Ok(Ledger {
            conn: db::open(path, mode)?,
            clock,
        })
    }

    /// The ledger's connection, for the read-only queries of the sibling modules.
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Runs `ops` in one transaction, each in its own savepoint, and commits once. Each operation
    /// gets its own result: a refused operation leaves no trace but the outcome record of its
    /// idempotency key, and does not disturb the others. The outer error means the batch as a
    /// whole failed (storage): nothing of it was committed.
    pub fn apply(&mut self, ops: &[Op]) -> Result<Vec<Result<Receipt, LedgerError>>, LedgerError> {
        if ops.len() > BATCH_OPS_MAX {
            return Err(LedgerError::InvalidField {
                field: "batch",
                why: format!("{} operations, the limit is {BATCH_OPS_MAX}", ops.len()),
            });
        }
        // Most batches succeed whole: run them without per-operation savepoints (the largest
        // cost measured on the hot path). If any operation fails, nothing of that attempt is
        // committed and the batch runs again with a savepoint around each operation.
        if let Some(results) = self.run_batch(ops, Guard::None)? {
            return Ok(results);
        }
        self.run_batch(ops, Guard::Savepoints)?
            .ok_or_else(|| LedgerError::Corrupt("a guarded batch gave up".to_owned()))
    }

    /// [`Ledger::apply`] with a choice of durability. `Durability::Deferred` commits without an
    /// fsync (`synchronous=NORMAL` for that transaction only): the batch survives the process
    /// being killed, and the next synced commit on this file makes it durable against power loss
    /// too (its fsync of the WAL covers every earlier frame). The gateway defers its holds: a hold
    /// lost with the machine belongs to a request that died with it, and its settle, which is
    /// synced, could only come after.
    pub fn apply_with(
        &mut self,
        ops: &[Op],
        durability: Durability,
    ) -> Result<Vec<Result<Receipt, LedgerError>>, LedgerError> {
        if durability == Durability::Synced {
            return self.apply(ops);
        }
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        let result = self.apply(ops);
        // Restored whatever happened: every other write of this connection stays synced. If it
        // cannot be, the connection must not be used again (its writes would not be synced).
        if let Err(e) = self.conn.pragma_update(None, "synchronous", "FULL") {
            return Err(LedgerError::Pragma(format!(
                "could not restore synchronous=FULL after a deferred batch ({e}); \
                 the connection is unusable"
            )));
        }
        result
    }

    /// One attempt at a batch in one transaction. Unguarded, it gives up (`None`, nothing
    /// committed) at the first operation that fails; guarded, every operation gets its result.
    fn run_batch(
        &mut self,
        ops: &[Op],
        guard: Guard,
    ) -> Result<Option<Vec<Result<Receipt, LedgerError>>>, LedgerError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Read the clock once the write lock is held: waiting for it must not date entries in
        // the past or make created_at disagree with seq.
        let now = self.clock.now();
        let mut results = Vec::with_capacity(ops.len());
        {
            let mut session = Session::begin(&tx, now)?;
            for op in ops {
                let result = run_op(&mut session, op, guard)?;
                if result.is_err() && guard == Guard::None {
                    return Ok(None); // dropping `tx` rolls the attempt back
                }
                results.push(result);
            }
        }
        tx.commit()?;
        Ok(Some(results))
    }

    /// Runs one write that is not a batchable operation (user management, escrow) in its own
    /// transaction.
    pub(super) fn write<T>(
        &mut self,
        f: impl FnOnce(&mut Session<'_>) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = self.clock.now();
        let value = {
            let mut session = Session::begin(&tx, now)?;
            f(&mut session)?
        };
        tx.commit()?;
        Ok(value)
    }

    fn apply_one(&mut self, op: Op) -> Result<Receipt, LedgerError> {
        self.apply(std::slice::from_ref(&op))?
            .pop()
            .unwrap_or_else(|| {
                Err(LedgerError::Corrupt(
                    "a batch of one returned no result".to_owned(),
                ))
            })
    }

    pub fn add_credits(&mut self, req: AddCredits) -> Result<EntryReceipt, LedgerError> {
        match self.apply_one(Op::AddCredits(req))? {
            Receipt::Entry(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    pub fn debit(&mut self, req: Debit) -> Result<EntryReceipt, LedgerError> {
        match self.apply_one(Op::Debit(req))? {
            Receipt::Entry(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    pub fn hold(&mut self, req: HoldRequest) -> Result<HoldReceipt, LedgerError> {
        match self.apply_one(Op::Hold(req))? {
            Receipt::Hold(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    pub fn settle(&mut self, req: Settle) -> Result<SettleReceipt, LedgerError> {
        match self.apply_one(Op::Settle(req))? {
            Receipt::Settle(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    pub fn release(&mut self, req: Release) -> Result<ReleaseReceipt, LedgerError> {
        match self.apply_one(Op::Release(req))? {
            Receipt::Release(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    pub fn create_user(&mut self, new: &NewUser) -> Result<UserAccount, LedgerError> {
        self.write(|s| s.create_user(new))
    }

    pub fn change_user(
        &mut self,
        user_id: &str,
        changes: &UserChanges,
    ) -> Result<UserAccount, LedgerError> {
        self.write(|s| s.change_user(user_id, changes))
    }

    /// The user as the next request would see them (renewal and expiry applied and saved).
    pub fn account(&mut self, user_id: &str) -> Result<UserAccount, LedgerError> {
        self.write(|s| s.account(user_id))
    }

    /// Every user, brought up to date.
    pub fn accounts(&mut self) -> Result<Vec<UserAccount>, LedgerError> {
        let ids = users::user_ids(&self.conn)?;
        self.write(|s| ids.iter().map(|id| s.account(id)).collect())
    }

    /// A user's journal, newest first.
    pub fn history(&mut self, user_id: &str, limit: u32) -> Result<Vec<JournalEntry>, LedgerError> {
        self.account(user_id)?;
        journal::history(&self.conn, user_id, limit)
    }

    /// A user's lots with credit left, in burn order.
    pub fn live_lots(&self, user_id: &str) -> Result<Vec<Lot>, LedgerError> {
        catalog::live_lots(&self.conn, user_id, self.clock.now())
    }
}

fn unexpected(receipt: &Receipt) -> LedgerError {
    LedgerError::Corrupt(format!(
        "an operation returned the wrong receipt: {receipt:?}"
    ))
}

/// When a committed batch must be on stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync'd before `apply` returns (the default for every write).
    Synced,
    /// Committed (it survives the process being killed) but fsync'd only with the next synced
    /// commit; see [`Ledger::apply_with`].
    Deferred,
}

/// Whether each operation of a batch runs inside its own savepoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guard {
    /// No savepoints: the caller abandons the whole transaction if any operation fails.
    None,
    /// A savepoint per operation: a failed one is rolled back alone.
    Savepoints,
}

/// Runs one operation. Guarded, it runs in its own savepoint: a storage error is returned as the
/// outer error (the batch fails), any other error is the operation's own result, rolled back,
/// and a refusal of a keyed operation is recorded. Unguarded, an error is returned as is and the
/// caller must roll the transaction back.
fn run_op(
    session: &mut Session<'_>,
    op: &Op,
    guard: Guard,
) -> Result<Result<Receipt, LedgerError>, LedgerError> {
    let keyed = match op {
        Op::AddCredits(a) => a
            .idempotency_key
            .as_deref()
            .map(|k| (k, "add_credits", fingerprint("add_credits", a))),
        Op::Debit(d) => d
            .idempotency_key
            .as_deref()
            .map(|k| (k, "debit", fingerprint("debit", d))),
        Op::Hold(_) | Op::Settle(_) | Op::Release(_) => None,
    };
    if let Some((key, _, print)) = &keyed {
        if let Err(e) = validate_key(key) {
            return Ok(Err(e));
        }
        match session.recorded_outcome(key, print) {
            Ok(Some(outcome)) => return Ok(outcome.into_result().map(Receipt::Entry)),
            Ok(None) => {}
            Err(e) if e.is_storage() => return Err(e),
            Err(e) => return Ok(Err(e)),
        }
    }
    let head = session.head;
    if guard == Guard::Savepoints {
        session.conn.prepare_cached(sql::SAVEPOINT)?.execute([])?;
    }
    let result = match op {
        Op::AddCredits(a) => session.add_credits(a).map(Receipt::Entry),
        Op::Debit(d) => session.debit(d).map(Receipt::Entry),
        Op::Hold(h) => session.hold(h).map(Receipt::Hold),
        Op::Settle(s) => session.settle(s).map(Receipt::Settle),
        Op::Release(r) => session.release(r).map(Receipt::Release),
    };
    let result = match result {
        Err(e) if guard == Guard::None => return Ok(Err(e)),
        Err(e) => {
            rollback(session, head)?;
            // A foreign key the operation's input named and that does not exist is that
            // operation's error: SQLite aborts only the statement, the others carry on.
            if e.is_storage() && !is_constraint_violation(&e) {
                return Err(e);
            }
            Err(e)
        }
        ok => ok,
    };
    if let Some((key, operation, print)) = &keyed {
        let outcome = match &result {
            Ok(Receipt::Entry(r)) => Some(Outcome::Ok(r.clone())),
            Err(LedgerError::Refused(refusal)) => Some(Outcome::Refused(refusal.clone())),
            _ => None,
        };
        if let Some(outcome) = outcome {
            session.record_outcome(key, operation, print, &outcome)?;
        }
    }
    if guard == Guard::Savepoints {
        session
            .conn
            .prepare_cached(sql::RELEASE_SAVEPOINT)?
            .execute([])?;
    }
    Ok(result)
}

/// A foreign key the operation's input named that does not exist (e.g. a usage record's BYOK key
/// id): that operation's own error. Every other constraint guards an invariant of the books, so
/// breaking it is a bug and fails the whole batch.
fn is_constraint_violation(e: &LedgerError) -> bool {
    matches!(
        e,
        LedgerError::Storage(rusqlite::Error::SqliteFailure(f, _))
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY
    )
}

/// Undoes the current operation's writes and the chain head it advanced.
fn rollback(session: &mut Session<'_>, head: journal::ChainHead) -> Result<(), LedgerError> {
    if session.conn.is_autocommit() {
        // SQLite already rolled the whole transaction back (disk full, I/O error): there is no
        // savepoint left, and the caller's error is the one to report.
        return Ok(());
    }
    session
        .conn
        .prepare_cached(sql::ROLLBACK_SAVEPOINT)?
        .execute([])?;
    session.head = head;
    Ok(())
}

#[cfg(test)]
mod hot_path_tests {
    //! Pins the SQL the ledger issues per metered request to `sql::HOLD_PATH` and
    //! `sql::SETTLE_PATH`, which the benchmark's baseline replays: if the hot path changes, this
    //! fails until the lists (and the baseline) follow.

    use std::sync::{Arc, Mutex};

    use rusqlite::trace::{TraceEvent, TraceEventCodes};
    use tollgate_schema::money::Credits;

    use super::*;

    static TRACED: Mutex<Vec<String>> = Mutex::new(Vec::new());

    fn record(event: TraceEvent<'_>) {
        // Trigger bodies report themselves as "-- TRIGGER …": not statements the ledger issues.
        if let TraceEvent::Stmt(stmt, text) = event
            && !text.starts_with("--")
        {
            TRACED.lock().unwrap().push(stmt.sql().into_owned());
        }
    }

    fn traced(ledger: &mut Ledger, ops: &[Op]) -> Vec<String> {
        TRACED.lock().unwrap().clear();
        ledger
            .conn
            .trace_v2(TraceEventCodes::SQLITE_TRACE_STMT, Some(record));
        let results = ledger.apply(ops).unwrap();
        ledger.conn.trace_v2(TraceEventCodes::empty(), None);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        std::mem::take(&mut *TRACED.lock().unwrap())
    }

    fn batch_of(path: &[&str], times: usize) -> Vec<String> {
        let mut expected = vec!["BEGIN IMMEDIATE".to_owned(), sql::CHAIN_HEAD.to_owned()];
        for _ in 0..times {
            expected.extend(path.iter().map(|s| (*s).to_owned()));
        }
        expected.push("COMMIT".to_owned());
        expected
    }

    #[test]
    fn a_metered_request_issues_exactly_the_listed_statements() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(
            &dir.path().join("t.db"),
            OpenMode::CreateIfMissing,
            Arc::new(SystemClock),
        )
        .unwrap();
        for user in ["a", "b"] {
            ledger.create_user(&NewUser::new(user)).unwrap();
            ledger
                .add_credits(AddCredits::new(
                    user,
                    Credits::from_nanos(10_000_000_000),
                    CreditKind::Purchase,
                ))
                .unwrap();
        }
        let requests = [("a", "r1"), ("b", "r2")];
        let holds: Vec<Op> = requests
            .iter()
            .map(|(user, id)| {
                Op::Hold(HoldRequest {
                    user_id: (*user).into(),
                    request_id: (*id).into(),
                    amount: Credits::from_nanos(1_000_000_000),
                    min_amount: None,
                    ttl: HOLD_TTL_DEFAULT,
                })
            })
            .collect();
        assert_eq!(traced(&mut ledger, &holds), batch_of(sql::HOLD_PATH, 2));
        let settles: Vec<Op> = requests
            .iter()
            .map(|(user, id)| {
                Op::Settle(Settle {
                    user_id: (*user).into(),
                    request_id: (*id).into(),
                    cost: Credits::from_nanos(123_456_789),
                    usage: UsageRecord {
                        endpoint: "/v1/chat/completions".into(),
                        model: "m".into(),
                        ..UsageRecord::default()
                    },
                })
            })
            .collect();
        assert_eq!(traced(&mut ledger, &settles), batch_of(sql::SETTLE_PATH, 2));
    }
}

#[cfg(test)]
mod durability_tests {
    use std::sync::Arc;

    use tollgate_schema::money::Credits;

    use super::*;

    fn synchronous(ledger: &Ledger) -> i64 {
        ledger
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_deferred_batch_commits_and_leaves_the_connection_synced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut ledger =
            Ledger::open(&path, OpenMode::CreateIfMissing, Arc::new(SystemClock)).unwrap();
        ledger.create_user(&NewUser::new("a")).unwrap();
        ledger
            .add_credits(AddCredits::new(
                "a",
                Credits::from_nanos(5_000_000_000),
                CreditKind::Purchase,
            ))
            .unwrap();
        assert_eq!(synchronous(&ledger), 2, "FULL after open");
        let hold = |id: &str, amount: i64| {
            Op::Hold(HoldRequest {
                user_id: "a".into(),
                request_id: id.into(),
                amount: Credits::from_nanos(amount),
                min_amount: None,
                ttl: HOLD_TTL_DEFAULT,
            })
        };
        let results = ledger
            .apply_with(&[hold("r1", 1_000_000_000)], Durability::Deferred)
            .unwrap();
        assert!(results[0].is_ok());
        assert_eq!(synchronous(&ledger), 2, "FULL again after a deferred batch");
        // A refused operation in a deferred batch restores it too.
        let results = ledger
            .apply_with(&[hold("r2", 9_000_000_000)], Durability::Deferred)
            .unwrap();
        assert!(results[0].is_err());
        assert_eq!(synchronous(&ledger), 2);
        // The deferred hold is committed: another connection sees it.
        let other = Ledger::open(&path, OpenMode::MustExist, Arc::new(SystemClock)).unwrap();
        let held: i64 = other
            .conn
            .query_row(
                "SELECT held FROM user_credits WHERE user_id = 'a'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(held, 1_000_000_000);
    }
}
