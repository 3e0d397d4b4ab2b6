//! A write session: one SQLite transaction in which a batch of operations runs, each inside its
//! own savepoint, at one instant of the ledger's clock.
//!
//! Guarantees:
//! - Every operation that touches a user first brings the user up to date ([`Session::touch`]):
//!   expired holds released, expired lots expired (never below what open holds need), and a
//!   billing cycle that has ended renewed with its allowance. This is the only place renewal and
//!   expiry happen, so they need no cron and follow the clock tests control.
//! - A user's cached row ([`UserRow`]) is written back once per operation, after its entries.

use rusqlite::{Connection, OptionalExtension, params};
use time::OffsetDateTime;
use tollgate_schema::money::Credits;

use super::LedgerError;
use super::clock::to_text;
use super::journal::{ChainHead, EntryDraft};
use super::rules::{self, Account, LiveLot};
use super::sql;
use super::types::{CreditKind, EntryType, HoldStatus, parse_stored_time};

/// The state a batch carries from one operation to the next.
#[derive(Debug)]
pub struct Session<'c> {
    pub conn: &'c Connection,
    pub now: OffsetDateTime,
    pub now_text: String,
    /// Where the next journal entry chains on; restored when an operation rolls back.
    pub head: ChainHead,
}

/// A user's row as loaded for an operation, with their live lots.
#[derive(Debug, Clone)]
pub struct UserRow {
    pub id: i64,
    pub user_id: String,
    pub balance: Credits,
    pub held: Credits,
    pub used_this_month: Credits,
    pub spend_cap: Option<Credits>,
    pub monthly_allowance: Credits,
    pub auto_renew: bool,
    pub cycle_start: String,
    pub cycle_end: String,
    pub lifetime_purchased: Credits,
    pub created_at: String,
    /// A fleet user: their credit here is grants from the server's pool (`escrow`).
    pub fleet: bool,
    /// When the newest grant stops admitting new holds, on this agent's clock.
    pub escrow_valid_until: Option<OffsetDateTime>,
    pub lots: Vec<LiveLot>,
    /// Holds (row ids) this operation's touch found expired and closed.
    pub expired_holds: Vec<i64>,
    /// Whether the row must be written back.
    pub dirty: bool,
}

impl UserRow {
    pub fn account(&self) -> Account {
        Account {
            balance: self.balance,
            held: self.held,
            used_this_month: self.used_this_month,
            spend_cap: self.spend_cap,
        }
    }
}

impl<'c> Session<'c> {
    pub fn begin(conn: &'c Connection, now: OffsetDateTime) -> Result<Self, LedgerError> {
        Ok(Session {
            conn,
            now,
            now_text: to_text(now),
            head: ChainHead::load(conn)?,
        })
    }

    /// Loads `user_id` and brings them up to date; see the module doc.
    pub fn touch(&mut self, user_id: &str) -> Result<UserRow, LedgerError> {
        let mut user = self.load_user(user_id)?;
        self.release_expired_holds(&mut user)?;
        self.expire_lots(&mut user)?;
        let cycle_end = parse_stored_time(&user.cycle_end)?;
        if self.now >= cycle_end {
            self.renew(&mut user)?;
        }
        Ok(user)
    }

    fn load_user(&self, user_id: &str) -> Result<UserRow, LedgerError> {
        let user = self
            .conn
            .prepare_cached(sql::SELECT_USER)?
            .query_row([user_id], |r| {
                let row = UserRow {
                    id: r.get(0)?,
                    user_id: r.get(1)?,
                    balance: Credits::from_nanos(r.get(2)?),
                    held: Credits::from_nanos(r.get(3)?),
                    used_this_month: Credits::from_nanos(r.get(4)?),
                    spend_cap: r.get::<_, Option<i64>>(5)?.map(Credits::from_nanos),
                    monthly_allowance: Credits::from_nanos(r.get(6)?),
                    auto_renew: r.get(7)?,
                    cycle_start: r.get(8)?,
                    cycle_end: r.get(9)?,
                    lifetime_purchased: Credits::from_nanos(r.get(10)?),
                    created_at: r.get(11)?,
                    fleet: r.get(12)?,
                    escrow_valid_until: None,
                    lots: Vec::new(),
                    expired_holds: Vec::new(),
                    dirty: false,
                };
                Ok((row, r.get::<_, Option<String>>(13)?))
            })
            .optional()?
            .ok_or_else(|| LedgerError::UnknownUser(user_id.to_owned()))?;
        let (mut user, valid_until) = user;
        user.escrow_valid_until = valid_until.as_deref().map(parse_stored_time).transpose()?;
        self.reload_lots(&mut user)?;
        Ok(user)
    }

