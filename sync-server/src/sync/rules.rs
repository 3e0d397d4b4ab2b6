//! What an agent may write (SYNC.md "Who governs what"), checked on every new entry of a push
//! before anything is stored. A broken rule is a reason (naming the entry, the user and the
//! rule) that quarantines the agent.
//!
//! The rules:
//! - **Central operation keys** (`admin:…`, `stripe:…`, `grant:…`) belong to operations the
//!   server made: an entry carrying one must be that operation, sent to this agent, for its user,
//!   amount and entry type, and its only entry. A key in that namespace no operation has is refused too (else it would be
//!   taken before the operation is made, and the agent it is sent to quarantined for applying
//!   it).
//! - **Users it holds**: an agent writes only for users homed on it, or for fleet users (every
//!   agent serves them); a user the server does not know is refused too (users are made
//!   centrally or adopted at enrolment: a push never creates one, so no agent can squat an id).
//! - **Grants it holds, within them** (fleet users): credit only as a positive `escrow` entry
//!   carrying a grant's key (`grant:` is a central key: matched to the grant made to this agent,
//!   for this user, amount and entry type, once) or drawing a grant's overdraft line
//!   (`overdraft:<grant key>`: a grant made to this agent for this user, at most its line,
//!   once); what is left back only as a negative `escrow`
//!   entry keyed `release:…`, each key once; everything else may only spend. Escrow entries for a
//!   home user are refused. A home user turned fleet user is the exception on their former home
//!   until its first escrow entry for them: what it wrote before it applied the change is judged
//!   as a home agent's (it keeps their balance as its holding, and releases it).
//! - **The balance chain**: each entry's `balance_before` is the user's central balance (with
//!   the batch's earlier entries applied) — for a fleet user, what this agent holds of them
//!   (`escrow_holdings`), so an agent never spends beyond its grants; a balance moves only by
//!   these entries, so any other value is a forged or replayed history.
//! - **Amounts the books hold**: a user's lifetime purchases and month's usage stay within
//!   [`Credits::MAX`] (balances do, by the chain).

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use tokio_postgres::Transaction;
use tollgate_schema::money::Credits;
use tollgate_schema::wire::WireEntry;
use uuid::Uuid;

use tollgate_schema::wire::{
    ESCROW_ENTRY_TYPE, GRANT_KEY_PREFIX, OVERDRAFT_KEY_PREFIX, RELEASE_KEY_PREFIX,
};

use crate::central::operation::{ADMIN_KEY_PREFIX, STRIPE_KEY_PREFIX};

const CENTRAL_OPERATIONS: &str = "SELECT operation_key, agent_id, user_id, amount, \
     result->>'kind' AS entry_type \
     FROM central_operations WHERE kind = 'credit' AND operation_key = ANY($1)";
/// The overdraft lines of the grants an overdraft entry names (`overdraft:<grant key>`).
const OVERDRAFT_LINES: &str = "SELECT operation_key, agent_id, user_id, \
     (result->'grant'->>'overdraft')::numeric AS line \
     FROM central_operations WHERE kind = 'credit' AND operation_key = ANY($1)";
const STORED_KEYS: &str = "SELECT idempotency_key FROM credit_transactions \
     WHERE idempotency_key = ANY($1)";
/// Locks the batch's users in user order (the order every push and central change locks users
/// in). A statement of its own: a row-locking read that waited re-reads the locked row but not
/// the rows it joins (PostgreSQL's READ COMMITTED), so what it joins is read by [`USERS`],
/// after the lock is held and with a snapshot that sees whatever the lock waited for (a user
/// turned fleet user, and the holding made for its former home).
const LOCK_USERS: &str = "SELECT u.user_id FROM user_credits u \
     WHERE u.user_id = ANY($1) ORDER BY u.user_id FOR UPDATE";
/// The batch's users as the central books hold them. A fleet user's `holding` is what this agent
/// holds of them (their balance chain on this agent).
const USERS: &str = "SELECT u.user_id, u.home_agent_id, a.name AS home_agent, u.balance, \
     u.lifetime_credits_purchased, u.credits_used_this_month, u.fleet, \
     coalesce(h.balance, 0) AS holding, coalesce(h.converting, false) AS converting \
     FROM user_credits u LEFT JOIN agents a ON a.agent_id = u.home_agent_id \
     LEFT JOIN escrow_holdings h ON h.user_id = u.user_id AND h.agent_id = $2 \
     WHERE u.user_id = ANY($1)";

