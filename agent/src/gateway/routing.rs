//! Which power level a request runs at and which model serves it, as pure functions over the
//! catalog (the price table and the power-level configs) and what traffic has shown.
//!
//! Rules (ARCHITECTURE.md "Routing"):
//! - A request runs at the user's level, or at the level it asks for (`x-tollgate-power-level`
//!   or an alias `eco`/`balanced`/`precision`) if the user's tier allows that level.
//! - A concrete model is allowed at a level when its provider is one of the level's providers;
//!   otherwise the refusal names the levels that allow it. The level's multiplier prices it, so a
//!   client cannot buy a precision model at eco's price.
//! - An alias picks among the models of the endpoint's kind whose provider is the level's, whose
//!   quality score is at least the level's minimum, and whose provider is not down; those whose
//!   observed p95 latency is within the level's maximum come first (unknown latency counts as
//!   within). The fallback strategy orders them: `next_available` by the level's provider
//!   preference, `cheapest` by price, `fastest` by observed p95.

use crate::ledger::catalog::PowerLevelConfig;
use crate::ledger::{PowerLevel, Tier};
use crate::prices::{ModelMode, ModelPrice, PriceTable};

use super::config::levels_allowed;
use super::error::ApiError;
use super::usage::Endpoint;

/// The model names that route through the catalog instead of naming a model.
pub const ALIASES: [&str; 4] = ["auto", "eco", "balanced", "precision"];

/// What traffic has shown about models and providers (see `health`).
pub trait Observed {
    fn p95_latency_ms(&self, model: &str) -> Option<u32>;
    fn provider_down(&self, provider: &str) -> bool;
}

/// The level a request runs at: an alias's level, else the requested one, else the user's.
pub fn resolve_level(
    tier: Tier,
    user_level: PowerLevel,
    model: &str,
    requested: Option<&str>,
) -> Result<PowerLevel, ApiError> {
    let asked = match (model.parse::<PowerLevel>(), requested) {
        (Ok(alias), _) => Some(alias),
        (Err(_), Some(text)) => Some(text.parse::<PowerLevel>().map_err(|e| {
            ApiError::BadRequest(format!("invalid x-tollgate-power-level header: {e}"))
        })?),
        (Err(_), None) => None,
    };
    let Some(level) = asked else {
        return Ok(user_level);
    };
    let allowed = levels_allowed(tier);
    if !allowed.contains(&level) {
        return Err(ApiError::Forbidden(format!(
            "power level {level} is not available on the {tier} tier (it allows: {})",
            join(allowed)
        )));
    }
    Ok(level)
}

/// Whether a model of `mode` can serve `endpoint`.
pub fn serves(mode: ModelMode, endpoint: Endpoint) -> bool {
    matches!(
        (endpoint, mode),
        (Endpoint::ChatCompletions, ModelMode::Chat)
            | (
                Endpoint::Completions,
                ModelMode::Completion | ModelMode::Chat
            )
            | (Endpoint::Embeddings, ModelMode::Embedding)
    )
}

/// The active config of `level`.
pub fn level_config(levels: &[PowerLevelConfig], level: PowerLevel) -> Option<&PowerLevelConfig> {
    levels
        .iter()
        .find(|c| c.power_level == level.as_str() && c.is_active)
}

/// The active levels whose providers include `provider`.
pub fn levels_allowing(levels: &[PowerLevelConfig], provider: &str) -> Vec<PowerLevel> {
    levels
        .iter()
        .filter(|c| c.is_active && c.preferred_providers.iter().any(|p| p == provider))
        .filter_map(|c| c.power_level.parse().ok())
        .collect()
}

/// The model that serves `requested` at `level`.
pub fn choose<'t>(
    table: &'t PriceTable,
    levels: &[PowerLevelConfig],
    level: PowerLevel,
    requested: &str,
    endpoint: Endpoint,
    observed: &dyn Observed,
) -> Result<&'t ModelPrice, ApiError> {
    let config = level_config(levels, level).ok_or_else(|| {
        ApiError::Forbidden(format!("power level {level} is not active on this gateway"))
    })?;
    if ALIASES.contains(&requested) {
        return choose_alias(table, config, requested, endpoint, observed);
    }
    let price = table.get(requested).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "model {requested:?} is not in tollgate's price table (version {}); \
             import prices with `tollgate prices import` or use a listed model",
            table.version
        ))
    })?;
    if !serves(price.mode, endpoint) {
        return Err(ApiError::BadRequest(format!(
            "model {requested:?} is a {} model and cannot serve {}",
            mode_name(price.mode),
            endpoint.path()
        )));
    }
    if !config.preferred_providers.contains(&price.provider) {
        let allowed = levels_allowing(levels, &price.provider);
        let message = if allowed.is_empty() {
            format!(
                "model {requested:?} (provider {}) is not available at power level {level}, nor at any other level",
                price.provider
            )
        } else {
            format!(
                "model {requested:?} (provider {}) is not available at power level {level}; levels that allow it: {}",
                price.provider,
                join(&allowed)
            )
        };
        return Err(ApiError::ModelNotAllowed {
            message,
            allowed_levels: allowed,
        });
    }
    Ok(price)
}

