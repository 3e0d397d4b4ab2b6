//! Read-only views of the catalog tables (credit packages, power levels) and of a user's lots.

use rusqlite::{Connection, params};
use serde::Serialize;
use time::OffsetDateTime;
use tollgate_schema::money::Credits;

use super::LedgerError;
use super::rules::{self, LiveLot};
use super::types::{Lot, parse_stored_time};

/// A credit package as sold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Package {
    pub id: i64,
    pub name: String,
    pub credits: Credits,
    pub price_usd_cents: i64,
    pub discount_percent: i64,
    pub min_tier: Option<String>,
    pub is_active: bool,
    pub is_featured: bool,
    pub sort_order: i64,
    pub description: Option<String>,
    pub badge_text: Option<String>,
}

/// A power level's routing and pricing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PowerLevelConfig {
    pub power_level: String,
    pub name: String,
    pub description: Option<String>,
    pub preferred_providers: Vec<String>,
    pub fallback_strategy: String,
    pub cost_multiplier: rust_decimal::Decimal,
    pub max_latency_ms: i64,
    pub min_quality_score: i64,
    pub is_active: bool,
}

pub fn packages(conn: &Connection) -> Result<Vec<Package>, LedgerError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, credits, price_usd_cents, discount_percent, min_tier, is_active, \
         is_featured, sort_order, description, badge_text FROM credit_packages ORDER BY sort_order, id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(Package {
            id: r.get(0)?,
            name: r.get(1)?,
            credits: Credits::from_nanos(r.get(2)?),
            price_usd_cents: r.get(3)?,
            discount_percent: r.get(4)?,
            min_tier: r.get(5)?,
            is_active: r.get(6)?,
            is_featured: r.get(7)?,
            sort_order: r.get(8)?,
            description: r.get(9)?,
            badge_text: r.get(10)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn power_levels(conn: &Connection) -> Result<Vec<PowerLevelConfig>, LedgerError> {
    let mut stmt = conn.prepare_cached(
        "SELECT power_level, name, description, preferred_providers, fallback_strategy, \
         cost_multiplier_permille, max_latency_ms, min_quality_score, is_active \
         FROM power_level_configs ORDER BY cost_multiplier_permille",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, i64>(5)?,
            r.get::<_, i64>(6)?,
            r.get::<_, i64>(7)?,
            r.get::<_, bool>(8)?,
        ))
    })?;
    let mut levels = Vec::new();
    for row in rows {
        let (
            power_level,
            name,
            description,
            providers,
            fallback,
            permille,
            latency,
            quality,
            active,
        ) = row?;
        let preferred_providers = serde_json::from_str(&providers).map_err(|e| {
            LedgerError::Corrupt(format!("preferred_providers of {power_level}: {e}"))
        })?;
        levels.push(PowerLevelConfig {
            power_level,
            name,
            description,
            preferred_providers,
            fallback_strategy: fallback,
            cost_multiplier: rust_decimal::Decimal::new(permille, 3).normalize(),
            max_latency_ms: latency,
            min_quality_score: quality,
            is_active: active,
        });
    }
    Ok(levels)
}

/// A user's lots with credit left, in the order a debit at `now` would burn them.
pub fn live_lots(
    conn: &Connection,
    user_id: &str,
    now: OffsetDateTime,
) -> Result<Vec<Lot>, LedgerError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, kind, amount, remaining, priority, expires_at, created_at FROM credit_lots \
         WHERE user_id = ?1 AND remaining > 0",
    )?;
    let rows = stmt.query_map(params![user_id], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, Option<String>>(5)?,
            r.get::<_, String>(6)?,
        ))
    })?;
    let mut lots = Vec::new();
    for row in rows {
        let (id, kind, amount, remaining, priority, expires_at, created_at) = row?;
        lots.push(Lot {
            id,
            kind: kind.parse().map_err(LedgerError::Corrupt)?,
            amount: Credits::from_nanos(amount),
            remaining: Credits::from_nanos(remaining),
            priority,
            expires_at,
            created_at,
        });
    }
    // Order them as a debit now would burn them.
    let mut keyed = lots
        .into_iter()
        .map(|l| {
            let live = LiveLot {
                id: l.id,
                remaining: l.remaining,
                priority: l.priority,
                expires_at: l.expires_at.as_deref().map(parse_stored_time).transpose()?,
            };
            Ok((rules::burn_key(&live, now), l))
        })
        .collect::<Result<Vec<_>, LedgerError>>()?;
    keyed.sort_by_key(|(key, _)| *key);
    let lots: Vec<Lot> = keyed.into_iter().map(|(_, l)| l).collect();
    Ok(lots)
}
