//! The set-based checks of reconcile: each one SQL statement (plus a bounded follow-up for the
//! streams that fail), returning only the rows that differ, at most one more than the report
//! lists per kind.
//!
//! Guarantees: every check runs in the caller's REPEATABLE READ snapshot; amounts are compared
//! as exact NUMERIC in SQL and printed from `rust_decimal` (never a float).

use std::collections::HashMap;

use rust_decimal::Decimal;
use tokio_postgres::Transaction;
use tollgate_schema::wire::GENESIS_HASH;
use uuid::Uuid;

use super::{Checked, Collector, DIFFERENCES_PER_KIND_MAX, Names, kind};
use crate::central::CentralError;

/// Rows fetched per check: one more than listed, so the report knows it left some out.
fn limit() -> i64 {
    i64::try_from(DIFFERENCES_PER_KIND_MAX + 1).unwrap_or(i64::MAX)
}

fn show(d: Decimal) -> String {
    d.normalize().to_string()
}

/// Loads agent names; lists quarantined agents; counts agents.
pub(super) async fn agents(
    tx: &Transaction<'_>,
    out: &mut Collector,
    checked: &mut Checked,
) -> Result<Names, CentralError> {
    let rows = tx
        .query(
            "SELECT agent_id, name, status, quarantine_reason FROM agents ORDER BY name",
            &[],
        )
        .await?;
    let mut names = HashMap::with_capacity(rows.len());
    for r in &rows {
        let id: Uuid = r.get("agent_id");
        let name: String = r.get("name");
        let status: String = r.get("status");
        if status == "quarantined" {
            checked.quarantined_agents += 1;
            let reason: Option<String> = r.get("quarantine_reason");
            out.push(
                kind::AGENT_QUARANTINED,
                None,
                Some(&name),
                format!(
                    "agent {name} is quarantined ({}); nothing more is accepted from it until \
                     an admin releases it",
                    reason.unwrap_or_default()
                ),
            );
        }
        names.insert(id, name);
    }
    checked.agents = i64::try_from(rows.len()).unwrap_or(i64::MAX);
    Ok(Names(names))
}

/// Per user: cache = journal sum = latest `balance_after`; lifetime purchased = SUM(purchase).
pub(super) async fn users(
    tx: &Transaction<'_>,
    out: &mut Collector,
    checked: &mut Checked,
    names: &Names,
) -> Result<(), CentralError> {
    let counts = tx
        .query_one(
            "SELECT (SELECT count(*) FROM user_credits) AS users, \
                    (SELECT count(*) FROM credit_transactions) AS entries",
            &[],
        )
        .await?;
    checked.users = counts.get("users");
    checked.entries = counts.get("entries");
    let rows = tx
        .query(
            "WITH sums AS ( \
                 SELECT user_id, sum(amount) AS total, \
                        coalesce(sum(amount) FILTER (WHERE transaction_type = 'purchase'), 0) \
                            AS purchased \
                 FROM credit_transactions GROUP BY user_id \
             ), latest AS ( \
                 SELECT DISTINCT ON (ct.user_id) ct.user_id, ct.balance_after, ct.agent_id, ct.seq \
                 FROM credit_transactions ct \
                 JOIN agent_streams s ON s.agent_id = ct.agent_id AND s.incarnation = ct.incarnation \
                 ORDER BY ct.user_id, s.created_at DESC, ct.incarnation DESC, ct.seq DESC \
             ), pool_purchases AS ( \
                 SELECT user_id, \
                        coalesce(sum(amount) FILTER (WHERE agent_id IS NULL \
                                                     AND result->>'debt_repaid' IS NULL), 0) \
                        + coalesce(sum((result->>'debt_repaid')::numeric), 0) AS purchased \
                 FROM central_operations \
                 WHERE kind = 'credit' AND result->>'kind' = 'purchase' \
                 GROUP BY user_id \
             ) \
             SELECT u.user_id, u.balance, u.lifetime_credits_purchased, u.fleet, \
                    coalesce(s.total, 0) AS total, \
                    coalesce(s.purchased, 0) + coalesce(p.purchased, 0) AS purchased, \
                    l.balance_after AS latest, l.agent_id AS latest_agent, l.seq AS latest_seq \
             FROM user_credits u \
             LEFT JOIN sums s ON s.user_id = u.user_id \
             LEFT JOIN latest l ON l.user_id = u.user_id \
             LEFT JOIN pool_purchases p ON p.user_id = u.user_id \
             WHERE u.balance <> coalesce(s.total, 0) \
                OR (NOT u.fleet AND coalesce(l.balance_after, 0) <> coalesce(s.total, 0)) \
                OR u.lifetime_credits_purchased <> coalesce(s.purchased, 0) + coalesce(p.purchased, 0) \
             ORDER BY u.user_id LIMIT $1",
            &[&limit()],
        )
        .await?;
    for r in rows {
        let user: String = r.get("user_id");
        let cache: Decimal = r.get("balance");
        let lifetime: Decimal = r.get("lifetime_credits_purchased");
        let total: Decimal = r.get("total");
        let purchased: Decimal = r.get("purchased");
        let latest: Option<Decimal> = r.get("latest");
        let latest_agent: Option<Uuid> = r.get("latest_agent");
        let latest_seq: Option<i64> = r.get("latest_seq");
        if cache != total {
            out.push(
                kind::BALANCE_CACHE,
                Some(&user),
                None,
                format!(
                    "cached balance {} ≠ journal sum {} (off by {})",
                    show(cache),
                    show(total),
                    show(cache - total)
                ),
            );
        }
        let fleet: bool = r.get("fleet");
        let latest_value = latest.unwrap_or(Decimal::ZERO);
        if !fleet && latest_value != total {
            let agent = latest_agent.map(|a| names.of(a));
            out.push(
                kind::BALANCE_AGENT,
                Some(&user),
                agent.as_deref(),
                format!(
                    "journal sum {} ≠ balance_after {} reported by agent {} on its latest entry \
                     (seq {})",
                    show(total),
                    show(latest_value),
                    agent.as_deref().unwrap_or("none"),
                    latest_seq.unwrap_or(0)
                ),
            );
        }
        if lifetime != purchased {
            out.push(
                kind::LIFETIME_PURCHASED,
                Some(&user),
                None,
                format!(
                    "lifetime credits purchased {} ≠ sum of purchase entries and pool purchases {}",
                    show(lifetime),
                    show(purchased)
                ),
            );
        }
    }
    Ok(())
}

