//! The ledger's decisions as pure functions over plain values: who may reserve what, which lots
//! a debit burns, what expires, when a billing cycle renews, what a refund restores.
//!
//! Nothing here touches SQLite or the clock; the SQL modules load values, call these, and write
//! what they return. Each function states its contract and the tests below check it.

use rust_decimal::Decimal;
use time::OffsetDateTime;
use tollgate_schema::money::Credits;

use super::clock::add_months;
use super::error::Refusal;

/// The money state of one user that admission decisions need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    pub balance: Credits,
    pub held: Credits,
    pub used_this_month: Credits,
    pub spend_cap: Option<Credits>,
}

impl Account {
    /// What may still be reserved or debited: balance − held (never negative by the schema's
    /// CHECK held ≤ balance).
    pub fn available(&self) -> Credits {
        self.balance
            .checked_sub(self.held)
            .unwrap_or(Credits::ZERO)
            .max(Credits::ZERO)
    }

    /// Room left under the monthly spend cap, counting open holds as spent; `None` = no cap.
    pub fn cap_headroom(&self) -> Option<Credits> {
        self.spend_cap.map(|cap| {
            cap.checked_sub(self.used_this_month)
                .and_then(|c| c.checked_sub(self.held))
                .unwrap_or(Credits::ZERO)
                .max(Credits::ZERO)
        })
    }

    /// The most a new reservation or debit may take now.
    pub fn affordable(&self) -> Credits {
        match self.cap_headroom() {
            Some(headroom) => self.available().min(headroom),
            None => self.available(),
        }
    }

    /// Admits spending `needed` (a hold or a direct debit), or says why not. Credit is checked
    /// before the cap, so a user out of both hears about credit first.
    pub fn admit(&self, user: &str, needed: Credits) -> Result<(), Refusal> {
        if needed > self.available() {
            return Err(Refusal::InsufficientCredit {
                user: user.to_owned(),
                available: self.available(),
                needed,
            });
        }
        if let (Some(cap), Some(headroom)) = (self.spend_cap, self.cap_headroom())
            && needed > headroom
        {
            return Err(Refusal::SpendCapReached {
                user: user.to_owned(),
                cap,
                used: self.used_this_month,
                held: self.held,
                needed,
            });
        }
        Ok(())
    }
}

/// A lot with credit left, as the burn and expiry plans see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveLot {
    pub id: i64,
    pub remaining: Credits,
    pub priority: i64,
    pub expires_at: Option<OffsetDateTime>,
}

