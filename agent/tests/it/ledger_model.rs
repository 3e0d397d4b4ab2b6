//! Property tests: random operation sequences against a small reference model of the ledger.
//!
//! The model ([`Model`]) is written from SCHEMA.md and the `//!` docs of the ledger's modules, not
//! from its code: plain maps of nano-credits per user (balance, held, used this month, spend cap,
//! monthly allowance), lots with their kind's priority, expiry and remaining credit, open holds by
//! request id, settled (or logged) requests, the debits a refund may name, and the recorded outcome
//! of every idempotency key, refusals included. Renewal, expiry and hold timeouts happen lazily,
//! when an operation touches a user, exactly as the ledger documents them.
//!
//! Each proptest case drives a real SQLite ledger in a temporary directory and the model with the
//! same steps: creating users and changing their cap, allowance and auto-renewal, adds of every
//! kind (negative adjustments and refunds of earlier debits included, some with an expiry, some
//! keyed), debits, holds, settles below, at and above the hold, releases, retries of earlier
//! operations (same content, or changed content under the same key or request id), batches through
//! [`Ledger::apply`], and clock jumps from a minute to forty days. After every step the operation's
//! result (receipt or error variant), each user's lots in burn order and `verify` must agree with
//! the model; half the cases also read every account after each step (which brings the user up to
//! date), the other half leave the books lazy. Each case ends with every account, every user's
//! journal and the usage entries per request id compared. Plain tests below pin the tricky cases by
//! hand.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use rust_decimal::Decimal;
use tempfile::TempDir;
use time::format_description::well_known::Rfc3339;
use time::macros::datetime;
use time::{Date, Duration, Month, OffsetDateTime};
use tollgate::ledger::{
    AddCredits, CreditKind, Debit, EntryReceipt, EntryType, HoldRequest, Ledger, LedgerError,
    ManualClock, NewUser, Op, OpenMode, Receipt, Refusal, Release, Settle, UsageRecord,
    UserAccount, UserChanges,
};
use tollgate_schema::money::Credits;

const NANO: i64 = 1_000_000_000;
/// Users a case creates: `u0`, `u1`, `u2`; `u3` never exists.
const MAX_USERS: usize = 3;

fn cr(nanos: i64) -> Credits {
    Credits::from_nanos(nanos)
}

fn uname(index: u8) -> String {
    format!("u{index}")
}

// ------------------------------------------------------------------------------------------------
// Calendar and time text, written independently of the ledger's clock module.

/// `at` moved by whole calendar months, the day clamped to the target month's last day.
fn add_months(at: OffsetDateTime, months: i32) -> OffsetDateTime {
    let index = at.year() * 12 + i32::from(u8::from(at.month())) - 1 + months;
    let year = index.div_euclid(12);
    let month = Month::try_from(u8::try_from(index.rem_euclid(12) + 1).unwrap()).unwrap();
    let mut day = at.day();
    let date = loop {
        if let Ok(date) = Date::from_calendar_date(year, month, day) {
            break date;
        }
        day -= 1;
    };
    date.with_time(at.time()).assume_utc()
}

/// The billing cycle `[start, end)` containing `now`, in whole months from `anchor`.
fn cycle(anchor: OffsetDateTime, now: OffsetDateTime) -> (OffsetDateTime, OffsetDateTime) {
    let mut k = 0;
    while add_months(anchor, k + 1) <= now {
        k += 1;
    }
    (add_months(anchor, k), add_months(anchor, k + 1))
}

/// The stored text of a time: RFC 3339 UTC with milliseconds.
fn text(t: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

// ------------------------------------------------------------------------------------------------
// The reference model.

#[derive(Debug, Clone)]
struct MUser {
    created: OffsetDateTime,
    cycle_start: OffsetDateTime,
    cycle_end: OffsetDateTime,
    balance: i64,
    held: i64,
    used: i64,
    cap: Option<i64>,
    allowance: i64,
    auto_renew: bool,
    lifetime: i64,
    /// (type, amount) of every journal entry, oldest first.
    journal: Vec<(EntryType, i64)>,
}

#[derive(Debug, Clone)]
struct MLot {
    user: String,
    kind: CreditKind,
    remaining: i64,
    expires: Option<OffsetDateTime>,
}

impl MLot {
    fn priority(&self) -> i64 {
        match self.kind {
            CreditKind::Allowance => 10,
            CreditKind::Bonus => 20,
            CreditKind::Refund | CreditKind::AdminAdjustment => 30,
            CreditKind::Purchase => 40,
        }
    }

    fn expired(&self, now: OffsetDateTime) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }
}

#[derive(Debug, Clone)]
struct MHold {
    user: String,
    amount: i64,
    expires: OffsetDateTime,
    hold_id: String,
}

/// A request's usage row: settled, or logged by a release.
#[derive(Debug, Clone)]
struct MUsage {
    user: String,
    charged: i64,
    overage: i64,
    entry: Option<EntryReceipt>,
}

/// A debit a refund may name: a usage entry (debit or settle) or a negative adjustment.
#[derive(Debug, Clone)]
struct MDebit {
    user: String,
    amount: i64,
    usage: bool,
    created: OffsetDateTime,
    /// (lot, taken) in burn order.
    burns: Vec<(i64, i64)>,
    restored: BTreeMap<i64, i64>,
    refunded: i64,
}

#[derive(Debug, Clone, PartialEq)]
enum Keyed {
    Add(AddCredits),
    Debit(Debit),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum MErr {
    Refused(Refusal),
    UnknownUser,
    UserExists,
    InvalidAmount,
    InvalidField,
    IdempotencyConflict,
    HoldConflict,
    AlreadySettled,
    SettleConflict,
    UnknownEntry,
    NotRefundable,
    Other(String),
}

fn classify(e: &LedgerError) -> MErr {
    match e {
        LedgerError::Refused(r) => MErr::Refused(r.clone()),
        LedgerError::UnknownUser(_) => MErr::UnknownUser,
        LedgerError::UserExists(_) => MErr::UserExists,
        LedgerError::InvalidAmount { .. } => MErr::InvalidAmount,
        LedgerError::InvalidField { .. } => MErr::InvalidField,
        LedgerError::IdempotencyConflict { .. } => MErr::IdempotencyConflict,
        LedgerError::HoldConflict { .. } => MErr::HoldConflict,
        LedgerError::AlreadySettled(_) => MErr::AlreadySettled,
        LedgerError::SettleConflict { .. } => MErr::SettleConflict,
        LedgerError::UnknownEntry(_) => MErr::UnknownEntry,
        LedgerError::NotRefundable { .. } => MErr::NotRefundable,
        other => MErr::Other(other.to_string()),
    }
}

/// The parts of a receipt the model predicts for a fresh operation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MOut {
    Entry {
        user: String,
        seq: i64,
        amount: i64,
        balance_after: i64,
    },
    Hold {
        amount: i64,
        available_after: i64,
    },
    Settle {
        charged: i64,
        overage: i64,
        /// (seq, amount, balance_after) of the usage entry.
        entry: Option<(i64, i64, i64)>,
    },
    Release {
        released: i64,
    },
}

fn summarize(r: &Receipt) -> MOut {
    match r {
        Receipt::Entry(e) => MOut::Entry {
            user: e.user_id.clone(),
            seq: e.seq,
            amount: e.amount.nanos(),
            balance_after: e.balance_after.nanos(),
        },
        Receipt::Hold(h) => MOut::Hold {
            amount: h.amount.nanos(),
            available_after: h.available_after.nanos(),
        },
        Receipt::Settle(s) => MOut::Settle {
            charged: s.charged.nanos(),
            overage: s.overage.nanos(),
            entry: s
                .entry
                .as_ref()
                .map(|e| (e.seq, e.amount.nanos(), e.balance_after.nanos())),
        },
        Receipt::Release(r) => MOut::Release {
            released: r.released.nanos(),
        },
    }
}

/// What the model expects of an operation.
#[derive(Debug, Clone)]
enum Expect {
    /// A new effect, predicted in full but for generated ids.
    Fresh(MOut),
    /// A replay: exactly this receipt again (same entry and hold ids).
    Same(Receipt),
}

fn real_entry(real: Option<&Receipt>) -> Option<EntryReceipt> {
    match real {
        Some(Receipt::Entry(e)) => Some(e.clone()),
        Some(Receipt::Settle(s)) => s.entry.clone(),
        _ => None,
    }
}

