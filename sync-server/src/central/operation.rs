//! The idempotency record of a central operation (`central_operations`).
//!
//! Guarantees:
//! - [`begin`] claims the operation key with `INSERT … ON CONFLICT DO NOTHING` before anything
//!   else is written. A second transaction claiming the same key (another replica, a retry)
//!   waits on the key's PRIMARY KEY until the first ends; if the first committed, the second
//!   re-reads its row (READ COMMITTED: the next statement sees it) and answers from it: the stored
//!   result for the same fingerprint, [`CentralError::IdempotencyConflict`] for another. If the
//!   first rolled back, the second claims the key itself. No unique violation ever aborts the
//!   caller's transaction.
//! - [`finish`] stores the result in the same transaction as the operation's events, so a key is
//!   visible to others only together with everything the operation wrote.
//! - The fingerprint is SHA-256 of the request's canonical JSON (a struct with a fixed field
//!   order; amounts as their shortest exact decimal), so "1.50" and "1.5" are the same request.
//!
//! Callers must run in a READ COMMITTED transaction (the default).

use rust_decimal::Decimal;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::CentralError;

/// `central_operations.kind` values.
pub mod kind {
    pub const CREDIT: &str = "credit";
    pub const USER_UPSERT: &str = "user_upsert";
    pub const PACKAGE_UPSERT: &str = "package_upsert";
    pub const POWER_LEVEL_UPSERT: &str = "power_level_upsert";
}

/// Prefix of keys built from an admin's operation id (API and CLI share it, so a retry through
/// either is recognised).
pub const ADMIN_KEY_PREFIX: &str = "admin:";
/// Prefix of Stripe purchase keys (`stripe:<checkout session id>`).
pub const STRIPE_KEY_PREFIX: &str = "stripe:";

/// The key for an admin-supplied operation id.
pub fn admin_key(operation_id: &str) -> String {
    format!("{ADMIN_KEY_PREFIX}{operation_id}")
}

/// A fresh key for an operation without an admin-supplied id (`<what>:<uuid v7>`).
pub fn fresh_key(what: &str) -> String {
    format!("{what}:{}", Uuid::now_v7())
}

/// SHA-256 of the canonical JSON of `request`.
pub fn fingerprint<T: Serialize>(request: &T) -> Result<[u8; 32], CentralError> {
    let bytes = serde_json::to_vec(request)
        .map_err(|e| CentralError::Internal(anyhow::anyhow!("fingerprinting: {e}")))?;
    Ok(Sha256::digest(&bytes).into())
}

/// What claiming a key found.
#[derive(Debug)]
pub enum Begin<T> {
    /// The key is ours: do the operation, then [`finish`].
    New,
    /// The same operation was done before: its stored result.
    Replay(T),
}

/// The row claimed for a new operation.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub key: &'a str,
    pub kind: &'static str,
    pub fingerprint: &'a [u8; 32],
    pub user_id: Option<&'a str>,
    pub amount: Option<Decimal>,
    pub actor: &'a str,
}

/// Claims `claim.key` in `tx`, or answers from the operation already stored under it.
pub async fn begin<T: DeserializeOwned>(
    tx: &Transaction<'_>,
    claim: Claim<'_>,
) -> Result<Begin<T>, CentralError> {
    let inserted = tx
        .query_opt(
            "INSERT INTO central_operations \
             (operation_key, kind, fingerprint, user_id, amount, result, actor) \
             VALUES ($1, $2, $3, $4, $5, 'null'::jsonb, $6) \
             ON CONFLICT (operation_key) DO NOTHING RETURNING 1",
            &[
                &claim.key,
                &claim.kind,
                &claim.fingerprint.as_slice(),
                &claim.user_id,
                &claim.amount,
                &claim.actor,
            ],
        )
        .await?;
    if inserted.is_some() {
        return Ok(Begin::New);
    }
    let row = tx
        .query_opt(
            "SELECT kind, fingerprint, result FROM central_operations WHERE operation_key = $1",
            &[&claim.key],
        )
        .await?
        .ok_or_else(|| {
            CentralError::Internal(anyhow::anyhow!(
                "operation key {:?} conflicted but cannot be read back",
                claim.key
            ))
        })?;
    let kind: String = row.get("kind");
    let stored: Vec<u8> = row.get("fingerprint");
    if kind != claim.kind || stored.as_slice() != claim.fingerprint.as_slice() {
        return Err(CentralError::IdempotencyConflict {
            key: claim.key.to_owned(),
        });
    }
    let result: serde_json::Value = row.get("result");
    let result = serde_json::from_value(result).map_err(|e| {
        CentralError::Internal(anyhow::anyhow!(
            "the stored result of operation {:?} is unreadable: {e}",
            claim.key
        ))
    })?;
    Ok(Begin::Replay(result))
}

/// Stores the result of the operation claimed under `key` (and, for a single-agent operation, the
/// agent and inbox seq its event got).
pub async fn finish<T: Serialize>(
    tx: &Transaction<'_>,
    key: &str,
    agent: Option<(Uuid, i64)>,
    result: &T,
) -> Result<(), CentralError> {
    let json = serde_json::to_value(result)
        .map_err(|e| CentralError::Internal(anyhow::anyhow!("storing a result: {e}")))?;
    let (agent_id, inbox_seq) = agent.unzip();
    tx.execute(
        "UPDATE central_operations SET result = $2, agent_id = $3, inbox_seq = $4 \
         WHERE operation_key = $1",
        &[&key, &json, &agent_id, &inbox_seq],
    )
    .await?;
    Ok(())
}
