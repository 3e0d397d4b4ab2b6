//! Writing a per-agent inbox event (SYNC.md "Pull").
//!
//! Guarantees: the event's seq is the agent's `inbox_head + 1`, taken under the agent row's lock
//! in the caller's transaction, so seqs are gapless and commit in order (a late-committing writer
//! cannot be skipped by a reader, unlike a bigserial); a `pg_notify` in the same transaction wakes
//! long polls on every replica at commit.

use tokio_postgres::Transaction;
use tollgate_schema::wire::EventBody;
use uuid::Uuid;

use crate::sync::notify::NOTIFY_SQL;

/// An event as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub agent_id: Uuid,
    pub seq: i64,
    pub event_id: Uuid,
}

/// The event's kind, as stored in `agent_inbox.kind` (the wire's `type` tag).
pub fn kind(body: &EventBody) -> &'static str {
    match body {
        EventBody::UserUpsert(_) => "user_upsert",
        EventBody::Credit(_) => "credit",
        EventBody::PackageUpsert(_) => "package_upsert",
        EventBody::PowerLevelUpsert(_) => "power_level_upsert",
        EventBody::ApiKeyUpsert(_) => "api_key_upsert",
        EventBody::EscrowGrant(_) => "escrow_grant",
    }
}

/// Appends `body` to `agent_id`'s inbox inside `tx`. Fails if the agent does not exist.
pub async fn append(
    tx: &Transaction<'_>,
    agent_id: Uuid,
    body: &EventBody,
    operation_key: Option<&str>,
) -> anyhow::Result<Written> {
    let row = tx
        .query_opt(
            "UPDATE agents SET inbox_head = inbox_head + 1 WHERE agent_id = $1 RETURNING inbox_head",
            &[&agent_id],
        )
        .await?
        .ok_or_else(|| anyhow::anyhow!("no agent {agent_id}"))?;
    let seq: i64 = row.get("inbox_head");
    let event_id = Uuid::now_v7();
    let json = serde_json::to_value(body)?;
    tx.execute(
        "INSERT INTO agent_inbox (agent_id, seq, event_id, kind, body, operation_key) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &agent_id,
            &seq,
            &event_id,
            &kind(body),
            &json,
            &operation_key,
        ],
    )
    .await?;
    tx.execute(NOTIFY_SQL, &[&agent_id]).await?;
    Ok(Written {
        agent_id,
        seq,
        event_id,
    })
}
