//! The server's Prometheus metrics, served at `/metrics` in the text exposition format. Each
//! replica counts its own work; label values are fixed sets (routes, outcomes, HTTP statuses).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

fn seconds_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Every HTTP answer, by route template and status.
    pub requests: Family<RouteLabels, Counter>,
    /// Entries newly stored from pushes (replays not counted).
    pub entries_ingested: Counter,
    /// Push batches by outcome: accepted, replay, gap, conflict, bad_hash, quarantined.
    pub pushes: Family<OutcomeLabels, Counter>,
    /// Time to apply one push batch (its PostgreSQL transaction).
    pub push_seconds: Histogram,
    /// Inbox events written, and events handed to agents.
    pub inbox_events_written: Counter,
    pub inbox_events_sent: Counter,
    /// Long polls waiting right now.
    pub long_polls_waiting: Gauge,
    /// Stripe webhook deliveries by outcome (granted, duplicate, ignored, bad_signature, ...).
    pub stripe_events: Family<OutcomeLabels, Counter>,
    /// Fleet users' threshold alert attempts by outcome: sent, retried, dropped.
    pub alerts: Family<OutcomeLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tollgate_server");
        let requests = Family::<RouteLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP answers by route and status",
            requests.clone(),
        );
        let entries_ingested = Counter::default();
        registry.register(
            "entries_ingested",
            "Agent journal entries newly stored (replays excluded)",
            entries_ingested.clone(),
        );
        let pushes = Family::<OutcomeLabels, Counter>::default();
        registry.register("pushes", "Push batches by outcome", pushes.clone());
        let push_seconds = seconds_histogram();
        registry.register(
            "push_seconds",
            "Time to apply one push batch",
            push_seconds.clone(),
        );
        let inbox_events_written = Counter::default();
        registry.register(
            "inbox_events_written",
            "Central events written to agent inboxes",
            inbox_events_written.clone(),
        );
        let inbox_events_sent = Counter::default();
        registry.register(
            "inbox_events_sent",
            "Inbox events handed to agents (a redelivery counts again)",
            inbox_events_sent.clone(),
        );
        let long_polls_waiting = Gauge::default();
        registry.register(
            "long_polls_waiting",
            "Inbox long polls waiting now",
            long_polls_waiting.clone(),
        );
        let stripe_events = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "stripe_events",
            "Stripe webhook deliveries by outcome",
            stripe_events.clone(),
        );
        let alerts = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "alerts",
            "Threshold alert attempts for fleet users by outcome (sent, retried, dropped)",
            alerts.clone(),
        );
        Metrics {
            registry,
            alerts,
            requests,
            entries_ingested,
            pushes,
            push_seconds,
            inbox_events_written,
            inbox_events_sent,
            long_polls_waiting,
            stripe_events,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
