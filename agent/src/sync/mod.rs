//! Sync with the central server (SYNC.md), the agent's side: every journal entry reaches the
//! server exactly once, and every central event is applied here exactly once.
//!
//! - [`config`]: `<data dir>/sync.toml` (server, agent id, credential; 0600, written atomically).
//! - [`client`]: the HTTP calls of the protocol (`tollgate_schema::wire`), typed refusals.
//! - [`task`]: the push, pull and escrow loops `tollgate serve` runs in the background, and the
//!   one cycle `tollgate sync now` runs.
//! - [`escrow`]: what the gateway tells the escrow loop (demand), and how that loop decides when
//!   to ask for a grant of a fleet user's pool and when to return what is left.
//!
//! What is pushed and applied, and the acknowledged head and inbox cursor, live in the ledger
//! (`ledger/sync.rs`, `ledger/inbox.rs`), moved in the same SQLite transactions as what they
//! describe; nothing here touches SQLite. Without `sync.toml` the agent runs standalone.

pub mod client;
pub mod config;
pub mod escrow;
pub mod task;

pub use client::{ClientError, ErrorCode, SyncClient};
pub use config::{SYNC_FILE, SyncConfig, SyncFileError};
pub use task::{CycleReport, PullReport, PushReport, PushState, Syncer};

use crate::ledger::LedgerError;

/// Why a sync step failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    File(#[from] SyncFileError),
    #[error(
        "the sync server answered for incarnation {theirs}, not this database's {ours}: it is \
         not talking about this database"
    )]
    WrongIncarnation { ours: String, theirs: String },
    #[error(
        "the sync server accepted entries {first}-{last} but acknowledged only up to {acked}: it \
         makes no progress"
    )]
    NoProgress { first: i64, last: i64, acked: i64 },
    #[error(
        "journal entry seq {seq} is {bytes} bytes as JSON, more than one push may carry; it can \
         never be pushed"
    )]
    EntryTooLarge { seq: i64, bytes: usize },
    #[error("the sync task's ledger thread failed: {0}")]
    Task(String),
}

impl SyncError {
    /// The server's refusal code, if the server refused.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            SyncError::Client(e) => e.code(),
            _ => None,
        }
    }

    /// Whether the server could not be reached or could not serve (see
    /// [`ClientError::unreachable`]).
    pub fn unreachable(&self) -> bool {
        matches!(self, SyncError::Client(e) if e.unreachable())
    }
}
