//! Every refusal and failure the gateway answers with, in OpenAI's error shape
//! (`{"error": {"message", "type", "param", "code"}}`) and with the statuses OpenAI's SDKs map to
//! their own error types (401 AuthenticationError, 402/429 with `insufficient_quota`, 403
//! PermissionDeniedError, 404 NotFoundError, …); on the Messages API in Anthropic's shape
//! (`{"type": "error", "error": {"type", "message"}}`, too little credit as its `billing_error`),
//! which Anthropic's SDKs map the same way. Messages are for the client: they name what was
//! wrong and never carry a key or an internal error's details (those go to the log).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tollgate_schema::money::Credits;

use crate::ledger::{PowerLevel, UsageErrorType};

use super::request::Wire;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error(
        "insufficient credit: this request needs at least {needed} credits (its prompt and one \
         output token) and up to {estimate} for its full output; the balance available is {available}"
    )]
    InsufficientCredit {
        available: Credits,
        /// The least the request could run with.
        needed: Credits,
        /// The worst case it would reserve in full.
        estimate: Credits,
    },
    /// A fleet user whom this host holds no valid grant for (the message says why).
    #[error("{0}")]
    NoFleetGrant(String),
    #[error(
        "monthly spend cap of {cap} credits reached: {used} used, {held} held by requests in flight"
    )]
    SpendCap {
        cap: Credits,
        used: Credits,
        held: Credits,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("{message}")]
    ModelNotAllowed {
        message: String,
        allowed_levels: Vec<PowerLevel>,
    },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("request body over {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    TooManyInFlight(String),
    #[error("{message}")]
    UpstreamRejected { status: u16, message: String },
    #[error("{0}")]
    UpstreamFailed(String),
    #[error("{0}")]
    UpstreamTimeout(String),
    #[error("{0}")]
    Overloaded(String),
    #[error("internal error (request {request_id}); the gateway's log has the details")]
    Internal { request_id: String },
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::InsufficientCredit { .. } | ApiError::NoFleetGrant(_) => {
                StatusCode::PAYMENT_REQUIRED
            }
            ApiError::SpendCap { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::ModelNotAllowed { .. } | ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyInFlight(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::UpstreamRejected { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            ApiError::UpstreamFailed(_) => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `type` field.
    fn kind(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "invalid_request_error",
            ApiError::InsufficientCredit { .. }
            | ApiError::NoFleetGrant(_)
            | ApiError::SpendCap { .. } => "insufficient_quota",
            ApiError::BadRequest(_)
            | ApiError::NotFound(_)
            | ApiError::TooLarge { .. }
            | ApiError::RequestTimeout(_) => "invalid_request_error",
            ApiError::ModelNotAllowed { .. } | ApiError::Forbidden(_) => "permission_denied",
            ApiError::TooManyInFlight(_) => "rate_limit_error",
            ApiError::UpstreamRejected { .. }
            | ApiError::UpstreamFailed(_)
            | ApiError::UpstreamTimeout(_) => "upstream_error",
            ApiError::Overloaded(_) | ApiError::Internal { .. } => "server_error",
        }
    }

    /// OpenAI's `code` field: stable, for programs (and the refusal metric's `reason` label).
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "invalid_api_key",
            ApiError::InsufficientCredit { .. } => "insufficient_quota",
            ApiError::NoFleetGrant(_) => "fleet_credit_unavailable",
            ApiError::SpendCap { .. } => "monthly_spend_cap_reached",
            ApiError::BadRequest(_) => "invalid_request",
            ApiError::ModelNotAllowed { .. } => "model_not_allowed_at_power_level",
            ApiError::Forbidden(_) => "permission_denied",
            ApiError::NotFound(_) => "not_found",
            ApiError::TooLarge { .. } => "request_too_large",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::TooManyInFlight(_) => "too_many_requests_in_flight",
            ApiError::UpstreamRejected { .. } => "upstream_refused",
            ApiError::UpstreamFailed(_) => "upstream_error",
            ApiError::UpstreamTimeout(_) => "upstream_timeout",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::Internal { .. } => "internal_error",
        }
    }

    /// The usage log's error type for a request that ended with this error.
    pub fn usage_error_type(&self) -> UsageErrorType {
        match self {
            ApiError::Unauthorized(_)
            | ApiError::Forbidden(_)
            | ApiError::ModelNotAllowed { .. } => UsageErrorType::AuthError,
            ApiError::InsufficientCredit { .. } | ApiError::NoFleetGrant(_) => {
                UsageErrorType::InsufficientCredits
            }
            ApiError::SpendCap { .. } => UsageErrorType::SpendCap,
            ApiError::BadRequest(_)
            | ApiError::NotFound(_)
            | ApiError::TooLarge { .. }
            | ApiError::RequestTimeout(_) => UsageErrorType::InvalidRequest,
            ApiError::TooManyInFlight(_) => UsageErrorType::RateLimit,
            ApiError::UpstreamRejected { status: 429, .. } => UsageErrorType::RateLimit,
            ApiError::UpstreamRejected { .. } | ApiError::UpstreamFailed(_) => {
                UsageErrorType::UpstreamError
            }
            ApiError::UpstreamTimeout(_) => UsageErrorType::Timeout,
            ApiError::Overloaded(_) => UsageErrorType::RateLimit,
            ApiError::Internal { .. } => UsageErrorType::InternalError,
        }
    }

    pub fn body(&self) -> serde_json::Value {
        let mut error = json!({
            "message": self.to_string(),
            "type": self.kind(),
            "param": null,
            "code": self.code(),
        });
        match self {
            ApiError::InsufficientCredit {
                available,
                needed,
                estimate,
            } => {
                error["balance_available"] = json!(available.to_string());
                error["minimum_cost"] = json!(needed.to_string());
                error["estimated_cost"] = json!(estimate.to_string());
            }
            ApiError::ModelNotAllowed { allowed_levels, .. } => {
                error["allowed_power_levels"] = json!(
                    allowed_levels
                        .iter()
                        .map(|l| l.as_str())
                        .collect::<Vec<_>>()
                );
            }
            _ => {}
        }
        json!({ "error": error })
    }
}

