//! Money that goes back to the buyer takes its credit back: `charge.refunded`,
//! `charge.dispute.created` and `charge.dispute.closed` (won gives it back).
//!
//! Guarantees:
//! - The charge or dispute is tied to the granted session by its `payment_intent`
//!   (`checkout_sessions.payment_intent_id`, stored at the grant); the session row is locked
//!   `FOR UPDATE`, so concurrent events for one purchase take turns.
//! - What is taken back is the share of the package's credit that the money returned is of the
//!   price paid: `credits × cents ÷ price cents`, exact integer arithmetic over nano-credits,
//!   rounded down — and never more than what is left of the purchase
//!   (`credits − credits_taken_back`), so a refund and a dispute of one payment cannot take back
//!   more than was bought.
//! - Refunds are cumulative in Stripe (`amount_refunded`): each charge's handled total is kept
//!   (`stripe_refunds`), and an event takes back only the difference between its total's share
//!   and the handled total's — a redelivered or older event takes nothing. The operation key is
//!   `stripe:refund:<charge>:<cumulative cents>`, so even a replayed operation is one entry.
//! - A dispute takes back its amount's share when it opens (`stripe:dispute:<id>`) and gives
//!   exactly that back if it is won (`stripe:dispute_won:<id>`); lost changes nothing more.
//! - Each booking is a central `admin_adjustment` to the home agent (`credit::stripe_adjustment`)
//!   in the webhook's transaction; reconcile pairs it with the agent's entry like any other.

use rust_decimal::Decimal;
use tollgate_schema::money::Credits;

use super::webhook::{STRIPE_ID_LEN_MAX, outcome};
use crate::central::credit::stripe_adjustment;
use crate::central::{CentralError, credits_from_db};

type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// The fields of a charge or dispute object we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoneyBack {
    /// The charge's or the dispute's id.
    pub id: String,
    pub payment_intent: String,
    /// Refunds: the charge's cumulative `amount_refunded`; disputes: the disputed `amount`.
    pub cents: i64,
    /// Disputes: `status` (`won`, `lost`, …).
    pub status: Option<String>,
}

impl MoneyBack {
    /// Reads the object; `None` when a field we need is missing or malformed.
    pub fn parse(object: &serde_json::Value, cents_field: &str) -> Option<MoneyBack> {
        let text = |name: &str| {
            object
                .get(name)
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty() && s.len() <= STRIPE_ID_LEN_MAX)
                .map(str::to_owned)
        };
        Some(MoneyBack {
            id: text("id")?,
            payment_intent: text("payment_intent")?,
            cents: object
                .get(cents_field)
                .and_then(|v| v.as_i64())
                .filter(|c| *c >= 0)?,
            status: text("status"),
        })
    }
}

/// The granted session a payment bought, locked.
struct Purchase {
    session_id: String,
    user_id: String,
    credits: Credits,
    taken_back: Credits,
    price_cents: i64,
}

async fn purchase(tx: &Tx<'_>, payment_intent: &str) -> Result<Option<Purchase>, CentralError> {
    let Some(row) = tx
        .query_opt(
            "SELECT session_id, user_id, credits, credits_taken_back, price_usd \
             FROM checkout_sessions WHERE payment_intent_id = $1 AND status = 'granted' \
             FOR UPDATE",
            &[&payment_intent],
        )
        .await?
    else {
        return Ok(None);
    };
    let price: Decimal = row.get("price_usd");
    let price_cents = (price * Decimal::from(100))
        .trunc()
        .try_into()
        .map_err(|_| CentralError::Internal(anyhow::anyhow!("a stored price is unreadable")))?;
    Ok(Some(Purchase {
        session_id: row.get("session_id"),
        user_id: row.get("user_id"),
        credits: credits_from_db(row.get("credits"))?,
        taken_back: credits_from_db(row.get("credits_taken_back"))?,
        price_cents,
    }))
}

/// `credits × cents ÷ price_cents`, rounded down, for `cents` clamped to `0..=price_cents`.
pub fn share(credits: Credits, cents: i64, price_cents: i64) -> Credits {
    if price_cents <= 0 {
        return Credits::ZERO;
    }
    let cents = i128::from(cents.clamp(0, price_cents));
    let nanos = i128::from(credits.nanos()) * cents / i128::from(price_cents);
    // At most `credits` (cents ≤ price), so it fits.
    Credits::from_nanos(i64::try_from(nanos).unwrap_or(credits.nanos()))
}

/// Books `-amount` (taking back at most what is left of the purchase) and records it; returns
/// what was taken.
async fn take_back(
    tx: &Tx<'_>,
    purchase: &Purchase,
    amount: Credits,
    key: &str,
    note: &str,
) -> Result<Credits, CentralError> {
    let left = purchase
        .credits
        .checked_sub(purchase.taken_back)
        .unwrap_or(Credits::ZERO);
    let amount = amount.min(left);
    if !amount.is_positive() {
        return Ok(Credits::ZERO);
    }
    let negative = amount
        .checked_neg()
        .ok_or_else(|| CentralError::invalid("amount", "out of range"))?;
    stripe_adjustment(tx, &purchase.user_id, negative, key, note).await?;
    tx.execute(
        "UPDATE checkout_sessions SET credits_taken_back = credits_taken_back + $2 \
         WHERE session_id = $1",
        &[&purchase.session_id, &amount.to_decimal()],
    )
    .await?;
    Ok(amount)
}

/// `taken_back`, or `already_taken_back` when nothing was left to take.
fn taken_outcome(taken: Credits) -> &'static str {
    if taken.is_positive() {
        outcome::TAKEN_BACK
    } else {
        outcome::ALREADY_TAKEN_BACK
    }
}