fn choose_alias<'t>(
    table: &'t PriceTable,
    config: &PowerLevelConfig,
    alias: &str,
    endpoint: Endpoint,
    observed: &dyn Observed,
) -> Result<&'t ModelPrice, ApiError> {
    let preference = |provider: &str| {
        config
            .preferred_providers
            .iter()
            .position(|p| p == provider)
    };
    let min_quality = u8::try_from(config.min_quality_score.clamp(0, 100)).unwrap_or(100);
    let candidates: Vec<&ModelPrice> = table
        .models()
        .filter(|m| serves(m.mode, endpoint))
        .filter(|m| preference(&m.provider).is_some())
        .filter(|m| m.quality_score.is_some_and(|q| q >= min_quality))
        .filter(|m| !observed.provider_down(&m.provider))
        .collect();
    let max_latency = u32::try_from(config.max_latency_ms).unwrap_or(u32::MAX);
    let fast_enough: Vec<&ModelPrice> = candidates
        .iter()
        .copied()
        .filter(|m| {
            observed
                .p95_latency_ms(&m.model)
                .is_none_or(|p| p <= max_latency)
        })
        .collect();
    let pool = if fast_enough.is_empty() {
        candidates
    } else {
        fast_enough
    };
    // `next_available` takes the most preferred provider's cheapest qualifying model, `fastest`
    // the lowest observed p95 (preference breaks ties), `cheapest` the lowest price overall
    // (quality breaks ties).
    let key = |m: &&ModelPrice| {
        let pref = preference(&m.provider).unwrap_or(usize::MAX);
        let price = m.input_usd_per_token + m.output_usd_per_token;
        let latency = observed.p95_latency_ms(&m.model).unwrap_or(u32::MAX);
        let quality = std::cmp::Reverse(m.quality_score.unwrap_or(0));
        let zero = rust_decimal::Decimal::ZERO;
        match config.fallback_strategy.as_str() {
            "cheapest" => (price, 0, 0, zero, quality),
            "fastest" => (zero, latency, pref, price, quality),
            _ => (zero, 0, pref, price, quality),
        }
    };
    pool.into_iter().min_by_key(key).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "no model in the price table serves {alias:?} at power level {} for {}: none of {} \
             with quality {} or more is available",
            config.power_level,
            endpoint.path(),
            config.preferred_providers.join(", "),
            config.min_quality_score
        ))
    })
}

fn mode_name(mode: ModelMode) -> &'static str {
    match mode {
        ModelMode::Chat => "chat",
        ModelMode::Completion => "completion",
        ModelMode::Embedding => "embedding",
    }
}

