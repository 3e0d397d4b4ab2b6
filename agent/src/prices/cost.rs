//! What a request costs in USD: exactly LiteLLM's arithmetic (1.82.6,
//! `litellm_core_utils/llm_cost_calc/utils.py::generic_cost_per_token`, the Anthropic web-search
//! fee and OpenAI's search context fee), in exact decimals instead of floats, so that tollgate's
//! charge equals LiteLLM's own cost × the operator's multipliers to the nano-credit.
//!
//! The rules, as LiteLLM applies them to a usage report:
//! - Prompt: `prompt_tokens` includes cached reads, cache writes, audio and image tokens. Text
//!   tokens are the reported `text_tokens`, or (when none is reported, or the details add up to
//!   more than the prompt) the prompt minus the other kinds. Text × input price, cached ×
//!   cache-read price, audio × audio price, image tokens × image price (else the input price),
//!   cache writes × write price (split into the five-minute and one-hour caches when reported),
//!   images by count × per-image price.
//! - Long context: when `prompt_tokens` exceeds a tier's threshold (the highest such tier), its
//!   prices replace the base input, output, cache-read and cache-write prices it gives.
//! - Completion: text tokens are the reported `text_tokens`, or, when reasoning, audio or image
//!   tokens are reported, the completion minus those; otherwise the whole completion. Text ×
//!   output price; reasoning, audio and image output tokens × their own price (else the output
//!   price) — only when the completion was broken down.
//! - Fees: web searches (the Anthropic count × the medium search price, or one search of the
//!   request's context size for OpenAI-style search), and a per-request fee. LiteLLM 1.82.6
//!   ignores `input_cost_per_request` (four legacy Perplexity models carry it); the provider
//!   bills it, so tollgate charges it — the one place tollgate's cost exceeds LiteLLM's.
//! - A price the model does not carry costs 0 for its kind (cache reads, writes, audio input),
//!   exactly as LiteLLM treats a missing key.
//!
//! [`worst_case`] is the reservation side: an upper bound of [`usd_cost`] for any usage within
//! a prompt bound and an output cap, using the dearest price each token could be billed at.
//! Pure functions, no I/O; every product is exact and saturates at `Decimal::MAX` (an absurd
//! count is unaffordable, never a panic).

use rust_decimal::Decimal;

use super::{ModelPrice, PriceTier};

/// A web search's context size (`web_search_options.search_context_size`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SearchSize {
    Low,
    #[default]
    Medium,
    High,
}

impl SearchSize {
    pub fn parse(text: &str) -> Option<SearchSize> {
        match text {
            "low" => Some(SearchSize::Low),
            "medium" => Some(SearchSize::Medium),
            "high" => Some(SearchSize::High),
            _ => None,
        }
    }
}

/// What the upstream reported a request used. Counts are as reported; a detail left at 0 was
/// not reported (as in LiteLLM, where a missing detail reads as 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// Every prompt token, including cached, cache-written, audio and image tokens.
    pub prompt_tokens: u64,
    /// Every generated token, including reasoning and audio tokens.
    pub completion_tokens: u64,
    /// Prompt tokens read from the cache.
    pub cached_tokens: u64,
    /// Prompt tokens written to the cache.
    pub cache_creation_tokens: u64,
    /// The cache writes split into (five-minute, one-hour), when the provider reports it.
    pub cache_creation_split: Option<(u64, u64)>,
    /// Prompt text tokens, when reported.
    pub prompt_text_tokens: u64,
    pub prompt_audio_tokens: u64,
    pub prompt_image_tokens: u64,
    /// Input images by count (priced per image).
    pub image_count: u64,
    /// Completion text tokens, when reported.
    pub completion_text_tokens: u64,
    pub completion_audio_tokens: u64,
    pub reasoning_tokens: u64,
    pub completion_image_tokens: u64,
    /// Web searches billed, and at which context size.
    pub searches: u64,
    pub search_size: SearchSize,
}

impl TokenUsage {
    /// Plain usage: prompt and completion tokens, no details.
    pub fn plain(prompt_tokens: u64, completion_tokens: u64) -> TokenUsage {
        TokenUsage {
            prompt_tokens,
            completion_tokens,
            ..TokenUsage::default()
        }
    }
}

