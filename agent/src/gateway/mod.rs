//! The metering gateway: an OpenAI-compatible HTTP API in front of LiteLLM that authenticates
//! each caller, reserves their credit, forwards the request, meters what comes back and settles
//! exactly that (PRODUCT.md, "the agent's request path").
//!
//! Shape: [`serve`] takes a ready [`GatewayConfig`], an open [`Ledger`] and two bound
//! [`Listeners`] (tests bind port 0 and read the addresses before serving) and runs until
//! `shutdown` resolves. The API listener serves the metered routes and `/healthz` only; the
//! admin listener ([`admin_router`]) serves `/metrics`, `/readyz` and `/healthz`, so what the
//! operator monitors is never on the port clients reach.
//! The ledger is owned by one writer thread ([`writer`]) that group-commits every request's
//! hold and settle; everything else is async. Modules: [`config`] (file < env < flags),
//! the HTTP loop (crate `tollgate-serve`: connection limit, header timeout), [`auth`] (API keys, cached
//! briefly), [`served`] (what the upstream serves: LiteLLM's `/v1/models` and `/model/info`),
//! [`request`] (the body's allowlist and output bounds, pure), [`routing`] (levels and models,
//! pure), [`tokens`] (the prompt's ceiling, pure), [`pricing`] (credits, pure), [`money`] (the
//! hold as a value, admission), [`exchange`] (an admitted request and how it ends),
//! [`upstream`] (forwarding), [`usage`] and [`sse`] (reading answers and streams, pure),
//! [`proxy`] (the request path), [`answer`] (a JSON answer), [`stream`] (the metered SSE
//! body), [`count`] (Anthropic's free token count), [`models`] (the model list), [`health`] (latency and provider health), [`alerts`] (threshold webhooks),
//! [`metrics`] (Prometheus).
//!
//! Guarantees: no route forwards anything unmetered (unknown routes get a 404 in OpenAI's
//! shape); every authenticated metered request leaves exactly one usage-log row; the ledger
//! work of a request is durable before its response's last byte; the request path never waits
//! on anything but the ledger and the upstream (health, catalog reloads and alerts run in
//! background tasks).

pub mod access;
pub mod alerts;
mod answer;
mod auth;
pub mod config;
pub mod console;
mod count;
pub mod error;
mod exchange;
pub mod health;
pub mod metrics;
mod models;
mod money;
pub mod pricing;
mod proxy;
pub mod request;
pub mod routing;
pub mod served;
pub mod sse;
mod stream;
pub mod tokens;
mod upstream;
pub mod usage;
pub mod writer;

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;

use crate::keys::crypto::MasterKey;
use crate::ledger::catalog::PowerLevelConfig;
use crate::ledger::{Ledger, LedgerError};
use crate::prices::PriceTable;
use crate::sync::escrow::Demand;
use served::Served;

pub use config::GatewayConfig;
use error::ApiError;
use health::Observations;
use metrics::Metrics;
use writer::LedgerWriter;

/// How often the background task reloads the catalog (a new price import, changed levels) and
/// writes provider health.
pub const BACKGROUND_INTERVAL: Duration = Duration::from_secs(2);

/// The price table, power levels and upstream catalogue a request is routed and priced by.
#[derive(Debug)]
pub struct Catalog {
    pub prices: Arc<PriceTable>,
    /// The stored table's version (`None`: the built-in table).
    pub imported_version: Option<i64>,
    pub levels: Vec<PowerLevelConfig>,
    /// What the upstream serves; `None` until it has answered.
    pub served: Option<Arc<Served>>,
}

impl Catalog {
    /// The view routing works on.
    pub fn routing(&self) -> routing::Catalog<'_> {
        routing::Catalog {
            prices: &self.prices,
            levels: &self.levels,
            served: self.served.as_deref(),
        }
    }
}

