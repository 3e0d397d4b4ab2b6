//! Grants carved from a fleet user's pool for one agent (SYNC.md "Escrow"; ARCHITECTURE.md
//! "Escrow").
//!
//! Guarantees:
//! - A grant is a central credit operation keyed `grant:<agent id>:<request id>`, sent to the
//!   agent that asked: in one transaction, under the user row's lock, the pool loses exactly the
//!   grant's amount (`pool >= 0` is a CHECK: a pool is never overdrawn, however many agents and
//!   replicas ask at once), the operation row is written and the grant is appended to the agent's
//!   inbox as an `escrow_grant` event (so an answer lost on the way loses nothing). The agent
//!   books it as an `escrow` entry carrying the key; ingest pairs them like any central credit.
//! - Idempotent by request id per agent: a retry answers the stored grant and writes nothing;
//!   the same id for a different user or amount asked is an idempotency conflict.
//! - Size: `min(pool, max(worst_case, min(want, fair share)))`, the fair share being the pool
//!   divided among this agent and the others granted credit for the user in the last
//!   [`RECENT_GRANTS_SECS`] seconds; no grant (none written) when the pool is empty.
//! - Only an active agent speaking protocol 3 gets grants, and only for a fleet user.
//! - The server never takes a grant back: what the agent does not spend returns with its own
//!   `release:` entry (ingest adds it to the pool).
//! - A grant to an agent speaking protocol 4 carries the user's overdraft line, if an admin set
//!   one (`GrantSpec::overdraft`): what that agent may book once more, keyed `overdraft:<grant
//!   key>`, when it cannot reach the server — checked on ingest against this grant, and booked
//!   as the user's debt (`sync::rules`, `sync::ingest`).

use deadpool_postgres::Pool;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tollgate_schema::money::Credits;
use tollgate_schema::wire::{
    ESCROW_ENTRY_TYPE, EventBody, GRANT_KEY_PREFIX, GRANT_REQUEST_ID_LEN_MAX, GrantSpec,
};
use uuid::Uuid;

use super::operation::{self, Begin, Claim};
use super::{CentralError, inbox, validate};

/// How long an agent may start new reservations on a grant, on its own clock.
pub const GRANT_VALIDITY_MS: u64 = 60_000;
/// The protocol from which a grant carries the user's overdraft line.
pub const OVERDRAFT_PROTOCOL: i32 = 4;
/// Agents granted credit for a user within this many seconds share the pool in the sizing.
pub const RECENT_GRANTS_SECS: f64 = 60.0;

/// An agent's request for a grant.
#[derive(Debug, Clone)]
pub struct GrantAsk<'a> {
    pub agent_id: Uuid,
    pub agent: &'a str,
    pub request_id: &'a str,
    pub user_id: &'a str,
    pub want: Credits,
    pub worst_case: Credits,
}

/// What a grant request did (stored with the operation; `kind` is the entry type reconcile
/// expects the agent to book it as).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantResult {
    pub grant: GrantSpec,
    pub kind: String,
    pub agent: String,
    pub inbox_seq: i64,
    /// The pool after this grant.
    pub pool_free: Credits,
}

/// What the agent is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Granted {
    /// A grant (new or replayed).
    Grant(Box<GrantResult>),
    /// The pool is empty: nothing granted, nothing written.
    PoolEmpty,
}

/// The key of the grant `request_id` of `agent_id`.
pub fn grant_key(agent_id: Uuid, request_id: &str) -> String {
    format!("{GRANT_KEY_PREFIX}{agent_id}:{request_id}")
}

fn validate_ask(ask: &GrantAsk<'_>) -> Result<(), CentralError> {
    validate::user_id("user_id", ask.user_id)?;
    let id_ok = !ask.request_id.is_empty()
        && ask.request_id.len() <= GRANT_REQUEST_ID_LEN_MAX
        && ask
            .request_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !id_ok {
        return Err(CentralError::invalid(
            "request_id",
            format!("must be 1 to {GRANT_REQUEST_ID_LEN_MAX} of A-Z a-z 0-9 . _ -"),
        ));
    }
    if ask.want.is_negative() {
        return Err(CentralError::invalid("want", "must not be negative"));
    }
    if ask.worst_case.is_negative() {
        return Err(CentralError::invalid("worst_case", "must not be negative"));
    }
    Ok(())
}

/// The grant's size in nano-credits (see the module's guarantees).
pub fn size(free: i64, others: i64, want: i64, worst_case: i64) -> i64 {
    let share = free / (others.max(0) + 1);
    free.min(worst_case.max(want.min(share))).max(0)
}