impl LiveLot {
    fn expired(&self, now: OffsetDateTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// Which lots a debit of `amount` burns, in order: lots already expired first (what is left of
/// them only exists to pay for requests reserved before they expired), then by priority, earliest
/// expiry (no expiry last), oldest. Returns `None` if the lots cannot cover `amount`.
/// The sort key of the burn order (see [`burn_plan`]): smaller burns first.
pub fn burn_key(
    lot: &LiveLot,
    now: OffsetDateTime,
) -> (bool, i64, bool, Option<OffsetDateTime>, i64) {
    (
        !lot.expired(now),
        lot.priority,
        lot.expires_at.is_none(),
        lot.expires_at,
        lot.id,
    )
}

pub fn burn_plan(
    lots: &[LiveLot],
    amount: Credits,
    now: OffsetDateTime,
) -> Option<Vec<(i64, Credits)>> {
    let mut ordered: Vec<&LiveLot> = lots.iter().filter(|l| l.remaining.is_positive()).collect();
    ordered.sort_by_key(|l| burn_key(l, now));
    let mut left = amount;
    let mut plan = Vec::new();
    for lot in ordered {
        if !left.is_positive() {
            break;
        }
        let take = lot.remaining.min(left);
        plan.push((lot.id, take));
        left = left.checked_sub(take)?;
    }
    (!left.is_positive()).then_some(plan)
}

/// What expires now: every lot past its expiry loses what it has left, except what open holds
/// still need: expiry never takes the balance below `held` (the rest expires once those requests
/// settle). Oldest expiry first.
pub fn expiry_plan(
    lots: &[LiveLot],
    account: &Account,
    now: OffsetDateTime,
) -> Vec<(i64, Credits)> {
    let mut expired: Vec<&LiveLot> = lots
        .iter()
        .filter(|l| l.expired(now) && l.remaining.is_positive())
        .collect();
    expired.sort_by_key(|l| (l.expires_at, l.id));
    let mut free = account.available();
    let mut plan = Vec::new();
    for lot in expired {
        let take = lot.remaining.min(free);
        if take.is_positive() {
            plan.push((lot.id, take));
            free = free.checked_sub(take).unwrap_or(Credits::ZERO);
        }
    }
    plan
}

/// The billing cycle `[start, end)` that contains `now`, counting whole months from `anchor`
/// (the user's creation). `now` before `anchor` gives the first cycle.
pub fn cycle_containing(
    anchor: OffsetDateTime,
    now: OffsetDateTime,
) -> (OffsetDateTime, OffsetDateTime) {
    // Months elapsed, estimated from the calendar then corrected by at most one step each way.
    let estimate = (now.year() - anchor.year()) * 12 + (now.month() as i32 - anchor.month() as i32);
    let mut k = estimate.max(0);
    while k > 0 && add_months(anchor, k) > now {
        k -= 1;
    }
    while add_months(anchor, k + 1) <= now {
        k += 1;
    }
    (add_months(anchor, k), add_months(anchor, k + 1))
}

/// credits used this month / monthly allowance × 100, rounded to two decimals; 0 when there is
/// no allowance (SCHEMA.md's quota usage function).
pub fn quota_usage_percent(used: Credits, allowance: Credits) -> Decimal {
    if !allowance.is_positive() {
        return Decimal::ZERO;
    }
    (used.to_decimal() * Decimal::ONE_HUNDRED / allowance.to_decimal()).round_dp(2)
}

/// How a refund of an earlier debit goes back: into the lots that debit burned, last burned
/// first, each up to what it gave and only while the lot is live; whatever cannot go back (a lot
/// since expired) becomes a new lot. `burned` is the debit's burns in burn order, each with what
/// earlier refunds already restored to it. Returns (restorations, amount for a new lot).
pub fn refund_plan(
    burned: &[(LiveLot, Credits, Credits)],
    amount: Credits,
    now: OffsetDateTime,
) -> (Vec<(i64, Credits)>, Credits) {
    let mut left = amount;
    let mut restore = Vec::new();
    for (lot, gave, already_restored) in burned.iter().rev() {
        if !left.is_positive() {
            break;
        }
        let open = gave.checked_sub(*already_restored).unwrap_or(Credits::ZERO);
        if lot.expired(now) || !open.is_positive() {
            continue;
        }
        let take = open.min(left);
        restore.push((lot.id, take));
        left = left.checked_sub(take).unwrap_or(Credits::ZERO);
    }
    (restore, left)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn c(n: i64) -> Credits {
        Credits::from_whole(n).unwrap()
    }

    fn lot(id: i64, remaining: i64, priority: i64, expires_at: Option<OffsetDateTime>) -> LiveLot {
        LiveLot {
            id,
            remaining: c(remaining),
            priority,
            expires_at,
        }
    }

    const NOW: OffsetDateTime = datetime!(2026-06-15 12:00 UTC);

    #[test]
    fn admission_checks_credit_then_cap() {
        let account = Account {
            balance: c(100),
            held: c(30),
            used_this_month: c(50),
            spend_cap: Some(c(90)),
        };
        assert_eq!(account.available(), c(70));
        assert_eq!(account.cap_headroom(), Some(c(10)));
        assert_eq!(account.affordable(), c(10));
        assert!(account.admit("u", c(10)).is_ok());
        assert!(matches!(
            account.admit("u", c(11)),
            Err(Refusal::SpendCapReached { .. })
        ));
        assert!(matches!(
            account.admit("u", c(71)),
            Err(Refusal::InsufficientCredit { .. })
        ));
        let uncapped = Account {
            spend_cap: None,
            ..account
        };
        assert_eq!(uncapped.affordable(), c(70));
    }

    #[test]
    fn burn_order_is_expired_priority_expiry_age() {
        let later = Some(datetime!(2026-07-01 0:00 UTC));
        let sooner = Some(datetime!(2026-06-20 0:00 UTC));
        let past = Some(datetime!(2026-06-01 0:00 UTC));
        let lots = [
            lot(1, 10, 40, None),   // purchase, oldest
            lot(2, 10, 20, later),  // bonus expiring later
            lot(3, 10, 20, sooner), // bonus expiring sooner
            lot(4, 10, 20, None),   // bonus, no expiry
            lot(5, 10, 40, past),   // expired, kept for open holds
            lot(6, 0, 10, None),    // empty: never burned
        ];
        let plan = burn_plan(&lots, c(45), NOW).unwrap();
        assert_eq!(
            plan,
            vec![(5, c(10)), (3, c(10)), (2, c(10)), (4, c(10)), (1, c(5))]
        );
        assert_eq!(burn_plan(&lots, c(51), NOW), None);
        assert_eq!(burn_plan(&lots, c(50), NOW).map(|p| p.len()), Some(5));
    }

    #[test]
    fn expiry_spares_what_open_holds_need() {
        let past = Some(datetime!(2026-06-01 0:00 UTC));
        let lots = [lot(1, 60, 10, past), lot(2, 40, 40, None)];
        let account = Account {
            balance: c(100),
            held: c(90),
            used_this_month: c(0),
            spend_cap: None,
        };
        assert_eq!(expiry_plan(&lots, &account, NOW), vec![(1, c(10))]);
        let idle = Account {
            held: c(0),
            ..account
        };
        assert_eq!(expiry_plan(&lots, &idle, NOW), vec![(1, c(60))]);
        let not_yet = [lot(1, 60, 10, Some(NOW + time::Duration::SECOND))];
        assert!(expiry_plan(&not_yet, &idle, NOW).is_empty());
        let at_instant = [lot(1, 60, 10, Some(NOW))];
        assert_eq!(expiry_plan(&at_instant, &idle, NOW), vec![(1, c(60))]);
    }

    #[test]
    fn cycles_count_months_from_the_anchor() {
        let anchor = datetime!(2026-01-31 09:00 UTC);
        let cases = [
            (
                datetime!(2026-01-31 09:00 UTC),
                datetime!(2026-01-31 09:00 UTC),
                datetime!(2026-02-28 09:00 UTC),
            ),
            (
                datetime!(2026-02-28 08:59 UTC),
                datetime!(2026-01-31 09:00 UTC),
                datetime!(2026-02-28 09:00 UTC),
            ),
            (
                datetime!(2026-02-28 09:00 UTC),
                datetime!(2026-02-28 09:00 UTC),
                datetime!(2026-03-31 09:00 UTC),
            ),
            (
                datetime!(2027-03-01 00:00 UTC),
                datetime!(2027-02-28 09:00 UTC),
                datetime!(2027-03-31 09:00 UTC),
            ),
            (
                datetime!(2025-01-01 00:00 UTC),
                datetime!(2026-01-31 09:00 UTC),
                datetime!(2026-02-28 09:00 UTC),
            ),
        ];
        for (now, start, end) in cases {
            assert_eq!(cycle_containing(anchor, now), (start, end), "now {now}");
        }
    }

    #[test]
    fn quota_percentage() {
        assert_eq!(quota_usage_percent(c(25), c(100)), Decimal::new(2500, 2));
        assert_eq!(quota_usage_percent(c(1), c(3)), Decimal::new(3333, 2));
        assert_eq!(quota_usage_percent(c(5), Credits::ZERO), Decimal::ZERO);
    }

    #[test]
    fn refunds_go_back_to_live_lots_last_burned_first() {
        let past = Some(datetime!(2026-06-01 0:00 UTC));
        let burned = [
            (lot(1, 0, 10, past), c(10), c(0)), // expired since: cannot take credit back
            (lot(2, 0, 20, None), c(10), c(4)), // 4 already refunded
            (lot(3, 0, 40, None), c(5), c(0)),
        ];
        let (restore, new_lot) = refund_plan(&burned, c(12), NOW);
        assert_eq!(restore, vec![(3, c(5)), (2, c(6))]);
        assert_eq!(new_lot, c(1));
        let (restore, new_lot) = refund_plan(&burned, c(3), NOW);
        assert_eq!(restore, vec![(3, c(3))]);
        assert_eq!(new_lot, Credits::ZERO);
    }
}
