//! The hash check of reconcile: every entry's hash recomputed from its stored fields, and every
//! `prev_hash` linked to the previous entry of its stream.
//!
//! Guarantees:
//! - The journal is read once, in (agent, incarnation, seq) order (the UNIQUE index), through a
//!   cursor (a portal) in chunks of [`CHUNK_ROWS`], so memory is bounded by one chunk.
//! - The canonical fields are rebuilt from the row exactly as the agent hashed them: amounts
//!   NUMERIC → `Decimal` → [`Credits`]; uuids in their lower-case hyphenated text; token counts
//!   back to `u32`; `created_at` and `metadata` as the stored text. A row that cannot be put back
//!   (an amount with more than 9 decimals, a token count beyond `u32`) is itself a difference.
//! - A link is checked only between consecutive seqs (a gap is reported by the stream check);
//!   seq 1 must chain on [`GENESIS_HASH`].

use rust_decimal::Decimal;
use tokio_postgres::{Row, Transaction};
use tollgate_schema::money::Credits;
use tollgate_schema::wire::{Canonical, GENESIS_HASH, encode_hash};
use uuid::Uuid;

use super::{Collector, Names, kind};
use crate::central::CentralError;

/// Rows fetched per round trip.
pub const CHUNK_ROWS: i32 = 10_000;

const ENTRY_SQL: &str = "SELECT agent_id, incarnation, seq, entry_id, user_id, transaction_type, \
     amount, balance_before, balance_after, provider, model, prompt_tokens, completion_tokens, \
     cost_per_token, power_level, is_byok, payment_method, request_id, package_id, metadata, \
     notes, admin_user_id, idempotency_key, corrects_entry_id, created_at, total_tokens, \
     stripe_payment_intent_id, stripe_charge_id, invoice_id, prev_hash, hash \
     FROM credit_transactions ORDER BY agent_id, incarnation, seq";

/// The columns of [`ENTRY_SQL`] by name. Reconcile reads every entry of the journal, so a row's
/// fields are read by index (a by-name lookup per field would search the 31 columns each time);
/// these names are checked against the prepared statement before the first row is read.
mod col {
    pub const AGENT_ID: usize = 0;
    pub const INCARNATION: usize = 1;
    pub const SEQ: usize = 2;
    pub const ENTRY_ID: usize = 3;
    pub const USER_ID: usize = 4;
    pub const TRANSACTION_TYPE: usize = 5;
    pub const AMOUNT: usize = 6;
    pub const BALANCE_BEFORE: usize = 7;
    pub const BALANCE_AFTER: usize = 8;
    pub const PROVIDER: usize = 9;
    pub const MODEL: usize = 10;
    pub const PROMPT_TOKENS: usize = 11;
    pub const COMPLETION_TOKENS: usize = 12;
    pub const COST_PER_TOKEN: usize = 13;
    pub const POWER_LEVEL: usize = 14;
    pub const IS_BYOK: usize = 15;
    pub const PAYMENT_METHOD: usize = 16;
    pub const REQUEST_ID: usize = 17;
    pub const PACKAGE_ID: usize = 18;
    pub const METADATA: usize = 19;
    pub const NOTES: usize = 20;
    pub const ADMIN_USER_ID: usize = 21;
    pub const IDEMPOTENCY_KEY: usize = 22;
    pub const CORRECTS_ENTRY_ID: usize = 23;
    pub const CREATED_AT: usize = 24;
    pub const TOTAL_TOKENS: usize = 25;
    pub const STRIPE_PAYMENT_INTENT_ID: usize = 26;
    pub const STRIPE_CHARGE_ID: usize = 27;
    pub const INVOICE_ID: usize = 28;
    pub const PREV_HASH: usize = 29;
    pub const HASH: usize = 30;

    /// Every column's name, in [`super::ENTRY_SQL`]'s order.
    pub const NAMES: [&str; 31] = [
        "agent_id",
        "incarnation",
        "seq",
        "entry_id",
        "user_id",
        "transaction_type",
        "amount",
        "balance_before",
        "balance_after",
        "provider",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "cost_per_token",
        "power_level",
        "is_byok",
        "payment_method",
        "request_id",
        "package_id",
        "metadata",
        "notes",
        "admin_user_id",
        "idempotency_key",
        "corrects_entry_id",
        "created_at",
        "total_tokens",
        "stripe_payment_intent_id",
        "stripe_charge_id",
        "invoice_id",
        "prev_hash",
        "hash",
    ];
}

/// The previous entry seen: its stream, seq and stored hash.
struct Previous {
    agent_id: Uuid,
    incarnation: Uuid,
    seq: i64,
    hash: Vec<u8>,
}

/// Verifies every entry's hash and chain link; returns how many entries were hashed.
pub(super) async fn verify(
    tx: &Transaction<'_>,
    out: &mut Collector,
    names: &Names,
) -> Result<i64, CentralError> {
    let statement = tx.prepare(ENTRY_SQL).await?;
    let names_read: Vec<&str> = statement.columns().iter().map(|c| c.name()).collect();
    if names_read != col::NAMES {
        return Err(CentralError::Internal(anyhow::anyhow!(
            "reconcile's entry columns {names_read:?} are not the ones it reads by index"
        )));
    }
    let portal = tx.bind(&statement, &[]).await?;
    let mut previous: Option<Previous> = None;
    let mut verified = 0i64;
    loop {
        let rows = tx.query_portal(&portal, CHUNK_ROWS).await?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            check_row(row, &mut previous, out, names);
            verified += 1;
        }
    }
    Ok(verified)
}