/// Whether `key` is in the central operations' namespace.
pub(crate) fn is_central_key(key: &str) -> bool {
    key.starts_with(ADMIN_KEY_PREFIX)
        || key.starts_with(STRIPE_KEY_PREFIX)
        || key.starts_with(GRANT_KEY_PREFIX)
        || key.starts_with(OVERDRAFT_KEY_PREFIX)
}

/// A central credit operation as an entry must match it: (agent sent to, user, amount, entry
/// type).
type CentralCredit = (
    Option<Uuid>,
    Option<String>,
    Option<Decimal>,
    Option<String>,
);

/// Why entries keyed by a central credit operation do not match it, if they do not: no such
/// operation was made, or it was sent to another agent, is for another user or amount, or
/// already has its entry (stored, or earlier in this batch).
pub(crate) async fn central_key_mismatch(
    tx: &Transaction<'_>,
    agent_id: Uuid,
    new: &[WireEntry],
) -> Result<Option<String>, tokio_postgres::Error> {
    let keys: Vec<&str> = new
        .iter()
        .filter_map(|e| e.idempotency_key.as_deref())
        .collect();
    if keys.is_empty() {
        return Ok(None);
    }
    let operations: BTreeMap<String, CentralCredit> = tx
        .query(CENTRAL_OPERATIONS, &[&keys])
        .await?
        .iter()
        .map(|r| {
            (
                r.get("operation_key"),
                (
                    r.get("agent_id"),
                    r.get("user_id"),
                    r.get("amount"),
                    r.get("entry_type"),
                ),
            )
        })
        .collect();
    if operations.is_empty() && !keys.iter().any(|k| is_central_key(k)) {
        return Ok(None);
    }
    let lines = overdraft_lines(tx, &keys).await?;
    let applied: Vec<String> = tx
        .query(STORED_KEYS, &[&keys])
        .await?
        .iter()
        .map(|r| r.get("idempotency_key"))
        .collect();
    let mut seen: Vec<&str> = Vec::new();
    for entry in new {
        let Some(key) = entry.idempotency_key.as_deref() else {
            continue;
        };
        if let Some(grant_key) = key.strip_prefix(OVERDRAFT_KEY_PREFIX) {
            let fresh = !applied.iter().any(|k| k == key) && !seen.contains(&key);
            if let Some(why) = overdraft_mismatch(entry, agent_id, lines.get(grant_key), fresh) {
                return Ok(Some(format!(
                    "seq {} carries overdraft key {key:?}, but {why}",
                    entry.seq
                )));
            }
            seen.push(key);
            continue;
        }
        let Some((op_agent, op_user, op_amount, op_type)) = operations.get(key) else {
            if is_central_key(key) {
                return Ok(Some(format!(
                    "seq {} carries central operation key {key:?}, but no such operation was \
                     made: keys in that namespace are the server's to give",
                    entry.seq
                )));
            }
            continue;
        };
        let why = if *op_agent != Some(agent_id) {
            Some("it was sent to another agent")
        } else if op_user.as_deref() != Some(entry.user_id.as_str()) {
            Some("it is for another user")
        } else if *op_amount != Some(entry.amount.to_decimal()) {
            Some("its amount differs")
        } else if op_type.as_deref() != Some(entry.transaction_type.as_str()) {
            Some("its entry type differs")
        } else if applied.iter().any(|k| k == key) || seen.contains(&key) {
            Some("it already has its entry")
        } else {
            None
        };
        if let Some(why) = why {
            return Ok(Some(format!(
                "seq {} carries central operation key {key:?}, but {why}",
                entry.seq
            )));
        }
        seen.push(key);
    }
    Ok(None)
}

/// A grant's overdraft line as an overdraft entry must match it: (agent granted, user, line).
type OverdraftLine = (Option<Uuid>, Option<String>, Option<Decimal>);

