//! The central state as gauges on `/metrics`, read from the database when it is scraped:
//! agents by status, each agent's lag, inbox backlog, last contact and quarantine, and the fleet
//! pools (users, empty pools, credit, debt); and the optional periodic reconcile whose result
//! the reconcile gauges show.
//!
//! Guarantees:
//! - A scrape costs two reads (the agents' list, one aggregate over `user_credits`) on a pool
//!   connection, bounded by [`SCRAPE_DB_TIMEOUT`]: a database that does not answer in time sets
//!   `tollgate_server_database_up` to 0 and leaves the other gauges as they were, and the scrape
//!   still answers (the replica's own counters are still worth having).
//! - Agent series are rebuilt on each successful read: a revoked or renamed agent's series go
//!   away; revoked agents are counted by status only.
//! - Nothing here writes to the database; the periodic reconcile is reconcile's own read-only
//!   transaction.

use std::time::Duration;

use deadpool_postgres::Pool;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::metrics::{AgentLabels, Metrics, StatusLabels};

/// The longest a scrape waits for its database reads.
pub const SCRAPE_DB_TIMEOUT: Duration = Duration::from_secs(2);

/// The agent statuses, each reported (0 included).
const STATUSES: [&str; 4] = ["pending", "active", "quarantined", "revoked"];

/// Refreshes the database gauges of `metrics` (see the module's guarantees).
pub async fn refresh(pool: &Pool, metrics: &Metrics) {
    let read = tokio::time::timeout(SCRAPE_DB_TIMEOUT, read(pool)).await;
    let db = &metrics.db;
    let (agents, fleet) = match read {
        Ok(Ok(values)) => values,
        Ok(Err(e)) => {
            tracing::warn!(error = %format!("{e:#}"), "metrics: could not read the database");
            db.database_up.set(0);
            return;
        }
        Err(_) => {
            tracing::warn!("metrics: the database did not answer in time");
            db.database_up.set(0);
            return;
        }
    };
    db.database_up.set(1);
    db.agent_lag.clear();
    db.agent_inbox_backlog.clear();
    db.agent_last_seen_age.clear();
    db.agent_quarantined.clear();
    let now = OffsetDateTime::now_utc();
    for status in STATUSES {
        let n = agents.iter().filter(|a| a.status == status).count();
        db.agents
            .get_or_create(&StatusLabels {
                status: status.to_owned(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    for agent in agents.iter().filter(|a| a.status != "revoked") {
        let labels = AgentLabels {
            agent: agent.name.clone(),
        };
        db.agent_lag.get_or_create(&labels).set(agent.lag.max(0));
        db.agent_inbox_backlog
            .get_or_create(&labels)
            .set((agent.inbox_head - agent.inbox_acked).max(0));
        if let Some(seen) = agent
            .last_seen_at
            .as_deref()
            .and_then(|at| OffsetDateTime::parse(at, &Rfc3339).ok())
        {
            db.agent_last_seen_age
                .get_or_create(&labels)
                .set((now - seen).as_seconds_f64().max(0.0));
        }
        db.agent_quarantined
            .get_or_create(&labels)
            .set(i64::from(agent.status == "quarantined"));
    }
    db.fleet_users.set(fleet.users);
    db.fleet_pools_empty.set(fleet.empty);
    db.fleet_pool_nanos.set(fleet.pool_nanos);
    db.fleet_debt_nanos.set(fleet.debt_nanos);
}

#[derive(Debug, Default)]
struct Fleet {
    users: i64,
    empty: i64,
    pool_nanos: i64,
    debt_nanos: i64,
}

async fn read(pool: &Pool) -> anyhow::Result<(Vec<crate::sync::agents::AgentSummary>, Fleet)> {
    let agents = crate::sync::agents::list(pool).await?;
    let conn = pool.get().await?;
    // Sums in nano-credits, clamped to what a gauge holds.
    let row = conn
        .query_one(
            "SELECT count(*) FILTER (WHERE fleet) AS users, \
                    count(*) FILTER (WHERE fleet AND pool = 0) AS empty, \
                    LEAST(COALESCE(sum(pool) FILTER (WHERE fleet), 0) * 1000000000, \
                          9000000000000000000)::bigint AS pool_nanos, \
                    LEAST(COALESCE(sum(debt), 0) * 1000000000, \
                          9000000000000000000)::bigint AS debt_nanos \
             FROM user_credits",
            &[],
        )
        .await?;
    let fleet = Fleet {
        users: row.get("users"),
        empty: row.get("empty"),
        pool_nanos: row.get("pool_nanos"),
        debt_nanos: row.get("debt_nanos"),
    };
    Ok((agents, fleet))
}

/// Runs reconcile every `interval` and records each outcome in `metrics`, until the process
/// ends (`TOLLGATE_SERVER_RECONCILE_INTERVAL_SECS`; off by default).
pub async fn reconcile_every(pool: Pool, metrics: std::sync::Arc<Metrics>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match crate::reconcile::run(&pool).await {
            Ok(report) => {
                if !report.ok {
                    tracing::warn!(
                        differences = report.differences.len(),
                        "reconcile found differences (`tollgate-server reconcile` lists them)"
                    );
                }
                metrics.record_reconcile(Some(&report));
            }
            Err(e) => {
                tracing::warn!(error = %e, "the periodic reconcile failed");
                metrics.record_reconcile(None);
            }
        }
    }
}
