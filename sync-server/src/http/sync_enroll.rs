//! `POST /v1/agents/enroll` over HTTP: a JSON body of at most [`ENROLL_BODY_BYTES_MAX`], read
//! within the body-read timeout, handed to [`crate::sync::enroll::enroll`]; its refusals become
//! statuses in [`super::error`].

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use tollgate_schema::wire::{ENROLL_BODY_BYTES_MAX, EnrollRequest, EnrollResponse};

use super::AppState;
use super::error::ApiError;
use super::json::{parse_json, read_body, require_json};
use crate::sync::enroll;

/// `POST /v1/agents/enroll`.
pub async fn handle(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<EnrollResponse>, ApiError> {
    require_json(&headers)?;
    let bytes = read_body(
        body,
        ENROLL_BODY_BYTES_MAX,
        state.config.limits.body_read_timeout,
    )
    .await?;
    let req: EnrollRequest = parse_json(&bytes)?;
    Ok(Json(enroll::enroll(&state.pool, req).await?))
}
