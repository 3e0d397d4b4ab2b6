//! The browser console at `/console/`: server-rendered HTML pages for admins, signed in with an
//! admin token (see [`session`]). Pages: users with balances (search, paging), one user (settings,
//! holdings, journal, usage charts, credit and checkout forms), agents (status, lag, quarantine
//! and release), the reconcile report, and the catalog (packages and power levels, editable).
//!
//! Guarantees:
//! - Every change goes through the domain function the admin API uses (`central::credit`,
//!   `central::catalog`, `sync::agents::release`, `stripe::checkout`, `reconcile::run` with the
//!   read-only spacing of [`crate::http::gates`]); the console holds no business rule of its own.
//! - Every POST is checked by [`session::ConsoleSession::check_form`] (same site, CSRF secret,
//!   role) before its fields are read; bodies are bounded and timed like the API's.
//! - Every answer carries a strict Content-Security-Policy (no script, no inline style, nothing
//!   from another origin), `no-store`, and refuses framing. Every asset is in the binary.
//! - Everything shown is HTML-escaped ([`html::esc`]); a refused form is shown again with a
//!   message naming what was wrong, and the domain functions validate before they write.

pub mod agents;
pub mod catalog;
pub mod html;
pub mod queries;
pub mod reconcile;
pub mod session;
pub mod settings;
pub mod sign_in;
pub mod users;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;
use super::json::{BODY_BYTES_MAX, read_body};

/// The console's stylesheet, embedded.
const CSS: &str = tollgate_pages::STYLESHEET;

/// What every console answer says about itself.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's routes (merged into the server's router).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/users") }))
        .route(
            "/console/",
            get(|| async { Redirect::to("/console/users") }),
        )
        .route("/console/assets/console.css", get(stylesheet))
        .route("/console/login", get(sign_in::form).post(sign_in::submit))
        .route("/console/logout", post(sign_in::sign_out))
        .route("/console/users", get(users::list))
        .route("/console/users/{user_id}", get(users::show))
        .route("/console/users/{user_id}/credit", post(users::credit))
        .route("/console/users/{user_id}/checkout", post(users::checkout))
        .route("/console/agents", get(agents::list))
        .route("/console/agents/{name}/release", post(agents::release))
        .route("/console/reconcile", get(reconcile::page))
        .route("/console/catalog", get(catalog::page))
        .route("/console/catalog/packages", post(catalog::set_package))
        .route(
            "/console/catalog/power-levels/{level}",
            post(catalog::set_power_level),
        )
        .route("/console/{*rest}", get(not_found).post(not_found))
        .layer(middleware::from_fn(security_headers))
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        CSS,
    )
        .into_response()
}

async fn not_found() -> ConsoleError {
    ConsoleError::new(StatusCode::NOT_FOUND, "there is no such console page")
}

/// Adds the console's security headers to every answer (assets keep their own caching).
async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// A console failure outside a form: its status and a sentence for the admin, shown as a page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConsoleError {
    pub status: StatusCode,
    pub message: String,
}

impl ConsoleError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ConsoleError {
        ConsoleError {
            status,
            message: message.into(),
        }
    }

    /// The server's fault: logged in full, shown generically.
    pub fn internal(context: &str, error: impl std::fmt::Display) -> ConsoleError {
        ConsoleError::from(ApiError::internal(context, error))
    }
}

/// Domain errors become the status and message the admin API gives them (one mapping, in
/// `http/error.rs`).
impl From<ApiError> for ConsoleError {
    fn from(e: ApiError) -> ConsoleError {
        ConsoleError::new(e.status, e.message)
    }
}

macro_rules! via_api_error {
    ($($t:ty),*) => {$(
        impl From<$t> for ConsoleError {
            fn from(e: $t) -> ConsoleError {
                ConsoleError::from(ApiError::from(e))
            }
        }
    )*};
}
via_api_error!(
    crate::central::CentralError,
    crate::sync::agents::AgentError,
    crate::stripe::StripeError,
    tokio_postgres::Error,
    deadpool_postgres::PoolError
);

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        (self.status, html::error_page(self.status, &self.message)).into_response()
    }
}

/// A console form (`application/x-www-form-urlencoded`), read like an API body: at most
/// [`BODY_BYTES_MAX`] bytes within the body timeout. Fields the form type does not name are
/// ignored; a body that is not a form is a 400 page.
#[derive(Debug)]
pub struct ConsoleForm<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ConsoleForm<T> {
    type Rejection = ConsoleError;

    async fn from_request(req: Request<Body>, state: &AppState) -> Result<Self, ConsoleError> {
        let timeout = state.config.limits.body_read_timeout;
        let bytes = read_body(req.into_body(), BODY_BYTES_MAX, timeout).await?;
        serde_urlencoded::from_bytes(&bytes)
            .map(ConsoleForm)
            .map_err(|e| {
                ConsoleError::new(
                    StatusCode::BAD_REQUEST,
                    format!("the form could not be read: {e}"),
                )
            })
    }
}

/// A page answer: the status (200, or the refusal's when a form was refused) and the HTML.
pub type PageResult = Result<(StatusCode, Html<String>), ConsoleError>;
