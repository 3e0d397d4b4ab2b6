//! The price table compiled into tollgate: used until an operator imports LiteLLM's price map.
//!
//! Where the prices come from: the providers' public price lists (OpenAI, Anthropic, Google,
//! OpenRouter, Together, DeepInfra) as of late 2025, per million tokens, as LiteLLM 1.82.6's map
//! also lists them (cached reads, cache writes and long-context tiers included). Prices change;
//! operators import LiteLLM's current map (`tollgate prices import
//! model_prices_and_context_window.json`) to charge by today's. The quality scores (0-100, for
//! routing the aliases auto / eco / balanced / precision) are tollgate's own ranking; an imported
//! table takes them from here by model family (see [`quality_score`]).
//!
//! Guarantees: every price is exact. Each is written as a decimal USD per million tokens
//! (`usd(15, 2)` = 0.15), and one token costs that × 1e-6, which [`Decimal::new`] builds exactly
//! with no parsing that could fail.

use rust_decimal::Decimal;

use super::{ModelMode, ModelPrice, PriceDims, PriceTier, model_family};

/// The version string of the built-in table.
pub const VERSION: &str = "builtin-2026-11";

/// A price in USD per million tokens: `mantissa × 10^-scale`.
#[derive(Clone, Copy)]
struct Usd(i64, u32);

const fn usd(mantissa: i64, scale: u32) -> Usd {
    Usd(mantissa, scale)
}

const NONE: Option<Usd> = None;

/// One built-in model.
struct Row {
    model: &'static str,
    provider: &'static str,
    mode: ModelMode,
    input: Usd,
    output: Usd,
    cache_read: Option<Usd>,
    cache_write: Option<Usd>,
    /// Above 200k prompt tokens: input, output, cache read, cache write.
    above_200k: Option<(Usd, Usd, Usd, Usd)>,
    max_output_tokens: Option<u32>,
    quality_score: Option<u8>,
}

const ROWS: &[Row] = &[
    Row {
        model: "gpt-4o-mini",
        provider: "openai",
        mode: ModelMode::Chat,
        input: usd(15, 2),
        output: usd(60, 2),
        cache_read: Some(usd(75, 3)),
        cache_write: NONE,
        above_200k: None,
        max_output_tokens: Some(16_384),
        quality_score: Some(82),
    },
    Row {
        model: "gpt-4o",
        provider: "openai",
        mode: ModelMode::Chat,
        input: usd(25, 1),
        output: usd(10, 0),
        cache_read: Some(usd(125, 2)),
        cache_write: NONE,
        above_200k: None,
        max_output_tokens: Some(16_384),
        quality_score: Some(88),
    },
    Row {
        model: "gpt-4.1",
        provider: "openai",
        mode: ModelMode::Chat,
        input: usd(2, 0),
        output: usd(8, 0),
        cache_read: Some(usd(5, 1)),
        cache_write: NONE,
        above_200k: None,
        max_output_tokens: Some(32_768),
        quality_score: Some(90),
    },
    Row {
        model: "gpt-4.1-mini",
        provider: "openai",
        mode: ModelMode::Chat,
        input: usd(4, 1),
        output: usd(16, 1),
        cache_read: Some(usd(1, 1)),
        cache_write: NONE,
        above_200k: None,
        max_output_tokens: Some(32_768),
        quality_score: Some(84),
    },
    Row {
        model: "o3",
        provider: "openai",
        mode: ModelMode::Chat,
        input: usd(2, 0),
        output: usd(8, 0),
        cache_read: Some(usd(5, 1)),
        cache_write: NONE,
        above_200k: None,
        max_output_tokens: Some(100_000),
        quality_score: Some(96),
    },
    Row {
        model: "claude-3-5-haiku",
        provider: "anthropic",
        mode: ModelMode::Chat,
        input: usd(8, 1),
        output: usd(4, 0),
        cache_read: Some(usd(8, 2)),
        cache_write: Some(usd(1, 0)),
        above_200k: None,
        max_output_tokens: Some(8_192),
        quality_score: Some(83),
    },
    Row {
        model: "claude-sonnet-4",
        provider: "anthropic",
        mode: ModelMode::Chat,
        input: usd(3, 0),
        output: usd(15, 0),
        cache_read: Some(usd(3, 1)),
        cache_write: Some(usd(375, 2)),
        above_200k: Some((usd(6, 0), usd(225, 1), usd(6, 1), usd(75, 1))),
        max_output_tokens: Some(64_000),
        quality_score: Some(95),
    },
    Row {
        model: "claude-opus-4",
        provider: "anthropic",
        mode: ModelMode::Chat,
        input: usd(15, 0),
        output: usd(75, 0),
        cache_read: Some(usd(15, 1)),
        cache_write: Some(usd(1875, 2)),
        above_200k: None,
        max_output_tokens: Some(32_000),
        quality_score: Some(98),
    },
    Row {
        model: "gemini-2.0-flash",
        provider: "google",
        mode: ModelMode::Chat,
        input: usd(1, 1),
        output: usd(4, 1),
        cache_read: Some(usd(25, 3)),
        cache_write: NONE,
        above_200k: None,
        max_output_tokens: Some(8_192),
        quality_score: Some(80),
    },
    Row {
        model: "openrouter/meta-llama/llama-3.3-70b-instruct",
        provider: "openrouter",
        mode: ModelMode::Chat,
        input: usd(13, 2),
        output: usd(40, 2),
        cache_read: NONE,
        cache_write: NONE,
        above_200k: None,
        max_output_tokens: Some(8_192),
        quality_score: Some(78),
    },
    Row {
        model: "together/meta-llama/Llama-3.3-70B-Instruct-Turbo",
        provider: "together",
        mode: ModelMode::Chat,
        input: usd(88, 2),
        output: usd(88, 2),
        cache_read: NONE,
        cache_write: NONE,
        above_200k: None,
        max_output_tokens: Some(8_192),
        quality_score: Some(78),
    },
    Row {
        model: "deepinfra/meta-llama/Meta-Llama-3.1-8B-Instruct",
        provider: "deepinfra",
        mode: ModelMode::Chat,
        input: usd(3, 2),
        output: usd(5, 2),
        cache_read: NONE,
        cache_write: NONE,
        above_200k: None,
        max_output_tokens: Some(8_192),
        quality_score: Some(70),
    },
    Row {
        model: "text-embedding-3-small",
        provider: "openai",
        mode: ModelMode::Embedding,
        input: usd(2, 2),
        output: usd(0, 0),
        cache_read: NONE,
        cache_write: NONE,
        above_200k: None,
        max_output_tokens: None,
        quality_score: None,
    },
    Row {
        model: "text-embedding-3-large",
        provider: "openai",
        mode: ModelMode::Embedding,
        input: usd(13, 2),
        output: usd(0, 0),
        cache_read: NONE,
        cache_write: NONE,
        above_200k: None,
        max_output_tokens: None,
        quality_score: None,
    },
    Row {
        model: "gpt-3.5-turbo-instruct",
        provider: "openai",
        mode: ModelMode::Completion,
        input: usd(15, 1),
        output: usd(2, 0),
        cache_read: NONE,
        cache_write: NONE,
        above_200k: None,
        max_output_tokens: Some(4_096),
        quality_score: Some(70),
    },
];

