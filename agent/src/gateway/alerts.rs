//! Threshold alerts to the webhook: a user's use of their monthly allowance reaching each
//! configured percentage (`allowance_used`, default 50, 80 and 100 %), and their balance falling
//! below the low-balance threshold (`low_balance`) — each at most once per user, threshold and
//! billing period. One JSON POST per alert, sent by a background task (never on the request
//! path) and retried with exponential backoff.
//!
//! How "once" is kept: [`crossed`] reads a charge's own receipt (the balance and the cycle's
//! usage before and after it) and names the thresholds that charge crossed, so most charges
//! raise nothing and cost nothing here. Before sending, the task claims the alert in the ledger
//! (`alerts_sent`, [`crate::ledger::Ledger::claim_alert`], through the gateway's writer thread)
//! and sends only what it newly claimed: a second crossing in the same period (the allowance
//! lowered and raised, a refund, the balance topped up and spent again), a restart, or a
//! replayed settle finds the claim and sends nothing. Claimed before delivery: at most once —
//! an alert whose every attempt fails is dropped, not sent again.
//!
//! Fleet users are skipped: they spend on many agents, so their thresholds are the server's
//! (`tollgate-server`'s alerts, from ingest's counters). The queue is bounded
//! ([`super::config::AlertsConfig::queue_max`]); an alert that finds it full, or that fails every
//! attempt, is dropped, logged and counted (`tollgate_alerts_dropped_total`). Alerts waiting in
//! memory are lost if the process dies. The webhook's URL may hold a secret: it is never logged.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tollgate_schema::money::Credits;

use super::config::AlertsConfig;
use super::metrics::Metrics;
use super::writer::LedgerWriter;
use crate::ledger::QuotaState;
use crate::ledger::alerts::AlertClaim;
use crate::ledger::rules::quota_usage_percent;

/// Longest wait for one webhook attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// What an alert is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Measure {
    /// The balance fell below `threshold`.
    LowBalance {
        balance: Credits,
        threshold: Credits,
    },
    /// `used` reached `percent` % of `allowance`.
    AllowanceUsed {
        percent: u32,
        used: Credits,
        allowance: Credits,
    },
}

/// One alert, for one user in one billing period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub user_id: String,
    /// The request whose charge crossed the threshold.
    pub request_id: String,
    /// The user's billing cycle, `[period_start, period_end)`, as the ledger stores it.
    pub period_start: String,
    pub period_end: String,
    pub measure: Measure,
}

impl Alert {
    fn kind(&self) -> &'static str {
        match self.measure {
            Measure::LowBalance { .. } => "low_balance",
            Measure::AllowanceUsed { .. } => "allowance_used",
        }
    }

    /// The webhook's body. `event` and `user_id` are kept from the first (low-balance only)
    /// version of these alerts, beside `kind` and `user`.
    pub fn body(&self) -> Value {
        let kind = self.kind();
        let mut body = json!({
            "event": kind,
            "kind": kind,
            "source": "agent",
            "user": self.user_id,
            "user_id": self.user_id,
            "period": {"start": self.period_start, "end": self.period_end},
            "request_id": self.request_id,
        });
        match &self.measure {
            Measure::LowBalance { balance, threshold } => {
                body["threshold"] = json!(threshold.to_string());
                body["value"] = json!(balance.to_string());
                body["balance"] = json!(balance.to_string());
            }
            Measure::AllowanceUsed {
                percent,
                used,
                allowance,
            } => {
                body["threshold"] = json!(percent.to_string());
                body["value"] = json!(
                    quota_usage_percent(*used, *allowance)
                        .normalize()
                        .to_string()
                );
                body["used"] = json!(used.to_string());
                body["allowance"] = json!(allowance.to_string());
            }
        }
        body
    }

    fn claim(&self) -> AlertClaim<'_> {
        let (threshold, value) = match &self.measure {
            Measure::LowBalance { balance, threshold } => (threshold.nanos(), balance.nanos()),
            Measure::AllowanceUsed {
                percent,
                used,
                allowance,
            } => (
                i64::from(*percent),
                hundredths_of_percent(*used, *allowance),
            ),
        };
        AlertClaim {
            user_id: &self.user_id,
            kind: self.kind(),
            threshold,
            period_start: &self.period_start,
            period_end: &self.period_end,
            value,
        }
    }
}