    /// Reads the user's live lots again (after a refund restored lots that were empty).
    pub fn reload_lots(&self, user: &mut UserRow) -> Result<(), LedgerError> {
        user.lots.clear();
        let mut stmt = self.conn.prepare_cached(sql::LIVE_LOTS)?;
        let lots = stmt.query_map([&user.user_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })?;
        for lot in lots {
            let (id, remaining, priority, expires_at) = lot?;
            let expires_at = expires_at.as_deref().map(parse_stored_time).transpose()?;
            user.lots.push(LiveLot {
                id,
                remaining: Credits::from_nanos(remaining),
                priority,
                expires_at,
            });
        }
        Ok(())
    }

    fn release_expired_holds(&mut self, user: &mut UserRow) -> Result<(), LedgerError> {
        let mut stmt = self.conn.prepare_cached(sql::EXPIRED_HOLDS)?;
        let expired: Vec<(i64, i64)> = stmt
            .query_map(params![user.user_id, self.now_text], |r| {
                Ok((r.get(0)?, r.get(2)?))
            })?
            .collect::<Result<_, _>>()?;
        for (hold_row_id, amount) in expired {
            self.close_hold(
                user,
                hold_row_id,
                Credits::from_nanos(amount),
                HoldStatus::Expired,
            )?;
            user.expired_holds.push(hold_row_id);
        }
        Ok(())
    }

    /// Closes an open hold (released or expired): it stops counting in `held`, and its row stays
    /// to answer a late settle or release of the same request.
    pub fn close_hold(
        &mut self,
        user: &mut UserRow,
        hold_row_id: i64,
        amount: Credits,
        status: HoldStatus,
    ) -> Result<(), LedgerError> {
        self.conn.prepare_cached(sql::CLOSE_HOLD)?.execute(params![
            hold_row_id,
            status.as_str(),
            self.now_text
        ])?;
        user.held = user.held.checked_sub(amount).unwrap_or(Credits::ZERO);
        user.dirty = true;
        Ok(())
    }

    fn expire_lots(&mut self, user: &mut UserRow) -> Result<(), LedgerError> {
        for (lot_id, amount) in rules::expiry_plan(&user.lots, &user.account(), self.now) {
            let burned = amount.checked_neg().unwrap_or(Credits::ZERO);
            let entry = self.append(
                user,
                EntryDraft {
                    entry_type: Some(EntryType::Expiry),
                    amount: burned,
                    metadata: Some(format!("{{\"lot_id\":{lot_id}}}")),
                    ..EntryDraft::default()
                },
            )?;
            self.move_lots(user, entry.row_id, &[(lot_id, burned)])?;
        }
        Ok(())
    }

    /// Rolls the billing cycle forward to the one containing now: the month's spend restarts and,
    /// with auto-renewal, the allowance is granted as a lot expiring at the new cycle's end.
    /// Cycles skipped while the user was idle grant nothing: their allowance would have expired.
    fn renew(&mut self, user: &mut UserRow) -> Result<(), LedgerError> {
        let anchor = parse_stored_time(&user.created_at)?;
        let (start, end) = rules::cycle_containing(anchor, self.now);
        user.cycle_start = to_text(start);
        user.cycle_end = to_text(end);
        user.used_this_month = Credits::ZERO;
        user.dirty = true;
        // A fleet user's allowance is the server's to grant (into their pool), never an agent's.
        if user.auto_renew && user.monthly_allowance.is_positive() && !user.fleet {
            self.grant_allowance(user)?;
        }
        Ok(())
    }

    /// Grants the user's monthly allowance for the current cycle.
    pub fn grant_allowance(&mut self, user: &mut UserRow) -> Result<(), LedgerError> {
        let amount = user.monthly_allowance;
        let expires_at = user.cycle_end.clone();
        let entry = self.append(
            user,
            EntryDraft {
                entry_type: Some(EntryType::Allowance),
                amount,
                payment_method: None,
                notes: Some(format!(
                    "monthly allowance for the cycle ending {expires_at}"
                )),
                ..EntryDraft::default()
            },
        )?;
        self.create_lot(
            user,
            &entry,
            CreditKind::Allowance,
            amount,
            Some(expires_at),
        )?;
        Ok(())
    }

    /// Writes the user's cached row back if an operation changed it.
    pub fn save_user(&self, user: &mut UserRow) -> Result<(), LedgerError> {
        if !user.dirty {
            return Ok(());
        }
        self.conn.prepare_cached(sql::SAVE_USER)?.execute(params![
            user.id,
            user.balance.nanos(),
            user.held.nanos(),
            user.used_this_month.nanos(),
            user.cycle_start,
            user.cycle_end,
            user.lifetime_purchased.nanos(),
            self.now_text,
        ])?;
        user.dirty = false;
        Ok(())
    }
}
