//! The server's Prometheus metrics, served at `/metrics` in the text exposition format. Each
//! replica counts its own work; label values are fixed sets (routes, outcomes, HTTP statuses,
//! agent statuses, reconcile kinds) or agent names (bounded by the agents enrolled).
//!
//! Two sources: counters and histograms each replica keeps as it works, and gauges of the
//! central state (agents' lag, quarantine, fleet pools) read from the database when scraped
//! (`crate::observe`) — every replica reports the same values for those, so dashboards take
//! their `max`. The reconcile gauges are those of the last reconcile this replica ran.

use std::sync::atomic::AtomicU64;

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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabels {
    pub agent: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
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
    /// Grant requests answered, by outcome (granted, pool_empty; a retry answered with its
    /// stored grant counts again), and the credit granted (nano-credits).
    pub grants: Family<OutcomeLabels, Counter>,
    pub granted_nanos: Counter<u64, AtomicU64>,
    /// The last reconcile this replica ran: differences by kind (every kind, 0 included), when
    /// it finished (unix seconds), and runs by outcome (ok, differences, failed).
    pub reconcile_differences: Family<KindLabels, Gauge>,
    pub reconcile_last_run: Gauge<f64, AtomicU64>,
    pub reconcile_runs: Family<OutcomeLabels, Counter>,
    /// Read from the database at each scrape (`crate::observe`).
    pub db: DbGauges,
    /// One scrape at a time refreshes and renders (a concurrent one waits), so no scrape sees
    /// a half-refreshed agent family.
    pub scrape: tokio::sync::Mutex<()>,
}

/// The central state as gauges, refreshed from the database when `/metrics` is scraped.
#[derive(Debug, Default)]
pub struct DbGauges {
    /// 1 when this scrape's reads succeeded; 0 when they did not (the others keep their last
    /// values).
    pub database_up: Gauge,
    /// Agents by status (pending, active, quarantined, revoked; each always present).
    pub agents: Family<StatusLabels, Gauge>,
    /// Per agent not revoked: entries it reported that are not stored yet (reported head −
    /// acknowledged head), inbox events it has not acknowledged, seconds since it was last seen.
    pub agent_lag: Family<AgentLabels, Gauge>,
    pub agent_inbox_backlog: Family<AgentLabels, Gauge>,
    pub agent_last_seen_age: Family<AgentLabels, Gauge<f64, AtomicU64>>,
    /// Per agent not revoked: 1 while it is quarantined, else 0 (so an alert can name it).
    pub agent_quarantined: Family<AgentLabels, Gauge>,
    /// Fleet users, those whose pool is empty, and the pools' and debts' sums (nano-credits).
    pub fleet_users: Gauge,
    pub fleet_pools_empty: Gauge,
    pub fleet_pool_nanos: Gauge,
    pub fleet_debt_nanos: Gauge,
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
        let grants = Family::<OutcomeLabels, Counter>::default();
        for outcome in ["granted", "pool_empty"] {
            grants.get_or_create(&OutcomeLabels { outcome }).inc_by(0);
        }
        registry.register(
            "grants",
            "Fleet grant requests answered, by outcome (granted, pool_empty)",
            grants.clone(),
        );
        let granted_nanos = Counter::<u64, AtomicU64>::default();
        registry.register(
            "granted_nanocredits",
            "Credit granted to agents from fleet pools, in nano-credits",
            granted_nanos.clone(),
        );
        let reconcile_differences = Family::<KindLabels, Gauge>::default();
        for kind in crate::reconcile::kind::ALL {
            reconcile_differences
                .get_or_create(&KindLabels { kind })
                .set(0);
        }
        registry.register(
            "reconcile_differences",
            "Differences by kind found by the last reconcile this replica ran",
            reconcile_differences.clone(),
        );
        let reconcile_last_run = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "reconcile_last_run_timestamp_seconds",
            "When the last reconcile this replica ran finished (unix time; 0: none yet)",
            reconcile_last_run.clone(),
        );
        let reconcile_runs = Family::<OutcomeLabels, Counter>::default();
        for outcome in ["ok", "differences", "failed"] {
            reconcile_runs
                .get_or_create(&OutcomeLabels { outcome })
                .inc_by(0);
        }
        registry.register(
            "reconcile_runs",
            "Reconciles this replica ran, by outcome (ok, differences, failed)",
            reconcile_runs.clone(),
        );
        let db = DbGauges::default();
        db.register(&mut registry);
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
            grants,
            granted_nanos,
            reconcile_differences,
            reconcile_last_run,
            reconcile_runs,
            db,
            scrape: tokio::sync::Mutex::new(()),
        }
    }

    /// Records a reconcile's outcome (the report, or `None` when it failed).
    pub fn record_reconcile(&self, report: Option<&crate::reconcile::Report>) {
        let Some(report) = report else {
            self.reconcile_runs
                .get_or_create(&OutcomeLabels { outcome: "failed" })
                .inc();
            return;
        };
        for kind in crate::reconcile::kind::ALL {
            let n = report
                .differences
                .iter()
                .filter(|d| d.kind == *kind)
                .count();
            self.reconcile_differences
                .get_or_create(&KindLabels { kind })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let outcome = if report.ok { "ok" } else { "differences" };
        self.reconcile_runs
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        let now = time::OffsetDateTime::now_utc();
        self.reconcile_last_run
            .set(now.unix_timestamp_nanos() as f64 / 1e9);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl DbGauges {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "database_up",
            "1 when the last scrape could read the database (0: the gauges below are stale)",
            self.database_up.clone(),
        );
        registry.register("agents", "Agents by status", self.agents.clone());
        registry.register(
            "agent_lag_entries",
            "Entries an agent reported that are not stored centrally yet",
            self.agent_lag.clone(),
        );
        registry.register(
            "agent_inbox_backlog_events",
            "Inbox events an agent has not acknowledged yet",
            self.agent_inbox_backlog.clone(),
        );
        registry.register(
            "agent_last_seen_age_seconds",
            "Seconds since an agent last pushed or pulled",
            self.agent_last_seen_age.clone(),
        );
        registry.register(
            "agent_quarantined",
            "1 while the agent is quarantined (its pushes are refused until released), else 0",
            self.agent_quarantined.clone(),
        );
        registry.register(
            "fleet_users",
            "Fleet users (served from a central pool)",
            self.fleet_users.clone(),
        );
        registry.register(
            "fleet_pools_empty",
            "Fleet users whose pool is empty",
            self.fleet_pools_empty.clone(),
        );
        registry.register(
            "fleet_pool_nanocredits",
            "Credit in every fleet pool, in nano-credits",
            self.fleet_pool_nanos.clone(),
        );
        registry.register(
            "fleet_debt_nanocredits",
            "Fleet users' debt (overdrafts and money returned beyond their pool), in nano-credits",
            self.fleet_debt_nanos.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_list_every_reconcile_kind() {
        let source = include_str!("reconcile/mod.rs");
        let start = source.find("pub mod kind {").unwrap_or(0);
        let end = source.find("pub const ALL").unwrap_or(0);
        let declared = source[start..end].matches("pub const ").count();
        assert_eq!(declared, crate::reconcile::kind::ALL.len());
        let text = Metrics::new().render();
        for kind in crate::reconcile::kind::ALL {
            assert!(
                text.contains(&format!(
                    "tollgate_server_reconcile_differences{{kind=\"{kind}\"}} 0"
                )),
                "{kind} missing from\n{text}"
            );
        }
    }
}
