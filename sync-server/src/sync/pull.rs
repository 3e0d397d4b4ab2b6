//! Pull: the per-agent inbox and the snapshot (SYNC.md "Pull"); their HTTP handlers, with the
//! long poll, are `http/sync_pull.rs`. Refusals are a domain [`PullError`].
//!
//! Guarantees:
//! - `GET /v1/sync/inbox?after=N&wait_ms=W` answers the events with seq > N, oldest first, at most
//!   [`INBOX_PAGE_MAX`], and the inbox head, read in one statement (one snapshot: the head and
//!   the events agree). Seqs are gapless and commit in order (`central::inbox`), so a cursor
//!   never skips an event. Re-pulling the same cursor answers the same events (idempotent).
//! - `after` is the agent's statement that it applied everything through N: the server records
//!   `inbox_acked = GREATEST(inbox_acked, N)` (it never moves back), which is what pruning may
//!   drop. A cursor below what was pruned, or above the head, is 410 `cursor_gone`: the agent
//!   fetches a snapshot.
//! - A long poll subscribes to wake-ups *before* re-reading, so an event committed between the
//!   read and the wait is never missed; it holds no database connection while waiting, waits at
//!   most `wait_ms` (≤ [`LONG_POLL_MAX_MS`] and the server's own cap), and re-reads after every
//!   wake-up and every `RECHECK_INTERVAL` (a missed notification costs at most that).
//! - `GET /v1/sync/snapshot` reads users homed on the agent, the packages and the power levels
//!   in one REPEATABLE READ transaction, with the cursor to continue from (`inbox_acked`): every
//!   event after it is still held. Amounts are exact (no floats): prices in whole cents, the cost
//!   multiplier as normalized decimal text.
//! - Both answer in the agent's protocol version: a snapshot carries API keys only from
//!   protocol 2, and a page never carries an event the agent's version does not know (such an
//!   event exists only if the agent was downgraded after it was written: the pull is refused,
//!   naming the event, rather than skipping it).
//! - Both work for quarantined agents; only pushes are refused.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use deadpool_postgres::Pool;
use rust_decimal::Decimal;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};
use tokio_postgres::IsolationLevel;
use tollgate_schema::money::Credits;
use tollgate_schema::wire::{
    EventBody, INBOX_PAGE_MAX, InboxEvent, InboxPage, LONG_POLL_MAX_MS, PackageSpec,
    PowerLevelSpec, Snapshot, UserSettings,
};
use uuid::Uuid;

use crate::central::api_keys;

/// Longest query string read (bytes): two numbers need far less.
const QUERY_BYTES_MAX: usize = 256;

/// The inbox request's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxParams {
    /// The agent applied every event through this seq.
    pub after: i64,
    /// How long to wait for an event when there is none (zero: answer at once).
    pub wait: Duration,
}

impl InboxParams {
    /// Parses `after=N&wait_ms=W` (`after` required, `wait_ms` optional, nothing else), naming
    /// the parameter at fault.
    pub(crate) fn parse(query: Option<&str>) -> Result<InboxParams, PullError> {
        let query = query.unwrap_or("");
        if query.len() > QUERY_BYTES_MAX {
            return Err(PullError::Invalid(format!(
                "the query string is longer than {QUERY_BYTES_MAX} bytes"
            )));
        }
        let mut after = None;
        let mut wait_ms = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match name {
                "after" => &mut after,
                "wait_ms" => &mut wait_ms,
                _ => {
                    return Err(PullError::Invalid(format!(
                        "unknown query parameter {:?} (expected after and wait_ms)",
                        super::push::truncate(name)
                    )));
                }
            };
            if slot.is_some() {
                return Err(PullError::Invalid(format!(
                    "query parameter {name} is given twice"
                )));
            }
            *slot = Some(value);
        }
        let after = after.ok_or_else(|| {
            PullError::Invalid(
                "missing query parameter after (the inbox cursor, e.g. after=0)".to_owned(),
            )
        })?;
        let after = parse_number(after)
            .and_then(|n| i64::try_from(n).ok())
            .ok_or_else(|| {
                PullError::Invalid(format!(
                    "query parameter after={:?} is not a non-negative integer",
                    super::push::truncate(after)
                ))
            })?;
        let wait_ms = match wait_ms {
            None => 0,
            Some(text) => parse_number(text)
                .filter(|ms| *ms <= LONG_POLL_MAX_MS)
                .ok_or_else(|| {
                    PullError::Invalid(format!(
                        "query parameter wait_ms={:?} is not an integer from 0 to \
                         {LONG_POLL_MAX_MS}",
                        super::push::truncate(text)
                    ))
                })?,
        };
        Ok(InboxParams {
            after,
            wait: Duration::from_millis(wait_ms),
        })
    }
}

