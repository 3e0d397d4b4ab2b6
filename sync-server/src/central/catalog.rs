//! The catalog centrally: credit packages and power levels, sent to every agent.
//!
//! Guarantees:
//! - [`set_package`] / [`set_power_level`] validate everything first (the same rules the agents
//!   apply, so no agent refuses the event), then in one transaction claim the operation key,
//!   upsert the central row and write a `PackageUpsert` / `PowerLevelUpsert` event to the inbox of
//!   EVERY agent that is not revoked (locking agents in `agent_id` order, so two catalog changes
//!   never deadlock). Same key and content → the stored result, no new events.
//! - Prices are exact: whole cents (`i64`) ↔ `NUMERIC(12,2)`; credits `NUMERIC(38,9)`; a cost
//!   multiplier is a whole number of thousandths (`NUMERIC(6,3)`), sent as its shortest decimal.

use deadpool_postgres::Pool;
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::{Deserialize, Serialize};
use tollgate_schema::wire::{EventBody, FALLBACK_STRATEGIES, PackageSpec, PowerLevelSpec};
use uuid::Uuid;

use super::operation::{self, Begin, Claim};
use super::{Applied, CentralError, inbox, validate};

/// Highest package price in cents (`credit_packages.price_usd` is `NUMERIC(12,2)`).
pub const PRICE_CENTS_MAX: i64 = 999_999_999_999;
/// Most preferred providers of one power level.
pub const PROVIDERS_MAX: usize = 16;
/// Longest provider name.
pub const PROVIDER_LEN_MAX: usize = 64;
/// Largest cost multiplier (`power_level_configs.cost_multiplier` is `NUMERIC(6,3)`).
pub const COST_MULTIPLIER_MAX: Decimal = Decimal::from_parts(999_999, 0, 0, false, 3);

/// One agent an event went to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub agent: String,
    pub agent_id: Uuid,
    pub inbox_seq: i64,
}

/// What a catalog change did (stored with its key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogResult<T> {
    pub operation_key: String,
    #[serde(flatten)]
    pub item: T,
    /// Every agent the change was sent to.
    pub sent_to: Vec<Delivery>,
}

/// Checks a package as the agents will.
pub fn validate_package(p: &PackageSpec) -> Result<(), CentralError> {
    validate::name("name", &p.name)?;
    if !p.credits.is_positive() {
        return Err(CentralError::invalid(
            "credits",
            format!("must be positive, got {}", p.credits),
        ));
    }
    if !(1..=PRICE_CENTS_MAX).contains(&p.price_usd_cents) {
        return Err(CentralError::invalid(
            "price_usd",
            format!(
                "must be positive and at most {} USD",
                Decimal::new(PRICE_CENTS_MAX, 2)
            ),
        ));
    }
    if !(0..=100).contains(&p.discount_percent) {
        return Err(CentralError::invalid(
            "discount_percent",
            format!("{} is not between 0 and 100", p.discount_percent),
        ));
    }
    if let Some(tier) = &p.min_tier {
        validate::tier("min_tier", tier)?;
    }
    if i32::try_from(p.sort_order).is_err() {
        return Err(CentralError::invalid(
            "sort_order",
            format!("{} does not fit a 32-bit integer", p.sort_order),
        ));
    }
    validate::text(
        "description",
        p.description.as_deref(),
        validate::CATALOG_TEXT_LEN_MAX,
    )?;
    validate::text(
        "badge_text",
        p.badge_text.as_deref(),
        validate::CATALOG_TEXT_LEN_MAX,
    )?;
    Ok(())
}

/// A cost multiplier's exact value: plain decimal digits, positive, whole thousandths, at most
/// [`COST_MULTIPLIER_MAX`].
pub fn cost_multiplier(text: &str) -> Result<Decimal, CentralError> {
    let refuse = |why: &str| CentralError::invalid("cost_multiplier", format!("{text:?} {why}"));
    let value = plain_decimal(text, "cost_multiplier", "0.7", 3)?;
    if value <= Decimal::ZERO {
        return Err(refuse("is not positive"));
    }
    if value > COST_MULTIPLIER_MAX {
        return Err(refuse(&format!("is larger than {COST_MULTIPLIER_MAX}")));
    }
    Ok(value.normalize())
}

