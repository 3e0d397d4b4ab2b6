//! The ledger's side of pushing (SYNC.md): the entries past the acknowledged head as they were
//! hashed, the acknowledged head itself, the agent's enrolment, and the sync client's bookkeeping
//! (`sync_state`, shown by `tollgate sync status`).
//!
//! Guarantees:
//! - An exported entry is rebuilt from its stored columns through the one canonical form both
//!   sides hash ([`Canonical`](super::journal::Canonical)), with its stored `prev_hash` and
//!   `hash`: it passes `WireEntry::check` iff the row is intact, and consecutive entries chain.
//! - The acknowledged head only moves forward, and never past the newest local entry: a server
//!   claiming more than this database holds is an error to surface, not a value to trust.
//! - A new enrolment (another agent id) starts a new stream and a new inbox: the acknowledged
//!   head and the inbox cursor go back to 0 in the same transaction that records the id.
//! - Each read here is one SQL statement, so what it returns is one consistent snapshot.

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use tollgate_schema::wire::{PUSH_ENTRIES_MAX, WireEntry};

use super::clock::to_text;
use super::error::one_line;
use super::journal::{CHAINED_ENTRY_COLUMNS, chained_entry_from_row};
use super::{Ledger, LedgerError};

/// Longest error text kept in `sync_state.last_error` (bytes; longer text is cut).
pub const SYNC_ERROR_LEN_MAX: usize = 2_000;
/// Longest agent id accepted from a server.
pub const AGENT_ID_LEN_MAX: usize = 128;

/// Where this database stands in the sync protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncIdentity {
    /// This database's incarnation (UUID): its stream of entries.
    pub incarnation: String,
    /// The server's id for this agent; `None` until enrolment.
    pub agent_id: Option<String>,
    /// The newest local entry's seq (0: none yet).
    pub head_seq: i64,
    /// Every entry at or below this seq is stored centrally.
    pub acked_seq: i64,
    /// The last inbox event applied.
    pub inbox_cursor: i64,
}

/// Everything `tollgate sync status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncStatus {
    pub agent_id: Option<String>,
    pub incarnation: String,
    pub head_seq: i64,
    pub acked_seq: i64,
    /// Entries not yet acknowledged: `head_seq - acked_seq`.
    pub unacked_entries: i64,
    /// When the oldest entry not yet acknowledged was written.
    pub oldest_unacked_at: Option<String>,
    pub inbox_cursor: i64,
    /// The server's inbox head as of the last pull.
    pub server_inbox_head: i64,
    pub last_push_at: Option<String>,
    pub last_pull_at: Option<String>,
    /// When the acknowledged head last moved forward.
    pub server_acked_at: Option<String>,
    /// The most recent failure (kept after recovery; compare its time with the last push/pull).
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
}

/// What a sync exchange ended with, for [`Ledger::record_sync_result`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncResult<'a> {
    /// The server answered a push (entries or a heartbeat) with this acknowledged head, which is
    /// recorded as by [`Ledger::mark_acked`].
    Pushed { acked_seq: i64 },
    /// The server answered a pull; its inbox head was this.
    Pulled { server_inbox_head: i64 },
    /// An exchange failed; the text is kept as one line, cut at [`SYNC_ERROR_LEN_MAX`].
    Failed { error: &'a str },
}

impl Ledger {
    /// The identity, heads and cursor, read together.
    pub fn sync_identity(&self) -> Result<SyncIdentity, LedgerError> {
        Ok(self.conn.prepare_cached(
            "SELECT incarnation, agent_id, acked_seq, inbox_cursor, \
             (SELECT COALESCE(MAX(seq), 0) FROM credit_transactions) FROM agent_identity WHERE id = 1",
        )?
        .query_row([], |r| {
            Ok(SyncIdentity {
                incarnation: r.get(0)?,
                agent_id: r.get(1)?,
                acked_seq: r.get(2)?,
                inbox_cursor: r.get(3)?,
                head_seq: r.get(4)?,
            })
        })?)
    }

    /// The entries not yet acknowledged, oldest first, at most `limit` (itself at most
    /// [`PUSH_ENTRIES_MAX`]), exactly as hashed.
    pub fn unacked_entries(&self, limit: usize) -> Result<Vec<WireEntry>, LedgerError> {
        self.select_entries(
            "seq > (SELECT acked_seq FROM agent_identity WHERE id = 1)",
            None,
            limit,
        )
    }