/// Plain decimal digits only (no sign, no spaces, no exponent).
fn parse_number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Why a pull is refused. Domain words only: `http/error.rs` gives each its status and code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PullError {
    /// The query is malformed (400 `bad_request`).
    #[error("{0}")]
    Invalid(String),
    /// The cursor is older than what is kept, or past the head (410 `cursor_gone`).
    #[error("{0}")]
    CursorGone(String),
    /// A pending event needs a newer protocol than the agent speaks (400
    /// `unsupported_protocol`).
    #[error("{0}")]
    Unsupported(String),
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("{context}: {detail}")]
    Internal {
        context: &'static str,
        detail: String,
    },
}

impl PullError {
    fn internal(context: &'static str, detail: impl std::fmt::Display) -> PullError {
        PullError::Internal {
            context,
            detail: detail.to_string(),
        }
    }
}

/// Checks the cursor against what the server holds and records it as applied.
pub(crate) async fn acknowledge(pool: &Pool, agent_id: Uuid, after: i64) -> Result<(), PullError> {
    let conn = pool.get().await?;
    let row = conn
        .query_one(
            "SELECT inbox_head, inbox_acked, inbox_pruned_through FROM agents WHERE agent_id = $1",
            &[&agent_id],
        )
        .await?;
    let (head, acked, pruned): (i64, i64, i64) = (
        row.get("inbox_head"),
        row.get("inbox_acked"),
        row.get("inbox_pruned_through"),
    );
    if after < pruned {
        return Err(PullError::CursorGone(format!(
            "the inbox no longer holds the events after {after} (events through {pruned} were \
             pruned); fetch /v1/sync/snapshot and continue from its cursor"
        )));
    }
    if after > head {
        return Err(PullError::CursorGone(format!(
            "cursor {after} is past the inbox head {head}: the server does not know those events; \
             fetch /v1/sync/snapshot and continue from its cursor"
        )));
    }
    if after > acked {
        // The head only grows, so the check above still holds; the condition guards anyway.
        conn.execute(
            "UPDATE agents SET inbox_acked = $2 \
             WHERE agent_id = $1 AND inbox_acked < $2 AND $2 <= inbox_head",
            &[&agent_id, &after],
        )
        .await?;
    }
    Ok(())
}

