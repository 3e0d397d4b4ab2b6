//! Applying a checked push batch: one PostgreSQL transaction per batch (SYNC.md "Push").
//!
//! Guarantees:
//! - The stream's row (`agent_streams`, one per agent and incarnation, made when the agent
//!   enrols with that incarnation: a push for any other is refused, 409 `unknown_incarnation`)
//!   is locked `FOR UPDATE` before anything is read, so concurrent pushes of one stream — from several replicas, or
//!   retries racing their originals — apply one after the other; each sees the head the previous
//!   one committed.
//! - Entries at or below the acknowledged head are compared by hash with the stored ones: equal
//!   ones are skipped (a replayed batch changes nothing), a different one is saved as evidence in
//!   `quarantined_entries`, the agent is quarantined, and only that is committed (409
//!   `conflict`). The same happens when the first new entry does not chain on the stored head.
//! - An entry past head + 1 is a gap: nothing is written (409 `gap`).
//! - An entry keyed by a central credit operation must match it (the agent it was sent to, its
//!   user and amount) and be its only entry; otherwise the agent is quarantined (409 `conflict`)
//!   and nothing of the batch is stored, so a central credit is never counted twice.
//! - New entries are stored with one multi-row insert, exactly as hashed; each user's balance
//!   moves once per batch by its net delta
//!   through `add_credits` / `debit_credits` (which refuse to overdraw); purchases and usage
//!   bump the user's counters. The stream's head, hash and the agent's incarnation move in the
//!   same transaction. Nothing is visible until it commits; a crash before commit leaves the
//!   stream exactly as it was.
//! - Every refusal carries the stream's acknowledged head so the agent resends from there.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use deadpool_postgres::{Pool, Transaction};
use rust_decimal::Decimal;
use tokio_postgres::error::SqlState;
use tollgate_schema::money::SCALE;
use tollgate_schema::wire::{WireEntry, error_code};
use uuid::Uuid;

use super::push::{Batch, quarantined};
use super::rules;
use crate::http::auth::AgentAuth;
use crate::http::error::ApiError;

/// What an accepted push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// New entries were stored (possibly after skipping replayed ones).
    Accepted { acked_seq: i64, ingested: usize },
    /// Every entry was already stored with the same hash; nothing changed.
    Replay { acked_seq: i64 },
    /// An empty batch: only the reported head moved.
    Heartbeat { acked_seq: i64 },
}

impl Outcome {
    pub(crate) fn acked_seq(self) -> i64 {
        match self {
            Outcome::Accepted { acked_seq, .. }
            | Outcome::Replay { acked_seq }
            | Outcome::Heartbeat { acked_seq } => acked_seq,
        }
    }

    /// The `pushes` metric's outcome label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Accepted { .. } => "accepted",
            Outcome::Replay { .. } => "replay",
            Outcome::Heartbeat { .. } => "heartbeat",
        }
    }
}

const ENROLLED_INCARNATION: &str = "SELECT incarnation FROM agents WHERE agent_id = $1";
const REGISTER_STREAM: &str = "INSERT INTO agent_streams (agent_id, incarnation) \
     VALUES ($1, $2) ON CONFLICT (agent_id, incarnation) DO NOTHING";
const LOCK_STREAM: &str = "SELECT acked_seq, head_hash FROM agent_streams \
     WHERE agent_id = $1 AND incarnation = $2 FOR UPDATE";
/// Read after the stream lock is held: a statement started after the lock sees any quarantine
/// committed by the push that held it before.
const AGENT_STATUS: &str = "SELECT status FROM agents WHERE agent_id = $1";
const STORED_HASHES: &str = "SELECT seq, hash FROM credit_transactions \
     WHERE agent_id = $1 AND incarnation = $2 AND seq BETWEEN $3 AND $4 ORDER BY seq";
const INSERT_ENTRIES: &str = "INSERT INTO credit_transactions (agent_id, incarnation, entry_id, \
     seq, user_id, transaction_type, amount, balance_before, balance_after, provider, model, \
     prompt_tokens, completion_tokens, total_tokens, cost_per_token, power_level, is_byok, \
     payment_method, stripe_payment_intent_id, stripe_charge_id, request_id, invoice_id, \
     package_id, metadata, notes, admin_user_id, idempotency_key, corrects_entry_id, prev_hash, \
     hash, created_at) \
     SELECT $1::uuid, $2::uuid, t.* FROM unnest($3::uuid[], $4::bigint[], $5::text[], \
     $6::text[], $7::numeric[], $8::numeric[], $9::numeric[], $10::text[], $11::text[], \
     $12::bigint[], $13::bigint[], $14::bigint[], $15::text[], $16::text[], $17::bool[], \
     $18::text[], $19::text[], $20::text[], $21::text[], $22::text[], $23::bigint[], \
     $24::text[], $25::text[], $26::text[], $27::text[], $28::uuid[], $29::bytea[], \
     $30::bytea[], $31::text[]) AS t";
