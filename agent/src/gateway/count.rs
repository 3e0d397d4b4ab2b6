//! `POST /v1/messages/count_tokens`: Anthropic's token count, free at the provider, so
//! authenticated and forwarded but never charged.
//!
//! Guarantees: only a caller with a tollgate key reaches the upstream; the body is bounded and
//! timed like any request's, names a model the caller may use (routed as a Messages request, so
//! the upstream is asked for the name it serves), and carries only the fields a count reads
//! ([`COUNT_TOKENS_FIELDS`]: nothing LiteLLM could act on); the answer (bounded) passes through
//! with its status. No hold, no charge, no usage row; the request metric counts it.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::Value;

use super::Gateway;
use super::access::{AccessLine, Upstream};
use super::auth;
use super::error::ApiError;
use super::metrics::RequestLabels;
use super::proxy::{LEVEL_HEADER, name_request, refusal};
use super::request::{self, Endpoint, Wire};
use super::routing;
use super::upstream::{self, header_text};

/// The route.
pub const COUNT_TOKENS_PATH: &str = "/v1/messages/count_tokens";
/// The fields a count request may carry.
pub const COUNT_TOKENS_FIELDS: &[&str] = &[
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
];

/// `POST /v1/messages/count_tokens`.
pub async fn count_tokens(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request_id = format!("req_{}", uuid::Uuid::now_v7().simple());
    let mut labels = RequestLabels {
        route: COUNT_TOKENS_PATH,
        status: 0,
        model: "-".into(),
        level: "-",
    };
    let started = std::time::Instant::now();
    let mut user = None;
    let counted = count(&gw, &headers, body, &mut labels, &mut user).await;
    let reason = counted.as_ref().err().map(|e| (e.code(), e.to_string()));
    let mut response = match counted {
        Ok(response) => response,
        Err(e) => refusal(&gw, e, Wire::Messages),
    };
    labels.status = response.status().as_u16();
    AccessLine {
        request_id: &request_id,
        user: user.as_deref(),
        route: COUNT_TOKENS_PATH,
        model: Some(labels.model.as_str()).filter(|m| *m != "-"),
        level: labels.level.parse().ok(),
        status: labels.status,
        latency: started.elapsed(),
        upstream: Upstream::configured(&gw.config.upstream.url),
        error: reason.as_ref().map(|(code, why)| (*code, why.as_str())),
        ..AccessLine::default()
    }
    .emit();
    gw.metrics.requests.get_or_create(&labels).inc();
    name_request(&mut response, &request_id);
    response
}

async fn count(
    gw: &Arc<Gateway>,
    headers: &HeaderMap,
    body: Body,
    labels: &mut RequestLabels,
    user: &mut Option<String>,
) -> Result<Response, ApiError> {
    let caller = auth::authenticate(&gw.auth_cache, &gw.writer, headers).await?;
    *user = Some(caller.user_id.clone());
    let bytes = request::read_body(
        headers,
        body,
        gw.config.limits.body_bytes_max,
        gw.config.body_read_timeout(),
    )
    .await?;
    let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    };
    if let Some(field) = body
        .keys()
        .find(|k| !COUNT_TOKENS_FIELDS.contains(&k.as_str()))
    {
        return Err(ApiError::BadRequest(format!(
            "field {field:?} is not accepted on {COUNT_TOKENS_PATH}; it takes {}",
            COUNT_TOKENS_FIELDS.join(", ")
        )));
    }
    let Some(Value::String(model)) = body.get("model") else {
        return Err(ApiError::BadRequest(
            "missing required field \"model\" (a string)".into(),
        ));
    };
    let level = routing::resolve_level(
        caller.tier,
        caller.power_level,
        model,
        header_text(headers, LEVEL_HEADER).as_deref(),
    )?;
    let route = routing::route(
        &gw.catalog().routing(),
        level,
        model,
        Endpoint::Messages,
        &gw.observations,
    )?;
    labels.model = gw.model_label(&route.forward_as);
    labels.level = level.as_str();
    body.insert("model".into(), Value::String(route.forward_as));
    let passed = upstream::passed_headers(COUNT_TOKENS_PATH, headers)?;
    let answer = upstream::send(
        gw,
        COUNT_TOKENS_PATH,
        &Value::Object(body),
        None,
        passed,
        |_, _| {},
    )
    .await?;
    let status = answer.status();
    let text = upstream::read_bounded(answer, upstream::ERROR_BODY_BYTES_MAX)
        .await
        .map_err(|e| ApiError::UpstreamFailed(e.to_string()))?;
    let mut response = Response::new(axum::body::Body::from(text));
    *response.status_mut() = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
