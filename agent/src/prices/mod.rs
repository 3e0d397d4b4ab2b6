//! The price table tollgate charges by: what each model costs in USD, in every dimension its
//! usage is reported in (plain, cached and cache-written input, audio, images, reasoning and
//! audio output, long-context tiers, per-request and search fees).
//!
//! Pure data, no I/O: the gateway turns metered usage into USD with [`cost`], and
//! `ledger::prices` stores tables as versions. Sources:
//! - [`PriceTable::builtin`]: a small table compiled in ([`builtin`]), used until an operator
//!   imports one (and selectable again with `tollgate prices use builtin`);
//! - [`parse_litellm_report`]: LiteLLM's price map (`model_prices_and_context_window.json`),
//!   which `tollgate prices import` stores as a new version;
//! - [`read_price_fields`]: the same fields as LiteLLM's proxy config carries them per
//!   deployment (`litellm_params.input_cost_per_token`, …), read from its `/model/info`.
//!
//! Guarantees: every price is an exact [`Decimal`] (USD per token, per request, per image or per
//! search), never a float, and never negative; a table holds each model once and each alias once
//! (an alias names a model of the table); iteration is in model-name order.

pub mod builtin;
pub mod cost;
mod litellm;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

pub use litellm::{
    LiteLlmImport, PRICE_FILE_BYTES_MAX, PRICE_MODELS_MAX, PriceFields, PriceImportError,
    SKIPPED_NAMED_MAX, SkippedEntry, exact_decimal, normalize_provider, parse_exact, parse_litellm,
    parse_litellm_report, read_price_fields,
};

/// Longest model name a table holds (LiteLLM's longest are about 100 characters).
pub const MODEL_NAME_LEN_MAX: usize = 200;
/// Longest provider name a table holds.
pub const PROVIDER_LEN_MAX: usize = 64;
/// Highest price per token accepted, in USD. The dearest models cost well under 0.001 USD per
/// token; a bigger number is almost surely a price per million tokens put in the wrong field.
pub const USD_PER_TOKEN_MAX: Decimal = Decimal::ONE;
/// Highest fee per request, image or search accepted, in USD (real ones are cents).
pub const USD_PER_UNIT_MAX: Decimal = Decimal::ONE_HUNDRED;
/// Most long-context tiers one model carries (LiteLLM's map has at most three: 128k, 200k, 272k).
pub const PRICE_TIERS_MAX: usize = 8;

/// What a model is billed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelMode {
    Chat,
    Completion,
    Embedding,
    /// Served only through OpenAI's Responses API (LiteLLM's `"mode": "responses"`).
    Responses,
}

impl ModelMode {
    pub const ALL: &'static [ModelMode] = &[
        ModelMode::Chat,
        ModelMode::Completion,
        ModelMode::Embedding,
        ModelMode::Responses,
    ];

    /// The stored and printed spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            ModelMode::Chat => "chat",
            ModelMode::Completion => "completion",
            ModelMode::Embedding => "embedding",
            ModelMode::Responses => "responses",
        }
    }
}

impl FromStr for ModelMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        ModelMode::ALL
            .iter()
            .copied()
            .find(|m| m.as_str() == text)
            .ok_or_else(|| {
                format!(
                    "unknown model mode {text:?} (expected one of: chat, completion, embedding, \
                     responses)"
                )
            })
    }
}

impl fmt::Display for ModelMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The search fee per query, by the request's `search_context_size` (LiteLLM's
/// `search_context_cost_per_query`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchPrices {
    pub low: Decimal,
    pub medium: Decimal,
    pub high: Decimal,
}

impl SearchPrices {
    /// The dearest of the three: what a search of unknown size may cost.
    pub fn max(&self) -> Decimal {
        self.low.max(self.medium).max(self.high)
    }
}

/// Prices that replace the base ones when a request's prompt is longer than `above_tokens`
/// (LiteLLM's `*_above_200k_tokens` keys). A `None` keeps the base price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceTier {
    pub above_tokens: u64,
    pub input: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_input: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_1h: Option<Decimal>,
}