/// A user's credit held by an agent other than the home (a former home ending at 0 is fine).
pub(super) async fn homes(
    tx: &Transaction<'_>,
    out: &mut Collector,
    names: &Names,
) -> Result<(), CentralError> {
    let rows = tx
        .query(
            "WITH per_agent AS ( \
                 SELECT DISTINCT ON (ct.user_id, ct.agent_id) ct.user_id, ct.agent_id, \
                        ct.balance_after \
                 FROM credit_transactions ct \
                 JOIN agent_streams s ON s.agent_id = ct.agent_id AND s.incarnation = ct.incarnation \
                 ORDER BY ct.user_id, ct.agent_id, s.created_at DESC, ct.incarnation DESC, \
                          ct.seq DESC \
             ) \
             SELECT p.user_id, u.home_agent_id, array_agg(p.agent_id ORDER BY p.agent_id) AS agents, \
                    array_agg(p.balance_after ORDER BY p.agent_id) AS balances \
             FROM per_agent p JOIN user_credits u ON u.user_id = p.user_id AND NOT u.fleet \
             GROUP BY p.user_id, u.home_agent_id \
             HAVING bool_or(p.agent_id IS DISTINCT FROM u.home_agent_id AND p.balance_after <> 0) \
             ORDER BY p.user_id LIMIT $1",
            &[&limit()],
        )
        .await?;
    for r in rows {
        let user: String = r.get("user_id");
        let home: Option<Uuid> = r.get("home_agent_id");
        let agents: Vec<Uuid> = r.get("agents");
        let balances: Vec<Decimal> = r.get("balances");
        let listed: Vec<String> = agents.iter().map(|a| names.of(*a)).collect();
        let off_home: Vec<(String, Decimal)> = agents
            .iter()
            .zip(&balances)
            .filter(|(a, b)| Some(**a) != home && !b.is_zero())
            .map(|(a, b)| (names.of(*a), *b))
            .collect();
        let holders: Vec<String> = off_home
            .iter()
            .map(|(a, b)| format!("{a} holds {}", show(*b)))
            .collect();
        let from = if listed.len() == 1 {
            format!("entries from agent {}", listed.join(""))
        } else {
            format!("entries from agents {}", join_and(&listed))
        };
        out.push(
            kind::NOT_HOME_AGENT,
            Some(&user),
            off_home.first().map(|(a, _)| a.as_str()),
            format!(
                "{from}; home is {}; {}",
                names.of_opt(home),
                holders.join(", ")
            ),
        );
    }
    Ok(())
}

fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Per (user, stream): each `balance_before` = the previous entry's `balance_after`.
pub(super) async fn balance_chains(
    tx: &Transaction<'_>,
    out: &mut Collector,
    names: &Names,
) -> Result<(), CentralError> {
    let rows = tx
        .query(
            "SELECT user_id, agent_id, incarnation, seq, balance_before, prev_after, prev_seq \
             FROM ( \
                 SELECT user_id, agent_id, incarnation, seq, balance_before, \
                        lag(balance_after) OVER w AS prev_after, lag(seq) OVER w AS prev_seq \
                 FROM credit_transactions \
                 WINDOW w AS (PARTITION BY user_id, agent_id, incarnation ORDER BY seq) \
             ) x \
             WHERE prev_after IS NOT NULL AND prev_after <> balance_before \
             ORDER BY agent_id, incarnation, seq LIMIT $1",
            &[&limit()],
        )
        .await?;
    for r in rows {
        let user: String = r.get("user_id");
        let agent = names.of(r.get("agent_id"));
        let incarnation: Uuid = r.get("incarnation");
        let seq: i64 = r.get("seq");
        let before: Decimal = r.get("balance_before");
        let prev_after: Decimal = r.get("prev_after");
        let prev_seq: i64 = r.get("prev_seq");
        out.push(
            kind::BALANCE_CHAIN,
            Some(&user),
            Some(&agent),
            format!(
                "entry seq {seq} (incarnation {incarnation}) starts from balance {} but the \
                 user's previous entry, seq {prev_seq}, ended at {}",
                show(before),
                show(prev_after)
            ),
        );
    }
    Ok(())
}

/// Most missing ranges named for one stream.
const GAPS_NAMED_MAX: i64 = 10;

/// Per stream: 1..acked_seq all present, none beyond, head_hash = hash of entry acked_seq.
pub(super) async fn streams(
    tx: &Transaction<'_>,
    out: &mut Collector,
    checked: &mut Checked,
    names: &Names,
) -> Result<(), CentralError> {
    let rows = tx
        .query(
            "SELECT s.agent_id, s.incarnation, s.acked_seq, s.head_hash, \
                    count(ct.seq) FILTER (WHERE ct.seq <= s.acked_seq) AS held, \
                    count(ct.seq) FILTER (WHERE ct.seq > s.acked_seq) AS beyond, \
                    coalesce(max(ct.seq), 0) AS max_seq, \
                    (SELECT h.hash FROM credit_transactions h WHERE h.agent_id = s.agent_id \
                       AND h.incarnation = s.incarnation AND h.seq = s.acked_seq) AS acked_hash \
             FROM agent_streams s \
             LEFT JOIN credit_transactions ct \
                    ON ct.agent_id = s.agent_id AND ct.incarnation = s.incarnation \
             GROUP BY s.agent_id, s.incarnation, s.acked_seq, s.head_hash \
             ORDER BY s.agent_id, s.incarnation",
            &[],
        )
        .await?;
    checked.streams = i64::try_from(rows.len()).unwrap_or(i64::MAX);
    for r in rows {
        let agent_id: Uuid = r.get("agent_id");
        let agent = names.of(agent_id);
        let incarnation: Uuid = r.get("incarnation");
        let acked: i64 = r.get("acked_seq");
        let head_hash: Vec<u8> = r.get("head_hash");
        let held: i64 = r.get("held");
        let beyond: i64 = r.get("beyond");
        let max_seq: i64 = r.get("max_seq");
        let acked_hash: Option<Vec<u8>> = r.get("acked_hash");
        if held < acked {
            let gaps = tx
                .query(
                    "SELECT start, stop FROM ( \
                         SELECT seq + 1 AS start, \
                                coalesce(lead(seq) OVER (ORDER BY seq), $3 + 1) - 1 AS stop \
                         FROM (SELECT 0::bigint AS seq UNION ALL \
                               SELECT seq FROM credit_transactions \
                               WHERE agent_id = $1 AND incarnation = $2 AND seq <= $3) z \
                     ) g WHERE stop >= start ORDER BY start LIMIT $4",
                    &[&agent_id, &incarnation, &acked, &GAPS_NAMED_MAX],
                )
                .await?;
            let ranges: Vec<String> = gaps
                .iter()
                .map(|g| {
                    let (start, stop): (i64, i64) = (g.get("start"), g.get("stop"));
                    if start == stop {
                        format!("{start}")
                    } else {
                        format!("{start}..{stop}")
                    }
                })
                .collect();
            out.push(
                kind::STREAM_GAP,
                None,
                Some(&agent),
                format!(
                    "stream {incarnation} of agent {agent}: acked_seq is {acked} but only {held} \
                     of seqs 1..{acked} are stored; missing seq {}",
                    ranges.join(", ")
                ),
            );
        }
        if beyond > 0 {
            out.push(
                kind::BEYOND_ACKED,
                None,
                Some(&agent),
                format!(
                    "stream {incarnation} of agent {agent}: {beyond} entr{} stored beyond \
                     acked_seq {acked} (up to seq {max_seq})",
                    if beyond == 1 { "y" } else { "ies" }
                ),
            );
        }
        let expected: Option<Vec<u8>> = if acked == 0 {
            Some(GENESIS_HASH.to_vec())
        } else {
            acked_hash
        };
        if let Some(expected) = expected
            && expected != head_hash
        {
            out.push(
                kind::HEAD_HASH,
                None,
                Some(&agent),
                format!(
                    "stream {incarnation} of agent {agent}: head_hash {} is not the hash {} of \
                     entry {acked}",
                    hex::encode(&head_hash),
                    hex::encode(&expected)
                ),
            );
        }
    }
    Ok(())
}

