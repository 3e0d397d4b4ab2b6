//! Push: ingest a batch of an agent's journal entries, exactly once (SYNC.md "Push").
//!
//! Guarantees:
//! - Everything that can be checked without the database is checked before a connection is
//!   taken: the body's size ([`PUSH_BODY_BYTES_MAX`], 413), its JSON shape (400 naming the
//!   field), the protocol version (400 `unsupported_protocol`), the batch's size
//!   ([`PUSH_ENTRIES_MAX`], 413), consecutive seqs, every entry's own hash and balance
//!   arithmetic (`WireEntry::check`, 400 `bad_hash` / `bad_request` naming the seq), the chain
//!   inside the batch, and every field the central schema constrains (UUIDs in their canonical
//!   text, so the stored row re-hashes to the same bytes; the allowed transaction types, power
//!   levels and payment methods; user id length; no NUL characters). A refused batch writes
//!   nothing.
//! - What passes is applied by [`super::ingest`] in one PostgreSQL transaction under the stream's
//!   row lock: replays are compared and skipped, a gap is refused, a differing replay quarantines
//!   the agent, the rest is stored once. The answer is the contiguous acknowledged head.
//! - Every push is counted by outcome (`pushes`), and the time of its transaction measured
//!   (`push_seconds`).

use std::collections::HashSet;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tollgate_schema::vocabulary::{EntryType, PaymentMethod, PowerLevel};
use tollgate_schema::wire::{
    EntryProblem, GENESIS_HASH, PUSH_BODY_BYTES_MAX, PUSH_ENTRIES_MAX, PushRequest, PushResponse,
    WireEntry, decode_hash, error_code,
};
use uuid::Uuid;

use super::ingest::{self, IngestError, Outcome};
use super::protocol;
use crate::http::AppState;
use crate::http::auth::{AgentAuth, AgentStatus};
use crate::http::error::ApiError;
use crate::http::json::{parse_json, read_body};
use crate::metrics::OutcomeLabels;

/// Transaction types the central journal accepts (the `credit_transactions` CHECK): the shared
/// vocabulary's.
pub const TRANSACTION_TYPES: &[&str] = EntryType::NAMES;
/// Payment methods the central journal accepts (the `credit_transactions` CHECK).
pub const PAYMENT_METHODS: &[&str] = PaymentMethod::NAMES;
/// Longest user id, in characters (the `user_credits` CHECK).
pub const USER_ID_CHARS_MAX: usize = 128;

/// `POST /v1/sync/push`.
pub async fn handle(
    State(state): State<AppState>,
    agent: AgentAuth,
    body: Body,
) -> Result<Json<PushResponse>, ApiError> {
    let result = push(&state, &agent, body).await;
    let outcome = match &result {
        Ok((_, outcome)) => outcome.label(),
        Err(e) => refusal_label(e),
    };
    state
        .metrics
        .pushes
        .get_or_create(&OutcomeLabels { outcome })
        .inc();
    result.map(|(response, _)| Json(response))
}

async fn push(
    state: &AppState,
    agent: &AgentAuth,
    body: Body,
) -> Result<(PushResponse, Outcome), ApiError> {
    let bytes = read_body(
        body,
        PUSH_BODY_BYTES_MAX,
        state.config.limits.body_read_timeout,
    )
    .await?;
    // Parsing and hashing up to a thousand entries is CPU work (about a millisecond): off the
    // async workers, so other requests (long polls, health checks) are not held behind it.
    let negotiated = agent.protocol;
    let batch =
        tokio::task::spawn_blocking(move || Batch::check(parse_request(&bytes)?, negotiated))
            .await
            .map_err(|e| ApiError::internal("checking a push batch", e))??;
    if agent.status == AgentStatus::Quarantined {
        let acked = ingest::acked_seq(&state.pool, agent.agent_id, batch.incarnation).await?;
        return Err(IngestError::Quarantined {
            agent: agent.name.clone(),
            acked,
        }
        .into());
    }
    let started = std::time::Instant::now();
    let result = ingest::ingest(&state.pool, agent, &batch).await;
    state
        .metrics
        .push_seconds
        .observe(started.elapsed().as_secs_f64());
    let outcome = result?;
    if let Outcome::Accepted { ingested, .. } = outcome {
        state.metrics.entries_ingested.inc_by(ingested as u64);
    }
    Ok((
        PushResponse {
            protocol_version: agent.protocol,
            incarnation: batch.incarnation_text,
            acked_seq: outcome.acked_seq(),
        },
        outcome,
    ))
}

