//! Stripe's signed event deliveries (`POST /stripe/webhook`; the HTTP handler, which reads the
//! body and verifies the signature first, is `http/stripe_webhook.rs`). Refusals and failures
//! are a [`StripeError`].
//!
//! Guarantees:
//! - Nothing is stored for a delivery that is too large ([`WEBHOOK_BODY_BYTES_MAX`], 413), not
//!   signed with our webhook secret, or signed more than `signature::TOLERANCE_SECS` away from
//!   now (400): see [`super::signature`].
//! - A verified event is handled in ONE transaction that first records its id
//!   (`INSERT … ON CONFLICT DO NOTHING` on `stripe_events`): an id already there is answered
//!   200 `duplicate` and nothing else happens; concurrent deliveries of one event wait on the
//!   PRIMARY KEY and all but one are duplicates.
//! - `checkout.session.completed` with `payment_status = "paid"` and
//!   `checkout.session.async_payment_succeeded` grant the session found in `checkout_sessions`
//!   (locked `FOR UPDATE`) if it is still `open`, through `central::credit::grant_purchase`
//!   (key `stripe:<session id>`), and mark it `granted`: two event types, redeliveries or
//!   reordering can never grant one session twice. A session still `creating` (the server died
//!   before storing Stripe's answer) is found by the `checkout_id` in its metadata. A completed but unpaid session grants
//!   nothing (`unpaid`); an unknown session is recorded (`unknown_session`); other types are
//!   `ignored`. `charge.refunded`, `charge.dispute.created` and `charge.dispute.closed` take
//!   credit back, or give it back, through [`super::refunds`] (tied to the session by the
//!   `payment_intent` stored at its grant). The outcome is stored with the event id; a failure rolls everything back (the
//!   event id too) and answers 5xx, so Stripe redelivers.
//! - The handler counts every delivery by outcome; logs carry event ids and outcomes, never the
//!   secret or the signature.

use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};

use super::{StripeError, refunds};
use crate::central::credit::{PurchasedPackage, grant_purchase};
use crate::central::credits_from_db;

/// Largest webhook body read (Stripe's events are a few KiB).
pub const WEBHOOK_BODY_BYTES_MAX: usize = 256 * 1024;
/// Longest event id or session id stored.
pub const STRIPE_ID_LEN_MAX: usize = 255;

/// The event types that pay for a session.
pub const SESSION_COMPLETED: &str = "checkout.session.completed";
pub const ASYNC_PAYMENT_SUCCEEDED: &str = "checkout.session.async_payment_succeeded";
/// The event types that give money back, and so take credit back ([`super::refunds`]).
pub const CHARGE_REFUNDED: &str = "charge.refunded";
pub const DISPUTE_CREATED: &str = "charge.dispute.created";
pub const DISPUTE_CLOSED: &str = "charge.dispute.closed";

/// What happened to a delivery (metric label and `stripe_events.outcome`).
pub mod outcome {
    pub const GRANTED: &str = "granted";
    pub const ALREADY_GRANTED: &str = "already_granted";
    pub const UNPAID: &str = "unpaid";
    pub const UNKNOWN_SESSION: &str = "unknown_session";
    pub const NO_SESSION_ID: &str = "no_session_id";
    pub const IGNORED: &str = "ignored";
    pub const TAKEN_BACK: &str = "taken_back";
    pub const ALREADY_TAKEN_BACK: &str = "already_taken_back";
    pub const UNKNOWN_PAYMENT: &str = "unknown_payment";
    pub const UNKNOWN_DISPUTE: &str = "unknown_dispute";
    pub const ALREADY_CLOSED: &str = "already_closed";
    pub const DISPUTE_WON: &str = "dispute_won";
    pub const DISPUTE_LOST: &str = "dispute_lost";
    pub const MALFORMED_OBJECT: &str = "malformed_object";
    pub const DUPLICATE: &str = "duplicate";
    pub const BAD_SIGNATURE: &str = "bad_signature";
    pub const STALE: &str = "stale";
    pub const TOO_LARGE: &str = "too_large";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const NOT_CONFIGURED: &str = "not_configured";
    pub const ERROR: &str = "error";
}

/// The answer to a delivery Stripe should not resend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookAnswer {
    pub received: bool,
    pub outcome: String,
}

/// The fields of an event we use (Stripe sends many more; they are ignored).
#[derive(Debug, Deserialize)]
pub(crate) struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: Option<EventData>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct EventData {
    pub object: serde_json::Value,
}