fn mul(count: u64, price: Decimal) -> Decimal {
    Decimal::from(count)
        .checked_mul(price)
        .unwrap_or(Decimal::MAX)
}

fn add(a: Decimal, b: Decimal) -> Decimal {
    a.checked_add(b).unwrap_or(Decimal::MAX)
}

/// The prices in force for a prompt of `prompt_tokens`: the base ones, or those of the highest
/// tier whose threshold it exceeds.
struct Rates {
    input: Decimal,
    output: Decimal,
    cache_read: Decimal,
    cache_creation: Decimal,
    cache_creation_1h: Decimal,
}

fn rates(price: &ModelPrice, prompt_tokens: u64) -> Rates {
    let d = &price.dims;
    let base = Rates {
        input: price.input_usd_per_token,
        output: price.output_usd_per_token,
        cache_read: d.cache_read_input.unwrap_or(Decimal::ZERO),
        cache_creation: d.cache_creation_input.unwrap_or(Decimal::ZERO),
        cache_creation_1h: d.cache_creation_input_1h.unwrap_or(Decimal::ZERO),
    };
    let tier: Option<&PriceTier> = d
        .tiers
        .iter()
        .rev()
        .find(|t| prompt_tokens > t.above_tokens);
    match tier {
        None => base,
        Some(t) => Rates {
            input: t.input,
            output: t.output.unwrap_or(base.output),
            cache_read: t.cache_read_input.unwrap_or(base.cache_read),
            cache_creation: t.cache_creation_input.unwrap_or(base.cache_creation),
            cache_creation_1h: t.cache_creation_input_1h.unwrap_or(base.cache_creation_1h),
        },
    }
}

/// The USD cost of `usage` at `price`, exact (see the module doc for the rules).
pub fn usd_cost(price: &ModelPrice, usage: &TokenUsage) -> Decimal {
    let d = &price.dims;
    let r = rates(price, usage.prompt_tokens);

    // Prompt.
    let others = usage
        .cached_tokens
        .saturating_add(usage.prompt_audio_tokens)
        .saturating_add(usage.cache_creation_tokens)
        .saturating_add(usage.prompt_image_tokens);
    let double_counted = usage.cached_tokens > 0
        && usage.prompt_text_tokens.saturating_add(others) > usage.prompt_tokens;
    let text_in = if (usage.prompt_text_tokens == 0 && usage.image_count == 0) || double_counted {
        // LiteLLM computes this in Python ints and lets a malformed report (details adding up
        // to more than the prompt) go negative; a cost is never negative here.
        usage.prompt_tokens.saturating_sub(others)
    } else {
        usage.prompt_text_tokens
    };
    let mut prompt = mul(text_in, r.input);
    prompt = add(prompt, mul(usage.cached_tokens, r.cache_read));
    if usage.prompt_audio_tokens > 0 {
        prompt = add(
            prompt,
            mul(
                usage.prompt_audio_tokens,
                d.input_audio.unwrap_or(Decimal::ZERO),
            ),
        );
    }
    if usage.prompt_image_tokens > 0 {
        // LiteLLM: the image-token price, else the *base* input price (not a tier's).
        let per = d.input_image.unwrap_or(price.input_usd_per_token);
        prompt = add(prompt, mul(usage.prompt_image_tokens, per));
    }
    match usage.cache_creation_split {
        Some((five_minutes, one_hour)) => {
            prompt = add(prompt, mul(five_minutes, r.cache_creation));
            prompt = add(prompt, mul(one_hour, r.cache_creation_1h));
        }
        None if usage.cache_creation_tokens > 0 => {
            prompt = add(prompt, mul(usage.cache_creation_tokens, r.cache_creation));
        }
        None => {}
    }
    if usage.image_count > 0 {
        prompt = add(
            prompt,
            mul(usage.image_count, d.per_image.unwrap_or(Decimal::ZERO)),
        );
    }

    // Completion.
    let broken_down = usage.reasoning_tokens > 0
        || usage.completion_audio_tokens > 0
        || usage.completion_image_tokens > 0;
    let (text_out, all_text) = if usage.completion_text_tokens > 0 {
        (usage.completion_text_tokens, false)
    } else if broken_down {
        (
            usage
                .completion_tokens
                .saturating_sub(usage.reasoning_tokens)
                .saturating_sub(usage.completion_audio_tokens)
                .saturating_sub(usage.completion_image_tokens),
            false,
        )
    } else {
        (usage.completion_tokens, true)
    };
    let mut completion = mul(text_out, r.output);
    if !all_text {
        let or_base = |p: Option<Decimal>| p.unwrap_or(r.output);
        completion = add(
            completion,
            mul(usage.completion_audio_tokens, or_base(d.output_audio)),
        );
        completion = add(
            completion,
            mul(usage.reasoning_tokens, or_base(d.output_reasoning)),
        );
        completion = add(
            completion,
            mul(usage.completion_image_tokens, or_base(d.output_image)),
        );
    }

    add(add(prompt, completion), fees(price, usage))
}

