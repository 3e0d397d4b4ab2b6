//! Central operations: changes made on the server (credit grants, refunds and adjustments, Stripe
//! purchases, user settings, packages, power levels), each idempotent by its operation key and
//! turned into inbox events for the agents concerned, in one transaction.
//!
//! Guarantees:
//! - Central code never moves a balance. A change writes one `central_operations` row (its
//!   idempotency record) and its inbox event(s) in the same transaction; the home agent applies a
//!   credit event as a journal entry keyed by the operation key and pushes it back, and ingestion
//!   moves `user_credits.balance`. So the central journal stays the union of the agents' journals.
//! - Idempotent by operation key: the same key with the same content (fingerprint = SHA-256 of
//!   the request's canonical JSON) returns the stored result and writes nothing; the same key with
//!   different content is [`CentralError::IdempotencyConflict`]. Two replicas handling the same
//!   key at once are ordered by the key's PRIMARY KEY: the second waits for the first and then
//!   reads its result (see [`operation::begin`]).
//! - Everything is validated before anything is written; a refusal writes nothing.
//! - Amounts are [`Credits`](tollgate_schema::money::Credits), stored as `NUMERIC(38,9)` through
//!   `rust_decimal`; no float anywhere.

pub mod api_keys;
pub mod catalog;
pub mod credit;
pub mod escrow;
pub mod fleet;
pub mod inbox;
pub mod operation;
pub mod users;
pub mod validate;

use serde::{Deserialize, Serialize};

/// Why a central operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CentralError {
    /// A field of the request is not acceptable (HTTP 400, naming the field).
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The thing the request is about does not exist (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The request is well formed but the current state does not allow it (HTTP 409).
    #[error("{0}")]
    Refused(String),
    /// The operation key was used before for different content (HTTP 409).
    #[error(
        "operation key {key:?} was already used for a different operation; use a new \
         operation id for a new operation"
    )]
    IdempotencyConflict { key: String },
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

impl CentralError {
    /// A refusal naming `field`.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> CentralError {
        CentralError::Invalid {
            field,
            message: message.into(),
        }
    }
}

/// The outcome of an idempotent central operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied<T> {
    /// What the operation did (as stored with its key).
    #[serde(flatten)]
    pub result: T,
    /// True when the key was seen before with the same content: nothing was written now.
    pub replayed: bool,
    /// Inbox events written by this call (0 on a replay).
    #[serde(skip)]
    pub events_written: u64,
}

impl<T> Applied<T> {
    /// The stored result of an earlier identical request: nothing was written now.
    pub fn replayed(result: T) -> Applied<T> {
        Applied {
            result,
            replayed: true,
            events_written: 0,
        }
    }
}

/// An amount read from a `NUMERIC(38,9)` column.
pub fn credits_from_db(
    value: rust_decimal::Decimal,
) -> Result<tollgate_schema::money::Credits, CentralError> {
    tollgate_schema::money::Credits::from_decimal(value)
        .map_err(|e| CentralError::Internal(anyhow::anyhow!("a stored amount is unreadable: {e}")))
}

/// A timestamp as RFC 3339 text (UTC).
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}
