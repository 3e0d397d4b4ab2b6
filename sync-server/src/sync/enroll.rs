//! Enrolment: an admin registers an agent and gets a one-time token ([`create_enrollment`], used
//! by `tollgate-server agents enroll` and `POST /admin/v1/agents`); the agent trades the token for
//! its credential (`POST /v1/agents/enroll`, [`enroll`]; its HTTP handler is
//! `http/sync_enroll.rs`). Refusals are an [`EnrollError`].
//!
//! Guarantees:
//! - Only SHA-256 hashes of tokens and credentials are stored; the plaintexts are returned once.
//! - A token works once, before it expires: the exchange locks the token row, marks it used and
//!   stores the credential in one transaction, so racing exchanges of one token yield one
//!   credential. A reused, expired or unknown token is a 401 that says no more, and changes nothing.
//! - Enrolling again replaces the agent's credential (the old one stops working); a revoked agent
//!   can never enrol again; a quarantined agent stays quarantined.
//! - The incarnation the agent enrols with is registered (its stream row made): pushes are
//!   accepted only for registered incarnations, so an agent cannot start streams at will.
//! - The users an agent brings are adopted in the same transaction, homed on it, with the
//!   settings it had for them (so no snapshot later resets them to defaults); their balances
//!   follow with its journal. A user already homed on another agent refuses the enrolment (409,
//!   naming the user and the agent) and spends nothing; one already homed on this agent keeps
//!   the central settings (the server governs them since).
//! - An agent enrolling with protocol 3 or later is sent every fleet user's settings and keys in
//!   the same transaction (a fleet user is served by every agent).

use std::time::Duration;

use deadpool_postgres::{Pool, Transaction};
use rust_decimal::Decimal;
use tollgate_schema::wire::{
    ENROLL_USERS_MAX, EnrollRequest, EnrollResponse, TOKEN_LEN_MAX, UserSettings,
};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::agents::{AgentError, check_name};
use super::protocol;
use super::push::{canonical_uuid, truncate};
use crate::central::validate;
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
    let agent_id: Uuid = row.get("agent_id");
    let status: String = row.get("status");
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

