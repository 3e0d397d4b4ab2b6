//! Admin API: agents.
//!
//! - `GET /admin/v1/agents` (read role): `{"agents": [AgentSummary…]}`, by name, with lag.
//! - `POST /admin/v1/agents` (full role) `{"name": …, "ttl_minutes": …}`: registers the agent (or
//!   re-enrols an existing one) and answers `{"agent_id", "name", "token", "ttl_minutes"}`; the
//!   token is shown once and stored hashed.
//! - `POST /admin/v1/agents/{name}/revoke`, `/release` (full role): the agent as it is now.
//!
//! Guarantees: writes need a full-role token (403 otherwise); bodies are bounded, unknown fields
//! refused; a bad name or TTL is a 400 naming it, an unknown agent a 404.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};

use super::extract::FullAdmin;
use crate::http::AppState;
use crate::http::auth::AdminAuth;
use crate::http::error::ApiError;
use crate::http::json::ApiJson;
use crate::sync::agents::{self, AgentSummary};
use crate::sync::enroll::{ENROLLMENT_TTL_DEFAULT_MINUTES, create_enrollment};

#[derive(Debug, Serialize)]
pub struct AgentList {
    pub agents: Vec<AgentSummary>,
}

pub async fn list(
    State(state): State<AppState>,
    _admin: AdminAuth,
) -> Result<Json<AgentList>, ApiError> {
    Ok(Json(AgentList {
        agents: agents::list(&state.pool).await?,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollBody {
    pub name: String,
    pub ttl_minutes: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct EnrollAnswer {
    pub agent_id: String,
    pub name: String,
    /// The one-time enrolment token, for `tollgate enroll --token -`.
    pub token: String,
    pub ttl_minutes: u32,
}

pub async fn enroll(
    State(state): State<AppState>,
    FullAdmin(admin): FullAdmin,
    ApiJson(body): ApiJson<EnrollBody>,
) -> Result<Json<EnrollAnswer>, ApiError> {
    let ttl_minutes = body.ttl_minutes.unwrap_or(ENROLLMENT_TTL_DEFAULT_MINUTES);
    let ttl = Duration::from_secs(u64::from(ttl_minutes) * 60);
    let (agent_id, token) = create_enrollment(&state.pool, &body.name, ttl).await?;
    tracing::info!(admin = %admin.name, agent = %body.name, "enrolment token issued");
    Ok(Json(EnrollAnswer {
        agent_id: agent_id.to_string(),
        name: body.name,
        token: token.to_string(),
        ttl_minutes,
    }))
}

pub async fn revoke(
    State(state): State<AppState>,
    FullAdmin(admin): FullAdmin,
    Path(name): Path<String>,
) -> Result<Json<AgentSummary>, ApiError> {
    let agent = agents::revoke(&state.pool, &name).await?;
    tracing::info!(admin = %admin.name, agent = %name, "agent revoked");
    Ok(Json(agent))
}

pub async fn release(
    State(state): State<AppState>,
    FullAdmin(admin): FullAdmin,
    Path(name): Path<String>,
) -> Result<Json<AgentSummary>, ApiError> {
    let agent = agents::release(&state.pool, &name).await?;
    tracing::info!(admin = %admin.name, agent = %name, "agent released");
    Ok(Json(agent))
}
