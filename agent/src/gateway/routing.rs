//! Which power level a request runs at, which model serves it and at what price, as pure
//! functions over the catalog (the price table, the power-level configs, what the upstream
//! serves) and what traffic has shown.
//!
//! Rules (ARCHITECTURE.md "Routing" and "Levels constrain models"):
//! - A request runs at the user's level, or at the level it asks for (`x-tollgate-power-level`
//!   or an alias `eco`/`balanced`/`precision`) if the user's tier allows that level. It pays the
//!   larger of that level's multiplier and the user's own level's: asking for another level only
//!   chooses among models, it never buys the same model for less.
//! - A name the upstream serves is priced as the model behind it (each deployment's; a price set
//!   in LiteLLM's config for a deployment wins field by field); where one name has several
//!   deployments, the request reserves at the dearest. A name the upstream does not serve is
//!   refused (404), and a served model tollgate cannot price is refused naming the fix. Without
//!   `/model/info` the name is priced from the table directly (exact, a `prices alias`, or
//!   without its provider prefix).
//! - A model is allowed at a level when the provider that *governs* it is one of the level's:
//!   its maker, when the model is resold (`openrouter/anthropic/claude-opus-4` is Anthropic's
//!   model) and its maker is a provider some level names; otherwise the provider serving it. So
//!   a level that allows a reseller does not thereby allow every model the reseller sells.
//! - An alias picks among the served models of the endpoint's kind allowed at the level, with a
//!   quality score at least the level's minimum, whose provider is not down; those whose
//!   observed p95 latency is within the level's maximum come first (unknown latency counts as
//!   within). The fallback strategy orders them: `next_available` by the level's provider
//!   preference, `cheapest` by price, `fastest` by observed p95.

use rust_decimal::Decimal;

use crate::ledger::catalog::PowerLevelConfig;
use crate::ledger::{PowerLevel, Tier};
use crate::prices::{ModelMode, ModelPrice, PriceTable, builtin, normalize_provider};

use super::error::ApiError;
use super::request::Endpoint;
use super::served::{Deployment, Served};

/// The model names that route through the catalog instead of naming a model.
pub const ALIASES: [&str; 4] = ["auto", "eco", "balanced", "precision"];
/// Providers that sell other makers' models under `<provider>/<maker>/<model>` names.
pub const RESELLERS: &[&str] = &[
    "openrouter",
    "together",
    "deepinfra",
    "anyscale",
    "fireworks_ai",
    "groq",
    "replicate",
    "bedrock",
    "vertex_ai",
    "azure_ai",
];

/// What traffic has shown about models and providers (see `health`).
pub trait Observed {
    fn p95_latency_ms(&self, model: &str) -> Option<u32>;
    fn provider_down(&self, provider: &str) -> bool;
}

/// How a request is served and priced.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The model name sent upstream: the served name (or the table's, with no catalogue).
    pub forward_as: String,
    /// The price reserved at: the model's, or the dearest of its deployments in every field.
    pub price: ModelPrice,
    /// Each deployment's own price, by LiteLLM's deployment id, for settling at the one that
    /// answered (`x-litellm-model-id`).
    pub deployments: Vec<(String, ModelPrice)>,
    /// The model's own output limit (the smallest of its deployments'), if known.
    pub max_output_tokens: Option<u32>,
    /// The alias asked for, if the model was chosen by one.
    pub alias: Option<String>,
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
    let allowed = tier.levels_allowed();
    if !allowed.contains(&level) {
        return Err(ApiError::Forbidden(format!(
            "power level {level} is not available on the {tier} tier (it allows: {})",
            join(allowed)
        )));
    }
    Ok(level)
}

/// The multiplier a request pays: the larger of its level's and the user's own level's.
pub fn multiplier(
    levels: &[PowerLevelConfig],
    level: PowerLevel,
    user_level: PowerLevel,
) -> Decimal {
    let of = |l: PowerLevel| level_config(levels, l).map_or(Decimal::ONE, |c| c.cost_multiplier);
    of(level).max(of(user_level))
}

/// The active config of `level`.
pub fn level_config(levels: &[PowerLevelConfig], level: PowerLevel) -> Option<&PowerLevelConfig> {
    levels
        .iter()
        .find(|c| c.power_level == level.as_str() && c.is_active)
}

