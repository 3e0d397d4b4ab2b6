//! The ledger's one error type, in domain words.
//!
//! Every variant but [`LedgerError::Storage`] and its siblings is a refusal of bad or
//! unaffordable input, and the operation that returned it wrote nothing (except, for a keyed
//! operation refused for lack of credit or by the spend cap, the record that makes a retry return
//! the same refusal). Messages name what was wrong and are safe to show a user.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tollgate_schema::money::Credits;

use super::types::Tier;

/// Why the ledger refused an operation because of money, not input: the only refusals recorded
/// under an idempotency key, so a retry after a refusal is refused the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "refusal", rename_all = "snake_case")]
pub enum Refusal {
    #[error("insufficient credit for {user}: available {available}, needed {needed}")]
    InsufficientCredit {
        user: String,
        available: Credits,
        needed: Credits,
    },
    /// A fleet user with no valid grant here: the server has not granted this agent any of
    /// their pool lately (the pool is empty, or this agent cannot reach the server).
    #[error(
        "fleet user {user} has no valid grant of credit on this host: the sync server has not \
         granted this host any of their pool lately (it is spent, or the server is unreachable)"
    )]
    NoFleetGrant { user: String },
    /// A fleet user whose grants on this host do not cover the request (more is asked of their
    /// pool by the escrow task).
    #[error(
        "fleet user {user} has {available} credits granted to this host, less than the {needed} \
         this request needs"
    )]
    FleetCreditShort {
        user: String,
        available: Credits,
        needed: Credits,
    },
    #[error(
        "monthly spend cap reached for {user}: cap {cap}, used {used}, held {held}, needed {needed}"
    )]
    SpendCapReached {
        user: String,
        cap: Credits,
        used: Credits,
        held: Credits,
        needed: Credits,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("invalid user id {0:?}: use 1-128 characters of letters, digits and . _ @ + -")]
    InvalidUserId(String),
    #[error("invalid amount {amount}: {why}")]
    InvalidAmount { amount: Credits, why: &'static str },
    #[error("unknown credit package {0:?}")]
    UnknownPackage(String),
    #[error("package {package:?} is {credits} credits, not {amount}")]
    PackageAmountMismatch {
        package: String,
        credits: Credits,
        amount: Credits,
    },
    #[error("package {package:?} needs the {min_tier} tier or above; {user} is on the {tier} tier")]
    PackageAboveTier {
        package: String,
        user: String,
        tier: Tier,
        min_tier: Tier,
    },
    #[error(
        "idempotency key {key:?} was already used for a different operation; use a new key for a new operation"
    )]
    IdempotencyConflict { key: String },
    #[error("invalid idempotency key: {0}")]
    InvalidIdempotencyKey(&'static str),
    #[error("request {request_id:?} already has a hold of {existing}, not {requested}")]
    HoldConflict {
        request_id: String,
        existing: Credits,
        requested: Credits,
    },
    #[error("request {0:?} was already settled")]
    AlreadySettled(String),
    #[error("no hold for request {0:?}: a request is reserved before it is settled")]
    UnknownRequest(String),
    #[error("request {request_id:?} is closed: its hold was {status}; use a new request id")]
    RequestClosed {
        request_id: String,
        status: super::types::HoldStatus,
    },
    #[error("request {request_id:?} was settled at {charged}, not {requested}")]
    SettleConflict {
        request_id: String,
        charged: Credits,
        requested: Credits,
    },
    #[error("user {user:?} has {open} open holds, the limit is {limit}")]
    TooManyOpenHolds { user: String, open: u64, limit: u64 },
    #[error("unknown journal entry {0:?}")]
    UnknownEntry(String),
    #[error("entry {entry:?} cannot be refunded: {why}")]
    NotRefundable { entry: String, why: String },
    #[error("unknown API key {0:?}")]
    UnknownApiKey(String),
    #[error("invalid {field}: {why}")]
    InvalidField { field: &'static str, why: String },
    #[error("no tollgate database at {}: run `tollgate init` first (or pass the right --data-dir)", .0.display())]
    NoDatabase(PathBuf),
    #[error(
        "this database has schema version {found}, newer than this tollgate supports ({supported}); upgrade tollgate"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("migrating the database failed: {}", one_line(.0))]
    Migration(String),
    #[error("database setting refused: {0}")]
    Pragma(String),
    #[error("the database holds a value this tollgate cannot read: {0}")]
    Corrupt(String),
    /// A file the ledger needs could not be created or read.
    #[error("{0}")]
    Io(String),
    #[error(
        "the server acknowledged seq {acked}, beyond this agent's newest entry (seq {head}): \
         refusing to trust it (is the server talking about another database?)"
    )]
    AckBeyondHead { acked: i64, head: i64 },
    #[error(
        "inbox event seq {seq} does not follow the inbox cursor {cursor}: events are applied in \
         order, without gaps"
    )]
    InboxGap { cursor: i64, seq: i64 },
    #[error(
        "inbox event seq {seq} is {event}, but this agent applied {recorded} at that seq: the \
         server's inbox disagrees with what was applied"
    )]
    InboxConflict {
        seq: i64,
        event: String,
        recorded: String,
    },
    #[error(
        "this agent is not enrolled with a sync server: run `tollgate enroll --server URL --token TOKEN` first"
    )]
    NotEnrolled,
    /// A group-committed batch failed as a whole (storage): none of its operations was
    /// committed, and each may be retried (they are idempotent by request id or key).
    #[error("the ledger could not commit: {0}")]
    BatchFailed(String),
    /// Not a `#[source]`: SQLite's message is already in the text, and `{:#}` would print it
    /// again for each error in the chain.
    #[error("database error: {}", one_line(&.0.to_string()))]
    Storage(rusqlite::Error),
}

impl From<rusqlite::Error> for LedgerError {
    fn from(e: rusqlite::Error) -> Self {
        LedgerError::Storage(e)
    }
}

/// `text` with every run of whitespace (newlines included) as one space: SQLite's messages can
/// carry SQL text, and an error is printed as one line.
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl LedgerError {
    /// Whether the connection or file failed, as opposed to the operation being refused. A batch
    /// stops at the first storage error; refusals are per operation.
    pub fn is_storage(&self) -> bool {
        matches!(
            self,
            LedgerError::Storage(_)
                | LedgerError::Corrupt(_)
                | LedgerError::Migration(_)
                | LedgerError::Pragma(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storage_error_prints_its_message_once_on_one_line() {
        let err = LedgerError::from(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_CHECK),
            Some("CHECK constraint failed: balance >= 0\n    AND held >= 0".to_owned()),
        ));
        assert!(err.is_storage());
        let printed = format!("{:#}", anyhow::Error::from(err));
        assert_eq!(
            printed,
            "database error: CHECK constraint failed: balance >= 0 AND held >= 0"
        );
    }
}