/// One usage debit per (agent, request id).
pub(super) async fn usage(
    tx: &Transaction<'_>,
    out: &mut Collector,
    checked: &mut Checked,
    names: &Names,
) -> Result<(), CentralError> {
    checked.usage_debits = tx
        .query_one(
            "SELECT count(*) AS n FROM credit_transactions WHERE transaction_type = 'usage'",
            &[],
        )
        .await?
        .get("n");
    let rows = tx
        .query(
            "SELECT agent_id, request_id, count(*) AS n, min(user_id) AS user_id, \
                    array_agg(seq ORDER BY seq) AS seqs \
             FROM credit_transactions \
             WHERE transaction_type = 'usage' AND request_id IS NOT NULL \
             GROUP BY agent_id, request_id HAVING count(*) > 1 \
             ORDER BY agent_id, request_id LIMIT $1",
            &[&limit()],
        )
        .await?;
    for r in rows {
        let agent = names.of(r.get("agent_id"));
        let request: String = r.get("request_id");
        let n: i64 = r.get("n");
        let user: String = r.get("user_id");
        let seqs: Vec<i64> = r.get("seqs");
        out.push(
            kind::DUPLICATE_USAGE,
            Some(&user),
            Some(&agent),
            format!(
                "request {request:?} was debited {n} times by agent {agent} (seqs {seqs:?}); a \
                 request is debited once"
            ),
        );
    }
    Ok(())
}

