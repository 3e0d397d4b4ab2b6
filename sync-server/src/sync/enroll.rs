//! Enrolment: an admin registers an agent and gets a one-time token; the agent trades it for its
//! credential. (stub: to be written)

use axum::Json;
use axum::extract::State;
use tollgate_schema::wire::{EnrollRequest, EnrollResponse};

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::json::ApiJson;

pub async fn handle(
    State(_state): State<AppState>,
    ApiJson(_req): ApiJson<EnrollRequest>,
) -> Result<Json<EnrollResponse>, ApiError> {
    Err(ApiError::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not_implemented",
        "not implemented yet",
    ))
}
