//! Managing agents (shared by the CLI `tollgate-server agents …` and the admin API): list with
//! their lag, revoke, release from quarantine, prune acknowledged inbox events.
//!
//! Guarantees:
//! - Lag is computed from the stream of the agent's current incarnation: `reported head −
//!   acknowledged head`, the entries the agent holds that the server has not stored yet.
//! - Revoking is final and immediate: the status check is in every authentication, the
//!   credential hash is dropped; a revoked agent cannot be enrolled again (use a new name).
//! - Releasing only moves a quarantined agent back to active (the evidence rows stay).
//! - Pruning deletes only events the agent has acknowledged (the table's trigger refuses anything
//!   else), keeps the newest `keep` of those, and records the new `inbox_pruned_through` in the
//!   same transaction, under the agent row's lock.

use deadpool_postgres::Pool;
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};
use tokio_postgres::Row;
use uuid::Uuid;

/// Why an agent operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The caller's input is wrong (bad name, bad TTL).
    #[error("{0}")]
    Invalid(String),
    #[error("no agent named {0:?}")]
    NotFound(String),
    /// The agent's state does not allow this (revoked, not quarantined, ...).
    #[error("{0}")]
    State(String),
    #[error("database error: {0}")]
    Database(#[from] tokio_postgres::Error),
    #[error("no database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("{0:#}")]
    Other(anyhow::Error),
}

/// Longest agent name (the `agents.name` CHECK).
pub const AGENT_NAME_CHARS_MAX: usize = 64;

/// Checks an agent name as the schema does: `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`.
pub fn check_name(name: &str) -> Result<(), AgentError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if first_ok && rest_ok && name.len() <= AGENT_NAME_CHARS_MAX {
        Ok(())
    } else {
        Err(AgentError::Invalid(format!(
            "agent name {:?} must be 1 to {AGENT_NAME_CHARS_MAX} characters of letters, digits, \
             '.', '_' or '-', starting with a letter or digit",
            super::push::truncate(name)
        )))
    }
}

/// One agent as `agents list` and `GET /admin/v1/agents` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentSummary {
    pub agent_id: String,
    pub name: String,
    /// pending | active | quarantined | revoked.
    pub status: String,
    pub incarnation: Option<String>,
    /// The contiguous acknowledged head of the current incarnation's stream.
    pub acked_seq: i64,
    /// The agent's own newest seq, as it last reported.
    pub reported_head_seq: i64,
    /// `reported_head_seq − acked_seq`: entries not yet stored centrally.
    pub lag: i64,
    pub last_push_at: Option<String>,
    pub inbox_head: i64,
    pub inbox_acked: i64,
    pub inbox_pruned_through: i64,
    pub last_seen_at: Option<String>,
    pub quarantine_reason: Option<String>,
    pub created_at: String,
    pub enrolled_at: Option<String>,
    pub revoked_at: Option<String>,
}

const SUMMARY_SQL: &str = "SELECT a.agent_id, a.name, a.status, a.incarnation, \
     COALESCE(s.acked_seq, 0) AS acked_seq, COALESCE(s.reported_head_seq, 0) AS reported_head_seq, \
     s.last_push_at, a.inbox_head, \
     a.inbox_acked, a.inbox_pruned_through, a.last_seen_at, a.quarantine_reason, a.created_at, \
     a.enrolled_at, a.revoked_at \
     FROM agents a LEFT JOIN agent_streams s \
       ON s.agent_id = a.agent_id AND s.incarnation = a.incarnation";

fn time_text(at: Option<OffsetDateTime>) -> Option<String> {
    at.and_then(|t| t.to_offset(UtcOffset::UTC).format(&Rfc3339).ok())
}

fn summary(row: &Row) -> AgentSummary {
    let agent_id: Uuid = row.get("agent_id");
    let incarnation: Option<Uuid> = row.get("incarnation");
    let acked_seq: i64 = row.get("acked_seq");
    let reported_head_seq: i64 = row.get("reported_head_seq");
    AgentSummary {
        agent_id: agent_id.to_string(),
        name: row.get("name"),
        status: row.get("status"),
        incarnation: incarnation.map(|i| i.to_string()),
        acked_seq,
        reported_head_seq,
        lag: reported_head_seq - acked_seq,
        last_push_at: time_text(row.get("last_push_at")),
        inbox_head: row.get("inbox_head"),
        inbox_acked: row.get("inbox_acked"),
        inbox_pruned_through: row.get("inbox_pruned_through"),
        last_seen_at: time_text(row.get("last_seen_at")),
        quarantine_reason: row.get("quarantine_reason"),
        created_at: time_text(Some(row.get("created_at"))).unwrap_or_default(),
        enrolled_at: time_text(row.get("enrolled_at")),
        revoked_at: time_text(row.get("revoked_at")),
    }
}