    /// The entries after `after_seq`, oldest first, at most `limit` (itself at most
    /// [`PUSH_ENTRIES_MAX`]), exactly as hashed. For resending what a server says it lacks
    /// although this agent recorded it as acknowledged (a server restored from a backup).
    pub fn entries_after(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<WireEntry>, LedgerError> {
        self.select_entries("seq > ?2", Some(after_seq), limit)
    }

    fn select_entries(
        &self,
        condition: &str,
        after_seq: Option<i64>,
        limit: usize,
    ) -> Result<Vec<WireEntry>, LedgerError> {
        let limit = i64::try_from(limit.min(PUSH_ENTRIES_MAX)).unwrap_or(0);
        let sql = format!(
            "SELECT {CHAINED_ENTRY_COLUMNS} FROM credit_transactions WHERE {condition} \
             ORDER BY seq LIMIT ?1"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut rows = match after_seq {
            Some(after) => stmt.query(params![limit, after])?,
            None => stmt.query(params![limit])?,
        };
        let mut entries = Vec::new();
        while let Some(row) = rows.next()? {
            entries.push(chained_entry_from_row(row)?.entry);
        }
        Ok(entries)
    }

    /// Records that the server holds every entry up to `acked_seq`. Never moves the head back (a
    /// lower value changes nothing); refuses a value past the newest local entry. Returns the
    /// acknowledged head now in force.
    pub fn mark_acked(&mut self, acked_seq: i64) -> Result<i64, LedgerError> {
        self.sync_write(|tx, now| ack(tx, acked_seq, now))
    }

    /// Records the server's id for this agent. Another id than the one recorded is a new
    /// enrolment: a new stream and a new inbox on the server, so the acknowledged head, the inbox
    /// cursor and the server-side bookkeeping start again from 0. Returns whether it changed.
    pub fn set_agent_id(&mut self, agent_id: &str) -> Result<bool, LedgerError> {
        validate_agent_id(agent_id)?;
        self.sync_write(|tx, _| {
            let current: Option<String> = tx.query_row(
                "SELECT agent_id FROM agent_identity WHERE id = 1",
                [],
                |r| r.get(0),
            )?;
            if current.as_deref() == Some(agent_id) {
                return Ok(false);
            }
            tx.execute(
                "UPDATE agent_identity SET agent_id = ?1, acked_seq = 0, inbox_cursor = 0 \
                 WHERE id = 1",
                [agent_id],
            )?;
            tx.execute(
                "UPDATE sync_state SET server_inbox_head = 0, server_acked_at = NULL, \
                 last_push_at = NULL, last_pull_at = NULL WHERE id = 1",
                [],
            )?;
            Ok(true)
        })
    }

    /// Records how a sync exchange ended (see [`SyncResult`]).
    pub fn record_sync_result(&mut self, result: SyncResult<'_>) -> Result<(), LedgerError> {
        self.sync_write(|tx, now| {
            match result {
                SyncResult::Pushed { acked_seq } => {
                    ack(tx, acked_seq, now)?;
                    tx.execute("UPDATE sync_state SET last_push_at = ?1 WHERE id = 1", [now])?;
                }
                SyncResult::Pulled { server_inbox_head } => {
                    tx.execute(
                        "UPDATE sync_state SET last_pull_at = ?1, server_inbox_head = ?2 WHERE id = 1",
                        params![now, server_inbox_head.max(0)],
                    )?;
                }
                SyncResult::Failed { error } => {
                    tx.execute(
                        "UPDATE sync_state SET last_error = ?1, last_error_at = ?2 WHERE id = 1",
                        params![error_text(error), now],
                    )?;
                }
            }
            Ok(())
        })
    }

    /// Everything `tollgate sync status` shows, read together.
    pub fn sync_status(&self) -> Result<SyncStatus, LedgerError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT i.agent_id, i.incarnation, \
                   (SELECT COALESCE(MAX(seq), 0) FROM credit_transactions), i.acked_seq, \
                   (SELECT created_at FROM credit_transactions WHERE seq > i.acked_seq \
                      ORDER BY seq LIMIT 1), \
                   i.inbox_cursor, s.server_inbox_head, s.last_push_at, s.last_pull_at, \
                   s.server_acked_at, s.last_error, s.last_error_at \
                 FROM agent_identity i JOIN sync_state s ON s.id = 1 WHERE i.id = 1",
            )?
            .query_row([], |r| {
                let head_seq: i64 = r.get(2)?;
                let acked_seq: i64 = r.get(3)?;
                Ok(SyncStatus {
                    agent_id: r.get(0)?,
                    incarnation: r.get(1)?,
                    head_seq,
                    acked_seq,
                    unacked_entries: (head_seq - acked_seq).max(0),
                    oldest_unacked_at: r.get(4)?,
                    inbox_cursor: r.get(5)?,
                    server_inbox_head: r.get(6)?,
                    last_push_at: r.get(7)?,
                    last_pull_at: r.get(8)?,
                    server_acked_at: r.get(9)?,
                    last_error: r.get(10)?,
                    last_error_at: r.get(11)?,
                })
            })?)
    }

    /// Runs `f` in its own write transaction with the clock's time as stored text.
    fn sync_write<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction<'_>, &str) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = to_text(self.clock.now());
        let value = f(&tx, &now)?;
        tx.commit()?;
        Ok(value)
    }
}