/// Checks a power level as the agents will; returns the exact multiplier.
pub fn validate_power_level(p: &PowerLevelSpec) -> Result<Decimal, CentralError> {
    validate::power_level("power_level", &p.power_level)?;
    validate::name("name", &p.name)?;
    validate::text(
        "description",
        p.description.as_deref(),
        validate::CATALOG_TEXT_LEN_MAX,
    )?;
    if p.preferred_providers.is_empty() || p.preferred_providers.len() > PROVIDERS_MAX {
        return Err(CentralError::invalid(
            "preferred_providers",
            format!("list 1 to {PROVIDERS_MAX} providers, in order"),
        ));
    }
    for provider in &p.preferred_providers {
        if provider.trim().is_empty() {
            return Err(CentralError::invalid(
                "preferred_providers",
                "a provider name is empty",
            ));
        }
        validate::text("preferred_providers", Some(provider), PROVIDER_LEN_MAX)?;
    }
    validate::one_of(
        "fallback_strategy",
        &p.fallback_strategy,
        FALLBACK_STRATEGIES,
    )?;
    let multiplier = cost_multiplier(&p.cost_multiplier)?;
    if !(1..=i64::from(i32::MAX)).contains(&p.max_latency_ms) {
        return Err(CentralError::invalid(
            "max_latency_ms",
            format!("{} is not a positive 32-bit number", p.max_latency_ms),
        ));
    }
    if !(0..=100).contains(&p.min_quality_score) {
        return Err(CentralError::invalid(
            "min_quality_score",
            format!("{} is not between 0 and 100", p.min_quality_score),
        ));
    }
    Ok(multiplier)
}

/// Creates or replaces a package (by name) and sends it to every agent.
pub async fn set_package(
    pool: &Pool,
    package: &PackageSpec,
    operation_key: &str,
    actor: &str,
) -> Result<Applied<CatalogResult<PackageSpec>>, CentralError> {
    validate_package(package)?;
    let fingerprint = operation::fingerprint(&(operation::kind::PACKAGE_UPSERT, package))?;
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    let claim = Claim {
        key: operation_key,
        kind: operation::kind::PACKAGE_UPSERT,
        fingerprint: &fingerprint,
        user_id: None,
        amount: None,
        actor,
    };
    if let Begin::Replay(done) = operation::begin(&tx, claim).await? {
        return Ok(Applied::replayed(done));
    }
    let sort_order = i32::try_from(package.sort_order)
        .map_err(|_| CentralError::invalid("sort_order", "does not fit"))?;
    let discount = i32::try_from(package.discount_percent)
        .map_err(|_| CentralError::invalid("discount_percent", "does not fit"))?;
    tx.execute(
        "INSERT INTO credit_packages (name, credits, price_usd, discount_percent, min_tier, \
         is_active, is_featured, sort_order, description, badge_text) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (name) DO UPDATE SET credits = excluded.credits, \
         price_usd = excluded.price_usd, discount_percent = excluded.discount_percent, \
         min_tier = excluded.min_tier, is_active = excluded.is_active, \
         is_featured = excluded.is_featured, sort_order = excluded.sort_order, \
         description = excluded.description, badge_text = excluded.badge_text",
        &[
            &package.name,
            &package.credits.to_decimal(),
            &Decimal::new(package.price_usd_cents, 2),
            &discount,
            &package.min_tier,
            &package.is_active,
            &package.is_featured,
            &sort_order,
            &package.description,
            &package.badge_text,
        ],
    )
    .await?;
    let sent_to = broadcast(
        &tx,
        &EventBody::PackageUpsert(package.clone()),
        operation_key,
    )
    .await?;
    let result = CatalogResult {
        operation_key: operation_key.to_owned(),
        item: package.clone(),
        sent_to,
    };
    operation::finish(&tx, operation_key, None, &result).await?;
    tx.commit().await?;
    let events_written = result.sent_to.len() as u64;
    Ok(Applied {
        result,
        replayed: false,
        events_written,
    })
}

