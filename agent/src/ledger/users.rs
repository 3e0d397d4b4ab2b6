//! Users: creating, changing, reading and listing `user_credits` rows.
//!
//! Guarantees: a user id is 1–128 characters of letters, digits and `. _ @ + -`; a new user with
//! a monthly allowance gets the first cycle's allowance at once; reading a user brings them up to
//! date first (renewal, expiry), so what is shown is what the next request would see.

use rusqlite::{Connection, params};
use tollgate_schema::money::Credits;

use super::LedgerError;
use super::clock::{add_months, to_text};
use super::rules;
use super::session::{Session, UserRow};
use super::types::{NewUser, UserAccount, UserChanges};

/// Longest user id.
pub const USER_ID_LEN_MAX: usize = 128;

pub fn validate_user_id(user_id: &str) -> Result<(), LedgerError> {
    let ok = !user_id.is_empty()
        && user_id.len() <= USER_ID_LEN_MAX
        && user_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@+-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(LedgerError::InvalidUserId(user_id.to_owned()))
    }
}

fn validate_limits(allowance: Credits, cap: Option<Credits>) -> Result<(), LedgerError> {
    if allowance.is_negative() {
        return Err(LedgerError::InvalidAmount {
            amount: allowance,
            why: "a monthly allowance cannot be negative",
        });
    }
    if let Some(cap) = cap.filter(|c| c.is_negative()) {
        return Err(LedgerError::InvalidAmount {
            amount: cap,
            why: "a monthly spend cap cannot be negative",
        });
    }
    Ok(())
}

impl Session<'_> {
    pub fn create_user(&mut self, new: &NewUser) -> Result<UserAccount, LedgerError> {
        validate_user_id(&new.user_id)?;
        validate_limits(new.monthly_allowance, new.monthly_spend_cap)?;
        let inserted = self.conn.prepare_cached(
            "INSERT INTO user_credits (user_id, subscription_tier, power_level, monthly_allowance, \
             monthly_spend_cap, billing_cycle_start, billing_cycle_end, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?6, ?6) ON CONFLICT (user_id) DO NOTHING",
        )?
        .execute(params![
            new.user_id,
            new.tier.as_str(),
            new.power_level.as_str(),
            new.monthly_allowance.nanos(),
            new.monthly_spend_cap.map(Credits::nanos),
            self.now_text,
            to_text(add_months(self.now, 1)),
        ])?;
        if inserted == 0 {
            return Err(LedgerError::UserExists(new.user_id.clone()));
        }
        let mut user = self.touch(&new.user_id)?;
        if new.monthly_allowance.is_positive() {
            self.grant_allowance(&mut user)?;
        }
        self.save_user(&mut user)?;
        self.account(&new.user_id)
    }

    pub fn change_user(
        &mut self,
        user_id: &str,
        changes: &UserChanges,
    ) -> Result<UserAccount, LedgerError> {
        let mut user = self.touch(user_id)?;
        validate_limits(
            changes.monthly_allowance.unwrap_or(Credits::ZERO),
            changes.monthly_spend_cap.flatten(),
        )?;
        self.save_user(&mut user)?;
        let set = |column: &str, value: &dyn rusqlite::ToSql| -> Result<(), LedgerError> {
            let sql = format!(
                "UPDATE user_credits SET {column} = ?2, updated_at = ?3 WHERE user_id = ?1"
            );
            self.conn
                .execute(&sql, params![user_id, value, self.now_text])?;
            Ok(())
        };
        if let Some(tier) = changes.tier {
            set("subscription_tier", &tier.as_str())?;
        }
        if let Some(level) = changes.power_level {
            set("power_level", &level.as_str())?;
        }
        if let Some(allowance) = changes.monthly_allowance {
            set("monthly_allowance", &allowance.nanos())?;
        }
        if let Some(cap) = changes.monthly_spend_cap {
            set("monthly_spend_cap", &cap.map(Credits::nanos))?;
        }
        if let Some(auto_renew) = changes.auto_renew {
            set("auto_renew", &auto_renew)?;
        }
        self.account(user_id)
    }

    /// The user brought up to date, as the next request would see them.
    pub fn account(&mut self, user_id: &str) -> Result<UserAccount, LedgerError> {
        let mut user = self.touch(user_id)?;
        self.save_user(&mut user)?;
        read_account(self.conn, &user)
    }
}

fn read_account(conn: &Connection, user: &UserRow) -> Result<UserAccount, LedgerError> {
    let (tier, level, auto_renew): (String, String, bool) = conn
        .prepare_cached(
            "SELECT subscription_tier, power_level, auto_renew FROM user_credits WHERE id = ?1",
        )?
        .query_row([user.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(UserAccount {
        user_id: user.user_id.clone(),
        balance: user.balance,
        held: user.held,
        available: user.account().available(),
        lifetime_credits_purchased: user.lifetime_purchased,
        tier: tier.parse().map_err(LedgerError::Corrupt)?,
        power_level: level.parse().map_err(LedgerError::Corrupt)?,
        auto_renew,
        billing_cycle_start: user.cycle_start.clone(),
        billing_cycle_end: user.cycle_end.clone(),
        monthly_allowance: user.monthly_allowance,
        credits_used_this_month: user.used_this_month,
        monthly_spend_cap: user.spend_cap,
        quota_usage_percent: rules::quota_usage_percent(
            user.used_this_month,
            user.monthly_allowance,
        ),
        created_at: user.created_at.clone(),
    })
}

/// Every user id, in order.
pub fn user_ids(conn: &Connection) -> Result<Vec<String>, LedgerError> {
    let mut stmt = conn.prepare_cached("SELECT user_id FROM user_credits ORDER BY user_id")?;
    let ids = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(ids)
}