/// `used / allowance` in hundredths of a percent, saturating (0 without an allowance).
fn hundredths_of_percent(used: Credits, allowance: Credits) -> i64 {
    if !allowance.is_positive() {
        return 0;
    }
    let v = i128::from(used.nanos()) * 10_000 / i128::from(allowance.nanos());
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Whether `used` is at least `percent` % of `allowance` (exact, in nano-credits).
fn reached(used: Credits, allowance: Credits, percent: u32) -> bool {
    i128::from(used.nanos()) * 100 >= i128::from(allowance.nanos()) * i128::from(percent)
}

/// The alerts a charge of `charged` raised: the thresholds it crossed, judged on its receipt
/// (the balance after it, the cycle's usage after it). Pure; a fleet user raises none here.
pub fn crossed(
    config: &AlertsConfig,
    user_id: &str,
    request_id: &str,
    charged: Credits,
    balance_after: Credits,
    quota: &QuotaState,
) -> Vec<Alert> {
    if quota.fleet || !charged.is_positive() {
        return Vec::new();
    }
    let alert = |measure| Alert {
        user_id: user_id.to_owned(),
        request_id: request_id.to_owned(),
        period_start: quota.cycle_start.clone(),
        period_end: quota.cycle_end.clone(),
        measure,
    };
    let mut alerts = Vec::new();
    let allowance = quota.monthly_allowance;
    if allowance.is_positive() {
        let after = quota.used_this_month;
        let before = after.checked_sub(charged).unwrap_or(Credits::ZERO);
        let before = before.max(Credits::ZERO);
        for &percent in &config.allowance_thresholds {
            if reached(after, allowance, percent) && !reached(before, allowance, percent) {
                alerts.push(alert(Measure::AllowanceUsed {
                    percent,
                    used: after,
                    allowance,
                }));
            }
        }
    }
    if let Some(threshold) = config.low_balance_threshold {
        let before = balance_after.checked_add(charged).unwrap_or(Credits::MAX);
        if before >= threshold && balance_after < threshold {
            alerts.push(alert(Measure::LowBalance {
                balance: balance_after,
                threshold,
            }));
        }
    }
    alerts
}

/// Queues alerts for the sender task.
#[derive(Debug, Clone)]
pub struct AlertSender {
    queue: mpsc::Sender<Alert>,
    metrics: Arc<Metrics>,
}

impl AlertSender {
    /// Queues `alert` without waiting; a full queue drops it (logged, counted).
    pub fn send(&self, alert: Alert) {
        if let Err(e) = self.queue.try_send(alert) {
            tracing::warn!(error = %e, "alert dropped: the queue is full");
            self.metrics.alerts_dropped.inc();
        }
    }
}

/// Starts the sender task if a webhook is configured. It claims each alert through `writer`
/// (between the writer's batches) and delivers the ones it newly claimed, in order.
pub fn start(
    config: &AlertsConfig,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    writer: LedgerWriter,
) -> Option<AlertSender> {
    let url = config.webhook_url.clone()?;
    let (queue, mut rx) = mpsc::channel::<Alert>(config.queue_max);
    let attempts = config.attempts_max;
    let backoff = Duration::from_millis(config.backoff_initial_ms);
    let task_metrics = metrics.clone();
    tokio::spawn(async move {
        while let Some(alert) = rx.recv().await {
            if !claim(&writer, &alert).await {
                continue;
            }
            if !deliver(&http, &url, &alert, attempts, backoff).await {
                task_metrics.alerts_dropped.inc();
            }
        }
    });
    Some(AlertSender { queue, metrics })
}

/// Claims `alert` in the ledger; true when it is new (to be sent). A ledger that cannot record
/// the claim does not stop the alert: it is sent (logged), erring towards telling the user.
async fn claim(writer: &LedgerWriter, alert: &Alert) -> bool {
    let owned = alert.clone();
    match writer.read(move |l| l.claim_alert(&owned.claim())).await {
        Ok(Ok(new)) => {
            if !new {
                tracing::debug!(user = %alert.user_id, kind = alert.kind(), "alert already sent this period");
            }
            new
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, user = %alert.user_id, "could not record an alert as sent; sending it");
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, user = %alert.user_id, "alert not sent: the ledger has stopped");
            false
        }
    }
}