/// Replaces a power level's configuration and sends it to every agent. The multiplier is sent
/// as its shortest exact decimal ("1.0" → "1").
pub async fn set_power_level(
    pool: &Pool,
    level: &PowerLevelSpec,
    operation_key: &str,
    actor: &str,
) -> Result<Applied<CatalogResult<PowerLevelSpec>>, CentralError> {
    let multiplier = validate_power_level(level)?;
    let level = PowerLevelSpec {
        cost_multiplier: multiplier.to_string(),
        ..level.clone()
    };
    let fingerprint = operation::fingerprint(&(operation::kind::POWER_LEVEL_UPSERT, &level))?;
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    let claim = Claim {
        key: operation_key,
        kind: operation::kind::POWER_LEVEL_UPSERT,
        fingerprint: &fingerprint,
        user_id: None,
        amount: None,
        actor,
    };
    if let Begin::Replay(done) = operation::begin(&tx, claim).await? {
        return Ok(Applied::replayed(done));
    }
    let providers = serde_json::to_value(&level.preferred_providers)
        .map_err(|e| CentralError::Internal(anyhow::anyhow!("providers: {e}")))?;
    let latency = i32::try_from(level.max_latency_ms)
        .map_err(|_| CentralError::invalid("max_latency_ms", "does not fit"))?;
    let quality = i32::try_from(level.min_quality_score)
        .map_err(|_| CentralError::invalid("min_quality_score", "does not fit"))?;
    tx.execute(
        "INSERT INTO power_level_configs (power_level, name, description, preferred_providers, \
         fallback_strategy, cost_multiplier, max_latency_ms, min_quality_score, is_active) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (power_level) DO UPDATE SET name = excluded.name, \
         description = excluded.description, preferred_providers = excluded.preferred_providers, \
         fallback_strategy = excluded.fallback_strategy, \
         cost_multiplier = excluded.cost_multiplier, max_latency_ms = excluded.max_latency_ms, \
         min_quality_score = excluded.min_quality_score, is_active = excluded.is_active",
        &[
            &level.power_level,
            &level.name,
            &level.description,
            &providers,
            &level.fallback_strategy,
            &multiplier,
            &latency,
            &quality,
            &level.is_active,
        ],
    )
    .await?;
    let sent_to = broadcast(
        &tx,
        &EventBody::PowerLevelUpsert(level.clone()),
        operation_key,
    )
    .await?;
    let result = CatalogResult {
        operation_key: operation_key.to_owned(),
        item: level,
        sent_to,
    };
    operation::finish(&tx, operation_key, None, &result).await?;
    tx.commit().await?;
    let events_written = result.sent_to.len() as u64;
    Ok(Applied {
        result,
        replayed: false,
        events_written,
    })
}

/// Writes `body` to every non-revoked agent's inbox, in `agent_id` order.
async fn broadcast(
    tx: &tokio_postgres::Transaction<'_>,
    body: &EventBody,
    operation_key: &str,
) -> Result<Vec<Delivery>, CentralError> {
    let agents = tx
        .query(
            "SELECT agent_id, name FROM agents WHERE status <> 'revoked' ORDER BY agent_id",
            &[],
        )
        .await?;
    let mut sent = Vec::with_capacity(agents.len());
    for agent in agents {
        let agent_id: Uuid = agent.get("agent_id");
        let written = inbox::append(tx, agent_id, body, Some(operation_key)).await?;
        sent.push(Delivery {
            agent: agent.get("name"),
            agent_id,
            inbox_seq: written.seq,
        });
    }
    Ok(sent)
}

/// A package as listed (the wire spec plus the price as text and timestamps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageView {
    #[serde(flatten)]
    pub spec: PackageSpec,
    /// Exact USD, e.g. "45.00".
    pub price_usd: String,
    pub updated_at: String,
}

/// Every package, by sort order then name.
pub async fn packages(client: &tokio_postgres::Client) -> Result<Vec<PackageView>, CentralError> {
    let rows = client
        .query(
            "SELECT name, credits, price_usd, discount_percent, min_tier, is_active, \
             is_featured, sort_order, description, badge_text, updated_at \
             FROM credit_packages ORDER BY sort_order, name",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let price: Decimal = r.get("price_usd");
            let cents = price
                .checked_mul(Decimal::from(100))
                .and_then(|c| c.to_i64())
                .ok_or_else(|| {
                    CentralError::Internal(anyhow::anyhow!("a stored price is out of range"))
                })?;
            let discount: i32 = r.get("discount_percent");
            let sort: i32 = r.get("sort_order");
            Ok(PackageView {
                spec: PackageSpec {
                    name: r.get("name"),
                    credits: super::credits_from_db(r.get("credits"))?,
                    price_usd_cents: cents,
                    discount_percent: i64::from(discount),
                    min_tier: r.get("min_tier"),
                    is_active: r.get("is_active"),
                    is_featured: r.get("is_featured"),
                    sort_order: i64::from(sort),
                    description: r.get("description"),
                    badge_text: r.get("badge_text"),
                },
                price_usd: format!("{:.2}", price),
                updated_at: super::rfc3339(r.get("updated_at")),
            })
        })
        .collect()
}

