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
//!   bump the user's counters. For a fleet user, what this agent holds of them
//!   (`escrow_holdings`) moves by the same delta, and what its releases return goes back to the
//!   user's pool (paying their debt first) while the overdrafts it drew are taken from the pool
//!   or, beyond it, owed — in the same transaction. The stream's head, hash and the agent's incarnation move in the
//!   same transaction. Nothing is visible until it commits; a crash before commit leaves the
//!   stream exactly as it was.
//! - Every refusal is an [`IngestError`] carrying the stream's acknowledged head, so the agent
//!   resends from there; only `http/` maps it to a status and a wire code.

use std::collections::BTreeMap;

use deadpool_postgres::{Pool, Transaction};
use rust_decimal::Decimal;
use tokio_postgres::error::SqlState;
use tollgate_schema::money::SCALE;
use tollgate_schema::vocabulary::AgentStatus;
use tollgate_schema::wire::{ESCROW_ENTRY_TYPE, OVERDRAFT_KEY_PREFIX, WireEntry};
use uuid::Uuid;

use super::push::Batch;
use super::rules;
use crate::http::auth::AgentAuth;

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
/// What this agent holds of each fleet user moves by the batch's net delta for them (a holding
/// never goes below zero: the CHECK, and before it the balance chain of [`rules`]). The row is
/// made first at zero, then moved: an insert's CHECK is evaluated on the proposed row before
/// any conflict, so a negative delta cannot go through `INSERT … ON CONFLICT DO UPDATE`.
const OPEN_HOLDINGS: &str = "INSERT INTO escrow_holdings (user_id, agent_id) \
     SELECT u.user_id, $1 FROM user_credits u WHERE u.user_id = ANY($2) AND u.fleet \
     ON CONFLICT (user_id, agent_id) DO NOTHING";
const APPLY_HOLDINGS: &str = "UPDATE escrow_holdings h SET balance = h.balance + d.delta, \
     updated_at = now() FROM unnest($2::text[], $3::numeric[]) AS d(user_id, delta) \
     WHERE h.user_id = d.user_id AND h.agent_id = $1";
/// An escrow entry from a former home ends its conversion (see `rules`).
const END_CONVERSIONS: &str = "UPDATE escrow_holdings SET converting = false \
     WHERE agent_id = $1 AND user_id = ANY($2) AND converting";
/// Each fleet user's position (pool − debt) moves by what the batch's releases returned less
/// the overdrafts it drew: a release pays debt first, an overdraft beyond the pool is owed
/// (the same arithmetic as `central::credit::MOVE_POSITION`).
const APPLY_POOLS: &str = "UPDATE user_credits u \
     SET pool = greatest(u.pool - u.debt + d.delta, 0), \
         debt = greatest(u.debt - u.pool - d.delta, 0) \
     FROM unnest($1::text[], $2::numeric[]) AS d(user_id, delta) \
     WHERE u.user_id = d.user_id AND u.fleet";
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

/// Why a batch was not applied. Domain words only: `http/error.rs` turns each into a status
/// and a wire error code, with the stream's acknowledged head so the agent resends from there.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IngestError {
    /// The push names an incarnation the agent never registered (by enrolling with it).
    #[error(
        "incarnation {incarnation} is not registered for agent {agent:?}: an agent's database \
         registers its incarnation by enrolling (a restored or new database enrols again with a \
         token from `tollgate-server agents enroll {agent}`)"
    )]
    UnknownIncarnation { agent: String, incarnation: Uuid },
    /// The agent was quarantined before this push.
    #[error(
        "agent {agent:?} is quarantined: an admin must look at its conflicting entries and run \
         `tollgate-server agents release {agent}` before it may push again"
    )]
    Quarantined { agent: String, acked: i64 },
    /// The agent's credential was revoked while the push waited.
    #[error("unknown or revoked agent credential")]
    Revoked,
    /// The batch starts past the acknowledged head + 1.
    #[error(
        "the batch starts at seq {first} but the stream's acknowledged head is {acked}; resend \
         from seq {}",
        acked + 1
    )]
    Gap { first: i64, acked: i64 },
    /// The batch diverged from the stored stream or broke a rule: the agent is now quarantined.
    #[error("conflict: {reason}; agent {agent:?} is now quarantined until an admin releases it")]
    Conflict {
        agent: String,
        reason: String,
        acked: i64,
    },
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("{context}: {detail}")]
    Internal {
        context: &'static str,
        detail: String,
    },
}

