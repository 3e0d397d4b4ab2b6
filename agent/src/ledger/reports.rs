//! Usage reports over `llm_usage_log`: requests, tokens, credits and latency per model, provider,
//! day or power level, for one user or all, over a time range.
//!
//! Guarantees:
//! - Exact: credits are summed as [`Credits`] with checked arithmetic (an overflow is an error,
//!   never a wrap); counts and tokens are integers.
//! - Bounded: a report reads at most [`REPORT_ROWS_MAX`] usage rows; a range holding more is
//!   refused with an error saying so, never silently truncated.
//! - Consistent: the rows are read by one statement, so a report is one snapshot even while the
//!   gateway writes.
//! - p95 latency is the nearest-rank 95th percentile of the group's latencies (rows without a
//!   latency are left out of both average and p95), computed here, not in SQL.
//! - Groups are ordered by credits charged (most first), then by key; a missing provider or power
//!   level is the key `-`.
//! - Beside tollgate's charge, LiteLLM's own cost: the sum of the `x-litellm-response-cost` it
//!   reported (USD, read exactly from its text), and how many requests carried one (LiteLLM
//!   reports none on streams), so a difference can be told from a missing report.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rusqlite::params_from_iter;
use rust_decimal::Decimal;
use serde::Serialize;
use time::OffsetDateTime;
use tollgate_schema::money::Credits;

use super::{Ledger, LedgerError};

/// Most usage rows one report reads (about 16 bytes each held in memory for the percentiles).
pub const REPORT_ROWS_MAX: usize = 2_000_000;
/// The key of a group whose provider or power level was not recorded.
pub const NO_KEY: &str = "-";
/// The key of the totals row.
pub const TOTAL_KEY: &str = "total";

/// What a report groups requests by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    Model,
    Provider,
    /// The UTC day of the request (`YYYY-MM-DD`).
    Day,
    /// The power level the request ran at.
    Level,
}

impl GroupBy {
    pub const ALL: &'static [GroupBy] = &[
        GroupBy::Model,
        GroupBy::Provider,
        GroupBy::Day,
        GroupBy::Level,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            GroupBy::Model => "model",
            GroupBy::Provider => "provider",
            GroupBy::Day => "day",
            GroupBy::Level => "level",
        }
    }

    /// The SQL expression of the group key (fixed text, never input).
    const fn key_sql(self) -> &'static str {
        match self {
            GroupBy::Model => "model",
            GroupBy::Provider => "COALESCE(provider, '-')",
            GroupBy::Day => "substr(created_at, 1, 10)",
            GroupBy::Level => "COALESCE(power_level, '-')",
        }
    }
}

impl FromStr for GroupBy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        GroupBy::ALL
            .iter()
            .copied()
            .find(|g| g.as_str() == text)
            .ok_or_else(|| {
                format!("unknown grouping {text:?} (expected one of: model, provider, day, level)")
            })
    }
}

impl fmt::Display for GroupBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which requests a report covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageFilter {
    /// Only this user's requests (the user must exist).
    pub user_id: Option<String>,
    /// Only requests logged at or after this time.
    pub since: Option<OffsetDateTime>,
}

/// One group's figures (or the totals, key [`TOTAL_KEY`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageGroup {
    pub key: String,
    pub requests: u64,
    pub successes: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub credits_charged: Credits,
    pub overage_credits: Credits,
    /// Mean latency of the requests that recorded one, rounded to the nearest ms (halves up).
    pub avg_latency_ms: Option<u64>,
    /// Nearest-rank 95th percentile latency of the requests that recorded one.
    pub p95_latency_ms: Option<u64>,
    pub byok_requests: u64,
    /// LiteLLM's reported cost of the requests that carried one, in USD.
    pub litellm_cost_usd: Decimal,
    /// How many requests carried LiteLLM's cost.
    pub litellm_costed_requests: u64,
}

/// A usage report: its groups in order, and the totals over all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageReport {
    pub by: GroupBy,
    pub user: Option<String>,
    /// The range's start as stored (`YYYY-MM-DDTHH:MM:SS.fffZ`), `None` for all time.
    pub since: Option<String>,
    pub groups: Vec<UsageGroup>,
    pub total: UsageGroup,
}

