//! Talking to the upstream: where a request goes (LiteLLM with the gateway's key, or the
//! provider's own OpenAI-compatible endpoint with the user's BYOK key), sending it, reading a
//! bounded answer, and what an error answer means for the client.
//!
//! Guarantees: no key is logged or put in an error (reqwest errors are stripped of their URL);
//! an upstream that refuses the gateway's own key is a 502 whose text stays out of the log and
//! the answer (it may quote the key); a body is never read past its limit or its deadline, and
//! a failed read says how many bytes arrived (what an estimate of an unreadable answer uses).

use std::time::Instant;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use bytes::{Bytes, BytesMut};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::keys::vault;
use crate::ledger::Provider;

use super::Gateway;
use super::error::ApiError;
use super::exchange::Origin;

/// Largest upstream error body read (its message is passed on).
pub const ERROR_BODY_BYTES_MAX: usize = 64 * 1024;

/// LiteLLM's own headers on an answer, kept for reconciliation and for settling at the
/// deployment that answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiteLlmHeaders {
    pub call_id: Option<String>,
    pub response_cost: Option<String>,
    /// The deployment that answered (`x-litellm-model-id`).
    pub model_id: Option<String>,
}

impl LiteLlmHeaders {
    pub fn read(headers: &HeaderMap) -> LiteLlmHeaders {
        LiteLlmHeaders {
            call_id: header_text(headers, "x-litellm-call-id"),
            response_cost: header_text(headers, "x-litellm-response-cost"),
            model_id: header_text(headers, "x-litellm-model-id"),
        }
    }
}

/// A header's value as text, at most 256 characters.
pub fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(256).collect())
}

/// Whether an answer is a server-sent event stream (media types are case-insensitive).
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .get(..17)
                .is_some_and(|t| t.eq_ignore_ascii_case("text/event-stream"))
        })
}

/// The user's own key for a provider, and that provider's name.
#[derive(Debug)]
pub struct Byok {
    pub key: Zeroizing<String>,
    pub provider: String,
}

/// The user's own key for `provider`, if they have a default one and this gateway can reach it.
pub async fn open_byok_key(
    gw: &Gateway,
    origin: &Origin,
    provider: &str,
) -> Result<Option<(Byok, i64)>, ApiError> {
    if !origin.caller.byok_providers.iter().any(|p| p == provider) {
        return Ok(None);
    }
    let internal = || ApiError::Internal {
        request_id: origin.request_id.clone(),
    };
    let (Some(master), Ok(provider_enum)) = (gw.master.clone(), provider.parse::<Provider>())
    else {
        return Err(internal());
    };
    if !gw.config.providers.contains_key(provider) {
        return Err(ApiError::BadRequest(format!(
            "your BYOK key for {provider} cannot be used: this gateway has no base URL for {provider}"
        )));
    }
    let user = origin.caller.user_id.clone();
    let opened = gw
        .writer
        .read(move |ledger| vault::open_default(ledger, &master, &user, provider_enum))
        .await
        .map_err(|e| ApiError::Overloaded(e.to_string()))?;
    match opened {
        Ok(Some((id, key))) => Ok(Some((
            Byok {
                key,
                provider: provider.to_owned(),
            },
            id,
        ))),
        // Removed since the caller was cached: the request goes through LiteLLM.
        Ok(None) => Ok(None),
        Err(e) => {
            tracing::error!(request_id = %origin.request_id, error = %e, "could not open a BYOK key");
            Err(internal())
        }
    }
}

/// The headers of a client's request to the Messages API that must reach the upstream (the API
/// version it speaks, the beta features it asks for).
pub const ANTHROPIC_HEADERS: &[&str] = &["anthropic-version", "anthropic-beta"];
/// The Anthropic API version sent to Anthropic itself (a BYOK request) when the client named
/// none.
pub const ANTHROPIC_VERSION_DEFAULT: &str = "2023-06-01";
/// The longest passed-on header value accepted.
pub const PASSED_HEADER_LEN_MAX: usize = 1_024;

/// The headers of `client`'s request to pass on to the upstream of `path`: Anthropic's, for the
/// Messages API; a value too long or not text is a 400 naming it.
pub fn passed_headers(
    path: &str,
    client: &HeaderMap,
) -> Result<Vec<(&'static str, HeaderValue)>, ApiError> {
    if !path.starts_with("/v1/messages") {
        return Ok(Vec::new());
    }
    let mut passed = Vec::new();
    for name in ANTHROPIC_HEADERS {
        let Some(value) = client.get(*name) else {
            continue;
        };
        if value.len() > PASSED_HEADER_LEN_MAX || value.to_str().is_err() {
            return Err(ApiError::BadRequest(format!(
                "the {name} header must be text of at most {PASSED_HEADER_LEN_MAX} bytes"
            )));
        }
        passed.push((*name, value.clone()));
    }
    Ok(passed)
}

