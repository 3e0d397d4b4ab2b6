//! Money: an exact count of credits in units of 1e-9 credit.
//!
//! Guarantees:
//! - No float ever touches an amount: text is parsed with `rust_decimal` and stored as an `i64`
//!   count of nano-credits (the SQLite INTEGER column; `NUMERIC(38,9)` on PostgreSQL).
//! - Parsing refuses, with a message naming the problem, anything that is not exactly
//!   representable: more than 9 fractional digits, exponents, or a value beyond ±9.2e9 credits.
//! - Arithmetic is checked: an overflow is an error, never a wrap.
//! - Text and JSON forms are the shortest exact decimal ("12.5", "-0.000000001"), so a value
//!   round-trips byte for byte.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Fractional digits carried by every amount.
pub const SCALE: u32 = 9;
/// Nano-credits in one credit.
pub const NANOS_PER_CREDIT: i64 = 1_000_000_000;

/// An exact signed amount of credit, in nano-credits (1e-9 credit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Credits(i64);

/// Why a text could not be read as an amount of credit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("amount {0:?} is not a decimal number (expected e.g. \"12.5\")")]
    NotANumber(String),
    #[error("amount {0:?} has more than 9 decimal places")]
    TooPrecise(String),
    #[error("amount {0:?} is out of range")]
    OutOfRange(String),
}

impl Credits {
    pub const ZERO: Credits = Credits(0);
    pub const MAX: Credits = Credits(i64::MAX);

    /// An amount from its count of nano-credits (the stored form).
    pub const fn from_nanos(nanos: i64) -> Self {
        Credits(nanos)
    }

    /// A whole number of credits; `None` if it does not fit.
    pub const fn from_whole(credits: i64) -> Option<Self> {
        match credits.checked_mul(NANOS_PER_CREDIT) {
            Some(n) => Some(Credits(n)),
            None => None,
        }
    }

    /// The stored form: a count of nano-credits.
    pub const fn nanos(self) -> i64 {
        self.0
    }

    /// An exact decimal, refusing anything with more than 9 fractional digits.
    pub fn from_decimal(value: Decimal) -> Result<Self, AmountError> {
        let normalized = value.normalize();
        if normalized.scale() > SCALE {
            return Err(AmountError::TooPrecise(value.to_string()));
        }
        let nanos = normalized
            .checked_mul(Decimal::from(NANOS_PER_CREDIT))
            .and_then(|d| i64::try_from(d).ok())
            .ok_or_else(|| AmountError::OutOfRange(value.to_string()))?;
        Ok(Credits(nanos))
    }

    /// The exact decimal value.
    pub fn to_decimal(self) -> Decimal {
        Decimal::new(self.0, SCALE).normalize()
    }

    pub fn checked_add(self, other: Credits) -> Option<Credits> {
        self.0.checked_add(other.0).map(Credits)
    }

    pub fn checked_sub(self, other: Credits) -> Option<Credits> {
        self.0.checked_sub(other.0).map(Credits)
    }

    pub fn checked_neg(self) -> Option<Credits> {
        self.0.checked_neg().map(Credits)
    }

    pub const fn is_positive(self) -> bool {
        self.0 > 0
    }

    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    pub fn min(self, other: Credits) -> Credits {
        Credits(self.0.min(other.0))
    }

    pub fn max(self, other: Credits) -> Credits {
        Credits(self.0.max(other.0))
    }
}

impl FromStr for Credits {
    type Err = AmountError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        // Only plain decimals: digits, one point, an optional leading sign. `rust_decimal` would
        // also take exponents and underscores, which are not how anyone writes money.
        let body = trimmed.strip_prefix(['-', '+']).unwrap_or(trimmed);
        let well_formed = !body.is_empty()
            && body.chars().all(|c| c.is_ascii_digit() || c == '.')
            && body.chars().filter(|&c| c == '.').count() <= 1
            && body.chars().any(|c| c.is_ascii_digit());
        if !well_formed {
            return Err(AmountError::NotANumber(text.to_owned()));
        }
        if let Some((_, fraction)) = body.split_once('.')
            && fraction.trim_end_matches('0').len() > SCALE as usize
        {
            return Err(AmountError::TooPrecise(text.to_owned()));
        }
        // The text is a well-formed decimal by now, so the only way parsing fails is size.
        let value = Decimal::from_str_exact(trimmed)
            .map_err(|_| AmountError::OutOfRange(text.to_owned()))?;
        Credits::from_decimal(value).map_err(|e| match e {
            AmountError::OutOfRange(_) => AmountError::OutOfRange(text.to_owned()),
            AmountError::TooPrecise(_) => AmountError::TooPrecise(text.to_owned()),
            AmountError::NotANumber(_) => AmountError::NotANumber(text.to_owned()),
        })
    }
}

impl fmt::Display for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let whole = abs / NANOS_PER_CREDIT as u64;
        let frac = abs % NANOS_PER_CREDIT as u64;
        if frac == 0 {
            write!(f, "{sign}{whole}")
        } else {
            let digits = format!("{frac:09}");
            write!(f, "{sign}{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

impl Serialize for Credits {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Credits {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints_exact_decimals() {
        let cases = [
            ("12.5", 12_500_000_000, "12.5"),
            ("0.000000001", 1, "0.000000001"),
            ("-3", -3_000_000_000, "-3"),
            ("+7.10", 7_100_000_000, "7.1"),
            ("100", 100_000_000_000, "100"),
            (" 1.000000000000 ", 1_000_000_000, "1"),
            (".5", 500_000_000, "0.5"),
        ];
        for (text, nanos, shown) in cases {
            let c: Credits = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(c.nanos(), nanos, "{text}");
            assert_eq!(c.to_string(), shown, "{text}");
        }
    }

    #[test]
    fn refuses_what_is_not_exact_money() {
        let cases = [
            ("", "is not a decimal number"),
            ("abc", "is not a decimal number"),
            ("1e3", "is not a decimal number"),
            ("1.2.3", "is not a decimal number"),
            ("1_000", "is not a decimal number"),
            ("-", "is not a decimal number"),
            ("NaN", "is not a decimal number"),
            ("0.0000000001", "more than 9 decimal places"),
            ("10000000000", "out of range"),
            ("99999999999999999999999999999999", "out of range"),
        ];
        for (text, message) in cases {
            let err = text.parse::<Credits>().expect_err(text);
            assert!(err.to_string().contains(message), "{text}: {err}");
        }
    }

    #[test]
    fn json_is_a_decimal_string() {
        let c = Credits::from_nanos(1_250_000_000);
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"1.25\"");
        let back: Credits = serde_json::from_str("\"1.25\"").unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<Credits>("1.25").is_err());
    }

    proptest! {
        #[test]
        fn text_round_trips(nanos in any::<i64>()) {
            let c = Credits::from_nanos(nanos);
            let back: Credits = c.to_string().parse().unwrap();
            prop_assert_eq!(back, c);
            prop_assert_eq!(Credits::from_decimal(c.to_decimal()).unwrap(), c);
        }
    }
}