fn real_entry_id(real: Option<&Receipt>) -> String {
    real_entry(real).map_or_else(|| "?".to_owned(), |e| e.entry_id)
}

#[derive(Debug, Clone)]
struct Model {
    now: OffsetDateTime,
    users: BTreeMap<String, MUser>,
    /// Every lot ever created, by id (SQLite rowids: 1, 2, 3, ... and never reused).
    lots: BTreeMap<i64, MLot>,
    holds: BTreeMap<String, MHold>,
    usage: BTreeMap<String, MUsage>,
    keys: BTreeMap<String, (Keyed, Result<EntryReceipt, Refusal>)>,
    debits: BTreeMap<String, MDebit>,
    /// Entry ids of debits, in order, for refunds to pick from.
    debit_order: Vec<String>,
    /// Entry ids of credit-adding entries (not refundable as debits).
    credit_entries: Vec<String>,
    /// The global journal sequence: entries written so far.
    seq: i64,
}

impl Model {
    fn new(now: OffsetDateTime) -> Self {
        Model {
            now,
            users: BTreeMap::new(),
            lots: BTreeMap::new(),
            holds: BTreeMap::new(),
            usage: BTreeMap::new(),
            keys: BTreeMap::new(),
            debits: BTreeMap::new(),
            debit_order: Vec::new(),
            credit_entries: Vec::new(),
            seq: 0,
        }
    }

    fn user(&self, name: &str) -> &MUser {
        &self.users[name]
    }

    fn user_mut(&mut self, name: &str) -> &mut MUser {
        self.users.get_mut(name).unwrap()
    }

    fn available(&self, name: &str) -> i64 {
        let u = self.user(name);
        u.balance - u.held
    }

    /// Appends a journal entry; returns (seq, balance_after).
    fn append(&mut self, name: &str, kind: EntryType, amount: i64) -> (i64, i64) {
        self.seq += 1;
        let seq = self.seq;
        let u = self.user_mut(name);
        u.balance += amount;
        assert!(u.balance >= 0, "model bug: {name}'s balance went negative");
        u.journal.push((kind, amount));
        (seq, u.balance)
    }

    fn new_lot(
        &mut self,
        name: &str,
        kind: CreditKind,
        amount: i64,
        expires: Option<OffsetDateTime>,
    ) {
        let id = i64::try_from(self.lots.len()).unwrap() + 1;
        self.lots.insert(
            id,
            MLot {
                user: name.to_owned(),
                kind,
                remaining: amount,
                expires,
            },
        );
    }

    /// The user's lots with credit left, in burn order: already expired first, then priority,
    /// earliest expiry (none last), oldest.
    fn lots_in_burn_order(&self, name: &str) -> Vec<i64> {
        let now = self.now;
        let mut ids: Vec<i64> = self
            .lots
            .iter()
            .filter(|(_, l)| l.user == name && l.remaining > 0)
            .map(|(&id, _)| id)
            .collect();
        ids.sort_by_key(|id| {
            let l = &self.lots[id];
            (
                !l.expired(now),
                l.priority(),
                l.expires.is_none(),
                l.expires,
                *id,
            )
        });
        ids
    }

    /// Burns `amount` from the user's lots; returns what each lot gave.
    fn burn(&mut self, name: &str, amount: i64) -> Vec<(i64, i64)> {
        let mut left = amount;
        let mut burns = Vec::new();
        for id in self.lots_in_burn_order(name) {
            if left == 0 {
                break;
            }
            let lot = self.lots.get_mut(&id).unwrap();
            let take = lot.remaining.min(left);
            lot.remaining -= take;
            left -= take;
            burns.push((id, take));
        }
        assert_eq!(left, 0, "model bug: {name}'s lots do not cover {amount}");
        burns
    }

    /// Brings a user up to date: expired holds released, expired lots expired (never below what
    /// open holds need, oldest expiry first), and an ended billing cycle renewed.
    fn touch(&mut self, name: &str) {
        let now = self.now;
        let expired_holds: Vec<String> = self
            .holds
            .iter()
            .filter(|(_, h)| h.user == name && h.expires <= now)
            .map(|(r, _)| r.clone())
            .collect();
        for request in expired_holds {
            let hold = self.holds.remove(&request).unwrap();
            self.user_mut(name).held -= hold.amount;
        }
        let mut expired: Vec<i64> = self
            .lots
            .iter()
            .filter(|(_, l)| l.user == name && l.remaining > 0 && l.expired(now))
            .map(|(&id, _)| id)
            .collect();
        expired.sort_by_key(|id| (self.lots[id].expires, *id));
        let mut free = self.available(name);
        for id in expired {
            let take = self.lots[&id].remaining.min(free);
            if take > 0 {
                self.lots.get_mut(&id).unwrap().remaining -= take;
                free -= take;
                self.append(name, EntryType::Expiry, -take);
            }
        }
        if now >= self.user(name).cycle_end {
            let (start, end) = cycle(self.user(name).created, now);
            let u = self.user_mut(name);
            u.cycle_start = start;
            u.cycle_end = end;
            u.used = 0;
            let allowance = u.allowance;
            if u.auto_renew && allowance > 0 {
                self.append(name, EntryType::Allowance, allowance);
                self.new_lot(name, CreditKind::Allowance, allowance, Some(end));
            }
        }
    }

    /// Credit first, then the spend cap (open holds count as spent).
    fn admit(&self, name: &str, needed: i64) -> Result<(), MErr> {
        let u = self.user(name);
        let available = u.balance - u.held;
        if needed > available {
            return Err(MErr::Refused(Refusal::InsufficientCredit {
                user: name.to_owned(),
                available: cr(available),
                needed: cr(needed),
            }));
        }
        if let Some(cap) = u.cap
            && needed > (cap - u.used - u.held).max(0)
        {
            return Err(MErr::Refused(Refusal::SpendCapReached {
                user: name.to_owned(),
                cap: cr(cap),
                used: cr(u.used),
                held: cr(u.held),
                needed: cr(needed),
            }));
        }
        Ok(())
    }

    fn create_user(&mut self, name: &str, allowance: i64, cap: Option<i64>) -> Result<(), MErr> {
        if self.users.contains_key(name) {
            return Err(MErr::UserExists);
        }
        let now = self.now;
        self.users.insert(
            name.to_owned(),
            MUser {
                created: now,
                cycle_start: now,
                cycle_end: add_months(now, 1),
                balance: 0,
                held: 0,
                used: 0,
                cap,
                allowance,
                auto_renew: true,
                lifetime: 0,
                journal: Vec::new(),
            },
        );
        if allowance > 0 {
            let end = self.user(name).cycle_end;
            self.append(name, EntryType::Allowance, allowance);
            self.new_lot(name, CreditKind::Allowance, allowance, Some(end));
        }
        Ok(())
    }

    /// A change of limits: the cap at once, the allowance from the next renewal.
    fn change_user(
        &mut self,
        name: &str,
        allowance: Option<i64>,
        cap: Option<Option<i64>>,
        auto_renew: Option<bool>,
    ) -> Result<(), MErr> {
        if !self.users.contains_key(name) {
            return Err(MErr::UnknownUser);
        }
        self.touch(name);
        let u = self.user_mut(name);
        u.allowance = allowance.unwrap_or(u.allowance);
        u.cap = cap.unwrap_or(u.cap);
        u.auto_renew = auto_renew.unwrap_or(u.auto_renew);
        Ok(())
    }

    /// Runs one operation against the model as the ledger would, in a savepoint: the caller
    /// keeps the new state only on success. Ids the ledger generates come from `real`.
    fn run(&mut self, op: &Op, real: Option<&Receipt>) -> Result<Expect, MErr> {
        match op {
            Op::AddCredits(a) => self.add(a, real),
            Op::Debit(d) => self.debit(d, real),
            Op::Hold(h) => self.hold(h, real),
            Op::Settle(s) => self.settle(s, real),
            Op::Release(r) => self.release(r),
        }
    }

