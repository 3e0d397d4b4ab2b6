//! Reading request bodies: a size limit named per endpoint and JSON errors that say what was
//! wrong (axum's own rejections answer in plain text; ours answer in the wire's `ErrorBody`).

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// The largest body of an ordinary (non-push) endpoint.
pub const BODY_BYTES_MAX: usize = 64 * 1024;

/// Reads at most `limit` bytes of `body`; more is a 413 naming the limit.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::too_large(format!("the request body is larger than {limit} bytes")))
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

/// A JSON body of at most [`BODY_BYTES_MAX`] bytes.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !is_json {
            return Err(ApiError::bad_request(
                "the request body must be JSON (Content-Type: application/json)",
            ));
        }
        let bytes = read_body(req.into_body(), BODY_BYTES_MAX).await?;
        parse_json(&bytes).map(ApiJson)
    }
}