fn check_row(row: &Row, previous: &mut Option<Previous>, out: &mut Collector, names: &Names) {
    let agent_id: Uuid = row.get(col::AGENT_ID);
    let incarnation: Uuid = row.get(col::INCARNATION);
    let seq: i64 = row.get(col::SEQ);
    let user_id: String = row.get(col::USER_ID);
    let prev_hash: Vec<u8> = row.get(col::PREV_HASH);
    let hash: Vec<u8> = row.get(col::HASH);
    let agent = names.of(agent_id);
    let at = format!("entry seq {seq} of agent {agent} (incarnation {incarnation})");

    // The link to the predecessor.
    let same_stream = previous
        .as_ref()
        .is_some_and(|p| p.agent_id == agent_id && p.incarnation == incarnation);
    let expected_prev: Option<&[u8]> = match previous.as_ref() {
        Some(p) if same_stream && p.seq + 1 == seq => Some(p.hash.as_slice()),
        _ if seq == 1 => Some(GENESIS_HASH.as_slice()),
        _ => None,
    };
    if let Some(expected) = expected_prev
        && expected != prev_hash.as_slice()
    {
        out.push(
            kind::HASH_CHAIN,
            Some(&user_id),
            Some(&agent),
            format!(
                "{at}: prev_hash {} does not link to {} (the hash of seq {})",
                hex::encode(&prev_hash),
                hex::encode(expected),
                seq - 1
            ),
        );
    }

    // The entry's own hash.
    match recompute(row, &prev_hash) {
        Ok(recomputed) if recomputed.as_slice() == hash.as_slice() => {}
        Ok(recomputed) => out.push(
            kind::HASH_MISMATCH,
            Some(&user_id),
            Some(&agent),
            format!(
                "{at}: stored hash {} but its fields hash to {}; the entry was changed after \
                 it was hashed",
                hex::encode(&hash),
                encode_hash(&recomputed)
            ),
        ),
        Err(why) => out.push(
            kind::UNREADABLE_ENTRY,
            Some(&user_id),
            Some(&agent),
            format!("{at}: {why}"),
        ),
    }
    *previous = Some(Previous {
        agent_id,
        incarnation,
        seq,
        hash,
    });
}

fn credits(row: &Row, idx: usize, field: &str) -> Result<Credits, String> {
    let value: Decimal = row.get(idx);
    Credits::from_decimal(value).map_err(|e| format!("{field}: {e}"))
}

fn tokens(row: &Row, idx: usize, field: &str) -> Result<Option<u32>, String> {
    let value: Option<i64> = row.get(idx);
    value
        .map(|v| u32::try_from(v).map_err(|_| format!("{field} {v} does not fit 32 bits")))
        .transpose()
}

/// The entry's hash from its stored fields and `prev_hash`.
fn recompute(row: &Row, prev_hash: &[u8]) -> Result<[u8; 32], String> {
    let prev: [u8; 32] = prev_hash
        .try_into()
        .map_err(|_| "prev_hash is not 32 bytes".to_owned())?;
    let entry_id: Uuid = row.get(col::ENTRY_ID);
    let corrects: Option<Uuid> = row.get(col::CORRECTS_ENTRY_ID);
    let entry_id = entry_id.to_string();
    let corrects = corrects.map(|u| u.to_string());
    let user_id: &str = row.get(col::USER_ID);
    let transaction_type: &str = row.get(col::TRANSACTION_TYPE);
    let created_at: &str = row.get(col::CREATED_AT);
    let canonical = Canonical {
        seq: row.get(col::SEQ),
        entry_id: &entry_id,
        user_id,
        transaction_type,
        amount: credits(row, col::AMOUNT, "amount")?,
        balance_before: credits(row, col::BALANCE_BEFORE, "balance_before")?,
        balance_after: credits(row, col::BALANCE_AFTER, "balance_after")?,
        provider: row.get(col::PROVIDER),
        model: row.get(col::MODEL),
        prompt_tokens: tokens(row, col::PROMPT_TOKENS, "prompt_tokens")?,
        completion_tokens: tokens(row, col::COMPLETION_TOKENS, "completion_tokens")?,
        cost_per_token: row.get(col::COST_PER_TOKEN),
        power_level: row.get(col::POWER_LEVEL),
        is_byok: row.get(col::IS_BYOK),
        payment_method: row.get(col::PAYMENT_METHOD),
        request_id: row.get(col::REQUEST_ID),
        package_id: row.get(col::PACKAGE_ID),
        metadata: row.get(col::METADATA),
        notes: row.get(col::NOTES),
        admin_user_id: row.get(col::ADMIN_USER_ID),
        idempotency_key: row.get(col::IDEMPOTENCY_KEY),
        corrects_entry_id: corrects.as_deref(),
        created_at,
        total_tokens: row.get(col::TOTAL_TOKENS),
        stripe_payment_intent_id: row.get(col::STRIPE_PAYMENT_INTENT_ID),
        stripe_charge_id: row.get(col::STRIPE_CHARGE_ID),
        invoice_id: row.get(col::INVOICE_ID),
    };
    Ok(canonical.hash(&prev))
}
