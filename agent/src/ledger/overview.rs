//! What the agent's read-only view of its own books shows (`gateway/console.rs`): users with
//! their balances, a page at a time, and one user's usage of the last days for its charts.
//!
//! Guarantees: reads only; every list is bounded ([`USERS_PAGE_MAX`], [`USAGE_DAYS_MAX`], the
//! labels of a chart by [`CHART_LABELS_MAX`]); amounts are exact nano-credits.

use rusqlite::params;
use tollgate_schema::money::Credits;

use super::clock::to_text;
use super::{Ledger, LedgerError};

/// Most users on one page.
pub const USERS_PAGE_MAX: i64 = 200;
/// Most days of usage one chart covers.
pub const USAGE_DAYS_MAX: i64 = 90;
/// Most models or levels one chart names (the largest).
pub const CHART_LABELS_MAX: i64 = 20;

/// One user in the listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserLine {
    pub user_id: String,
    pub balance: Credits,
    pub held: Credits,
    pub used_this_month: Credits,
    pub tier: String,
    pub power_level: String,
    pub fleet: bool,
}

/// A user's charged usage since a day: credits per day (UTC), per model, per power level.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageCharts {
    pub by_day: Vec<(String, Credits)>,
    pub by_model: Vec<(String, Credits)>,
    pub by_level: Vec<(String, Credits)>,
}

impl Ledger {
    /// Users ordered by id after `after` (exclusive), at most `limit` (≤ [`USERS_PAGE_MAX`]).
    pub fn users_page(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<UserLine>, LedgerError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT user_id, balance, held, credits_used_this_month, subscription_tier, \
                    power_level, fleet \
             FROM user_credits WHERE user_id > ?1 ORDER BY user_id LIMIT ?2",
        )?;
        let rows = stmt.query_map(
            params![after.unwrap_or(""), limit.clamp(1, USERS_PAGE_MAX)],
            |r| {
                Ok(UserLine {
                    user_id: r.get("user_id")?,
                    balance: Credits::from_nanos(r.get("balance")?),
                    held: Credits::from_nanos(r.get("held")?),
                    used_this_month: Credits::from_nanos(r.get("credits_used_this_month")?),
                    tier: r.get("subscription_tier")?,
                    power_level: r.get("power_level")?,
                    fleet: r.get("fleet")?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// `user_id`'s charged usage over the last `days` (≤ [`USAGE_DAYS_MAX`]) days up to today
    /// (UTC), every day present (0 on a day without usage).
    pub fn usage_charts(&self, user_id: &str, days: i64) -> Result<UsageCharts, LedgerError> {
        let today = self.clock.now().to_offset(time::UtcOffset::UTC).date();
        let first = today - time::Duration::days(days.clamp(1, USAGE_DAYS_MAX) - 1);
        let since = to_text(first.midnight().assume_utc());
        let by = |column: &str,
                  order: &str,
                  limit: i64|
         -> Result<Vec<(String, Credits)>, LedgerError> {
            let mut stmt = self.conn.prepare(&format!(
                "SELECT {column} AS label, sum(credits_charged) AS charged FROM llm_usage_log \
                 WHERE user_id = ?1 AND created_at >= ?2 AND credits_charged > 0 \
                 GROUP BY label ORDER BY {order} LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![user_id, since, limit], |r| {
                Ok((
                    r.get::<_, Option<String>>("label")?
                        .unwrap_or_else(|| "-".to_owned()),
                    Credits::from_nanos(r.get("charged")?),
                ))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        };
        let charged: std::collections::BTreeMap<String, Credits> =
            by("substr(created_at, 1, 10)", "label", USAGE_DAYS_MAX + 1)?
                .into_iter()
                .collect();
        let mut by_day = Vec::new();
        let mut day = first;
        while day <= today {
            let label = format!(
                "{:04}-{:02}-{:02}",
                day.year(),
                u8::from(day.month()),
                day.day()
            );
            let value = charged.get(&label).copied().unwrap_or(Credits::ZERO);
            by_day.push((label, value));
            day = day.next_day().unwrap_or(today + time::Duration::days(1));
        }
        Ok(UsageCharts {
            by_day,
            by_model: by("model", "charged DESC, label", CHART_LABELS_MAX)?,
            by_level: by("power_level", "charged DESC, label", CHART_LABELS_MAX)?,
        })
    }
}
