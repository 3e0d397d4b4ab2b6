//! Threshold alerts for fleet users, from the server: a fleet user spends on many agents, so no
//! agent sees their whole month — ingest does. Two halves:
//!
//! - [`raise`], called by ingest in its transaction after the usage counters moved: for each
//!   fleet user the batch charged, one `user_alerts` row per allowance threshold their month's
//!   usage has reached (`credits_used_this_month` ≥ threshold % of `monthly_allowance`) and, if
//!   a low-balance threshold is set, one when what they have left (pool + what agents hold −
//!   debt) is below it. The unique key (user, kind, threshold, billing period) makes each alert
//!   once per period: a later batch finds the row and inserts nothing. Two small statements; no
//!   network in the transaction.
//! - [`run`], a task on every replica: it takes due rows with a lease (`FOR UPDATE SKIP LOCKED`,
//!   then `next_attempt_at` moved past the attempt's timeout, committed before any HTTP) and
//!   POSTs each to `TOLLGATE_SERVER_ALERT_WEBHOOK_URL`; a 2xx marks it sent, a failure schedules
//!   the next attempt with exponential backoff, and after `attempts_max` failures the row is
//!   dropped (logged, counted in `tollgate_server_alerts_total{outcome="dropped"}`). A replica
//!   that dies mid-attempt leaves a lease that expires: another replica retries (at least once
//!   per attempt, at most `attempts_max` attempts). So a slow or dead webhook never slows ingest.
//!
//! Bounds: at most [`BATCH_MAX`] rows per poll; sent and dropped rows are deleted
//! [`RETENTION_DAYS`] after their period ends; at most (thresholds + 1) rows per fleet user and
//! month. The webhook's URL may hold a secret: it is never logged.

use std::time::{Duration, Instant};

use deadpool_postgres::{Pool, Transaction};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::config::AlertsConfig;
use crate::metrics::{Metrics, OutcomeLabels};

/// Rows taken per poll.
pub const BATCH_MAX: i64 = 32;
/// How long after its period ends a sent or dropped alert is kept.
pub const RETENTION_DAYS: i32 = 400;
/// Longest wait for one webhook attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a taken row stays invisible to other replicas: past the attempt's timeout.
const LEASE: Duration = Duration::from_secs(20);
/// How often old rows are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3_600);

const RAISE_ALLOWANCE: &str = "INSERT INTO user_alerts \
     (user_id, kind, threshold, period_start, period_end, value) \
     SELECT u.user_id, 'allowance_used', t.pct, u.billing_cycle_start, u.billing_cycle_end, \
            round(u.credits_used_this_month * 100 / u.monthly_allowance, 2) \
     FROM user_credits u CROSS JOIN unnest($2::numeric[]) AS t(pct) \
     WHERE u.user_id = ANY($1) AND u.fleet AND u.monthly_allowance > 0 \
       AND u.credits_used_this_month * 100 >= u.monthly_allowance * t.pct \
     ON CONFLICT (user_id, kind, threshold, period_start) DO NOTHING";
const RAISE_LOW_BALANCE: &str = "INSERT INTO user_alerts \
     (user_id, kind, threshold, period_start, period_end, value) \
     SELECT u.user_id, 'low_balance', $2, u.billing_cycle_start, u.billing_cycle_end, \
            u.pool + u.balance - u.debt \
     FROM user_credits u \
     WHERE u.user_id = ANY($1) AND u.fleet AND u.pool + u.balance - u.debt < $2 \
     ON CONFLICT (user_id, kind, threshold, period_start) DO NOTHING";
const TAKE_DUE: &str = "WITH due AS (SELECT alert_id FROM user_alerts \
         WHERE sent_at IS NULL AND dropped_at IS NULL AND next_attempt_at <= now() \
         ORDER BY alert_id LIMIT $1 FOR UPDATE SKIP LOCKED) \
     UPDATE user_alerts a SET attempts = a.attempts + 1, \
         next_attempt_at = now() + make_interval(secs => $2) \
     FROM due WHERE a.alert_id = due.alert_id \
     RETURNING a.alert_id, a.user_id, a.kind, a.threshold, a.value, a.attempts, \
         to_char(a.period_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS period_start, \
         to_char(a.period_end AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS period_end";
const MARK_SENT: &str = "UPDATE user_alerts SET sent_at = now() WHERE alert_id = $1";
const MARK_DROPPED: &str = "UPDATE user_alerts SET dropped_at = now() WHERE alert_id = $1";
const RETRY_AFTER: &str = "UPDATE user_alerts SET next_attempt_at = now() + make_interval(secs => $2) WHERE alert_id = $1";
const PRUNE: &str = "DELETE FROM user_alerts WHERE period_end < now() - make_interval(days => $1) \
     AND (sent_at IS NOT NULL OR dropped_at IS NOT NULL)";