impl IngestError {
    /// The stream's acknowledged head the refusal carries, if any.
    pub(crate) fn acked_seq(&self) -> Option<i64> {
        match self {
            IngestError::Quarantined { acked, .. }
            | IngestError::Gap { acked, .. }
            | IngestError::Conflict { acked, .. } => Some(*acked),
            IngestError::UnknownIncarnation { .. } => Some(0),
            _ => None,
        }
    }

    fn internal(context: &'static str, detail: impl std::fmt::Display) -> IngestError {
        IngestError::Internal {
            context,
            detail: detail.to_string(),
        }
    }
}

/// The stream's acknowledged head without locking it (0 for a stream never pushed).
pub(crate) async fn acked_seq(
    pool: &Pool,
    agent_id: Uuid,
    incarnation: Uuid,
) -> Result<i64, IngestError> {
    let conn = pool.get().await?;
    let row = conn
        .query_opt(
            "SELECT acked_seq FROM agent_streams WHERE agent_id = $1 AND incarnation = $2",
            &[&agent_id, &incarnation],
        )
        .await?;
    Ok(row.map_or(0, |r| r.get("acked_seq")))
}

/// Applies `batch` for `agent` (see the module's guarantees), step by step: lock the stream,
/// check the agent is active, compare what is replayed, check the new entries chain on the
/// stored head and keep the rules, store them, move the balances, advance the stream.
pub(crate) async fn ingest(
    pool: &Pool,
    agent: &AgentAuth,
    batch: &Batch,
) -> Result<Outcome, IngestError> {
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    let head = lock_stream(&tx, agent, batch.incarnation).await?;
    check_active(&tx, agent, head.acked).await?;
    let Some(first) = batch.entries.first() else {
        let heartbeat = tx.prepare_cached(HEARTBEAT).await?;
        tx.execute(
            &heartbeat,
            &[&agent.agent_id, &batch.incarnation, &batch.head_seq],
        )
        .await?;
        tx.commit().await?;
        return Ok(Outcome::Heartbeat {
            acked_seq: head.acked,
        });
    };

    // Entries already acknowledged: compare, never apply twice.
    let old = usize::try_from((head.acked - first.seq + 1).max(0))
        .unwrap_or(usize::MAX)
        .min(batch.entries.len());
    if old == 0 && first.seq > head.acked + 1 {
        return Err(IngestError::Gap {
            first: first.seq,
            acked: head.acked,
        });
    }
    if old > 0 {
        if let Some((reason, evidence)) = replay_divergence(&tx, agent, batch, &head, old).await? {
            return Err(
                quarantine(tx, agent, batch.incarnation, head.acked, reason, &evidence).await,
            );
        }
        if old == batch.entries.len() {
            // A pure replay: nothing to write.
            tx.rollback().await?;
            return Ok(Outcome::Replay {
                acked_seq: head.acked,
            });
        }
    }

    let new = New::of(batch, old);
    if let Some((reason, evidence)) = chain_break(&new, &head, batch.incarnation) {
        return Err(quarantine(
            tx,
            agent,
            batch.incarnation,
            head.acked,
            reason,
            &[evidence],
        )
        .await);
    }
    if let Some(reason) = broken_rule(&tx, agent.agent_id, new.entries).await? {
        drop(tx);
        return Err(quarantine_alone(pool, agent, head.acked, reason).await);
    }
    if let Some(reason) = store(&tx, agent.agent_id, batch.incarnation, &new).await? {
        drop(tx);
        return Err(quarantine_alone(pool, agent, head.acked, reason).await);
    }
    if let Some(reason) = move_balances(&tx, agent.agent_id, &new, batch.incarnation).await? {
        drop(tx);
        return Err(quarantine_alone(pool, agent, head.acked, reason).await);
    }
    let acked_seq = advance(&tx, agent.agent_id, batch, &new).await?;
    tx.commit().await?;
    Ok(Outcome::Accepted {
        acked_seq,
        ingested: new.entries.len(),
    })
}

/// The locked stream's contiguous head.
struct Head {
    acked: i64,
    hash: Vec<u8>,
}

