//! Escrow for fleet users on this agent (SYNC.md "Escrow"): grants booked, their validity kept,
//! what is left returned, and what the escrow task needs to decide when to ask for more.
//!
//! Guarantees:
//! - A grant is booked once: an `escrow` entry of its amount carrying its key (the journal's
//!   unique idempotency index), and a lot of kind `escrow` without expiry. Booking it again (the
//!   answer and the inbox event both bring it) changes nothing.
//! - A grant's validity runs on this agent's clock from when it was booked: the user's
//!   `escrow_valid_until` only ever moves forward, and a hold for a fleet user is admitted only
//!   before it ([`Session::fleet_grant_valid`]). It moves no money.
//! - A release returns exactly what is available (balance − open holds), as one negative
//!   `escrow` entry keyed `release:<uuid>`, burning lots like a debit; open holds stay covered.
//!   Only the escrow task releases; the server never takes a grant back.
//! - Credit for a fleet user arrives only as a grant: [`refuse_local_credit`] is checked by every
//!   local add — or as the overdraft line of the newest grant booked here
//!   ([`Session::draw_overdraft`]), drawn at most once (the line is cleared in the same
//!   transaction), only by the escrow task when the server cannot be reached, and valid for
//!   [`OVERDRAFT_VALIDITY_MS`]. The server books it as the user's debt.

use rusqlite::{OptionalExtension, params};
use time::OffsetDateTime;
use tollgate_schema::money::Credits;
use tollgate_schema::wire::{
    GRANT_KEY_PREFIX, GrantSpec, OVERDRAFT_KEY_PREFIX, RELEASE_KEY_PREFIX,
};

use super::clock::to_text;
use super::credits::negate;
use super::journal::EntryDraft;
use super::lots::as_burns;
use super::session::{Session, UserRow};
use super::{CreditKind, EntryReceipt, EntryType, Ledger, LedgerError, NewUser, rules};

/// Most fleet users the escrow task looks after on one agent.
pub const FLEET_USERS_MAX: i64 = 100_000;
/// Most of a user's newest entries read to measure their recent spend.
pub const RATE_ENTRIES_MAX: i64 = 10_000;
/// Longest validity a grant may carry (a server asking for more is refused): a day.
pub const GRANT_VALIDITY_MAX_MS: u64 = 24 * 60 * 60 * 1000;

/// How long an overdraft line, once drawn, admits new holds (on this agent's clock): long enough
/// to ride out a partition, bounded like a grant.
pub const OVERDRAFT_VALIDITY_MS: u64 = 10 * 60 * 1000;

/// What the escrow task sees of one fleet user here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetPosition {
    pub user_id: String,
    pub balance: Credits,
    pub held: Credits,
    /// When the newest grant stops admitting new holds (`None`: never granted here).
    pub valid_until: Option<OffsetDateTime>,
    /// What this agent charged the user within the window asked for.
    pub spent_recently: Credits,
    /// The overdraft line of the newest grant booked here, not yet drawn.
    pub overdraft_line: Option<Credits>,
}

impl FleetPosition {
    /// What a new hold could take.
    pub fn available(&self) -> Credits {
        self.balance
            .checked_sub(self.held)
            .filter(|a| !a.is_negative())
            .unwrap_or(Credits::ZERO)
    }
}

/// Refuses a local credit for a fleet user: their credit is the server's pool's, granted.
pub fn refuse_local_credit(user: &UserRow, kind: CreditKind) -> Result<(), LedgerError> {
    if kind == CreditKind::Escrow {
        return Err(LedgerError::InvalidField {
            field: "credit type",
            why: "escrow credit comes only as a grant from the sync server".into(),
        });
    }
    if user.fleet {
        return Err(LedgerError::InvalidField {
            field: "user",
            why: format!(
                "{} is a fleet user: their credit is held by the sync server and reaches this \
                 agent as grants; add it there (`tollgate-server users credit`)",
                user.user_id
            ),
        });
    }
    Ok(())
}

