//! Which sync protocol each agent speaks, so a fleet can upgrade one host at a time
//! (ARCHITECTURE.md "Protocol versions").
//!
//! Guarantees:
//! - The server speaks every version from [`PROTOCOL_VERSION_MIN`] to [`PROTOCOL_VERSION`]. An
//!   agent names its version in the [`PROTOCOL_HEADER`] of every request (absent: 1, what agents
//!   before the header sent) and in the body of an enrolment or push; a version outside that
//!   range, or a body that names another version than the header, is refused (400
//!   `unsupported_protocol`) before anything is read or written.
//! - Answers are in the agent's version, and no event or field its version does not know is
//!   sent to it: inbox writers check `agents.protocol_version` under the agent row's lock.
//! - [`record`] stores the version an agent speaks when it changes; when it rises past a
//!   version that added events, the events the agent missed are sent in the same transaction,
//!   under the same lock (2: every API key of the users it serves; 3: every fleet user's settings
//!   and keys).

use axum::http::HeaderMap;
use deadpool_postgres::Pool;
use tollgate_schema::wire::{PROTOCOL_HEADER, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN};
use uuid::Uuid;

use crate::central::{CentralError, api_keys, fleet};

/// Whether this server speaks `version`.
pub fn speaks(version: u32) -> bool {
    (PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&version)
}

/// A protocol version this server does not speak, or a body disagreeing with its header
/// (`http/error.rs`: 400 `unsupported_protocol`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub String);

/// The refusal of a version this server does not speak.
pub fn unsupported(version: u32) -> Unsupported {
    Unsupported(format!(
        "protocol_version {version} is not supported; this server speaks \
         {PROTOCOL_VERSION_MIN} to {PROTOCOL_VERSION} (upgrade the server before its agents)"
    ))
}

/// The version named by a request's [`PROTOCOL_HEADER`] (absent: 1).
pub fn from_headers(headers: &HeaderMap) -> Result<u32, Unsupported> {
    let Some(value) = headers.get(PROTOCOL_HEADER) else {
        return Ok(1);
    };
    let version = value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .ok_or_else(|| {
            Unsupported(format!(
                "the {PROTOCOL_HEADER} header is not a protocol version number"
            ))
        })?;
    if speaks(version) {
        Ok(version)
    } else {
        Err(unsupported(version))
    }
}

/// Checks that a body's `protocol_version` is the one the request's header named.
pub fn check_body(body_version: u32, negotiated: u32) -> Result<(), Unsupported> {
    if !speaks(body_version) {
        return Err(unsupported(body_version));
    }
    if body_version != negotiated {
        return Err(Unsupported(format!(
            "the body names protocol_version {body_version} but the request's \
             {PROTOCOL_HEADER} header names {negotiated}"
        )));
    }
    Ok(())
}

/// Records that `agent_id` now speaks `version` (see the module's guarantees). Returns how many
/// catch-up events were written.
pub async fn record(pool: &Pool, agent_id: Uuid, version: u32) -> Result<usize, CentralError> {
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    let stored: i32 = tx
        .query_one(
            "SELECT protocol_version FROM agents WHERE agent_id = $1 FOR UPDATE",
            &[&agent_id],
        )
        .await?
        .get("protocol_version");
    let version_i32 = i32::try_from(version)
        .map_err(|_| CentralError::invalid("protocol_version", unsupported(version).0))?;
    if stored == version_i32 {
        return Ok(0);
    }
    tx.execute(
        "UPDATE agents SET protocol_version = $2 WHERE agent_id = $1",
        &[&agent_id, &version_i32],
    )
    .await?;
    // Protocol 2 added API key events: an agent rising to it gets every key it serves.
    let mut sent = 0;
    if stored < 2 && version_i32 >= 2 {
        sent += api_keys::catch_up(&tx, agent_id).await?;
    }
    // Protocol 3 added fleet users: it gets their settings and keys.
    if stored < fleet::FLEET_PROTOCOL && version_i32 >= fleet::FLEET_PROTOCOL {
        sent += fleet::catch_up(&tx, agent_id).await?;
    }
    tx.commit().await?;
    tracing::info!(%agent_id, from = stored, to = version, catch_up_events = sent, "agent protocol changed");
    Ok(sent)
}