/// The events after `after` (at most a page) and the head, from one statement.
pub(crate) async fn read_page(
    pool: &Pool,
    agent_id: Uuid,
    after: i64,
    protocol: u32,
) -> Result<InboxPage, PullError> {
    let conn = pool.get().await?;
    let stmt = conn
        .prepare_cached(
            "SELECT a.inbox_head, e.seq, e.event_id, e.created_at, e.body \
             FROM agents a LEFT JOIN LATERAL ( \
                 SELECT i.seq, i.event_id, i.created_at, i.body FROM agent_inbox i \
                 WHERE i.agent_id = a.agent_id AND i.seq > $2 ORDER BY i.seq LIMIT $3 \
             ) e ON true \
             WHERE a.agent_id = $1 ORDER BY e.seq",
        )
        .await?;
    let limit = INBOX_PAGE_MAX as i64;
    let rows = conn.query(&stmt, &[&agent_id, &after, &limit]).await?;
    let head: i64 = rows.first().map_or(0, |r| r.get("inbox_head"));
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        let Some(seq) = row.get::<_, Option<i64>>("seq") else {
            continue;
        };
        let event_id: Uuid = row.get("event_id");
        let created_at: OffsetDateTime = row.get("created_at");
        let body: serde_json::Value = row.get("body");
        let body: EventBody = serde_json::from_value(body).map_err(|e| {
            PullError::internal(
                "reading an inbox event",
                format!("event {seq} of agent {agent_id} is not a valid event body: {e}"),
            )
        })?;
        if body.since_version() > protocol {
            // Written while the agent spoke a newer protocol (it was downgraded since): it could
            // not read this event, and skipping it would lose it.
            return Err(PullError::Unsupported(format!(
                "inbox event {seq} ({}) needs protocol {}, and this agent speaks {protocol}: \
                     run the newer tollgate on this host again",
                crate::central::inbox::kind(&body),
                body.since_version()
            )));
        }
        events.push(InboxEvent {
            seq,
            event_id: event_id.to_string(),
            created_at: rfc3339_utc(created_at)?,
            body,
        });
    }
    Ok(InboxPage {
        protocol_version: protocol,
        events,
        head,
    })
}

fn rfc3339_utc(at: OffsetDateTime) -> Result<String, PullError> {
    at.to_offset(UtcOffset::UTC)
        .format(&Rfc3339)
        .map_err(|e| PullError::internal("formatting a time", e))
}

/// Everything the server holds for `agent_id`, in protocol `protocol` (see the module's
/// guarantees).
pub(crate) async fn snapshot(
    pool: &Pool,
    agent_id: Uuid,
    protocol: u32,
) -> Result<Snapshot, PullError> {
    let mut conn = pool.get().await?;
    let tx = conn
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let cursor: i64 = tx
        .query_one(
            "SELECT inbox_acked FROM agents WHERE agent_id = $1",
            &[&agent_id],
        )
        .await?
        .get("inbox_acked");
    let users = tx
        .query(
            "SELECT user_id, fleet, subscription_tier, power_level, monthly_allowance, \
             monthly_spend_cap FROM user_credits \
             WHERE home_agent_id = $1 OR (fleet AND $2 >= 3) ORDER BY user_id",
            &[&agent_id, &i32::try_from(protocol).unwrap_or(i32::MAX)],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(UserSettings {
                user_id: r.get("user_id"),
                tier: r.get("subscription_tier"),
                power_level: r.get("power_level"),
                monthly_allowance: credits(r.get("monthly_allowance"))?,
                monthly_spend_cap: r
                    .get::<_, Option<Decimal>>("monthly_spend_cap")
                    .map(credits)
                    .transpose()?,
                fleet: r.get("fleet"),
            })
        })
        .collect::<Result<Vec<_>, PullError>>()?;
    let (packages, power_levels) = catalog(&tx).await?;
    // API keys reach agents from protocol 2 on.
    let api_keys = if protocol >= 2 {
        api_keys::served_by(&tx, agent_id, protocol)
            .await
            .map_err(|e| PullError::internal("reading the API keys", e))?
    } else {
        Vec::new()
    };
    tx.commit().await?;
    Ok(Snapshot {
        protocol_version: protocol,
        cursor,
        users,
        packages,
        power_levels,
        api_keys,
    })
}