    fn add(&mut self, a: &AddCredits, real: Option<&Receipt>) -> Result<Expect, MErr> {
        let amount = a.amount.nanos();
        if amount == 0 || (amount < 0 && a.kind != CreditKind::AdminAdjustment) {
            return Err(MErr::InvalidAmount);
        }
        if a.kind == CreditKind::Allowance {
            return Err(MErr::InvalidField);
        }
        let expires = match &a.expires_at {
            Some(t) => {
                let at = OffsetDateTime::parse(t, &Rfc3339).map_err(|_| MErr::InvalidField)?;
                if at <= self.now {
                    return Err(MErr::InvalidField);
                }
                Some(at)
            }
            None => None,
        };
        let name = a.user_id.as_str();
        if !self.users.contains_key(name) {
            return Err(MErr::UnknownUser);
        }
        self.touch(name);
        let (seq, balance_after) = if let Some(debit_id) = &a.refund_of {
            if a.kind != CreditKind::Refund {
                return Err(MErr::NotRefundable);
            }
            let Some(debit) = self.debits.get(debit_id).cloned() else {
                return Err(if self.credit_entries.contains(debit_id) {
                    MErr::NotRefundable
                } else {
                    MErr::UnknownEntry
                });
            };
            if debit.user != name || amount > debit.amount - debit.refunded {
                return Err(MErr::NotRefundable);
            }
            let out = self.append(name, EntryType::Refund, amount);
            // Back into the lots the debit burned, last burned first, while they are live.
            let mut left = amount;
            let mut restored = debit.restored.clone();
            for &(lot_id, gave) in debit.burns.iter().rev() {
                let open = gave - restored.get(&lot_id).copied().unwrap_or(0);
                let lot = self.lots.get_mut(&lot_id).unwrap();
                if left == 0 || open <= 0 || lot.expired(self.now) {
                    continue;
                }
                let take = open.min(left);
                lot.remaining += take;
                *restored.entry(lot_id).or_default() += take;
                left -= take;
            }
            if left > 0 {
                self.new_lot(name, CreditKind::Refund, left, None);
            }
            let d = self.debits.get_mut(debit_id).unwrap();
            d.restored = restored;
            d.refunded += amount;
            // Only spend of the current cycle is given back to the month's spend.
            let cycle_start = self.user(name).cycle_start;
            if debit.usage && debit.created >= cycle_start {
                let u = self.user_mut(name);
                u.used = (u.used - amount).max(0);
            }
            self.credit_entries.push(real_entry_id(real));
            out
        } else if amount < 0 {
            let available = self.available(name);
            if -amount > available {
                return Err(MErr::Refused(Refusal::InsufficientCredit {
                    user: name.to_owned(),
                    available: cr(available),
                    needed: cr(-amount),
                }));
            }
            let out = self.append(name, EntryType::AdminAdjustment, amount);
            let burns = self.burn(name, -amount);
            self.record_debit(name, -amount, false, burns, real);
            out
        } else {
            let entry_type = match a.kind {
                CreditKind::Purchase => EntryType::Purchase,
                CreditKind::Bonus => EntryType::Bonus,
                CreditKind::Refund => EntryType::Refund,
                _ => EntryType::AdminAdjustment,
            };
            let out = self.append(name, entry_type, amount);
            self.new_lot(name, a.kind, amount, expires);
            if a.kind == CreditKind::Purchase {
                self.user_mut(name).lifetime += amount;
            }
            self.credit_entries.push(real_entry_id(real));
            out
        };
        Ok(Expect::Fresh(MOut::Entry {
            user: name.to_owned(),
            seq,
            amount,
            balance_after,
        }))
    }

    fn record_debit(
        &mut self,
        name: &str,
        amount: i64,
        usage: bool,
        burns: Vec<(i64, i64)>,
        real: Option<&Receipt>,
    ) {
        let id = real_entry_id(real);
        self.debit_order.push(id.clone());
        self.debits.insert(
            id,
            MDebit {
                user: name.to_owned(),
                amount,
                usage,
                created: self.now,
                burns,
                restored: BTreeMap::new(),
                refunded: 0,
            },
        );
    }

    fn debit(&mut self, d: &Debit, real: Option<&Receipt>) -> Result<Expect, MErr> {
        let amount = d.amount.nanos();
        if amount <= 0 {
            return Err(MErr::InvalidAmount);
        }
        let name = d.user_id.as_str();
        if !self.users.contains_key(name) {
            return Err(MErr::UnknownUser);
        }
        self.touch(name);
        self.admit(name, amount)?;
        let (seq, balance_after) = self.append(name, EntryType::Usage, -amount);
        let burns = self.burn(name, amount);
        self.user_mut(name).used += amount;
        self.record_debit(name, amount, true, burns, real);
        Ok(Expect::Fresh(MOut::Entry {
            user: name.to_owned(),
            seq,
            amount: -amount,
            balance_after,
        }))
    }

    fn hold(&mut self, h: &HoldRequest, real: Option<&Receipt>) -> Result<Expect, MErr> {
        let amount = h.amount.nanos();
        if amount <= 0 {
            return Err(MErr::InvalidAmount);
        }
        let name = h.user_id.as_str();
        if let Some(existing) = self.holds.get(&h.request_id).cloned() {
            if existing.user != name || existing.amount != amount {
                return Err(MErr::HoldConflict);
            }
            self.touch(name);
            if self.holds.contains_key(&h.request_id) {
                return Ok(Expect::Same(Receipt::Hold(tollgate::ledger::HoldReceipt {
                    hold_id: existing.hold_id,
                    request_id: h.request_id.clone(),
                    user_id: name.to_owned(),
                    amount: h.amount,
                    available_after: cr(self.available(name)),
                })));
            }
            // The hold expired: the retry reserves anew.
        }
        if self.usage.contains_key(&h.request_id) {
            return Err(MErr::AlreadySettled);
        }
        if !self.users.contains_key(name) {
            return Err(MErr::UnknownUser);
        }
        self.touch(name);
        self.admit(name, amount)?;
        let hold_id = match real {
            Some(Receipt::Hold(r)) => r.hold_id.clone(),
            _ => "?".to_owned(),
        };
        self.holds.insert(
            h.request_id.clone(),
            MHold {
                user: name.to_owned(),
                amount,
                expires: self.now + h.ttl,
                hold_id,
            },
        );
        self.user_mut(name).held += amount;
        Ok(Expect::Fresh(MOut::Hold {
            amount,
            available_after: self.available(name),
        }))
    }

    fn settle(&mut self, s: &Settle, real: Option<&Receipt>) -> Result<Expect, MErr> {
        let cost = s.cost.nanos();
        if cost < 0 {
            return Err(MErr::InvalidAmount);
        }
        let name = s.user_id.as_str();
        match (self.holds.get(&s.request_id), self.usage.get(&s.request_id)) {
            (Some(h), _) if h.user != name => return Err(MErr::InvalidField),
            (Some(_), _) => {}
            (None, Some(u)) => {
                if u.user != name {
                    return Err(MErr::InvalidField);
                }
                if u.charged + u.overage != cost {
                    return Err(MErr::SettleConflict);
                }
                return Ok(Expect::Same(Receipt::Settle(
                    tollgate::ledger::SettleReceipt {
                        request_id: s.request_id.clone(),
                        user_id: name.to_owned(),
                        entry: u.entry.clone(),
                        charged: cr(u.charged),
                        overage: cr(u.overage),
                    },
                )));
            }
            (None, None) => {}
        }
        if !self.users.contains_key(name) {
            return Err(MErr::UnknownUser);
        }
        self.touch(name);
        // At most the hold; a late settle (the hold expired) at most what is available.
        let ceiling = match self.holds.remove(&s.request_id) {
            Some(h) => {
                self.user_mut(name).held -= h.amount;
                h.amount
            }
            None => self.available(name),
        };
        let charged = cost.min(ceiling);
        let overage = cost - charged;
        let entry = if charged > 0 {
            let (seq, balance_after) = self.append(name, EntryType::Usage, -charged);
            let burns = self.burn(name, charged);
            self.user_mut(name).used += charged;
            self.record_debit(name, charged, true, burns, real);
            Some((seq, -charged, balance_after))
        } else {
            None
        };
        self.usage.insert(
            s.request_id.clone(),
            MUsage {
                user: name.to_owned(),
                charged,
                overage,
                entry: real_entry(real),
            },
        );
        Ok(Expect::Fresh(MOut::Settle {
            charged,
            overage,
            entry,
        }))
    }

