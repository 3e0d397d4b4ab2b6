//! `tollgate verify`: recompute every balance from the journal and check every invariant of the
//! books, reporting each violation by name. Reads only; safe while the gateway runs (it reads one
//! consistent snapshot).

use rusqlite::Connection;
use serde::Serialize;
use tollgate_schema::money::Credits;

use super::journal::{CHAINED_ENTRY_COLUMNS, GENESIS_HASH, chained_entry_from_row};
use super::{Ledger, LedgerError};

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// A stable name for the invariant (`balance_matches_journal`, `hash_chain`, ...).
    pub invariant: &'static str,
    pub detail: String,
}

/// What verification looked at and what it found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub users: u64,
    pub entries: u64,
    pub lots: u64,
    pub open_holds: u64,
    pub violations: Vec<Violation>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    fn flag(&mut self, invariant: &'static str, detail: String) {
        self.violations.push(Violation { invariant, detail });
    }
}

impl Ledger {
    /// Checks every invariant in one read transaction.
    pub fn verify(&mut self) -> Result<Report, LedgerError> {
        let tx = self.conn.transaction()?;
        let report = verify_books(&tx)?;
        tx.commit()?;
        Ok(report)
    }
}

/// Each query returns rows of (subject, found, expected) that break one invariant.
const MISMATCH_CHECKS: &[(&str, &str)] = &[
    (
        "balance_matches_journal",
        "SELECT u.user_id, u.balance, COALESCE(SUM(t.amount), 0) FROM user_credits u \
         LEFT JOIN credit_transactions t ON t.user_id = u.user_id GROUP BY u.id \
         HAVING u.balance <> COALESCE(SUM(t.amount), 0)",
    ),
    (
        "balance_matches_lots",
        "SELECT u.user_id, u.balance, (SELECT COALESCE(SUM(l.remaining), 0) FROM credit_lots l \
         WHERE l.user_id = u.user_id) AS lots FROM user_credits u WHERE u.balance <> lots",
    ),
    (
        "held_matches_open_holds",
        "SELECT u.user_id, u.held, (SELECT COALESCE(SUM(h.amount), 0) FROM holds h \
         WHERE h.user_id = u.user_id AND h.status = 'open') AS holds FROM user_credits u \
         WHERE u.held <> holds",
    ),
    (
        "holds_within_balance",
        "SELECT user_id, held, balance FROM user_credits WHERE held > balance OR held < 0",
    ),
    (
        "no_negative_balance",
        "SELECT user_id, balance, 0 FROM user_credits WHERE balance < 0",
    ),
    (
        "lot_matches_movements",
        "SELECT 'lot ' || l.id, l.remaining, COALESCE(SUM(m.amount), 0) FROM credit_lots l \
         LEFT JOIN lot_movements m ON m.lot_id = l.id GROUP BY l.id \
         HAVING l.remaining <> COALESCE(SUM(m.amount), 0) OR l.remaining < 0 OR l.remaining > l.amount",
    ),
    (
        "entry_matches_movements",
        "SELECT 'entry ' || t.entry_id, t.amount, COALESCE(SUM(m.amount), 0) FROM credit_transactions t \
         LEFT JOIN lot_movements m ON m.entry_id = t.id GROUP BY t.id \
         HAVING t.amount <> COALESCE(SUM(m.amount), 0)",
    ),
    (
        "usage_row_matches_entry",
        "SELECT 'request ' || g.request_id, g.credits_charged, COALESCE(-t.amount, 0) FROM llm_usage_log g \
         LEFT JOIN credit_transactions t ON t.request_id = g.request_id AND t.transaction_type = 'usage' \
         WHERE g.credits_charged <> COALESCE(-t.amount, 0)",
    ),
    (
        "hold_for_known_user",
        "SELECT 'hold ' || h.hold_id, h.amount, 0 FROM holds h \
         LEFT JOIN user_credits u ON u.user_id = h.user_id WHERE u.id IS NULL",
    ),
];

