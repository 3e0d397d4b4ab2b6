//! Extractors shared by the admin API: a full-role admin (checked before the body is read, so a
//! read-only token is refused with 403 whatever it sent), path and query parameters whose
//! rejections answer in the wire's `ErrorBody`, and operation keys from an optional id.
//!
//! Guarantees: a write handler taking [`FullAdmin`] never runs for a missing, unknown, revoked
//! (401) or read-only (403) token; nothing is parsed or written before that.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;

use crate::central::{CentralError, operation, validate};
use crate::http::AppState;
use crate::http::auth::AdminAuth;
use crate::http::error::ApiError;

/// An admin whose token has the full role (`admin.require_full()` already passed).
#[derive(Debug, Clone)]
pub struct FullAdmin(pub AdminAuth);

impl FromRequestParts<AppState> for FullAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let admin = AdminAuth::from_request_parts(parts, state).await?;
        admin.require_full()?;
        Ok(FullAdmin(admin))
    }
}

/// One path parameter, or a 400 naming it.
pub fn path_param(
    name: &str,
    path: Result<Path<String>, PathRejection>,
) -> Result<String, ApiError> {
    path.map(|Path(value)| value)
        .map_err(|e| ApiError::bad_request(format!("the {name} in the path is not valid: {e}")))
}

/// Query parameters, or a 400 saying what was wrong.
pub fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(value)| value)
        .map_err(|e| ApiError::bad_request(format!("invalid query string: {}", e.body_text())))
}

/// The operation key for an optional admin-given id: `admin:<id>`, or a fresh `<what>:<uuid>`
/// (a PUT without an id is applied every time it is sent).
pub fn operation_key(operation_id: Option<&str>, what: &str) -> Result<String, CentralError> {
    match operation_id {
        Some(id) => {
            validate::operation_id(id)?;
            Ok(operation::admin_key(id))
        }
        None => Ok(operation::fresh_key(what)),
    }
}
