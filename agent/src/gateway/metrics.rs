//! The gateway's Prometheus metrics, served at `/metrics` in the text exposition format.
//!
//! Label values are bounded: routes are the fixed set, models are names from the price table or
//! "other", levels and reasons are enums, statuses are HTTP codes. Credits are counted in whole
//! nano-credits (an integer counter), so the metric is exact.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub status: u16,
    pub model: String,
    pub level: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

/// Latency buckets from 1 ms to 2 minutes.
fn latency_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        120.0,
    ])
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub credits_charged_nanos: Counter<u64, AtomicU64>,
    pub refusals: Family<ReasonLabels, Counter>,
    pub upstream_latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub time_to_first_token: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub ledger_commit: Histogram,
    pub ledger_batch_ops: Histogram,
    pub open_holds: Gauge,
    pub alerts_dropped: Counter,
    pub low_balance_crossings: Counter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tollgate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests by route, status, model and power level",
            requests.clone(),
        );
        let credits_charged_nanos = Counter::<u64, AtomicU64>::default();
        registry.register(
            "credits_charged_nanocredits",
            "Credits charged, in nano-credits (1e-9 credit)",
            credits_charged_nanos.clone(),
        );
        let refusals = Family::<ReasonLabels, Counter>::default();
        registry.register("refusals", "Requests refused, by reason", refusals.clone());
        let upstream_latency: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "upstream_latency_seconds",
            "Upstream request duration, to the last byte",
            upstream_latency.clone(),
        );
        let time_to_first_token: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "time_to_first_token_seconds",
            "Streamed requests: time from forwarding to the first generated token",
            time_to_first_token.clone(),
        );
        let ledger_commit = Histogram::new([
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
        ]);
        registry.register(
            "ledger_commit_seconds",
            "Ledger group-commit duration (one transaction, one fsync)",
            ledger_commit.clone(),
        );
        let ledger_batch_ops =
            Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]);
        registry.register(
            "ledger_batch_operations",
            "Operations per ledger group commit",
            ledger_batch_ops.clone(),
        );
        let open_holds = Gauge::default();
        registry.register(
            "open_holds",
            "Credit holds of requests in flight through this gateway",
            open_holds.clone(),
        );
        let alerts_dropped = Counter::default();
        registry.register(
            "alerts_dropped",
            "Threshold alerts dropped (queue full or every attempt failed)",
            alerts_dropped.clone(),
        );
        let low_balance_crossings = Counter::default();
        registry.register(
            "low_balance_crossings",
            "Charges that took a user's balance below alerts.low_balance_threshold (0 when unset)",
            low_balance_crossings.clone(),
        );
        Metrics {
            registry,
            requests,
            credits_charged_nanos,
            refusals,
            upstream_latency,
            time_to_first_token,
            ledger_commit,
            ledger_batch_ops,
            open_holds,
            alerts_dropped,
            low_balance_crossings,
        }
    }

    /// Adds the sync task's metrics (an enrolled agent; see `sync::metrics`).
    pub fn register_sync(&mut self, sync: &crate::sync::metrics::SyncMetrics) {
        sync.register(&mut self.registry);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
