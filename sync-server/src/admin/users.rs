//! Admin API: users. (stub: to be written)

use axum::Json;
use axum::extract::State;

use crate::http::AppState;
use crate::http::auth::AdminAuth;
use crate::http::error::ApiError;

pub async fn list(
    State(_state): State<AppState>,
    _admin: AdminAuth,
) -> Result<Json<serde_json::Value>, ApiError> {
    Err(ApiError::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not_implemented",
        "not implemented yet",
    ))
}

pub async fn show(
    State(_state): State<AppState>,
    _admin: AdminAuth,
) -> Result<Json<serde_json::Value>, ApiError> {
    Err(ApiError::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not_implemented",
        "not implemented yet",
    ))
}

pub async fn set(
    State(_state): State<AppState>,
    _admin: AdminAuth,
) -> Result<Json<serde_json::Value>, ApiError> {
    Err(ApiError::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not_implemented",
        "not implemented yet",
    ))
}