/// Each central credit operation sent to an agent (home credit, grants): exactly one entry, from
/// that agent, matching. A fleet user's pool credit has no entry: [`fleet`] checks it.
pub(super) async fn credit_operations(
    tx: &Transaction<'_>,
    out: &mut Collector,
    checked: &mut Checked,
    names: &Names,
) -> Result<(), CentralError> {
    checked.credit_operations = tx
        .query_one(
            "SELECT count(*) AS n FROM central_operations WHERE kind = 'credit'",
            &[],
        )
        .await?
        .get("n");
    let rows = tx
        .query(
            "SELECT o.operation_key, o.user_id, o.amount, o.agent_id, o.inbox_seq, a.inbox_acked, \
                    o.result->>'kind' AS expected_type, count(ct.id) AS n, \
                    coalesce(array_agg(ct.agent_id ORDER BY ct.id) FILTER (WHERE ct.id IS NOT NULL), '{}') AS agents, \
                    coalesce(array_agg(ct.seq ORDER BY ct.id) FILTER (WHERE ct.id IS NOT NULL), '{}') AS seqs, \
                    coalesce(array_agg(ct.user_id ORDER BY ct.id) FILTER (WHERE ct.id IS NOT NULL), '{}') AS users, \
                    coalesce(array_agg(ct.amount ORDER BY ct.id) FILTER (WHERE ct.id IS NOT NULL), '{}') AS amounts, \
                    coalesce(array_agg(ct.transaction_type ORDER BY ct.id) FILTER (WHERE ct.id IS NOT NULL), '{}') AS types \
             FROM central_operations o \
             LEFT JOIN agents a ON a.agent_id = o.agent_id \
             LEFT JOIN credit_transactions ct ON ct.idempotency_key = o.operation_key \
             WHERE o.kind = 'credit' AND o.agent_id IS NOT NULL \
             GROUP BY o.operation_key, a.agent_id \
             HAVING count(ct.id) <> 1 \
                 OR bool_or(ct.amount <> o.amount OR ct.user_id <> o.user_id \
                            OR ct.agent_id IS DISTINCT FROM o.agent_id \
                            OR ct.transaction_type IS DISTINCT FROM o.result->>'kind') \
             ORDER BY o.operation_key LIMIT $1",
            &[&limit()],
        )
        .await?;
    for r in rows {
        let key: String = r.get("operation_key");
        let user: String = r.get("user_id");
        let amount: Decimal = r.get("amount");
        let sent_to: Option<Uuid> = r.get("agent_id");
        let inbox_seq: Option<i64> = r.get("inbox_seq");
        let acked: Option<i64> = r.get("inbox_acked");
        let expected_type: Option<String> = r.get("expected_type");
        let n: i64 = r.get("n");
        let agents: Vec<Uuid> = r.get("agents");
        let seqs: Vec<i64> = r.get("seqs");
        let users: Vec<String> = r.get("users");
        let amounts: Vec<Decimal> = r.get("amounts");
        let types: Vec<String> = r.get("types");
        let agent = names.of_opt(sent_to);
        if n == 0 {
            let seq = inbox_seq.unwrap_or(0);
            let acked = acked.unwrap_or(0);
            let detail = if acked >= seq {
                format!(
                    "operation {key} ({} credits) not applied: agent {agent} acknowledged its \
                     inbox event (seq {seq}, acknowledged {acked}) but no entry carries the key \
                     yet (the agent refused it, or has not pushed it)",
                    show(amount)
                )
            } else {
                format!(
                    "operation {key} ({} credits) not yet applied by agent {agent} (inbox seq \
                     {seq}, agent acknowledged {acked})",
                    show(amount)
                )
            };
            out.push(kind::CREDIT_NOT_APPLIED, Some(&user), Some(&agent), detail);
            continue;
        }
        let described: Vec<String> = (0..agents.len())
            .map(|i| {
                format!(
                    "agent {} seq {} user {} {} {}",
                    names.of(agents[i]),
                    seqs.get(i).copied().unwrap_or_default(),
                    users.get(i).map(String::as_str).unwrap_or_default(),
                    types.get(i).map(String::as_str).unwrap_or_default(),
                    amounts.get(i).map(|a| show(*a)).unwrap_or_default(),
                )
            })
            .collect();
        let expected = format!(
            "user {user} {} {} on agent {agent}",
            expected_type.as_deref().unwrap_or("?"),
            show(amount)
        );
        if n > 1 {
            out.push(
                kind::CREDIT_DUPLICATED,
                Some(&user),
                Some(&agent),
                format!(
                    "operation {key} ({expected}) appears in {n} entries: {}",
                    described.join("; ")
                ),
            );
        } else {
            out.push(
                kind::CREDIT_MISMATCH,
                Some(&user),
                Some(&agent),
                format!(
                    "operation {key} is {expected} but its entry is {}",
                    described.join("; ")
                ),
            );
        }
    }
    Ok(())
}