/// One usage row, as a report reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub key: String,
    pub success: bool,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub credits_charged: Credits,
    pub overage_credits: Credits,
    pub latency_ms: Option<u64>,
    pub is_byok: bool,
    /// LiteLLM's reported cost, in USD, if it reported one.
    pub litellm_cost_usd: Option<Decimal>,
}

/// Running figures of one group.
#[derive(Debug, Clone, Default)]
struct Acc {
    requests: u64,
    successes: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    credits_charged: Credits,
    overage_credits: Credits,
    latencies: Vec<u64>,
    byok_requests: u64,
    litellm_cost_usd: Decimal,
    litellm_costed_requests: u64,
}

fn overflow(what: &str) -> LedgerError {
    LedgerError::InvalidField {
        field: "usage report",
        why: format!("the {what} total is beyond the range a report can sum"),
    }
}

impl Acc {
    fn add(&mut self, row: &UsageRow) -> Result<(), LedgerError> {
        self.requests += 1;
        self.successes += u64::from(row.success);
        self.byok_requests += u64::from(row.is_byok);
        self.prompt_tokens = self
            .prompt_tokens
            .checked_add(row.prompt_tokens)
            .ok_or_else(|| overflow("prompt token"))?;
        self.completion_tokens = self
            .completion_tokens
            .checked_add(row.completion_tokens)
            .ok_or_else(|| overflow("completion token"))?;
        self.credits_charged = self
            .credits_charged
            .checked_add(row.credits_charged)
            .ok_or_else(|| overflow("credits charged"))?;
        self.overage_credits = self
            .overage_credits
            .checked_add(row.overage_credits)
            .ok_or_else(|| overflow("overage"))?;
        if let Some(ms) = row.latency_ms {
            self.latencies.push(ms);
        }
        if let Some(usd) = row.litellm_cost_usd {
            self.litellm_cost_usd = self
                .litellm_cost_usd
                .checked_add(usd)
                .ok_or_else(|| overflow("LiteLLM cost"))?;
            self.litellm_costed_requests += 1;
        }
        Ok(())
    }

    fn merge(&mut self, other: &Acc) -> Result<(), LedgerError> {
        self.requests += other.requests;
        self.successes += other.successes;
        self.byok_requests += other.byok_requests;
        self.prompt_tokens = self
            .prompt_tokens
            .checked_add(other.prompt_tokens)
            .ok_or_else(|| overflow("prompt token"))?;
        self.completion_tokens = self
            .completion_tokens
            .checked_add(other.completion_tokens)
            .ok_or_else(|| overflow("completion token"))?;
        self.credits_charged = self
            .credits_charged
            .checked_add(other.credits_charged)
            .ok_or_else(|| overflow("credits charged"))?;
        self.overage_credits = self
            .overage_credits
            .checked_add(other.overage_credits)
            .ok_or_else(|| overflow("overage"))?;
        self.latencies.extend_from_slice(&other.latencies);
        self.litellm_cost_usd = self
            .litellm_cost_usd
            .checked_add(other.litellm_cost_usd)
            .ok_or_else(|| overflow("LiteLLM cost"))?;
        self.litellm_costed_requests += other.litellm_costed_requests;
        Ok(())
    }

    fn finish(mut self, key: String) -> UsageGroup {
        self.latencies.sort_unstable();
        UsageGroup {
            key,
            requests: self.requests,
            successes: self.successes,
            errors: self.requests - self.successes,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            credits_charged: self.credits_charged,
            overage_credits: self.overage_credits,
            avg_latency_ms: mean_rounded(&self.latencies),
            p95_latency_ms: nearest_rank(&self.latencies, 95),
            byok_requests: self.byok_requests,
            litellm_cost_usd: self.litellm_cost_usd.normalize(),
            litellm_costed_requests: self.litellm_costed_requests,
        }
    }
}

