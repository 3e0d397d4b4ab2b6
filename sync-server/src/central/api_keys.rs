//! API keys governed centrally: made, listed and revoked on the server, and sent (hashes only) to
//! every agent that serves the user.
//!
//! Guarantees:
//! - The key exists in clear only in the value [`create`] returns (wiped on drop); the database
//!   and the wire hold its SHA-256 ([`tollgate_schema::api_key::hash`]).
//! - The key's row and its `api_key_upsert` inbox event(s) commit in one transaction, so an agent
//!   learns of every key exactly as stored, and of a revocation in the transaction that revokes.
//! - An agent speaking a protocol older than the event's ([`EventBody::since_version`]) gets no
//!   event; when its protocol rises, [`catch_up`] sends it every key it serves, in the
//!   transaction that records the new version (under the agent row's lock, which every inbox
//!   write also takes, so no key falls between the two).
//! - Revoking is idempotent: a revoked key stays revoked with its first revocation time.

use deadpool_postgres::Pool;
use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::{Row, Transaction};
use tollgate_schema::api_key;
use tollgate_schema::wire::{ApiKeySpec, EventBody};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::{CentralError, inbox, rfc3339, validate};

/// A key as listed: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiKeyInfo {
    pub key_id: String,
    pub user_id: String,
    pub prefix: String,
    pub name: String,
    pub created_at: String,
    pub created_by: String,
    pub revoked_at: Option<String>,
}

/// A key just made: the one time its secret exists. Debug hides the secret.
pub struct CreatedKey {
    pub info: ApiKeyInfo,
    pub secret: Zeroizing<String>,
    /// The agents (by name) the key's hash was sent to.
    pub sent_to: Vec<String>,
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey")
            .field("info", &self.info)
            .field("secret", &format_args!("<redacted>"))
            .field("sent_to", &self.sent_to)
            .finish()
    }
}

/// What [`revoke`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Revoked {
    pub info: ApiKeyInfo,
    /// False when the key was revoked before (nothing was written).
    pub newly: bool,
    pub sent_to: Vec<String>,
}

const COLUMNS: &str = "key_id, user_id, key_hash, prefix, name, created_at, created_by, revoked_at";

fn info(row: &Row) -> ApiKeyInfo {
    ApiKeyInfo {
        key_id: row.get("key_id"),
        user_id: row.get("user_id"),
        prefix: row.get("prefix"),
        name: row.get("name"),
        created_at: rfc3339(row.get("created_at")),
        created_by: row.get("created_by"),
        revoked_at: row
            .get::<_, Option<OffsetDateTime>>("revoked_at")
            .map(rfc3339),
    }
}

fn spec(row: &Row) -> ApiKeySpec {
    let hash: Vec<u8> = row.get("key_hash");
    let info = info(row);
    ApiKeySpec {
        key_id: info.key_id,
        user_id: info.user_id,
        key_hash: hex::encode(hash),
        prefix: info.prefix,
        name: Some(info.name),
        created_at: info.created_at,
        revoked_at: info.revoked_at,
    }
}

/// Makes a key for `user_id`, stores its hash and sends it to the agents serving the user.
pub async fn create(
    pool: &Pool,
    user_id: &str,
    name: &str,
    actor: &str,
) -> Result<CreatedKey, CentralError> {
    validate::user_id("user_id", user_id)?;
    api_key::check_name(name).map_err(|why| CentralError::invalid("name", why))?;
    let secret = api_key::new_secret().map_err(|e| CentralError::Internal(e.into()))?;
    let key_id = api_key::new_key_id().map_err(|e| CentralError::Internal(e.into()))?;
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    let row = tx
        .query_opt(
            &format!(
                "INSERT INTO api_keys (key_id, user_id, key_hash, prefix, name, created_by) \
                 SELECT $1, user_id, $3, $4, $5, $6 FROM user_credits WHERE user_id = $2 \
                 FOR SHARE RETURNING {COLUMNS}"
            ),
            &[
                &key_id,
                &user_id,
                &api_key::hash(&secret).as_slice(),
                &api_key::prefix(&secret),
                &name,
                &actor,
            ],
        )
        .await?
        .ok_or_else(|| CentralError::NotFound(format!("no user {user_id:?} is known centrally")))?;
    let sent_to = send(&tx, user_id, &spec(&row)).await?;
    tx.commit().await?;
    Ok(CreatedKey {
        info: info(&row),
        secret,
        sent_to,
    })
}

/// A user's keys, oldest first.
pub async fn list(pool: &Pool, user_id: &str) -> Result<Vec<ApiKeyInfo>, CentralError> {
    validate::user_id("user_id", user_id)?;
    let conn = pool.get().await?;
    if conn
        .query_opt("SELECT 1 FROM user_credits WHERE user_id = $1", &[&user_id])
        .await?
        .is_none()
    {
        return Err(CentralError::NotFound(format!(
            "no user {user_id:?} is known centrally"
        )));
    }
    let rows = conn
        .query(
            &format!(
                "SELECT {COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY created_at, key_id"
            ),
            &[&user_id],
        )
        .await?;
    Ok(rows.iter().map(info).collect())
}

