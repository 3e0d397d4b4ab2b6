//! The sync task's state as Prometheus metrics, on the gateway's `/metrics` (the admin
//! listener) when the agent is enrolled; a standalone agent exports none of them.
//!
//! What it exports (prefix `tollgate_`): the journal head and acknowledged head, the entries not
//! yet acknowledged and the age of the oldest of them, the inbox cursor and how far behind the
//! server's inbox head it is, sync failures by loop and kind, seconds since each loop last
//! succeeded, whether the server refuses this agent's entries (quarantine), and fleet users'
//! grants held here with what the escrow loop asked for, released and drew.
//!
//! Guarantees:
//! - The request path never touches these: the sync task writes them (atomics only), and a
//!   scrape reads them. Gauges read from the ledger are refreshed by the sync task every
//!   [`REFRESH_INTERVAL`] on its own connection ([`SyncGauges`]), so a scrape costs no SQL.
//! - Ages are computed at scrape time from monotonic instants, so they keep growing while the
//!   task is stuck (a push waiting on a dead server) and ignore wall-clock jumps:
//!   `tollgate_sync_oldest_unacked_age_seconds` is the oldest unacknowledged entry's age (by the
//!   ledger's clock when it was last read, plus the monotonic time since), 0 when every entry is
//!   acknowledged; `tollgate_sync_seconds_since_success{loop}` counts from the loop's last
//!   success, or from when serve started if it has not succeeded yet.
//! - Label values are fixed sets: `loop` is push, pull or escrow; `kind` is unreachable (no
//!   answer, or a 5xx), refused (the server answered with a refusal) or other; `outcome` is
//!   granted, pool_empty or failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use super::SyncError;

/// How often the sync task re-reads the gauges that come from the ledger.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// A loop of the sync task.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoopLabels {
    pub r#loop: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub r#loop: &'static str,
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

/// "No mark" in a [`SecondsSince`].
const UNSET: i64 = i64::MIN;

/// A gauge of the seconds since a moment, computed when scraped (monotonic). Unset, it reads 0.
/// Clones share the moment.
#[derive(Debug, Clone)]
pub struct SecondsSince {
    anchor: Instant,
    /// The moment, as milliseconds after `anchor` (negative: before it), or [`UNSET`].
    mark_ms: Arc<AtomicI64>,
}

impl Default for SecondsSince {
    fn default() -> Self {
        SecondsSince {
            anchor: Instant::now(),
            mark_ms: Arc::new(AtomicI64::new(UNSET)),
        }
    }
}

