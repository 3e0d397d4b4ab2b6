//! The price table tollgate charges by: what one token of each model costs in USD.
//!
//! Pure data, no I/O: the gateway turns metered tokens into USD with a [`PriceTable`], and
//! `ledger::prices` stores imported tables. Two sources:
//! - [`PriceTable::builtin`]: a small table compiled in ([`builtin`]), used until an operator
//!   imports one;
//! - [`parse_litellm`]: LiteLLM's price map (`model_prices_and_context_window.json`), which
//!   `tollgate prices import` stores as a new version in the ledger.
//!
//! Guarantees: every price is an exact [`Decimal`] (USD per token), never a float, and never
//! negative; a table holds each model once; iteration is in model-name order.

pub mod builtin;
mod litellm;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;

pub use litellm::{
    LiteLlmImport, PRICE_FILE_BYTES_MAX, PRICE_MODELS_MAX, PriceImportError, parse_litellm,
    parse_litellm_report,
};

/// Longest model name a table holds (LiteLLM's longest are about 100 characters).
pub const MODEL_NAME_LEN_MAX: usize = 200;
/// Longest provider name a table holds.
pub const PROVIDER_LEN_MAX: usize = 64;
/// Highest price per token accepted, in USD. The dearest models cost well under 0.001 USD per
/// token; a bigger number is almost surely a price per million tokens put in the wrong field.
pub const USD_PER_TOKEN_MAX: Decimal = Decimal::ONE;

/// What a model is billed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelMode {
    Chat,
    Completion,
    Embedding,
}

impl ModelMode {
    pub const ALL: &'static [ModelMode] =
        &[ModelMode::Chat, ModelMode::Completion, ModelMode::Embedding];

    /// The stored and printed spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            ModelMode::Chat => "chat",
            ModelMode::Completion => "completion",
            ModelMode::Embedding => "embedding",
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
                    "unknown model mode {text:?} (expected one of: chat, completion, embedding)"
                )
            })
    }
}

impl fmt::Display for ModelMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One model's price. Prices serialize as exact decimal strings.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
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
}

/// A whole price table: one price per model, and the version it came from.
///
/// `version` is `"builtin-2026-11"` for the compiled-in table and `"imported-<n>"` for version
/// `n` of the ledger's imported tables (see `Ledger::price_table`).
#[derive(Debug, Clone, PartialEq)]
pub struct PriceTable {
    pub version: String,
    models: BTreeMap<String, ModelPrice>,
}

impl PriceTable {
    /// The table compiled into this binary (see [`builtin`] for where its prices come from).
    pub fn builtin() -> PriceTable {
        PriceTable::from_models(builtin::VERSION.to_owned(), builtin::models())
    }

    /// A table of `models`. A later entry for a model already given replaces the earlier one.
    pub fn from_models(version: String, models: Vec<ModelPrice>) -> PriceTable {
        let models = models.into_iter().map(|m| (m.model.clone(), m)).collect();
        PriceTable { version, models }
    }

    /// The price of `model`, by its exact name.
    pub fn get(&self, model: &str) -> Option<&ModelPrice> {
        self.models.get(model)
    }

    /// Every model, in model-name order.
    pub fn models(&self) -> impl Iterator<Item = &ModelPrice> {
        self.models.values()
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}

/// `usd_per_token` × 1,000,000: the price per million tokens that price lists quote, exact.
/// `None` only past `Decimal`'s range, which a price within [`USD_PER_TOKEN_MAX`] never reaches.
pub fn per_million(usd_per_token: Decimal) -> Option<Decimal> {
    usd_per_token
        .checked_mul(Decimal::from(1_000_000))
        .map(|d| d.normalize())
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
    fn per_million_is_exact() {
        assert_eq!(per_million(d("0.00000015")), Some(d("0.15")));
        assert_eq!(per_million(d("0.0000025")).unwrap().to_string(), "2.5");
        assert_eq!(per_million(Decimal::ZERO).unwrap().to_string(), "0");
    }
}