/// USD per token from USD per million tokens, exactly: `mantissa × 10^-(scale + 6)`.
fn per_token(price: Usd) -> Decimal {
    Decimal::new(price.0, price.1 + 6).normalize()
}

/// The built-in models, in the order listed above.
pub fn models() -> Vec<ModelPrice> {
    ROWS.iter()
        .map(|row| ModelPrice {
            model: row.model.to_owned(),
            provider: row.provider.to_owned(),
            mode: row.mode,
            input_usd_per_token: per_token(row.input),
            output_usd_per_token: per_token(row.output),
            max_output_tokens: row.max_output_tokens,
            quality_score: row.quality_score,
            dims: PriceDims {
                cache_read_input: row.cache_read.map(per_token),
                cache_creation_input: row.cache_write.map(per_token),
                tiers: row
                    .above_200k
                    .map(|(input, output, read, write)| PriceTier {
                        above_tokens: 200_000,
                        input: per_token(input),
                        output: Some(per_token(output)),
                        cache_read_input: Some(per_token(read)),
                        cache_creation_input: Some(per_token(write)),
                        cache_creation_input_1h: None,
                    })
                    .into_iter()
                    .collect(),
                ..PriceDims::default()
            },
        })
        .collect()
}

/// The built-in quality score of `model`: of the built-in model of the same family (the name
/// without a provider prefix or a date suffix, see [`model_family`]), if it has one. So
/// `claude-sonnet-4-20250514` and `anthropic/claude-sonnet-4` score as `claude-sonnet-4`, and
/// `gpt-4o-mini` does not score as `gpt-4o`.
pub fn quality_score(model: &str) -> Option<u8> {
    if let Some(row) = ROWS.iter().find(|row| row.model == model) {
        return row.quality_score;
    }
    let family = model_family(model);
    ROWS.iter()
        .find(|row| row.model == family || model_family(row.model) == family)
        .and_then(|row| row.quality_score)
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
                dims: PriceDims {
                    cache_read_input: Some(d("0.000000075")),
                    ..PriceDims::default()
                },
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
        assert_eq!(quality_score("claude-sonnet-4-20250514"), Some(95));
        assert_eq!(quality_score("anthropic/claude-opus-4"), Some(98));
        assert_eq!(quality_score("gpt-4o-mini-2024-07-18"), Some(82));
        assert_eq!(quality_score("gpt-4o-2024-08-06"), Some(88));
        assert_eq!(
            quality_score("openrouter/meta-llama/llama-3.3-70b-instruct"),
            Some(78)
        );
        assert_eq!(quality_score("text-embedding-3-small"), None);
        assert_eq!(quality_score("unknown"), None);
    }
}
