//! What the console reads that the admin API does not: users by id prefix with this month's
//! spend, one user's journal a page at a time, and a user's usage summed by day, model and
//! power level. Reads only; every change goes through the domain modules.
//!
//! Guarantees: every query walks an index and reads at most a page (or one user's usage window):
//! users by `user_id COLLATE "C"` (migration 8), so a prefix is one contiguous range; the
//! journal by `(user_id, id)`; usage by `(user_id, created_at)` for usage entries. Amounts are
//! exact (`NUMERIC` → [`Credits`]).

use rust_decimal::Decimal;
use tokio_postgres::Client;
use tollgate_schema::money::Credits;

use crate::central::{CentralError, credits_from_db, validate};

/// Users on one page of the console's list.
pub const USERS_PAGE: i64 = 50;
/// Journal entries on one page of a user's journal.
pub const JOURNAL_PAGE: i64 = 50;
/// Days the usage charts cover, today included.
pub const USAGE_DAYS: i64 = 30;
/// Most models (or levels) drawn in one chart; the rest are summed as "other".
pub const CHART_ROWS_MAX: usize = 12;

/// One user in the console's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub user_id: String,
    /// `None` for a fleet user.
    pub home_agent: Option<String>,
    pub fleet: bool,
    pub balance: Credits,
    /// A fleet user's credit not granted to any agent.
    pub pool: Credits,
    pub used_this_month: Credits,
    pub tier: String,
    pub power_level: String,
    pub last_entry_at: Option<String>,
}

/// The first id after every id that starts with `prefix`, in byte order (ids are ASCII).
fn prefix_end(prefix: &str) -> Option<String> {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).ok();
        }
    }
    None
}

/// The users page: `$1` the prefix (or ''), `$2` the first id past it (or NULL), `$3` the last
/// id of the previous page (or NULL), `$4` the page size. Public so a test can check its plan
/// walks `idx_user_credits_user_id_bytes`.
pub const USERS_PAGE_SQL: &str = "SELECT u.user_id, a.name AS home_agent, u.fleet, u.balance, u.pool, \
                    u.credits_used_this_month, u.subscription_tier, u.power_level, \
                    (SELECT ct.created_at FROM credit_transactions ct \
                     WHERE ct.user_id = u.user_id ORDER BY ct.id DESC LIMIT 1) AS last_entry_at \
             FROM user_credits u LEFT JOIN agents a ON a.agent_id = u.home_agent_id \
             WHERE (u.user_id COLLATE \"C\") >= $1 \
               AND ($2::text IS NULL OR (u.user_id COLLATE \"C\") < $2) \
               AND ($3::text IS NULL OR (u.user_id COLLATE \"C\") > $3) \
             ORDER BY (u.user_id COLLATE \"C\") LIMIT $4";

/// Users whose id starts with `prefix` (all when empty), in byte order, after `after`, at most
/// `limit`. A prefix that cannot start a user id is refused, naming the search field.
pub async fn users_page(
    client: &Client,
    prefix: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<UserRow>, CentralError> {
    if !prefix.is_empty() {
        validate::user_id("search", prefix)?;
    }
    let end = prefix_end(prefix);
    let rows = client
        .query(
            USERS_PAGE_SQL,
            &[&prefix, &end, &after, &limit.clamp(1, USERS_PAGE * 4)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(UserRow {
                user_id: r.get("user_id"),
                home_agent: r.get("home_agent"),
                fleet: r.get("fleet"),
                balance: credits_from_db(r.get("balance"))?,
                pool: credits_from_db(r.get("pool"))?,
                used_this_month: credits_from_db(r.get("credits_used_this_month"))?,
                tier: r.get("subscription_tier"),
                power_level: r.get("power_level"),
                last_entry_at: r.get("last_entry_at"),
            })
        })
        .collect()
}

/// One journal entry as the console lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRow {
    /// The central row id (the page cursor).
    pub id: i64,
    pub agent: Option<String>,
    pub seq: i64,
    pub kind: String,
    pub amount: Credits,
    pub balance_after: Credits,
    pub model: Option<String>,
    pub power_level: Option<String>,
    pub total_tokens: Option<i64>,
    pub key: Option<String>,
    pub notes: Option<String>,
    pub created_at: String,
}

/// A page of a user's journal, newest first, older than `before` (a row id); and the cursor
/// of the next (older) page, if there is one.
pub async fn journal_page(
    client: &Client,
    user_id: &str,
    before: Option<i64>,
) -> Result<(Vec<JournalRow>, Option<i64>), CentralError> {
    let rows = client
        .query(
            "SELECT ct.id, a.name AS agent, ct.seq, ct.transaction_type, ct.amount, \
                    ct.balance_after, ct.model, ct.power_level, ct.total_tokens, \
                    ct.idempotency_key, ct.notes, ct.created_at \
             FROM credit_transactions ct LEFT JOIN agents a ON a.agent_id = ct.agent_id \
             WHERE ct.user_id = $1 AND ($2::bigint IS NULL OR ct.id < $2) \
             ORDER BY ct.id DESC LIMIT $3",
            &[&user_id, &before, &(JOURNAL_PAGE + 1)],
        )
        .await?;
    let mut page = rows
        .iter()
        .map(|r| {
            Ok(JournalRow {
                id: r.get("id"),
                agent: r.get("agent"),
                seq: r.get("seq"),
                kind: r.get("transaction_type"),
                amount: credits_from_db(r.get("amount"))?,
                balance_after: credits_from_db(r.get("balance_after"))?,
                model: r.get("model"),
                power_level: r.get("power_level"),
                total_tokens: r.get("total_tokens"),
                key: r.get("idempotency_key"),
                notes: r.get("notes"),
                created_at: r.get("created_at"),
            })
        })
        .collect::<Result<Vec<_>, CentralError>>()?;
    let more = i64::try_from(page.len()).is_ok_and(|n| n > JOURNAL_PAGE);
    if more {
        page.truncate(usize::try_from(JOURNAL_PAGE).unwrap_or(50));
    }
    let next = more.then(|| page.last().map(|r| r.id)).flatten();
    Ok((page, next))
}