/// Groups rows by key and sums them; the groups ordered by credits charged (most first), then
/// key, and the totals over all rows.
pub fn aggregate(
    rows: impl IntoIterator<Item = Result<UsageRow, LedgerError>>,
) -> Result<(Vec<UsageGroup>, UsageGroup), LedgerError> {
    let mut groups: BTreeMap<String, Acc> = BTreeMap::new();
    for row in rows {
        let row = row?;
        match groups.get_mut(&row.key) {
            Some(acc) => acc.add(&row)?,
            None => {
                let mut acc = Acc::default();
                acc.add(&row)?;
                groups.insert(row.key, acc);
            }
        }
    }
    let mut total = Acc::default();
    for acc in groups.values() {
        total.merge(acc)?;
    }
    let mut finished: Vec<UsageGroup> = groups
        .into_iter()
        .map(|(key, acc)| acc.finish(key))
        .collect();
    finished.sort_by(|a, b| {
        b.credits_charged
            .cmp(&a.credits_charged)
            .then_with(|| a.key.cmp(&b.key))
    });
    Ok((finished, total.finish(TOTAL_KEY.to_owned())))
}

/// The nearest-rank `pct`th percentile of `sorted` (ascending): the value at rank
/// ⌈pct/100 × n⌉, counting from 1. `None` for no values.
pub fn nearest_rank(sorted: &[u64], pct: u64) -> Option<u64> {
    let n = u64::try_from(sorted.len()).ok()?;
    if n == 0 {
        return None;
    }
    let rank = (pct.min(100) * n).div_ceil(100).max(1);
    sorted.get(usize::try_from(rank - 1).ok()?).copied()
}

/// The mean of `values` rounded to the nearest integer, halves up. `None` for no values.
pub fn mean_rounded(values: &[u64]) -> Option<u64> {
    let n = u128::try_from(values.len()).ok()?;
    if n == 0 {
        return None;
    }
    let sum: u128 = values.iter().map(|&v| u128::from(v)).sum();
    u64::try_from((2 * sum + n) / (2 * n)).ok()
}