    fn release(&mut self, r: &Release) -> Result<Expect, MErr> {
        let name = r.user_id.as_str();
        let mut released = 0;
        match self.holds.get(&r.request_id) {
            Some(h) if h.user != name => return Err(MErr::InvalidField),
            Some(_) => {
                self.touch(name);
                if let Some(h) = self.holds.remove(&r.request_id) {
                    self.user_mut(name).held -= h.amount;
                    released = h.amount;
                }
            }
            None if self.usage.contains_key(&r.request_id) => {
                return Ok(Expect::Fresh(MOut::Release { released: 0 }));
            }
            None if r.usage.is_some() => {
                if !self.users.contains_key(name) {
                    return Err(MErr::UnknownUser);
                }
                self.touch(name);
            }
            None => {}
        }
        if r.usage.is_some() {
            self.usage.insert(
                r.request_id.clone(),
                MUsage {
                    user: name.to_owned(),
                    charged: 0,
                    overage: 0,
                    entry: None,
                },
            );
        }
        Ok(Expect::Fresh(MOut::Release { released }))
    }

    /// Runs `op` against the model and compares with what the ledger returned.
    fn apply(&mut self, op: &Op, real: &Result<Receipt, LedgerError>) -> Result<(), String> {
        let keyed = match op {
            Op::AddCredits(a) => a
                .idempotency_key
                .clone()
                .map(|k| (k, Keyed::Add(a.clone()))),
            Op::Debit(d) => d
                .idempotency_key
                .clone()
                .map(|k| (k, Keyed::Debit(d.clone()))),
            _ => None,
        };
        if let Some((key, content)) = &keyed
            && let Some((recorded, outcome)) = self.keys.get(key)
        {
            let expected = if recorded != content {
                Err(MErr::IdempotencyConflict)
            } else {
                match outcome {
                    Ok(receipt) => Ok(Expect::Same(Receipt::Entry(receipt.clone()))),
                    Err(refusal) => Err(MErr::Refused(refusal.clone())),
                }
            };
            return compare(op, &expected, real);
        }
        let mut next = self.clone();
        let expected = next.run(op, real.as_ref().ok());
        compare(op, &expected, real)?;
        match (expected, keyed) {
            (Ok(_), Some((key, content))) => {
                let receipt = real_entry(real.as_ref().ok()).unwrap();
                next.keys.insert(key, (content, Ok(receipt)));
                *self = next;
            }
            (Ok(_), None) => *self = next,
            (Err(MErr::Refused(refusal)), Some((key, content))) => {
                self.keys.insert(key, (content, Err(refusal)));
            }
            (Err(_), _) => {}
        }
        Ok(())
    }

    fn check_account(&self, acc: &UserAccount) -> Result<(), String> {
        let u = self.user(&acc.user_id);
        // used / allowance × 100, two decimals; 0 without an allowance.
        let quota = if u.allowance > 0 {
            (Decimal::from(u.used) * Decimal::ONE_HUNDRED / Decimal::from(u.allowance)).round_dp(2)
        } else {
            Decimal::ZERO
        };
        let expected = (
            u.balance,
            u.held,
            u.balance - u.held,
            u.used,
            u.cap,
            u.allowance,
            u.auto_renew,
            u.lifetime,
            text(u.cycle_start),
            text(u.cycle_end),
            quota,
        );
        let got = (
            acc.balance.nanos(),
            acc.held.nanos(),
            acc.available.nanos(),
            acc.credits_used_this_month.nanos(),
            acc.monthly_spend_cap.map(Credits::nanos),
            acc.monthly_allowance.nanos(),
            acc.auto_renew,
            acc.lifetime_credits_purchased.nanos(),
            acc.billing_cycle_start.clone(),
            acc.billing_cycle_end.clone(),
            acc.quota_usage_percent,
        );
        if expected != got {
            return Err(format!(
                "account of {} (balance, held, available, used, cap, allowance, auto renew, \
                 lifetime, cycle start, cycle end, quota %):\n  \
                 model  {expected:?}\n  ledger {got:?}",
                acc.user_id
            ));
        }
        Ok(())
    }
}

fn compare(
    op: &Op,
    expected: &Result<Expect, MErr>,
    real: &Result<Receipt, LedgerError>,
) -> Result<(), String> {
    let agree = match (expected, real) {
        (Ok(Expect::Fresh(m)), Ok(r)) => *m == summarize(r),
        (Ok(Expect::Same(m)), Ok(r)) => m == r,
        (Err(e), Err(r)) => *e == classify(r),
        _ => false,
    };
    if agree {
        Ok(())
    } else {
        let real = real.as_ref().map_err(|e| (classify(e), e.to_string()));
        Err(format!("{op:?}\n  model  {expected:?}\n  ledger {real:?}"))
    }
}

// ------------------------------------------------------------------------------------------------
// Generated steps.

#[derive(Debug, Clone)]
enum RefundPick {
    /// The nth debit written so far (modulo their count), for this percentage of what is left to
    /// refund of it (above 100: more than is left), by its own user or by whoever the op names.
    Debit {
        nth: usize,
        percent: u8,
        own_user: bool,
    },
    /// A credit-adding entry: not a debit.
    Credit(usize),
    Unknown,
}

#[derive(Debug, Clone)]
enum CostPick {
    Zero,
    /// This percentage of the hold.
    Below(u8),
    Equal,
    /// The hold and this much more.
    Above(i64),
    Absolute(i64),
}

#[derive(Debug, Clone)]
enum GOp {
    Add {
        user: u8,
        kind: CreditKind,
        amount: i64,
        expires_in_minutes: Option<i64>,
        key: Option<u8>,
        refund: Option<RefundPick>,
    },
    Debit {
        user: u8,
        amount: i64,
        key: Option<u8>,
    },
    Hold {
        user: u8,
        request: u8,
        amount: i64,
        ttl_minutes: i64,
    },
    /// With `open`, the nth open hold's user and request (if there is one) instead.
    Settle {
        user: u8,
        request: u8,
        open: Option<usize>,
        cost: CostPick,
    },
    Release {
        user: u8,
        request: u8,
        open: Option<usize>,
        log_usage: bool,
    },
    /// An earlier operation again, as it was or with its content changed (same key or request).
    Retry { pick: usize, change: bool },
}

#[derive(Debug, Clone)]
enum GStep {
    Create {
        allowance: i64,
        cap: Option<i64>,
    },
    Change {
        user: u8,
        allowance: Option<i64>,
        cap: Option<Option<i64>>,
        auto_renew: Option<bool>,
    },
    One(GOp),
    Batch(Vec<GOp>),
    AdvanceMinutes(i64),
}

fn amount(max_whole: i64) -> impl Strategy<Value = i64> {
    (
        1..=max_whole,
        prop_oneof![4 => Just(0i64), 1 => Just(NANO / 4), 1 => Just(1i64)],
    )
        .prop_map(|(w, f)| w * NANO + f)
}

fn user() -> impl Strategy<Value = u8> {
    prop_oneof![20 => 0u8..3, 1 => Just(3u8)]
}

fn key() -> impl Strategy<Value = Option<u8>> {
    prop::option::weighted(0.5, 0u8..8)
}

fn request() -> impl Strategy<Value = u8> {
    0u8..10
}