/// Every agent, by name.
pub async fn list(pool: &Pool) -> Result<Vec<AgentSummary>, AgentError> {
    let conn = pool.get().await?;
    let rows = conn
        .query(&format!("{SUMMARY_SQL} ORDER BY a.name"), &[])
        .await?;
    Ok(rows.iter().map(summary).collect())
}

/// One agent by name.
pub async fn show(pool: &Pool, name: &str) -> Result<AgentSummary, AgentError> {
    let conn = pool.get().await?;
    let row = conn
        .query_opt(&format!("{SUMMARY_SQL} WHERE a.name = $1"), &[&name])
        .await?
        .ok_or_else(|| AgentError::NotFound(name.to_owned()))?;
    Ok(summary(&row))
}

/// Revokes agent `name`: its credential is refused from now on. Revoking a revoked agent is a
/// no-op. Returns the agent as it is now.
pub async fn revoke(pool: &Pool, name: &str) -> Result<AgentSummary, AgentError> {
    {
        let conn = pool.get().await?;
        let found = conn
            .query_opt(
                "UPDATE agents SET status = 'revoked', revoked_at = COALESCE(revoked_at, now()), \
                 credential_hash = NULL, quarantine_reason = NULL \
                 WHERE name = $1 RETURNING agent_id",
                &[&name],
            )
            .await?;
        if found.is_none() {
            return Err(AgentError::NotFound(name.to_owned()));
        }
    }
    show(pool, name).await
}

/// Moves a quarantined agent back to active (an active agent stays active). Returns the agent as
/// it is now.
pub async fn release(pool: &Pool, name: &str) -> Result<AgentSummary, AgentError> {
    {
        let conn = pool.get().await?;
        let row = conn
            .query_opt(
                "WITH r AS (UPDATE agents SET status = 'active', quarantine_reason = NULL \
                 WHERE name = $1 AND status = 'quarantined' RETURNING 1) \
                 SELECT status, (SELECT count(*) FROM r) AS released FROM agents WHERE name = $1",
                &[&name],
            )
            .await?
            .ok_or_else(|| AgentError::NotFound(name.to_owned()))?;
        let status: String = row.get("status");
        let released: i64 = row.get("released");
        if released == 0 && status != "active" {
            return Err(AgentError::State(format!(
                "agent {name:?} is {status}, not quarantined; only a quarantined agent can be \
                 released"
            )));
        }
        if released > 0 {
            tracing::info!(agent = %name, "agent released from quarantine");
        }
    }
    show(pool, name).await
}

/// What pruning did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Pruned {
    /// Events deleted now.
    pub deleted: u64,
    /// Events at or below this seq are gone.
    pub pruned_through: i64,
    /// The newest event the agent acknowledged.
    pub inbox_acked: i64,
}

/// Deletes agent `name`'s acknowledged inbox events, keeping the newest `keep` acknowledged ones.
pub async fn prune_inbox(pool: &Pool, name: &str, keep: u32) -> Result<Pruned, AgentError> {
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    let row = tx
        .query_opt(
            "SELECT agent_id, inbox_acked, inbox_pruned_through FROM agents WHERE name = $1 \
             FOR UPDATE",
            &[&name],
        )
        .await?
        .ok_or_else(|| AgentError::NotFound(name.to_owned()))?;
    let agent_id: Uuid = row.get("agent_id");
    let acked: i64 = row.get("inbox_acked");
    let pruned: i64 = row.get("inbox_pruned_through");
    let through = (acked - i64::from(keep)).max(pruned);
    let deleted = tx
        .execute(
            "DELETE FROM agent_inbox WHERE agent_id = $1 AND seq <= $2",
            &[&agent_id, &through],
        )
        .await?;
    tx.execute(
        "UPDATE agents SET inbox_pruned_through = $2 WHERE agent_id = $1",
        &[&agent_id, &through],
    )
    .await?;
    tx.commit().await?;
    Ok(Pruned {
        deleted,
        pruned_through: through,
        inbox_acked: acked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_schema() {
        for ok in ["a", "agent-1", "A.b_c-d", &"x".repeat(64)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", ".a", "a b", "ä", "a/b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