impl Ledger {
    /// Requests matching `filter`, grouped `by`, with totals. Refuses an unknown user and a
    /// range of more than [`REPORT_ROWS_MAX`] requests.
    pub fn usage_report(
        &self,
        filter: &UsageFilter,
        by: GroupBy,
    ) -> Result<UsageReport, LedgerError> {
        if let Some(user) = &filter.user_id
            && !self.user_exists(user)?
        {
            return Err(LedgerError::UnknownUser(user.clone()));
        }
        let since = filter.since.map(super::clock::to_text);
        let mut conditions = Vec::new();
        let mut args: Vec<String> = Vec::new();
        if let Some(user) = &filter.user_id {
            args.push(user.clone());
            conditions.push(format!("user_id = ?{}", args.len()));
        }
        if let Some(since) = &since {
            args.push(since.clone());
            conditions.push(format!("created_at >= ?{}", args.len()));
        }
        let filter_sql = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        // One more than the limit: seeing it means the range is too big.
        let sql = format!(
            "SELECT {}, success, prompt_tokens, completion_tokens, credits_charged, \
             overage_credits, latency_ms, is_byok, \
             json_extract(metadata, '$.litellm_response_cost') \
             FROM llm_usage_log {filter_sql} LIMIT {}",
            by.key_sql(),
            REPORT_ROWS_MAX + 1
        );
        let mut stmt = self.conn().prepare(&sql)?;
        let rows = stmt.query_map(params_from_iter(args.iter()), |r| {
            Ok(UsageRow {
                key: r.get(0)?,
                success: r.get(1)?,
                // Written from u32 by the ledger (UsageRecord); wider would be corrupt.
                prompt_tokens: u64::from(r.get::<_, u32>(2)?),
                completion_tokens: u64::from(r.get::<_, u32>(3)?),
                credits_charged: Credits::from_nanos(r.get(4)?),
                overage_credits: Credits::from_nanos(r.get(5)?),
                latency_ms: r.get::<_, Option<u32>>(6)?.map(u64::from),
                is_byok: r.get(7)?,
                // Unreadable text (not a number) is left out, as if none was reported.
                litellm_cost_usd: r
                    .get::<_, Option<String>>(8)?
                    .and_then(|t| crate::prices::exact_decimal(t.trim())),
            })
        })?;
        let mut read = 0_usize;
        let (groups, total) = aggregate(rows.map(|row| {
            read += 1;
            if read > REPORT_ROWS_MAX {
                return Err(LedgerError::InvalidField {
                    field: "usage report",
                    why: format!(
                        "the range holds more than {REPORT_ROWS_MAX} requests, the most a report \
                         reads; report a shorter time or one user"
                    ),
                });
            }
            row.map_err(LedgerError::from)
        }))?;
        Ok(UsageReport {
            by,
            user: filter.user_id.clone(),
            since,
            groups,
            total,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use time::macros::datetime;

    use super::*;
    use crate::ledger::{
        AddCredits, CreditKind, HoldRequest, ManualClock, NewUser, OpenMode, PowerLevel, Release,
        Settle, UsageErrorType, UsageRecord,
    };

    fn c(text: &str) -> Credits {
        text.parse().unwrap()
    }

    fn row(key: &str, credits: &str, latency: Option<u64>) -> UsageRow {
        UsageRow {
            key: key.into(),
            success: true,
            prompt_tokens: 10,
            completion_tokens: 5,
            credits_charged: c(credits),
            overage_credits: Credits::ZERO,
            latency_ms: latency,
            is_byok: false,
            litellm_cost_usd: None,
        }
    }

    #[test]
    fn nearest_rank_p95_and_rounded_mean() {
        assert_eq!(nearest_rank(&[], 95), None);
        assert_eq!(nearest_rank(&[7], 95), Some(7));
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&hundred, 95), Some(95));
        let twenty: Vec<u64> = (1..=20).collect();
        assert_eq!(nearest_rank(&twenty, 95), Some(19), "rank ceil(19.0) = 19");
        let twenty_one: Vec<u64> = (1..=21).collect();
        assert_eq!(
            nearest_rank(&twenty_one, 95),
            Some(20),
            "rank ceil(19.95) = 20"
        );
        assert_eq!(nearest_rank(&[1, 2, 3], 95), Some(3));
        assert_eq!(mean_rounded(&[]), None);
        assert_eq!(mean_rounded(&[100, 101]), Some(101), "100.5 rounds up");
        assert_eq!(mean_rounded(&[100, 100, 101]), Some(100));
        assert_eq!(mean_rounded(&[u64::MAX, u64::MAX]), Some(u64::MAX));
    }

    #[test]
    fn aggregation_sums_exactly_and_orders_by_credits_then_key() {
        let mut failed = row("b", "0", None);
        failed.success = false;
        failed.is_byok = true;
        let mut over = row("a", "0.000000001", Some(300));
        over.overage_credits = c("0.5");
        // LiteLLM's costs as it writes them: floats' text.
        over.litellm_cost_usd = crate::prices::exact_decimal("2.5e-06");
        let mut costed = row("c", "1.25", Some(100));
        costed.litellm_cost_usd = crate::prices::exact_decimal("1e-05");
        let rows = vec![
            costed,
            row("b", "2", Some(50)),
            failed,
            row("c", "0.75", Some(200)),
            over,
            row("d", "2", None),
        ];
        let (groups, total) = aggregate(rows.into_iter().map(Ok)).unwrap();
        let keys: Vec<&str> = groups.iter().map(|g| g.key.as_str()).collect();
        assert_eq!(
            keys,
            ["b", "c", "d", "a"],
            "2 = 2 > 0.000000001, ties by key"
        );
        let c_group = &groups[1];
        assert_eq!(c_group.credits_charged, c("2"));
        assert_eq!(
            (c_group.requests, c_group.successes, c_group.errors),
            (2, 2, 0)
        );
        assert_eq!(
            (c_group.avg_latency_ms, c_group.p95_latency_ms),
            (Some(150), Some(200))
        );
        let b_group = &groups[0];
        assert_eq!(
            (b_group.requests, b_group.errors, b_group.byok_requests),
            (2, 1, 1)
        );
        assert_eq!(
            b_group.avg_latency_ms,
            Some(50),
            "a row without latency is left out"
        );
        assert_eq!(
            (groups[2].avg_latency_ms, groups[2].p95_latency_ms),
            (None, None)
        );
        assert_eq!(
            total,
            UsageGroup {
                key: "total".into(),
                requests: 6,
                successes: 5,
                errors: 1,
                prompt_tokens: 60,
                completion_tokens: 30,
                credits_charged: c("6.000000001"),
                overage_credits: c("0.5"),
                avg_latency_ms: Some(163),
                p95_latency_ms: Some(300),
                byok_requests: 1,
                litellm_cost_usd: "0.0000125".parse().unwrap(),
                litellm_costed_requests: 2,
            }
        );
        let (none, empty_total) = aggregate(std::iter::empty()).unwrap();
        assert!(none.is_empty());
        assert_eq!(
            (empty_total.requests, empty_total.avg_latency_ms),
            (0, None)
        );
    }

    #[test]
    fn a_credit_sum_beyond_range_is_an_error_not_a_wrap() {
        let rows = [row("a", "9000000000", None), row("a", "9000000000", None)];
        let err = aggregate(rows.into_iter().map(Ok)).unwrap_err();
        assert!(err.to_string().contains("credits charged"), "{err}");
    }

    fn usage(model: &str, provider: Option<&str>, latency: u32) -> UsageRecord {
        UsageRecord {
            endpoint: "/v1/chat/completions".into(),
            model: model.into(),
            provider: provider.map(str::to_owned),
            power_level: Some(PowerLevel::Eco),
            prompt_tokens: 100,
            completion_tokens: 20,
            latency_ms: Some(latency),
            ..UsageRecord::default()
        }
    }

    /// alice: two settled gpt-4o requests on Mar 1, one released failure on Mar 3; bob: one
    /// BYOK request on Mar 3 with overage.
    fn books() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(datetime!(2026-03-01 12:00 UTC));
        let mut ledger = Ledger::open(
            &dir.path().join("t.db"),
            OpenMode::CreateIfMissing,
            Arc::new(clock.clone()),
        )
        .unwrap();
        for user in ["alice", "bob"] {
            ledger.create_user(&NewUser::new(user)).unwrap();
            ledger
                .add_credits(AddCredits::new(user, c("100"), CreditKind::Purchase))
                .unwrap();
        }
        let mut run = |user: &str, id: &str, hold: &str, cost: Option<&str>, u: UsageRecord| {
            ledger
                .hold(HoldRequest {
                    user_id: user.into(),
                    request_id: id.into(),
                    amount: c(hold),
                    min_amount: None,
                    ttl: time::Duration::minutes(5),
                })
                .unwrap();
            match cost {
                Some(cost) => {
                    ledger
                        .settle(Settle {
                            user_id: user.into(),
                            request_id: id.into(),
                            cost: c(cost),
                            usage: u,
                        })
                        .unwrap();
                }
                None => {
                    ledger
                        .release(Release {
                            user_id: user.into(),
                            request_id: id.into(),
                            usage: Some(u),
                        })
                        .unwrap();
                }
            }
        };
        run(
            "alice",
            "r1",
            "5",
            Some("1.5"),
            usage("gpt-4o", Some("openai"), 100),
        );
        run(
            "alice",
            "r2",
            "5",
            Some("0.25"),
            usage("gpt-4o", Some("openai"), 300),
        );
        clock.advance(time::Duration::days(2));
        let failed = UsageRecord {
            error_type: Some(UsageErrorType::UpstreamError),
            completion_tokens: 0,
            ..usage("claude-sonnet-4", None, 50)
        };
        run("alice", "r3", "5", None, failed);
        let byok = UsageRecord {
            is_byok: true,
            power_level: None,
            ..usage("claude-sonnet-4", Some("anthropic"), 200)
        };
        run("bob", "r4", "1", Some("3"), byok);
        (dir, ledger)
    }

