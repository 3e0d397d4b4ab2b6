//! `provider_health`: each provider's status as the gateway last observed it, upserted in one
//! transaction by the gateway's background task (never on the request path), and a small
//! database ping for readiness.

use rusqlite::{TransactionBehavior, params};

use super::{Ledger, LedgerError, clock};

/// One provider's observed health.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProviderHealth {
    pub provider: String,
    /// healthy, degraded or down (the schema's CHECK).
    pub status: &'static str,
    pub avg_latency_ms: Option<u64>,
    pub p95_latency_ms: Option<u64>,
    pub success_rate_permille: Option<u64>,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
}

impl Ledger {
    /// Writes `rows` (one per provider) in one transaction.
    pub fn record_provider_health(&mut self, rows: &[ProviderHealth]) -> Result<(), LedgerError> {
        if rows.is_empty() {
            return Ok(());
        }
        let now = clock::to_text(self.clock.now());
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO provider_health (provider, status, avg_latency_ms, p95_latency_ms, \
                 success_rate_permille, consecutive_failures, last_error, last_checked, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8) \
                 ON CONFLICT (provider) DO UPDATE SET status = excluded.status, \
                 avg_latency_ms = excluded.avg_latency_ms, p95_latency_ms = excluded.p95_latency_ms, \
                 success_rate_permille = excluded.success_rate_permille, \
                 consecutive_failures = excluded.consecutive_failures, \
                 last_error = COALESCE(excluded.last_error, provider_health.last_error), \
                 last_checked = excluded.last_checked, updated_at = excluded.updated_at",
            )?;
            for row in rows {
                stmt.execute(params![
                    row.provider,
                    row.status,
                    row.avg_latency_ms.and_then(|v| i64::try_from(v).ok()),
                    row.p95_latency_ms.and_then(|v| i64::try_from(v).ok()),
                    row.success_rate_permille
                        .and_then(|v| i64::try_from(v).ok()),
                    i64::from(row.consecutive_failures),
                    row.last_error,
                    now,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every provider's recorded health, by name.
    pub fn provider_health(&self) -> Result<Vec<ProviderHealth>, LedgerError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT provider, status, avg_latency_ms, p95_latency_ms, success_rate_permille, \
             consecutive_failures, last_error FROM provider_health ORDER BY provider",
        )?;
        let rows = stmt.query_map([], |r| {
            let status: String = r.get(1)?;
            Ok(ProviderHealth {
                provider: r.get(0)?,
                status: match status.as_str() {
                    "down" => "down",
                    "degraded" => "degraded",
                    _ => "healthy",
                },
                avg_latency_ms: r
                    .get::<_, Option<i64>>(2)?
                    .and_then(|v| u64::try_from(v).ok()),
                p95_latency_ms: r
                    .get::<_, Option<i64>>(3)?
                    .and_then(|v| u64::try_from(v).ok()),
                success_rate_permille: r
                    .get::<_, Option<i64>>(4)?
                    .and_then(|v| u64::try_from(v).ok()),
                consecutive_failures: u32::try_from(r.get::<_, i64>(5)?).unwrap_or(u32::MAX),
                last_error: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A trivial query: the database answers.
    pub fn ping(&self) -> Result<(), LedgerError> {
        self.conn
            .prepare_cached("SELECT 1")?
            .query_row([], |_| Ok(()))?;
        Ok(())
    }
}
