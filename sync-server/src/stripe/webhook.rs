//! Stripe: webhook. (stub: to be written)

use axum::Json;
use axum::extract::State;

use crate::http::AppState;
use crate::http::error::ApiError;

pub async fn handle(State(_state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    Err(ApiError::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not_implemented",
        "not implemented yet",
    ))
}