/// Inserts the alerts `users` (those a batch charged) have reached; see the module's doc.
/// Users that are not fleet users are skipped by the statements themselves.
pub(crate) async fn raise(
    tx: &Transaction<'_>,
    config: &AlertsConfig,
    users: &[&str],
) -> Result<(), tokio_postgres::Error> {
    if users.is_empty() {
        return Ok(());
    }
    if !config.allowance_thresholds.is_empty() {
        let percents: Vec<Decimal> = config
            .allowance_thresholds
            .iter()
            .map(|p| Decimal::from(*p))
            .collect();
        let stmt = tx.prepare_cached(RAISE_ALLOWANCE).await?;
        tx.execute(&stmt, &[&users, &percents]).await?;
    }
    if let Some(threshold) = config.low_balance_threshold {
        let stmt = tx.prepare_cached(RAISE_LOW_BALANCE).await?;
        tx.execute(&stmt, &[&users, &threshold.to_decimal()])
            .await?;
    }
    Ok(())
}

/// One row taken for an attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Due {
    pub alert_id: i64,
    pub user_id: String,
    pub kind: String,
    pub threshold: Decimal,
    pub value: Decimal,
    pub attempts: i32,
    pub period_start: String,
    pub period_end: String,
}

impl Due {
    /// The webhook's body: the agent's alert shape (`kind`, `user`, `threshold`, `value`,
    /// `period`), with `source: "server"` and no request id.
    pub fn body(&self) -> Value {
        let text = |d: Decimal| d.normalize().to_string();
        let mut body = json!({
            "event": self.kind,
            "kind": self.kind,
            "source": "server",
            "user": self.user_id,
            "user_id": self.user_id,
            "threshold": text(self.threshold),
            "value": text(self.value),
            "period": {"start": self.period_start, "end": self.period_end},
        });
        if self.kind == "low_balance" {
            body["balance"] = json!(text(self.value));
        }
        body
    }
}

/// Sends due alerts until the process ends: poll, take, attempt, record.
pub async fn run(
    pool: Pool,
    config: AlertsConfig,
    http: reqwest::Client,
    metrics: std::sync::Arc<Metrics>,
) {
    let mut pruned = Instant::now();
    loop {
        match poll_once(&pool, &config, &http, &metrics).await {
            // A full batch: there may be more waiting.
            Ok(n) if n as i64 >= BATCH_MAX => continue,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "alert task: the database failed"),
        }
        if pruned.elapsed() >= PRUNE_EVERY {
            pruned = Instant::now();
            if let Err(e) = prune(&pool).await {
                tracing::warn!(error = %e, "alert task: could not delete old alerts");
            }
        }
        tokio::time::sleep(config.poll_interval).await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AlertTaskError {
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
}

/// Takes the due rows (committed before any HTTP) and attempts each once; how many it took.
pub async fn poll_once(
    pool: &Pool,
    config: &AlertsConfig,
    http: &reqwest::Client,
    metrics: &Metrics,
) -> Result<usize, AlertTaskError> {
    let mut taken: Vec<Due> = {
        let conn = pool.get().await?;
        let stmt = conn.prepare_cached(TAKE_DUE).await?;
        conn.query(&stmt, &[&BATCH_MAX, &LEASE.as_secs_f64()])
            .await?
            .iter()
            .map(|r| Due {
                alert_id: r.get("alert_id"),
                user_id: r.get("user_id"),
                kind: r.get("kind"),
                threshold: r.get("threshold"),
                value: r.get("value"),
                attempts: r.get("attempts"),
                period_start: r.get("period_start"),
                period_end: r.get("period_end"),
            })
            .collect()
    };
    taken.sort_by_key(|d| d.alert_id);
    for due in &taken {
        let delivered = attempt(http, &config.webhook_url, due).await;
        let conn = pool.get().await?;
        let outcome = if delivered {
            conn.execute(MARK_SENT, &[&due.alert_id]).await?;
            "sent"
        } else if due.attempts >= i32::try_from(config.attempts_max).unwrap_or(i32::MAX) {
            conn.execute(MARK_DROPPED, &[&due.alert_id]).await?;
            tracing::error!(user = %due.user_id, kind = %due.kind, attempts = due.attempts, "alert dropped after every attempt failed");
            "dropped"
        } else {
            let exponent = u32::try_from(due.attempts - 1).unwrap_or(0).min(20);
            let wait = config.backoff_initial.saturating_mul(1 << exponent);
            conn.execute(RETRY_AFTER, &[&due.alert_id, &wait.as_secs_f64()])
                .await?;
            "retried"
        };
        metrics
            .alerts
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
    Ok(taken.len())
}

/// One POST; true on a 2xx.
async fn attempt(http: &reqwest::Client, url: &str, due: &Due) -> bool {
    match http
        .post(url)
        .timeout(ATTEMPT_TIMEOUT)
        .json(&due.body())
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => true,
        Ok(r) => {
            tracing::warn!(attempt = due.attempts, kind = %due.kind, status = %r.status(), "alert webhook refused");
            false
        }
        Err(e) => {
            tracing::warn!(attempt = due.attempts, kind = %due.kind, error = %e.without_url(), "alert webhook failed");
            false
        }
    }
}

async fn prune(pool: &Pool) -> Result<u64, AlertTaskError> {
    let conn = pool.get().await?;
    Ok(conn.execute(PRUNE, &[&RETENTION_DAYS]).await?)
}