/// Grants `ask` from the user's pool (see the module's guarantees).
pub async fn grant(pool: &Pool, ask: &GrantAsk<'_>) -> Result<Granted, CentralError> {
    validate_ask(ask)?;
    let key = grant_key(ask.agent_id, ask.request_id);
    let fingerprint =
        operation::fingerprint(&("escrow_grant", ask.user_id, ask.want, ask.worst_case))?;
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    let user = tx
        .query_opt(
            "SELECT fleet, pool, overdraft FROM user_credits WHERE user_id = $1 \
             FOR NO KEY UPDATE",
            &[&ask.user_id],
        )
        .await?
        .ok_or_else(|| {
            CentralError::NotFound(format!("no user {:?} is known centrally", ask.user_id))
        })?;
    if !user.get::<_, bool>("fleet") {
        return Err(CentralError::Refused(format!(
            "user {:?} is not a fleet user: their balance is held by their home agent, not \
             granted from a pool",
            ask.user_id
        )));
    }
    let free = super::credits_from_db(user.get("pool"))?;
    let replay = tx
        .query_opt(
            "SELECT 1 FROM central_operations WHERE operation_key = $1",
            &[&key],
        )
        .await?
        .is_some();
    let amount = if replay {
        // The claim below finds the stored operation and answers it; the amount is not stored
        // (it only has to satisfy the row's CHECK, which is evaluated before the conflict).
        Credits::from_nanos(1)
    } else {
        let others: i64 = tx
            .query_one(
                "SELECT count(DISTINCT agent_id) AS n FROM central_operations \
                 WHERE user_id = $1 AND operation_key LIKE 'grant:%' AND agent_id <> $2 \
                   AND created_at > now() - make_interval(secs => $3)",
                &[&ask.user_id, &ask.agent_id, &RECENT_GRANTS_SECS],
            )
            .await?
            .get("n");
        let nanos = size(
            free.nanos(),
            others,
            ask.want.nanos(),
            ask.worst_case.nanos(),
        );
        if nanos == 0 {
            return Ok(Granted::PoolEmpty);
        }
        Credits::from_nanos(nanos)
    };
    let claim = Claim {
        key: &key,
        kind: operation::kind::CREDIT,
        fingerprint: &fingerprint,
        user_id: Some(ask.user_id),
        amount: Some(amount.to_decimal()),
        actor: ask.agent,
    };
    if let Begin::Replay(done) = operation::begin::<GrantResult>(&tx, claim).await? {
        return Ok(Granted::Grant(Box::new(done)));
    }
    let (status, protocol): (String, i32) = tx
        .query_one(
            "SELECT status, protocol_version FROM agents WHERE agent_id = $1",
            &[&ask.agent_id],
        )
        .await
        .map(|r| (r.get("status"), r.get("protocol_version")))?;
    if status != "active" {
        return Err(CentralError::Refused(format!(
            "agent {:?} is {status}: it gets no grants until an admin releases it",
            ask.agent
        )));
    }
    let left: Decimal = tx
        .query_one(
            "UPDATE user_credits SET pool = pool - $2 WHERE user_id = $1 RETURNING pool",
            &[&ask.user_id, &amount.to_decimal()],
        )
        .await?
        .get("pool");
    let line: Option<Decimal> = user.get("overdraft");
    let overdraft = if protocol >= OVERDRAFT_PROTOCOL {
        line.map(super::credits_from_db).transpose()?
    } else {
        None
    };
    let grant = GrantSpec {
        key: key.clone(),
        user_id: ask.user_id.to_owned(),
        amount,
        valid_for_ms: GRANT_VALIDITY_MS,
        overdraft,
    };
    let written = inbox::append(
        &tx,
        ask.agent_id,
        &EventBody::EscrowGrant(grant.clone()),
        Some(&key),
    )
    .await?;
    let result = GrantResult {
        grant,
        kind: ESCROW_ENTRY_TYPE.to_owned(),
        agent: ask.agent.to_owned(),
        inbox_seq: written.seq,
        pool_free: super::credits_from_db(left)?,
    };
    operation::finish(&tx, &key, Some((ask.agent_id, written.seq)), &result).await?;
    tx.commit().await?;
    Ok(Granted::Grant(Box::new(result)))
}

#[cfg(test)]
mod tests {
    use super::size;

    #[test]
    fn a_grant_is_at_least_one_worst_case_at_most_a_fair_share_never_more_than_the_pool() {
        // (free, others, want, worst_case) → size
        let cases = [
            ((1_000, 0, 300, 10), 300),  // what it wants, within its share
            ((1_000, 1, 900, 10), 500),  // capped at half: one other agent spends too
            ((1_000, 3, 900, 400), 400), // a worst case above the share still fits
            ((100, 0, 900, 400), 100),   // never more than the pool
            ((0, 0, 900, 400), 0),       // an empty pool grants nothing
            ((1_000, 0, 0, 0), 0),       // asking for nothing gets nothing
        ];
        for ((free, others, want, worst), expected) in cases {
            assert_eq!(
                size(free, others, want, worst),
                expected,
                "free {free}, others {others}, want {want}, worst {worst}"
            );
        }
    }
}
