//! Authentication: agents by their credential, admins by their token. Both arrive as
//! `Authorization: Bearer <secret>`; only the secret's SHA-256 is looked up. A missing, unknown or
//! revoked secret is a 401 that does not say which (no oracle for guessing).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use tollgate_schema::wire::TOKEN_LEN_MAX;
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
pub use tollgate_schema::vocabulary::AgentStatus;

use crate::sync::protocol;
use crate::tokens;

/// The bearer secret of a request, if well formed.
fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
    let text = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not text"))?;
    let secret = text
        .strip_prefix("Bearer ")
        .ok_or_else(|| ApiError::unauthorized("the Authorization header is not `Bearer <token>`"))?
        .trim();
    if secret.is_empty() || secret.len() > TOKEN_LEN_MAX {
        return Err(ApiError::unauthorized(
            "the bearer token is empty or too long",
        ));
    }
    Ok(secret)
}

/// An authenticated agent (active or quarantined; revoked and pending agents are refused here).
#[derive(Debug, Clone)]
pub struct AgentAuth {
    pub agent_id: Uuid,
    pub name: String,
    /// Active or quarantined (pending and revoked agents are refused here).
    pub status: AgentStatus,
    /// The sync protocol this request speaks (its `tollgate-protocol` header; absent: 1).
    pub protocol: u32,
}

impl FromRequestParts<AppState> for AgentAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let hash = tokens::hash(bearer(parts)?);
        let protocol = protocol::from_headers(&parts.headers)?;
        let conn = state.pool.get().await?;
        let row = conn
            .query_opt(
                "UPDATE agents SET last_seen_at = now() \
                 WHERE credential_hash = $1 AND status IN ('active', 'quarantined') \
                 RETURNING agent_id, name, status, protocol_version",
                &[&hash],
            )
            .await?
            .ok_or_else(|| ApiError::unauthorized("unknown or revoked agent credential"))?;
        drop(conn);
        let agent_id: Uuid = row.get("agent_id");
        let stored: i32 = row.get("protocol_version");
        if i64::from(stored) != i64::from(protocol) {
            protocol::record(&state.pool, agent_id, protocol).await?;
        }
        let status: String = row.get("status");
        Ok(AgentAuth {
            agent_id,
            protocol,
            name: row.get("name"),
            status: status
                .parse()
                .map_err(|e: String| ApiError::internal("reading an agent's status", e))?,
        })
    }
}

/// What an admin token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRole {
    /// Every GET.
    Read,
    /// Reads and writes.
    Full,
}

/// An authenticated admin.
#[derive(Debug, Clone)]
pub struct AdminAuth {
    pub name: String,
    pub role: AdminRole,
}

impl AdminAuth {
    /// Refuses (403) unless the token has the full role.
    pub fn require_full(&self) -> Result<(), ApiError> {
        match self.role {
            AdminRole::Full => Ok(()),
            AdminRole::Read => Err(ApiError::forbidden(format!(
                "admin token {:?} is read-only; this needs a full token",
                self.name
            ))),
        }
    }
}

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let hash = tokens::hash(bearer(parts)?);
        let conn = state.pool.get().await?;
        let row = conn
            .query_opt(
                "UPDATE admin_tokens SET last_used_at = now() \
                 WHERE token_hash = $1 AND revoked_at IS NULL RETURNING name, role",
                &[&hash],
            )
            .await?
            .ok_or_else(|| ApiError::unauthorized("unknown or revoked admin token"))?;
        let role: String = row.get("role");
        Ok(AdminAuth {
            name: row.get("name"),
            role: if role == "full" {
                AdminRole::Full
            } else {
                AdminRole::Read
            },
        })
    }
}