/// Moves the acknowledged head forward to `acked_seq` (see [`Ledger::mark_acked`]).
fn ack(conn: &rusqlite::Connection, acked_seq: i64, now: &str) -> Result<i64, LedgerError> {
    if acked_seq < 0 {
        return Err(LedgerError::InvalidField {
            field: "acked_seq",
            why: format!("{acked_seq} is negative"),
        });
    }
    let (current, head): (i64, i64) = conn.query_row(
        "SELECT acked_seq, (SELECT COALESCE(MAX(seq), 0) FROM credit_transactions) \
         FROM agent_identity WHERE id = 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if acked_seq > head {
        return Err(LedgerError::AckBeyondHead {
            acked: acked_seq,
            head,
        });
    }
    if acked_seq <= current {
        return Ok(current);
    }
    conn.execute(
        "UPDATE agent_identity SET acked_seq = ?1 WHERE id = 1",
        [acked_seq],
    )?;
    conn.execute(
        "UPDATE sync_state SET server_acked_at = ?1 WHERE id = 1",
        [now],
    )?;
    Ok(acked_seq)
}

/// The enrolled agent id and the inbox cursor; an agent that is not enrolled has no inbox.
pub(crate) fn inbox_position(conn: &rusqlite::Connection) -> Result<(String, i64), LedgerError> {
    let (agent_id, cursor): (Option<String>, i64) = conn
        .query_row(
            "SELECT agent_id, inbox_cursor FROM agent_identity WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .ok_or_else(|| LedgerError::Corrupt("the agent_identity row is missing".to_owned()))?;
    Ok((agent_id.ok_or(LedgerError::NotEnrolled)?, cursor))
}

/// An agent id is 1–128 printable ASCII characters (the server's UUID, in practice).
pub fn validate_agent_id(agent_id: &str) -> Result<(), LedgerError> {
    let ok = !agent_id.is_empty()
        && agent_id.len() <= AGENT_ID_LEN_MAX
        && agent_id.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(LedgerError::InvalidField {
            field: "agent id",
            why: format!(
                "{agent_id:?} is not 1-{AGENT_ID_LEN_MAX} printable ASCII characters without spaces"
            ),
        })
    }
}

/// `text` on one line, cut (at a character boundary) to [`SYNC_ERROR_LEN_MAX`] bytes.
pub(crate) fn error_text(text: &str) -> String {
    let mut line = one_line(text);
    if line.len() > SYNC_ERROR_LEN_MAX {
        let mut end = SYNC_ERROR_LEN_MAX - '…'.len_utf8();
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push('…');
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_is_one_line_and_bounded() {
        assert_eq!(error_text("a\n  b\tc"), "a b c");
        let long = "é".repeat(SYNC_ERROR_LEN_MAX);
        let cut = error_text(&long);
        assert!(cut.len() <= SYNC_ERROR_LEN_MAX, "{}", cut.len());
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn agent_ids_are_printable_and_bounded() {
        assert!(validate_agent_id("0193a3c4-0000-7000-8000-000000000001").is_ok());
        for bad in ["", "has space", "tab\t", &"a".repeat(AGENT_ID_LEN_MAX + 1)] {
            assert!(validate_agent_id(bad).is_err(), "{bad:?}");
        }
    }
}