/// Locks the stream's row (`FOR UPDATE`: pushes of one stream take turns). An agent enrolled by
/// a server from before streams were made at enrolment has its enrolled incarnation registered
/// here; any other incarnation is refused.
async fn lock_stream(
    tx: &Transaction<'_>,
    agent: &AgentAuth,
    incarnation: Uuid,
) -> Result<Head, IngestError> {
    let lock = tx.prepare_cached(LOCK_STREAM).await?;
    let row = match tx
        .query_opt(&lock, &[&agent.agent_id, &incarnation])
        .await?
    {
        Some(row) => row,
        None => {
            let enrolled: Option<Uuid> = tx
                .query_one(ENROLLED_INCARNATION, &[&agent.agent_id])
                .await?
                .get("incarnation");
            if enrolled != Some(incarnation) {
                return Err(IngestError::UnknownIncarnation {
                    agent: agent.name.clone(),
                    incarnation,
                });
            }
            tx.execute(REGISTER_STREAM, &[&agent.agent_id, &incarnation])
                .await?;
            tx.query_one(&lock, &[&agent.agent_id, &incarnation])
                .await?
        }
    };
    Ok(Head {
        acked: row.get("acked_seq"),
        hash: row.get("head_hash"),
    })
}

/// Refuses a quarantined or revoked agent (read under the stream lock: a quarantine committed by
/// the push that held it before is seen).
async fn check_active(
    tx: &Transaction<'_>,
    agent: &AgentAuth,
    acked: i64,
) -> Result<(), IngestError> {
    let stmt = tx.prepare_cached(AGENT_STATUS).await?;
    let status: String = tx.query_one(&stmt, &[&agent.agent_id]).await?.get("status");
    match status.parse::<AgentStatus>() {
        Ok(AgentStatus::Active) => Ok(()),
        Ok(AgentStatus::Quarantined) => Err(IngestError::Quarantined {
            agent: agent.name.clone(),
            acked,
        }),
        _ => Err(IngestError::Revoked),
    }
}

/// Compares the batch's first `old` entries (at or below the head) with the stored ones: the
/// reason and evidence if any differs.
async fn replay_divergence<'b>(
    tx: &Transaction<'_>,
    agent: &AgentAuth,
    batch: &'b Batch,
    head: &Head,
    old: usize,
) -> Result<Option<(String, Vec<Evidence<'b>>)>, IngestError> {
    let first = batch.entries[0].seq;
    let last_old = first + old as i64 - 1;
    let stmt = tx.prepare_cached(STORED_HASHES).await?;
    let rows = tx
        .query(
            &stmt,
            &[&agent.agent_id, &batch.incarnation, &first, &last_old],
        )
        .await?;
    if rows.len() != old {
        return Err(IngestError::internal(
            "comparing a replayed batch",
            format!(
                "stream {}/{} acknowledges seq {} but holds {} of seqs {first}..={last_old}",
                agent.agent_id,
                batch.incarnation,
                head.acked,
                rows.len(),
            ),
        ));
    }
    let mut evidence = Vec::new();
    let mut differing = 0usize;
    for (i, row) in rows.iter().enumerate() {
        let held: Vec<u8> = row.get("hash");
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
    Ok(evidence.first().map(|e| e.seq).map(|seq| {
        (
            format!(
                "replayed seq {seq} of incarnation {} with content different from the stored \
                 entry ({differing} differing entries in the batch)",
                batch.incarnation
            ),
            evidence,
        )
    }))
}

/// The batch's entries past the head, with their decoded fields.
struct New<'b> {
    entries: &'b [WireEntry],
    entry_ids: &'b [Uuid],
    corrects_entry_ids: &'b [Option<Uuid>],
    prev_hashes: &'b [[u8; 32]],
    hashes: &'b [[u8; 32]],
}

