//! `POST /v1/sync/push` over HTTP: reads the body (size- and time-limited), parses it, has
//! [`crate::sync::push::Batch::check`] check everything that needs no database (off the async
//! workers) and [`crate::sync::ingest`] apply it; counts every push by outcome and times its
//! transaction. The checks and the transaction return domain errors; their statuses are
//! decided in [`super::error`].

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use serde::Deserialize;
use tollgate_schema::wire::{PUSH_BODY_BYTES_MAX, PushRequest, PushResponse, error_code};

use super::AppState;
use super::auth::{AgentAuth, AgentStatus};
use super::error::ApiError;
use super::json::{parse_json, read_body};
use crate::metrics::OutcomeLabels;
use crate::sync::ingest::{self, IngestError, Outcome};
use crate::sync::protocol;
use crate::sync::push::Batch;

/// `POST /v1/sync/push`.
pub async fn handle(
    State(state): State<AppState>,
    agent: AgentAuth,
    body: Body,
) -> Result<Json<PushResponse>, ApiError> {
    let result = push(&state, &agent, body).await;
    let outcome = match &result {
        Ok((_, outcome)) => outcome.label(),
        Err(e) => refusal_label(e),
    };
    state
        .metrics
        .pushes
        .get_or_create(&OutcomeLabels { outcome })
        .inc();
    result.map(|(response, _)| Json(response))
}

async fn push(
    state: &AppState,
    agent: &AgentAuth,
    body: Body,
) -> Result<(PushResponse, Outcome), ApiError> {
    let bytes = read_body(
        body,
        PUSH_BODY_BYTES_MAX,
        state.config.limits.body_read_timeout,
    )
    .await?;
    // Parsing and hashing up to a thousand entries is CPU work (about a millisecond): off the
    // async workers, so other requests (long polls, health checks) are not held behind it.
    let negotiated = agent.protocol;
    let batch = tokio::task::spawn_blocking(move || -> Result<Batch, ApiError> {
        Ok(Batch::check(parse_request(&bytes)?, negotiated)?)
    })
    .await
    .map_err(|e| ApiError::internal("checking a push batch", e))??;
    if agent.status == AgentStatus::Quarantined {
        let acked = ingest::acked_seq(&state.pool, agent.agent_id, batch.incarnation).await?;
        return Err(IngestError::Quarantined {
            agent: agent.name.clone(),
            acked,
        }
        .into());
    }
    let started = std::time::Instant::now();
    let result = ingest::ingest(&state.pool, agent, &batch, state.config.alerts.as_ref()).await;
    state
        .metrics
        .push_seconds
        .observe(started.elapsed().as_secs_f64());
    let outcome = result?;
    if let Outcome::Accepted { ingested, .. } = outcome {
        state.metrics.entries_ingested.inc_by(ingested as u64);
    }
    Ok((
        PushResponse {
            protocol_version: agent.protocol,
            incarnation: batch.incarnation_text,
            acked_seq: outcome.acked_seq(),
        },
        outcome,
    ))
}

/// The `pushes` outcome label of a refusal (a fixed set).
fn refusal_label(e: &ApiError) -> &'static str {
    match e.code {
        error_code::GAP => "gap",
        error_code::CONFLICT => "conflict",
        error_code::BAD_HASH => "bad_hash",
        error_code::QUARANTINED => "quarantined",
        error_code::BAD_REQUEST | error_code::UNSUPPORTED_PROTOCOL => "bad_request",
        error_code::TOO_LARGE => "too_large",
        _ => "error",
    }
}

/// Parses the body; when it does not parse but names another protocol version, says so (a peer
/// speaking another version may well send another shape).
fn parse_request(bytes: &[u8]) -> Result<PushRequest, ApiError> {
    match parse_json::<PushRequest>(bytes) {
        Ok(request) => Ok(request),
        Err(e) => {
            #[derive(Deserialize)]
            struct VersionOnly {
                protocol_version: u32,
            }
            match serde_json::from_slice::<VersionOnly>(bytes) {
                Ok(v) if !protocol::speaks(v.protocol_version) => {
                    Err(protocol::unsupported(v.protocol_version).into())
                }
                _ => Err(e),
            }
        }
    }
}