/// Net balance moves, one per user (users sorted: a fixed lock order across concurrent pushes).
const APPLY_BALANCES: &str = "SELECT CASE WHEN d.delta > 0 THEN add_credits(d.user_id, d.delta) \
     ELSE debit_credits(d.user_id, -d.delta) END \
     FROM unnest($1::text[], $2::numeric[]) AS d(user_id, delta)";
/// Purchases and usage counters; a billing cycle that has ended starts over (calendar month).
const APPLY_COUNTERS: &str = "UPDATE user_credits u SET \
     lifetime_credits_purchased = u.lifetime_credits_purchased + d.purchased, \
     credits_used_this_month = CASE WHEN now() >= u.billing_cycle_end THEN d.used \
         ELSE u.credits_used_this_month + d.used END, \
     billing_cycle_start = CASE WHEN now() >= u.billing_cycle_end \
         THEN date_trunc('month', now()) ELSE u.billing_cycle_start END, \
     billing_cycle_end = CASE WHEN now() >= u.billing_cycle_end \
         THEN date_trunc('month', now()) + interval '1 month' ELSE u.billing_cycle_end END \
     FROM unnest($1::text[], $2::numeric[], $3::numeric[]) AS d(user_id, purchased, used) \
     WHERE u.user_id = d.user_id";
const ADVANCE_STREAM: &str = "WITH s AS (UPDATE agent_streams SET acked_seq = $3, head_hash = $4, \
     reported_head_seq = $5, last_push_at = now() WHERE agent_id = $1 AND incarnation = $2) \
     UPDATE agents SET incarnation = $2 WHERE agent_id = $1 AND incarnation IS DISTINCT FROM $2";
const HEARTBEAT: &str = "WITH s AS (UPDATE agent_streams SET reported_head_seq = $3, \
     last_push_at = now() WHERE agent_id = $1 AND incarnation = $2) \
     UPDATE agents SET incarnation = $2 WHERE agent_id = $1 AND incarnation IS DISTINCT FROM $2";
/// The unique index on central operation keys (V1__central.sql).
const CENTRAL_KEY_INDEX: &str = "idx_credit_transactions_central_key";
const INSERT_EVIDENCE: &str = "INSERT INTO quarantined_entries \
     (agent_id, incarnation, seq, held_hash, offered_hash, offered) VALUES ($1, $2, $3, $4, $5, $6)";
const QUARANTINE: &str = "UPDATE agents SET status = 'quarantined', quarantine_reason = $2 \
     WHERE agent_id = $1 AND status = 'active'";

/// Most evidence rows kept for one conflicting batch: after the first differing entry every later
/// one differs too (the chain), so the first ones say it all.
const EVIDENCE_ROWS_MAX: usize = 100;

/// The stream's acknowledged head without locking it (0 for a stream never pushed).
pub(crate) async fn acked_seq(
    pool: &Pool,
    agent_id: Uuid,
    incarnation: Uuid,
) -> Result<i64, ApiError> {
    let conn = pool.get().await?;
    let row = conn
        .query_opt(
            "SELECT acked_seq FROM agent_streams WHERE agent_id = $1 AND incarnation = $2",
            &[&agent_id, &incarnation],
        )
        .await?;
    Ok(row.map_or(0, |r| r.get(0)))
}