/// The lines of the grants the batch's overdraft keys name, by grant key.
async fn overdraft_lines(
    tx: &Transaction<'_>,
    keys: &[&str],
) -> Result<BTreeMap<String, OverdraftLine>, tokio_postgres::Error> {
    let grants: Vec<&str> = keys
        .iter()
        .filter_map(|k| k.strip_prefix(OVERDRAFT_KEY_PREFIX))
        .collect();
    if grants.is_empty() {
        return Ok(BTreeMap::new());
    }
    Ok(tx
        .query(OVERDRAFT_LINES, &[&grants])
        .await?
        .iter()
        .map(|r| {
            (
                r.get("operation_key"),
                (r.get("agent_id"), r.get("user_id"), r.get("line")),
            )
        })
        .collect())
}

/// Why an overdraft entry does not match the line of the grant it names, if it does not: an
/// agent draws the line of a grant made to it, for that grant's user, as a positive escrow entry
/// of at most the line, once.
fn overdraft_mismatch(
    entry: &WireEntry,
    agent_id: Uuid,
    line: Option<&OverdraftLine>,
    fresh: bool,
) -> Option<&'static str> {
    let Some((granted_to, user, line)) = line else {
        return Some("no grant has that key");
    };
    let amount = entry.amount.to_decimal();
    if *granted_to != Some(agent_id) {
        Some("that grant was made to another agent")
    } else if user.as_deref() != Some(entry.user_id.as_str()) {
        Some("that grant is for another user")
    } else if entry.transaction_type != ESCROW_ENTRY_TYPE || amount <= Decimal::ZERO {
        Some("an overdraft is a positive escrow entry")
    } else if line.is_none_or(|line| amount > line) {
        Some("it draws more than that grant's overdraft line")
    } else if !fresh {
        Some("that line was already drawn")
    } else {
        None
    }
}

/// A user as the central books hold them.
struct CentralUser {
    home: Option<Uuid>,
    home_name: Option<String>,
    fleet: bool,
    /// A fleet user this agent held as their home until the change reached it: its entries are
    /// a home agent's until its first escrow entry for them.
    converting: bool,
    /// The balance the user's chain continues from: the central balance of a home user, what
    /// this agent holds of a fleet user.
    balance: Decimal,
    purchased: Decimal,
    used: Decimal,
}