/// Revokes a key and sends the revocation to the agents serving its user. Idempotent.
pub async fn revoke(pool: &Pool, key_id: &str) -> Result<Revoked, CentralError> {
    api_key::check_key_id(key_id).map_err(|why| CentralError::invalid("key_id", why))?;
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    let newly = tx
        .query_opt(
            &format!(
                "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL \
                 RETURNING {COLUMNS}"
            ),
            &[&key_id],
        )
        .await?;
    let (row, newly) = match newly {
        Some(row) => (row, true),
        None => {
            let row = tx
                .query_opt(
                    &format!("SELECT {COLUMNS} FROM api_keys WHERE key_id = $1"),
                    &[&key_id],
                )
                .await?
                .ok_or_else(|| CentralError::NotFound(format!("no API key {key_id:?}")))?;
            (row, false)
        }
    };
    let sent_to = if newly {
        let user_id: String = row.get("user_id");
        send(&tx, &user_id, &spec(&row)).await?
    } else {
        Vec::new()
    };
    tx.commit().await?;
    Ok(Revoked {
        info: info(&row),
        newly,
        sent_to,
    })
}

/// The agents that serve `user_id` and can read the event: its home agent, unless revoked or
/// speaking a protocol older than the event's; for a fleet user, every such agent that speaks
/// protocol 3.
async fn serving_agents(
    client: &Transaction<'_>,
    user_id: &str,
    body: &EventBody,
) -> Result<Vec<(Uuid, String)>, CentralError> {
    let fleet: bool = client
        .query_one(
            "SELECT fleet FROM user_credits WHERE user_id = $1",
            &[&user_id],
        )
        .await?
        .get("fleet");
    if fleet {
        return super::fleet::serving_agents(client, body).await;
    }
    let since = i32::try_from(body.since_version()).unwrap_or(i32::MAX);
    let rows = client
        .query(
            "SELECT a.agent_id, a.name FROM user_credits u JOIN agents a \
             ON a.agent_id = u.home_agent_id \
             WHERE u.user_id = $1 AND a.status <> 'revoked' AND a.protocol_version >= $2",
            &[&user_id, &since],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get("agent_id"), r.get("name")))
        .collect())
}

/// Writes the key's event to every agent serving its user; the names of those agents.
async fn send(
    tx: &Transaction<'_>,
    user_id: &str,
    key: &ApiKeySpec,
) -> Result<Vec<String>, CentralError> {
    let body = EventBody::ApiKeyUpsert(key.clone());
    let mut names = Vec::new();
    for (agent_id, name) in serving_agents(tx, user_id, &body).await? {
        inbox::append(tx, agent_id, &body, None).await?;
        names.push(name);
    }
    Ok(names)
}

/// Every key of the users `agent_id` serves, as the agent should hold them (snapshots): those
/// homed on it and, from protocol 3, fleet users'.
pub async fn served_by(
    client: &Transaction<'_>,
    agent_id: Uuid,
    protocol: u32,
) -> Result<Vec<ApiKeySpec>, CentralError> {
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM api_keys WHERE user_id IN \
                 (SELECT user_id FROM user_credits WHERE home_agent_id = $1 \
                  OR (fleet AND $2 >= {})) \
                 ORDER BY created_at, key_id",
                super::fleet::FLEET_PROTOCOL
            ),
            &[&agent_id, &i32::try_from(protocol).unwrap_or(i32::MAX)],
        )
        .await?;
    Ok(rows.iter().map(spec).collect())
}

/// Every key of `user_id`, revoked ones included.
pub async fn of_user(
    client: &Transaction<'_>,
    user_id: &str,
) -> Result<Vec<ApiKeySpec>, CentralError> {
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY created_at, key_id"
            ),
            &[&user_id],
        )
        .await?;
    Ok(rows.iter().map(spec).collect())
}

/// Every key of every fleet user.
pub async fn of_fleet_users(client: &Transaction<'_>) -> Result<Vec<ApiKeySpec>, CentralError> {
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM api_keys WHERE user_id IN \
                 (SELECT user_id FROM user_credits WHERE fleet) ORDER BY created_at, key_id"
            ),
            &[],
        )
        .await?;
    Ok(rows.iter().map(spec).collect())
}

/// Sends `agent_id` every key of the users it serves (in `tx`, which holds the agent row's lock
/// and has just recorded that the agent now speaks a protocol that knows key events). Returns
/// how many were sent.
pub async fn catch_up(tx: &Transaction<'_>, agent_id: Uuid) -> Result<usize, CentralError> {
    // Protocol 2: fleet users' keys come with their own catch-up, at 3.
    let keys = served_by(tx, agent_id, 2).await?;
    for key in &keys {
        inbox::append(tx, agent_id, &EventBody::ApiKeyUpsert(key.clone()), None).await?;
    }
    Ok(keys.len())
}
