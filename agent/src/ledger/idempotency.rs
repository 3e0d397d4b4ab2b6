//! Permanent, outcome-stable idempotency for operations from outside (SCHEMA.md).
//!
//! Guarantees: a key is recorded with a fingerprint of the operation and its outcome in the same
//! transaction as the operation's effects. The same key with the same operation returns the
//! recorded outcome (a success or a refusal) without doing anything; with a different operation
//! it is a conflict. Records are never deleted.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::LedgerError;
use super::error::Refusal;
use super::session::Session;
use super::types::EntryReceipt;

/// Longest accepted idempotency key.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;

/// What a keyed operation ended with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok(EntryReceipt),
    Refused(Refusal),
}

impl Outcome {
    pub fn into_result(self) -> Result<EntryReceipt, LedgerError> {
        match self {
            Outcome::Ok(receipt) => Ok(receipt),
            Outcome::Refused(refusal) => Err(LedgerError::Refused(refusal)),
        }
    }
}

/// Checks a key's shape: 1 to 255 printable characters.
pub fn validate_key(key: &str) -> Result<(), LedgerError> {
    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_LEN_MAX {
        return Err(LedgerError::InvalidIdempotencyKey(
            "it must be 1 to 255 bytes long",
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(LedgerError::InvalidIdempotencyKey(
            "it must not contain control characters",
        ));
    }
    Ok(())
}

/// The fingerprint of an operation: sha256 over its kind and canonical JSON.
pub fn fingerprint<T: Serialize>(operation: &str, op: &T) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(operation.as_bytes());
    hasher.update([0]);
    hasher.update(serde_json::to_vec(op).unwrap_or_default());
    hasher.finalize().into()
}

impl Session<'_> {
    /// The recorded outcome for `key`, if any; a conflict if it was used for another operation.
    pub fn recorded_outcome(
        &self,
        key: &str,
        fingerprint: &[u8; 32],
    ) -> Result<Option<Outcome>, LedgerError> {
        let found: Option<(Vec<u8>, String)> = self
            .conn
            .prepare_cached(
                "SELECT fingerprint, outcome FROM idempotency_keys WHERE idempotency_key = ?1",
            )?
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        match found {
            None => Ok(None),
            Some((stored, _)) if stored.as_slice() != fingerprint.as_slice() => {
                Err(LedgerError::IdempotencyConflict {
                    key: key.to_owned(),
                })
            }
            Some((_, outcome)) => serde_json::from_str(&outcome)
                .map(Some)
                .map_err(|e| LedgerError::Corrupt(format!("idempotency outcome for {key:?}: {e}"))),
        }
    }

    pub fn record_outcome(
        &self,
        key: &str,
        operation: &str,
        fingerprint: &[u8; 32],
        outcome: &Outcome,
    ) -> Result<(), LedgerError> {
        let outcome = serde_json::to_string(outcome)
            .map_err(|e| LedgerError::Corrupt(format!("cannot record an outcome: {e}")))?;
        self.conn
            .prepare_cached(
                "INSERT INTO idempotency_keys (idempotency_key, operation, fingerprint, outcome, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![key, operation, fingerprint.as_slice(), outcome, self.now_text])?;
        Ok(())
    }
}