/// Why the new entries break a user rule (the users it holds, the balance chain, amounts the
/// books hold), if they do.
pub(crate) async fn user_rule_broken(
    tx: &Transaction<'_>,
    agent_id: Uuid,
    new: &[WireEntry],
) -> Result<Option<String>, tokio_postgres::Error> {
    let mut ids: Vec<&str> = new.iter().map(|e| e.user_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    tx.query(LOCK_USERS, &[&ids]).await?;
    let mut users: BTreeMap<String, CentralUser> = tx
        .query(USERS, &[&ids, &agent_id])
        .await?
        .iter()
        .map(|r| {
            let fleet: bool = r.get("fleet");
            (
                r.get("user_id"),
                CentralUser {
                    home: r.get("home_agent_id"),
                    home_name: r.get("home_agent"),
                    fleet,
                    converting: r.get("converting"),
                    balance: r.get(if fleet { "holding" } else { "balance" }),
                    purchased: r.get("lifetime_credits_purchased"),
                    used: r.get("credits_used_this_month"),
                },
            )
        })
        .collect();
    let max = Credits::MAX.to_decimal();
    let mut releases = stored_releases(tx, new).await?;
    for entry in new {
        let (seq, id) = (entry.seq, &entry.user_id);
        let Some(user) = users.get_mut(id) else {
            return Ok(Some(format!(
                "seq {seq} writes for user {id:?}, whom the server does not know: users are \
                 made centrally (`tollgate-server users set`) or adopted when their agent \
                 enrols, never by a push"
            )));
        };
        let escrow = entry.transaction_type == ESCROW_ENTRY_TYPE;
        if user.fleet && user.converting && !escrow {
            // Written as their home, before this agent applied the change: a home's entry.
        } else if user.fleet {
            user.converting = false;
            if let Some(reason) = fleet_rule_broken(entry, &mut releases) {
                return Ok(Some(reason));
            }
        } else if let Some(reason) = home_rule_broken(entry) {
            return Ok(Some(reason));
        }
        if !user.fleet && user.home != Some(agent_id) {
            let holder = match (&user.home, &user.home_name) {
                (Some(_), Some(name)) => format!("agent {name:?} holds"),
                _ => "no agent holds".to_owned(),
            };
            return Ok(Some(format!(
                "seq {seq} writes for user {id:?}, whose balance {holder}: an agent may write \
                 only for the users it holds"
            )));
        }
        let before = entry.balance_before.to_decimal();
        if before != user.balance {
            let held = if user.fleet {
                "this agent holds"
            } else {
                "the central books hold"
            };
            return Ok(Some(format!(
                "seq {seq} says user {id:?} had {before} credits, but {held} {}: the user's \
                 balance chain is broken",
                user.balance.normalize()
            )));
        }
        user.balance = entry.balance_after.to_decimal();
        let amount = entry.amount.to_decimal();
        match entry.transaction_type.as_str() {
            "purchase" if amount > Decimal::ZERO => user.purchased += amount,
            "usage" if amount < Decimal::ZERO => user.used -= amount,
            _ => {}
        }
        if user.purchased > max || user.used > max {
            return Ok(Some(format!(
                "seq {seq} would take user {id:?}'s lifetime purchases or month's usage past \
                 {} credits, the most the books hold",
                Credits::MAX
            )));
        }
    }
    Ok(None)
}

/// The batch's `release:` keys already in the central journal.
async fn stored_releases(
    tx: &Transaction<'_>,
    new: &[WireEntry],
) -> Result<Vec<String>, tokio_postgres::Error> {
    let keys: Vec<&str> = new
        .iter()
        .filter_map(|e| e.idempotency_key.as_deref())
        .filter(|k| k.starts_with(RELEASE_KEY_PREFIX))
        .collect();
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    Ok(tx
        .query(STORED_KEYS, &[&keys])
        .await?
        .iter()
        .map(|r| r.get("idempotency_key"))
        .collect())
}

/// What an agent may write for a fleet user: credit arrives only as a grant (a positive
/// `escrow` entry keyed `grant:…`, matched to its operation by [`central_key_mismatch`]) or a
/// grant's overdraft line (keyed `overdraft:grant:…`, matched to the grant there too);
/// what is left returns as a negative `escrow` entry keyed `release:…`, each key once; the
/// rest may only spend (the chain keeps it within what the agent holds).
fn fleet_rule_broken(entry: &WireEntry, releases: &mut Vec<String>) -> Option<String> {
    let (seq, id) = (entry.seq, &entry.user_id);
    let key = entry.idempotency_key.as_deref().unwrap_or_default();
    let escrow = entry.transaction_type == ESCROW_ENTRY_TYPE;
    let positive = entry.amount.is_positive();
    if escrow
        && positive
        && !key.starts_with(GRANT_KEY_PREFIX)
        && !key.starts_with(OVERDRAFT_KEY_PREFIX)
    {
        return Some(format!(
            "seq {seq} books {} credits of escrow for fleet user {id:?} without a grant's key: \
             an agent gets a fleet user's credit only as a grant from the server (or its \
             overdraft line)",
            entry.amount
        ));
    }
    if escrow && !positive && !key.starts_with(RELEASE_KEY_PREFIX) {
        return Some(format!(
            "seq {seq} returns escrow of fleet user {id:?} without a release key (release:…)"
        ));
    }
    if !escrow && positive {
        return Some(format!(
            "seq {seq} adds {} credits ({}) for fleet user {id:?}: an agent gets a fleet user's \
             credit only as a grant from the server's pool",
            entry.amount, entry.transaction_type
        ));
    }
    if key.starts_with(RELEASE_KEY_PREFIX) {
        if !escrow || positive {
            return Some(format!(
                "seq {seq} carries release key {key:?} on a {} entry of {}: a release is a \
                 negative escrow entry",
                entry.transaction_type, entry.amount
            ));
        }
        if releases.iter().any(|k| k == key) {
            return Some(format!(
                "seq {seq} carries release key {key:?}, which another entry already used"
            ));
        }
        releases.push(key.to_owned());
    }
    None
}

/// What an agent may not write for a home user: escrow belongs to fleet users.
fn home_rule_broken(entry: &WireEntry) -> Option<String> {
    let key = entry.idempotency_key.as_deref().unwrap_or_default();
    if entry.transaction_type == ESCROW_ENTRY_TYPE || key.starts_with(RELEASE_KEY_PREFIX) {
        return Some(format!(
            "seq {} is an escrow entry for user {:?}, who is not a fleet user: grants and \
             releases are for fleet users only",
            entry.seq, entry.user_id
        ));
    }
    None
}