fn join(levels: &[PowerLevel]) -> String {
    levels
        .iter()
        .map(|l| l.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rust_decimal::Decimal;

    use super::*;

    #[derive(Default)]
    struct Seen {
        p95: HashMap<&'static str, u32>,
        down: Vec<&'static str>,
    }

    impl Observed for Seen {
        fn p95_latency_ms(&self, model: &str) -> Option<u32> {
            self.p95.get(model).copied()
        }
        fn provider_down(&self, provider: &str) -> bool {
            self.down.contains(&provider)
        }
    }

    fn level(
        name: &str,
        providers: &[&str],
        fallback: &str,
        latency: i64,
        quality: i64,
    ) -> PowerLevelConfig {
        PowerLevelConfig {
            power_level: name.into(),
            name: name.into(),
            description: None,
            preferred_providers: providers.iter().map(|p| (*p).to_owned()).collect(),
            fallback_strategy: fallback.into(),
            cost_multiplier: Decimal::ONE,
            max_latency_ms: latency,
            min_quality_score: quality,
            is_active: true,
        }
    }

    fn seed_levels() -> Vec<PowerLevelConfig> {
        vec![
            level(
                "eco",
                &["openrouter", "together", "deepinfra"],
                "next_available",
                5000,
                70,
            ),
            level(
                "balanced",
                &["openai", "anthropic", "openrouter"],
                "next_available",
                3000,
                85,
            ),
            level(
                "precision",
                &["anthropic", "openai"],
                "next_available",
                2000,
                95,
            ),
        ]
    }

    #[test]
    fn tiers_bound_the_levels_a_request_may_ask_for() {
        assert_eq!(
            resolve_level(Tier::Starter, PowerLevel::Balanced, "gpt-4o", None).unwrap(),
            PowerLevel::Balanced
        );
        assert_eq!(
            resolve_level(Tier::Starter, PowerLevel::Balanced, "gpt-4o", Some("eco")).unwrap(),
            PowerLevel::Eco
        );
        let err = resolve_level(Tier::Trial, PowerLevel::Eco, "precision", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "power level precision is not available on the trial tier (it allows: eco)"
        );
        let err = resolve_level(Tier::Starter, PowerLevel::Eco, "m", Some("turbo")).unwrap_err();
        assert!(err.to_string().contains("x-tollgate-power-level"), "{err}");
    }

    #[test]
    fn a_model_outside_the_level_is_refused_naming_the_levels_that_allow_it() {
        let table = PriceTable::builtin();
        let levels = seed_levels();
        let seen = Seen::default();
        let err = choose(
            &table,
            &levels,
            PowerLevel::Eco,
            "gpt-4o",
            Endpoint::ChatCompletions,
            &seen,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "model \"gpt-4o\" (provider openai) is not available at power level eco; levels that allow it: balanced, precision"
        );
        assert!(matches!(err, ApiError::ModelNotAllowed { .. }));
        let ok = choose(
            &table,
            &levels,
            PowerLevel::Balanced,
            "gpt-4o",
            Endpoint::ChatCompletions,
            &seen,
        )
        .unwrap();
        assert_eq!(ok.model, "gpt-4o");
        let err = choose(
            &table,
            &levels,
            PowerLevel::Balanced,
            "gpt-5-ultra",
            Endpoint::ChatCompletions,
            &seen,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("not in tollgate's price table"),
            "{err}"
        );
        let err = choose(
            &table,
            &levels,
            PowerLevel::Balanced,
            "text-embedding-3-small",
            Endpoint::ChatCompletions,
            &seen,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("is a embedding model")
                || err.to_string().contains("embedding model"),
            "{err}"
        );
    }

    #[test]
    fn aliases_route_by_preference_quality_latency_and_health() {
        let table = PriceTable::builtin();
        let levels = seed_levels();
        let mut seen = Seen::default();
        let pick = |seen: &Seen, level, alias| {
            choose(
                &table,
                &levels,
                level,
                alias,
                Endpoint::ChatCompletions,
                seen,
            )
            .map(|m| m.model.clone())
        };
        // Balanced prefers openai, quality ≥ 85: the best openai model first.
        let first = pick(&seen, PowerLevel::Balanced, "balanced").unwrap();
        assert_eq!(table.get(&first).unwrap().provider, "openai");
        // Observed too slow: the next provider's model takes over.
        for m in table.models().filter(|m| m.provider == "openai") {
            seen.p95
                .insert(Box::leak(m.model.clone().into_boxed_str()), 10_000);
        }
        let second = pick(&seen, PowerLevel::Balanced, "balanced").unwrap();
        assert_eq!(table.get(&second).unwrap().provider, "anthropic");
        // Anthropic down: back to the slow openai models rather than nothing.
        seen.down.push("anthropic");
        let third = pick(&seen, PowerLevel::Balanced, "balanced").unwrap();
        assert_eq!(table.get(&third).unwrap().provider, "openai");
        // Eco never picks outside its providers or below its quality.
        let eco = pick(&Seen::default(), PowerLevel::Eco, "eco").unwrap();
        let eco = table.get(&eco).unwrap();
        assert!(["openrouter", "together", "deepinfra"].contains(&eco.provider.as_str()));
        assert!(eco.quality_score.unwrap() >= 70);
    }

    #[test]
    fn the_cheapest_strategy_picks_by_price() {
        let table = PriceTable::builtin();
        let mut levels = seed_levels();
        levels[0].fallback_strategy = "cheapest".into();
        let m = choose(
            &table,
            &levels,
            PowerLevel::Eco,
            "auto",
            Endpoint::ChatCompletions,
            &Seen::default(),
        )
        .unwrap();
        let cheapest = table
            .models()
            .filter(|c| ["openrouter", "together", "deepinfra"].contains(&c.provider.as_str()))
            .filter(|c| c.quality_score.is_some_and(|q| q >= 70) && c.mode == ModelMode::Chat)
            .min_by_key(|c| c.input_usd_per_token + c.output_usd_per_token)
            .unwrap();
        assert_eq!(m.model, cheapest.model);
    }
}
