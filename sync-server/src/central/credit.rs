//! Central credit: admin grants, refunds and adjustments, and Stripe purchases.
//!
//! Guarantees:
//! - A credit operation never touches a balance: it writes its `central_operations` row (kind
//!   `credit`, amount, the home agent, the inbox seq) and one `Credit` event to the user's home
//!   agent in one transaction. The agent applies it as a journal entry whose `idempotency_key` is
//!   the operation key; reconcile pairs the two.
//! - Keys: `admin:<operation_id>` for admin operations (API and CLI alike), `stripe:<checkout
//!   session id>` for purchases, so a second Stripe event type for the same session can never
//!   grant twice.
//! - Same key and content → the stored result and no second event; same key, other content →
//!   [`CentralError::IdempotencyConflict`]. Concurrent calls with one key (two replicas) produce
//!   one event (see [`super::operation`]).
//! - Amounts: grant and refund strictly positive, adjust any non-zero amount (a negative one the
//!   agent cannot cover is refused by the agent and shows in reconcile); never zero.
//! - A fleet user's credit is booked on their pool in the same transaction (the operation row
//!   with no agent; no event): agents get it through grants (`super::escrow`). Credit coming in
//!   pays their debt first. Taking credit away takes it from the pool, never from what agents
//!   hold; money Stripe returned beyond the pool becomes the user's debt ([`MOVE_POSITION`]).
//! - A home user must exist centrally with a home agent that is not revoked (a purchase, already
//!   paid, is recorded even for a revoked home so the payment is never lost; reconcile shows it
//!   as not applied).

use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};
use tokio_postgres::Transaction;
use tollgate_schema::money::Credits;
use tollgate_schema::wire::{CreditEvent, CreditEventKind, EventBody};
use uuid::Uuid;

use super::operation::{self, Begin, Claim};
use super::{Applied, CentralError, inbox, validate};

/// What an admin may do to a user's credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditKind {
    /// Add credit: a `bonus` entry.
    Grant,
    /// Give credit back: a `refund` entry.
    Refund,
    /// Correct by a signed amount: an `admin_adjustment` entry.
    Adjust,
}

impl CreditKind {
    /// The journal entry type the agent writes.
    pub const fn event_kind(self) -> CreditEventKind {
        match self {
            CreditKind::Grant => CreditEventKind::Bonus,
            CreditKind::Refund => CreditEventKind::Refund,
            CreditKind::Adjust => CreditEventKind::AdminAdjustment,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            CreditKind::Grant => "grant",
            CreditKind::Refund => "refund",
            CreditKind::Adjust => "adjust",
        }
    }
}

impl std::str::FromStr for CreditKind {
    type Err = CentralError;

    fn from_str(s: &str) -> Result<Self, CentralError> {
        match s {
            "grant" => Ok(CreditKind::Grant),
            "refund" => Ok(CreditKind::Refund),
            "adjust" => Ok(CreditKind::Adjust),
            other => Err(CentralError::invalid(
                "kind",
                format!("{other:?} is not one of grant, refund, adjust"),
            )),
        }
    }
}

/// An admin's credit operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditOp {
    pub user_id: String,
    pub kind: CreditKind,
    pub amount: Credits,
    /// The admin's idempotency id; the key is `admin:<operation_id>`.
    pub operation_id: String,
    pub note: Option<String>,
    /// Who asked: the admin token's name, or `cli`.
    pub actor: String,
}

/// What a credit operation did (stored with its key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditResult {
    pub operation_key: String,
    pub user_id: String,
    /// The journal entry type the agent will write.
    pub kind: CreditEventKind,
    pub amount: Credits,
    pub package: Option<String>,
    /// The home agent the event went to; `None` for a fleet user, whose credit is booked on
    /// their pool at once (no agent, no event).
    pub agent: Option<String>,
    pub agent_id: Option<Uuid>,
    pub inbox_seq: Option<i64>,
    pub event_id: Option<Uuid>,
    /// A fleet user's pool after this operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<Credits>,
    /// The user's debt after this operation, when they owe any (money Stripe returned beyond
    /// their balance or pool, overdrafts not yet repaid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debt: Option<Credits>,
    /// A home user: the part of money returned their home could not cover, owed instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debt_booked: Option<Credits>,
    /// A home user: the part of this credit that repaid their debt instead of reaching the home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debt_repaid: Option<Credits>,
}