impl SecondsSince {
    fn now_ms(&self) -> i64 {
        i64::try_from(self.anchor.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// The moment is now.
    pub fn mark_now(&self) {
        self.mark_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// The moment was `ago` before now.
    pub fn mark_ago(&self, ago: Duration) {
        let ago = i64::try_from(ago.as_millis()).unwrap_or(i64::MAX / 2);
        self.mark_ms.store(
            self.now_ms().saturating_sub(ago).max(UNSET + 1),
            Ordering::Relaxed,
        );
    }

    /// No moment: reads 0.
    pub fn unset(&self) {
        self.mark_ms.store(UNSET, Ordering::Relaxed);
    }

    /// The seconds since the moment (0 when unset).
    pub fn seconds(&self) -> f64 {
        match self.mark_ms.load(Ordering::Relaxed) {
            UNSET => 0.0,
            mark => (self.now_ms().saturating_sub(mark)).max(0) as f64 / 1000.0,
        }
    }
}

impl TypedMetric for SecondsSince {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for SecondsSince {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.seconds())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// What the sync task reads from the ledger for its gauges, in one go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncGauges {
    pub head_seq: i64,
    pub acked_seq: i64,
    /// How long ago (by the ledger's clock) the oldest unacknowledged entry was written.
    pub oldest_unacked_age: Option<Duration>,
    pub inbox_cursor: i64,
    /// The server's inbox head as of the last pull.
    pub server_inbox_head: i64,
    /// Fleet users on this agent, and the credit their grants left here (nano-credits).
    pub fleet_users: i64,
    pub fleet_held_nanos: i64,
}

/// The sync task's metrics; registered into the gateway's registry by [`SyncMetrics::register`].
#[derive(Debug, Clone)]
pub struct SyncMetrics {
    pub head_seq: Gauge,
    pub acked_seq: Gauge,
    pub unacked_entries: Gauge,
    pub oldest_unacked_age: SecondsSince,
    pub inbox_cursor: Gauge,
    pub inbox_behind: Gauge,
    pub errors: Family<ErrorLabels, Counter>,
    pub since_success: Family<LoopLabels, SecondsSince>,
    pub push_blocked: Gauge,
    pub fleet_users: Gauge,
    pub fleet_held_nanos: Gauge,
    pub grant_requests: Family<OutcomeLabels, Counter>,
    pub granted_nanos: Counter,
    pub releases: Counter,
    pub overdrafts_drawn: Counter,
}

impl Default for SyncMetrics {
    fn default() -> Self {
        SyncMetrics::new()
    }
}

/// The loops whose successes are timed.
pub const LOOPS: [&str; 2] = ["push", "pull"];

impl SyncMetrics {
    /// Every series starts at 0; `since_success` counts from now for each loop.
    pub fn new() -> SyncMetrics {
        let metrics = SyncMetrics {
            head_seq: Gauge::default(),
            acked_seq: Gauge::default(),
            unacked_entries: Gauge::default(),
            oldest_unacked_age: SecondsSince::default(),
            inbox_cursor: Gauge::default(),
            inbox_behind: Gauge::default(),
            errors: Family::default(),
            since_success: Family::default(),
            push_blocked: Gauge::default(),
            fleet_users: Gauge::default(),
            fleet_held_nanos: Gauge::default(),
            grant_requests: Family::default(),
            granted_nanos: Counter::default(),
            releases: Counter::default(),
            overdrafts_drawn: Counter::default(),
        };
        for name in LOOPS {
            metrics.succeeded(name);
        }
        // Every series of a fixed label set exists from the start, at 0: `rate()` and
        // `increase()` then see the first failure, and alerts resolve.
        for r#loop in ["push", "pull", "escrow"] {
            for kind in ["unreachable", "refused", "other"] {
                metrics
                    .errors
                    .get_or_create(&ErrorLabels { r#loop, kind })
                    .inc_by(0);
            }
        }
        for outcome in ["granted", "pool_empty", "failed"] {
            metrics
                .grant_requests
                .get_or_create(&OutcomeLabels { outcome })
                .inc_by(0);
        }
        metrics
    }

    /// Adds every metric to `registry` (the gateway's, prefix `tollgate`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sync_head_seq",
            "The newest journal entry's seq on this agent",
            self.head_seq.clone(),
        );
        registry.register(
            "sync_acked_seq",
            "The journal seq the sync server has acknowledged (stored contiguously)",
            self.acked_seq.clone(),
        );
        registry.register(
            "sync_unacked_entries",
            "Journal entries the sync server has not acknowledged yet (head - acked)",
            self.unacked_entries.clone(),
        );
        registry.register(
            "sync_oldest_unacked_age_seconds",
            "Age of the oldest journal entry not yet acknowledged (0 when none)",
            self.oldest_unacked_age.clone(),
        );
        registry.register(
            "sync_inbox_cursor",
            "The last inbox event applied here",
            self.inbox_cursor.clone(),
        );
        registry.register(
            "sync_inbox_behind_events",
            "Inbox events the server held at the last pull that are not applied here yet",
            self.inbox_behind.clone(),
        );
        registry.register(
            "sync_errors",
            "Sync failures by loop (push, pull, escrow) and kind (unreachable, refused, other)",
            self.errors.clone(),
        );
        registry.register(
            "sync_seconds_since_success",
            "Seconds since the loop last succeeded (or since serve started)",
            self.since_success.clone(),
        );
        registry.register(
            "sync_push_blocked",
            "1 while the sync server refuses this agent's entries (conflict or quarantine)",
            self.push_blocked.clone(),
        );
        registry.register(
            "fleet_users",
            "Fleet users known to this agent",
            self.fleet_users.clone(),
        );
        registry.register(
            "fleet_credits_held_nanocredits",
            "Credit of fleet users' grants held by this agent, in nano-credits",
            self.fleet_held_nanos.clone(),
        );
        registry.register(
            "fleet_grant_requests",
            "Grant requests to the sync server by outcome (granted, pool_empty, failed)",
            self.grant_requests.clone(),
        );
        registry.register(
            "fleet_granted_nanocredits",
            "Credit granted to this agent from fleet pools, in nano-credits",
            self.granted_nanos.clone(),
        );
        registry.register(
            "fleet_releases",
            "Lapsed grants returned to their pools",
            self.releases.clone(),
        );
        registry.register(
            "fleet_overdrafts_drawn",
            "Overdraft lines drawn while the sync server could not be reached",
            self.overdrafts_drawn.clone(),
        );
    }

    /// Sets the gauges read from the ledger.
    pub fn refresh(&self, g: &SyncGauges) {
        self.head_seq.set(g.head_seq);
        self.acked_seq.set(g.acked_seq);
        self.unacked_entries.set((g.head_seq - g.acked_seq).max(0));
        match g.oldest_unacked_age {
            Some(age) if g.head_seq > g.acked_seq => self.oldest_unacked_age.mark_ago(age),
            _ => self.oldest_unacked_age.unset(),
        }
        self.inbox_cursor.set(g.inbox_cursor);
        self.inbox_behind
            .set((g.server_inbox_head - g.inbox_cursor).max(0));
        self.fleet_users.set(g.fleet_users);
        self.fleet_held_nanos.set(g.fleet_held_nanos);
    }

    /// A loop succeeded.
    pub fn succeeded(&self, name: &'static str) {
        self.since_success
            .get_or_create(&LoopLabels { r#loop: name })
            .mark_now();
    }

    /// A loop failed with `error`.
    pub fn failed(&self, name: &'static str, error: &SyncError) {
        let kind = match error {
            SyncError::Client(e) if e.unreachable() => "unreachable",
            SyncError::Client(e) if e.code().is_some() => "refused",
            _ => "other",
        };
        self.errors
            .get_or_create(&ErrorLabels { r#loop: name, kind })
            .inc();
    }

    /// A grant request's outcome; `granted` in nano-credits.
    pub fn grant_answered(&self, outcome: &'static str, granted_nanos: i64) {
        self.grant_requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.granted_nanos
            .inc_by(u64::try_from(granted_nanos).unwrap_or(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(m: &SyncMetrics) -> String {
        let mut registry = Registry::with_prefix("tollgate");
        m.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    #[test]
    fn metrics_refresh_sets_the_gauges_and_ages_count_at_scrape_time() {
        let m = SyncMetrics::new();
        m.refresh(&SyncGauges {
            head_seq: 12,
            acked_seq: 9,
            oldest_unacked_age: Some(Duration::from_secs(40)),
            inbox_cursor: 5,
            server_inbox_head: 7,
            fleet_users: 2,
            fleet_held_nanos: 1_500_000_000,
        });
        let text = render(&m);
        assert_eq!(value(&text, "tollgate_sync_unacked_entries"), 3.0);
        assert_eq!(value(&text, "tollgate_sync_inbox_behind_events"), 2.0);
        assert_eq!(value(&text, "tollgate_fleet_users"), 2.0);
        assert_eq!(
            value(&text, "tollgate_fleet_credits_held_nanocredits"),
            1.5e9
        );
        let age = value(&text, "tollgate_sync_oldest_unacked_age_seconds");
        assert!((40.0..41.0).contains(&age), "{age}");
        assert!(value(&text, "tollgate_sync_seconds_since_success{loop=\"push\"}") < 1.0);
        // Acknowledged: no age, however old the entry was.
        m.refresh(&SyncGauges {
            head_seq: 12,
            acked_seq: 12,
            oldest_unacked_age: Some(Duration::from_secs(40)),
            ..SyncGauges::default()
        });
        let text = render(&m);
        assert_eq!(value(&text, "tollgate_sync_unacked_entries"), 0.0);
        assert_eq!(
            value(&text, "tollgate_sync_oldest_unacked_age_seconds"),
            0.0
        );
    }

    #[test]
    fn metrics_seconds_since_grows_from_its_mark() {
        let s = SecondsSince::default();
        assert_eq!(s.seconds(), 0.0);
        s.mark_ago(Duration::from_secs(90));
        assert!((90.0..91.0).contains(&s.seconds()), "{}", s.seconds());
        s.mark_now();
        assert!(s.seconds() < 1.0);
        s.unset();
        assert_eq!(s.seconds(), 0.0);
    }

    #[test]
    fn metrics_errors_are_counted_by_loop_and_kind() {
        let m = SyncMetrics::new();
        let unreachable = SyncError::Client(super::super::ClientError::Transport("down".into()));
        m.failed("push", &unreachable);
        m.failed("push", &unreachable);
        m.failed("pull", &SyncError::Task("x".into()));
        let text = render(&m);
        assert_eq!(
            value(
                &text,
                "tollgate_sync_errors_total{loop=\"push\",kind=\"unreachable\"}"
            ),
            2.0
        );
        assert_eq!(
            value(
                &text,
                "tollgate_sync_errors_total{loop=\"pull\",kind=\"other\"}"
            ),
            1.0
        );
    }
}
