//! `GET /v1/models` and `GET /v1/models/{id}`: what the upstream serves and the caller may use.
//!
//! A model is listed when the upstream serves it (LiteLLM's `/model/info`, else its
//! `/v1/models`; with neither, the price table's models), tollgate can price it, and a level the
//! caller can run at allows it (the user's own level, or one their tier lets a request ask for);
//! then the aliases (`auto`, and each level alias the tier allows). Nothing is listed that a
//! request from the same caller would be refused for its model.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::ledger::PowerLevel;

use super::Gateway;
use super::access::AccessLine;
use super::auth::{self, Caller};
use super::error::ApiError;
use super::proxy::refusal;
use super::request::Wire;
use super::routing;

/// `GET /v1/models`.
pub async fn list(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let started = Instant::now();
    match auth::authenticate(&gw.auth_cache, &gw.writer, &headers).await {
        Ok(caller) => {
            log("/v1/models", Some(&caller.user_id), started, None);
            axum::Json(json!({"object": "list", "data": available(&gw, &caller)})).into_response()
        }
        Err(e) => {
            log("/v1/models", None, started, Some(&e));
            refusal(&gw, e, Wire::Chat)
        }
    }
}

/// The access line of a model-list request (answered by the gateway itself, never charged).
fn log(route: &str, user: Option<&str>, started: Instant, error: Option<&ApiError>) {
    let request_id = format!("req_{}", uuid::Uuid::now_v7().simple());
    let reason = error.map(ToString::to_string);
    AccessLine {
        request_id: &request_id,
        user,
        route,
        status: error.map_or(200, |e| e.status().as_u16()),
        latency: started.elapsed(),
        error: error.zip(reason.as_deref()).map(|(e, why)| (e.code(), why)),
        ..AccessLine::default()
    }
    .emit();
}

/// `GET /v1/models/{id}`.
pub async fn one(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let caller = match auth::authenticate(&gw.auth_cache, &gw.writer, &headers).await {
        Ok(c) => c,
        Err(e) => {
            log("/v1/models/{id}", None, started, Some(&e));
            return refusal(&gw, e, Wire::Chat);
        }
    };
    match available(&gw, &caller)
        .into_iter()
        .find(|m| m["id"] == id.as_str())
    {
        Some(m) => {
            log("/v1/models/{id}", Some(&caller.user_id), started, None);
            axum::Json(m).into_response()
        }
        None => {
            let e = ApiError::NotFound(format!(
                "model {id:?} is not served, or not available to you (power level {})",
                caller.power_level
            ));
            log("/v1/models/{id}", Some(&caller.user_id), started, Some(&e));
            e.into_response()
        }
    }
}

fn available(gw: &Gateway, caller: &Caller) -> Vec<Value> {
    let catalog = gw.catalog();
    let routing = catalog.routing();
    let tier_levels = caller.tier.levels_allowed();
    let mut levels: Vec<PowerLevel> = tier_levels.to_vec();
    if !levels.contains(&caller.power_level) {
        levels.push(caller.power_level);
    }
    let mut data: Vec<Value> = routing::served_routes(&routing)
        .into_iter()
        .filter(|r| routing::usable_at(&routing, r, &levels))
        .map(|r| {
            json!({"id": r.forward_as, "object": "model", "created": 0,
                   "owned_by": r.price.provider})
        })
        .collect();
    data.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    data.extend(
        routing::ALIASES
            .iter()
            .filter(|a| {
                a.parse::<PowerLevel>()
                    .map_or(true, |level| tier_levels.contains(&level))
            })
            .map(|a| json!({"id": a, "object": "model", "created": 0, "owned_by": "tollgate"})),
    );
    data
}
