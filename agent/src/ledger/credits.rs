//! Adding and debiting credit outside the request path: purchases, bonuses, refunds, admin
//! adjustments, and direct debits.
//!
//! Guarantees: an amount is never zero; only an admin adjustment may be negative; a debit or a
//! negative adjustment never takes available credit (balance − open holds) below zero; a refund
//! of a debit never returns more than that debit took, and goes back to the lots it burned; a
//! package is bought only at or above its minimum tier; a note is one line of printable text.

use rusqlite::OptionalExtension;
use time::OffsetDateTime;
use tollgate_schema::money::Credits;

use super::LedgerError;
use super::error::Refusal;
use super::journal::{self, EntryDraft};
use super::lots::as_burns;
use super::rules::{self, LiveLot};
use super::session::{Session, UserRow};
use super::types::{
    AddCredits, CreditKind, Debit, EntryReceipt, EntryType, Tier, parse_stored_time,
};

/// Longest note kept on an entry.
pub const NOTE_LEN_MAX: usize = 1_000;

impl Session<'_> {
    pub fn add_credits(&mut self, req: &AddCredits) -> Result<EntryReceipt, LedgerError> {
        validate_note(req.note.as_deref())?;
        if req.amount == Credits::ZERO {
            return Err(LedgerError::InvalidAmount {
                amount: req.amount,
                why: "it must not be zero",
            });
        }
        if req.amount.is_negative() && req.kind != CreditKind::AdminAdjustment {
            return Err(LedgerError::InvalidAmount {
                amount: req.amount,
                why: "it must be positive (only an admin_adjustment may be negative)",
            });
        }
        if req.kind == CreditKind::Allowance {
            return Err(LedgerError::InvalidField {
                field: "credit type",
                why: "allowance is granted by monthly renewal; use bonus for a one-off grant"
                    .into(),
            });
        }
        if req.expires_at.is_some() {
            if req.refund_of.is_some() {
                return Err(LedgerError::InvalidField {
                    field: "expiry",
                    why: "a refund of a debit cannot set one: it goes back to the lots the debit \
                          burned, which keep their own expiry"
                        .into(),
                });
            }
            if req.amount.is_negative() {
                return Err(LedgerError::InvalidField {
                    field: "expiry",
                    why: "a negative admin_adjustment cannot set one: it takes credit away and \
                          creates no lot to expire"
                        .into(),
                });
            }
        }
        let package_id = match &req.package {
            Some(name) => Some(self.package_for_purchase(name, req)?),
            None => None,
        };
        let expires_at = self.validate_expiry(req.expires_at.as_deref())?;

        let mut user = self.touch(&req.user_id)?;
        if req.amount.is_positive() {
            super::escrow::refuse_local_credit(&user, req.kind)?;
        }
        let receipt = if let Some(debit_entry) = &req.refund_of {
            self.refund_debit(&mut user, req, debit_entry)?
        } else if req.amount.is_negative() {
            self.adjust_down(&mut user, req)?
        } else {
            let entry = self.append(&mut user, draft_for(req, package_id))?;
            self.create_lot(&mut user, &entry, req.kind, req.amount, expires_at)?;
            if req.kind == CreditKind::Purchase {
                user.lifetime_purchased = user
                    .lifetime_purchased
                    .checked_add(req.amount)
                    .unwrap_or(Credits::MAX);
            }
            entry.receipt
        };
        self.save_user(&mut user)?;
        Ok(receipt)
    }

    pub fn debit(&mut self, req: &Debit) -> Result<EntryReceipt, LedgerError> {
        validate_note(req.note.as_deref())?;
        if !req.amount.is_positive() {
            return Err(LedgerError::InvalidAmount {
                amount: req.amount,
                why: "a debit must be positive",
            });
        }
        let mut user = self.touch(&req.user_id)?;
        user.account().admit(&user.user_id, req.amount)?;
        let plan = rules::burn_plan(&user.lots, req.amount, self.now).ok_or_else(|| {
            LedgerError::Corrupt(format!("lots of {} do not cover its balance", user.user_id))
        })?;
        let entry = self.append(
            &mut user,
            EntryDraft {
                entry_type: Some(EntryType::Usage),
                amount: negate(req.amount),
                idempotency_key: req.idempotency_key.clone(),
                notes: req.note.clone(),
                ..EntryDraft::default()
            },
        )?;
        self.move_lots(&mut user, entry.row_id, &as_burns(plan))?;
        user.used_this_month = user
            .used_this_month
            .checked_add(req.amount)
            .unwrap_or(Credits::MAX);
        self.save_user(&mut user)?;
        Ok(entry.receipt)
    }

    /// A negative admin adjustment: burns lots like a debit but is not spend.
    fn adjust_down(
        &mut self,
        user: &mut UserRow,
        req: &AddCredits,
    ) -> Result<EntryReceipt, LedgerError> {
        let taken = negate(req.amount);
        let available = user.account().available();
        if taken > available {
            return Err(Refusal::InsufficientCredit {
                user: user.user_id.clone(),
                available,
                needed: taken,
            }
            .into());
        }
        let plan = rules::burn_plan(&user.lots, taken, self.now).ok_or_else(|| {
            LedgerError::Corrupt(format!("lots of {} do not cover its balance", user.user_id))
        })?;
        let entry = self.append(user, draft_for(req, None))?;
        self.move_lots(user, entry.row_id, &as_burns(plan))?;
        Ok(entry.receipt)
    }

    /// A refund of an earlier debit, restoring the lots it burned (see [`rules::refund_plan`]).
    fn refund_debit(
        &mut self,
        user: &mut UserRow,
        req: &AddCredits,
        debit_entry: &str,
    ) -> Result<EntryReceipt, LedgerError> {
        let not_refundable = |why: String| LedgerError::NotRefundable {
            entry: debit_entry.to_owned(),
            why,
        };
        if req.kind != CreditKind::Refund {
            return Err(not_refundable(
                "only a refund may name an entry it refunds".into(),
            ));
        }
        let original = journal::entry(self.conn, debit_entry)?
            .ok_or_else(|| LedgerError::UnknownEntry(debit_entry.to_owned()))?;
        if original.user_id != user.user_id {
            return Err(not_refundable(format!(
                "it belongs to another user, not {}",
                user.user_id
            )));
        }
        let is_debit = original.amount.is_negative()
            && matches!(
                original.transaction_type,
                EntryType::Usage | EntryType::AdminAdjustment
            );
        if !is_debit {
            return Err(not_refundable(format!(
                "it is a {} entry, not a debit",
                original.transaction_type
            )));
        }
        let already: i64 = self
            .conn
            .prepare_cached("SELECT COALESCE(SUM(amount), 0) FROM credit_transactions WHERE corrects_entry_id = ?1")?
            .query_row([debit_entry], |r| r.get(0))?;
        let refundable = negate(original.amount)
            .checked_sub(Credits::from_nanos(already))
            .unwrap_or(Credits::ZERO);
        if req.amount > refundable {
            return Err(not_refundable(format!(
                "only {refundable} of it is left to refund, not {}",
                req.amount
            )));
        }
        let burned = self.burns_of(debit_entry)?;
        let (restore, new_lot) = rules::refund_plan(&burned, req.amount, self.now);
        let entry = self.append(
            user,
            EntryDraft {
                corrects_entry_id: Some(debit_entry.to_owned()),
                ..draft_for(req, None)
            },
        )?;
        self.move_lots(user, entry.row_id, &restore)?;
        if new_lot.is_positive() {
            self.create_lot(user, &entry, CreditKind::Refund, new_lot, None)?;
        }
        self.reload_lots(user)?;
        // Only spend of the current cycle comes back off the month's spend: a refund of an
        // earlier cycle's usage must not lift this cycle's spend cap.
        if original.transaction_type == EntryType::Usage
            && parse_stored_time(&original.created_at)? >= parse_stored_time(&user.cycle_start)?
        {
            user.used_this_month = user
                .used_this_month
                .checked_sub(req.amount)
                .unwrap_or(Credits::ZERO)
                .max(Credits::ZERO);
        }
        Ok(entry.receipt)
    }

    /// The lots a debit burned, in burn order, each with what it gave and what refunds of that
    /// debit already restored to it.
    fn burns_of(&self, debit_entry: &str) -> Result<Vec<(LiveLot, Credits, Credits)>, LedgerError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT l.id, l.remaining, l.priority, l.expires_at, -m.amount, \
               (SELECT COALESCE(SUM(r.amount), 0) FROM lot_movements r \
                  JOIN credit_transactions rt ON rt.id = r.entry_id \
                 WHERE rt.corrects_entry_id = t.entry_id AND r.lot_id = l.id) \
             FROM credit_transactions t \
             JOIN lot_movements m ON m.entry_id = t.id \
             JOIN credit_lots l ON l.id = m.lot_id \
             WHERE t.entry_id = ?1 ORDER BY m.id",
        )?;
        let rows = stmt.query_map([debit_entry], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        let mut burned = Vec::new();
        for row in rows {
            let (id, remaining, priority, expires_at, gave, restored) = row?;
            let expires_at = expires_at.as_deref().map(parse_stored_time).transpose()?;
            burned.push((
                LiveLot {
                    id,
                    remaining: Credits::from_nanos(remaining),
                    priority,
                    expires_at,
                },
                Credits::from_nanos(gave),
                Credits::from_nanos(restored),
            ));
        }
        Ok(burned)
    }

    /// The id of an active package bought by `req`, whose credits must equal the amount and whose
    /// minimum tier, if any, the buyer must be on or above.
    fn package_for_purchase(&self, name: &str, req: &AddCredits) -> Result<i64, LedgerError> {
        if req.kind != CreditKind::Purchase {
            return Err(LedgerError::InvalidField {
                field: "package",
                why: format!(
                    "a package can only be named on a purchase, not a {}",
                    req.kind
                ),
            });
        }
        let (id, credits, min_tier): (i64, i64, Option<String>) = self
            .conn
            .prepare_cached(
                "SELECT id, credits, min_tier FROM credit_packages \
                 WHERE name = ?1 AND is_active = 1",
            )?
            .query_row([name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?
            .ok_or_else(|| LedgerError::UnknownPackage(name.to_owned()))?;
        let credits = Credits::from_nanos(credits);
        if credits != req.amount {
            return Err(LedgerError::PackageAmountMismatch {
                package: name.to_owned(),
                credits,
                amount: req.amount,
            });
        }
        if let Some(min_tier) = min_tier {
            let min_tier: Tier = min_tier.parse().map_err(LedgerError::Corrupt)?;
            let tier: String = self
                .conn
                .prepare_cached("SELECT subscription_tier FROM user_credits WHERE user_id = ?1")?
                .query_row([&req.user_id], |r| r.get(0))
                .optional()?
                .ok_or_else(|| LedgerError::UnknownUser(req.user_id.clone()))?;
            let tier: Tier = tier.parse().map_err(LedgerError::Corrupt)?;
            if tier_rank(tier) < tier_rank(min_tier) {
                return Err(LedgerError::PackageAboveTier {
                    package: name.to_owned(),
                    user: req.user_id.clone(),
                    tier,
                    min_tier,
                });
            }
        }
        Ok(id)
    }

    fn validate_expiry(&self, expires_at: Option<&str>) -> Result<Option<String>, LedgerError> {
        let Some(text) = expires_at else {
            return Ok(None);
        };
        let at: OffsetDateTime =
            OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map_err(
                |e| LedgerError::InvalidField {
                    field: "expiry",
                    why: format!("{text:?} is not an RFC 3339 time: {e}"),
                },
            )?;
        if at <= self.now {
            return Err(LedgerError::InvalidField {
                field: "expiry",
                why: format!("{text} is not in the future"),
            });
        }
        Ok(Some(super::clock::to_text(at)))
    }
}

fn draft_for(req: &AddCredits, package_id: Option<i64>) -> EntryDraft {
    EntryDraft {
        entry_type: Some(req.kind.entry_type()),
        amount: req.amount,
        idempotency_key: req.idempotency_key.clone(),
        package_id,
        notes: req.note.clone(),
        admin_user_id: req.admin_user_id.clone(),
        payment_method: match req.kind {
            CreditKind::Purchase => Some("manual"),
            CreditKind::Bonus => Some("bonus"),
            _ => None,
        },
        ..EntryDraft::default()
    }
}

/// Tiers from lowest to highest: free < trial < starter < professional < enterprise.
fn tier_rank(tier: Tier) -> u8 {
    match tier {
        Tier::Free => 0,
        Tier::Trial => 1,
        Tier::Starter => 2,
        Tier::Professional => 3,
        Tier::Enterprise => 4,
    }
}

/// A note is at most [`NOTE_LEN_MAX`] bytes of text with no control characters, so it prints
/// as one line in a history and cannot forge lines of its own.
fn validate_note(note: Option<&str>) -> Result<(), LedgerError> {
    let Some(n) = note else { return Ok(()) };
    if n.len() > NOTE_LEN_MAX {
        return Err(LedgerError::InvalidField {
            field: "note",
            why: format!("it is {} bytes long, the limit is {NOTE_LEN_MAX}", n.len()),
        });
    }
    if let Some(c) = n.chars().find(|c| c.is_control()) {
        return Err(LedgerError::InvalidField {
            field: "note",
            why: format!(
                "it contains the control character {c:?}; a note is one line of printable text"
            ),
        });
    }
    Ok(())
}

/// −amount; amounts here are bounded far below i64::MIN.
pub(crate) fn negate(amount: Credits) -> Credits {
    amount.checked_neg().unwrap_or(Credits::ZERO)
}