/// A user's usage over the last [`USAGE_DAYS`] days (UTC, by the agents' timestamps).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Usage {
    /// Every day of the window, oldest first, zero where nothing was spent.
    pub by_day: Vec<(String, Credits)>,
    /// Largest first; beyond [`CHART_ROWS_MAX`], summed as "other".
    pub by_model: Vec<(String, Credits)>,
    pub by_level: Vec<(String, Credits)>,
    pub requests: i64,
    pub total: Credits,
}

/// The days of the window ending `today`, oldest first (`YYYY-MM-DD`).
pub fn window(today: time::Date) -> Vec<String> {
    (0..USAGE_DAYS)
        .rev()
        .filter_map(|back| today.checked_sub(time::Duration::days(back)))
        .map(|d| format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day()))
        .collect()
}

/// Sums `value` into `acc`, or fails (a month's usage fits `Credits` by the ingest rules).
fn add(acc: Credits, value: Credits) -> Result<Credits, CentralError> {
    acc.checked_add(value).ok_or_else(|| {
        CentralError::Internal(anyhow::anyhow!("a usage sum is beyond the largest amount"))
    })
}

/// The largest `CHART_ROWS_MAX - 1` rows and the rest summed as "other".
fn top(mut rows: Vec<(String, Credits)>) -> Result<Vec<(String, Credits)>, CentralError> {
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if rows.len() <= CHART_ROWS_MAX {
        return Ok(rows);
    }
    let rest = rows.split_off(CHART_ROWS_MAX - 1);
    let other = rest
        .into_iter()
        .try_fold(Credits::ZERO, |acc, (_, v)| add(acc, v))?;
    rows.push(("other".to_owned(), other));
    Ok(rows)
}

/// `user_id`'s usage debits of the window ending `today`, in one pass (grouping sets).
pub async fn usage(
    client: &Client,
    user_id: &str,
    today: time::Date,
) -> Result<Usage, CentralError> {
    let days = window(today);
    let since = days.first().cloned().unwrap_or_default();
    let rows = client
        .query(
            "SELECT left(created_at, 10) AS day, COALESCE(model, '(none)') AS model, \
                    COALESCE(power_level, '(none)') AS level, \
                    GROUPING(left(created_at, 10), model, power_level) AS grouping, \
                    COALESCE(sum(-amount), 0) AS spent, count(*) AS requests \
             FROM credit_transactions \
             WHERE user_id = $1 AND transaction_type = 'usage' AND created_at >= $2 \
             GROUP BY GROUPING SETS ((left(created_at, 10)), (model), (power_level), ())",
            &[&user_id, &since],
        )
        .await?;
    let mut usage = Usage::default();
    let mut per_day = std::collections::BTreeMap::new();
    for r in &rows {
        let spent = credits_from_db(r.get::<_, Decimal>("spent"))?;
        // GROUPING's bits, left to right: day, model, level; a set bit = not grouped by it.
        match r.get::<_, i32>("grouping") {
            0b011 => {
                per_day.insert(r.get::<_, String>("day"), spent);
            }
            0b101 => usage.by_model.push((r.get("model"), spent)),
            0b110 => usage.by_level.push((r.get("level"), spent)),
            _ => {
                usage.requests = r.get("requests");
                usage.total = spent;
            }
        }
    }
    usage.by_day = days
        .into_iter()
        .map(|d| {
            let v = per_day.get(&d).copied().unwrap_or(Credits::ZERO);
            (d, v)
        })
        .collect();
    usage.by_model = top(std::mem::take(&mut usage.by_model))?;
    usage.by_level = top(std::mem::take(&mut usage.by_level))?;
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_is_one_byte_range() {
        assert_eq!(prefix_end("abc").as_deref(), Some("abd"));
        assert_eq!(prefix_end("a~").as_deref(), Some("a\u{7f}"));
        assert_eq!(prefix_end(""), None);
    }

    #[test]
    fn the_window_is_thirty_days_ending_today() {
        let days = window(time::macros::date!(2026 - 03 - 02));
        assert_eq!(days.len(), 30);
        assert_eq!(days.first().map(String::as_str), Some("2026-02-01"));
        assert_eq!(days.last().map(String::as_str), Some("2026-03-02"));
    }

    #[test]
    fn charts_keep_the_largest_rows_and_sum_the_rest() {
        let rows: Vec<(String, Credits)> = (1..=20)
            .map(|i| (format!("m{i:02}"), Credits::from_nanos(i)))
            .collect();
        let top = top(rows).unwrap();
        assert_eq!(top.len(), CHART_ROWS_MAX);
        assert_eq!(top[0], ("m20".to_owned(), Credits::from_nanos(20)));
        let other: i64 = (1..=9).sum();
        assert_eq!(
            top.last().unwrap(),
            &("other".to_owned(), Credits::from_nanos(other))
        );
    }
}
