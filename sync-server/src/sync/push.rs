//! Push: the checks of a batch of an agent's journal entries that need no database (SYNC.md
//! "Push"); the HTTP handler is `http/sync_push.rs`, the transaction [`super::ingest`].
//!
//! Guarantees:
//! - [`Batch::check`] refuses, with a [`BatchError`] naming the seq and field: a body whose
//!   protocol version is not the request's, a batch larger than [`PUSH_ENTRIES_MAX`], seqs that
//!   are not consecutive, an entry whose own hash or balance arithmetic does not hold
//!   (`WireEntry::check`), a chain broken inside the batch, and every field the central schema
//!   constrains (UUIDs in their canonical text, so the stored row re-hashes to the same bytes;
//!   the allowed transaction types, power levels and payment methods; user id length; no NUL
//!   characters). A refused batch writes nothing.
//! - What passes is applied by [`super::ingest`] in one PostgreSQL transaction under the stream's
//!   row lock: replays are compared and skipped, a gap is refused, a differing replay quarantines
//!   the agent, the rest is stored once.

use std::collections::HashSet;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tollgate_schema::vocabulary::{EntryType, PaymentMethod, PowerLevel};
use tollgate_schema::wire::{
    EntryProblem, GENESIS_HASH, PUSH_ENTRIES_MAX, PushRequest, WireEntry, decode_hash,
};
use uuid::Uuid;

use super::protocol;

/// Transaction types the central journal accepts (the `credit_transactions` CHECK): the shared
/// vocabulary's.
pub const TRANSACTION_TYPES: &[&str] = EntryType::NAMES;
/// Payment methods the central journal accepts (the `credit_transactions` CHECK).
pub const PAYMENT_METHODS: &[&str] = PaymentMethod::NAMES;
/// Longest user id, in characters (the `user_credits` CHECK).
pub const USER_ID_CHARS_MAX: usize = 128;

/// Why a push batch is refused before the database is touched. Domain words only:
/// `http/error.rs` gives each its status and wire code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BatchError {
    /// A field is malformed or out of range (400 `bad_request`).
    #[error("{0}")]
    Invalid(String),
    /// An entry's hash or chain does not hold (400 `bad_hash`).
    #[error("{0}")]
    BadHash(String),
    /// More entries than one push may carry (413).
    #[error("{0}")]
    TooLarge(String),
    /// The body's protocol version is not the request's.
    #[error(transparent)]
    Protocol(#[from] protocol::Unsupported),
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
    pub(crate) fn check(request: PushRequest, negotiated: u32) -> Result<Batch, BatchError> {
        protocol::check_body(request.protocol_version, negotiated)?;
        let incarnation = canonical_uuid(&request.incarnation).ok_or_else(|| {
            BatchError::Invalid(format!(
                "incarnation {:?} is not a UUID in lower-case hyphenated form",
                truncate(&request.incarnation)
            ))
        })?;
        let n = request.entries.len();
        if n > PUSH_ENTRIES_MAX {
            return Err(BatchError::TooLarge(format!(
                "the batch has {n} entries; at most {PUSH_ENTRIES_MAX} are accepted in one push"
            )));
        }
        if request.head_seq < 0 {
            return Err(BatchError::Invalid(format!(
                "head_seq {} must not be negative",
                request.head_seq
            )));
        }
        if let Some(last) = request.entries.last()
            && request.head_seq < last.seq
        {
            return Err(BatchError::Invalid(format!(
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
                    return Err(BatchError::Invalid(format!(
                        "entries are not consecutive: seq {seq} follows seq {}",
                        previous.seq
                    )));
                }
            }
            entry.check().map_err(|problem| match problem {
                EntryProblem::Field(..) => {
                    BatchError::Invalid(format!("entry seq {seq}: {problem}"))
                }
                EntryProblem::MalformedHash(_) | EntryProblem::HashMismatch => {
                    BatchError::BadHash(format!("entry seq {seq}: {problem}"))
                }
            })?;
            // `check` proved both decode.
            let prev = decode_hash(&entry.prev_hash).ok_or_else(|| {
                BatchError::BadHash(format!("entry seq {seq}: prev_hash is malformed"))
            })?;
            let hash = decode_hash(&entry.hash).ok_or_else(|| {
                BatchError::BadHash(format!("entry seq {seq}: hash is malformed"))
            })?;
            if seq == 1 && prev != GENESIS_HASH {
                return Err(BatchError::BadHash(
                    "entry seq 1: prev_hash must be the genesis hash (64 zeros)".to_owned(),
                ));
            }
            if let Some(previous) = hashes.last()
                && *previous != prev
            {
                return Err(BatchError::BadHash(format!(
                    "entry seq {seq}: prev_hash does not match the hash of seq {}",
                    seq - 1
                )));
            }
            let (entry_id, corrects) = check_fields(entry)?;
            if !seen_ids.insert(entry_id) {
                return Err(BatchError::Invalid(format!(
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
fn check_fields(entry: &WireEntry) -> Result<(Uuid, Option<Uuid>), BatchError> {
    let seq = entry.seq;
    let field = |name: &str, problem: String| {
        BatchError::Invalid(format!("entry seq {seq}: {name} {problem}"))
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