fn gop() -> impl Strategy<Value = GOp> {
    let refund = prop_oneof![
        8 => (any::<usize>(), 1u8..=110, prop::bool::weighted(0.85)).prop_map(
            |(nth, percent, own_user)| RefundPick::Debit { nth, percent, own_user }
        ),
        1 => any::<usize>().prop_map(RefundPick::Credit),
        1 => Just(RefundPick::Unknown),
    ];
    let add = (
        user(),
        prop_oneof![
            4 => Just(CreditKind::Purchase),
            2 => Just(CreditKind::Bonus),
            3 => Just(CreditKind::Refund),
            2 => Just(CreditKind::AdminAdjustment),
        ],
        amount(250),
        any::<bool>(),
        prop::option::weighted(0.4, 10i64..=60 * 24 * 45),
        key(),
        prop::option::weighted(0.7, refund),
    )
        .prop_map(
            |(user, kind, amount, negative, expires_in_minutes, key, refund)| {
                let refund = refund.filter(|_| kind == CreditKind::Refund);
                GOp::Add {
                    user,
                    kind,
                    amount: if negative && kind == CreditKind::AdminAdjustment {
                        -amount
                    } else {
                        amount
                    },
                    expires_in_minutes: expires_in_minutes.filter(|_| refund.is_none()),
                    key,
                    refund,
                }
            },
        );
    let debit = (user(), amount(100), key()).prop_map(|(user, amount, key)| GOp::Debit {
        user,
        amount,
        key,
    });
    let hold = (user(), request(), amount(80), 5i64..=90).prop_map(
        |(user, request, amount, ttl_minutes)| GOp::Hold {
            user,
            request,
            amount,
            ttl_minutes,
        },
    );
    let cost = prop_oneof![
        1 => Just(CostPick::Zero),
        3 => (1u8..100).prop_map(CostPick::Below),
        2 => Just(CostPick::Equal),
        2 => amount(50).prop_map(CostPick::Above),
        1 => amount(150).prop_map(CostPick::Absolute),
    ];
    let open = || prop::option::weighted(0.75, any::<usize>());
    let settle =
        (user(), request(), open(), cost).prop_map(|(user, request, open, cost)| GOp::Settle {
            user,
            request,
            open,
            cost,
        });
    let release =
        (user(), request(), open(), any::<bool>()).prop_map(|(user, request, open, log_usage)| {
            GOp::Release {
                user,
                request,
                open,
                log_usage,
            }
        });
    let retry = (any::<usize>(), prop::bool::weighted(0.3))
        .prop_map(|(pick, change)| GOp::Retry { pick, change });
    prop_oneof![
        6 => add,
        3 => debit,
        4 => hold,
        4 => settle,
        2 => release,
        3 => retry,
    ]
}

fn step() -> impl Strategy<Value = GStep> {
    let minutes = prop_oneof![
        3 => 1i64..=30,
        2 => 31i64..=60 * 24,
        2 => (1i64..=40).prop_map(|days| days * 24 * 60 + 7),
    ];
    prop_oneof![
        12 => gop().prop_map(GStep::One),
        2 => prop::collection::vec(gop(), 2..=5).prop_map(GStep::Batch),
        4 => minutes.prop_map(GStep::AdvanceMinutes),
        1 => create(),
        1 => change(),
    ]
}

fn change() -> impl Strategy<Value = GStep> {
    (
        user(),
        prop::option::weighted(
            0.5,
            prop_oneof![Just(0i64), Just(30 * NANO), Just(80 * NANO)],
        ),
        prop::option::weighted(0.5, prop::option::of(amount(300))),
        prop::option::weighted(0.3, any::<bool>()),
    )
        .prop_map(|(user, allowance, cap, auto_renew)| GStep::Change {
            user,
            allowance,
            cap,
            auto_renew,
        })
}

fn create() -> impl Strategy<Value = GStep> {
    (
        prop_oneof![2 => Just(0i64), 1 => Just(50 * NANO), 1 => Just(120 * NANO)],
        prop::option::weighted(0.3, amount(400)),
    )
        .prop_map(|(allowance, cap)| GStep::Create { allowance, cap })
}

const STARTS: [OffsetDateTime; 4] = [
    datetime!(2026-01-31 09:00 UTC),
    datetime!(2026-03-15 12:30 UTC),
    datetime!(2028-02-29 00:00 UTC),
    datetime!(2026-12-31 23:59 UTC),
];

// ------------------------------------------------------------------------------------------------
// The harness: one real ledger, one model, the same steps.

struct Harness {
    _dir: TempDir,
    clock: ManualClock,
    ledger: Ledger,
    model: Model,
    /// Operations run so far, for retries.
    done: Vec<Op>,
    /// Read every account after each step (bringing users up to date), or leave the books lazy.
    touch_checks: bool,
    steps: usize,
}

fn usage_record() -> UsageRecord {
    UsageRecord {
        endpoint: "/v1/chat/completions".to_owned(),
        model: "gpt-test".to_owned(),
        prompt_tokens: 10,
        completion_tokens: 20,
        ..UsageRecord::default()
    }
}

fn failed_usage() -> UsageRecord {
    UsageRecord {
        error_type: Some("upstream_error".to_owned()),
        http_status: Some(502),
        ..usage_record()
    }
}

impl Harness {
    fn new(start: OffsetDateTime, touch_checks: bool) -> Self {
        let dir = TempDir::new().unwrap();
        let clock = ManualClock::new(start);
        let ledger = Ledger::open(
            &dir.path().join("t.db"),
            OpenMode::CreateIfMissing,
            Arc::new(clock.clone()),
        )
        .unwrap();
        Harness {
            _dir: dir,
            clock,
            ledger,
            model: Model::new(start),
            done: Vec::new(),
            touch_checks,
            steps: 0,
        }
    }

    fn advance(&mut self, by: Duration) {
        self.clock.advance(by);
        self.model.now += by;
    }

    fn create(&mut self, name: &str, allowance: i64, cap: Option<i64>) -> Result<(), String> {
        let new = NewUser {
            monthly_allowance: cr(allowance),
            monthly_spend_cap: cap.map(cr),
            ..NewUser::new(name)
        };
        let real = self.ledger.create_user(&new);
        let expected = self.model.create_user(name, allowance, cap);
        match (&expected, &real) {
            (Ok(()), Ok(acc)) => self.model.check_account(acc),
            (Err(e), Err(r)) if *e == classify(r) => Ok(()),
            _ => Err(format!(
                "create {name}: model {expected:?}, ledger {:?}",
                real.map_err(|e| e.to_string())
            )),
        }
    }

    /// `u0`..`u2` among the users created so far; `u3` never exists.
    fn user_name(&self, index: u8) -> String {
        let created = u8::try_from(self.model.users.len().max(1)).unwrap();
        uname(if index < 3 { index % created } else { index })
    }

    /// (user, request id) of a settle or release: the nth open hold's, or as generated.
    fn target(&self, user: u8, request: u8, open: Option<usize>) -> (String, String) {
        let holds = &self.model.holds;
        match open {
            Some(n) if !holds.is_empty() => {
                let (request_id, h) = holds.iter().nth(n % holds.len()).unwrap();
                (h.user.clone(), request_id.clone())
            }
            _ => (self.user_name(user), format!("req-{request}")),
        }
    }

    fn resolve(&self, g: &GOp) -> Option<Op> {
        let future = |minutes: i64| {
            (self.model.now + Duration::minutes(minutes))
                .format(&Rfc3339)
                .unwrap()
        };
        Some(match g {
            GOp::Add {
                user,
                kind,
                amount,
                expires_in_minutes,
                key,
                refund,
            } => {
                let pick_from = |list: &Vec<String>, n: usize| {
                    if list.is_empty() {
                        "0190a000-0000-7000-8000-000000000000".to_owned()
                    } else {
                        list[n % list.len()].clone()
                    }
                };
                let mut user_id = self.user_name(*user);
                let mut amount = *amount;
                let refund_of = refund.as_ref().map(|pick| match pick {
                    RefundPick::Debit {
                        nth,
                        percent,
                        own_user,
                    } => {
                        let id = pick_from(&self.model.debit_order, *nth);
                        if let Some(d) = self.model.debits.get(&id) {
                            if *own_user {
                                user_id = d.user.clone();
                            }
                            amount = ((d.amount - d.refunded) / 100 * i64::from(*percent)).max(1);
                        }
                        id
                    }
                    RefundPick::Credit(n) => pick_from(&self.model.credit_entries, *n),
                    RefundPick::Unknown => pick_from(&Vec::new(), 0),
                });
                Op::AddCredits(AddCredits {
                    idempotency_key: key.map(|k| format!("key-{k}")),
                    refund_of,
                    expires_at: expires_in_minutes.map(future),
                    ..AddCredits::new(user_id, cr(amount), *kind)
                })
            }
            GOp::Debit { user, amount, key } => Op::Debit(Debit {
                user_id: self.user_name(*user),
                amount: cr(*amount),
                idempotency_key: key.map(|k| format!("key-{k}")),
                note: None,
            }),
            GOp::Hold {
                user,
                request,
                amount,
                ttl_minutes,
            } => Op::Hold(HoldRequest {
                user_id: self.user_name(*user),
                request_id: format!("req-{request}"),
                amount: cr(*amount),
                ttl: Duration::minutes(*ttl_minutes),
            }),
            GOp::Settle {
                user,
                request,
                open,
                cost,
            } => {
                let (user_id, request_id) = self.target(*user, *request, *open);
                let base = self
                    .model
                    .holds
                    .get(&request_id)
                    .map_or(40 * NANO, |h| h.amount);
                let cost = match cost {
                    CostPick::Zero => 0,
                    CostPick::Below(pct) => base / 100 * i64::from(*pct),
                    CostPick::Equal => base,
                    CostPick::Above(extra) => base + extra,
                    CostPick::Absolute(a) => *a,
                };
                Op::Settle(Settle {
                    user_id,
                    request_id,
                    cost: cr(cost),
                    usage: usage_record(),
                })
            }
            GOp::Release {
                user,
                request,
                open,
                log_usage,
            } => {
                let (user_id, request_id) = self.target(*user, *request, *open);
                Op::Release(Release {
                    user_id,
                    request_id,
                    usage: log_usage.then(failed_usage),
                })
            }
            GOp::Retry { pick, change } => {
                if self.done.is_empty() {
                    return None;
                }
                let mut op = self.done[pick % self.done.len()].clone();
                if *change {
                    let more = |c: Credits| cr(c.nanos() + NANO);
                    match &mut op {
                        Op::AddCredits(a) => a.amount = more(a.amount),
                        Op::Debit(d) => d.amount = more(d.amount),
                        Op::Hold(h) => h.amount = more(h.amount),
                        Op::Settle(s) => s.cost = more(s.cost),
                        Op::Release(r) => {
                            r.usage = if r.usage.is_some() {
                                None
                            } else {
                                Some(failed_usage())
                            }
                        }
                    }
                }
                op
            }
        })
    }

