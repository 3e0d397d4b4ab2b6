//! Every refusal the server gives: an HTTP status and the wire's [`ErrorBody`] (a code from
//! `wire::error_code` and a sentence naming what was wrong). Internal errors are logged with their
//! cause and answered with a generic message (no SQL or secrets leave the server).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tollgate_schema::wire::{ErrorBody, ErrorDetail, error_code};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub acked_seq: Option<i64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            acked_seq: None,
        }
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
        tracing::warn!(error = %e, "no database connection");
        ApiError::unavailable("the database is unavailable; retry later")
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                acked_seq: self.acked_seq,
            },
        };
        (self.status, Json(body)).into_response()
    }
}