/// The canonical content of an admin credit operation (its fingerprint's input).
#[derive(Serialize)]
struct AdminFingerprint<'a> {
    op: &'static str,
    user_id: &'a str,
    kind: CreditKind,
    amount: Credits,
    note: Option<&'a str>,
}

/// Applies an admin's grant, refund or adjustment, idempotently by its operation id.
pub async fn credit(pool: &Pool, op: &CreditOp) -> Result<Applied<CreditResult>, CentralError> {
    validate::user_id("user_id", &op.user_id)?;
    validate::operation_id(&op.operation_id)?;
    validate::text("note", op.note.as_deref(), validate::NOTE_LEN_MAX)?;
    if op.amount == Credits::ZERO {
        return Err(CentralError::invalid("amount", "must not be zero"));
    }
    if op.amount.is_negative() && op.kind != CreditKind::Adjust {
        return Err(CentralError::invalid(
            "amount",
            format!(
                "a {} must be positive (only adjust may be negative), got {}",
                op.kind.as_str(),
                op.amount
            ),
        ));
    }
    let key = operation::admin_key(&op.operation_id);
    let fingerprint = operation::fingerprint(&AdminFingerprint {
        op: "admin_credit",
        user_id: &op.user_id,
        kind: op.kind,
        amount: op.amount,
        note: op.note.as_deref(),
    })?;
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    let applied = credit_in_tx(
        &tx,
        &CreditRequest {
            key: &key,
            fingerprint: &fingerprint,
            user_id: &op.user_id,
            kind: op.kind.event_kind(),
            amount: op.amount,
            package: None,
            note: op.note.as_deref(),
            admin_user_id: Some(&op.actor),
            actor: &op.actor,
            allow_revoked_home: false,
            may_book_debt: false,
        },
    )
    .await?;
    if applied.replayed {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(applied)
}

/// A package as bought: what the checkout session recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchasedPackage {
    pub name: String,
    pub credits: Credits,
}

/// The operation key of a Stripe purchase.
pub fn purchase_key(session_id: &str) -> String {
    format!("{}{session_id}", operation::STRIPE_KEY_PREFIX)
}

/// Grants a paid Stripe checkout session inside the caller's transaction (the webhook's), keyed
/// `stripe:<session_id>`: a second call for the same session returns the first result and writes
/// nothing.
///
/// The event names the package only when the agent will accept it as such (the package is still
/// active with the same credits and the user's tier reaches its minimum; the home agent sees the
/// catalog in the same inbox order); otherwise it is a plain purchase of the credits bought, with
/// the package named in the note.
pub async fn grant_purchase(
    tx: &Transaction<'_>,
    user_id: &str,
    package: &PurchasedPackage,
    session_id: &str,
) -> Result<Applied<CreditResult>, CentralError> {
    if !package.credits.is_positive() {
        return Err(CentralError::invalid(
            "credits",
            format!("a purchase must be positive, got {}", package.credits),
        ));
    }
    let key = purchase_key(session_id);
    let fingerprint = operation::fingerprint(&(
        "stripe_purchase",
        user_id,
        &package.name,
        package.credits,
        session_id,
    ))?;
    let agent_accepts_package: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM credit_packages p, user_credits u \
             WHERE p.name = $1 AND p.is_active AND p.credits = $2 AND u.user_id = $3 \
               AND (p.min_tier IS NULL OR array_position($4::text[], u.subscription_tier) \
                                          >= array_position($4::text[], p.min_tier))) \
             AS accepts",
            &[
                &package.name,
                &package.credits.to_decimal(),
                &user_id,
                &tollgate_schema::wire::TIERS,
            ],
        )
        .await?
        .get("accepts");
    let note = if agent_accepts_package {
        format!("Stripe checkout {session_id}")
    } else {
        format!(
            "Stripe checkout {session_id}: package {:?} ({} credits)",
            package.name, package.credits
        )
    };
    credit_in_tx(
        tx,
        &CreditRequest {
            key: &key,
            fingerprint: &fingerprint,
            user_id,
            kind: CreditEventKind::Purchase,
            amount: package.credits,
            package: agent_accepts_package.then_some(package.name.as_str()),
            note: Some(&note),
            admin_user_id: None,
            actor: "stripe",
            allow_revoked_home: true,
            may_book_debt: false,
        },
    )
    .await
}