    fn keys(report: &UsageReport) -> Vec<(&str, u64, String)> {
        report
            .groups
            .iter()
            .map(|g| (g.key.as_str(), g.requests, g.credits_charged.to_string()))
            .collect()
    }

    #[test]
    fn reports_group_the_logged_requests_by_each_key() {
        let (_dir, ledger) = books();
        let all = UsageFilter::default();
        let by_model = ledger.usage_report(&all, GroupBy::Model).unwrap();
        assert_eq!(
            keys(&by_model),
            [
                ("gpt-4o", 2, "1.75".into()),
                ("claude-sonnet-4", 2, "1".into())
            ]
        );
        let claude = &by_model.groups[1];
        assert_eq!(
            (claude.successes, claude.errors, claude.byok_requests),
            (1, 1, 1)
        );
        assert_eq!(
            claude.overage_credits,
            c("2"),
            "bob's hold of 1 covered 1 of 3"
        );
        assert_eq!((claude.prompt_tokens, claude.completion_tokens), (200, 20));
        assert_eq!(
            (claude.avg_latency_ms, claude.p95_latency_ms),
            (Some(125), Some(200))
        );
        let gpt = &by_model.groups[0];
        assert_eq!(
            (gpt.avg_latency_ms, gpt.p95_latency_ms),
            (Some(200), Some(300))
        );
        assert_eq!(by_model.total.requests, 4);
        assert_eq!(by_model.total.credits_charged, c("2.75"));
        assert_eq!(by_model.total.p95_latency_ms, Some(300));

        let by_provider = ledger.usage_report(&all, GroupBy::Provider).unwrap();
        assert_eq!(
            keys(&by_provider),
            [
                ("openai", 2, "1.75".into()),
                ("anthropic", 1, "1".into()),
                ("-", 1, "0".into())
            ]
        );
        let by_day = ledger.usage_report(&all, GroupBy::Day).unwrap();
        assert_eq!(
            keys(&by_day),
            [
                ("2026-03-01", 2, "1.75".into()),
                ("2026-03-03", 2, "1".into())
            ]
        );
        let by_level = ledger.usage_report(&all, GroupBy::Level).unwrap();
        assert_eq!(
            keys(&by_level),
            [("eco", 3, "1.75".into()), ("-", 1, "1".into())]
        );
    }