/// Whether an outcome wrote an inbox event (a grant, or credit taken or given back).
pub fn wrote_an_event(outcome: &str) -> bool {
    [outcome::GRANTED, outcome::TAKEN_BACK, outcome::DISPUTE_WON].contains(&outcome)
}

/// Records the event and acts on it, in one transaction; returns the outcome stored with it.
pub(crate) async fn apply(
    pool: &Pool,
    event: &Event,
    session_id: Option<&str>,
) -> Result<&'static str, StripeError> {
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    let fresh = tx
        .query_opt(
            "INSERT INTO stripe_events (event_id, event_type, session_id, outcome) \
             VALUES ($1, $2, $3, 'processing') ON CONFLICT (event_id) DO NOTHING RETURNING 1",
            &[&event.id, &event.kind, &session_id],
        )
        .await?;
    if fresh.is_none() {
        tx.rollback().await?;
        return Ok(outcome::DUPLICATE);
    }
    let object = event.data.as_ref().map(|d| &d.object);
    let paid = object
        .and_then(|o| o.get("payment_status"))
        .and_then(|v| v.as_str())
        == Some("paid");
    let result = match event.kind.as_str() {
        SESSION_COMPLETED if !paid => outcome::UNPAID,
        SESSION_COMPLETED | ASYNC_PAYMENT_SUCCEEDED => match session_id {
            None => outcome::NO_SESSION_ID,
            Some(session_id) => {
                let checkout_id = object
                    .and_then(|o| o.pointer("/metadata/checkout_id"))
                    .and_then(|v| v.as_str())
                    .and_then(|v| v.parse::<uuid::Uuid>().ok());
                let payment_intent = object
                    .and_then(|o| o.get("payment_intent"))
                    .and_then(|v| v.as_str())
                    .filter(|v| !v.is_empty() && v.len() <= STRIPE_ID_LEN_MAX);
                grant_session(&tx, session_id, checkout_id, payment_intent).await?
            }
        },
        CHARGE_REFUNDED | DISPUTE_CREATED | DISPUTE_CLOSED => {
            let cents_field = if event.kind == CHARGE_REFUNDED {
                "amount_refunded"
            } else {
                "amount"
            };
            match object.and_then(|o| refunds::MoneyBack::parse(o, cents_field)) {
                None => outcome::MALFORMED_OBJECT,
                Some(money) => match event.kind.as_str() {
                    CHARGE_REFUNDED => refunds::charge_refunded(&tx, &money).await?,
                    DISPUTE_CREATED => refunds::dispute_created(&tx, &money).await?,
                    _ => refunds::dispute_closed(&tx, &money).await?,
                },
            }
        }
        _ => outcome::IGNORED,
    };
    tx.execute(
        "UPDATE stripe_events SET outcome = $2 WHERE event_id = $1",
        &[&event.id, &result],
    )
    .await?;
    tx.commit().await?;
    Ok(result)
}

/// Grants an open session once and marks it granted. A session whose checkout the server
/// recorded but whose id it never stored (it died while Stripe answered) is found by the
/// `checkout_id` in its metadata and completed first.
async fn grant_session(
    tx: &deadpool_postgres::Transaction<'_>,
    session_id: &str,
    checkout_id: Option<uuid::Uuid>,
    payment_intent: Option<&str>,
) -> Result<&'static str, StripeError> {
    if let Some(checkout_id) = checkout_id {
        tx.execute(
            "UPDATE checkout_sessions SET session_id = $2, status = 'open' \
             WHERE checkout_id = $1 AND session_id IS NULL AND status = 'creating'",
            &[&checkout_id, &session_id],
        )
        .await?;
    }
    let Some(row) = tx
        .query_opt(
            "SELECT user_id, package_name, credits, status FROM checkout_sessions \
             WHERE session_id = $1 FOR UPDATE",
            &[&session_id],
        )
        .await?
    else {
        return Ok(outcome::UNKNOWN_SESSION);
    };
    let status: String = row.get("status");
    if status != "open" {
        return Ok(outcome::ALREADY_GRANTED);
    }
    let user_id: String = row.get("user_id");
    let package = PurchasedPackage {
        name: row.get("package_name"),
        credits: credits_from_db(row.get("credits"))?,
    };
    grant_purchase(tx, &user_id, &package, session_id).await?;
    tx.execute(
        "UPDATE checkout_sessions SET status = 'granted', granted_at = now(), \
         payment_intent_id = $2 WHERE session_id = $1",
        &[&session_id, &payment_intent],
    )
    .await?;
    Ok(outcome::GRANTED)
}
