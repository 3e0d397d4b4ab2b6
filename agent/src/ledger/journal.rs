//! The journal (`credit_transactions`): appending entries, their hash chain, and reading history.
//!
//! Guarantees, for every entry appended through [`Session::append`]:
//! - `seq` is the previous entry's seq + 1 (gapless from 1), assigned in the same transaction
//!   that writes the entry, so no other writer can take or skip a number;
//! - `balance_before` is the user's cached balance, which always equals the user's previous
//!   entry's `balance_after` (0 for the first), and the cache moves to `balance_after`;
//! - `hash = sha256(prev_hash ‖ canonical bytes)`, where the canonical bytes are the JSON of
//!   [`Canonical`] (fields in a fixed order, amounts as exact decimal strings), and `prev_hash` is
//!   the previous entry's hash (32 zero bytes for the first). `tollgate verify` recomputes it.

use rusqlite::{Connection, OptionalExtension, params};
use tollgate_schema::money::Credits;

use super::LedgerError;
use super::session::{Session, UserRow};
use super::sql;
use super::types::{EntryReceipt, EntryType, JournalEntry, PowerLevel};

/// The hash that precedes the first entry.
pub use tollgate_schema::wire::GENESIS_HASH;

/// The newest entry's seq and hash: where the next entry chains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: i64,
    pub hash: [u8; 32],
}