/// The whole catalog as the wire carries it: every package and power level. Sent in snapshots
/// and, at enrolment, to a new agent's inbox.
pub(crate) async fn catalog<C: GenericClient>(
    client: &C,
) -> Result<(Vec<PackageSpec>, Vec<PowerLevelSpec>), PullError> {
    let packages = client
        .query(
            "SELECT name, credits, price_usd, discount_percent, min_tier, is_active, is_featured, \
             sort_order, description, badge_text FROM credit_packages ORDER BY sort_order, name",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(PackageSpec {
                name: r.get("name"),
                credits: credits(r.get("credits"))?,
                price_usd_cents: cents(r.get("price_usd"))?,
                discount_percent: i64::from(r.get::<_, i32>("discount_percent")),
                min_tier: r.get("min_tier"),
                is_active: r.get("is_active"),
                is_featured: r.get("is_featured"),
                sort_order: i64::from(r.get::<_, i32>("sort_order")),
                description: r.get("description"),
                badge_text: r.get("badge_text"),
            })
        })
        .collect::<Result<Vec<_>, PullError>>()?;
    let power_levels = client
        .query(
            "SELECT power_level, name, description, preferred_providers, fallback_strategy, \
             cost_multiplier, max_latency_ms, min_quality_score, is_active \
             FROM power_level_configs ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            let providers: serde_json::Value = r.get("preferred_providers");
            let multiplier: Decimal = r.get("cost_multiplier");
            Ok(PowerLevelSpec {
                power_level: r.get("power_level"),
                name: r.get("name"),
                description: r.get("description"),
                preferred_providers: serde_json::from_value(providers)
                    .map_err(|e| PullError::internal("reading preferred_providers", e))?,
                fallback_strategy: r.get("fallback_strategy"),
                cost_multiplier: multiplier.normalize().to_string(),
                max_latency_ms: i64::from(r.get::<_, i32>("max_latency_ms")),
                min_quality_score: i64::from(r.get::<_, i32>("min_quality_score")),
                is_active: r.get("is_active"),
            })
        })
        .collect::<Result<Vec<_>, PullError>>()?;
    Ok((packages, power_levels))
}

/// A stored NUMERIC(38,9) as credits.
fn credits(value: Decimal) -> Result<Credits, PullError> {
    Credits::from_decimal(value).map_err(|e| PullError::internal("reading an amount", e))
}

/// A NUMERIC(12,2) dollar price as whole cents, exactly.
pub(crate) fn cents(price: Decimal) -> Result<i64, PullError> {
    let scaled = price
        .checked_mul(Decimal::ONE_HUNDRED)
        .map(|d| d.normalize())
        .filter(|c| c.fract().is_zero())
        .ok_or_else(|| {
            PullError::internal(
                "reading a price",
                format!("{price} is not a whole number of cents"),
            )
        })?;
    i64::try_from(scaled).map_err(|e| PullError::internal("reading a price", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_parse_and_name_the_culprit() {
        let ok = InboxParams::parse(Some("after=5&wait_ms=100")).unwrap();
        assert_eq!(ok.after, 5);
        assert_eq!(ok.wait, Duration::from_millis(100));
        assert_eq!(
            InboxParams::parse(Some("after=0")).unwrap().wait,
            Duration::ZERO
        );
        for (query, culprit) in [
            ("", "after"),
            ("after=-1", "after"),
            ("after=x", "after"),
            ("after=1e3", "after"),
            ("after=99999999999999999999", "after"),
            ("after=1&wait_ms=30001", "wait_ms"),
            ("after=1&wait_ms=-5", "wait_ms"),
            ("after=1&after=2", "after"),
            ("after=1&cursor=2", "cursor"),
        ] {
            let e = InboxParams::parse(Some(query)).unwrap_err();
            assert!(e.to_string().contains(culprit), "{query}: {e}");
        }
    }

    #[test]
    fn cents_are_exact() {
        assert_eq!(cents("45.00".parse().unwrap()).unwrap(), 4500);
        assert_eq!(cents("0.01".parse().unwrap()).unwrap(), 1);
        assert!(cents("0.001".parse().unwrap()).is_err());
    }
}
