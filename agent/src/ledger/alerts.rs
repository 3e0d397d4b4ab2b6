//! The threshold alerts this agent has raised (`alerts_sent`, V9): what makes an alert "once per
//! user, kind, threshold and billing period".
//!
//! Guarantees: [`Ledger::claim_alert`] inserts the claim or finds it already there, in one
//! statement, so of any number of attempts to raise the same alert (two crossings in one period,
//! a restart, a replayed settle) exactly one is told it is new. Rows of periods that ended more
//! than [`ALERTS_RETENTION_DAYS`] ago are deleted as claims are made, so the table holds at most
//! about a year of each user's alerts (a few rows per user and month).

use rusqlite::params;

use super::clock::to_text;
use super::{Ledger, LedgerError};

/// How long after its period ends an alert's claim is kept.
pub const ALERTS_RETENTION_DAYS: i64 = 400;

const CLAIM: &str = "INSERT OR IGNORE INTO alerts_sent (user_id, kind, threshold, period_start, \
     period_end, value, claimed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
const FORGET_OLD: &str = "DELETE FROM alerts_sent WHERE period_end < ?1";

/// One alert to claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertClaim<'a> {
    pub user_id: &'a str,
    /// `allowance_used` or `low_balance`.
    pub kind: &'a str,
    /// A percentage (allowance) or nano-credits (low balance).
    pub threshold: i64,
    /// The billing cycle, as the ledger stores it.
    pub period_start: &'a str,
    pub period_end: &'a str,
    /// Hundredths of a percent (allowance) or nano-credits (low balance).
    pub value: i64,
}

impl Ledger {
    /// Records `claim` unless the same user, kind, threshold and period was claimed before;
    /// true when this call recorded it (the alert is to be sent).
    pub fn claim_alert(&mut self, claim: &AlertClaim<'_>) -> Result<bool, LedgerError> {
        let now = self.clock().now();
        let horizon = to_text(now - time::Duration::days(ALERTS_RETENTION_DAYS));
        let conn = self.conn();
        conn.prepare_cached(FORGET_OLD)?.execute([horizon])?;
        let inserted = conn.prepare_cached(CLAIM)?.execute(params![
            claim.user_id,
            claim.kind,
            claim.threshold,
            claim.period_start,
            claim.period_end,
            claim.value,
            to_text(now),
        ])?;
        Ok(inserted == 1)
    }

    /// Alerts claimed for `user_id`, oldest period first: (kind, threshold, period start).
    pub fn alerts_claimed(&self, user_id: &str) -> Result<Vec<(String, i64, String)>, LedgerError> {
        let mut stmt = self.conn().prepare_cached(
            "SELECT kind, threshold, period_start FROM alerts_sent WHERE user_id = ?1 \
             ORDER BY period_start, kind, threshold",
        )?;
        let rows = stmt
            .query_map([user_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ledger::{OpenMode, SystemClock};

    #[test]
    fn an_alert_is_claimed_once_per_user_kind_threshold_and_period() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut ledger =
            Ledger::open(&path, OpenMode::CreateIfMissing, Arc::new(SystemClock)).unwrap();
        let claim = AlertClaim {
            user_id: "alice",
            kind: "allowance_used",
            threshold: 80,
            period_start: "2030-01-01T00:00:00.000000Z",
            period_end: "2030-02-01T00:00:00.000000Z",
            value: 8_100,
        };
        assert!(ledger.claim_alert(&claim).unwrap());
        assert!(!ledger.claim_alert(&claim).unwrap(), "claimed twice");
        // Another threshold, kind, user or period is another alert.
        for other in [
            AlertClaim {
                threshold: 50,
                ..claim.clone()
            },
            AlertClaim {
                kind: "low_balance",
                ..claim.clone()
            },
            AlertClaim {
                user_id: "bob",
                ..claim.clone()
            },
            AlertClaim {
                period_start: "2030-02-01T00:00:00.000000Z",
                period_end: "2030-03-01T00:00:00.000000Z",
                ..claim.clone()
            },
        ] {
            assert!(ledger.claim_alert(&other).unwrap(), "{other:?}");
        }
        // Reopened (a restart), the claims are still there.
        drop(ledger);
        let mut ledger = Ledger::open(&path, OpenMode::MustExist, Arc::new(SystemClock)).unwrap();
        assert!(!ledger.claim_alert(&claim).unwrap());
        assert_eq!(ledger.alerts_claimed("alice").unwrap().len(), 4);
        // A period long over is forgotten when the next claim is made.
        let old = AlertClaim {
            period_start: "2001-01-01T00:00:00.000000Z",
            period_end: "2001-02-01T00:00:00.000000Z",
            ..claim.clone()
        };
        assert!(ledger.claim_alert(&old).unwrap());
        assert!(
            ledger
                .claim_alert(&AlertClaim {
                    threshold: 100,
                    ..claim
                })
                .unwrap()
        );
        assert!(
            !ledger
                .alerts_claimed("alice")
                .unwrap()
                .iter()
                .any(|(_, _, start)| start.starts_with("2001")),
        );
    }
}