/// Applies `batch` for `agent` (see the module's guarantees).
pub(crate) async fn ingest(
    pool: &Pool,
    agent: &AgentAuth,
    batch: &Batch,
) -> Result<Outcome, ApiError> {
    let agent_id = agent.agent_id;
    let incarnation = batch.incarnation;
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    let lock = tx.prepare_cached(LOCK_STREAM).await?;
    let row = match tx.query_opt(&lock, &[&agent_id, &incarnation]).await? {
        Some(row) => row,
        None => {
            // An agent enrolled by a server from before streams were made at enrolment: its
            // enrolled incarnation is registered all the same.
            let enrolled: Option<Uuid> = tx
                .query_one(ENROLLED_INCARNATION, &[&agent_id])
                .await?
                .get(0);
            if enrolled != Some(incarnation) {
                return Err(unregistered(agent, incarnation));
            }
            tx.execute(REGISTER_STREAM, &[&agent_id, &incarnation])
                .await?;
            tx.query_one(&lock, &[&agent_id, &incarnation]).await?
        }
    };
    let acked: i64 = row.get(0);
    let head_hash: Vec<u8> = row.get(1);
    let status_stmt = tx.prepare_cached(AGENT_STATUS).await?;
    let status: String = tx.query_one(&status_stmt, &[&agent_id]).await?.get(0);
    match status.as_str() {
        "active" => {}
        "quarantined" => return Err(quarantined(&agent.name, acked)),
        _ => {
            return Err(ApiError::unauthorized(
                "unknown or revoked agent credential",
            ));
        }
    }

    let Some(first) = batch.entries.first() else {
        let heartbeat = tx.prepare_cached(HEARTBEAT).await?;
        tx.execute(&heartbeat, &[&agent_id, &incarnation, &batch.head_seq])
            .await?;
        tx.commit().await?;
        return Ok(Outcome::Heartbeat { acked_seq: acked });
    };

    // Entries already acknowledged: compare, never apply twice.
    let old = usize::try_from((acked - first.seq + 1).max(0))
        .unwrap_or(usize::MAX)
        .min(batch.entries.len());
    if old == 0 && first.seq > acked + 1 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            error_code::GAP,
            format!(
                "the batch starts at seq {} but the stream's acknowledged head is {acked}; resend \
                 from seq {}",
                first.seq,
                acked + 1
            ),
        )
        .with_acked_seq(acked));
    }
    if old > 0 {
        let last_old = first.seq + old as i64 - 1;
        let stmt = tx.prepare_cached(STORED_HASHES).await?;
        let rows = tx
            .query(&stmt, &[&agent_id, &incarnation, &first.seq, &last_old])
            .await?;
        if rows.len() != old {
            return Err(ApiError::internal(
                "comparing a replayed batch",
                format!(
                    "stream {agent_id}/{incarnation} acknowledges seq {acked} but holds {} of \
                     seqs {}..={last_old}",
                    rows.len(),
                    first.seq
                ),
            ));
        }
        let mut evidence = Vec::new();
        let mut differing = 0usize;
        for (i, row) in rows.iter().enumerate() {
            let held: Vec<u8> = row.get(1);
            if held.as_slice() != batch.hashes[i].as_slice() {
                differing += 1;
                if evidence.len() == EVIDENCE_ROWS_MAX {
                    continue;
                }
                evidence.push(Evidence {
                    seq: batch.entries[i].seq,
                    held_hash: held,
                    offered_hash: batch.entries[i].hash.clone(),
                    offered: &batch.entries[i],
                });
            }
        }
        if !evidence.is_empty() {
            let reason = format!(
                "replayed seq {} of incarnation {incarnation} with content different from the \
                 stored entry ({differing} differing entries in the batch)",
                evidence[0].seq,
            );
            return Err(quarantine(tx, agent, incarnation, acked, reason, &evidence).await);
        }
        if old == batch.entries.len() {
            // A pure replay: nothing to write.
            tx.rollback().await?;
            return Ok(Outcome::Replay { acked_seq: acked });
        }
    }

    let new = &batch.entries[old..];
    let new_hashes = &batch.hashes[old..];
    let new_prev = &batch.prev_hashes[old..];
    // The batch's own chain was checked; its first new entry must chain on what we hold.
    if new_prev[0].as_slice() != head_hash.as_slice() {
        let reason = format!(
            "seq {} of incarnation {incarnation} does not chain on the stored head (seq {acked}): \
             the agent's history differs from the server's",
            new[0].seq
        );
        let evidence = [Evidence {
            seq: acked,
            held_hash: head_hash,
            offered_hash: new[0].prev_hash.clone(),
            offered: &new[0],
        }];
        return Err(quarantine(tx, agent, incarnation, acked, reason, &evidence).await);
    }

    // What this agent may write: central operation keys it was sent, users it holds, each
    // user's balance chain continued, amounts the books can hold.
    if let Some(reason) = rules::central_key_mismatch(&tx, agent_id, new).await? {
        drop(tx);
        return Err(quarantine_alone(pool, agent, acked, reason).await);
    }
    if let Some(reason) = rules::user_rule_broken(&tx, agent_id, new).await? {
        drop(tx);
        return Err(quarantine_alone(pool, agent, acked, reason).await);
    }

    let effects = Effects::of(new)?;

    let columns = Columns::of(
        new,
        &batch.entry_ids[old..],
        &batch.corrects_entry_ids[old..],
        new_prev,
        new_hashes,
    );
    let insert = tx.prepare_cached(INSERT_ENTRIES).await?;
    let inserted = tx
        .execute(
            &insert,
            &[
                &agent_id,
                &incarnation,
                &columns.entry_id,
                &columns.seq,
                &columns.user_id,
                &columns.transaction_type,
                &columns.amount,
                &columns.balance_before,
                &columns.balance_after,
                &columns.provider,
                &columns.model,
                &columns.prompt_tokens,
                &columns.completion_tokens,
                &columns.total_tokens,
                &columns.cost_per_token,
                &columns.power_level,
                &columns.is_byok,
                &columns.payment_method,
                &columns.stripe_payment_intent_id,
                &columns.stripe_charge_id,
                &columns.request_id,
                &columns.invoice_id,
                &columns.package_id,
                &columns.metadata,
                &columns.notes,
                &columns.admin_user_id,
                &columns.idempotency_key,
                &columns.corrects_entry_id,
                &columns.prev_hash,
                &columns.hash,
                &columns.created_at,
            ],
        )
        .await;
    if let Err(e) = inserted {
        if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
            // A locked, contiguous stream can hit two unique keys: a central operation's key
            // already applied (by a push that raced this one's check), or an entry id already
            // stored at another place (another stream or seq).
            let what = match e.as_db_error().and_then(|d| d.constraint()) {
                Some(CENTRAL_KEY_INDEX) => "a central operation key that already has its entry",
                _ => "an entry_id already stored elsewhere",
            };
            drop(tx);
            let reason = format!(
                "a batch of incarnation {incarnation} (seqs {}..={}) carries {what}",
                new[0].seq,
                new[new.len() - 1].seq
            );
            return Err(quarantine_alone(pool, agent, acked, reason).await);
        }
        return Err(e.into());
    }

    if !effects.balance_users.is_empty() {
        let apply = tx.prepare_cached(APPLY_BALANCES).await?;
        if let Err(e) = tx
            .query(&apply, &[&effects.balance_users, &effects.balance_deltas])
            .await
        {
            if e.code() == Some(&SqlState::CHECK_VIOLATION) {
                // debit_credits refused to overdraw: the central books cannot take this batch.
                drop(tx);
                let reason = format!(
                    "seqs {}..={} of incarnation {incarnation} would take a user's central \
                     balance below zero ({})",
                    new[0].seq,
                    new[new.len() - 1].seq,
                    e.as_db_error().map_or("", |d| d.message())
                );
                return Err(quarantine_alone(pool, agent, acked, reason).await);
            }
            return Err(e.into());
        }
    }
    if !effects.counter_users.is_empty() {
        let counters = tx.prepare_cached(APPLY_COUNTERS).await?;
        tx.execute(
            &counters,
            &[&effects.counter_users, &effects.purchased, &effects.used],
        )
        .await?;
    }

    let last = &new[new.len() - 1];
    let last_hash = new_hashes[new_hashes.len() - 1].to_vec();
    let advance = tx.prepare_cached(ADVANCE_STREAM).await?;
    tx.execute(
        &advance,
        &[
            &agent_id,
            &incarnation,
            &last.seq,
            &last_hash,
            &batch.head_seq,
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(Outcome::Accepted {
        acked_seq: last.seq,
        ingested: new.len(),
    })
}

/// One conflicting entry, as kept in `quarantined_entries`.
struct Evidence<'a> {
    seq: i64,
    held_hash: Vec<u8>,
    offered_hash: String,
    offered: &'a WireEntry,
}