    /// Runs one operation through a typed method or a batch of one, alternately.
    fn run_one(&mut self, op: &Op) -> Result<Receipt, LedgerError> {
        if self.steps.is_multiple_of(2) {
            return match self.ledger.apply(std::slice::from_ref(op)) {
                Ok(mut results) => results.pop().unwrap(),
                Err(e) => Err(LedgerError::Corrupt(format!(
                    "the batch failed as a whole: {e}"
                ))),
            };
        }
        match op.clone() {
            Op::AddCredits(a) => self.ledger.add_credits(a).map(Receipt::Entry),
            Op::Debit(d) => self.ledger.debit(d).map(Receipt::Entry),
            Op::Hold(h) => self.ledger.hold(h).map(Receipt::Hold),
            Op::Settle(s) => self.ledger.settle(s).map(Receipt::Settle),
            Op::Release(r) => self.ledger.release(r).map(Receipt::Release),
        }
    }

    fn step(&mut self, step: &GStep) -> Result<(), String> {
        self.steps += 1;
        match step {
            GStep::Create { allowance, cap } => {
                let n = self.model.users.len();
                let name = uname(u8::try_from(if n < MAX_USERS { n } else { 0 }).unwrap());
                self.create(&name, *allowance, *cap)?;
            }
            GStep::Change {
                user,
                allowance,
                cap,
                auto_renew,
            } => {
                let name = self.user_name(*user);
                let changes = UserChanges {
                    monthly_allowance: allowance.map(cr),
                    monthly_spend_cap: cap.map(|c| c.map(cr)),
                    auto_renew: *auto_renew,
                    ..UserChanges::default()
                };
                let real = self.ledger.change_user(&name, &changes);
                let expected = self.model.change_user(&name, *allowance, *cap, *auto_renew);
                match (&expected, &real) {
                    (Ok(()), Ok(acc)) => self.model.check_account(acc)?,
                    (Err(e), Err(r)) if *e == classify(r) => {}
                    _ => {
                        return Err(format!(
                            "change {name}: model {expected:?}, ledger {:?}",
                            real.map_err(|e| e.to_string())
                        ));
                    }
                }
            }
            GStep::AdvanceMinutes(m) => self.advance(Duration::minutes(*m)),
            GStep::One(g) => {
                if let Some(op) = self.resolve(g) {
                    let real = self.run_one(&op);
                    if let Err(e) = &real
                        && e.is_storage()
                    {
                        return Err(format!("storage error for {op:?}: {e}"));
                    }
                    self.model.apply(&op, &real)?;
                    self.done.push(op);
                }
            }
            GStep::Batch(gs) => {
                let ops: Vec<Op> = gs.iter().filter_map(|g| self.resolve(g)).collect();
                let results = self
                    .ledger
                    .apply(&ops)
                    .map_err(|e| format!("the batch failed as a whole: {e}\n  {ops:#?}"))?;
                if results.len() != ops.len() {
                    return Err(format!("{} results for {} ops", results.len(), ops.len()));
                }
                for (op, real) in ops.iter().zip(&results) {
                    self.model
                        .apply(op, real)
                        .map_err(|e| format!("in a batch: {e}"))?;
                }
                self.done.extend(ops);
            }
        }
        self.check(self.touch_checks)
    }

    /// Compares the books with the model; with `touch`, reads every account first (which
    /// brings each user up to date, in the model too).
    fn check(&mut self, touch: bool) -> Result<(), String> {
        let names: Vec<String> = self.model.users.keys().cloned().collect();
        if touch {
            for name in &names {
                self.model.touch(name);
                let acc = self.ledger.account(name).map_err(|e| e.to_string())?;
                self.model.check_account(&acc)?;
            }
        }
        for name in &names {
            let lots = self.ledger.live_lots(name).map_err(|e| e.to_string())?;
            let got: Vec<_> = lots
                .iter()
                .map(|l| (l.id, l.kind, l.remaining.nanos(), l.expires_at.clone()))
                .collect();
            let expected: Vec<_> = self
                .model
                .lots_in_burn_order(name)
                .into_iter()
                .map(|id| {
                    let l = &self.model.lots[&id];
                    (id, l.kind, l.remaining, l.expires.map(text))
                })
                .collect();
            if got != expected {
                return Err(format!(
                    "live lots of {name} (id, kind, remaining, expiry) in burn order:\n  \
                     model  {expected:?}\n  ledger {got:?}"
                ));
            }
        }
        let report = self.ledger.verify().map_err(|e| e.to_string())?;
        if !report.is_clean() {
            return Err(format!("verify: {:#?}", report.violations));
        }
        let counts = (report.users, report.entries, report.lots, report.open_holds);
        let expected = (
            self.model.users.len() as u64,
            self.model.seq as u64,
            self.model.lots.len() as u64,
            self.model.holds.len() as u64,
        );
        if counts != expected {
            return Err(format!(
                "verify counted (users, entries, lots, open holds) {counts:?}, model {expected:?}"
            ));
        }
        Ok(())
    }

    /// The end of a case: every account, every journal, and one usage entry per charged request.
    fn finish(&mut self) -> Result<(), String> {
        self.check(true)?;
        let names: Vec<String> = self.model.users.keys().cloned().collect();
        let mut usage_entries: BTreeMap<String, usize> = BTreeMap::new();
        for name in &names {
            let mut history = self
                .ledger
                .history(name, u32::MAX)
                .map_err(|e| e.to_string())?;
            history.reverse();
            let got: Vec<(EntryType, i64)> = history
                .iter()
                .map(|e| (e.transaction_type, e.amount.nanos()))
                .collect();
            let expected = &self.model.user(name).journal;
            if got != *expected {
                return Err(format!(
                    "journal of {name}:\n  model  {expected:?}\n  ledger {got:?}"
                ));
            }
            for e in &history {
                if let Some(r) = &e.request_id {
                    if e.transaction_type != EntryType::Usage {
                        return Err(format!("a {} entry names request {r}", e.transaction_type));
                    }
                    *usage_entries.entry(r.clone()).or_default() += 1;
                }
            }
        }
        let expected: BTreeMap<String, usize> = self
            .model
            .usage
            .iter()
            .filter(|(_, u)| u.charged > 0)
            .map(|(r, _)| (r.clone(), 1))
            .collect();
        if usage_entries != expected {
            return Err(format!(
                "usage entries per request id:\n  model  {expected:?}\n  ledger {usage_entries:?}"
            ));
        }
        Ok(())
    }
}

