//! Admin API: `POST /admin/v1/users/{user_id}/credits` (full role) — grant, refund or adjust a
//! user's credit centrally, idempotently by `operation_id`.
//!
//! Guarantees: the body is strict (`kind`, `amount` as an exact decimal string, `operation_id`,
//! optional `note`; unknown fields refused); the same operation id with the same body returns the
//! first result (`replayed: true`) and writes nothing; with a different body, 409
//! `idempotency_conflict`. See [`crate::central::credit::credit`].

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use serde::Deserialize;

use super::extract::{self, FullAdmin};
use crate::central::credit::{self, CreditKind, CreditOp, CreditResult};
use crate::central::{Applied, validate};
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::json::ApiJson;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditBody {
    /// grant | refund | adjust.
    pub kind: String,
    /// Exact decimal credits as a string, e.g. "12.5" (adjust may be negative).
    pub amount: String,
    pub operation_id: String,
    pub note: Option<String>,
}

pub async fn apply(
    State(state): State<AppState>,
    FullAdmin(admin): FullAdmin,
    path: Result<Path<String>, PathRejection>,
    ApiJson(body): ApiJson<CreditBody>,
) -> Result<Json<Applied<CreditResult>>, ApiError> {
    let user_id = extract::path_param("user id", path)?;
    let op = CreditOp {
        user_id,
        kind: body.kind.parse::<CreditKind>()?,
        amount: validate::credits("amount", &body.amount)?,
        operation_id: body.operation_id,
        note: body.note,
        actor: admin.name,
    };
    let applied = credit::credit(&state.pool, &op).await?;
    state
        .metrics
        .inbox_events_written
        .inc_by(applied.events_written);
    Ok(Json(applied))
}