/// Takes credit back from (negative `amount`) or gives it back to (positive) a user because of
/// a Stripe refund or dispute, inside the webhook's transaction: an `admin_adjustment` to the
/// home agent keyed `key` (in the `stripe:` namespace; a second call with the same key returns
/// the first result). The home agent books it if the balance covers it; if not, it refuses it
/// and reconcile lists the operation as not applied (a home user's debt is not booked: see the
/// README). A fleet user's pool takes it; what the pool does not cover becomes their debt.
pub async fn stripe_adjustment(
    tx: &Transaction<'_>,
    user_id: &str,
    amount: Credits,
    key: &str,
    note: &str,
) -> Result<Applied<CreditResult>, CentralError> {
    if amount == Credits::ZERO {
        return Err(CentralError::invalid(
            "amount",
            "a Stripe adjustment must not be zero",
        ));
    }
    let fingerprint = operation::fingerprint(&("stripe_adjustment", user_id, amount, key))?;
    credit_in_tx(
        tx,
        &CreditRequest {
            key,
            fingerprint: &fingerprint,
            user_id,
            kind: CreditEventKind::AdminAdjustment,
            amount,
            package: None,
            note: Some(note),
            admin_user_id: None,
            actor: "stripe",
            allow_revoked_home: true,
            may_book_debt: true,
        },
    )
    .await
}

/// Moves a fleet user's position (pool − debt) by `$2`: the pool is its positive part, the debt
/// its negative part, so credit pays debt first and what goes out beyond the pool is owed. (One
/// of the two is always zero: a CHECK.)
pub(crate) const MOVE_POSITION: &str = "pool = greatest(pool - debt + $2, 0), \
     debt = greatest(debt - pool - $2, 0)";

/// One credit operation, already validated.
struct CreditRequest<'a> {
    key: &'a str,
    fingerprint: &'a [u8; 32],
    user_id: &'a str,
    kind: CreditEventKind,
    amount: Credits,
    package: Option<&'a str>,
    note: Option<&'a str>,
    admin_user_id: Option<&'a str>,
    actor: &'a str,
    allow_revoked_home: bool,
    /// Money already returned (Stripe): what a fleet user's pool cannot cover becomes their
    /// debt instead of refusing the operation.
    may_book_debt: bool,
}

async fn credit_in_tx(
    tx: &Transaction<'_>,
    req: &CreditRequest<'_>,
) -> Result<Applied<CreditResult>, CentralError> {
    let claim = Claim {
        key: req.key,
        kind: operation::kind::CREDIT,
        fingerprint: req.fingerprint,
        user_id: Some(req.user_id),
        amount: Some(req.amount.to_decimal()),
        actor: req.actor,
    };
    if let Begin::Replay(done) = operation::begin(tx, claim).await? {
        return Ok(Applied::replayed(done));
    }
    // A row lock: a concurrent home change (FOR UPDATE) waits for this operation to commit, and
    // then sees it as pending on the old home; a fleet user's pool moves under it.
    let row = tx
        .query_opt(
            "SELECT u.home_agent_id, u.fleet, a.name, a.status FROM user_credits u \
             LEFT JOIN agents a ON a.agent_id = u.home_agent_id \
             WHERE u.user_id = $1 FOR NO KEY UPDATE OF u",
            &[&req.user_id],
        )
        .await?
        .ok_or_else(|| {
            CentralError::NotFound(format!(
                "no user {:?} is known centrally; create it first (users set)",
                req.user_id
            ))
        })?;
    if row.get::<_, bool>("fleet") {
        return pool_credit(tx, req).await;
    }
    let home: Option<Uuid> = row.get("home_agent_id");
    let Some(agent_id) = home else {
        return Err(CentralError::Refused(format!(
            "user {:?} has no home agent to hold the credit; set one first (users set --home)",
            req.user_id
        )));
    };
    let agent: String = row.get("name");
    let status: String = row.get("status");
    if status == "revoked" && !req.allow_revoked_home {
        return Err(CentralError::Refused(format!(
            "user {:?} is homed on agent {agent:?}, which is revoked and can never apply the \
             credit",
            req.user_id
        )));
    }
    let debt = home_debt(tx, req, agent_id).await?;
    let Some(amount) = debt.sent else {
        // Nothing for the home to book: money returned that its balance no longer covers, or
        // credit that all went to repay the user's debt.
        let result = CreditResult {
            operation_key: req.key.to_owned(),
            user_id: req.user_id.to_owned(),
            kind: req.kind,
            amount: req.amount,
            package: None,
            agent: None,
            agent_id: None,
            inbox_seq: None,
            event_id: None,
            pool: None,
            debt: debt.after,
            debt_booked: debt.booked,
            debt_repaid: debt.repaid,
        };
        operation::finish(tx, req.key, None, &result).await?;
        return Ok(Applied {
            result,
            replayed: false,
            events_written: 0,
        });
    };
    if amount != req.amount {
        // What the home books is what its entry must match.
        tx.execute(
            "UPDATE central_operations SET amount = $2 WHERE operation_key = $1",
            &[&req.key, &amount.to_decimal()],
        )
        .await?;
    }
    // A package is named only when its whole credit reaches the agent.
    let package = req.package.filter(|_| amount == req.amount);
    let event = CreditEvent {
        user_id: req.user_id.to_owned(),
        kind: req.kind,
        amount,
        idempotency_key: req.key.to_owned(),
        package: package.map(str::to_owned),
        note: req.note.map(str::to_owned),
        admin_user_id: req.admin_user_id.map(str::to_owned),
    };
    let written = inbox::append(tx, agent_id, &EventBody::Credit(event), Some(req.key)).await?;
    let result = CreditResult {
        operation_key: req.key.to_owned(),
        user_id: req.user_id.to_owned(),
        kind: req.kind,
        amount,
        package: package.map(str::to_owned),
        agent: Some(agent),
        agent_id: Some(agent_id),
        inbox_seq: Some(written.seq),
        event_id: Some(written.event_id),
        pool: None,
        debt: debt.after,
        debt_booked: debt.booked,
        debt_repaid: debt.repaid,
    };
    operation::finish(tx, req.key, Some((agent_id, written.seq)), &result).await?;
    Ok(Applied {
        result,
        replayed: false,
        events_written: 1,
    })
}

