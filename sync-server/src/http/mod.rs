//! The HTTP surface: one router for the sync endpoints (agents), the admin API (admin tokens),
//! the Stripe webhook (signed), `/healthz` and `/readyz`; and an admin router for the admin
//! listener (`/metrics`, `/readyz`, `/healthz`). Every replica serves both. Metrics are only on
//! the admin listener (they tell who pushes and pays how often, to no one but the operator);
//! readiness is on both, since a load balancer in front of the replicas asks the API's port and
//! its answer tells nothing (`health.rs`).
//!
//! Guarantees: every answer is counted by route template and status; every refusal is a wire
//! `ErrorBody`; unknown paths are a 404 in the same shape.

pub mod admin;
pub mod auth;
pub mod console;
pub mod error;
pub mod gates;
pub mod health;
pub mod json;
pub mod stripe_webhook;
pub mod sync_enroll;
pub mod sync_escrow;
pub mod sync_pull;
pub mod sync_push;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use deadpool_postgres::Pool;

use crate::config::ServerConfig;
use crate::metrics::{Metrics, RouteLabels};
use crate::sync::notify::InboxNotifier;
use error::ApiError;

/// What every handler shares. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    pub pool: Pool,
    pub config: Arc<ServerConfig>,
    pub metrics: Arc<Metrics>,
    /// Wakes long polls when an agent's inbox grows (on any replica: LISTEN/NOTIFY).
    pub inbox: InboxNotifier,
    /// Outbound HTTP (Stripe's API).
    pub http: reqwest::Client,
    /// Long polls open per agent (bounded by `limits.long_polls_per_agent`).
    pub long_polls: Arc<gates::LongPolls>,
    /// Read-only tokens' reconciles, spaced by `limits.read_only_reconcile_interval`.
    pub reconciles: Arc<gates::ReconcileGate>,
}

/// The whole router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        // Sync (agents).
        .route("/v1/agents/enroll", post(sync_enroll::handle))
        .route("/v1/sync/push", post(sync_push::handle))
        .route("/v1/sync/inbox", get(sync_pull::inbox))
        .route("/v1/sync/snapshot", get(sync_pull::snapshot))
        .route("/v1/escrow/grants", post(sync_escrow::grant))
        // Admin API.
        .route("/admin/v1/users", get(admin::users::list))
        .route(
            "/admin/v1/users/{user_id}",
            get(admin::users::show).put(admin::users::set),
        )
        .route(
            "/admin/v1/users/{user_id}/credits",
            post(admin::credits::apply),
        )
        .route("/admin/v1/packages", get(admin::catalog::packages))
        .route(
            "/admin/v1/packages/{name}",
            put(admin::catalog::set_package),
        )
        .route("/admin/v1/power-levels", get(admin::catalog::power_levels))
        .route(
            "/admin/v1/power-levels/{level}",
            put(admin::catalog::set_power_level),
        )
        .route(
            "/admin/v1/agents",
            get(admin::agents::list).post(admin::agents::enroll),
        )
        .route(
            "/admin/v1/agents/{name}/revoke",
            post(admin::agents::revoke),
        )
        .route(
            "/admin/v1/agents/{name}/release",
            post(admin::agents::release),
        )
        .route("/admin/v1/reconcile", get(admin::reconcile::report))
        .route("/admin/v1/checkout", post(admin::checkout::create))
        // Stripe.
        .route("/stripe/webhook", post(stripe_webhook::handle))
        // The browser console (HTML pages, session cookies).
        .merge(console::router())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

/// The admin listener's routes: `/metrics`, `/readyz`, `/healthz`; 404 otherwise (the API is
/// not here).
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(|| async {
            ApiError::not_found(
                "not an admin route: this listener serves /metrics, /readyz and /healthz",
            )
        })
        .with_state(state)
}

/// Connections the admin listener serves at once (a scraper or two, an operator's curl).
const ADMIN_CONNECTIONS_MAX: usize = 64;

/// Serves the admin router on `listener` until `shutdown` resolves.
pub async fn serve_admin(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let limits = tollgate_serve::ConnectionLimits {
        connections_max: ADMIN_CONNECTIONS_MAX,
        header_read_timeout: state.config.limits.header_read_timeout,
    };
    tollgate_serve::serve(listener, admin_router(state), limits, shutdown).await?;
    Ok(())
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = route_label(
        req.extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    let response = next.run(req).await;
    state
        .metrics
        .requests
        .get_or_create(&RouteLabels {
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// Route templates as static label values (bounded cardinality).
fn route_label(matched: Option<&str>) -> &'static str {
    const ROUTES: &[&str] = &[
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/agents/enroll",
        "/v1/sync/push",
        "/v1/sync/inbox",
        "/v1/sync/snapshot",
        "/admin/v1/users",
        "/admin/v1/users/{user_id}",
        "/admin/v1/users/{user_id}/credits",
        "/admin/v1/packages",
        "/admin/v1/packages/{name}",
        "/admin/v1/power-levels",
        "/admin/v1/power-levels/{level}",
        "/admin/v1/agents",
        "/admin/v1/agents/{name}/revoke",
        "/admin/v1/agents/{name}/release",
        "/admin/v1/reconcile",
        "/admin/v1/checkout",
        "/stripe/webhook",
    ];
    matched
        .and_then(|m| {
            ROUTES.iter().find(|r| **r == m).copied().or_else(|| {
                // Console pages are counted together.
                (m == "/console" || m.starts_with("/console/")).then_some("/console")
            })
        })
        .unwrap_or("other")
}

/// Builds the shared state: the pool, metrics, the inbox notifier (its LISTEN connection is
/// started here) and the outbound HTTP client.
pub async fn state(config: ServerConfig) -> anyhow::Result<AppState> {
    let pool = crate::db::pool_waiting(
        &config.database_url,
        config.pool_size,
        config.limits.pool_wait,
    )?;
    let inbox = InboxNotifier::start(&config.database_url).await?;
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    Ok(AppState {
        pool,
        config: Arc::new(config),
        metrics: Arc::new(Metrics::new()),
        inbox,
        http,
        long_polls: Arc::default(),
        reconciles: Arc::default(),
    })
}

/// Serves on `listener` until `shutdown` resolves, then finishes the requests in flight; at most
/// `limits.connections_max` connections at once, each closed if a request's headers take longer
/// than `limits.header_read_timeout`.
pub async fn serve(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let limits = tollgate_serve::ConnectionLimits {
        connections_max: state.config.limits.connections_max,
        header_read_timeout: state.config.limits.header_read_timeout,
    };
    tollgate_serve::serve(listener, router(state), limits, shutdown).await?;
    Ok(())
}
