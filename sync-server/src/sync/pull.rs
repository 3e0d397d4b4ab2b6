//! Pull: the per-agent inbox (long poll) and the snapshot. (stub: to be written)

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use tollgate_schema::wire::{InboxPage, Snapshot};

use crate::http::AppState;
use crate::http::auth::AgentAuth;
use crate::http::error::ApiError;

#[derive(Debug, Deserialize)]
pub struct InboxQuery {
    pub after: Option<String>,
    pub wait_ms: Option<String>,
}

pub async fn inbox(
    State(_state): State<AppState>,
    _agent: AgentAuth,
    Query(_query): Query<InboxQuery>,
) -> Result<Json<InboxPage>, ApiError> {
    Err(ApiError::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not_implemented",
        "not implemented yet",
    ))
}

pub async fn snapshot(
    State(_state): State<AppState>,
    _agent: AgentAuth,
) -> Result<Json<Snapshot>, ApiError> {
    Err(ApiError::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not_implemented",
        "not implemented yet",
    ))
}