/// What a credit operation for a home user sends to the home, and what it does to their debt.
struct HomeDebt {
    /// The amount sent to the home agent (`None`: nothing).
    sent: Option<Credits>,
    booked: Option<Credits>,
    repaid: Option<Credits>,
    /// The user's debt after the operation, when they owe any.
    after: Option<Credits>,
}

/// Splits a home user's credit operation (the user row is locked by the caller):
/// - credit in pays their debt first; the rest is sent to the home;
/// - money Stripe returned takes what the home can still cover — its balance as last pushed,
///   with what operations already sent to it and not yet booked add or take — and the rest
///   becomes the user's debt (the webhook never fails on it);
/// - anything else is sent whole (an admin's negative adjustment the home cannot cover is
///   refused by the home, and reconcile lists it).
///
/// The balance the server sees lags the agent's spending by a push, so a clawback sent can
/// still find the balance spent; the home refuses it then and reconcile lists it as not applied.
async fn home_debt(
    tx: &Transaction<'_>,
    req: &CreditRequest<'_>,
    agent_id: Uuid,
) -> Result<HomeDebt, CentralError> {
    let row = tx
        .query_one(
            "SELECT u.balance, u.debt, \
                    coalesce((SELECT sum(o.amount) FROM central_operations o \
                              WHERE o.kind = 'credit' AND o.user_id = u.user_id \
                                AND o.agent_id = $2 \
                                AND o.operation_key <> $3 \
                                AND NOT EXISTS (SELECT 1 FROM credit_transactions ct \
                                                WHERE ct.idempotency_key = o.operation_key)), \
                             0) AS pending \
             FROM user_credits u WHERE u.user_id = $1",
            &[&req.user_id, &agent_id, &req.key],
        )
        .await?;
    let balance = super::credits_from_db(row.get("balance"))?;
    let debt = super::credits_from_db(row.get("debt"))?;
    let pending = super::credits_from_db(row.get("pending"))?;
    let amount = req.amount;
    let (sent, booked, repaid) = if amount.is_positive() && debt.is_positive() {
        let repaid = amount.min(debt);
        let rest = amount.checked_sub(repaid).unwrap_or(Credits::ZERO);
        (rest, None, Some(repaid))
    } else if amount.is_negative() && req.may_book_debt {
        let wanted = amount.checked_neg().unwrap_or(Credits::MAX);
        let coverable = balance
            .checked_add(pending)
            .filter(|c| c.is_positive())
            .unwrap_or(Credits::ZERO);
        let covered = wanted.min(coverable);
        let owed = wanted.checked_sub(covered).unwrap_or(Credits::ZERO);
        (
            covered.checked_neg().unwrap_or(Credits::ZERO),
            Some(owed).filter(|o| o.is_positive()),
            None,
        )
    } else {
        (amount, None, None)
    };
    let after = debt
        .checked_add(booked.unwrap_or(Credits::ZERO))
        .and_then(|d| d.checked_sub(repaid.unwrap_or(Credits::ZERO)))
        .ok_or_else(|| CentralError::invalid("amount", "the user's debt would leave the range"))?;
    if after != debt {
        // A purchase that repays debt was still bought: its repaid part counts as purchased
        // here (the part sent counts when the home's entry arrives).
        let purchased = match (req.kind, repaid) {
            (CreditEventKind::Purchase, Some(r)) => r,
            _ => Credits::ZERO,
        };
        tx.execute(
            "UPDATE user_credits SET debt = $2, \
                 lifetime_credits_purchased = lifetime_credits_purchased + $3 \
             WHERE user_id = $1",
            &[&req.user_id, &after.to_decimal(), &purchased.to_decimal()],
        )
        .await?;
        if booked.is_some() {
            tracing::warn!(user = req.user_id, key = req.key, debt = %after, "money returned beyond a home user's balance is booked as their debt");
        }
    }
    Ok(HomeDebt {
        sent: Some(sent).filter(|s| *s != Credits::ZERO),
        booked,
        repaid,
        after: Some(after).filter(|d| d.is_positive()),
    })
}

