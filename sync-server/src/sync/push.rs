//! Push: ingest a batch of an agent's journal entries. (stub: to be written)

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use tollgate_schema::wire::PushResponse;

use crate::http::AppState;
use crate::http::auth::AgentAuth;
use crate::http::error::ApiError;

pub async fn handle(
    State(_state): State<AppState>,
    _agent: AgentAuth,
    _body: Body,
) -> Result<Json<PushResponse>, ApiError> {
    Err(ApiError::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not_implemented",
        "not implemented yet",
    ))
}