impl<'b> New<'b> {
    fn of(batch: &'b Batch, old: usize) -> New<'b> {
        New {
            entries: &batch.entries[old..],
            entry_ids: &batch.entry_ids[old..],
            corrects_entry_ids: &batch.corrects_entry_ids[old..],
            prev_hashes: &batch.prev_hashes[old..],
            hashes: &batch.hashes[old..],
        }
    }

    fn seqs(&self) -> (i64, i64) {
        (
            self.entries[0].seq,
            self.entries[self.entries.len() - 1].seq,
        )
    }
}

/// The batch's own chain was checked; its first new entry must chain on what we hold.
fn chain_break<'b>(
    new: &New<'b>,
    head: &Head,
    incarnation: Uuid,
) -> Option<(String, Evidence<'b>)> {
    if new.prev_hashes[0].as_slice() == head.hash.as_slice() {
        return None;
    }
    let reason = format!(
        "seq {} of incarnation {incarnation} does not chain on the stored head (seq {}): the \
         agent's history differs from the server's",
        new.entries[0].seq, head.acked
    );
    Some((
        reason,
        Evidence {
            seq: head.acked,
            held_hash: head.hash.clone(),
            offered_hash: new.entries[0].prev_hash.clone(),
            offered: &new.entries[0],
        },
    ))
}

/// What this agent may write: central operation keys it was sent, users it holds, each user's
/// balance chain continued, amounts the books can hold ([`rules`]).
async fn broken_rule(
    tx: &Transaction<'_>,
    agent_id: Uuid,
    new: &[WireEntry],
) -> Result<Option<String>, IngestError> {
    if let Some(reason) = rules::central_key_mismatch(tx, agent_id, new).await? {
        return Ok(Some(reason));
    }
    Ok(rules::user_rule_broken(tx, agent_id, new).await?)
}