/// The provider that governs `price`'s model for levels: its maker when a reseller sells it and
/// some active level names that maker, else the provider that serves it.
pub fn governing_provider(price: &ModelPrice, levels: &[PowerLevelConfig]) -> String {
    let provider = price.provider.as_str();
    if RESELLERS.contains(&provider) {
        let rest = price
            .model
            .strip_prefix(provider)
            .and_then(|r| r.strip_prefix('/'))
            .unwrap_or(&price.model);
        if let Some((maker, _)) = rest.split_once('/') {
            let maker = normalize_maker(maker);
            let named = levels
                .iter()
                .filter(|l| l.is_active)
                .any(|l| l.preferred_providers.iter().any(|p| p == maker));
            if named {
                return maker.to_owned();
            }
        }
    }
    provider.to_owned()
}

/// A maker's name as resellers spell it, as tollgate's provider name.
fn normalize_maker(maker: &str) -> &str {
    match maker {
        "mistralai" => "mistral",
        "x-ai" => "xai",
        "meta-llama" | "meta" => "meta",
        other => normalize_provider(other),
    }
}

/// The active levels that allow `price`'s model.
pub fn levels_allowing(levels: &[PowerLevelConfig], price: &ModelPrice) -> Vec<PowerLevel> {
    let governing = governing_provider(price, levels);
    levels
        .iter()
        .filter(|c| c.is_active && c.preferred_providers.contains(&governing))
        .filter_map(|c| c.power_level.parse().ok())
        .collect()
}

fn allowed(price: &ModelPrice, config: &PowerLevelConfig, levels: &[PowerLevelConfig]) -> bool {
    config
        .preferred_providers
        .contains(&governing_provider(price, levels))
}

/// What a request may be routed among, besides the observations.
#[derive(Debug, Clone, Copy)]
pub struct Catalog<'a> {
    pub prices: &'a PriceTable,
    pub levels: &'a [PowerLevelConfig],
    /// What the upstream serves; `None` while unknown (every priced name is tried).
    pub served: Option<&'a Served>,
}

/// The price of one deployment: the table's for the model it calls, with its own prices over
/// it; or its own alone when they give input and output.
fn deployment_price(table: &PriceTable, d: &Deployment) -> Result<ModelPrice, String> {
    let called = d.model.as_deref().unwrap_or_default();
    if let Some(base) = table.resolve(called) {
        return Ok(d.own.over(base));
    }
    match (d.own.input, d.own.output) {
        (Some(input), Some(output)) => {
            let provider = called.split_once('/').map_or("openai", |(p, _)| p);
            Ok(ModelPrice {
                model: called.to_owned(),
                provider: normalize_provider(provider).to_owned(),
                mode: d.mode.unwrap_or(ModelMode::Chat),
                input_usd_per_token: input,
                output_usd_per_token: output,
                max_output_tokens: d.own.max_output_tokens,
                quality_score: builtin::quality_score(called),
                dims: d.own.dims.clone(),
            })
        }
        _ => Err(called.to_owned()),
    }
}

/// Every field of `prices` at its largest: a price no deployment's charge exceeds.
fn dearest(prices: &[ModelPrice]) -> Option<ModelPrice> {
    let mut iter = prices.iter();
    let mut top = iter.next()?.clone();
    for p in iter {
        let max = |a: Decimal, b: Decimal| a.max(b);
        let opt = |a: Option<Decimal>, b: Option<Decimal>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        top.input_usd_per_token = max(top.input_usd_per_token, p.input_usd_per_token);
        top.output_usd_per_token = max(top.output_usd_per_token, p.output_usd_per_token);
        let (t, d) = (&mut top.dims, &p.dims);
        t.cache_read_input = opt(t.cache_read_input, d.cache_read_input);
        t.cache_creation_input = opt(t.cache_creation_input, d.cache_creation_input);
        t.cache_creation_input_1h = opt(t.cache_creation_input_1h, d.cache_creation_input_1h);
        t.input_audio = opt(t.input_audio, d.input_audio);
        t.input_image = opt(t.input_image, d.input_image);
        t.output_audio = opt(t.output_audio, d.output_audio);
        t.output_reasoning = opt(t.output_reasoning, d.output_reasoning);
        t.output_image = opt(t.output_image, d.output_image);
        t.per_image = opt(t.per_image, d.per_image);
        t.per_request = opt(t.per_request, d.per_request);
        t.search = match (t.search, d.search) {
            (Some(a), Some(b)) => Some(crate::prices::SearchPrices {
                low: a.low.max(b.low),
                medium: a.medium.max(b.medium),
                high: a.high.max(b.high),
            }),
            (a, b) => a.or(b),
        };
        // Tiers only raise prices: keep them all, the reservation takes the dearest.
        t.tiers.extend(d.tiers.iter().cloned());
        t.tiers.sort_by_key(|tier| tier.above_tokens);
        top.quality_score = top.quality_score.min(p.quality_score);
    }
    Some(top)
}