/// The `pushes` outcome label of a refusal (a fixed set).
fn refusal_label(e: &ApiError) -> &'static str {
    match e.code {
        error_code::GAP => "gap",
        error_code::CONFLICT => "conflict",
        error_code::BAD_HASH => "bad_hash",
        error_code::QUARANTINED => "quarantined",
        error_code::BAD_REQUEST | error_code::UNSUPPORTED_PROTOCOL => "bad_request",
        error_code::TOO_LARGE => "too_large",
        _ => "error",
    }
}

/// Parses the body; when it does not parse but names another protocol version, says so (a peer
/// speaking another version may well send another shape).
fn parse_request(bytes: &[u8]) -> Result<PushRequest, ApiError> {
    match parse_json::<PushRequest>(bytes) {
        Ok(request) => Ok(request),
        Err(e) => {
            #[derive(Deserialize)]
            struct VersionOnly {
                protocol_version: u32,
            }
            match serde_json::from_slice::<VersionOnly>(bytes) {
                Ok(v) if !protocol::speaks(v.protocol_version) => {
                    Err(protocol::unsupported(v.protocol_version))
                }
                _ => Err(e),
            }
        }
    }
}

fn bad_hash(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, error_code::BAD_HASH, message)
}

/// A push that passed every check that needs no database.
#[derive(Debug)]
pub(crate) struct Batch {
    pub incarnation: Uuid,
    pub incarnation_text: String,
    pub head_seq: i64,
    pub entries: Vec<WireEntry>,
    /// Decoded per entry, in batch order.
    pub entry_ids: Vec<Uuid>,
    pub corrects_entry_ids: Vec<Option<Uuid>>,
    pub prev_hashes: Vec<[u8; 32]>,
    pub hashes: Vec<[u8; 32]>,
}