/// Everything the request path shares.
#[derive(Debug)]
pub struct Gateway {
    pub config: GatewayConfig,
    writer: LedgerWriter,
    /// Forwards to the upstream and to BYOK providers (connection pools are kept per host).
    http: reqwest::Client,
    catalog: RwLock<Arc<Catalog>>,
    observations: Observations,
    metrics: Arc<Metrics>,
    auth_cache: auth::AuthCache,
    /// Each user's line for credit (see `money`).
    admission: money::Admission,
    /// Opens users' BYOK keys; `None` when the vault holds no key and no master key is set.
    master: Option<Arc<MasterKey>>,
    alerts: Option<alerts::AlertSender>,
    /// What users ask for, for the escrow task (fleet users' grants).
    demand: Arc<Demand>,
}

impl Gateway {
    fn catalog(&self) -> Arc<Catalog> {
        self.catalog
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_catalog(&self, catalog: Catalog) {
        *self
            .catalog
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(catalog);
    }

    /// A bounded metric label for a model: its name if the upstream serves it or the price
    /// table knows it, else "other".
    fn model_label(&self, model: &str) -> String {
        let catalog = self.catalog();
        let known = catalog.prices.get(model).is_some()
            || catalog.served.as_ref().is_some_and(|s| s.serves(model));
        if known {
            model.to_owned()
        } else {
            "other".to_owned()
        }
    }

    /// The tokenizers the models the upstream serves count with (none while it is unknown).
    fn tokenizers_needed(&self) -> Vec<tokens::Tokenizer> {
        let catalog = self.catalog();
        if catalog.served.is_none() {
            return Vec::new();
        }
        let used: Vec<tokens::Tokenizer> = routing::served_routes(&catalog.routing())
            .iter()
            .map(|r| tokens::tokenizer_for(&r.price))
            .collect();
        [tokens::Tokenizer::O200k, tokens::Tokenizer::Cl100k]
            .into_iter()
            .filter(|t| used.contains(t))
            .collect()
    }

    /// Reads what the upstream serves, keeping what was known if it does not answer.
    async fn refresh_served(&self) {
        let key = self.config.upstream.api_key.as_ref().map(|k| k.expose());
        match served::fetch(&self.http, &self.config.upstream.url, key).await {
            Ok(served) => {
                let current = self.catalog();
                if current.served.as_deref() != served.as_ref() {
                    if let Some(s) = &served {
                        tracing::info!(
                            models = s.names.len(),
                            deployments = s.deployments.is_some(),
                            "upstream catalogue read"
                        );
                    }
                    self.set_catalog(Catalog {
                        prices: current.prices.clone(),
                        imported_version: current.imported_version,
                        levels: current.levels.clone(),
                        served: served.map(Arc::new),
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read the upstream's catalogue"),
        }
    }
}

/// What [`serve`] needs besides the config.
#[derive(Debug)]
pub struct ServeParts {
    pub ledger: Ledger,
    /// The vault's master key, if BYOK keys may be used.
    pub master: Option<MasterKey>,
    /// Where requests' demand for credit is noted for the escrow task (shared with the sync
    /// task when enrolled; otherwise nobody reads it).
    pub demand: Arc<Demand>,
    /// The sync task's metrics, shown on `/metrics` (an enrolled agent; `None` standalone).
    pub sync_metrics: Option<Arc<crate::sync::metrics::SyncMetrics>>,
}

/// Loads the catalog through the ledger: the latest imported price table, else the built-in one.
fn load_catalog(ledger: &Ledger) -> Result<Catalog, LedgerError> {
    let imported = ledger.price_table()?;
    let imported_version = ledger.price_table_version()?;
    Ok(Catalog {
        prices: Arc::new(imported.unwrap_or_else(PriceTable::builtin)),
        imported_version,
        levels: crate::ledger::catalog::power_levels(ledger.conn())?,
        served: None,
    })
}

/// Connections the admin listener serves at once (a scraper or two, an operator's curl).
const ADMIN_CONNECTIONS_MAX: usize = 64;

/// The listeners [`serve`] runs on, bound by the caller.
#[derive(Debug)]
pub struct Listeners {
    /// Clients: the metered API and `/healthz`.
    pub api: TcpListener,
    /// The operator: `/metrics`, `/readyz` and `/healthz`.
    pub admin: TcpListener,
}

/// Runs the gateway on `listeners` until `shutdown` resolves; in-flight requests finish first.
pub async fn serve(
    config: GatewayConfig,
    parts: ServeParts,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let catalog = load_catalog(&parts.ledger)?;
    let mut metrics = Metrics::new();
    if let Some(sync) = &parts.sync_metrics {
        metrics.register_sync(sync);
    }
    let metrics = Arc::new(metrics);
    let observer = {
        let metrics = metrics.clone();
        Arc::new(move |ops: usize, took: Duration| {
            metrics.ledger_commit.observe(took.as_secs_f64());
            metrics.ledger_batch_ops.observe(ops as f64);
        })
    };
    let (writer, writer_thread) =
        LedgerWriter::start(parts.ledger, config.limits.write_queue_max, observer)?;
    let http = reqwest::Client::builder()
        .connect_timeout(config.connect_timeout())
        .pool_idle_timeout(Duration::from_secs(90))
        .build()?;
    let alerts = alerts::start(
        &config.alerts,
        http.clone(),
        metrics.clone(),
        writer.clone(),
    );
    let gateway = Arc::new(Gateway {
        auth_cache: auth::AuthCache::new(config.auth_cache_ttl()),
        admission: money::Admission::new(config.admission_wait()),
        config,
        writer,
        http,
        catalog: RwLock::new(Arc::new(catalog)),
        observations: Observations::default(),
        metrics,
        master: parts.master.map(Arc::new),
        alerts,
        demand: parts.demand,
    });
    // Before the first request: what the upstream serves (if it answers), and the tokenizers its
    // models need (each is tens of megabytes: only those).
    gateway.refresh_served().await;
    let needed = gateway.tokenizers_needed();
    let _ = tokio::task::spawn_blocking(move || tokens::warm_up(&needed)).await;
    let background = tokio::spawn(background(gateway.clone()));
    let app = router(gateway.clone());
    let limits = tollgate_serve::ConnectionLimits {
        connections_max: gateway.config.limits.connections_max,
        header_read_timeout: gateway.config.header_read_timeout(),
    };
    // One signal stops both listeners; if the API's loop ends first (an error), it stops the
    // admin listener's too.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stop = Arc::new(stop);
    let forward = {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop.send(true);
        })
    };
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let admin = tokio::spawn(tollgate_serve::serve(
        listeners.admin,
        admin_router(gateway.clone()),
        tollgate_serve::ConnectionLimits {
            connections_max: ADMIN_CONNECTIONS_MAX,
            ..limits
        },
        until_stopped(stopped.clone()),
    ));
    let served = tollgate_serve::serve(listeners.api, app, limits, until_stopped(stopped)).await;
    let _ = stop.send(true);
    forward.abort();
    match admin.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "the admin listener failed"),
        Err(e) => tracing::warn!(error = %e, "the admin listener's task failed"),
        Ok(Ok(())) => {}
    }
    background.abort();
    // Last provider health, then let the writer finish what is queued and stop.
    flush_health(&gateway).await;
    drop(gateway);
    let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    Ok(served?)
}

/// The API listener's routes: the metered APIs (OpenAI's chat, completions, embeddings and
/// Responses; Anthropic's Messages and its free token count), each also without the `/v1` prefix
/// as LiteLLM accepts them; the model list; `/healthz`; 404 for everything else (metrics and
/// readiness included: they are on the admin listener).
pub fn router(gateway: Arc<Gateway>) -> Router {
    let mut router = Router::new();
    for prefix in ["/v1", ""] {
        router = router
            .route(&format!("{prefix}/chat/completions"), post(proxy::chat))
            .route(&format!("{prefix}/completions"), post(proxy::completions))
            .route(&format!("{prefix}/embeddings"), post(proxy::embeddings))
            .route(&format!("{prefix}/responses"), post(proxy::responses))
            .route(&format!("{prefix}/messages"), post(proxy::messages))
            .route(
                &format!("{prefix}/messages/count_tokens"),
                post(count::count_tokens),
            )
            .route(&format!("{prefix}/models"), get(models::list))
            .route(&format!("{prefix}/models/{{*id}}"), get(models::one));
    }
    router
        .route("/healthz", get(|| async { "ok" }))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .with_state(gateway)
}

/// The admin listener's routes: `/metrics`, `/readyz`, `/healthz`, the read-only view of the
/// books at `/console/` ([`console`]); a plain 404 otherwise.
pub fn admin_router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .merge(console::routes())
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not an admin route: this listener serves GET /metrics, /readyz, /healthz and \
                 /console/\n",
            )
        })
        .with_state(gateway)
}