/// Every price of a model beyond plain input and output tokens, all in USD; `None` where the
/// source gives none (then the usage it prices costs what LiteLLM charges for it: see
/// [`cost::usd_cost`]). Stored as JSON (`model_prices.dimensions`), decimals as strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceDims {
    /// Per prompt token read from the provider's cache (OpenAI `cached_tokens`, Anthropic
    /// `cache_read_input_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_input: Option<Decimal>,
    /// Per prompt token written to the cache (Anthropic `cache_creation_input_tokens`; the
    /// five-minute cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input: Option<Decimal>,
    /// Per prompt token written to the one-hour cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_1h: Option<Decimal>,
    /// Per audio prompt token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_audio: Option<Decimal>,
    /// Per image prompt token (else images cost the input price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_image: Option<Decimal>,
    /// Per audio output token (else the output price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_audio: Option<Decimal>,
    /// Per reasoning token (else the output price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_reasoning: Option<Decimal>,
    /// Per image generated as output tokens (else the output price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_image: Option<Decimal>,
    /// Per input image, by count (`input_cost_per_image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_image: Option<Decimal>,
    /// Per request, whatever its tokens (`input_cost_per_request`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_request: Option<Decimal>,
    /// Per web search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchPrices>,
    /// Long-context prices, in ascending order of threshold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<PriceTier>,
}

impl PriceDims {
    pub fn is_empty(&self) -> bool {
        *self == PriceDims::default()
    }

    /// Every per-token price carried, for range checks.
    pub fn token_prices(&self) -> Vec<(&'static str, Decimal)> {
        let mut all: Vec<(&'static str, Option<Decimal>)> = vec![
            ("cache read price", self.cache_read_input),
            ("cache write price", self.cache_creation_input),
            ("one-hour cache write price", self.cache_creation_input_1h),
            ("audio input price", self.input_audio),
            ("image input price", self.input_image),
            ("audio output price", self.output_audio),
            ("reasoning price", self.output_reasoning),
            ("image output price", self.output_image),
        ];
        for tier in &self.tiers {
            all.push(("long-context input price", Some(tier.input)));
            all.push(("long-context output price", tier.output));
            all.push(("long-context cache read price", tier.cache_read_input));
            all.push(("long-context cache write price", tier.cache_creation_input));
            all.push((
                "long-context cache write price",
                tier.cache_creation_input_1h,
            ));
        }
        all.into_iter()
            .filter_map(|(name, price)| price.map(|p| (name, p)))
            .collect()
    }

    /// Every per-unit fee carried (per request, image, search), for range checks.
    pub fn unit_prices(&self) -> Vec<(&'static str, Decimal)> {
        let mut all = vec![];
        if let Some(p) = self.per_image {
            all.push(("per-image price", p));
        }
        if let Some(p) = self.per_request {
            all.push(("per-request price", p));
        }
        if let Some(s) = self.search {
            all.extend([
                ("search price", s.low),
                ("search price", s.medium),
                ("search price", s.high),
            ]);
        }
        all
    }
}

/// One model's price. Prices serialize as exact decimal strings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelPrice {
    pub model: String,
    /// Normalized provider: openai, anthropic, openrouter, google, cohere, together, anyscale,
    /// deepinfra, or LiteLLM's own provider name when it maps to none of these (e.g. "bedrock").
    pub provider: String,
    pub mode: ModelMode,
    pub input_usd_per_token: Decimal,
    pub output_usd_per_token: Decimal,
    pub max_output_tokens: Option<u32>,
    /// 0-100, for alias routing (auto/eco/balanced/precision); None = not eligible for aliases.
    pub quality_score: Option<u8>,
    /// Every other price dimension.
    #[serde(skip_serializing_if = "PriceDims::is_empty")]
    pub dims: PriceDims,
}

/// A whole price table: one price per model, the aliases that price as one of them, and the
/// version it came from.
///
/// `version` is `"builtin-2026-11"` for the compiled-in table and `"imported-<n>"` for version
/// `n` of the ledger's tables (see `Ledger::price_table`).
#[derive(Debug, Clone, PartialEq)]
pub struct PriceTable {
    pub version: String,
    models: BTreeMap<String, ModelPrice>,
    /// `tollgate prices alias NAME MODEL`: NAME is charged as MODEL.
    aliases: BTreeMap<String, String>,
}