/// The deployments behind `name`: its own, or those of a LiteLLM wildcard route (`openai/*`)
/// that matches it, with the wildcard filled in. `None`: not served.
fn deployments_of(all: &super::served::Deployments, name: &str) -> Option<Vec<Deployment>> {
    if let Some(own) = all.get(name) {
        return Some(own.clone());
    }
    all.iter().find_map(|(route, deployments)| {
        let prefix = route.strip_suffix('*')?;
        let rest = name.strip_prefix(prefix)?;
        (!rest.is_empty()).then(|| {
            deployments
                .iter()
                .map(|d| Deployment {
                    model: d.model.as_ref().map(|m| m.replace('*', rest)),
                    ..d.clone()
                })
                .collect()
        })
    })
}

/// A name's route, without level checks: what it forwards as and what it costs.
fn priced(catalog: &Catalog<'_>, name: &str) -> Result<Route, ApiError> {
    let table = catalog.prices;
    let unpriced = |called: &str| {
        ApiError::BadRequest(format!(
            "model {name:?} is served by the upstream as {called:?}, which price table {} does \
             not price: import LiteLLM's price map (`tollgate prices import \
             model_prices_and_context_window.json`), or set it (`tollgate prices set {called} \
             --provider … --input … --output …`)",
            table.version
        ))
    };
    match catalog.served.and_then(|s| s.deployments.as_ref()) {
        Some(all) => {
            let deployments = deployments_of(all, name).ok_or_else(|| {
                ApiError::NotFound(format!(
                    "model {name:?} is not served by the upstream; GET /v1/models lists what is"
                ))
            })?;
            if deployments.is_empty() {
                return Err(unpriced(name));
            }
            let mut prices = Vec::with_capacity(deployments.len());
            let mut by_id = Vec::new();
            for d in &deployments {
                let price = deployment_price(table, d).map_err(|called| unpriced(&called))?;
                if let Some(id) = &d.id {
                    by_id.push((id.clone(), price.clone()));
                }
                prices.push(price);
            }
            let max_output_tokens = prices.iter().filter_map(|p| p.max_output_tokens).min();
            let price = dearest(&prices).ok_or_else(|| unpriced(name))?;
            Ok(Route {
                forward_as: name.to_owned(),
                price,
                deployments: by_id,
                max_output_tokens,
                alias: None,
            })
        }
        _ => {
            let price = table.resolve(name).cloned().ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "model {name:?} is not in price table {}; import LiteLLM's price map \
                     (`tollgate prices import …`), set it (`tollgate prices set`), or use a \
                     model GET /v1/models lists",
                    table.version
                ))
            })?;
            Ok(Route {
                forward_as: name.to_owned(),
                max_output_tokens: price.max_output_tokens,
                price,
                deployments: Vec::new(),
                alias: None,
            })
        }
    }
}

/// The route of `requested` at `level` for `endpoint`.
pub fn route(
    catalog: &Catalog<'_>,
    level: PowerLevel,
    requested: &str,
    endpoint: Endpoint,
    observed: &dyn Observed,
) -> Result<Route, ApiError> {
    let levels = catalog.levels;
    let config = level_config(levels, level).ok_or_else(|| {
        ApiError::Forbidden(format!("power level {level} is not active on this gateway"))
    })?;
    if ALIASES.contains(&requested) {
        return choose_alias(catalog, config, requested, endpoint, observed);
    }
    let route = priced(catalog, requested)?;
    let price = &route.price;
    if !endpoint.serves(price.mode) {
        return Err(ApiError::BadRequest(format!(
            "model {requested:?} is a {} model and cannot serve {}",
            price.mode,
            endpoint.path()
        )));
    }
    if !allowed(price, config, levels) {
        let allowed_levels = levels_allowing(levels, price);
        let governing = governing_provider(price, levels);
        let message = if allowed_levels.is_empty() {
            format!(
                "model {requested:?} (an {governing} model) is not available at power level \
                 {level}, nor at any other level"
            )
        } else {
            format!(
                "model {requested:?} (an {governing} model) is not available at power level \
                 {level}; levels that allow it: {}",
                join(&allowed_levels)
            )
        };
        return Err(ApiError::ModelNotAllowed {
            message,
            allowed_levels,
        });
    }
    Ok(route)
}