/// Sends `body` to `path` upstream, with the `passed` headers, and waits for the answer's
/// headers; a non-2xx answer is read (bounded) and mapped to the client's error. `on_failure`
/// is told of upstream failures (5xx, timeouts, unreachable) with how long they took, for
/// provider health. A BYOK request goes to the provider's own base URL with the user's key (as
/// `x-api-key`, with an `anthropic-version`, on Anthropic's Messages API; as a bearer token
/// otherwise).
pub async fn send(
    gw: &Gateway,
    path: &str,
    body: &Value,
    byok: Option<Byok>,
    passed: Vec<(&'static str, HeaderValue)>,
    on_failure: impl FnOnce(std::time::Duration, &ApiError),
) -> Result<reqwest::Response, ApiError> {
    let config = &gw.config;
    let tail = path.trim_start_matches("/v1");
    let url = byok
        .as_ref()
        .and_then(|b| config.providers.get(&b.provider))
        .map(|p| format!("{}{tail}", p.base_url.trim_end_matches('/')))
        .unwrap_or_else(|| format!("{}/v1{tail}", config.upstream.url.trim_end_matches('/')));
    let mut request = gw.http.post(url).json(body);
    let is_byok = byok.is_some();
    let provider = byok.as_ref().map(|b| b.provider.clone());
    let anthropic_native = path.starts_with("/v1/messages");
    let has_version = passed.iter().any(|(n, _)| *n == "anthropic-version");
    for (name, value) in passed {
        request = request.header(name, value);
    }
    match (&byok, &config.upstream.api_key) {
        (Some(b), _) if anthropic_native && b.provider == "anthropic" => {
            let mut key = HeaderValue::from_str(b.key.as_str()).map_err(|_| {
                ApiError::BadRequest("your BYOK key for anthropic is not valid header text".into())
            })?;
            key.set_sensitive(true);
            request = request.header("x-api-key", key);
            if !has_version {
                request = request.header("anthropic-version", ANTHROPIC_VERSION_DEFAULT);
            }
        }
        (Some(b), _) => request = request.bearer_auth(b.key.as_str()),
        (None, Some(key)) => request = request.bearer_auth(key.expose()),
        (None, None) => {}
    }
    drop(byok);
    let timeout = config.response_timeout();
    let started = Instant::now();
    let sent = match tokio::time::timeout(timeout, request.send()).await {
        Ok(Ok(r)) => Ok(r),
        Err(_) => Err(ApiError::UpstreamTimeout(format!(
            "the upstream did not answer within {} s",
            timeout.as_secs()
        ))),
        Ok(Err(e)) if e.is_timeout() => Err(ApiError::UpstreamTimeout(format!(
            "the upstream timed out: {}",
            super::error_chain(&e.without_url())
        ))),
        Ok(Err(e)) => Err(ApiError::UpstreamFailed(format!(
            "the upstream could not be reached: {}",
            super::error_chain(&e.without_url())
        ))),
    };
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            on_failure(started.elapsed(), &e);
            return Err(e);
        }
    };
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let body = read_bounded(response, ERROR_BODY_BYTES_MAX)
        .await
        .unwrap_or_default();
    let parsed = serde_json::from_slice::<Value>(&body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.pointer(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let message = field("/error/message")
        .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect());
    let kind = field("/error/type");
    let error = status_error(
        status,
        &message,
        kind.as_deref(),
        is_byok,
        provider.as_deref(),
    );
    // Only the upstream's own failures count against its health: a client's bad request or a
    // user's bad BYOK key says nothing about the provider.
    if status.is_server_error() {
        on_failure(started.elapsed(), &error);
    }
    Err(error)
}

