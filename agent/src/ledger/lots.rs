//! Credit lots: creating one per credit-adding entry, and moving lots (burn, restore) with a
//! `lot_movements` row per lot per entry.
//!
//! Guarantees: for every entry, the sum of its movements equals its amount; a lot's `remaining`
//! equals the sum of its movements; the user's cached lots follow every move.

use rusqlite::params;
use tollgate_schema::money::Credits;

use super::LedgerError;
use super::journal::Appended;
use super::rules::LiveLot;
use super::session::{Session, UserRow};
use super::sql;
use super::types::{CreditKind, parse_stored_time};

impl Session<'_> {
    /// Creates the lot an `entry` adds, with its opening movement.
    pub fn create_lot(
        &mut self,
        user: &mut UserRow,
        entry: &Appended,
        kind: CreditKind,
        amount: Credits,
        expires_at: Option<String>,
    ) -> Result<i64, LedgerError> {
        let expires = expires_at.as_deref().map(parse_stored_time).transpose()?;
        self.conn.prepare_cached(sql::INSERT_LOT)?.execute(params![
            user.user_id,
            entry.receipt.entry_id,
            kind.as_str(),
            amount.nanos(),
            kind.priority(),
            expires_at,
            self.now_text,
        ])?;
        let lot_id = self.conn.last_insert_rowid();
        self.conn
            .prepare_cached(sql::INSERT_MOVEMENT)?
            .execute(params![entry.row_id, lot_id, amount.nanos()])?;
        user.lots.push(LiveLot {
            id: lot_id,
            remaining: amount,
            priority: kind.priority(),
            expires_at: expires,
        });
        Ok(lot_id)
    }

    /// Applies signed movements (negative burns, positive restores) of entry `entry_row_id`.
    pub fn move_lots(
        &mut self,
        user: &mut UserRow,
        entry_row_id: i64,
        moves: &[(i64, Credits)],
    ) -> Result<(), LedgerError> {
        for &(lot_id, amount) in moves {
            self.conn
                .prepare_cached(sql::MOVE_LOT)?
                .execute(params![lot_id, amount.nanos()])?;
            self.conn
                .prepare_cached(sql::INSERT_MOVEMENT)?
                .execute(params![entry_row_id, lot_id, amount.nanos()])?;
            if let Some(lot) = user.lots.iter_mut().find(|l| l.id == lot_id) {
                lot.remaining = lot.remaining.checked_add(amount).unwrap_or(Credits::ZERO);
            }
        }
        user.lots.retain(|l| l.remaining.is_positive());
        Ok(())
    }
}

/// Negates every amount of a burn plan, giving the movements that burn it.
pub fn as_burns(plan: Vec<(i64, Credits)>) -> Vec<(i64, Credits)> {
    plan.into_iter()
        .map(|(lot, amount)| (lot, super::credits::negate(amount)))
        .collect()
}
