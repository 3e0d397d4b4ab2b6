//! `POST /v1/escrow/grants` (protocol 3): an agent asks for a grant from a fleet user's pool.
//! What it answers is [`crate::central::escrow`]'s; the statuses of its errors are decided in
//! [`super::error`].

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use tollgate_schema::wire::{GrantRequest, GrantResponse, PROTOCOL_VERSION, error_code};

use super::AppState;
use super::auth::{AgentAuth, AgentStatus};
use super::error::ApiError;
use super::json::{parse_json, read_body};
use crate::central::escrow::{self, GrantAsk, Granted};
use crate::sync::protocol;

/// Largest grant request body.
const GRANT_BODY_BYTES_MAX: usize = 4 * 1024;

/// `POST /v1/escrow/grants`.
pub async fn grant(
    State(state): State<AppState>,
    agent: AgentAuth,
    body: Body,
) -> Result<Json<GrantResponse>, ApiError> {
    if agent.protocol < 3 {
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            error_code::UNSUPPORTED_PROTOCOL,
            format!(
                "grants are protocol 3; this request speaks {} (name it in the {} header)",
                agent.protocol,
                tollgate_schema::wire::PROTOCOL_HEADER
            ),
        ));
    }
    let bytes = read_body(
        body,
        GRANT_BODY_BYTES_MAX,
        state.config.limits.body_read_timeout,
    )
    .await?;
    let request: GrantRequest = parse_json(&bytes)?;
    protocol::check_body(request.protocol_version, agent.protocol)?;
    if agent.status == AgentStatus::Quarantined {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            error_code::QUARANTINED,
            format!(
                "agent {:?} is quarantined: it gets no grants until an admin runs \
                 `tollgate-server agents release {}`",
                agent.name, agent.name
            ),
        ));
    }
    let ask = GrantAsk {
        agent_id: agent.agent_id,
        agent: &agent.name,
        request_id: &request.request_id,
        user_id: &request.user_id,
        want: request.want,
        worst_case: request.worst_case,
    };
    let granted = escrow::grant(&state.pool, &ask).await?;
    let (outcome, nanos) = match &granted {
        Granted::Grant(result) => ("granted", result.grant.amount.nanos()),
        Granted::PoolEmpty => ("pool_empty", 0),
    };
    state
        .metrics
        .grants
        .get_or_create(&crate::metrics::OutcomeLabels { outcome })
        .inc();
    state
        .metrics
        .granted_nanos
        .inc_by(u64::try_from(nanos).unwrap_or(0));
    let response = match granted {
        Granted::Grant(result) => GrantResponse {
            protocol_version: PROTOCOL_VERSION.min(agent.protocol),
            pool_free: result.pool_free,
            grant: Some(result.grant),
        },
        Granted::PoolEmpty => GrantResponse {
            protocol_version: PROTOCOL_VERSION.min(agent.protocol),
            grant: None,
            pool_free: tollgate_schema::money::Credits::ZERO,
        },
    };
    Ok(Json(response))
}