/// Saves the evidence and quarantines the agent in `tx` (which has written nothing else but
/// possibly the stream's row), commits, and returns the refusal to answer.
async fn quarantine(
    tx: Transaction<'_>,
    agent: &AgentAuth,
    incarnation: Uuid,
    acked: i64,
    reason: String,
    evidence: &[Evidence<'_>],
) -> ApiError {
    let result: Result<(), ApiError> = async {
        let insert = tx.prepare_cached(INSERT_EVIDENCE).await?;
        for e in evidence {
            let offered = serde_json::to_value(e.offered)
                .map_err(|err| ApiError::internal("keeping quarantine evidence", err))?;
            tx.execute(
                &insert,
                &[
                    &agent.agent_id,
                    &incarnation,
                    &e.seq,
                    &e.held_hash,
                    &e.offered_hash,
                    &offered,
                ],
            )
            .await?;
        }
        tx.execute(QUARANTINE, &[&agent.agent_id, &reason]).await?;
        tx.commit().await?;
        Ok(())
    }
    .await;
    conflict_after_quarantine(result, agent, acked, reason)
}

/// Quarantines the agent in a transaction of its own (after the batch's was rolled back).
async fn quarantine_alone(pool: &Pool, agent: &AgentAuth, acked: i64, reason: String) -> ApiError {
    let result: Result<(), ApiError> = async {
        let conn = pool.get().await?;
        conn.execute(QUARANTINE, &[&agent.agent_id, &reason])
            .await?;
        Ok(())
    }
    .await;
    conflict_after_quarantine(result, agent, acked, reason)
}

fn conflict_after_quarantine(
    result: Result<(), ApiError>,
    agent: &AgentAuth,
    acked: i64,
    reason: String,
) -> ApiError {
    if let Err(e) = result {
        return e;
    }
    tracing::warn!(agent = %agent.name, agent_id = %agent.agent_id, %reason, "agent quarantined");
    ApiError::new(
        StatusCode::CONFLICT,
        error_code::CONFLICT,
        format!(
            "conflict: {reason}; agent {:?} is now quarantined until an admin releases it",
            agent.name
        ),
    )
    .with_acked_seq(acked)
}

/// Per-user effects of a batch's new entries, users sorted by id.
struct Effects<'a> {
    /// Users whose balance moves, and by how much (never zero).
    balance_users: Vec<&'a str>,
    balance_deltas: Vec<Decimal>,
    /// Users with a purchase or a usage debit, and those sums (non-negative).
    counter_users: Vec<&'a str>,
    purchased: Vec<Decimal>,
    used: Vec<Decimal>,
}