impl PriceTable {
    /// The table compiled into this binary (see [`builtin`] for where its prices come from).
    pub fn builtin() -> PriceTable {
        PriceTable::from_models(builtin::VERSION.to_owned(), builtin::models())
    }

    /// A table of `models`. A later entry for a model already given replaces the earlier one.
    pub fn from_models(version: String, models: Vec<ModelPrice>) -> PriceTable {
        let models = models.into_iter().map(|m| (m.model.clone(), m)).collect();
        PriceTable {
            version,
            models,
            aliases: BTreeMap::new(),
        }
    }

    /// The same table with `aliases` (NAME → MODEL); aliases naming no model of the table are
    /// dropped (the ledger refuses to store them).
    pub fn with_aliases(mut self, aliases: BTreeMap<String, String>) -> PriceTable {
        self.aliases = aliases
            .into_iter()
            .filter(|(_, model)| self.models.contains_key(model))
            .collect();
        self
    }

    /// The price of `model`, by its exact name.
    pub fn get(&self, model: &str) -> Option<&ModelPrice> {
        self.models.get(model)
    }

    /// The price `name` is charged at, the way LiteLLM looks a model up: the exact name, then a
    /// tollgate alias, then the name without its provider prefix (`openai/gpt-4o` → `gpt-4o`,
    /// `anthropic/claude-sonnet-4-20250514` → `claude-sonnet-4-20250514`).
    pub fn resolve(&self, name: &str) -> Option<&ModelPrice> {
        if let Some(price) = self.models.get(name) {
            return Some(price);
        }
        if let Some(target) = self.aliases.get(name) {
            return self.models.get(target);
        }
        let (prefix, rest) = name.split_once('/')?;
        if prefix.is_empty() || rest.is_empty() {
            return None;
        }
        self.models.get(rest)
    }

    /// Every model, in model-name order.
    pub fn models(&self) -> impl Iterator<Item = &ModelPrice> {
        self.models.values()
    }

