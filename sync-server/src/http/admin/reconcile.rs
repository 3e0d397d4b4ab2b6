//! Admin API: `GET /admin/v1/reconcile` (read role) — the reconcile report as JSON (see
//! [`crate::reconcile`]). Always 200 when the report could be made; `ok` says whether the books
//! agree. A read-only token may start one every `limits.read_only_reconcile_interval` per
//! replica (each walks every journal); a full token is not limited.

use axum::Json;
use axum::extract::State;

use crate::http::AppState;
use crate::http::auth::{AdminAuth, AdminRole};
use crate::http::error::ApiError;
use crate::reconcile::{self, Report};

pub async fn report(
    State(state): State<AppState>,
    admin: AdminAuth,
) -> Result<Json<Report>, ApiError> {
    if admin.role == AdminRole::Read {
        let interval = state.config.limits.read_only_reconcile_interval;
        if let Err(wait) = state.reconciles.read_only_start(interval) {
            return Err(ApiError::too_many(format!(
                "a read-only token may start a reconcile once every {} s (it reads every \
                 journal); retry in {} s, or use a full token",
                interval.as_secs(),
                wait.as_secs().max(1)
            ))
            .retry_after(wait.as_secs().max(1)));
        }
    }
    let report = reconcile::run(&state.pool).await;
    state.metrics.record_reconcile(report.as_ref().ok());
    Ok(Json(report?))
}
