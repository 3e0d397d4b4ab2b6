//! The ledger's clock, and the one text form of a time stored in SQLite.
//!
//! Renewal, expiry and hold timeouts happen lazily when an operation touches a user, at the time
//! this clock says, so tests drive months of billing in microseconds with [`ManualClock`].
//! Stored times are RFC 3339 UTC with exactly three fractional digits, which sort as text.

use std::fmt;
use std::sync::{Arc, Mutex};

use time::format_description::FormatItem;
use time::macros::format_description;
use time::{Duration, OffsetDateTime, PrimitiveDateTime, UtcOffset};

/// The fixed-width stored form: `2026-11-24T16:20:00.000Z`.
const STORED: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// Where the ledger learns the time.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> OffsetDateTime;
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// The operating system's clock shifted by a fixed skew: what an agent whose clock jumped sees.
/// `tollgate serve` uses it when [`CLOCK_SKEW_ENV`] is set (fault-injection tests jump an
/// agent's clock by restarting it with one); nothing about money depends on it being right.
#[derive(Debug, Clone, Copy)]
pub struct SkewedClock(pub Duration);

impl Clock for SkewedClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc() + self.0
    }
}

/// Seconds (signed) to shift `tollgate serve`'s clock by, for fault-injection tests.
pub const CLOCK_SKEW_ENV: &str = "TOLLGATE_CLOCK_SKEW_SECS";

/// The clock `tollgate serve` runs on: the system's, or skewed by [`CLOCK_SKEW_ENV`]. An
/// unreadable value is refused, naming it.
pub fn serve_clock(skew: Option<&str>) -> Result<Arc<dyn Clock>, String> {
    match skew {
        None => Ok(Arc::new(SystemClock)),
        Some(text) => {
            let secs: i64 = text.trim().parse().map_err(|_| {
                format!("{CLOCK_SKEW_ENV}={text:?} is not a whole number of seconds")
            })?;
            Ok(Arc::new(SkewedClock(Duration::seconds(secs))))
        }
    }
}

/// A clock that moves only when told to (tests, the demo).
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<OffsetDateTime>>);

impl ManualClock {
    pub fn new(start: OffsetDateTime) -> Self {
        ManualClock(Arc::new(Mutex::new(start)))
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *now += by;
    }

    pub fn set(&self, to: OffsetDateTime) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The stored text of a time (UTC, millisecond precision). A time whose UTC form falls outside
/// years 0–9999 is clamped to the range's end (callers refuse such input before storing it).
pub fn to_text(at: OffsetDateTime) -> String {
    match at
        .checked_to_offset(UtcOffset::UTC)
        .and_then(|utc| utc.format(STORED).ok())
    {
        Some(text) => text,
        None if at.year() < 0 => "0000-01-01T00:00:00.000Z".to_owned(),
        None => "9999-12-31T23:59:59.999Z".to_owned(),
    }
}

/// Reads a stored time back.
pub fn from_text(text: &str) -> Result<OffsetDateTime, time::error::Parse> {
    Ok(PrimitiveDateTime::parse(text, STORED)?.assume_utc())
}

/// `at` moved by whole calendar months, the day clamped to the month's length (Jan 31 + 1 month
/// = Feb 28/29). Billing cycles count months from a fixed anchor, so clamping never drifts.
pub fn add_months(at: OffsetDateTime, months: i32) -> OffsetDateTime {
    let total = at.year() * 12 + (at.month() as i32 - 1) + months;
    let year = total.div_euclid(12);
    let month_index = total.rem_euclid(12) as u8 + 1;
    let month = time::Month::try_from(month_index).unwrap_or(time::Month::January);
    let day = at.day().min(month.length(year));
    at.replace_day(1)
        .and_then(|d| d.replace_year(year))
        .and_then(|d| d.replace_month(month))
        .and_then(|d| d.replace_day(day))
        .unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn stored_form_round_trips_and_sorts() {
        let a = datetime!(2026-01-31 23:59:59.123 UTC);
        let b = datetime!(2026-02-01 00:00:00 UTC);
        assert_eq!(to_text(a), "2026-01-31T23:59:59.123Z");
        assert_eq!(from_text(&to_text(a)).unwrap(), a);
        assert!(to_text(a) < to_text(b));
    }

    #[test]
    fn times_beyond_year_9999_clamp_instead_of_panicking() {
        let far = datetime!(9999-12-31 23:59:59 -10:00);
        assert_eq!(to_text(far), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn months_clamp_to_the_end_of_short_months() {
        let anchor = datetime!(2026-01-31 10:00 UTC);
        assert_eq!(add_months(anchor, 1), datetime!(2026-02-28 10:00 UTC));
        assert_eq!(add_months(anchor, 2), datetime!(2026-03-31 10:00 UTC));
        assert_eq!(add_months(anchor, 13), datetime!(2027-02-28 10:00 UTC));
        assert_eq!(
            add_months(datetime!(2028-01-31 0:00 UTC), 1),
            datetime!(2028-02-29 0:00 UTC)
        );
        assert_eq!(add_months(anchor, -1), datetime!(2025-12-31 10:00 UTC));
    }
}