    /// Every alias and the model it names, in alias order.
    pub fn aliases(&self) -> &BTreeMap<String, String> {
        &self.aliases
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// The models, for building a new version from this one.
    pub fn into_models(self) -> (Vec<ModelPrice>, BTreeMap<String, String>) {
        (self.models.into_values().collect(), self.aliases)
    }
}

/// `usd_per_token` × 1,000,000: the price per million tokens that price lists quote, exact.
/// `None` only past `Decimal`'s range, which a price within [`USD_PER_TOKEN_MAX`] never reaches.
pub fn per_million(usd_per_token: Decimal) -> Option<Decimal> {
    usd_per_token
        .checked_mul(Decimal::from(1_000_000))
        .map(|d| d.normalize())
}

/// A model's name without a provider prefix and without a date or version suffix, for matching
/// the same model under the names providers and LiteLLM give it: `anthropic/claude-sonnet-4-
/// 20250514` → `claude-sonnet-4`, `gpt-4o-2024-08-06` → `gpt-4o`, `gpt-4o-mini` stays.
pub fn model_family(name: &str) -> &str {
    let base = name.rsplit('/').next().unwrap_or(name);
    let is_date = |rest: &str| {
        let b = rest.as_bytes();
        match b.len() {
            8 => b.iter().all(u8::is_ascii_digit),
            10 => b.iter().enumerate().all(|(i, c)| match i {
                4 | 7 => *c == b'-',
                _ => c.is_ascii_digit(),
            }),
            _ => false,
        }
    };
    base.match_indices('-')
        .map(|(i, _)| i)
        .find(|&i| {
            let rest = &base[i + 1..];
            rest == "latest" || is_date(rest)
        })
        .map_or(base, |i| &base[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        Decimal::from_str_exact(text).unwrap()
    }

    #[test]
    fn a_table_keeps_one_price_per_model_in_name_order() {
        let mut a = builtin::models().remove(0);
        a.model = "zeta".into();
        let mut b = a.clone();
        b.model = "alpha".into();
        let mut c = a.clone();
        c.input_usd_per_token = d("0.5");
        let table = PriceTable::from_models("v".into(), vec![a, b, c]);
        assert_eq!(table.len(), 2);
        assert!(!table.is_empty());
        let names: Vec<&str> = table.models().map(|m| m.model.as_str()).collect();
        assert_eq!(names, ["alpha", "zeta"]);
        assert_eq!(table.get("zeta").unwrap().input_usd_per_token, d("0.5"));
        assert!(table.get("Zeta").is_none(), "names are exact");
        assert!(PriceTable::from_models("e".into(), vec![]).is_empty());
    }

    #[test]
    fn names_resolve_exactly_then_by_alias_then_without_the_provider_prefix() {
        let table = PriceTable::builtin().with_aliases(BTreeMap::from([
            ("house".to_owned(), "gpt-4o".to_owned()),
            ("dangling".to_owned(), "no-such-model".to_owned()),
        ]));
        assert_eq!(table.resolve("gpt-4o").unwrap().model, "gpt-4o");
        assert_eq!(table.resolve("house").unwrap().model, "gpt-4o");
        assert_eq!(
            table.resolve("openai/gpt-4o-mini").unwrap().model,
            "gpt-4o-mini"
        );
        assert!(table.resolve("dangling").is_none());
        assert_eq!(
            table.aliases().len(),
            1,
            "an alias naming nothing is dropped"
        );
        assert!(table.resolve("openai/").is_none());
        assert!(table.resolve("/gpt-4o").is_none());
        assert!(table.resolve("gpt-5").is_none());
        // A prefixed key that exists wins over stripping.
        let or = "openrouter/meta-llama/llama-3.3-70b-instruct";
        assert_eq!(table.resolve(or).unwrap().model, or);
    }

    #[test]
    fn families_drop_prefixes_and_dates_but_not_variants() {
        for (name, family) in [
            ("anthropic/claude-sonnet-4-20250514", "claude-sonnet-4"),
            ("claude-sonnet-4", "claude-sonnet-4"),
            ("gpt-4o-2024-08-06", "gpt-4o"),
            ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
            ("gpt-4o-mini", "gpt-4o-mini"),
            ("openai/o3", "o3"),
            ("chatgpt-4o-latest", "chatgpt-4o"),
            ("gpt-4.1-nano", "gpt-4.1-nano"),
            (
                "openrouter/anthropic/claude-3.5-sonnet",
                "claude-3.5-sonnet",
            ),
            ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ] {
            assert_eq!(model_family(name), family, "{name}");
        }
    }

    #[test]
    fn modes_round_trip_through_their_text() {
        for mode in ModelMode::ALL {
            assert_eq!(mode.as_str().parse::<ModelMode>(), Ok(*mode));
            assert_eq!(
                serde_json::to_value(mode).unwrap(),
                serde_json::json!(mode.as_str())
            );
        }
        assert!("image_generation".parse::<ModelMode>().is_err());
    }

    #[test]
    fn dims_serialize_as_exact_strings_and_read_back() {
        let dims = PriceDims {
            cache_read_input: Some(d("0.000000075")),
            search: Some(SearchPrices {
                low: d("0.03"),
                medium: d("0.035"),
                high: d("0.05"),
            }),
            tiers: vec![PriceTier {
                above_tokens: 200_000,
                input: d("0.000006"),
                output: Some(d("0.0000225")),
                cache_read_input: None,
                cache_creation_input: None,
                cache_creation_input_1h: None,
            }],
            ..PriceDims::default()
        };
        let json = serde_json::to_string(&dims).unwrap();
        assert!(json.contains("\"0.000000075\""), "{json}");
        assert!(
            !json.contains("output_audio"),
            "absent prices are left out: {json}"
        );
        let back: PriceDims = serde_json::from_str(&json).unwrap();
        assert_eq!(back, dims);
        assert!(PriceDims::default().is_empty());
        assert_eq!(dims.search.unwrap().max(), d("0.05"));
        assert_eq!(dims.token_prices().len(), 3);
        assert_eq!(dims.unit_prices().len(), 3);
    }

    #[test]
    fn per_million_is_exact() {
        assert_eq!(per_million(d("0.00000015")), Some(d("0.15")));
        assert_eq!(per_million(d("0.0000025")).unwrap().to_string(), "2.5");
        assert_eq!(per_million(Decimal::ZERO).unwrap().to_string(), "0");
    }
}