/// Search and per-request fees.
fn fees(price: &ModelPrice, usage: &TokenUsage) -> Decimal {
    let d = &price.dims;
    let mut total = d.per_request.unwrap_or(Decimal::ZERO);
    if usage.searches > 0
        && let Some(search) = d.search
    {
        let each = match usage.search_size {
            SearchSize::Low => search.low,
            SearchSize::Medium => search.medium,
            SearchSize::High => search.high,
        };
        total = add(total, mul(usage.searches, each));
    }
    total
}

/// The most a request can use: its prompt bound, its output cap (all choices together), and
/// what it may add beyond text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ceiling {
    /// An upper bound of the prompt tokens the provider will count.
    pub prompt_tokens: u64,
    /// The most output tokens, all choices together.
    pub output_tokens: u64,
    /// The prompt carries audio (its tokens may be billed at the audio price).
    pub audio_input: bool,
    /// The request may produce audio output.
    pub audio_output: bool,
    /// Input images, for a per-image price.
    pub images: u64,
    /// The most web searches the request may run.
    pub searches: u64,
}

/// The dearest price one prompt token and one output token can be billed at, for a prompt of
/// up to `ceiling.prompt_tokens`: every kind the request may use, every tier it may reach.
fn dearest(price: &ModelPrice, ceiling: &Ceiling) -> (Decimal, Decimal) {
    let d = &price.dims;
    let mut input = [
        Some(price.input_usd_per_token),
        d.cache_read_input,
        d.cache_creation_input,
        d.cache_creation_input_1h,
        d.input_image,
        ceiling.audio_input.then_some(d.input_audio).flatten(),
    ]
    .into_iter()
    .flatten()
    .fold(Decimal::ZERO, Decimal::max);
    let mut output = [
        Some(price.output_usd_per_token),
        d.output_reasoning,
        d.output_image,
        ceiling.audio_output.then_some(d.output_audio).flatten(),
    ]
    .into_iter()
    .flatten()
    .fold(Decimal::ZERO, Decimal::max);
    for tier in d
        .tiers
        .iter()
        .filter(|t| ceiling.prompt_tokens > t.above_tokens)
    {
        input = [
            Some(tier.input),
            tier.cache_read_input,
            tier.cache_creation_input,
            tier.cache_creation_input_1h,
        ]
        .into_iter()
        .flatten()
        .fold(input, Decimal::max);
        output = output.max(tier.output.unwrap_or(Decimal::ZERO));
    }
    (input, output)
}

/// What a request that stays within `ceiling` costs at most, besides its output: the prompt
/// at its dearest price, images, searches and the per-request fee.
pub fn worst_case_without_output(price: &ModelPrice, ceiling: &Ceiling) -> Decimal {
    let d = &price.dims;
    let (input, _) = dearest(price, ceiling);
    let mut total = mul(ceiling.prompt_tokens, input);
    total = add(
        total,
        mul(ceiling.images, d.per_image.unwrap_or(Decimal::ZERO)),
    );
    if let Some(search) = d.search {
        total = add(total, mul(ceiling.searches, search.max()));
    }
    add(total, d.per_request.unwrap_or(Decimal::ZERO))
}

/// The dearest price of one output token within `ceiling`.
pub fn output_price_ceiling(price: &ModelPrice, ceiling: &Ceiling) -> Decimal {
    dearest(price, ceiling).1
}