/// Tries up to `attempts` times, doubling the wait from `backoff`; true once a 2xx came back.
async fn deliver(
    http: &reqwest::Client,
    url: &str,
    alert: &Alert,
    attempts: u32,
    backoff: Duration,
) -> bool {
    let body = alert.body();
    let kind = alert.kind();
    let mut wait = backoff;
    for attempt in 1..=attempts {
        match http
            .post(url)
            .timeout(ATTEMPT_TIMEOUT)
            .json(&body)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) => tracing::warn!(attempt, kind, status = %r.status(), "alert webhook refused"),
            Err(e) => {
                tracing::warn!(attempt, kind, error = %super::error_chain(&e.without_url()), "alert webhook failed")
            }
        }
        if attempt < attempts {
            tokio::time::sleep(wait).await;
            wait = wait.saturating_mul(2);
        }
    }
    tracing::error!(user = %alert.user_id, kind, "alert dropped after {attempts} attempts");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Credits {
        s.parse().unwrap()
    }

    fn quota(used: &str, allowance: &str) -> QuotaState {
        QuotaState {
            used_this_month: c(used),
            monthly_allowance: c(allowance),
            cycle_start: "2030-01-01T00:00:00.000000Z".into(),
            cycle_end: "2030-02-01T00:00:00.000000Z".into(),
            fleet: false,
        }
    }

    fn percents(alerts: &[Alert]) -> Vec<u32> {
        alerts
            .iter()
            .filter_map(|a| match a.measure {
                Measure::AllowanceUsed { percent, .. } => Some(percent),
                Measure::LowBalance { .. } => None,
            })
            .collect()
    }

    #[test]
    fn an_allowance_alert_is_raised_by_the_charge_that_reaches_each_threshold() {
        let config = AlertsConfig::default();
        let at = |used: &str, charged: &str| {
            percents(&crossed(
                &config,
                "u",
                "r",
                c(charged),
                c("100"),
                &quota(used, "10"),
            ))
        };
        assert_eq!(at("4.9", "1"), Vec::<u32>::new());
        assert_eq!(at("5", "0.1"), [50], "exactly 50 % reaches 50");
        assert_eq!(at("5.1", "0.1"), Vec::<u32>::new(), "already past 50");
        assert_eq!(at("8.5", "4"), [50, 80], "one charge, two thresholds");
        assert_eq!(at("12", "3"), [100]);
        assert_eq!(at("0.5", "0.5"), Vec::<u32>::new());
        // A renewal inside the charge: usage restarted from zero, this charge is all of it.
        assert_eq!(at("6", "6"), [50]);
    }

    #[test]
    fn no_allowance_a_fleet_user_or_a_free_request_raises_nothing() {
        let config = AlertsConfig {
            low_balance_threshold: Some(c("5")),
            ..AlertsConfig::default()
        };
        assert!(crossed(&config, "u", "r", c("1"), c("50"), &quota("9", "0")).is_empty());
        let mut fleet = quota("9", "10");
        fleet.fleet = true;
        assert!(crossed(&config, "u", "r", c("9"), c("1"), &fleet).is_empty());
        assert!(crossed(&config, "u", "r", Credits::ZERO, c("1"), &quota("9", "10")).is_empty());
    }

    #[test]
    fn a_low_balance_alert_is_raised_by_the_charge_that_crosses_below() {
        let config = AlertsConfig {
            low_balance_threshold: Some(c("5")),
            allowance_thresholds: Vec::new(),
            ..AlertsConfig::default()
        };
        let alerts = crossed(&config, "u", "r", c("1"), c("4.5"), &quota("1", "0"));
        assert_eq!(alerts.len(), 1);
        let body = alerts[0].body();
        assert_eq!(body["kind"], "low_balance");
        assert_eq!(body["threshold"], "5");
        assert_eq!(body["value"], "4.5");
        assert_eq!(body["period"]["start"], "2030-01-01T00:00:00.000000Z");
        // Already below before this charge: nothing.
        assert!(crossed(&config, "u", "r", c("1"), c("3"), &quota("1", "0")).is_empty());
    }

    #[test]
    fn the_allowance_body_names_user_kind_threshold_value_and_period() {
        let config = AlertsConfig::default();
        let alerts = crossed(
            &config,
            "alice",
            "req-1",
            c("1"),
            c("3"),
            &quota("8.125", "10"),
        );
        let body = alerts[0].body();
        assert_eq!(body["kind"], "allowance_used");
        assert_eq!(body["user"], "alice");
        assert_eq!(body["threshold"], "80");
        assert_eq!(body["value"], "81.25");
        assert_eq!(body["used"], "8.125");
        assert_eq!(body["allowance"], "10");
        assert_eq!(body["period"]["end"], "2030-02-01T00:00:00.000000Z");
        assert_eq!(body["request_id"], "req-1");
        assert_eq!(alerts[0].claim().value, 8_125);
    }
}