/// `charge.refunded`: takes back the share of what was refunded since the last event.
pub async fn charge_refunded(
    tx: &Tx<'_>,
    charge: &MoneyBack,
) -> Result<&'static str, CentralError> {
    let Some(purchase) = purchase(tx, &charge.payment_intent).await? else {
        return Ok(outcome::UNKNOWN_PAYMENT);
    };
    let handled: i64 = tx
        .query_opt(
            "SELECT refunded_cents FROM stripe_refunds WHERE charge_id = $1",
            &[&charge.id],
        )
        .await?
        .map_or(0, |r| r.get("refunded_cents"));
    if charge.cents <= handled {
        return Ok(outcome::ALREADY_TAKEN_BACK);
    }
    let amount = share(purchase.credits, charge.cents, purchase.price_cents)
        .checked_sub(share(purchase.credits, handled, purchase.price_cents))
        .unwrap_or(Credits::ZERO);
    let key = format!("stripe:refund:{}:{}", charge.id, charge.cents);
    let note = format!(
        "Stripe refund of charge {} ({} of {} cents refunded)",
        charge.id, charge.cents, purchase.price_cents
    );
    let taken = take_back(tx, &purchase, amount, &key, &note).await?;
    tx.execute(
        "INSERT INTO stripe_refunds (charge_id, session_id, refunded_cents) VALUES ($1, $2, $3) \
         ON CONFLICT (charge_id) DO UPDATE SET refunded_cents = excluded.refunded_cents, \
         updated_at = now()",
        &[&charge.id, &purchase.session_id, &charge.cents],
    )
    .await?;
    Ok(taken_outcome(taken))
}

/// `charge.dispute.created`: takes back the disputed amount's share.
pub async fn dispute_created(
    tx: &Tx<'_>,
    dispute: &MoneyBack,
) -> Result<&'static str, CentralError> {
    let Some(purchase) = purchase(tx, &dispute.payment_intent).await? else {
        return Ok(outcome::UNKNOWN_PAYMENT);
    };
    let known = tx
        .query_opt(
            "SELECT 1 FROM stripe_disputes WHERE dispute_id = $1",
            &[&dispute.id],
        )
        .await?;
    if known.is_some() {
        return Ok(outcome::ALREADY_TAKEN_BACK);
    }
    let amount = share(purchase.credits, dispute.cents, purchase.price_cents);
    let key = format!("stripe:dispute:{}", dispute.id);
    let note = format!(
        "Stripe dispute {} opened ({} of {} cents disputed)",
        dispute.id, dispute.cents, purchase.price_cents
    );
    let taken = take_back(tx, &purchase, amount, &key, &note).await?;
    tx.execute(
        "INSERT INTO stripe_disputes (dispute_id, session_id, credits, status) \
         VALUES ($1, $2, $3, 'taken_back')",
        &[&dispute.id, &purchase.session_id, &taken.to_decimal()],
    )
    .await?;
    Ok(taken_outcome(taken))
}

/// `charge.dispute.closed`: won gives back what the dispute took; lost keeps it taken.
pub async fn dispute_closed(
    tx: &Tx<'_>,
    dispute: &MoneyBack,
) -> Result<&'static str, CentralError> {
    let Some(row) = tx
        .query_opt(
            "SELECT d.session_id, d.credits, d.status, s.user_id FROM stripe_disputes d \
             JOIN checkout_sessions s ON s.session_id = d.session_id \
             WHERE d.dispute_id = $1 FOR UPDATE OF d, s",
            &[&dispute.id],
        )
        .await?
    else {
        return Ok(outcome::UNKNOWN_DISPUTE);
    };
    let status: String = row.get("status");
    if status != "taken_back" {
        return Ok(outcome::ALREADY_CLOSED);
    }
    let won = dispute.status.as_deref() == Some("won");
    let lost = dispute.status.as_deref() == Some("lost");
    if !won && !lost {
        return Ok(outcome::IGNORED);
    }
    let session_id: String = row.get("session_id");
    let credits = credits_from_db(row.get("credits"))?;
    if won && credits.is_positive() {
        let user_id: String = row.get("user_id");
        let key = format!("stripe:dispute_won:{}", dispute.id);
        let note = format!("Stripe dispute {} won: credit given back", dispute.id);
        stripe_adjustment(tx, &user_id, credits, &key, &note).await?;
        tx.execute(
            "UPDATE checkout_sessions SET credits_taken_back = credits_taken_back - $2 \
             WHERE session_id = $1",
            &[&session_id, &credits.to_decimal()],
        )
        .await?;
    }
    tx.execute(
        "UPDATE stripe_disputes SET status = $2, closed_at = now() WHERE dispute_id = $1",
        &[&dispute.id, &if won { "won" } else { "lost" }],
    )
    .await?;
    Ok(if won {
        outcome::DISPUTE_WON
    } else {
        outcome::DISPUTE_LOST
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_is_exact_rounded_down_and_never_more_than_bought() {
        let c = |t: &str| t.parse::<Credits>().unwrap();
        assert_eq!(share(c("500"), 2250, 4500), c("250"));
        assert_eq!(share(c("100"), 1, 3), c("33.333333333"));
        // Cumulative shares add up to the whole: 1/3 + 1/3 + 1/3 of 100.
        let parts = [1, 2, 3].map(|k| share(c("100"), k, 3));
        assert_eq!(parts[2], c("100"));
        assert_eq!(share(c("500"), 9999, 4500), c("500"));
        assert_eq!(share(c("500"), -5, 4500), Credits::ZERO);
        assert_eq!(
            share(Credits::MAX, 4499, 4500).nanos(),
            (i128::from(i64::MAX) * 4499 / 4500) as i64
        );
        assert_eq!(share(c("500"), 10, 0), Credits::ZERO);
    }
}