impl<'a> Effects<'a> {
    fn of(entries: &'a [WireEntry]) -> Result<Effects<'a>, ApiError> {
        #[derive(Default)]
        struct Sums {
            delta: i128,
            purchased: i128,
            used: i128,
        }
        let mut by_user: BTreeMap<&str, Sums> = BTreeMap::new();
        for e in entries {
            let sums = by_user.entry(e.user_id.as_str()).or_default();
            let nanos = i128::from(e.amount.nanos());
            sums.delta += nanos;
            match e.transaction_type.as_str() {
                "purchase" if nanos > 0 => sums.purchased += nanos,
                "usage" if nanos < 0 => sums.used -= nanos,
                _ => {}
            }
        }
        // At most PUSH_ENTRIES_MAX amounts of at most i64::MAX nanos each: far inside the 96
        // bits of a Decimal, so this cannot fail; if it did, refuse rather than guess.
        let nanos = |n: i128| {
            Decimal::try_from_i128_with_scale(n, SCALE)
                .map(|d| d.normalize())
                .map_err(|e| ApiError::internal("summing a batch's amounts", e))
        };
        let mut effects = Effects {
            balance_users: Vec::new(),
            balance_deltas: Vec::new(),
            counter_users: Vec::new(),
            purchased: Vec::new(),
            used: Vec::new(),
        };
        for (user, sums) in by_user {
            if sums.delta != 0 {
                effects.balance_users.push(user);
                effects.balance_deltas.push(nanos(sums.delta)?);
            }
            if sums.purchased != 0 || sums.used != 0 {
                effects.counter_users.push(user);
                effects.purchased.push(nanos(sums.purchased)?);
                effects.used.push(nanos(sums.used)?);
            }
        }
        Ok(effects)
    }
}

/// New entries as column arrays: the parameters of the one multi-row insert.
struct Columns<'a> {
    entry_id: &'a [Uuid],
    seq: Vec<i64>,
    user_id: Vec<&'a str>,
    transaction_type: Vec<&'a str>,
    amount: Vec<Decimal>,
    balance_before: Vec<Decimal>,
    balance_after: Vec<Decimal>,
    provider: Vec<Option<&'a str>>,
    model: Vec<Option<&'a str>>,
    prompt_tokens: Vec<Option<i64>>,
    completion_tokens: Vec<Option<i64>>,
    total_tokens: Vec<Option<i64>>,
    cost_per_token: Vec<Option<&'a str>>,
    power_level: Vec<Option<&'a str>>,
    is_byok: Vec<bool>,
    payment_method: Vec<Option<&'a str>>,
    stripe_payment_intent_id: Vec<Option<&'a str>>,
    stripe_charge_id: Vec<Option<&'a str>>,
    request_id: Vec<Option<&'a str>>,
    invoice_id: Vec<Option<&'a str>>,
    package_id: Vec<Option<i64>>,
    metadata: Vec<Option<&'a str>>,
    notes: Vec<Option<&'a str>>,
    admin_user_id: Vec<Option<&'a str>>,
    idempotency_key: Vec<Option<&'a str>>,
    corrects_entry_id: &'a [Option<Uuid>],
    prev_hash: Vec<&'a [u8]>,
    hash: Vec<&'a [u8]>,
    created_at: Vec<&'a str>,
}

