//! The price table compiled into tollgate: used until an operator imports LiteLLM's price map.
//!
//! Where the prices come from: the providers' public price lists (OpenAI, Anthropic, Google,
//! OpenRouter, Together, DeepInfra) as of late 2025, per million tokens. Prices change; operators
//! import LiteLLM's current map (`tollgate prices import model_prices_and_context_window.json`)
//! to charge by today's. The quality scores (0-100, for routing the aliases auto / eco /
//! balanced / precision) are tollgate's own ranking; an imported table takes them from here by
//! exact model name (see `parse_litellm`).
//!
//! Guarantees: every price is exact. Each is written as whole US cents per million tokens
//! (every listed price is a whole number of cents), and one token costs cents × 1e-8 USD, which
//! [`Decimal::new`] builds exactly with no parsing that could fail.

use rust_decimal::Decimal;

use super::{ModelMode, ModelPrice};

/// The version string of the built-in table.
pub const VERSION: &str = "builtin-2026-11";

/// One built-in model: name, provider, mode, input and output price in US cents per million
/// tokens, max output tokens, quality score.
type Row = (
    &'static str,
    &'static str,
    ModelMode,
    i64,
    i64,
    Option<u32>,
    Option<u8>,
);

const ROWS: &[Row] = &[
    (
        "gpt-4o-mini",
        "openai",
        ModelMode::Chat,
        15,
        60,
        Some(16_384),
        Some(82),
    ),
    (
        "gpt-4o",
        "openai",
        ModelMode::Chat,
        250,
        1_000,
        Some(16_384),
        Some(88),
    ),
    (
        "gpt-4.1",
        "openai",
        ModelMode::Chat,
        200,
        800,
        Some(32_768),
        Some(90),
    ),
    (
        "gpt-4.1-mini",
        "openai",
        ModelMode::Chat,
        40,
        160,
        Some(32_768),
        Some(84),
    ),
    (
        "o3",
        "openai",
        ModelMode::Chat,
        200,
        800,
        Some(100_000),
        Some(96),
    ),
    (
        "claude-3-5-haiku",
        "anthropic",
        ModelMode::Chat,
        80,
        400,
        Some(8_192),
        Some(83),
    ),
    (
        "claude-sonnet-4",
        "anthropic",
        ModelMode::Chat,
        300,
        1_500,
        Some(64_000),
        Some(95),
    ),
    (
        "claude-opus-4",
        "anthropic",
        ModelMode::Chat,
        1_500,
        7_500,
        Some(32_000),
        Some(98),
    ),
    (
        "gemini-2.0-flash",
        "google",
        ModelMode::Chat,
        10,
        40,
        Some(8_192),
        Some(80),
    ),
    (
        "openrouter/meta-llama/llama-3.3-70b-instruct",
        "openrouter",
        ModelMode::Chat,
        13,
        40,
        Some(8_192),
        Some(78),
    ),
    (
        "together/meta-llama/Llama-3.3-70B-Instruct-Turbo",
        "together",
        ModelMode::Chat,
        88,
        88,
        Some(8_192),
        Some(78),
    ),
    (
        "deepinfra/meta-llama/Meta-Llama-3.1-8B-Instruct",
        "deepinfra",
        ModelMode::Chat,
        3,
        5,
        Some(8_192),
        Some(70),
    ),
    (
        "text-embedding-3-small",
        "openai",
        ModelMode::Embedding,
        2,
        0,
        None,
        None,
    ),
    (
        "text-embedding-3-large",
        "openai",
        ModelMode::Embedding,
        13,
        0,
        None,
        None,
    ),
    (
        "gpt-3.5-turbo-instruct",
        "openai",
        ModelMode::Completion,
        150,
        200,
        Some(4_096),
        Some(70),
    ),
];

/// USD per token from US cents per million tokens: cents × 1e-2 / 1e6 = cents × 1e-8, exactly.
fn usd_per_token(cents_per_million: i64) -> Decimal {
    Decimal::new(cents_per_million, 8).normalize()
}

