//! Every refusal the server gives: an HTTP status and the wire's [`ErrorBody`] (a code from
//! `wire::error_code` and a sentence naming what was wrong). Internal errors are logged with their
//! cause and answered with a generic message (no SQL or secrets leave the server).
//!
//! Domain code returns domain errors (`IngestError`, `CentralError`, …); the statuses and wire
//! codes they become are decided here.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tollgate_schema::wire::{ErrorBody, ErrorDetail, error_code};

use crate::central::CentralError;
use crate::stripe::StripeError;
use crate::sync::agents::AgentError;
use crate::sync::enroll::EnrollError;
use crate::sync::ingest::IngestError;
use crate::sync::protocol::Unsupported;
use crate::sync::pull::PullError;
use crate::sync::push::BatchError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub acked_seq: Option<i64>,
    /// Seconds to wait before retrying (`Retry-After`), when retrying later can help.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            acked_seq: None,
            retry_after: None,
        }
    }

    /// Says when to retry (`Retry-After`, seconds).
    pub fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }

    pub fn too_many(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            error_code::TOO_MANY_REQUESTS,
            message,
        )
    }

    pub fn request_timeout(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            error_code::REQUEST_TIMEOUT,
            message,
        )
    }

    pub fn with_acked_seq(mut self, acked_seq: i64) -> ApiError {
        self.acked_seq = Some(acked_seq);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, error_code::BAD_REQUEST, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, error_code::UNAUTHORIZED, message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, error_code::FORBIDDEN, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, error_code::NOT_FOUND, message)
    }

    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            error_code::TOO_LARGE,
            message,
        )
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            error_code::UNAVAILABLE,
            message,
        )
    }

    /// A failure that is the server's fault: logged in full, answered generically.
    pub fn internal(context: &str, error: impl std::fmt::Display) -> ApiError {
        tracing::error!(%error, "{context}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            error_code::UNAVAILABLE,
            format!("internal error while {context}; see the server log"),
        )
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> ApiError {
        if matches!(
            e,
            deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait)
        ) {
            tracing::warn!("every database connection is busy; a request was turned away");
            return ApiError::unavailable(
                "the server is busy: no database connection came free in time; retry shortly",
            )
            .retry_after(1);
        }
        tracing::warn!(error = %e, "no database connection");
        ApiError::unavailable("the database is unavailable; retry later").retry_after(1)
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> ApiError {
        if e.is_closed() || e.as_db_error().is_none() {
            tracing::warn!(error = %e, "database connection failed");
            return ApiError::unavailable("the database is unavailable; retry later");
        }
        ApiError::internal("talking to the database", e)
    }
}

impl From<CentralError> for ApiError {
    fn from(e: CentralError) -> ApiError {
        match e {
            CentralError::Invalid { .. } => ApiError::bad_request(e.to_string()),
            CentralError::NotFound(message) => ApiError::not_found(message),
            CentralError::Refused(message) => {
                ApiError::new(StatusCode::CONFLICT, error_code::CONFLICT, message)
            }
            CentralError::IdempotencyConflict { .. } => ApiError::new(
                StatusCode::CONFLICT,
                error_code::IDEMPOTENCY_CONFLICT,
                e.to_string(),
            ),
            CentralError::Db(e) => ApiError::from(e),
            CentralError::Pool(e) => ApiError::from(e),
            CentralError::Internal(e) => ApiError::internal("applying a central operation", e),
        }
    }
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> ApiError {
        match e {
            AgentError::Invalid(m) | AgentError::State(m) => ApiError::bad_request(m),
            e @ AgentError::NotFound(_) => ApiError::not_found(e.to_string()),
            AgentError::Database(e) => e.into(),
            AgentError::Pool(e) => e.into(),
            AgentError::Other(e) => ApiError::internal("managing an agent", format!("{e:#}")),
        }
    }
}

impl From<Unsupported> for ApiError {
    fn from(e: Unsupported) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            error_code::UNSUPPORTED_PROTOCOL,
            e.0,
        )
    }
}

impl From<BatchError> for ApiError {
    fn from(e: BatchError) -> ApiError {
        match e {
            BatchError::Invalid(message) => ApiError::bad_request(message),
            BatchError::BadHash(message) => {
                ApiError::new(StatusCode::BAD_REQUEST, error_code::BAD_HASH, message)
            }
            BatchError::TooLarge(message) => ApiError::too_large(message),
            BatchError::Protocol(e) => e.into(),
        }
    }
}

impl From<StripeError> for ApiError {
    fn from(e: StripeError) -> ApiError {
        match e {
            StripeError::NotConfigured => ApiError::unavailable(e.to_string()),
            StripeError::Invalid(message) => ApiError::bad_request(message),
            StripeError::NotFound(message) => ApiError::not_found(message),
            StripeError::Refused(message) => {
                ApiError::new(StatusCode::CONFLICT, error_code::CONFLICT, message)
            }
            StripeError::Upstream(message) => {
                ApiError::new(StatusCode::BAD_GATEWAY, error_code::UNAVAILABLE, message)
            }
            StripeError::Central(e) => e.into(),
            StripeError::Db(e) => e.into(),
            StripeError::Pool(e) => e.into(),
            StripeError::Internal { context, detail } => ApiError::internal(context, detail),
        }
    }
}

impl From<EnrollError> for ApiError {
    fn from(e: EnrollError) -> ApiError {
        match e {
            EnrollError::Refused => ApiError::unauthorized(e.to_string()),
            EnrollError::Invalid(message) => ApiError::bad_request(message),
            EnrollError::TooLarge(message) => ApiError::too_large(message),
            EnrollError::Clash(message) => {
                ApiError::new(StatusCode::CONFLICT, error_code::CONFLICT, message)
            }
            EnrollError::Protocol(e) => e.into(),
            EnrollError::Db(e) => e.into(),
            EnrollError::Pool(e) => e.into(),
            EnrollError::Internal { context, detail } => ApiError::internal(context, detail),
        }
    }
}

impl From<PullError> for ApiError {
    fn from(e: PullError) -> ApiError {
        match e {
            PullError::Invalid(message) => ApiError::bad_request(message),
            PullError::CursorGone(message) => {
                ApiError::new(StatusCode::GONE, error_code::CURSOR_GONE, message)
            }
            PullError::Unsupported(message) => ApiError::new(
                StatusCode::BAD_REQUEST,
                error_code::UNSUPPORTED_PROTOCOL,
                message,
            ),
            PullError::Db(e) => e.into(),
            PullError::Pool(e) => e.into(),
            PullError::Internal { context, detail } => ApiError::internal(context, detail),
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> ApiError {
        let acked = e.acked_seq();
        let refusal =
            |code, e: IngestError| ApiError::new(StatusCode::CONFLICT, code, e.to_string());
        let answer = match e {
            IngestError::UnknownIncarnation { .. } => refusal(error_code::UNKNOWN_INCARNATION, e),
            IngestError::Quarantined { .. } => refusal(error_code::QUARANTINED, e),
            IngestError::Gap { .. } => refusal(error_code::GAP, e),
            IngestError::Conflict { .. } => refusal(error_code::CONFLICT, e),
            IngestError::Revoked => ApiError::unauthorized(e.to_string()),
            IngestError::Db(e) => e.into(),
            IngestError::Pool(e) => e.into(),
            IngestError::Internal { context, detail } => ApiError::internal(context, detail),
        };
        match acked {
            Some(acked) => answer.with_acked_seq(acked),
            None => answer,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                acked_seq: self.acked_seq,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        response
    }
}