fn run_case(start: usize, touch_checks: bool, steps: &[GStep]) -> Result<(), String> {
    let mut h = Harness::new(STARTS[start % STARTS.len()], touch_checks);
    for (i, step) in steps.iter().enumerate() {
        h.step(step)
            .map_err(|e| format!("step {i} ({step:?}) at {}:\n{e}", text(h.model.now)))?;
    }
    h.finish()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn ledger_agrees_with_the_model(
        start in 0usize..STARTS.len(),
        touch_checks in any::<bool>(),
        mut all in prop::collection::vec(create(), 2..=MAX_USERS),
        steps in prop::collection::vec(step(), 1..=40),
    ) {
        all.extend(steps);
        run_case(start, touch_checks, &all).map_err(TestCaseError::fail)?;
    }
}

// ------------------------------------------------------------------------------------------------
// The tricky cases by hand: each step is also checked against the model.

fn credits(whole: i64) -> Credits {
    cr(whole * NANO)
}

fn add(user: &str, whole: i64, kind: CreditKind) -> Op {
    Op::AddCredits(AddCredits::new(user, credits(whole), kind))
}

fn add_expiring(user: &str, whole: i64, kind: CreditKind, at: OffsetDateTime) -> Op {
    Op::AddCredits(AddCredits {
        expires_at: Some(at.format(&Rfc3339).unwrap()),
        ..AddCredits::new(user, credits(whole), kind)
    })
}

fn refund(user: &str, whole: i64, of: &str) -> Op {
    Op::AddCredits(AddCredits {
        refund_of: Some(of.to_owned()),
        ..AddCredits::new(user, credits(whole), CreditKind::Refund)
    })
}

fn debit(user: &str, whole: i64, key: Option<&str>) -> Op {
    Op::Debit(Debit {
        user_id: user.to_owned(),
        amount: credits(whole),
        idempotency_key: key.map(str::to_owned),
        note: None,
    })
}

fn hold(user: &str, request: &str, whole: i64, ttl_minutes: i64) -> Op {
    Op::Hold(HoldRequest {
        user_id: user.to_owned(),
        request_id: request.to_owned(),
        amount: credits(whole),
        ttl: Duration::minutes(ttl_minutes),
    })
}

fn settle(user: &str, request: &str, whole: i64) -> Op {
    Op::Settle(Settle {
        user_id: user.to_owned(),
        request_id: request.to_owned(),
        cost: credits(whole),
        usage: usage_record(),
    })
}

impl Harness {
    /// Runs `op` on the ledger and the model, checks them, and returns the ledger's result.
    fn run(&mut self, op: Op) -> Result<Receipt, LedgerError> {
        self.steps += 1;
        let real = self.run_one(&op);
        self.model.apply(&op, &real).unwrap();
        self.done.push(op);
        self.check(self.touch_checks).unwrap();
        real
    }

    fn ok(&mut self, op: Op) -> Receipt {
        self.run(op).unwrap()
    }

    fn entry(&mut self, op: Op) -> EntryReceipt {
        match self.ok(op) {
            Receipt::Entry(e) => e,
            other => panic!("not an entry: {other:?}"),
        }
    }

    fn account(&mut self, user: &str) -> UserAccount {
        self.model.touch(user);
        let acc = self.ledger.account(user).unwrap();
        self.model.check_account(&acc).unwrap();
        acc
    }

    /// (kind, whole credits left, expiry) of the user's live lots in burn order.
    fn lots(&self, user: &str) -> Vec<(CreditKind, i64, Option<String>)> {
        self.ledger
            .live_lots(user)
            .unwrap()
            .into_iter()
            .map(|l| (l.kind, l.remaining.nanos() / NANO, l.expires_at))
            .collect()
    }

    /// (type, whole credits) of the user's journal, oldest first.
    fn journal(&mut self, user: &str) -> Vec<(EntryType, i64)> {
        let mut history = self.ledger.history(user, 1_000).unwrap();
        history.reverse();
        history
            .into_iter()
            .map(|e| (e.transaction_type, e.amount.nanos() / NANO))
            .collect()
    }

    fn new_user(&mut self, name: &str, allowance: i64, cap: Option<i64>) {
        self.create(name, allowance * NANO, cap.map(|c| c * NANO))
            .unwrap();
    }
}

#[test]
fn renewal_expires_the_old_allowance_and_grants_the_new() {
    let start = datetime!(2026-01-31 09:00 UTC);
    let mut h = Harness::new(start, true);
    h.new_user("u0", 100, None);
    h.ok(add("u0", 20, CreditKind::Purchase));
    h.ok(debit("u0", 30, None));
    assert_eq!(
        h.lots("u0"),
        [
            (
                CreditKind::Allowance,
                70,
                Some("2026-02-28T09:00:00.000Z".into())
            ),
            (CreditKind::Purchase, 20, None),
        ]
    );
    h.advance(Duration::days(28) - Duration::MINUTE);
    assert_eq!(h.account("u0").balance, credits(90));
    h.advance(Duration::MINUTE);
    let acc = h.account("u0");
    assert_eq!(
        (acc.balance, acc.credits_used_this_month),
        (credits(120), Credits::ZERO)
    );
    assert_eq!(acc.billing_cycle_start, "2026-02-28T09:00:00.000Z");
    assert_eq!(acc.billing_cycle_end, "2026-03-31T09:00:00.000Z");
    assert_eq!(
        h.lots("u0"),
        [
            (
                CreditKind::Allowance,
                100,
                Some("2026-03-31T09:00:00.000Z".into())
            ),
            (CreditKind::Purchase, 20, None),
        ]
    );
    // Idle for two cycles: one expiry, one grant for the cycle containing now, none for the
    // cycle skipped.
    h.advance(Duration::days(70));
    let acc = h.account("u0");
    assert_eq!(acc.billing_cycle_start, "2026-04-30T09:00:00.000Z");
    assert_eq!(acc.balance, credits(120));
    assert_eq!(
        h.journal("u0"),
        [
            (EntryType::Allowance, 100),
            (EntryType::Purchase, 20),
            (EntryType::Usage, -30),
            (EntryType::Expiry, -70),
            (EntryType::Allowance, 100),
            (EntryType::Expiry, -100),
            (EntryType::Allowance, 100),
        ]
    );
    h.finish().unwrap();
}

#[test]
fn expiry_spares_what_an_open_hold_needs_until_it_settles() {
    let start = datetime!(2026-03-15 12:30 UTC);
    let mut h = Harness::new(start, true);
    h.new_user("u0", 0, None);
    h.ok(add_expiring(
        "u0",
        60,
        CreditKind::Bonus,
        start + Duration::hours(1),
    ));
    h.ok(add("u0", 10, CreditKind::Purchase));
    h.ok(hold("u0", "r1", 65, 120));
    h.advance(Duration::minutes(61));
    let acc = h.account("u0");
    assert_eq!(
        (acc.balance, acc.held, acc.available),
        (credits(65), credits(65), Credits::ZERO)
    );
    assert_eq!(
        h.lots("u0"),
        [
            (
                CreditKind::Bonus,
                55,
                Some("2026-03-15T13:30:00.000Z".into())
            ),
            (CreditKind::Purchase, 10, None),
        ]
    );
    let Receipt::Settle(s) = h.ok(settle("u0", "r1", 40)) else {
        panic!("not a settle")
    };
    assert_eq!((s.charged, s.overage), (credits(40), Credits::ZERO));
    // The expired lot paid first; what is left of it expires at the next touch.
    assert_eq!(h.account("u0").balance, credits(10));
    assert_eq!(h.lots("u0"), [(CreditKind::Purchase, 10, None)]);
    assert_eq!(
        h.journal("u0"),
        [
            (EntryType::Bonus, 60),
            (EntryType::Purchase, 10),
            (EntryType::Expiry, -5),
            (EntryType::Usage, -40),
            (EntryType::Expiry, -15),
        ]
    );
    h.finish().unwrap();
}

