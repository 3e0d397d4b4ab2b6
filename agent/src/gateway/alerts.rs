//! Low-balance alerts: when a charge takes a user's balance below the configured threshold, one
//! JSON POST to the webhook, sent by a background task (never on the request path) and retried
//! with exponential backoff.
//!
//! "Once per crossing" comes from the journal: an alert is raised by the one charge whose
//! balance went from at-or-above the threshold to below it, so a user hovering below it is not
//! alerted again until credit lifts them above and a charge takes them below once more. The
//! queue is bounded ([`super::config::AlertsConfig::queue_max`]); an alert that finds it full, or
//! that fails every attempt, is dropped, logged and counted (`tollgate_alerts_dropped_total`).
//! Alerts waiting in memory are lost if the process dies.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tollgate_schema::money::Credits;

use super::config::AlertsConfig;
use super::metrics::Metrics;

/// Longest wait for one webhook attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub user_id: String,
    pub balance: Credits,
    pub threshold: Credits,
    pub request_id: String,
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
            tracing::warn!(error = %e, "low-balance alert dropped: the queue is full");
            self.metrics.alerts_dropped.inc();
        }
    }
}

/// Starts the sender task if a webhook is configured.
pub fn start(
    config: &AlertsConfig,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
) -> Option<AlertSender> {
    let url = config.webhook_url.clone()?;
    let (queue, mut rx) = mpsc::channel::<Alert>(config.queue_max);
    let attempts = config.attempts_max;
    let backoff = Duration::from_millis(config.backoff_initial_ms);
    let task_metrics = metrics.clone();
    tokio::spawn(async move {
        while let Some(alert) = rx.recv().await {
            if !deliver(&http, &url, &alert, attempts, backoff).await {
                task_metrics.alerts_dropped.inc();
            }
        }
    });
    Some(AlertSender { queue, metrics })
}

/// Tries up to `attempts` times, doubling the wait from `backoff`; true once a 2xx came back.
async fn deliver(
    http: &reqwest::Client,
    url: &str,
    alert: &Alert,
    attempts: u32,
    backoff: Duration,
) -> bool {
    let body = json!({
        "event": "low_balance",
        "user_id": alert.user_id,
        "balance": alert.balance.to_string(),
        "threshold": alert.threshold.to_string(),
        "request_id": alert.request_id,
    });
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
            Ok(r) => tracing::warn!(attempt, status = %r.status(), "low-balance webhook refused"),
            Err(e) => {
                tracing::warn!(attempt, error = %super::error_chain(&e.without_url()), "low-balance webhook failed")
            }
        }
        if attempt < attempts {
            tokio::time::sleep(wait).await;
            wait = wait.saturating_mul(2);
        }
    }
    tracing::error!(user = %alert.user_id, "low-balance alert dropped after {attempts} attempts");
    false
}