/// The names the upstream serves that tollgate can price (each with its route): with
/// `/model/info`, its names (wildcard routes left out); else the names of `/v1/models` the table
/// prices; with no catalogue, the table's models.
pub fn served_routes(catalog: &Catalog<'_>) -> Vec<Route> {
    let names: Vec<&str> = match catalog.served {
        Some(Served {
            deployments: Some(all),
            ..
        }) => all
            .keys()
            .map(String::as_str)
            .filter(|n| !n.ends_with('*'))
            .collect(),
        Some(served) => served.names.iter().map(String::as_str).collect(),
        None => catalog.prices.models().map(|m| m.model.as_str()).collect(),
    };
    names
        .into_iter()
        .filter_map(|name| priced(catalog, name).ok())
        .collect()
}

/// Whether `route` may be used at any of `levels_asked`.
pub fn usable_at(catalog: &Catalog<'_>, route: &Route, levels_asked: &[PowerLevel]) -> bool {
    levels_asked.iter().any(|l| {
        level_config(catalog.levels, *l).is_some_and(|c| allowed(&route.price, c, catalog.levels))
    })
}

fn choose_alias(
    catalog: &Catalog<'_>,
    config: &PowerLevelConfig,
    alias: &str,
    endpoint: Endpoint,
    observed: &dyn Observed,
) -> Result<Route, ApiError> {
    let levels = catalog.levels;
    let preference = |provider: &str| {
        config
            .preferred_providers
            .iter()
            .position(|p| p == provider)
    };
    let min_quality = u8::try_from(config.min_quality_score.clamp(0, 100)).unwrap_or(100);
    let candidates: Vec<Route> = served_routes(catalog)
        .into_iter()
        .filter(|r| endpoint.serves(r.price.mode))
        .filter(|r| allowed(&r.price, config, levels))
        .filter(|r| r.price.quality_score.is_some_and(|q| q >= min_quality))
        .filter(|r| !observed.provider_down(&r.price.provider))
        .collect();
    let max_latency = u32::try_from(config.max_latency_ms).unwrap_or(u32::MAX);
    let fast_enough = |r: &Route| {
        observed
            .p95_latency_ms(&r.price.model)
            .is_none_or(|p| p <= max_latency)
    };
    let any_fast = candidates.iter().any(fast_enough);
    // `next_available` takes the most preferred provider's cheapest qualifying model, `fastest`
    // the lowest observed p95 (preference breaks ties), `cheapest` the lowest price overall
    // (quality breaks ties); names break the last ties, so the choice is stable.
    let key = |r: &Route| {
        let m = &r.price;
        let pref = preference(&governing_provider(m, levels)).unwrap_or(usize::MAX);
        let price = m.input_usd_per_token + m.output_usd_per_token;
        let latency = observed.p95_latency_ms(&m.model).unwrap_or(u32::MAX);
        let quality = std::cmp::Reverse(m.quality_score.unwrap_or(0));
        let zero = Decimal::ZERO;
        let slow = any_fast && !fast_enough(r);
        let order = match config.fallback_strategy.as_str() {
            "cheapest" => (price, 0, 0, zero, quality),
            "fastest" => (zero, latency, pref, price, quality),
            _ => (zero, 0, pref, price, quality),
        };
        (slow, order, r.forward_as.clone())
    };
    let mut chosen = candidates.into_iter().min_by_key(key).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "no model the upstream serves fits {alias:?} at power level {} for {}: none of \
                 {} with quality {} or more is available",
            config.power_level,
            endpoint.path(),
            config.preferred_providers.join(", "),
            config.min_quality_score
        ))
    })?;
    chosen.alias = Some(alias.to_owned());
    Ok(chosen)
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
    use std::collections::{BTreeMap, HashMap};

    use super::*;
    use crate::prices::PriceFields;

    #[derive(Default)]
    struct Seen {
        p95: HashMap<String, u32>,
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
        multiplier: &str,
    ) -> PowerLevelConfig {
        PowerLevelConfig {
            power_level: name.into(),
            name: name.into(),
            description: None,
            preferred_providers: providers.iter().map(|p| (*p).to_owned()).collect(),
            fallback_strategy: fallback.into(),
            cost_multiplier: multiplier.parse().unwrap(),
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
                "0.7",
            ),
            level(
                "balanced",
                &["openai", "anthropic", "openrouter"],
                "next_available",
                3000,
                85,
                "1.0",
            ),
            level(
                "precision",
                &["anthropic", "openai"],
                "next_available",
                2000,
                95,
                "1.5",
            ),
        ]
    }

    fn table_with(extra: &[(&str, &str, Option<u8>)]) -> PriceTable {
        let mut models = builtin::models();
        for (name, provider, quality) in extra {
            let mut m = models[0].clone();
            m.model = (*name).into();
            m.provider = (*provider).into();
            m.quality_score = *quality;
            models.push(m);
        }
        PriceTable::from_models("t".into(), models)
    }

    fn catalog<'a>(
        prices: &'a PriceTable,
        levels: &'a [PowerLevelConfig],
        served: Option<&'a Served>,
    ) -> Catalog<'a> {
        Catalog {
            prices,
            levels,
            served,
        }
    }

    #[test]
    fn tiers_bound_the_levels_a_request_may_ask_for_and_never_lower_the_multiplier() {
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
        let levels = seed_levels();
        let m = |level, own| multiplier(&levels, level, own).to_string();
        assert_eq!(m(PowerLevel::Eco, PowerLevel::Balanced), "1.0");
        assert_eq!(m(PowerLevel::Eco, PowerLevel::Eco), "0.7");
        assert_eq!(m(PowerLevel::Precision, PowerLevel::Balanced), "1.5");
    }

    #[test]
    fn a_resold_model_is_governed_by_its_maker_when_a_level_names_the_maker() {
        let levels = seed_levels();
        let table = table_with(&[
            ("openrouter/anthropic/claude-opus-4", "openrouter", Some(98)),
            ("openrouter/deepseek/deepseek-chat", "openrouter", Some(75)),
            ("together/meta-llama/Llama-3.3-70B", "together", Some(78)),
        ]);
        let gov = |name: &str| governing_provider(table.get(name).unwrap(), &levels);
        assert_eq!(gov("openrouter/anthropic/claude-opus-4"), "anthropic");
        assert_eq!(gov("openrouter/deepseek/deepseek-chat"), "openrouter");
        assert_eq!(gov("together/meta-llama/Llama-3.3-70B"), "together");
        assert_eq!(gov("gpt-4o"), "openai");
        let cat = catalog(&table, &levels, None);
        let seen = Seen::default();
        let err = route(
            &cat,
            PowerLevel::Eco,
            "openrouter/anthropic/claude-opus-4",
            Endpoint::ChatCompletions,
            &seen,
        )
        .unwrap_err();
        assert!(matches!(err, ApiError::ModelNotAllowed { .. }));
        assert!(err.to_string().contains("balanced, precision"), "{err}");
        for level in [PowerLevel::Eco, PowerLevel::Balanced] {
            assert!(
                route(
                    &cat,
                    level,
                    "openrouter/deepseek/deepseek-chat",
                    Endpoint::ChatCompletions,
                    &seen
                )
                .is_ok()
            );
        }
    }

    fn deployment(id: &str, model: &str, own: PriceFields) -> Deployment {
        Deployment {
            id: Some(id.into()),
            model: Some(model.into()),
            own,
            mode: None,
        }
    }

    #[test]
    fn served_names_price_as_their_deployments_and_unserved_names_are_refused() {
        let levels = seed_levels();
        let table = PriceTable::builtin();
        let house = PriceFields {
            input: Some("0.000001".parse().unwrap()),
            output: Some("0.00002".parse().unwrap()),
            ..PriceFields::default()
        };
        let served = Served {
            names: vec![
                "mini".into(),
                "house".into(),
                "ghost".into(),
                "smart".into(),
            ],
            deployments: Some(BTreeMap::from([
                (
                    "smart".to_owned(),
                    vec![deployment("s", "openai/gpt-4o", PriceFields::default())],
                ),
                (
                    "mini".to_owned(),
                    vec![
                        deployment("a", "openai/gpt-4o-mini", PriceFields::default()),
                        deployment("b", "openai/gpt-4o", PriceFields::default()),
                    ],
                ),
                (
                    "house".to_owned(),
                    vec![deployment("h", "openai/my-house-model", house)],
                ),
                (
                    "ghost".to_owned(),
                    vec![deployment("g", "openai/nothing", PriceFields::default())],
                ),
            ])),
        };
        let cat = catalog(&table, &levels, Some(&served));
        let seen = Seen::default();
        let r = route(
            &cat,
            PowerLevel::Balanced,
            "mini",
            Endpoint::ChatCompletions,
            &seen,
        )
        .unwrap();
        assert_eq!(r.forward_as, "mini");
        let gpt_4o = table.get("gpt-4o").unwrap();
        assert_eq!(
            r.price.input_usd_per_token, gpt_4o.input_usd_per_token,
            "the dearest"
        );
        assert_eq!(r.deployments.len(), 2);
        assert_eq!(r.deployments[0].1.model, "gpt-4o-mini");
        let h = route(
            &cat,
            PowerLevel::Balanced,
            "house",
            Endpoint::ChatCompletions,
            &seen,
        )
        .unwrap();
        assert_eq!(h.price.output_usd_per_token.to_string(), "0.00002");
        let err = route(
            &cat,
            PowerLevel::Balanced,
            "ghost",
            Endpoint::ChatCompletions,
            &seen,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("tollgate prices set openai/nothing"),
            "{err}"
        );
        let err = route(
            &cat,
            PowerLevel::Balanced,
            "gpt-4o",
            Endpoint::ChatCompletions,
            &seen,
        )
        .unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::NOT_FOUND);
        // Aliases choose only among served names.
        let auto = route(
            &cat,
            PowerLevel::Balanced,
            "auto",
            Endpoint::ChatCompletions,
            &seen,
        )
        .unwrap();
        // `mini` may be served by gpt-4o-mini (quality 82), below balanced's 85, and `house`
        // has no quality score: only `smart` qualifies.
        assert_eq!(auto.forward_as, "smart");
        assert_eq!(auto.alias.as_deref(), Some("auto"));
    }

    #[test]
    fn aliases_route_by_preference_quality_latency_and_health() {
        let table = PriceTable::builtin();
        let levels = seed_levels();
        let mut seen = Seen::default();
        let pick = |seen: &Seen, level, alias| {
            route(
                &catalog(&table, &levels, None),
                level,
                alias,
                Endpoint::ChatCompletions,
                seen,
            )
            .map(|r| r.price)
        };
        // Balanced prefers openai, quality ≥ 85: the best openai model first.
        let first = pick(&seen, PowerLevel::Balanced, "balanced").unwrap();
        assert_eq!(first.provider, "openai");
        // Observed too slow: the next provider's model takes over.
        for m in table.models().filter(|m| m.provider == "openai") {
            seen.p95.insert(m.model.clone(), 10_000);
        }
        let second = pick(&seen, PowerLevel::Balanced, "balanced").unwrap();
        assert_eq!(second.provider, "anthropic");
        // Anthropic down: back to the slow openai models rather than nothing.
        seen.down.push("anthropic");
        let third = pick(&seen, PowerLevel::Balanced, "balanced").unwrap();
        assert_eq!(third.provider, "openai");
        // Eco never picks outside its providers or below its quality.
        let eco = pick(&Seen::default(), PowerLevel::Eco, "eco").unwrap();
        assert!(["openrouter", "together", "deepinfra"].contains(&eco.provider.as_str()));
        assert!(eco.quality_score.unwrap() >= 70);
    }

    #[test]
    fn the_cheapest_strategy_picks_by_price() {
        let table = PriceTable::builtin();
        let mut levels = seed_levels();
        levels[0].fallback_strategy = "cheapest".into();
        let m = route(
            &catalog(&table, &levels, None),
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
        assert_eq!(m.price.model, cheapest.model);
    }

    #[test]
    fn a_model_of_another_kind_is_refused() {
        let table = PriceTable::builtin();
        let levels = seed_levels();
        let err = route(
            &catalog(&table, &levels, None),
            PowerLevel::Balanced,
            "text-embedding-3-small",
            Endpoint::ChatCompletions,
            &Seen::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("embedding model"), "{err}");
    }
}