    #[test]
    fn reports_filter_by_user_and_time() {
        let (_dir, ledger) = books();
        let alice = UsageFilter {
            user_id: Some("alice".into()),
            since: None,
        };
        let report = ledger.usage_report(&alice, GroupBy::Model).unwrap();
        assert_eq!(report.total.requests, 3);
        assert_eq!(report.user.as_deref(), Some("alice"));
        let recent = UsageFilter {
            user_id: Some("alice".into()),
            since: Some(datetime!(2026-03-02 00:00 UTC)),
        };
        let report = ledger.usage_report(&recent, GroupBy::Day).unwrap();
        assert_eq!(keys(&report), [("2026-03-03", 1, "0".into())]);
        assert_eq!(report.since.as_deref(), Some("2026-03-02T00:00:00.000Z"));
        // The bound is inclusive, to the millisecond.
        let exact = UsageFilter {
            user_id: None,
            since: Some(datetime!(2026-03-03 12:00 UTC)),
        };
        assert_eq!(
            ledger
                .usage_report(&exact, GroupBy::Model)
                .unwrap()
                .total
                .requests,
            2
        );
        let later = UsageFilter {
            user_id: None,
            since: Some(datetime!(2026-03-03 12:00:00.001 UTC)),
        };
        let empty = ledger.usage_report(&later, GroupBy::Model).unwrap();
        assert!(empty.groups.is_empty());
        assert_eq!(empty.total.requests, 0);
        let err = ledger
            .usage_report(
                &UsageFilter {
                    user_id: Some("carol".into()),
                    since: None,
                },
                GroupBy::Model,
            )
            .unwrap_err();
        assert_eq!(err.to_string(), "unknown user \"carol\"");
    }

    #[test]
    fn groupings_parse_from_their_names() {
        for by in GroupBy::ALL {
            assert_eq!(by.as_str().parse::<GroupBy>(), Ok(*by));
        }
        assert_eq!(
            "user".parse::<GroupBy>().unwrap_err(),
            "unknown grouping \"user\" (expected one of: model, provider, day, level)"
        );
    }
}