impl Session<'_> {
    /// Books `grant` (see the module's guarantees); the entry's id.
    pub fn book_grant(&mut self, grant: &GrantSpec) -> Result<String, LedgerError> {
        super::validate_user_id(&grant.user_id)?;
        if !grant.key.starts_with(GRANT_KEY_PREFIX) || grant.key.len() > 255 {
            return Err(LedgerError::InvalidField {
                field: "grant key",
                why: format!("{:?} is not a grant's key (grant:…)", grant.key),
            });
        }
        if !grant.amount.is_positive() {
            return Err(LedgerError::InvalidAmount {
                amount: grant.amount,
                why: "a grant must be positive",
            });
        }
        if let Some(line) = grant.overdraft
            && !line.is_positive()
        {
            return Err(LedgerError::InvalidAmount {
                amount: line,
                why: "an overdraft line must be positive",
            });
        }
        if grant.valid_for_ms > GRANT_VALIDITY_MAX_MS {
            return Err(LedgerError::InvalidField {
                field: "grant validity",
                why: format!(
                    "{} ms is longer than {GRANT_VALIDITY_MAX_MS} ms",
                    grant.valid_for_ms
                ),
            });
        }
        if let Some(entry_id) = self
            .conn
            .query_row(
                "SELECT entry_id FROM credit_transactions WHERE idempotency_key = ?1",
                [&grant.key],
                |r| r.get::<_, String>(0),
            )
            .optional()?
        {
            return Ok(entry_id);
        }
        if !self.user_exists(&grant.user_id)? {
            self.create_user(&NewUser::new(grant.user_id.clone()))?;
            self.mark_fleet(&grant.user_id)?;
        }
        let mut user = self.touch(&grant.user_id)?;
        if !user.fleet {
            return Err(LedgerError::InvalidField {
                field: "grant",
                why: format!(
                    "{} is not a fleet user here: their balance is this agent's own",
                    user.user_id
                ),
            });
        }
        let valid_for =
            time::Duration::milliseconds(i64::try_from(grant.valid_for_ms).unwrap_or(i64::MAX));
        let valid_until = self.now.checked_add(valid_for).unwrap_or(self.now);
        let entry = self.append(
            &mut user,
            EntryDraft {
                entry_type: Some(EntryType::Escrow),
                amount: grant.amount,
                idempotency_key: Some(grant.key.clone()),
                notes: Some(format!(
                    "grant from the fleet pool, valid for {} ms",
                    grant.valid_for_ms
                )),
                ..EntryDraft::default()
            },
        )?;
        self.create_lot(&mut user, &entry, CreditKind::Escrow, grant.amount, None)?;
        self.save_user(&mut user)?;
        self.extend_validity(&user, valid_until)?;
        if let Some(line) = grant.overdraft {
            self.conn.execute(
                "UPDATE user_credits SET overdraft_line = ?2, overdraft_key = ?3 \
                 WHERE user_id = ?1",
                params![
                    grant.user_id,
                    line.nanos(),
                    format!("{OVERDRAFT_KEY_PREFIX}{}", grant.key)
                ],
            )?;
        }
        Ok(entry.receipt.entry_id)
    }

    /// Moves `user`'s grant validity forward to `valid_until` (never back).
    fn extend_validity(
        &self,
        user: &UserRow,
        valid_until: OffsetDateTime,
    ) -> Result<(), LedgerError> {
        let later = user
            .escrow_valid_until
            .is_none_or(|until| until < valid_until);
        if later {
            self.conn.execute(
                "UPDATE user_credits SET escrow_valid_until = ?2 WHERE user_id = ?1",
                params![user.user_id, to_text(valid_until)],
            )?;
        }
        Ok(())
    }

    /// Draws `user_id`'s overdraft line (see the module's guarantees); `None` when there is none.
    pub fn draw_overdraft(&mut self, user_id: &str) -> Result<Option<EntryReceipt>, LedgerError> {
        let line: Option<(i64, String)> = self
            .conn
            .query_row(
                "SELECT overdraft_line, overdraft_key FROM user_credits \
                 WHERE user_id = ?1 AND fleet = 1 AND overdraft_line IS NOT NULL",
                [user_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((line, key)) = line else {
            return Ok(None);
        };
        let amount = Credits::from_nanos(line);
        let mut user = self.touch(user_id)?;
        let entry = self.append(
            &mut user,
            EntryDraft {
                entry_type: Some(EntryType::Escrow),
                amount,
                idempotency_key: Some(key),
                notes: Some(
                    "overdraft line drawn: the sync server could not be reached; the server \
                     books it as the user's debt"
                        .to_owned(),
                ),
                ..EntryDraft::default()
            },
        )?;
        self.create_lot(&mut user, &entry, CreditKind::Escrow, amount, None)?;
        self.save_user(&mut user)?;
        let valid_for =
            time::Duration::milliseconds(i64::try_from(OVERDRAFT_VALIDITY_MS).unwrap_or(i64::MAX));
        self.extend_validity(&user, self.now.checked_add(valid_for).unwrap_or(self.now))?;
        self.conn.execute(
            "UPDATE user_credits SET overdraft_line = NULL, overdraft_key = NULL \
             WHERE user_id = ?1",
            [user_id],
        )?;
        Ok(Some(entry.receipt))
    }

    /// Marks `user_id` a fleet user (the server's settings say so).
    pub fn mark_fleet(&self, user_id: &str) -> Result<(), LedgerError> {
        self.conn.execute(
            "UPDATE user_credits SET fleet = 1 WHERE user_id = ?1",
            [user_id],
        )?;
        Ok(())
    }

    /// Whether a fleet user may take a new hold now: a grant booked here is still valid.
    pub fn fleet_grant_valid(&self, user: &UserRow) -> bool {
        !user.fleet
            || user
                .escrow_valid_until
                .is_some_and(|until| self.now < until)
    }

    /// Returns what `user_id` has available here to the pool; `None` when nothing is.
    pub fn release_escrow(&mut self, user_id: &str) -> Result<Option<EntryReceipt>, LedgerError> {
        let mut user = self.touch(user_id)?;
        if !user.fleet {
            return Err(LedgerError::InvalidField {
                field: "user",
                why: format!("{user_id} is not a fleet user: nothing here is a grant"),
            });
        }
        let available = user.account().available();
        if !available.is_positive() {
            self.save_user(&mut user)?;
            return Ok(None);
        }
        let plan = rules::burn_plan(&user.lots, available, self.now).ok_or_else(|| {
            LedgerError::Corrupt(format!("lots of {user_id} do not cover its balance"))
        })?;
        let entry = self.append(
            &mut user,
            EntryDraft {
                entry_type: Some(EntryType::Escrow),
                amount: negate(available),
                idempotency_key: Some(format!(
                    "{RELEASE_KEY_PREFIX}{}",
                    uuid::Uuid::now_v7().simple()
                )),
                notes: Some("unused grants returned to the fleet pool".to_owned()),
                ..EntryDraft::default()
            },
        )?;
        self.move_lots(&mut user, entry.row_id, &as_burns(plan))?;
        self.save_user(&mut user)?;
        Ok(Some(entry.receipt))
    }
}

impl Ledger {
    /// Books a grant the server answered with, in a transaction of its own.
    pub fn book_grant(&mut self, grant: &GrantSpec) -> Result<String, LedgerError> {
        self.write(|s| s.book_grant(grant))
    }

    /// Draws `user_id`'s overdraft line, in a transaction of its own.
    pub fn draw_overdraft(&mut self, user_id: &str) -> Result<Option<EntryReceipt>, LedgerError> {
        self.write(|s| s.draw_overdraft(user_id))
    }

    /// Returns what `user_id` has available here to the pool, in a transaction of its own.
    pub fn release_escrow(&mut self, user_id: &str) -> Result<Option<EntryReceipt>, LedgerError> {
        self.write(|s| s.release_escrow(user_id))
    }

    /// The fleet users the escrow loop must look at (at most [`FLEET_USERS_MAX`]): those in
    /// `active` (who asked for credit lately), with what this agent charged them within `window`
    /// back from now (read from their newest [`RATE_ENTRIES_MAX`] entries), and those whose
    /// newest grant has lapsed with credit still available here (to release); and the ledger's
    /// now. An idle fleet costs one indexed read.
    pub fn fleet_positions(
        &self,
        window: time::Duration,
        active: &[String],
    ) -> Result<(OffsetDateTime, Vec<FleetPosition>), LedgerError> {
        let now = self.clock.now();
        let now_text = to_text(now);
        let since = to_text(now - window);
        let active_json = serde_json::to_string(active)
            .map_err(|e| LedgerError::Corrupt(format!("listing active users: {e}")))?;
        let mut users = self.conn.prepare_cached(
            "SELECT user_id, balance, held, escrow_valid_until, overdraft_line FROM user_credits \
             WHERE fleet = 1 AND (user_id IN (SELECT value FROM json_each(?1)) \
                   OR (balance > held AND (escrow_valid_until IS NULL \
                                           OR escrow_valid_until <= ?2))) \
             ORDER BY user_id LIMIT ?3",
        )?;
        let mut spent = self.conn.prepare_cached(
            "SELECT coalesce(-sum(amount), 0) FROM ( \
                 SELECT amount, created_at, transaction_type FROM credit_transactions \
                 WHERE user_id = ?1 ORDER BY id DESC LIMIT ?3) \
             WHERE transaction_type = 'usage' AND created_at >= ?2",
        )?;
        let rows = users.query_map(params![active_json, now_text, FLEET_USERS_MAX], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (user_id, balance, held, until, line) = row?;
            let spent_recently: i64 =
                spent.query_row(params![user_id, since, RATE_ENTRIES_MAX], |r| r.get(0))?;
            out.push(FleetPosition {
                user_id,
                balance: Credits::from_nanos(balance),
                held: Credits::from_nanos(held),
                valid_until: until
                    .as_deref()
                    .map(super::types::parse_stored_time)
                    .transpose()?,
                spent_recently: Credits::from_nanos(spent_recently.max(0)),
                overdraft_line: line.map(Credits::from_nanos),
            });
        }
        Ok((now, out))
    }
}