impl ChainHead {
    pub fn load(conn: &Connection) -> Result<ChainHead, LedgerError> {
        let head = conn
            .prepare_cached(sql::CHAIN_HEAD)?
            .query_row([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .optional()?;
        match head {
            None => Ok(ChainHead {
                seq: 0,
                hash: GENESIS_HASH,
            }),
            Some((seq, hash)) => Ok(ChainHead {
                seq,
                hash: to_hash(&hash)?,
            }),
        }
    }
}

pub(crate) fn to_hash(bytes: &[u8]) -> Result<[u8; 32], LedgerError> {
    bytes
        .try_into()
        .map_err(|_| LedgerError::Corrupt(format!("a journal hash of {} bytes", bytes.len())))
}

/// What an operation wants written; the session fills in seq, ids, balances and hashes.
#[derive(Debug, Clone, Default)]
pub struct EntryDraft {
    pub entry_type: Option<EntryType>,
    pub amount: Credits,
    pub request_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub package_id: Option<i64>,
    pub corrects_entry_id: Option<String>,
    pub notes: Option<String>,
    pub admin_user_id: Option<String>,
    pub payment_method: Option<&'static str>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    pub cost_per_token: Option<String>,
    pub power_level: Option<PowerLevel>,
    pub is_byok: bool,
    pub metadata: Option<String>,
}

/// The bytes an entry's hash covers: defined once, in the wire protocol, so the agent and the
/// server hash identically.
pub use tollgate_schema::wire::Canonical;

/// An entry just written: its row id (for lot movements) and receipt.
#[derive(Debug, Clone)]
pub struct Appended {
    pub row_id: i64,
    pub receipt: EntryReceipt,
}

impl Session<'_> {
    /// Appends an entry for `user`, moving the user's cached balance. The caller has checked the
    /// amount is affordable; a balance that would go negative is a bug and is refused.
    pub fn append(
        &mut self,
        user: &mut UserRow,
        draft: EntryDraft,
    ) -> Result<Appended, LedgerError> {
        let entry_type = draft.entry_type.ok_or_else(|| {
            LedgerError::Corrupt("an entry without a transaction type".to_owned())
        })?;
        let balance_before = user.balance;
        let balance_after = balance_before
            .checked_add(draft.amount)
            .filter(|b| !b.is_negative())
            .ok_or(LedgerError::InvalidAmount {
                amount: draft.amount,
                why: "it would take the balance below zero or out of range",
            })?;
        let seq = self.head.seq + 1;
        let entry_id = uuid::Uuid::now_v7().to_string();
        let total_tokens = match (draft.prompt_tokens, draft.completion_tokens) {
            (None, None) => None,
            (p, c) => Some(i64::from(p.unwrap_or(0)) + i64::from(c.unwrap_or(0))),
        };
        let canonical = Canonical {
            seq,
            entry_id: &entry_id,
            user_id: &user.user_id,
            transaction_type: entry_type.as_str(),
            amount: draft.amount,
            balance_before,
            balance_after,
            provider: draft.provider.as_deref(),
            model: draft.model.as_deref(),
            prompt_tokens: draft.prompt_tokens,
            completion_tokens: draft.completion_tokens,
            cost_per_token: draft.cost_per_token.as_deref(),
            power_level: draft.power_level.map(PowerLevel::as_str),
            is_byok: draft.is_byok,
            payment_method: draft.payment_method,
            request_id: draft.request_id.as_deref(),
            package_id: draft.package_id,
            metadata: draft.metadata.as_deref(),
            notes: draft.notes.as_deref(),
            admin_user_id: draft.admin_user_id.as_deref(),
            idempotency_key: draft.idempotency_key.as_deref(),
            corrects_entry_id: draft.corrects_entry_id.as_deref(),
            created_at: &self.now_text,
            total_tokens,
            stripe_payment_intent_id: None,
            stripe_charge_id: None,
            invoice_id: None,
        };
        let hash = canonical.hash(&self.head.hash);
        self.conn
            .prepare_cached(sql::INSERT_ENTRY)?
            .execute(params![
                entry_id,
                seq,
                user.user_id,
                entry_type.as_str(),
                draft.amount.nanos(),
                balance_before.nanos(),
                balance_after.nanos(),
                draft.provider,
                draft.model,
                draft.prompt_tokens,
                draft.completion_tokens,
                total_tokens,
                draft.cost_per_token,
                draft.power_level.map(PowerLevel::as_str),
                draft.is_byok,
                draft.payment_method,
                draft.request_id,
                draft.package_id,
                draft.metadata,
                draft.notes,
                draft.admin_user_id,
                draft.idempotency_key,
                draft.corrects_entry_id,
                self.head.hash.as_slice(),
                hash.as_slice(),
                self.now_text,
            ])?;
        let row_id = self.conn.last_insert_rowid();
        self.head = ChainHead { seq, hash };
        user.balance = balance_after;
        user.dirty = true;
        Ok(Appended {
            row_id,
            receipt: EntryReceipt {
                entry_id,
                seq,
                user_id: user.user_id.clone(),
                amount: draft.amount,
                balance_after,
            },
        })
    }
}

/// The columns [`chained_entry_from_row`] reads: every column an entry's hash covers, then its
/// chain.
pub const CHAINED_ENTRY_COLUMNS: &str = "seq, entry_id, user_id, transaction_type, amount, \
     balance_before, balance_after, provider, model, prompt_tokens, completion_tokens, \
     cost_per_token, power_level, is_byok, payment_method, request_id, package_id, metadata, \
     notes, admin_user_id, idempotency_key, corrects_entry_id, created_at, total_tokens, \
     stripe_payment_intent_id, stripe_charge_id, invoice_id, prev_hash, hash";

/// A stored entry exactly as it was hashed, with its stored chain: `entry` is rebuilt from the
/// columns through [`Canonical`], so its `hash` matches its content iff the row does.
#[derive(Debug, Clone)]
pub struct ChainedEntry {
    pub entry: tollgate_schema::wire::WireEntry,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

/// Reads a journal row selected with [`CHAINED_ENTRY_COLUMNS`].
pub fn chained_entry_from_row(r: &rusqlite::Row<'_>) -> Result<ChainedEntry, LedgerError> {
    let text = |i: usize| r.get::<_, Option<String>>(i);
    let (entry_id, user_id, kind, created_at): (String, String, String, String) =
        (r.get(1)?, r.get(2)?, r.get(3)?, r.get(22)?);
    let (provider, model, cost, level, method) =
        (text(7)?, text(8)?, text(11)?, text(12)?, text(14)?);
    let (request, metadata, notes, admin, key, corrects) = (
        text(15)?,
        text(17)?,
        text(18)?,
        text(19)?,
        text(20)?,
        text(21)?,
    );
    let (stripe_intent, stripe_charge, invoice) = (text(24)?, text(25)?, text(26)?);
    let prev_hash = to_hash(&r.get::<_, Vec<u8>>(27)?)?;
    let hash = to_hash(&r.get::<_, Vec<u8>>(28)?)?;
    let canonical = Canonical {
        seq: r.get(0)?,
        entry_id: &entry_id,
        user_id: &user_id,
        transaction_type: &kind,
        amount: Credits::from_nanos(r.get(4)?),
        balance_before: Credits::from_nanos(r.get(5)?),
        balance_after: Credits::from_nanos(r.get(6)?),
        provider: provider.as_deref(),
        model: model.as_deref(),
        prompt_tokens: r.get(9)?,
        completion_tokens: r.get(10)?,
        cost_per_token: cost.as_deref(),
        power_level: level.as_deref(),
        is_byok: r.get(13)?,
        payment_method: method.as_deref(),
        request_id: request.as_deref(),
        package_id: r.get(16)?,
        metadata: metadata.as_deref(),
        notes: notes.as_deref(),
        admin_user_id: admin.as_deref(),
        idempotency_key: key.as_deref(),
        corrects_entry_id: corrects.as_deref(),
        created_at: &created_at,
        total_tokens: r.get(23)?,
        stripe_payment_intent_id: stripe_intent.as_deref(),
        stripe_charge_id: stripe_charge.as_deref(),
        invoice_id: invoice.as_deref(),
    };
    Ok(ChainedEntry {
        entry: canonical.to_wire(&prev_hash, &hash),
        prev_hash,
        hash,
    })
}

/// Maps a journal row selected with [`sql::ENTRY_COLUMNS`].
pub fn entry_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<JournalEntry> {
    let kind: String = row.get(3)?;
    Ok(JournalEntry {
        seq: row.get(0)?,
        entry_id: row.get(1)?,
        user_id: row.get(2)?,
        transaction_type: kind.parse().map_err(|e: String| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into())
        })?,
        amount: Credits::from_nanos(row.get(4)?),
        balance_before: Credits::from_nanos(row.get(5)?),
        balance_after: Credits::from_nanos(row.get(6)?),
        request_id: row.get(7)?,
        idempotency_key: row.get(8)?,
        package_id: row.get(9)?,
        corrects_entry_id: row.get(10)?,
        notes: row.get(11)?,
        created_at: row.get(12)?,
    })
}

/// A user's entries, newest first, at most `limit`.
pub fn history(
    conn: &Connection,
    user_id: &str,
    limit: u32,
) -> Result<Vec<JournalEntry>, LedgerError> {
    let sql = format!(
        "SELECT {} FROM credit_transactions WHERE user_id = ?1 ORDER BY id DESC LIMIT ?2",
        sql::ENTRY_COLUMNS
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![user_id, limit], entry_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Looks up one entry by its id.
pub fn entry(conn: &Connection, entry_id: &str) -> Result<Option<JournalEntry>, LedgerError> {
    let sql = format!(
        "SELECT {} FROM credit_transactions WHERE entry_id = ?1",
        sql::ENTRY_COLUMNS
    );
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([entry_id], entry_from_row)
        .optional()?)
}