#[test]
fn refund_of_a_debit_goes_back_to_the_lots_it_burned() {
    let start = datetime!(2026-03-15 12:30 UTC);
    let mut h = Harness::new(start, true);
    h.new_user("u0", 0, None);
    h.new_user("u1", 0, None);
    let bonus = h.entry(add_expiring(
        "u0",
        30,
        CreditKind::Bonus,
        start + Duration::days(10),
    ));
    h.ok(add("u0", 50, CreditKind::Purchase));
    let spent = h.entry(debit("u0", 60, None));
    let bonus_expiry = Some("2026-03-25T12:30:00.000Z".to_owned());
    assert_eq!(h.lots("u0"), [(CreditKind::Purchase, 20, None)]);
    // Last burned first: the purchase gets its 30 back before the bonus.
    h.ok(refund("u0", 20, &spent.entry_id));
    assert_eq!(h.lots("u0"), [(CreditKind::Purchase, 40, None)]);
    h.ok(refund("u0", 15, &spent.entry_id));
    assert_eq!(
        h.lots("u0"),
        [
            (CreditKind::Bonus, 5, bonus_expiry),
            (CreditKind::Purchase, 50, None),
        ]
    );
    assert_eq!(h.account("u0").credits_used_this_month, credits(25));
    let too_much = h.run(refund("u0", 26, &spent.entry_id));
    assert!(matches!(too_much, Err(LedgerError::NotRefundable { .. })));
    let not_a_debit = h.run(refund("u0", 1, &bonus.entry_id));
    assert!(matches!(
        not_a_debit,
        Err(LedgerError::NotRefundable { .. })
    ));
    let other_user = h.run(refund("u1", 1, &spent.entry_id));
    assert!(matches!(other_user, Err(LedgerError::NotRefundable { .. })));
    // Once the bonus has expired, what cannot go back becomes a refund lot of its own.
    h.advance(Duration::days(11));
    h.ok(refund("u0", 25, &spent.entry_id));
    assert_eq!(
        h.lots("u0"),
        [
            (CreditKind::Refund, 25, None),
            (CreditKind::Purchase, 50, None),
        ]
    );
    let acc = h.account("u0");
    assert_eq!(
        (acc.balance, acc.credits_used_this_month),
        (credits(75), Credits::ZERO)
    );
    h.finish().unwrap();
}

#[test]
fn late_settle_after_the_hold_expired_charges_what_is_left() {
    let mut h = Harness::new(datetime!(2026-03-15 12:30 UTC), true);
    h.new_user("u0", 0, None);
    h.ok(add("u0", 60, CreditKind::Purchase));
    h.ok(hold("u0", "r1", 50, 10));
    h.advance(Duration::minutes(11));
    assert_eq!(h.account("u0").held, Credits::ZERO);
    let first = h.ok(settle("u0", "r1", 80));
    let Receipt::Settle(s) = &first else {
        panic!("not a settle")
    };
    assert_eq!((s.charged, s.overage), (credits(60), credits(20)));
    assert_eq!(h.ok(settle("u0", "r1", 80)), first);
    assert!(matches!(
        h.run(settle("u0", "r1", 70)),
        Err(LedgerError::SettleConflict { .. })
    ));
    assert!(matches!(
        h.run(hold("u0", "r1", 50, 10)),
        Err(LedgerError::AlreadySettled(_))
    ));
    let released = h.ok(Op::Release(Release {
        user_id: "u0".into(),
        request_id: "r1".into(),
        usage: None,
    }));
    assert_eq!(
        released,
        Receipt::Release(tollgate::ledger::ReleaseReceipt {
            request_id: "r1".into(),
            released: Credits::ZERO
        })
    );
    assert_eq!(h.account("u0").balance, Credits::ZERO);
    h.finish().unwrap();
}

#[test]
fn overage_is_booked_not_charged() {
    let mut h = Harness::new(datetime!(2026-03-15 12:30 UTC), true);
    h.new_user("u0", 0, Some(500));
    h.ok(add("u0", 100, CreditKind::Purchase));
    h.ok(hold("u0", "r1", 40, 10));
    let Receipt::Settle(s) = h.ok(settle("u0", "r1", 55)) else {
        panic!("not a settle")
    };
    assert_eq!((s.charged, s.overage), (credits(40), credits(15)));
    assert_eq!(s.entry.map(|e| e.amount), Some(credits(-40)));
    let acc = h.account("u0");
    assert_eq!(
        (acc.balance, acc.held, acc.credits_used_this_month),
        (credits(60), Credits::ZERO, credits(40))
    );
    h.finish().unwrap();
}

#[test]
fn a_keyed_refusal_is_permanent() {
    let mut h = Harness::new(datetime!(2026-03-15 12:30 UTC), true);
    h.new_user("u0", 0, Some(100));
    let refused = h.run(debit("u0", 50, Some("k1")));
    assert!(matches!(
        refused,
        Err(LedgerError::Refused(Refusal::InsufficientCredit { .. }))
    ));
    h.ok(add("u0", 200, CreditKind::Purchase));
    let again = h.run(debit("u0", 50, Some("k1")));
    assert_eq!(
        again.map_err(|e| e.to_string()),
        refused.map_err(|e| e.to_string())
    );
    assert!(matches!(
        h.run(debit("u0", 51, Some("k1"))),
        Err(LedgerError::IdempotencyConflict { .. })
    ));
    let capped = h.run(debit("u0", 150, Some("k2")));
    assert!(matches!(
        capped,
        Err(LedgerError::Refused(Refusal::SpendCapReached { .. }))
    ));
    let paid = h.entry(debit("u0", 50, Some("k3")));
    assert_eq!(h.entry(debit("u0", 50, Some("k3"))), paid);
    assert_eq!(h.account("u0").balance, credits(150));
    h.finish().unwrap();
}

// Regressions for what the model found.

/// A hold retried after it expired used to return the released hold's receipt; and the retry
/// did not save what bringing the user up to date did, breaking the balance chain.
#[test]
fn a_hold_retried_after_it_expired_reserves_anew() {
    let start = datetime!(2026-03-15 12:30 UTC);
    let mut h = Harness::new(start, false);
    h.new_user("u0", 0, None);
    h.ok(add_expiring(
        "u0",
        10,
        CreditKind::Bonus,
        start + Duration::minutes(3),
    ));
    h.ok(add("u0", 50, CreditKind::Purchase));
    let Receipt::Hold(first) = h.ok(hold("u0", "r1", 30, 10)) else {
        panic!("not a hold")
    };
    // The bonus expires; the retry brings the user up to date and must save it.
    h.advance(Duration::minutes(5));
    let Receipt::Hold(same) = h.ok(hold("u0", "r1", 30, 10)) else {
        panic!("not a hold")
    };
    assert_eq!(same.hold_id, first.hold_id);
    assert_eq!(same.available_after, credits(20));
    h.advance(Duration::minutes(5));
    let Receipt::Hold(renewed) = h.ok(hold("u0", "r1", 30, 10)) else {
        panic!("not a hold")
    };
    assert_ne!(renewed.hold_id, first.hold_id);
    let acc = h.account("u0");
    assert_eq!((acc.balance, acc.held), (credits(50), credits(30)));
    h.finish().unwrap();
}

/// A refund of last cycle's usage used to lower this cycle's spend, lifting the spend cap.
#[test]
fn a_refund_of_last_cycles_usage_leaves_this_cycles_spend() {
    let mut h = Harness::new(datetime!(2026-03-15 12:30 UTC), true);
    h.new_user("u0", 0, Some(100));
    h.ok(add("u0", 300, CreditKind::Purchase));
    let last_cycle = h.entry(debit("u0", 40, None));
    h.advance(Duration::days(31));
    h.ok(debit("u0", 90, None));
    h.ok(refund("u0", 40, &last_cycle.entry_id));
    let acc = h.account("u0");
    assert_eq!(acc.credits_used_this_month, credits(90));
    assert!(matches!(
        h.run(debit("u0", 20, None)),
        Err(LedgerError::Refused(Refusal::SpendCapReached { .. }))
    ));
    h.finish().unwrap();
}

/// Logging a released request of an unknown user used to fail the whole batch on a foreign key.
#[test]
fn a_release_for_an_unknown_user_fails_alone() {
    let mut h = Harness::new(datetime!(2026-03-15 12:30 UTC), true);
    h.new_user("u0", 0, None);
    let ops = [
        add("u0", 10, CreditKind::Purchase),
        Op::Release(Release {
            user_id: "nobody".into(),
            request_id: "r1".into(),
            usage: Some(failed_usage()),
        }),
    ];
    let results = h.ledger.apply(&ops).unwrap();
    for (op, real) in ops.iter().zip(&results) {
        h.model.apply(op, real).unwrap();
    }
    assert!(matches!(results[1], Err(LedgerError::UnknownUser(_))));
    assert_eq!(h.account("u0").balance, credits(10));
    h.finish().unwrap();
}