/// Entries carrying a central key (`admin:` / `stripe:` / `grant:`) no credit operation has, or
/// drawing the overdraft line (`overdraft:<grant key>`) of a grant never made.
pub(super) async fn orphan_central_keys(
    tx: &Transaction<'_>,
    out: &mut Collector,
    names: &Names,
) -> Result<(), CentralError> {
    let rows = tx
        .query(
            "SELECT ct.agent_id, ct.seq, ct.user_id, ct.idempotency_key, ct.amount \
             FROM credit_transactions ct \
             WHERE (ct.idempotency_key LIKE 'admin:%' OR ct.idempotency_key LIKE 'stripe:%' \
                    OR ct.idempotency_key LIKE 'grant:%' \
                    OR ct.idempotency_key LIKE 'overdraft:%') \
               AND NOT EXISTS (SELECT 1 FROM central_operations o \
                               WHERE o.kind = 'credit' AND o.operation_key = \
                                   CASE WHEN ct.idempotency_key LIKE 'overdraft:%' \
                                        THEN substr(ct.idempotency_key, 11) \
                                        ELSE ct.idempotency_key END) \
             ORDER BY ct.agent_id, ct.incarnation, ct.seq LIMIT $1",
            &[&limit()],
        )
        .await?;
    for r in rows {
        let agent = names.of(r.get("agent_id"));
        let seq: i64 = r.get("seq");
        let user: String = r.get("user_id");
        let key: String = r.get("idempotency_key");
        let amount: Decimal = r.get("amount");
        out.push(
            kind::ENTRY_WITHOUT_OPERATION,
            Some(&user),
            Some(&agent),
            format!(
                "entry seq {seq} of agent {agent} ({} credits) carries central key {key} but no \
                 central operation has that key",
                show(amount)
            ),
        );
    }
    Ok(())
}

/// Home users' debt: what their operations booked as owed less what later credit repaid.
pub(super) async fn home_debts(
    tx: &Transaction<'_>,
    out: &mut Collector,
) -> Result<(), CentralError> {
    let rows = tx
        .query(
            "WITH ops AS ( \
                 SELECT o.user_id, \
                        coalesce(sum((o.result->>'debt_booked')::numeric), 0) AS booked, \
                        coalesce(sum((o.result->>'debt_repaid')::numeric), 0) AS repaid \
                 FROM central_operations o JOIN user_credits u ON u.user_id = o.user_id \
                 WHERE NOT u.fleet AND o.kind = 'credit' GROUP BY o.user_id \
             ) \
             SELECT u.user_id, u.debt, coalesce(ops.booked, 0) AS booked, \
                    coalesce(ops.repaid, 0) AS repaid \
             FROM user_credits u LEFT JOIN ops ON ops.user_id = u.user_id \
             WHERE NOT u.fleet \
               AND u.debt <> coalesce(ops.booked, 0) - coalesce(ops.repaid, 0) \
             ORDER BY u.user_id LIMIT $1",
            &[&limit()],
        )
        .await?;
    for r in rows {
        let user: String = r.get("user_id");
        let debt: Decimal = r.get("debt");
        let booked: Decimal = r.get("booked");
        let repaid: Decimal = r.get("repaid");
        out.push(
            kind::DEBT,
            Some(&user),
            None,
            format!(
                "debt {} ≠ booked {} − repaid {} = {}",
                show(debt),
                show(booked),
                show(repaid),
                show(booked - repaid)
            ),
        );
    }
    Ok(())
}