impl ApiError {
    /// Anthropic's `error.type` for this error, so its SDKs raise their own exceptions
    /// (`AuthenticationError`, `PermissionDeniedError`, `NotFoundError`, `RateLimitError`, …).
    fn anthropic_kind(&self) -> &'static str {
        match self {
            ApiError::InsufficientCredit { .. }
            | ApiError::NoFleetGrant(_)
            | ApiError::SpendCap { .. } => "billing_error",
            _ => match self.status().as_u16() {
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                503 | 529 => "overloaded_error",
                504 => "timeout_error",
                400..=499 => "invalid_request_error",
                _ => "api_error",
            },
        }
    }

    /// The error in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}`, with
    /// tollgate's `code` and details beside them.
    pub fn anthropic_body(&self) -> serde_json::Value {
        let mut error = self.body()["error"].take();
        error["type"] = json!(self.anthropic_kind());
        if let Some(fields) = error.as_object_mut() {
            fields.remove("param");
        }
        json!({"type": "error", "error": error})
    }

    /// The error as an answer in `wire`'s shape: Anthropic's for the Messages API, OpenAI's
    /// otherwise.
    pub fn respond(self, wire: Wire) -> Response {
        if wire != Wire::Messages {
            return self.into_response();
        }
        let body = self.anthropic_body();
        self.with_headers((self.status(), axum::Json(body)).into_response())
    }

    fn with_headers(&self, mut response: Response) -> Response {
        match self {
            ApiError::Overloaded(_) => {
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from_static("1"));
            }
            // Retrying cannot help until credit arrives or the month turns: tell OpenAI's SDKs,
            // which would otherwise retry a 429.
            ApiError::InsufficientCredit { .. } | ApiError::SpendCap { .. } => {
                response
                    .headers_mut()
                    .insert("x-should-retry", HeaderValue::from_static("false"));
            }
            _ => {}
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let response = (self.status(), axum::Json(self.body())).into_response();
        self.with_headers(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_402_carries_the_balance_and_the_estimate_in_openais_shape() {
        let e = ApiError::InsufficientCredit {
            available: Credits::from_nanos(1_500_000_000),
            needed: Credits::from_nanos(2_000_000_000),
            estimate: Credits::from_nanos(3_000_000_000),
        };
        assert_eq!(e.status(), StatusCode::PAYMENT_REQUIRED);
        let body = e.body();
        assert_eq!(body["error"]["type"], "insufficient_quota");
        assert_eq!(body["error"]["code"], "insufficient_quota");
        assert_eq!(body["error"]["balance_available"], "1.5");
        assert_eq!(body["error"]["minimum_cost"], "2");
        assert_eq!(body["error"]["estimated_cost"], "3");
        assert!(body["error"]["message"].as_str().unwrap().contains("1.5"));
        let anthropic = e.anthropic_body();
        assert_eq!(anthropic["type"], "error");
        assert_eq!(anthropic["error"]["type"], "billing_error");
        assert_eq!(anthropic["error"]["balance_available"], "1.5");
    }

    #[test]
    fn anthropic_error_types_follow_the_status() {
        for (e, kind) in [
            (ApiError::Unauthorized("k".into()), "authentication_error"),
            (ApiError::Forbidden("f".into()), "permission_error"),
            (ApiError::NotFound("n".into()), "not_found_error"),
            (ApiError::BadRequest("b".into()), "invalid_request_error"),
            (ApiError::TooLarge { limit: 1 }, "request_too_large"),
            (ApiError::TooManyInFlight("t".into()), "rate_limit_error"),
            (ApiError::Overloaded("o".into()), "overloaded_error"),
            (ApiError::UpstreamTimeout("t".into()), "timeout_error"),
            (ApiError::UpstreamFailed("u".into()), "api_error"),
        ] {
            assert_eq!(e.anthropic_body()["error"]["type"], kind, "{e:?}");
        }
    }
}