fn verify_books(conn: &Connection) -> Result<Report, LedgerError> {
    let mut report = Report {
        users: count(conn, "SELECT COUNT(*) FROM user_credits")?,
        entries: count(conn, "SELECT COUNT(*) FROM credit_transactions")?,
        lots: count(conn, "SELECT COUNT(*) FROM credit_lots")?,
        open_holds: count(conn, "SELECT COUNT(*) FROM holds WHERE status = 'open'")?,
        violations: Vec::new(),
    };
    for (invariant, sql) in MISMATCH_CHECKS {
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (subject, found, expected) = row?;
            report.flag(
                invariant,
                format!(
                    "{subject}: found {}, expected {}",
                    Credits::from_nanos(found),
                    Credits::from_nanos(expected)
                ),
            );
        }
    }
    check_user_chains(conn, &mut report)?;
    check_sequence_and_hashes(conn, &mut report)?;
    check_idempotency_records(conn, &mut report)?;
    Ok(report)
}

fn count(conn: &Connection, sql: &str) -> Result<u64, LedgerError> {
    let n: i64 = conn.query_row(sql, [], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Each user's entries chain: balance_before = the previous balance_after (0 first), and
/// balance_after = balance_before + amount.
fn check_user_chains(conn: &Connection, report: &mut Report) -> Result<(), LedgerError> {
    let mut stmt = conn.prepare(
        "SELECT user_id, entry_id, amount, balance_before, balance_after FROM credit_transactions \
         ORDER BY user_id, id",
    )?;
    let mut rows = stmt.query([])?;
    let mut current: Option<(String, i64)> = None;
    while let Some(r) = rows.next()? {
        let user: String = r.get(0)?;
        let entry: String = r.get(1)?;
        let (amount, before, after): (i64, i64, i64) = (r.get(2)?, r.get(3)?, r.get(4)?);
        let expected_before = match &current {
            Some((u, last_after)) if *u == user => *last_after,
            _ => 0,
        };
        if before != expected_before {
            report.flag(
                "user_balance_chain",
                format!(
                    "entry {entry} of {user}: balance_before {}, previous balance_after {}",
                    Credits::from_nanos(before),
                    Credits::from_nanos(expected_before)
                ),
            );
        }
        if before.checked_add(amount) != Some(after) {
            report.flag(
                "entry_arithmetic",
                format!("entry {entry}: {before} + {amount} ≠ {after} (nano-credits)"),
            );
        }
        current = Some((user, after));
    }
    Ok(())
}

/// seq runs 1, 2, 3, … without a gap, and each hash covers its entry and the previous hash.
fn check_sequence_and_hashes(conn: &Connection, report: &mut Report) -> Result<(), LedgerError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {CHAINED_ENTRY_COLUMNS} FROM credit_transactions ORDER BY seq"
    ))?;
    let mut rows = stmt.query([])?;
    let mut expected_seq = 1i64;
    let mut prev_hash = GENESIS_HASH;
    while let Some(r) = rows.next()? {
        let stored = chained_entry_from_row(r)?;
        let (seq, entry_id) = (stored.entry.seq, &stored.entry.entry_id);
        if seq != expected_seq {
            report.flag(
                "gapless_seq",
                format!("entry {entry_id} has seq {seq}, expected {expected_seq}"),
            );
        }
        expected_seq = seq + 1;
        if stored.prev_hash != prev_hash {
            report.flag(
                "hash_chain",
                format!("entry {entry_id} (seq {seq}) does not chain on the previous entry"),
            );
        }
        if stored.entry.canonical().hash(&stored.prev_hash) != stored.hash {
            report.flag(
                "entry_hash",
                format!("entry {entry_id} (seq {seq}) does not match its hash"),
            );
        }
        prev_hash = stored.hash;
    }
    Ok(())
}

/// Every recorded success names an entry that exists with the same key.
fn check_idempotency_records(conn: &Connection, report: &mut Report) -> Result<(), LedgerError> {
    let mut stmt = conn.prepare(
        "SELECT k.idempotency_key FROM idempotency_keys k \
         LEFT JOIN credit_transactions t ON t.entry_id = json_extract(k.outcome, '$.ok.entry_id') \
         WHERE json_extract(k.outcome, '$.ok') IS NOT NULL \
           AND (t.id IS NULL OR t.idempotency_key IS NOT k.idempotency_key)",
    )?;
    let keys = stmt.query_map([], |r| r.get::<_, String>(0))?;
    for key in keys {
        report.flag(
            "idempotent_outcome",
            format!("key {:?} records an entry the journal does not hold", key?),
        );
    }
    Ok(())
}