/// The built-in models, in the order listed above.
pub fn models() -> Vec<ModelPrice> {
    ROWS.iter()
        .map(
            |&(model, provider, mode, input, output, max_output_tokens, quality_score)| {
                ModelPrice {
                    model: model.to_owned(),
                    provider: provider.to_owned(),
                    mode,
                    input_usd_per_token: usd_per_token(input),
                    output_usd_per_token: usd_per_token(output),
                    max_output_tokens,
                    quality_score,
                }
            },
        )
        .collect()
}

/// The built-in quality score of `model` (exact name), if it has one.
pub fn quality_score(model: &str) -> Option<u8> {
    ROWS.iter().find(|row| row.0 == model).and_then(|row| row.6)
}

#[cfg(test)]
mod tests {
    use super::super::{PriceTable, per_million};
    use super::*;

    fn d(text: &str) -> Decimal {
        Decimal::from_str_exact(text).unwrap()
    }

    #[test]
    fn the_builtin_table_has_the_listed_prices_exactly() {
        let table = PriceTable::builtin();
        assert_eq!(table.version, "builtin-2026-11");
        assert_eq!(table.len(), 15);
        let mini = table.get("gpt-4o-mini").unwrap();
        assert_eq!(
            mini,
            &ModelPrice {
                model: "gpt-4o-mini".into(),
                provider: "openai".into(),
                mode: ModelMode::Chat,
                input_usd_per_token: d("0.00000015"),
                output_usd_per_token: d("0.0000006"),
                max_output_tokens: Some(16_384),
                quality_score: Some(82),
            }
        );
        assert_eq!(mini.input_usd_per_token.to_string(), "0.00000015");
        let opus = table.get("claude-opus-4").unwrap();
        assert_eq!(opus.output_usd_per_token.to_string(), "0.000075");
        assert_eq!(
            (opus.provider.as_str(), opus.quality_score),
            ("anthropic", Some(98))
        );
        let small = table
            .get("deepinfra/meta-llama/Meta-Llama-3.1-8B-Instruct")
            .unwrap();
        assert_eq!(small.input_usd_per_token, d("0.00000003"));
        assert_eq!(small.output_usd_per_token, d("0.00000005"));
        let embed = table.get("text-embedding-3-large").unwrap();
        assert_eq!(embed.mode, ModelMode::Embedding);
        assert_eq!(embed.output_usd_per_token, Decimal::ZERO);
        assert_eq!((embed.max_output_tokens, embed.quality_score), (None, None));
        assert_eq!(
            table.get("gpt-3.5-turbo-instruct").unwrap().mode,
            ModelMode::Completion
        );
        assert!(table.get("gpt-5").is_none());
    }

    #[test]
    fn per_million_prices_read_back_as_listed() {
        let table = PriceTable::builtin();
        let listed = [
            ("gpt-4o", "2.5", "10"),
            ("gpt-4.1-mini", "0.4", "1.6"),
            ("o3", "2", "8"),
            ("claude-sonnet-4", "3", "15"),
            ("gemini-2.0-flash", "0.1", "0.4"),
            (
                "together/meta-llama/Llama-3.3-70B-Instruct-Turbo",
                "0.88",
                "0.88",
            ),
            ("text-embedding-3-small", "0.02", "0"),
        ];
        for (model, input, output) in listed {
            let m = table.get(model).unwrap();
            assert_eq!(
                per_million(m.input_usd_per_token).unwrap().to_string(),
                input,
                "{model}"
            );
            assert_eq!(
                per_million(m.output_usd_per_token).unwrap().to_string(),
                output,
                "{model}"
            );
        }
    }

    #[test]
    fn every_builtin_row_is_valid_and_unique() {
        let models = models();
        let table = PriceTable::builtin();
        assert_eq!(table.len(), models.len(), "a model is listed twice");
        for m in &models {
            assert!(m.input_usd_per_token > Decimal::ZERO, "{}", m.model);
            assert!(m.output_usd_per_token >= Decimal::ZERO, "{}", m.model);
            assert!(m.quality_score.is_none_or(|q| q <= 100), "{}", m.model);
            assert_eq!(
                m.quality_score.is_none(),
                m.mode == ModelMode::Embedding,
                "{}",
                m.model
            );
        }
        assert_eq!(quality_score("o3"), Some(96));
        assert_eq!(quality_score("text-embedding-3-small"), None);
        assert_eq!(quality_score("unknown"), None);
    }
}