/// Books a fleet user's credit on their pool (the row is locked by the caller): no agent holds
/// it until a grant carves it out. Credit coming in pays the user's debt first. Taking credit
/// away takes it from the pool only: what agents hold as grants is theirs to spend until they
/// release it, so an admin's amount beyond the pool is refused — while money Stripe already
/// returned is taken in full, what the pool does not cover becoming the user's debt.
async fn pool_credit(
    tx: &Transaction<'_>,
    req: &CreditRequest<'_>,
) -> Result<Applied<CreditResult>, CentralError> {
    let amount = req.amount.to_decimal();
    let purchased = if req.kind == CreditEventKind::Purchase {
        amount
    } else {
        rust_decimal::Decimal::ZERO
    };
    let (pool_before, debt_before): (rust_decimal::Decimal, rust_decimal::Decimal) = tx
        .query_one(
            "SELECT pool, debt FROM user_credits WHERE user_id = $1",
            &[&req.user_id],
        )
        .await
        .map(|r| (r.get("pool"), r.get("debt")))?;
    if pool_before + amount < rust_decimal::Decimal::ZERO && !req.may_book_debt {
        return Err(CentralError::Refused(format!(
            "fleet user {:?}'s pool holds {} credits, less than the {} to take; the rest is \
             held by agents as grants until they release it",
            req.user_id,
            pool_before.normalize(),
            req.amount.checked_neg().unwrap_or(req.amount)
        )));
    }
    let row = tx
        .query_one(
            &format!(
                "UPDATE user_credits SET {MOVE_POSITION}, \
                     lifetime_credits_purchased = lifetime_credits_purchased + $3 \
                 WHERE user_id = $1 RETURNING pool, debt"
            ),
            &[&req.user_id, &amount, &purchased],
        )
        .await?;
    let (pool, debt): (rust_decimal::Decimal, rust_decimal::Decimal) =
        (row.get("pool"), row.get("debt"));
    if debt > debt_before {
        tracing::warn!(user = req.user_id, key = req.key, debt = %debt.normalize(), "money returned beyond a fleet user's pool is booked as their debt");
    }
    let result = CreditResult {
        operation_key: req.key.to_owned(),
        user_id: req.user_id.to_owned(),
        kind: req.kind,
        amount: req.amount,
        package: req.package.map(str::to_owned),
        agent: None,
        agent_id: None,
        inbox_seq: None,
        event_id: None,
        pool: Some(super::credits_from_db(pool)?),
        debt: Some(super::credits_from_db(debt)?).filter(|d| d.is_positive()),
        debt_booked: None,
        debt_repaid: None,
    };
    operation::finish(tx, req.key, None, &result).await?;
    Ok(Applied {
        result,
        replayed: false,
        events_written: 0,
    })
}
