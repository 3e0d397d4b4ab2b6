//! The inbox and snapshot over HTTP: `GET /v1/sync/inbox?after=N&wait_ms=W` (with the long
//! poll: at most `limits.long_polls_per_agent` per agent and replica, a 429 beyond; subscribed to
//! wake-ups before re-reading, holding no database connection while it waits) and `GET
//! /v1/sync/snapshot`. What they answer is [`crate::sync::pull`]'s; the statuses of its errors
//! are decided in [`super::error`].

use axum::Json;
use axum::extract::{RawQuery, State};
use prometheus_client::metrics::gauge::Gauge;
use tollgate_schema::wire::{InboxPage, Snapshot};

use super::AppState;
use super::auth::AgentAuth;
use super::error::ApiError;
use crate::sync::pull;

/// `GET /v1/sync/inbox?after=N&wait_ms=W`.
pub async fn inbox(
    State(state): State<AppState>,
    agent: AgentAuth,
    RawQuery(query): RawQuery,
) -> Result<Json<InboxPage>, ApiError> {
    let params = pull::InboxParams::parse(query.as_deref())?;
    let wait = params.wait.min(state.config.long_poll_max);
    pull::acknowledge(&state.pool, agent.agent_id, params.after).await?;
    let mut page =
        pull::read_page(&state.pool, agent.agent_id, params.after, agent.protocol).await?;
    if page.events.is_empty() && !wait.is_zero() {
        let max = state.config.limits.long_polls_per_agent;
        let Some(_slot) = state.long_polls.enter(agent.agent_id, max) else {
            return Err(ApiError::too_many(format!(
                "agent {:?} already has {max} long polls open on this server; one at a time is \
                 enough",
                agent.name
            ))
            .retry_after(1));
        };
        let deadline = tokio::time::Instant::now() + wait;
        // Subscribe first, then re-read: an event committed in between is either in the read or
        // wakes the waiter.
        let mut waiter = state.inbox.subscribe();
        let _waiting = Waiting::start(&state.metrics.long_polls_waiting);
        loop {
            page =
                pull::read_page(&state.pool, agent.agent_id, params.after, agent.protocol).await?;
            if !page.events.is_empty() || tokio::time::Instant::now() >= deadline {
                break;
            }
            waiter.wait_for(agent.agent_id, deadline).await;
        }
    }
    state
        .metrics
        .inbox_events_sent
        .inc_by(page.events.len() as u64);
    Ok(Json(page))
}

/// Counts a waiting long poll while alive (also when the client goes away mid-wait).
struct Waiting(Gauge);

impl Waiting {
    fn start(gauge: &Gauge) -> Waiting {
        gauge.inc();
        Waiting(gauge.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `GET /v1/sync/snapshot`.
pub async fn snapshot(
    State(state): State<AppState>,
    agent: AgentAuth,
) -> Result<Json<Snapshot>, ApiError> {
    Ok(Json(
        pull::snapshot(&state.pool, agent.agent_id, agent.protocol).await?,
    ))
}