/// Stores the new entries with one multi-row insert, exactly as hashed. A unique key they hit
/// (a central operation's key applied by a push that raced this one's check, or an entry id
/// stored elsewhere) is a reason to quarantine.
async fn store(
    tx: &Transaction<'_>,
    agent_id: Uuid,
    incarnation: Uuid,
    new: &New<'_>,
) -> Result<Option<String>, IngestError> {
    let columns = Columns::of(
        new.entries,
        new.entry_ids,
        new.corrects_entry_ids,
        new.prev_hashes,
        new.hashes,
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
    match inserted {
        Ok(_) => Ok(None),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            let what = match e.as_db_error().and_then(|d| d.constraint()) {
                Some(CENTRAL_KEY_INDEX) => "a central operation key that already has its entry",
                _ => "an entry_id already stored elsewhere",
            };
            let (from, to) = new.seqs();
            Ok(Some(format!(
                "a batch of incarnation {incarnation} (seqs {from}..={to}) carries {what}"
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// Moves each user's balance once by its net delta (`add_credits` / `debit_credits`, which
/// refuse to overdraw: a reason to quarantine), what this agent holds of each fleet user, and
/// the fleet pools by what was released; bumps the purchase and usage counters.
async fn move_balances(
    tx: &Transaction<'_>,
    agent_id: Uuid,
    new: &New<'_>,
    incarnation: Uuid,
) -> Result<Option<String>, IngestError> {
    let effects = Effects::of(new.entries)?;
    if !effects.balance_users.is_empty() {
        let open = tx.prepare_cached(OPEN_HOLDINGS).await?;
        tx.execute(&open, &[&agent_id, &effects.balance_users])
            .await?;
        let holdings = tx.prepare_cached(APPLY_HOLDINGS).await?;
        tx.execute(
            &holdings,
            &[&agent_id, &effects.balance_users, &effects.balance_deltas],
        )
        .await?;
    }
    if !effects.escrow_users.is_empty() {
        let end = tx.prepare_cached(END_CONVERSIONS).await?;
        tx.execute(&end, &[&agent_id, &effects.escrow_users])
            .await?;
    }
    if !effects.pool_users.is_empty() {
        let pools = tx.prepare_cached(APPLY_POOLS).await?;
        tx.execute(&pools, &[&effects.pool_users, &effects.pool_deltas])
            .await?;
    }
    if !effects.balance_users.is_empty() {
        let apply = tx.prepare_cached(APPLY_BALANCES).await?;
        if let Err(e) = tx
            .query(&apply, &[&effects.balance_users, &effects.balance_deltas])
            .await
        {
            if e.code() == Some(&SqlState::CHECK_VIOLATION) {
                let (from, to) = new.seqs();
                return Ok(Some(format!(
                    "seqs {from}..={to} of incarnation {incarnation} would take a user's central \
                     balance below zero ({})",
                    e.as_db_error().map_or("", |d| d.message())
                )));
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
    Ok(None)
}

/// Moves the stream's head and hash to the last new entry; returns the new head.
async fn advance(
    tx: &Transaction<'_>,
    agent_id: Uuid,
    batch: &Batch,
    new: &New<'_>,
) -> Result<i64, IngestError> {
    let (_, last_seq) = new.seqs();
    let last_hash = new.hashes[new.hashes.len() - 1].to_vec();
    let advance = tx.prepare_cached(ADVANCE_STREAM).await?;
    tx.execute(
        &advance,
        &[
            &agent_id,
            &batch.incarnation,
            &last_seq,
            &last_hash,
            &batch.head_seq,
        ],
    )
    .await?;
    Ok(last_seq)
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
) -> IngestError {
    let result: Result<(), IngestError> = async {
        let insert = tx.prepare_cached(INSERT_EVIDENCE).await?;
        for e in evidence {
            let offered = serde_json::to_value(e.offered)
                .map_err(|err| IngestError::internal("keeping quarantine evidence", err))?;
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
async fn quarantine_alone(
    pool: &Pool,
    agent: &AgentAuth,
    acked: i64,
    reason: String,
) -> IngestError {
    let result: Result<(), IngestError> = async {
        let conn = pool.get().await?;
        conn.execute(QUARANTINE, &[&agent.agent_id, &reason])
            .await?;
        Ok(())
    }
    .await;
    conflict_after_quarantine(result, agent, acked, reason)
}

fn conflict_after_quarantine(
    result: Result<(), IngestError>,
    agent: &AgentAuth,
    acked: i64,
    reason: String,
) -> IngestError {
    if let Err(e) = result {
        return e;
    }
    tracing::warn!(agent = %agent.name, agent_id = %agent.agent_id, %reason, "agent quarantined");
    IngestError::Conflict {
        agent: agent.name.clone(),
        reason,
        acked,
    }
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
    /// Fleet users whose pool moves (releases less overdrafts), and by how much (never zero).
    pool_users: Vec<&'a str>,
    pool_deltas: Vec<Decimal>,
    /// Users with any escrow entry.
    escrow_users: Vec<&'a str>,
}

impl<'a> Effects<'a> {
    fn of(entries: &'a [WireEntry]) -> Result<Effects<'a>, IngestError> {
        #[derive(Default)]
        struct Sums {
            delta: i128,
            purchased: i128,
            used: i128,
            pool: i128,
            escrow: bool,
        }
        let mut by_user: BTreeMap<&str, Sums> = BTreeMap::new();
        for e in entries {
            let sums = by_user.entry(e.user_id.as_str()).or_default();
            let nanos = i128::from(e.amount.nanos());
            sums.delta += nanos;
            sums.escrow |= e.transaction_type == ESCROW_ENTRY_TYPE;
            match e.transaction_type.as_str() {
                "purchase" if nanos > 0 => sums.purchased += nanos,
                "usage" if nanos < 0 => sums.used -= nanos,
                ESCROW_ENTRY_TYPE if nanos < 0 => sums.pool -= nanos,
                ESCROW_ENTRY_TYPE
                    if e.idempotency_key
                        .as_deref()
                        .is_some_and(|k| k.starts_with(OVERDRAFT_KEY_PREFIX)) =>
                {
                    sums.pool -= nanos;
                }
                _ => {}
            }
        }
        // At most PUSH_ENTRIES_MAX amounts of at most i64::MAX nanos each: far inside the 96
        // bits of a Decimal, so this cannot fail; if it did, refuse rather than guess.
        let nanos = |n: i128| {
            Decimal::try_from_i128_with_scale(n, SCALE)
                .map(|d| d.normalize())
                .map_err(|e| IngestError::internal("summing a batch's amounts", e))
        };
        let mut effects = Effects {
            balance_users: Vec::new(),
            balance_deltas: Vec::new(),
            counter_users: Vec::new(),
            purchased: Vec::new(),
            used: Vec::new(),
            pool_users: Vec::new(),
            pool_deltas: Vec::new(),
            escrow_users: Vec::new(),
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
            if sums.escrow {
                effects.escrow_users.push(user);
            }
            if sums.pool != 0 {
                effects.pool_users.push(user);
                effects.pool_deltas.push(nanos(sums.pool)?);
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
