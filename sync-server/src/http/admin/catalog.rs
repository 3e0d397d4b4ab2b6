//! Admin API: the catalog.
//!
//! - `GET /admin/v1/packages` (read): every credit package.
//! - `PUT /admin/v1/packages/{name}` (full): create or replace a package; sent to every agent.
//! - `GET /admin/v1/power-levels` (read): the three power levels.
//! - `PUT /admin/v1/power-levels/{level}` (full): replace a level's routing; sent to every agent.
//!
//! Guarantees: strict bodies (unknown fields refused), exact decimal strings for credits, prices
//! and multipliers (never JSON numbers), every refusal names its field; an optional
//! `operation_id` makes a change idempotent. See [`crate::central::catalog`].

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use tollgate_schema::wire::{PackageSpec, PowerLevelSpec};

use super::extract::{self, FullAdmin};
use crate::central::catalog::{self, CatalogResult, PackageView};
use crate::central::{Applied, validate};
use crate::http::AppState;
use crate::http::auth::AdminAuth;
use crate::http::error::ApiError;
use crate::http::json::ApiJson;

#[derive(Debug, Serialize, Deserialize)]
pub struct Packages {
    pub packages: Vec<PackageView>,
}

pub async fn packages(
    State(state): State<AppState>,
    _admin: AdminAuth,
) -> Result<Json<Packages>, ApiError> {
    let conn = state.pool.get().await?;
    Ok(Json(Packages {
        packages: catalog::packages(&conn).await?,
    }))
}

/// The body of `PUT /admin/v1/packages/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageBody {
    /// Exact decimal credits, e.g. "500".
    pub credits: String,
    /// Exact USD with at most 2 decimals, e.g. "45.00" (the discount is already included).
    pub price_usd: String,
    #[serde(default)]
    pub discount_percent: i64,
    pub min_tier: Option<String>,
    #[serde(default = "yes")]
    pub is_active: bool,
    #[serde(default)]
    pub is_featured: bool,
    #[serde(default)]
    pub sort_order: i64,
    pub description: Option<String>,
    pub badge_text: Option<String>,
    pub operation_id: Option<String>,
}

fn yes() -> bool {
    true
}

pub async fn set_package(
    State(state): State<AppState>,
    FullAdmin(admin): FullAdmin,
    path: Result<Path<String>, PathRejection>,
    ApiJson(body): ApiJson<PackageBody>,
) -> Result<Json<Applied<CatalogResult<PackageSpec>>>, ApiError> {
    let name = extract::path_param("package name", path)?;
    let spec = PackageSpec {
        name,
        credits: validate::credits("credits", &body.credits)?,
        price_usd_cents: catalog::price_cents(&body.price_usd)?,
        discount_percent: body.discount_percent,
        min_tier: body.min_tier,
        is_active: body.is_active,
        is_featured: body.is_featured,
        sort_order: body.sort_order,
        description: body.description,
        badge_text: body.badge_text,
    };
    let key = extract::operation_key(body.operation_id.as_deref(), "package")?;
    let applied = catalog::set_package(&state.pool, &spec, &key, &admin.name).await?;
    state
        .metrics
        .inbox_events_written
        .inc_by(applied.events_written);
    Ok(Json(applied))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PowerLevels {
    pub power_levels: Vec<PowerLevelSpec>,
}

pub async fn power_levels(
    State(state): State<AppState>,
    _admin: AdminAuth,
) -> Result<Json<PowerLevels>, ApiError> {
    let conn = state.pool.get().await?;
    Ok(Json(PowerLevels {
        power_levels: catalog::power_levels(&conn).await?,
    }))
}

/// The body of `PUT /admin/v1/power-levels/{level}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerLevelBody {
    pub name: String,
    pub description: Option<String>,
    /// Provider names, most preferred first.
    pub preferred_providers: Vec<String>,
    /// next_available (default) | cheapest | fastest.
    pub fallback_strategy: Option<String>,
    /// Exact decimal text, e.g. "0.7" (whole thousandths).
    pub cost_multiplier: String,
    pub max_latency_ms: i64,
    pub min_quality_score: i64,
    #[serde(default = "yes")]
    pub is_active: bool,
    pub operation_id: Option<String>,
}

pub async fn set_power_level(
    State(state): State<AppState>,
    FullAdmin(admin): FullAdmin,
    path: Result<Path<String>, PathRejection>,
    ApiJson(body): ApiJson<PowerLevelBody>,
) -> Result<Json<Applied<CatalogResult<PowerLevelSpec>>>, ApiError> {
    let level = extract::path_param("power level", path)?;
    let spec = PowerLevelSpec {
        power_level: level,
        name: body.name,
        description: body.description,
        preferred_providers: body.preferred_providers,
        fallback_strategy: body
            .fallback_strategy
            .unwrap_or_else(|| "next_available".to_owned()),
        cost_multiplier: body.cost_multiplier,
        max_latency_ms: body.max_latency_ms,
        min_quality_score: body.min_quality_score,
        is_active: body.is_active,
    };
    let key = extract::operation_key(body.operation_id.as_deref(), "power_level")?;
    let applied = catalog::set_power_level(&state.pool, &spec, &key, &admin.name).await?;
    state
        .metrics
        .inbox_events_written
        .inc_by(applied.events_written);
    Ok(Json(applied))
}