impl<'a> Columns<'a> {
    fn of(
        entries: &'a [WireEntry],
        entry_ids: &'a [Uuid],
        corrects: &'a [Option<Uuid>],
        prev_hashes: &'a [[u8; 32]],
        hashes: &'a [[u8; 32]],
    ) -> Columns<'a> {
        let texts = |f: fn(&'a WireEntry) -> Option<&'a str>| entries.iter().map(f).collect();
        Columns {
            entry_id: entry_ids,
            seq: entries.iter().map(|e| e.seq).collect(),
            user_id: entries.iter().map(|e| e.user_id.as_str()).collect(),
            transaction_type: entries
                .iter()
                .map(|e| e.transaction_type.as_str())
                .collect(),
            amount: entries.iter().map(|e| e.amount.to_decimal()).collect(),
            balance_before: entries
                .iter()
                .map(|e| e.balance_before.to_decimal())
                .collect(),
            balance_after: entries
                .iter()
                .map(|e| e.balance_after.to_decimal())
                .collect(),
            provider: texts(|e| e.provider.as_deref()),
            model: texts(|e| e.model.as_deref()),
            prompt_tokens: entries
                .iter()
                .map(|e| e.prompt_tokens.map(i64::from))
                .collect(),
            completion_tokens: entries
                .iter()
                .map(|e| e.completion_tokens.map(i64::from))
                .collect(),
            total_tokens: entries.iter().map(|e| e.total_tokens).collect(),
            cost_per_token: texts(|e| e.cost_per_token.as_deref()),
            power_level: texts(|e| e.power_level.as_deref()),
            is_byok: entries.iter().map(|e| e.is_byok).collect(),
            payment_method: texts(|e| e.payment_method.as_deref()),
            stripe_payment_intent_id: texts(|e| e.stripe_payment_intent_id.as_deref()),
            stripe_charge_id: texts(|e| e.stripe_charge_id.as_deref()),
            request_id: texts(|e| e.request_id.as_deref()),
            invoice_id: texts(|e| e.invoice_id.as_deref()),
            package_id: entries.iter().map(|e| e.package_id).collect(),
            metadata: texts(|e| e.metadata.as_deref()),
            notes: texts(|e| e.notes.as_deref()),
            admin_user_id: texts(|e| e.admin_user_id.as_deref()),
            idempotency_key: texts(|e| e.idempotency_key.as_deref()),
            corrects_entry_id: corrects,
            prev_hash: prev_hashes.iter().map(<[u8; 32]>::as_slice).collect(),
            hash: hashes.iter().map(<[u8; 32]>::as_slice).collect(),
            created_at: entries.iter().map(|e| e.created_at.as_str()).collect(),
        }
    }
}

/// The refusal of a push for an incarnation the agent never registered: an incarnation is
/// registered by enrolling with it, never chosen by a push.
fn unregistered(agent: &AgentAuth, incarnation: Uuid) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        error_code::UNKNOWN_INCARNATION,
        format!(
            "incarnation {incarnation} is not registered for agent {:?}: an agent's database \
             registers its incarnation by enrolling (a restored or new database enrols again with \
             a token from `tollgate-server agents enroll {}`)",
            agent.name, agent.name
        ),
    )
    .with_acked_seq(0)
}
