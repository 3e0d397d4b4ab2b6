//! Admin API: users across agents.
//!
//! - `GET /admin/v1/users?after=&limit=` (read): users by id with home agent, balance, tier,
//!   power level, lifetime purchased and the time of their last entry; `next_after` pages on.
//! - `GET /admin/v1/users/{user_id}` (read): one user, with their credit operations not yet
//!   applied by the home agent.
//! - `PUT /admin/v1/users/{user_id}` (full): create or change the user; the settings reach the
//!   home agent as a `UserUpsert` event (see [`crate::central::users::set_user`]).
//!
//! Guarantees: bodies are strict (unknown fields refused) and every refusal names its field;
//! a read-only token never writes (403 before the body is read).

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};

use super::extract::{self, FullAdmin};
use crate::central::users::{self, UserDetail, UserSet, UserSetResult, UserSummary};
use crate::central::{Applied, validate};
use crate::http::AppState;
use crate::http::auth::AdminAuth;
use crate::http::error::ApiError;
use crate::http::json::ApiJson;

/// Users per page unless `limit` says otherwise.
pub const USERS_PAGE_DEFAULT: i64 = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only users whose id sorts after this one.
    pub after: Option<String>,
    /// 1 to [`users::USERS_PAGE_MAX`].
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct UsersPage {
    pub users: Vec<UserSummary>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    _admin: AdminAuth,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<UsersPage>, ApiError> {
    let query = extract::query(query)?;
    let limit = query.limit.unwrap_or(USERS_PAGE_DEFAULT);
    if !(1..=users::USERS_PAGE_MAX).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: must be 1 to {}, got {limit}",
            users::USERS_PAGE_MAX
        )));
    }
    let conn = state.pool.get().await?;
    let page = users::list_users(&conn, query.after.as_deref(), limit).await?;
    let full = i64::try_from(page.len()).is_ok_and(|n| n == limit);
    let next_after = full
        .then(|| page.last().map(|u| u.user_id.clone()))
        .flatten();
    Ok(Json(UsersPage {
        users: page,
        next_after,
    }))
}

pub async fn show(
    State(state): State<AppState>,
    _admin: AdminAuth,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<UserDetail>, ApiError> {
    let user_id = extract::path_param("user id", path)?;
    validate::user_id("user_id", &user_id)?;
    let conn = state.pool.get().await?;
    users::show_user(&conn, &user_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no user {user_id:?} is known centrally")))
}

/// The body of `PUT /admin/v1/users/{user_id}`: the settings to set. A field left out (or null)
/// keeps its value; a new user gets the defaults for it (tier `trial`, the tier's default level,
/// no allowance, no cap).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserBody {
    /// The agent (by name) that holds the user's balance: required for a new user; left out, an
    /// existing user keeps theirs.
    pub home_agent: Option<String>,
    pub tier: Option<String>,
    pub power_level: Option<String>,
    /// Exact decimal credits.
    pub monthly_allowance: Option<String>,
    /// Exact decimal credits, or "none" to remove the cap.
    pub monthly_spend_cap: Option<String>,
    /// Make the user a fleet user (a new one, or a home user: see `tollgate-server users set
    /// --fleet`).
    #[serde(default)]
    pub fleet: bool,
    /// A fleet user's overdraft line: exact decimal credits, or "none" to remove it.
    pub overdraft: Option<String>,
    /// Idempotency id: the same id with the same body is applied once.
    pub operation_id: Option<String>,
}

pub async fn set(
    State(state): State<AppState>,
    FullAdmin(admin): FullAdmin,
    path: Result<Path<String>, PathRejection>,
    ApiJson(body): ApiJson<UserBody>,
) -> Result<Json<Applied<UserSetResult>>, ApiError> {
    let user_id = extract::path_param("user id", path)?;
    let req = UserSet {
        user_id,
        home_agent: body.home_agent,
        fleet: body.fleet,
        tier: body.tier,
        power_level: body.power_level,
        monthly_allowance: body
            .monthly_allowance
            .as_deref()
            .map(|text| validate::credits("monthly_allowance", text))
            .transpose()?,
        monthly_spend_cap: body
            .monthly_spend_cap
            .as_deref()
            .map(|text| validate::spend_cap("monthly_spend_cap", text))
            .transpose()?,
        overdraft: body
            .overdraft
            .as_deref()
            .map(|text| validate::overdraft("overdraft", text))
            .transpose()?,
    };
    let key = extract::operation_key(body.operation_id.as_deref(), "user")?;
    let applied = users::set_user(&state.pool, &req, &key, &admin.name).await?;
    state
        .metrics
        .inbox_events_written
        .inc_by(applied.events_written);
    Ok(Json(applied))
}