impl Batch {
    /// Checks `request`, sent by an agent that negotiated protocol `negotiated` (see the
    /// module's guarantees).
    pub(crate) fn check(request: PushRequest, negotiated: u32) -> Result<Batch, ApiError> {
        protocol::check_body(request.protocol_version, negotiated)?;
        let incarnation = canonical_uuid(&request.incarnation).ok_or_else(|| {
            ApiError::bad_request(format!(
                "incarnation {:?} is not a UUID in lower-case hyphenated form",
                truncate(&request.incarnation)
            ))
        })?;
        let n = request.entries.len();
        if n > PUSH_ENTRIES_MAX {
            return Err(ApiError::too_large(format!(
                "the batch has {n} entries; at most {PUSH_ENTRIES_MAX} are accepted in one push"
            )));
        }
        if request.head_seq < 0 {
            return Err(ApiError::bad_request(format!(
                "head_seq {} must not be negative",
                request.head_seq
            )));
        }
        if let Some(last) = request.entries.last()
            && request.head_seq < last.seq
        {
            return Err(ApiError::bad_request(format!(
                "head_seq {} is below the batch's last seq {}",
                request.head_seq, last.seq
            )));
        }
        let mut entry_ids = Vec::with_capacity(n);
        let mut corrects_entry_ids = Vec::with_capacity(n);
        let mut prev_hashes = Vec::with_capacity(n);
        let mut hashes = Vec::with_capacity(n);
        let mut seen_ids = HashSet::with_capacity(n);
        for (i, entry) in request.entries.iter().enumerate() {
            let seq = entry.seq;
            if i > 0 {
                let previous = &request.entries[i - 1];
                if previous.seq.checked_add(1) != Some(seq) {
                    return Err(ApiError::bad_request(format!(
                        "entries are not consecutive: seq {seq} follows seq {}",
                        previous.seq
                    )));
                }
            }
            entry.check().map_err(|problem| match problem {
                EntryProblem::Field(..) => {
                    ApiError::bad_request(format!("entry seq {seq}: {problem}"))
                }
                EntryProblem::MalformedHash(_) | EntryProblem::HashMismatch => {
                    bad_hash(format!("entry seq {seq}: {problem}"))
                }
            })?;
            // `check` proved both decode.
            let prev = decode_hash(&entry.prev_hash)
                .ok_or_else(|| bad_hash(format!("entry seq {seq}: prev_hash is malformed")))?;
            let hash = decode_hash(&entry.hash)
                .ok_or_else(|| bad_hash(format!("entry seq {seq}: hash is malformed")))?;
            if seq == 1 && prev != GENESIS_HASH {
                return Err(bad_hash(
                    "entry seq 1: prev_hash must be the genesis hash (64 zeros)".to_owned(),
                ));
            }
            if let Some(previous) = hashes.last()
                && *previous != prev
            {
                return Err(bad_hash(format!(
                    "entry seq {seq}: prev_hash does not match the hash of seq {}",
                    seq - 1
                )));
            }
            let (entry_id, corrects) = check_fields(entry)?;
            if !seen_ids.insert(entry_id) {
                return Err(ApiError::bad_request(format!(
                    "entry seq {seq}: entry_id {entry_id} appears twice in the batch"
                )));
            }
            entry_ids.push(entry_id);
            corrects_entry_ids.push(corrects);
            prev_hashes.push(prev);
            hashes.push(hash);
        }
        Ok(Batch {
            incarnation,
            incarnation_text: request.incarnation,
            head_seq: request.head_seq,
            entries: request.entries,
            entry_ids,
            corrects_entry_ids,
            prev_hashes,
            hashes,
        })
    }
}

/// Checks the fields the central schema constrains; returns the parsed entry id and
/// corrects_entry_id.
fn check_fields(entry: &WireEntry) -> Result<(Uuid, Option<Uuid>), ApiError> {
    let seq = entry.seq;
    let field = |name: &str, problem: String| {
        ApiError::bad_request(format!("entry seq {seq}: {name} {problem}"))
    };
    let entry_id = canonical_uuid(&entry.entry_id).ok_or_else(|| {
        field(
            "entry_id",
            format!(
                "{:?} is not a UUID in lower-case hyphenated form",
                truncate(&entry.entry_id)
            ),
        )
    })?;
    let corrects = match &entry.corrects_entry_id {
        None => None,
        Some(text) => Some(canonical_uuid(text).ok_or_else(|| {
            field(
                "corrects_entry_id",
                format!(
                    "{:?} is not a UUID in lower-case hyphenated form",
                    truncate(text)
                ),
            )
        })?),
    };
    let user_chars = entry.user_id.chars().count();
    if user_chars == 0 || user_chars > USER_ID_CHARS_MAX {
        return Err(field(
            "user_id",
            format!("must be 1 to {USER_ID_CHARS_MAX} characters (got {user_chars})"),
        ));
    }
    if !TRANSACTION_TYPES.contains(&entry.transaction_type.as_str()) {
        return Err(field(
            "transaction_type",
            format!(
                "{:?} is not one of {}",
                truncate(&entry.transaction_type),
                TRANSACTION_TYPES.join(", ")
            ),
        ));
    }
    if let Some(level) = &entry.power_level
        && !PowerLevel::NAMES.contains(&level.as_str())
    {
        return Err(field(
            "power_level",
            format!(
                "{:?} is not one of {}",
                truncate(level),
                PowerLevel::NAMES.join(", ")
            ),
        ));
    }
    if let Some(method) = &entry.payment_method
        && !PAYMENT_METHODS.contains(&method.as_str())
    {
        return Err(field(
            "payment_method",
            format!(
                "{:?} is not one of {}",
                truncate(method),
                PAYMENT_METHODS.join(", ")
            ),
        ));
    }
    if let Some(total) = entry.total_tokens
        && total < 0
    {
        return Err(field(
            "total_tokens",
            format!("{total} must not be negative"),
        ));
    }
    if OffsetDateTime::parse(&entry.created_at, &Rfc3339).is_err() {
        return Err(field(
            "created_at",
            format!("{:?} is not an RFC 3339 time", truncate(&entry.created_at)),
        ));
    }
    for (name, value) in text_fields(entry) {
        if value.is_some_and(|v| v.contains('\0')) {
            return Err(field(name, "contains a NUL character".to_owned()));
        }
    }
    // Indexed keys: bounded like the agent's own (and far below PostgreSQL's btree row limit).
    for (name, value) in [
        ("idempotency_key", entry.idempotency_key.as_deref()),
        ("request_id", entry.request_id.as_deref()),
        (
            "stripe_payment_intent_id",
            entry.stripe_payment_intent_id.as_deref(),
        ),
        ("stripe_charge_id", entry.stripe_charge_id.as_deref()),
        ("invoice_id", entry.invoice_id.as_deref()),
    ] {
        if value.is_some_and(|v| v.len() > KEY_LEN_MAX) {
            return Err(field(name, format!("is longer than {KEY_LEN_MAX} bytes")));
        }
    }
    Ok((entry_id, corrects))
}