/// An upper bound of [`usd_cost`] for any usage within `ceiling`.
pub fn worst_case(price: &ModelPrice, ceiling: &Ceiling) -> Decimal {
    add(
        worst_case_without_output(price, ceiling),
        mul(ceiling.output_tokens, output_price_ceiling(price, ceiling)),
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::prices::{ModelMode, PriceDims, SearchPrices};

    fn d(text: &str) -> Decimal {
        Decimal::from_str_exact(text).unwrap()
    }

    fn model(input: &str, output: &str, dims: PriceDims) -> ModelPrice {
        ModelPrice {
            model: "m".into(),
            provider: "openai".into(),
            mode: ModelMode::Chat,
            input_usd_per_token: d(input),
            output_usd_per_token: d(output),
            max_output_tokens: None,
            quality_score: None,
            dims,
        }
    }

    fn gpt_4o() -> ModelPrice {
        model(
            "0.0000025",
            "0.00001",
            PriceDims {
                cache_read_input: Some(d("0.00000125")),
                ..PriceDims::default()
            },
        )
    }

    fn claude_sonnet_4() -> ModelPrice {
        model(
            "0.000003",
            "0.000015",
            PriceDims {
                cache_read_input: Some(d("0.0000003")),
                cache_creation_input: Some(d("0.00000375")),
                cache_creation_input_1h: Some(d("0.000006")),
                search: Some(SearchPrices {
                    low: d("0.01"),
                    medium: d("0.01"),
                    high: d("0.01"),
                }),
                tiers: vec![PriceTier {
                    above_tokens: 200_000,
                    input: d("0.000006"),
                    output: Some(d("0.0000225")),
                    cache_read_input: Some(d("0.0000006")),
                    cache_creation_input: Some(d("0.0000075")),
                    cache_creation_input_1h: None,
                }],
                ..PriceDims::default()
            },
        )
    }

    /// Each case: usage, and LiteLLM 1.82.6's own cost for it (computed with
    /// `litellm.cost_per_token` on the wheel's price map; exact values written out).
    #[test]
    fn costs_equal_litellms_on_a_table_of_cases() {
        let cases: Vec<(&str, ModelPrice, TokenUsage, &str)> = vec![
            (
                "plain",
                gpt_4o(),
                TokenUsage::plain(1000, 500),
                "0.0075", // 1000 × 2.5e-6 + 500 × 1e-5
            ),
            (
                "cached prompt tokens at the cache-read price",
                gpt_4o(),
                TokenUsage {
                    cached_tokens: 800,
                    ..TokenUsage::plain(1000, 500)
                },
                // 200 × 2.5e-6 + 800 × 1.25e-6 + 500 × 1e-5
                "0.0065",
            ),
            (
                "anthropic cache writes and reads",
                claude_sonnet_4(),
                TokenUsage {
                    cached_tokens: 300,
                    cache_creation_tokens: 200,
                    ..TokenUsage::plain(1000, 100)
                },
                // 500 × 3e-6 + 300 × 3e-7 + 200 × 3.75e-6 + 100 × 1.5e-5
                "0.00384",
            ),
            (
                "one-hour cache writes",
                claude_sonnet_4(),
                TokenUsage {
                    cache_creation_tokens: 300,
                    cache_creation_split: Some((100, 200)),
                    ..TokenUsage::plain(1000, 0)
                },
                // 700 × 3e-6 + 100 × 3.75e-6 + 200 × 6e-6
                "0.003675",
            ),
            (
                "above 200k tokens every price takes its tier",
                claude_sonnet_4(),
                TokenUsage {
                    cached_tokens: 1_000,
                    ..TokenUsage::plain(250_000, 1_000)
                },
                // 249,000 × 6e-6 + 1,000 × 6e-7 + 1,000 × 2.25e-5
                "1.5171",
            ),
            (
                "exactly 200k tokens is not above",
                claude_sonnet_4(),
                TokenUsage::plain(200_000, 0),
                "0.6",
            ),
            (
                "reasoning tokens at the output price without their own",
                model("0.000002", "0.000008", PriceDims::default()),
                TokenUsage {
                    reasoning_tokens: 300,
                    ..TokenUsage::plain(100, 500)
                },
                // 100 × 2e-6 + 200 × 8e-6 + 300 × 8e-6
                "0.0042",
            ),
            (
                "reasoning tokens at their own price",
                model(
                    "0.000002",
                    "0.000008",
                    PriceDims {
                        output_reasoning: Some(d("0.00001")),
                        ..PriceDims::default()
                    },
                ),
                TokenUsage {
                    reasoning_tokens: 300,
                    ..TokenUsage::plain(100, 500)
                },
                // 100 × 2e-6 + 200 × 8e-6 + 300 × 1e-5
                "0.0048",
            ),
            (
                "audio in and out",
                model(
                    "0.0000025",
                    "0.00001",
                    PriceDims {
                        input_audio: Some(d("0.00004")),
                        output_audio: Some(d("0.00008")),
                        ..PriceDims::default()
                    },
                ),
                TokenUsage {
                    prompt_audio_tokens: 400,
                    completion_audio_tokens: 50,
                    ..TokenUsage::plain(500, 60)
                },
                // 100 × 2.5e-6 + 400 × 4e-5 + 10 × 1e-5 + 50 × 8e-5
                "0.02035",
            ),
            (
                "a reported text count wins",
                gpt_4o(),
                TokenUsage {
                    prompt_text_tokens: 900,
                    completion_text_tokens: 10,
                    reasoning_tokens: 5,
                    ..TokenUsage::plain(1000, 20)
                },
                // 900 × 2.5e-6 + 10 × 1e-5 + 5 × 1e-5
                "0.0024",
            ),
            (
                "anthropic web searches at the medium price",
                claude_sonnet_4(),
                TokenUsage {
                    searches: 3,
                    ..TokenUsage::plain(10, 20)
                },
                // 10 × 3e-6 + 20 × 1.5e-5 + 3 × 0.01
                "0.03033",
            ),
            (
                "a per-request fee",
                model(
                    "0",
                    "0.0000028",
                    PriceDims {
                        per_request: Some(d("0.005")),
                        ..PriceDims::default()
                    },
                ),
                TokenUsage::plain(10, 10),
                "0.005028",
            ),
            (
                "images by count",
                model(
                    "0.000001",
                    "0.000002",
                    PriceDims {
                        per_image: Some(d("0.0025")),
                        ..PriceDims::default()
                    },
                ),
                TokenUsage {
                    image_count: 2,
                    prompt_text_tokens: 10,
                    ..TokenUsage::plain(10, 0)
                },
                "0.00501",
            ),
        ];
        for (what, price, usage, litellm) in cases {
            assert_eq!(usd_cost(&price, &usage), d(litellm), "{what}");
        }
    }

    #[test]
    fn a_cache_read_without_its_price_costs_nothing_like_in_litellm() {
        let no_cache_price = model("0.000001", "0.000002", PriceDims::default());
        let usage = TokenUsage {
            cached_tokens: 10,
            ..TokenUsage::plain(20, 0)
        };
        assert_eq!(usd_cost(&no_cache_price, &usage), d("0.00001"));
    }

    fn arb_usage() -> impl Strategy<Value = TokenUsage> {
        (
            0u64..300_000,
            0u64..5_000,
            0u64..1_000,
            0u64..1_000,
            0u64..500,
            0u64..500,
            0u64..3,
        )
            .prop_map(
                |(prompt, completion, cached, written, audio_out, reasoning, searches)| {
                    let cached = cached.min(prompt);
                    let written = written.min(prompt - cached);
                    let reasoning = reasoning.min(completion);
                    let audio_out = audio_out.min(completion - reasoning);
                    TokenUsage {
                        cached_tokens: cached,
                        cache_creation_tokens: written,
                        reasoning_tokens: reasoning,
                        completion_audio_tokens: audio_out,
                        searches,
                        ..TokenUsage::plain(prompt, completion)
                    }
                },
            )
    }

    proptest! {
        /// The reservation is a bound: no usage within a ceiling costs more than its worst case.
        #[test]
        fn the_worst_case_bounds_every_usage_within_it(usage in arb_usage()) {
            let mut sonnet = claude_sonnet_4();
            sonnet.dims.output_audio = Some(d("0.00008"));
            sonnet.dims.output_reasoning = Some(d("0.00002"));
            let ceiling = Ceiling {
                prompt_tokens: usage.prompt_tokens,
                output_tokens: usage.completion_tokens,
                audio_output: true,
                searches: usage.searches,
                ..Ceiling::default()
            };
            for price in [gpt_4o(), sonnet] {
                prop_assert!(usd_cost(&price, &usage) <= worst_case(&price, &ceiling));
            }
        }
    }
}