/// One package by name.
pub async fn package(
    client: &tokio_postgres::Client,
    name: &str,
) -> Result<Option<PackageView>, CentralError> {
    Ok(packages(client)
        .await?
        .into_iter()
        .find(|p| p.spec.name == name))
}

/// Every power level, in the order eco, balanced, precision.
pub async fn power_levels(
    client: &tokio_postgres::Client,
) -> Result<Vec<PowerLevelSpec>, CentralError> {
    let rows = client
        .query(
            "SELECT power_level, name, description, preferred_providers, fallback_strategy, \
             cost_multiplier, max_latency_ms, min_quality_score, is_active \
             FROM power_level_configs \
             ORDER BY array_position(ARRAY['eco', 'balanced', 'precision'], power_level)",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let providers: serde_json::Value = r.get("preferred_providers");
            let providers: Vec<String> = serde_json::from_value(providers).map_err(|e| {
                CentralError::Internal(anyhow::anyhow!("stored providers unreadable: {e}"))
            })?;
            let multiplier: Decimal = r.get("cost_multiplier");
            let latency: i32 = r.get("max_latency_ms");
            let quality: i32 = r.get("min_quality_score");
            Ok(PowerLevelSpec {
                power_level: r.get("power_level"),
                name: r.get("name"),
                description: r.get("description"),
                preferred_providers: providers,
                fallback_strategy: r.get("fallback_strategy"),
                cost_multiplier: multiplier.normalize().to_string(),
                max_latency_ms: i64::from(latency),
                min_quality_score: i64::from(quality),
                is_active: r.get("is_active"),
            })
        })
        .collect()
}

/// A non-negative decimal written plainly (digits and at most one point: no sign, exponent or
/// spaces) with at most `places` decimal places, exactly.
fn plain_decimal(
    text: &str,
    field: &'static str,
    example: &str,
    places: u32,
) -> Result<Decimal, CentralError> {
    let refuse = |why: String| CentralError::invalid(field, format!("{text:?} {why}"));
    let plain = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && text.bytes().filter(|&b| b == b'.').count() <= 1
        && text.bytes().any(|b| b.is_ascii_digit());
    if !plain {
        return Err(refuse(format!(
            "is not a plain decimal number like \"{example}\""
        )));
    }
    let value = Decimal::from_str_exact(text).map_err(|_| refuse("is out of range".to_owned()))?;
    if value.normalize().scale() > places {
        return Err(refuse(format!("has more than {places} decimal places")));
    }
    Ok(value)
}

/// Whole cents from an exact USD text with at most 2 decimals ("45", "45.5", "45.00").
pub fn price_cents(text: &str) -> Result<i64, CentralError> {
    let refuse = |why: &str| CentralError::invalid("price_usd", format!("{text:?} {why}"));
    let value = plain_decimal(text, "price_usd", "45.00", 2)?;
    value
        .checked_mul(Decimal::from(100))
        .and_then(|cents| cents.to_i64())
        .ok_or_else(|| refuse("is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipliers_and_prices_are_exact() {
        assert_eq!(cost_multiplier("0.7").unwrap().to_string(), "0.7");
        assert_eq!(cost_multiplier("1.0").unwrap().to_string(), "1");
        for bad in ["", "0", "-1", "0.0005", "1e3", "1000", " 1"] {
            assert!(cost_multiplier(bad).is_err(), "{bad:?}");
        }
        assert_eq!(price_cents("45").unwrap(), 4500);
        assert_eq!(price_cents("45.5").unwrap(), 4550);
        assert_eq!(price_cents("0.01").unwrap(), 1);
        for bad in ["", "1.001", "-1", "1e2", "abc"] {
            assert!(price_cents(bad).is_err(), "{bad:?}");
        }
    }
}
