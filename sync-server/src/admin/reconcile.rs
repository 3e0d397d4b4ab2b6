//! Admin API: `GET /admin/v1/reconcile` (read role) — the reconcile report as JSON (see
//! [`crate::reconcile`]). Always 200 when the report could be made; `ok` says whether the books
//! agree.

use axum::Json;
use axum::extract::State;

use crate::http::AppState;
use crate::http::auth::AdminAuth;
use crate::http::error::ApiError;
use crate::reconcile::{self, Report};

pub async fn report(
    State(state): State<AppState>,
    _admin: AdminAuth,
) -> Result<Json<Report>, ApiError> {
    Ok(Json(reconcile::run(&state.pool).await?))
}
