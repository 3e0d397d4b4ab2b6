//! Reading request bodies: a size limit named per endpoint, a time limit
//! (`TOLLGATE_SERVER_BODY_READ_TIMEOUT_SECS`), and JSON errors that say what was wrong (axum's
//! own rejections answer in plain text; ours answer in the wire's `ErrorBody`).

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;

/// The largest body of an ordinary (non-push) endpoint.
pub const BODY_BYTES_MAX: usize = 64 * 1024;

/// Reads at most `limit` bytes of `body`, arriving within `timeout`: more is a 413 naming the
/// limit, slower a 408 naming the time (a client trickling a body cannot hold a request, and
/// the pool connection it may be waiting for, forever).
pub async fn read_body(
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(ApiError::too_large(format!(
            "the request body is larger than {limit} bytes"
        ))),
        Err(_) => Err(ApiError::request_timeout(format!(
            "the request body did not arrive within {} s",
            timeout.as_secs()
        ))),
    }
}

/// Parses JSON, naming the path of the field at fault (`entries[3].amount: invalid type …`):
/// `serde_path_to_error` tracks the path serde_json alone does not report.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            ApiError::bad_request(format!("invalid JSON body: {}", e.inner()))
        } else {
            ApiError::bad_request(format!("invalid JSON body at {path}: {}", e.inner()))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    Ok(value)
}

/// Refuses a body that does not say it is JSON.
pub fn require_json(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let is_json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "the request body must be JSON (Content-Type: application/json)",
        ))
    }
}

/// A JSON body of at most [`BODY_BYTES_MAX`] bytes.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        require_json(req.headers())?;
        let timeout = state.config.limits.body_read_timeout;
        let bytes = read_body(req.into_body(), BODY_BYTES_MAX, timeout).await?;
        parse_json(&bytes).map(ApiJson)
    }
}