/// Longest idempotency key, request id or payment reference accepted (the agent's own limit).
pub const KEY_LEN_MAX: usize = 255;

/// Every free-text field of an entry, by name (PostgreSQL text cannot hold NUL).
fn text_fields(e: &WireEntry) -> [(&'static str, Option<&str>); 12] {
    [
        ("user_id", Some(e.user_id.as_str())),
        ("provider", e.provider.as_deref()),
        ("model", e.model.as_deref()),
        ("cost_per_token", e.cost_per_token.as_deref()),
        ("request_id", e.request_id.as_deref()),
        ("metadata", e.metadata.as_deref()),
        ("notes", e.notes.as_deref()),
        ("admin_user_id", e.admin_user_id.as_deref()),
        ("idempotency_key", e.idempotency_key.as_deref()),
        (
            "stripe_payment_intent_id",
            e.stripe_payment_intent_id.as_deref(),
        ),
        ("stripe_charge_id", e.stripe_charge_id.as_deref()),
        ("invoice_id", e.invoice_id.as_deref()),
    ]
}

/// A UUID only in the lower-case hyphenated form (the text that was hashed must be the text that
/// PostgreSQL gives back).
pub(crate) fn canonical_uuid(text: &str) -> Option<Uuid> {
    let id = Uuid::try_parse(text).ok()?;
    let mut buf = Uuid::encode_buffer();
    (id.hyphenated().encode_lower(&mut buf) == text).then_some(id)
}

/// At most a short prefix of untrusted text, for messages.
pub(crate) fn truncate(text: &str) -> String {
    const SHOWN_CHARS_MAX: usize = 80;
    if text.chars().count() <= SHOWN_CHARS_MAX {
        text.to_owned()
    } else {
        let mut out: String = text.chars().take(SHOWN_CHARS_MAX).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_uuids() {
        let id = Uuid::now_v7();
        assert_eq!(canonical_uuid(&id.to_string()), Some(id));
        assert_eq!(canonical_uuid(&id.simple().to_string()), None);
        assert_eq!(canonical_uuid(&id.to_string().to_uppercase()), None);
        assert_eq!(canonical_uuid(&format!("urn:uuid:{id}")), None);
        assert_eq!(canonical_uuid("nope"), None);
    }

    #[test]
    fn long_text_is_truncated() {
        assert_eq!(truncate("short"), "short");
        let long = "x".repeat(500);
        assert_eq!(truncate(&long).chars().count(), 81);
    }
}
