//! Checks shared by every central operation, matching what the agents accept (so an event the
//! server writes is never refused by an agent for its shape).
//!
//! Guarantees: each check names the field it refuses and why; limits are named constants; amounts
//! are parsed from exact decimal text only (never a float).

use tollgate_schema::money::Credits;
use tollgate_schema::vocabulary::{PowerLevel, Tier};

use super::CentralError;

/// Longest user id (the agents' limit, and `user_credits.user_id`'s CHECK).
pub const USER_ID_LEN_MAX: usize = 128;
/// Longest operation id an admin may give (the key adds a short prefix; keys are ≤ 255).
pub const OPERATION_ID_LEN_MAX: usize = 200;
/// Longest note on a credit operation (the agents' limit).
pub const NOTE_LEN_MAX: usize = 1_000;
/// Longest free text in the catalog (descriptions, badges; the agents' limit).
pub const CATALOG_TEXT_LEN_MAX: usize = 1_000;
/// Longest package or power-level display name (`credit_packages.name`'s CHECK).
pub const NAME_LEN_MAX: usize = 100;

/// A user id: 1 to [`USER_ID_LEN_MAX`] bytes of ASCII letters, digits and `._@+-` (what the
/// agents accept).
pub fn user_id(field: &'static str, id: &str) -> Result<(), CentralError> {
    if id.is_empty() || id.len() > USER_ID_LEN_MAX {
        return Err(CentralError::invalid(
            field,
            format!(
                "a user id is 1 to {USER_ID_LEN_MAX} characters, got {}",
                id.len()
            ),
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._@+-".contains(*c)))
    {
        return Err(CentralError::invalid(
            field,
            format!("{c:?} is not allowed in a user id (letters, digits and ._@+- only)"),
        ));
    }
    Ok(())
}

/// An admin's operation id: 1 to [`OPERATION_ID_LEN_MAX`] bytes, no control characters or spaces.
pub fn operation_id(id: &str) -> Result<(), CentralError> {
    if id.is_empty() || id.len() > OPERATION_ID_LEN_MAX {
        return Err(CentralError::invalid(
            "operation_id",
            format!(
                "an operation id is 1 to {OPERATION_ID_LEN_MAX} bytes, got {}",
                id.len()
            ),
        ));
    }
    if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(CentralError::invalid(
            "operation_id",
            "an operation id contains no spaces or control characters",
        ));
    }
    Ok(())
}

/// Optional one-line text of at most `max` bytes.
pub fn text(field: &'static str, value: Option<&str>, max: usize) -> Result<(), CentralError> {
    let Some(value) = value else { return Ok(()) };
    if value.len() > max {
        return Err(CentralError::invalid(
            field,
            format!("{} bytes, the limit is {max}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(CentralError::invalid(
            field,
            "contains a control character (one line of printable text only)",
        ));
    }
    Ok(())
}

/// A required display name: not blank, at most [`NAME_LEN_MAX`] characters, printable.
pub fn name(field: &'static str, value: &str) -> Result<(), CentralError> {
    if value.trim().is_empty() {
        return Err(CentralError::invalid(field, "must not be empty"));
    }
    if value.chars().count() > NAME_LEN_MAX {
        return Err(CentralError::invalid(
            field,
            format!("longer than {NAME_LEN_MAX} characters"),
        ));
    }
    text(field, Some(value), NAME_LEN_MAX * 4)
}

/// A [`Tier`], by its spelling.
pub fn tier(field: &'static str, value: &str) -> Result<Tier, CentralError> {
    value
        .parse()
        .map_err(|why: String| CentralError::invalid(field, why))
}

/// A [`PowerLevel`], by its spelling.
pub fn power_level(field: &'static str, value: &str) -> Result<PowerLevel, CentralError> {
    value
        .parse()
        .map_err(|why: String| CentralError::invalid(field, why))
}

/// A tier and a level it allows (the agents' rule: they refuse any other).
pub fn tier_and_level(tier_text: &str, level_text: &str) -> Result<(), CentralError> {
    let tier = tier("tier", tier_text)?;
    let level = power_level("power_level", level_text)?;
    tier.check_level(level)
        .map_err(|why| CentralError::invalid("power_level", why))
}

pub fn one_of(field: &'static str, value: &str, allowed: &[&str]) -> Result<(), CentralError> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(CentralError::invalid(
            field,
            format!("{value:?} is not one of {}", allowed.join(", ")),
        ))
    }
}

/// Exact decimal credits from text, naming the field on refusal.
pub fn credits(field: &'static str, text: &str) -> Result<Credits, CentralError> {
    text.parse::<Credits>()
        .map_err(|e| CentralError::invalid(field, e.to_string()))
}

/// Not negative.
pub fn non_negative(field: &'static str, amount: Credits) -> Result<(), CentralError> {
    if amount.is_negative() {
        return Err(CentralError::invalid(
            field,
            format!("{amount} is negative"),
        ));
    }
    Ok(())
}

/// A spend cap as text: exact decimal credits, or `none` for no cap.
pub fn spend_cap(field: &'static str, text: &str) -> Result<super::users::SpendCap, CentralError> {
    if text.eq_ignore_ascii_case("none") {
        return Ok(super::users::SpendCap::Unlimited);
    }
    credits(field, text).map(super::users::SpendCap::Credits)
}

/// An overdraft line: exact decimal credits (positive), or "none".
pub fn overdraft(field: &'static str, text: &str) -> Result<super::users::Overdraft, CentralError> {
    if text.eq_ignore_ascii_case("none") {
        return Ok(super::users::Overdraft::None);
    }
    let line = credits(field, text)?;
    if !line.is_positive() {
        return Err(CentralError::invalid(
            field,
            format!("must be positive, or none for no line; got {line}"),
        ));
    }
    Ok(super::users::Overdraft::UpTo(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_match_the_agents_rule() {
        for ok in ["u", "alice@example.com", "a.b_c+d-e", &"x".repeat(128)] {
            assert!(user_id("user_id", ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "ü", "a/b", &"x".repeat(129), "a\nb"] {
            let err = user_id("user_id", bad).unwrap_err().to_string();
            assert!(err.starts_with("user_id: "), "{err}");
        }
    }

    #[test]
    fn operation_ids_and_text_have_limits() {
        assert!(operation_id("op-1").is_ok());
        assert!(operation_id("").is_err());
        assert!(operation_id("a b").is_err());
        assert!(operation_id(&"x".repeat(OPERATION_ID_LEN_MAX + 1)).is_err());
        assert!(text("note", Some("fine"), 10).is_ok());
        assert!(text("note", Some("a\u{7}"), 10).is_err());
        assert!(text("note", Some("12345678901"), 10).is_err());
        assert!(name("name", "  ").is_err());
    }

    #[test]
    fn credits_are_exact_or_refused_naming_the_field() {
        assert_eq!(
            credits("amount", "1.5").unwrap(),
            Credits::from_nanos(1_500_000_000)
        );
        let err = credits("amount", "0.0000000001").unwrap_err().to_string();
        assert!(
            err.starts_with("amount: ") && err.contains("9 decimal places"),
            "{err}"
        );
        assert!(credits("amount", "1e3").is_err());
        let refused = tier_and_level("trial", "precision")
            .unwrap_err()
            .to_string();
        assert!(
            refused.starts_with("power_level: ") && refused.contains("eco"),
            "{refused}"
        );
        assert!(tier_and_level("starter", "balanced").is_ok());
        assert!(
            tier("tier", "gold")
                .unwrap_err()
                .to_string()
                .contains("enterprise")
        );
    }
}
