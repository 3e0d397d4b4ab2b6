//! A non-streamed answer (a chat answer, a Responses API response object, an Anthropic
//! message): read whole (bounded by `limits.response_bytes_max`, within
//! `upstream.response_timeout_secs`), metered, settled, and passed to the client with what it
//! cost (`x-tollgate-credits-charged`) and the balance after (`x-tollgate-balance`).
//!
//! An answer the gateway cannot read (too large, too slow, not JSON) was still billed by the
//! provider: it is charged an estimate (the prompt, and a quarter token per byte that arrived),
//! marked as such, and answered 502 — never free.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use serde_json::Value;

use crate::ledger::UsageErrorType;

use super::error::ApiError;
use super::exchange::{Exchange, Outcome};
use super::request::{RESPONSE_ID_LEN_MAX, Wire};
use super::{upstream, usage};

/// A non-streamed answer: read it whole (bounded, timed), meter, settle, respond.
pub async fn respond_json(
    exchange: Exchange,
    upstream: reqwest::Response,
) -> Result<Response, ApiError> {
    let status = upstream.status();
    let content_type = upstream.headers().get(header::CONTENT_TYPE).cloned();
    let gw = exchange.gw.clone();
    let limit = gw.config.limits.response_bytes_max;
    let timeout = gw.config.response_timeout();
    let mut read = 0;
    let body = tokio::time::timeout(
        timeout,
        upstream::read_bounded_counting(upstream, limit, &mut read),
    )
    .await
    .unwrap_or(Err(upstream::Unread::TooSlow {
        secs: timeout.as_secs(),
    }));
    let parsed = match body {
        Ok(body) => serde_json::from_slice::<Value>(&body)
            .map(|v| (v, body))
            .map_err(|e| format!("the upstream sent a malformed JSON body: {e}")),
        Err(unread) => Err(unread.to_string()),
    };
    let (parsed, body) = match parsed {
        Ok(ok) => ok,
        Err(why) => {
            // The provider billed an answer the gateway cannot read: charge an estimate of it.
            exchange.observe(exchange.origin.started.elapsed(), false, Some(&why));
            let outcome = Outcome {
                usage: exchange.estimate(read),
                estimated: true,
                http_status: 502,
                error: Some((UsageErrorType::UpstreamError, why.clone())),
                ..Outcome::default()
            };
            let _ = exchange.settle(outcome).await;
            return Err(ApiError::UpstreamFailed(why));
        }
    };
    exchange.observe(exchange.origin.started.elapsed(), true, None);
    let wire = exchange.origin.endpoint.wire();
    let (mut usage, estimated) = match usage::reported_usage(wire, &parsed) {
        Some(u) => (u, false),
        None => (
            exchange.estimate(usage::generated_bytes(wire, &parsed)),
            true,
        ),
    };
    exchange.count_searches(&mut usage, usage::cites_the_web(&parsed));
    let outcome = Outcome {
        usage,
        estimated,
        http_status: status.as_u16(),
        response_model: usage::response_model(&parsed).map(str::to_owned),
        response_id: (wire != Wire::Chat)
            .then(|| parsed.get("id").and_then(Value::as_str))
            .flatten()
            .filter(|id| !id.is_empty() && id.len() <= RESPONSE_ID_LEN_MAX)
            .map(str::to_owned),
        ..Outcome::default()
    };
    let settled = exchange.settle(outcome).await?;
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        content_type.unwrap_or(HeaderValue::from_static("application/json")),
    );
    insert_text(
        headers,
        "x-tollgate-credits-charged",
        &settled.charged.to_string(),
    );
    insert_text(headers, "x-tollgate-balance", &settled.balance.to_string());
    Ok(response)
}

/// Sets a header whose value is plain text (a value that is not is left out).
pub fn insert_text(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}