/// Why an enrolment is refused. Domain words only: `http/error.rs` gives each its status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EnrollError {
    /// The token is unknown, used, expired, or its agent revoked: the answer says no more
    /// (401).
    #[error("unknown, used or expired enrolment token")]
    Refused,
    /// A field is malformed (400 `bad_request`).
    #[error("{0}")]
    Invalid(String),
    /// More users than one enrolment may bring (413).
    #[error("{0}")]
    TooLarge(String),
    /// A user the agent brings is held by another agent (409 `conflict`).
    #[error("{0}")]
    Clash(String),
    #[error(transparent)]
    Protocol(#[from] protocol::Unsupported),
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

/// Trades a one-time token for the agent's credential, adopting the users the agent brings
/// (`POST /v1/agents/enroll`; see the module's guarantees).
pub(crate) async fn enroll(pool: &Pool, req: EnrollRequest) -> Result<EnrollResponse, EnrollError> {
    if !protocol::speaks(req.protocol_version) {
        return Err(protocol::unsupported(req.protocol_version).into());
    }
    let version = i32::try_from(req.protocol_version)
        .map_err(|_| protocol::unsupported(req.protocol_version))?;
    if req.token.is_empty() || req.token.len() > TOKEN_LEN_MAX {
        return Err(EnrollError::Refused);
    }
    let incarnation = canonical_uuid(&req.incarnation).ok_or_else(|| {
        EnrollError::Invalid(format!(
            "incarnation {:?} is not a UUID in lower-case hyphenated form",
            truncate(&req.incarnation)
        ))
    })?;
    check_users(&req.users)?;
    let token_hash = tokens::hash(&req.token);
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    let row = tx
        .query_opt(
            "SELECT t.agent_id, t.used_at IS NULL AND t.expires_at > now() AS usable, a.status, \
             a.name \
             FROM enrollment_tokens t JOIN agents a ON a.agent_id = t.agent_id \
             WHERE t.token_hash = $1 FOR UPDATE OF t, a",
            &[&token_hash],
        )
        .await?
        .ok_or(EnrollError::Refused)?;
    let agent_id: Uuid = row.get("agent_id");
    let usable: bool = row.get("usable");
    let status: String = row.get("status");
    let name: String = row.get("name");
    if !usable || status == "revoked" {
        return Err(EnrollError::Refused);
    }
    let credential =
        tokens::generate(tokens::AGENT_CREDENTIAL_PREFIX).map_err(|e| EnrollError::Internal {
            context: "generating a credential",
            detail: e.to_string(),
        })?;
    adopt_users(&tx, agent_id, &req.users).await?;
    // Protocol 3 serves fleet users: their settings and keys go to the new agent's inbox.
    if version >= crate::central::fleet::FLEET_PROTOCOL {
        crate::central::fleet::catch_up(&tx, agent_id)
            .await
            .map_err(|e| EnrollError::Internal {
                context: "sending the fleet users",
                detail: e.to_string(),
            })?;
    }
    // The incarnation is registered: its stream exists, so its pushes are accepted.
    tx.execute(
        "INSERT INTO agent_streams (agent_id, incarnation) VALUES ($1, $2) \
         ON CONFLICT (agent_id, incarnation) DO NOTHING",
        &[&agent_id, &incarnation],
    )
    .await?;
    tx.execute(
        "UPDATE enrollment_tokens SET used_at = now() WHERE token_hash = $1",
        &[&token_hash],
    )
    .await?;
    tx.execute(
        "UPDATE agents SET credential_hash = $2, \
         status = CASE WHEN status = 'pending' THEN 'active' ELSE status END, \
         enrolled_at = now(), incarnation = $3, protocol_version = $4 WHERE agent_id = $1",
        &[
            &agent_id,
            &tokens::hash(&credential),
            &incarnation,
            &version,
        ],
    )
    .await?;
    tx.commit().await?;
    tracing::info!(agent = %name, %agent_id, %incarnation, users = req.users.len(), "agent enrolled");
    Ok(EnrollResponse {
        protocol_version: req.protocol_version,
        agent_id: agent_id.to_string(),
        agent_name: name,
        credential: credential.to_string(),
    })
}

/// Checks the users an agent brings: at most [`ENROLL_USERS_MAX`], each id once, valid settings.
fn check_users(users: &[UserSettings]) -> Result<(), EnrollError> {
    if users.len() > ENROLL_USERS_MAX {
        return Err(EnrollError::TooLarge(format!(
            "an enrolment brings at most {ENROLL_USERS_MAX} users; this one brings {}",
            users.len()
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(users.len());
    for (i, user) in users.iter().enumerate() {
        let field = |name: &str| format!("users[{i}].{name}");
        let named = |e: crate::central::CentralError| {
            EnrollError::Invalid(format!("{}: {e}", field("settings")))
        };
        validate::user_id("user_id", &user.user_id).map_err(named)?;
        validate::tier_and_level(&user.tier, &user.power_level).map_err(named)?;
        validate::non_negative("monthly_allowance", user.monthly_allowance).map_err(named)?;
        if let Some(cap) = user.monthly_spend_cap {
            validate::non_negative("monthly_spend_cap", cap).map_err(named)?;
        }
        if !seen.insert(user.user_id.as_str()) {
            return Err(EnrollError::Invalid(format!(
                "{}: user {:?} is listed twice",
                field("user_id"),
                user.user_id
            )));
        }
    }
    Ok(())
}

/// Adopts `users`, homed on `agent_id` (see the module's guarantees).
async fn adopt_users(
    tx: &Transaction<'_>,
    agent_id: Uuid,
    users: &[UserSettings],
) -> Result<(), EnrollError> {
    if users.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = users.iter().map(|u| u.user_id.as_str()).collect();
    let tiers: Vec<&str> = users.iter().map(|u| u.tier.as_str()).collect();
    let levels: Vec<&str> = users.iter().map(|u| u.power_level.as_str()).collect();
    let allowances: Vec<Decimal> = users
        .iter()
        .map(|u| u.monthly_allowance.to_decimal())
        .collect();
    let caps: Vec<Option<Decimal>> = users
        .iter()
        .map(|u| u.monthly_spend_cap.map(|c| c.to_decimal()))
        .collect();
    tx.execute(
        "INSERT INTO user_credits (user_id, home_agent_id, subscription_tier, power_level, \
         monthly_allowance, monthly_spend_cap) \
         SELECT u, $2, t, l, a, c FROM unnest($1::text[], $3::text[], $4::text[], \
         $5::numeric[], $6::numeric[]) AS x(u, t, l, a, c) ORDER BY u \
         ON CONFLICT (user_id) DO NOTHING",
        &[&ids, &agent_id, &tiers, &levels, &allowances, &caps],
    )
    .await?;
    let elsewhere = tx
        .query(
            "SELECT u.user_id, a.name AS holder FROM user_credits u \
             LEFT JOIN agents a ON a.agent_id = u.home_agent_id \
             WHERE u.user_id = ANY($1) AND u.home_agent_id IS DISTINCT FROM $2 \
             ORDER BY u.user_id LIMIT 5",
            &[&ids, &agent_id],
        )
        .await?;
    if let Some(first) = elsewhere.first() {
        let user: String = first.get("user_id");
        let holder: Option<String> = first.get("holder");
        let holder = holder.map_or_else(|| "no agent".to_owned(), |n| format!("agent {n:?}"));
        return Err(EnrollError::Clash(format!(
            "this agent has user {user:?}, whose balance {holder} holds centrally; one user id \
             cannot be held by two agents: rename or remove the user here, then enrol again (the \
             token is not spent)"
        )));
    }
    Ok(())
}
