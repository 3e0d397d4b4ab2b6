//! `POST /admin/v1/checkout` (full admin role, checked before the body is read): a Stripe
//! Checkout Session for a user and a package, made by [`crate::stripe::checkout::create`].

use axum::Json;
use axum::extract::State;

use super::extract::FullAdmin;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::json::ApiJson;
use crate::stripe::checkout::{self, CheckoutRequest, CheckoutResponse};

pub async fn create(
    State(state): State<AppState>,
    FullAdmin(admin): FullAdmin,
    ApiJson(req): ApiJson<CheckoutRequest>,
) -> Result<Json<CheckoutResponse>, ApiError> {
    let created = checkout::create(
        &state.pool,
        &state.http,
        state.config.stripe.as_ref(),
        &admin.name,
        req,
    )
    .await?;
    Ok(Json(created))
}