/// Fleet users: each position (pool − debt) equals its credits less its grants plus the releases
/// less the overdrafts booked; what each
/// agent holds of a user (`escrow_holdings`) equals the sum of that agent's entries for them and
/// the `balance_after` of its latest one.
pub(super) async fn fleet(
    tx: &Transaction<'_>,
    out: &mut Collector,
    names: &Names,
) -> Result<(), CentralError> {
    let pools = tx
        .query(
            "WITH credits AS ( \
                 SELECT o.user_id, \
                        coalesce(sum(o.amount) FILTER (WHERE o.agent_id IS NULL \
                                 /* not a home user's operation that sent nothing, from \
                                    before they turned fleet */ \
                                 AND o.result->>'debt_booked' IS NULL \
                                 AND o.result->>'debt_repaid' IS NULL), 0) AS credited, \
                        coalesce(sum(o.amount) FILTER (WHERE o.operation_key LIKE 'grant:%'), 0) \
                            AS granted \
                 FROM central_operations o JOIN user_credits u ON u.user_id = o.user_id \
                 WHERE u.fleet AND o.kind = 'credit' GROUP BY o.user_id \
             ), escrow AS ( \
                 SELECT ct.user_id, \
                        coalesce(-sum(ct.amount) FILTER (WHERE ct.amount < 0), 0) AS released, \
                        coalesce(sum(ct.amount) \
                                 FILTER (WHERE ct.idempotency_key LIKE 'overdraft:%'), 0) \
                            AS overdrawn \
                 FROM credit_transactions ct JOIN user_credits u ON u.user_id = ct.user_id \
                 WHERE u.fleet AND ct.transaction_type = 'escrow' GROUP BY ct.user_id \
             ) \
             SELECT u.user_id, u.pool, u.debt, coalesce(c.credited, 0) AS credited, \
                    coalesce(c.granted, 0) AS granted, coalesce(e.released, 0) AS released, \
                    coalesce(e.overdrawn, 0) AS overdrawn \
             FROM user_credits u \
             LEFT JOIN credits c ON c.user_id = u.user_id \
             LEFT JOIN escrow e ON e.user_id = u.user_id \
             WHERE u.fleet AND u.pool - u.debt <> coalesce(c.credited, 0) - coalesce(c.granted, 0) \
                                          + coalesce(e.released, 0) - coalesce(e.overdrawn, 0) \
             ORDER BY u.user_id LIMIT $1",
            &[&limit()],
        )
        .await?;
    for r in pools {
        let user: String = r.get("user_id");
        let pool: Decimal = r.get("pool");
        let debt: Decimal = r.get("debt");
        let credited: Decimal = r.get("credited");
        let granted: Decimal = r.get("granted");
        let released: Decimal = r.get("released");
        let overdrawn: Decimal = r.get("overdrawn");
        out.push(
            kind::FLEET_POOL,
            Some(&user),
            None,
            format!(
                "pool {} − debt {} ≠ credited {} − granted {} + released {} − overdrawn {} = {}",
                show(pool),
                show(debt),
                show(credited),
                show(granted),
                show(released),
                show(overdrawn),
                show(credited - granted + released - overdrawn)
            ),
        );
    }
    let holdings = tx
        .query(
            "WITH sums AS ( \
                 SELECT ct.user_id, ct.agent_id, sum(ct.amount) AS total FROM credit_transactions ct \
                 JOIN user_credits u ON u.user_id = ct.user_id WHERE u.fleet \
                 GROUP BY ct.user_id, ct.agent_id \
             ), latest AS ( \
                 SELECT DISTINCT ON (ct.user_id, ct.agent_id) ct.user_id, ct.agent_id, \
                        ct.balance_after, ct.seq \
                 FROM credit_transactions ct \
                 JOIN user_credits u ON u.user_id = ct.user_id AND u.fleet \
                 JOIN agent_streams s ON s.agent_id = ct.agent_id AND s.incarnation = ct.incarnation \
                 ORDER BY ct.user_id, ct.agent_id, s.created_at DESC, ct.incarnation DESC, \
                          ct.seq DESC \
             ) \
             SELECT coalesce(h.user_id, s.user_id) AS user_id, \
                    coalesce(h.agent_id, s.agent_id) AS agent_id, \
                    coalesce(h.balance, 0) AS held, coalesce(s.total, 0) AS total, \
                    l.balance_after AS latest, l.seq AS latest_seq \
             FROM escrow_holdings h \
             FULL JOIN sums s ON s.user_id = h.user_id AND s.agent_id = h.agent_id \
             LEFT JOIN latest l ON l.user_id = coalesce(h.user_id, s.user_id) \
                               AND l.agent_id = coalesce(h.agent_id, s.agent_id) \
             WHERE coalesce(h.balance, 0) <> coalesce(s.total, 0) \
                OR coalesce(l.balance_after, 0) <> coalesce(s.total, 0) \
             ORDER BY 1, 2 LIMIT $1",
            &[&limit()],
        )
        .await?;
    for r in holdings {
        let user: String = r.get("user_id");
        let agent = names.of(r.get("agent_id"));
        let held: Decimal = r.get("held");
        let total: Decimal = r.get("total");
        let latest: Option<Decimal> = r.get("latest");
        let latest_seq: Option<i64> = r.get("latest_seq");
        out.push(
            kind::FLEET_HOLDING,
            Some(&user),
            Some(&agent),
            format!(
                "agent {agent} holds {} of fleet user {user} by the cache, {} by the sum of its \
                 entries, {} by its latest entry (seq {})",
                show(held),
                show(total),
                show(latest.unwrap_or(Decimal::ZERO)),
                latest_seq.unwrap_or(0)
            ),
        );
    }
    Ok(())
}