async fn not_found(uri: axum::http::Uri, method: axum::http::Method) -> Response {
    let path = uri.path();
    let admin_note = if matches!(path, "/metrics" | "/readyz") {
        " (metrics and readiness are served on the admin listener, `admin_listen`)"
    } else {
        ""
    };
    let error = ApiError::NotFound(format!(
        "{method} {path} is not a route of this gateway; it serves POST /v1/chat/completions, \
         /v1/completions, /v1/embeddings, /v1/responses, /v1/messages and \
         /v1/messages/count_tokens, and GET /v1/models (each also without /v1){admin_note}"
    ));
    let request_id = format!("req_{}", uuid::Uuid::now_v7().simple());
    let route = format!("{method} {path}");
    access::AccessLine {
        request_id: &request_id,
        route: &route,
        status: 404,
        error: Some((error.code(), "not a route of this gateway")),
        ..access::AccessLine::default()
    }
    .emit();
    let mut response = error.into_response();
    proxy::name_request(&mut response, &request_id);
    response
}

async fn metrics_text(State(gw): State<Arc<Gateway>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        gw.metrics.render(),
    )
        .into_response()
}

/// Ready when the database answers and the upstream accepts a connection and answers HTTP.
async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    let database = match gw.writer.read(|l| l.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let url = format!(
        "{}/health/liveliness",
        gw.config.upstream.url.trim_end_matches('/')
    );
    let upstream = match gw
        .http
        .get(&url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
    {
        Ok(r) if !r.status().is_server_error() => Ok(()),
        Ok(r) => Err(format!("upstream answered {}", r.status())),
        Err(e) => Err(format!("upstream unreachable: {}", error_chain(&e))),
    };
    let ready = database.is_ok() && upstream.is_ok();
    let body = serde_json::json!({
        "ready": ready,
        "database": database.err().unwrap_or_else(|| "ok".into()),
        "upstream": upstream.err().unwrap_or_else(|| "ok".into()),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// Reloads the catalog when a new price table was stored (or levels changed) and writes
/// provider health, every [`BACKGROUND_INTERVAL`]; re-reads what the upstream serves every
/// `upstream.catalog_refresh_secs`.
async fn background(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(BACKGROUND_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let refresh = gw.config.catalog_refresh();
    let mut next_refresh = tokio::time::Instant::now() + refresh;
    loop {
        tick.tick().await;
        if tokio::time::Instant::now() >= next_refresh {
            gw.refresh_served().await;
            next_refresh = tokio::time::Instant::now() + refresh;
        }
        let known = gw.catalog().imported_version;
        // Levels are re-read every time; the price table only when a new version was imported.
        let reloaded = gw
            .writer
            .read(move |l| -> Result<_, LedgerError> {
                let version = l.price_table_version()?;
                let levels = crate::ledger::catalog::power_levels(l.conn())?;
                let prices = if version == known {
                    None
                } else {
                    Some(l.price_table()?.unwrap_or_else(PriceTable::builtin))
                };
                Ok((version, levels, prices))
            })
            .await;
        match reloaded {
            Ok(Ok((imported_version, levels, prices))) => {
                let prices = match prices {
                    Some(p) => {
                        tracing::info!(version = %p.version, "price table reloaded");
                        Arc::new(p)
                    }
                    None => gw.catalog().prices.clone(),
                };
                let served = gw.catalog().served.clone();
                gw.set_catalog(Catalog {
                    prices,
                    imported_version,
                    levels,
                    served,
                });
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "could not reload the catalog"),
            Err(_) => return,
        }
        flush_health(&gw).await;
    }
}

async fn flush_health(gw: &Gateway) {
    let rows = gw.observations.provider_rows();
    if rows.is_empty() {
        return;
    }
    if let Ok(Err(e)) = gw
        .writer
        .read(move |l| l.record_provider_health(&rows))
        .await
    {
        tracing::warn!(error = %e, "could not write provider health");
    }
}

/// An error and its sources on one line (reqwest's top-level message alone says little).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