/// An upstream's refusal: its client errors pass through with their message (the client's own
/// mistake, e.g. an invalid parameter, or a provider rate limit); a refused key is named without
/// echoing the upstream's text (which may quote part of the key) and without logging it: the
/// user's own BYOK key is their 400, tollgate's LiteLLM key a 502 (LiteLLM without a database
/// answers an unknown key with a 400 of type `no_db_connection`); every 5xx is a 502.
pub fn status_error(
    status: StatusCode,
    message: &str,
    kind: Option<&str>,
    byok: bool,
    provider: Option<&str>,
) -> ApiError {
    let refused_key = kind == Some("no_db_connection") && !byok;
    match status.as_u16() {
        400 if refused_key => {
            tracing::error!(%status, "LiteLLM refused the gateway's key (without a database it answers an unknown key with \"No connected db.\"): check upstream.api_key / TOLLGATE_UPSTREAM_KEY");
            ApiError::UpstreamFailed(format!(
                "the upstream refused the gateway's credentials ({status})"
            ))
        }
        401 | 403 if byok => ApiError::BadRequest(format!(
            "{} refused your own API key for it ({status}); replace it with `tollgate keys add`",
            provider.unwrap_or("the provider")
        )),
        401 | 403 => {
            tracing::error!(%status, "the upstream refused the gateway's key (check upstream.api_key / TOLLGATE_UPSTREAM_KEY)");
            ApiError::UpstreamFailed(format!(
                "the upstream refused the gateway's credentials ({status})"
            ))
        }
        408 | 504 => {
            ApiError::UpstreamTimeout(format!("the upstream timed out ({status}): {message}"))
        }
        400..=499 => ApiError::UpstreamRejected {
            status: status.as_u16(),
            message: format!("the upstream refused the request ({status}): {message}"),
        },
        _ => ApiError::UpstreamFailed(format!("the upstream failed ({status}): {message}")),
    }
}

/// Why an answer's body could not be read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unread {
    TooLarge { limit: usize },
    Broken(String),
    TooSlow { secs: u64 },
}

impl std::fmt::Display for Unread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unread::TooLarge { limit } => {
                write!(f, "the upstream's answer is over {limit} bytes")
            }
            Unread::Broken(why) => write!(f, "the upstream's answer broke off: {why}"),
            Unread::TooSlow { secs } => {
                write!(f, "the upstream's answer did not arrive within {secs} s")
            }
        }
    }
}

/// Reads an answer up to `limit` bytes; on failure, also the bytes that did arrive.
pub async fn read_bounded(response: reqwest::Response, limit: usize) -> Result<Bytes, Unread> {
    read_bounded_counting(response, limit, &mut 0).await
}

/// As [`read_bounded`], adding the bytes read to `read` as they come (so a caller that gives up
/// on a slow body knows how much arrived).
pub async fn read_bounded_counting(
    mut response: reqwest::Response,
    limit: usize,
    read: &mut u64,
) -> Result<Bytes, Unread> {
    let mut body = BytesMut::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                *read = read.saturating_add(chunk.len() as u64);
                if body.len() + chunk.len() > limit {
                    return Err(Unread::TooLarge { limit });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(e) => {
                return Err(Unread::Broken(super::error_chain(&e.without_url())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anthropics_headers_are_passed_on_the_messages_api_only() {
        let mut client = HeaderMap::new();
        client.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        client.insert("anthropic-beta", HeaderValue::from_static("a,b"));
        client.insert("x-other", HeaderValue::from_static("no"));
        let passed = passed_headers("/v1/messages", &client).unwrap();
        assert_eq!(
            passed.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            ["anthropic-version", "anthropic-beta"]
        );
        assert!(
            passed_headers("/v1/chat/completions", &client)
                .unwrap()
                .is_empty()
        );
        let long = "x".repeat(PASSED_HEADER_LEN_MAX + 1);
        client.insert("anthropic-beta", HeaderValue::from_str(&long).unwrap());
        let err = passed_headers("/v1/messages/count_tokens", &client).unwrap_err();
        assert!(err.to_string().contains("anthropic-beta"), "{err}");
    }

    #[test]
    fn an_event_stream_is_recognized_in_any_case() {
        for (value, is) in [
            ("text/event-stream", true),
            ("Text/Event-Stream; charset=utf-8", true),
            ("TEXT/EVENT-STREAM", true),
            ("application/json", false),
            ("text/event", false),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_event_stream(&headers), is, "{value}");
        }
        assert!(!is_event_stream(&HeaderMap::new()));
    }

    #[test]
    fn a_refused_gateway_key_never_echoes_the_upstreams_text() {
        let e = status_error(
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided: sk-litel****1234",
            None,
            false,
            None,
        );
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert!(!e.to_string().contains("sk-"), "{e}");
        let byok = status_error(
            StatusCode::FORBIDDEN,
            "bad key sk-x",
            None,
            true,
            Some("openai"),
        );
        assert_eq!(byok.status(), StatusCode::BAD_REQUEST);
        assert!(!byok.to_string().contains("sk-x"), "{byok}");
        let rate = status_error(
            StatusCode::TOO_MANY_REQUESTS,
            "slow down",
            None,
            false,
            None,
        );
        // LiteLLM 1.82.6 without a database, given a key it does not know.
        let no_db = status_error(
            StatusCode::BAD_REQUEST,
            "No connected db.",
            Some("no_db_connection"),
            false,
            None,
        );
        assert_eq!(no_db.status(), StatusCode::BAD_GATEWAY);
        assert!(no_db.to_string().contains("credentials"), "{no_db}");
        assert_eq!(rate.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(rate.to_string().contains("slow down"));
    }
}
