//! Enrolment: an admin registers an agent and gets a one-time token ([`create_enrollment`], used
//! by `tollgate-server agents enroll` and `POST /admin/v1/agents`); the agent trades the token for
//! its credential (`POST /v1/agents/enroll`, [`handle`]).
//!
//! Guarantees:
//! - Only SHA-256 hashes of tokens and credentials are stored; the plaintexts are returned once.
//! - A token works once, before it expires: the exchange locks the token row, marks it used and
//!   stores the credential in one transaction, so racing exchanges of one token yield one
//!   credential. A reused, expired or unknown token is a 401 that says no more, and changes nothing.
//! - Enrolling again replaces the agent's credential (the old one stops working); a revoked agent
//!   can never enrol again; a quarantined agent stays quarantined.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use deadpool_postgres::Pool;
use tollgate_schema::wire::{EnrollRequest, EnrollResponse, PROTOCOL_VERSION, TOKEN_LEN_MAX};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::agents::{AgentError, check_name};
use super::push::{canonical_uuid, truncate, unsupported_protocol};
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::json::ApiJson;
use crate::tokens;

/// Shortest life of an enrolment token.
pub const ENROLLMENT_TTL_MIN: Duration = Duration::from_secs(60);
/// Longest life of an enrolment token.
pub const ENROLLMENT_TTL_MAX: Duration = Duration::from_secs(7 * 86_400);
/// The CLI's and the admin API's default, in minutes.
pub const ENROLLMENT_TTL_DEFAULT_MINUTES: u32 = 60;

/// Registers agent `name` (or finds it, if it exists and is not revoked) and issues a one-time
/// enrolment token valid for `ttl`. Returns the agent's id and the token (shown once).
pub async fn create_enrollment(
    pool: &Pool,
    name: &str,
    ttl: Duration,
) -> Result<(Uuid, Zeroizing<String>), AgentError> {
    check_name(name)?;
    if !(ENROLLMENT_TTL_MIN..=ENROLLMENT_TTL_MAX).contains(&ttl) {
        return Err(AgentError::Invalid(format!(
            "an enrolment token's lifetime is from {} minute to {} days; {} s asked",
            ENROLLMENT_TTL_MIN.as_secs() / 60,
            ENROLLMENT_TTL_MAX.as_secs() / 86_400,
            ttl.as_secs()
        )));
    }
    let token = tokens::generate(tokens::ENROLLMENT_TOKEN_PREFIX).map_err(AgentError::Other)?;
    let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    tx.execute(
        "INSERT INTO agents (agent_id, name) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        &[&Uuid::now_v7(), &name],
    )
    .await?;
    let row = tx
        .query_one(
            "SELECT agent_id, status FROM agents WHERE name = $1 FOR UPDATE",
            &[&name],
        )
        .await?;
    let agent_id: Uuid = row.get(0);
    let status: String = row.get(1);
    if status == "revoked" {
        return Err(AgentError::State(format!(
            "agent {name:?} is revoked for good; enrol a new database (`tollgate init` in a new \
             data dir) under a new name"
        )));
    }
    tx.execute(
        "INSERT INTO enrollment_tokens (token_hash, agent_id, expires_at) \
         VALUES ($1, $2, now() + make_interval(secs => $3::bigint))",
        &[&tokens::hash(&token), &agent_id, &ttl_secs],
    )
    .await?;
    tx.commit().await?;
    Ok((agent_id, token))
}

/// The one answer to any token that cannot be used: it does not say why.
fn refused() -> ApiError {
    ApiError::unauthorized("unknown, used or expired enrolment token")
}

/// `POST /v1/agents/enroll`: trades a one-time token for the agent's credential.
pub async fn handle(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> Result<Json<EnrollResponse>, ApiError> {
    if req.protocol_version != PROTOCOL_VERSION {
        return Err(unsupported_protocol(req.protocol_version));
    }
    if req.token.is_empty() || req.token.len() > TOKEN_LEN_MAX {
        return Err(refused());
    }
    let incarnation = canonical_uuid(&req.incarnation).ok_or_else(|| {
        ApiError::bad_request(format!(
            "incarnation {:?} is not a UUID in lower-case hyphenated form",
            truncate(&req.incarnation)
        ))
    })?;
    let token_hash = tokens::hash(&req.token);
    let mut conn = state.pool.get().await?;
    let tx = conn.transaction().await?;
    let row = tx
        .query_opt(
            "SELECT t.agent_id, t.used_at IS NULL AND t.expires_at > now(), a.status, a.name \
             FROM enrollment_tokens t JOIN agents a ON a.agent_id = t.agent_id \
             WHERE t.token_hash = $1 FOR UPDATE OF t, a",
            &[&token_hash],
        )
        .await?
        .ok_or_else(refused)?;
    let agent_id: Uuid = row.get(0);
    let usable: bool = row.get(1);
    let status: String = row.get(2);
    let name: String = row.get(3);
    if !usable || status == "revoked" {
        return Err(refused());
    }
    let credential = tokens::generate(tokens::AGENT_CREDENTIAL_PREFIX)
        .map_err(|e| ApiError::internal("generating a credential", e))?;
    tx.execute(
        "UPDATE enrollment_tokens SET used_at = now() WHERE token_hash = $1",
        &[&token_hash],
    )
    .await?;
    tx.execute(
        "UPDATE agents SET credential_hash = $2, \
         status = CASE WHEN status = 'pending' THEN 'active' ELSE status END, \
         enrolled_at = now(), incarnation = $3 WHERE agent_id = $1",
        &[&agent_id, &tokens::hash(&credential), &incarnation],
    )
    .await?;
    tx.commit().await?;
    tracing::info!(agent = %name, %agent_id, %incarnation, "agent enrolled");
    Ok(Json(EnrollResponse {
        protocol_version: PROTOCOL_VERSION,
        agent_id: agent_id.to_string(),
        agent_name: name,
        credential: credential.to_string(),
    }))
}
