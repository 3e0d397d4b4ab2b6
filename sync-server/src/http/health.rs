//! `/healthz` (the process answers), `/readyz` (the database answers and its schema is one this
//! build knows, fully migrated; unauthenticated, so a 503 says only "not ready" and the reason
//! goes to the log) and `/metrics` (Prometheus text).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::AppState;
use super::error::ApiError;

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    match crate::db::check_schema(&state.pool).await {
        Ok(version) if version == tollgate_schema::postgres::LATEST_VERSION => Ok("ready\n"),
        Ok(version) => {
            tracing::warn!(
                version,
                "not ready: the database schema is not this build's"
            );
            Err(ApiError::unavailable("not ready"))
        }
        // The reason goes to the log, never to this unauthenticated answer (it may name hosts,
        // databases and users).
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "not ready");
            Err(ApiError::unavailable("not ready"))
        }
    }
}

/// The replica's counters and the central state read now (`crate::observe`).
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let _one_at_a_time = state.metrics.scrape.lock().await;
    crate::observe::refresh(&state.pool, &state.metrics).await;
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
