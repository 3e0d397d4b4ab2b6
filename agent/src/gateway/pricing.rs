//! What a request costs in credits: one place turns a model's USD prices into credits per token
//! (credits per USD × the level's multiplier × the tier's markup, × the BYOK fee for BYOK), and
//! tokens into credits. Pure and exact: `Decimal` arithmetic, rounded up to whole nano-credits
//! once, at the end (a request is never charged less than its price; the rounding is at most one
//! nano-credit).

use rust_decimal::{Decimal, RoundingStrategy};
use tollgate_schema::money::Credits;

use crate::prices::ModelPrice;

/// The factors a request's price is multiplied by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Factors {
    pub credits_per_usd: Decimal,
    /// The power level's cost multiplier (0.7 eco, 1 balanced, 1.5 precision by default).
    pub level_multiplier: Decimal,
    pub tier_markup: Decimal,
    /// For a BYOK request, the fee as a fraction of the cost (0.05 = 5 %); `None` otherwise.
    pub byok_fee: Option<Decimal>,
}

/// A model's price in credits per token, for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub input_per_token: Decimal,
    pub output_per_token: Decimal,
}

impl Rate {
    pub fn new(price: &ModelPrice, f: &Factors) -> Rate {
        // Saturating: an absurd price makes every request unaffordable, never a panic.
        let mul = |a: Decimal, b: Decimal| a.checked_mul(b).unwrap_or(Decimal::MAX);
        let factor = mul(
            mul(mul(f.credits_per_usd, f.level_multiplier), f.tier_markup),
            f.byok_fee.unwrap_or(Decimal::ONE),
        );
        Rate {
            input_per_token: mul(price.input_usd_per_token, factor),
            output_per_token: mul(price.output_usd_per_token, factor),
        }
    }

    /// The cost of `prompt` input and `completion` output tokens, rounded up to a nano-credit;
    /// `Credits::MAX` if it does not fit (such a request is never affordable).
    pub fn cost(&self, prompt: u64, completion: u64) -> Credits {
        let total = Decimal::from(prompt)
            .checked_mul(self.input_per_token)
            .and_then(|input| {
                Decimal::from(completion)
                    .checked_mul(self.output_per_token)
                    .and_then(|output| input.checked_add(output))
            });
        total.map_or(Credits::MAX, to_credits_ceil)
    }

    /// The most output tokens `budget` pays for after `prompt` input tokens (`u64::MAX` when
    /// output is free, as for embeddings).
    pub fn output_tokens_affordable(&self, budget: Credits, prompt: u64) -> u64 {
        if self.output_per_token <= Decimal::ZERO {
            return u64::MAX;
        }
        let prompt_cost = Decimal::from(prompt)
            .checked_mul(self.input_per_token)
            .unwrap_or(Decimal::MAX);
        let left = budget.to_decimal().saturating_sub(prompt_cost);
        if left <= Decimal::ZERO {
            return 0;
        }
        left.checked_div(self.output_per_token)
            .unwrap_or(Decimal::MAX)
            .floor()
            .try_into()
            .unwrap_or(u64::MAX)
    }

    /// Credits per token blended over a request (for the usage log's cost_per_token), as text.
    pub fn per_token_text(cost: Credits, tokens: u64) -> Option<String> {
        (tokens > 0).then(|| {
            (cost.to_decimal() / Decimal::from(tokens))
                .normalize()
                .to_string()
        })
    }
}

/// Rounds a credit amount up to a whole nano-credit.
fn to_credits_ceil(credits: Decimal) -> Credits {
    credits
        .checked_mul(Decimal::from(1_000_000_000_i64))
        .map(|n| n.round_dp_with_strategy(0, RoundingStrategy::ToPositiveInfinity))
        .and_then(|n| i64::try_from(n).ok())
        .map_or(Credits::MAX, Credits::from_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prices::ModelMode;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn price(input: &str, output: &str) -> ModelPrice {
        ModelPrice {
            model: "m".into(),
            provider: "openai".into(),
            mode: ModelMode::Chat,
            input_usd_per_token: d(input),
            output_usd_per_token: d(output),
            max_output_tokens: None,
            quality_score: None,
        }
    }

    fn factors(level: &str) -> Factors {
        Factors {
            credits_per_usd: d("10"),
            level_multiplier: d(level),
            tier_markup: Decimal::ONE,
            byok_fee: None,
        }
    }

    #[test]
    fn costs_are_exact_and_round_up_to_a_nano_credit() {
        // gpt-4o-mini: 0.15 / 0.60 USD per million tokens; 10 credits per USD.
        let rate = Rate::new(&price("0.00000015", "0.0000006"), &factors("1"));
        // 1000 × 1.5e-6 + 500 × 6e-6 = 0.0015 + 0.003 credits.
        assert_eq!(rate.cost(1000, 500), Credits::from_nanos(4_500_000));
        // Eco's 0.7: 7 × 1.5e-7 × 10 = 1.05e-6 per input token → 1 token = 1050 nanos.
        let eco = Rate::new(&price("0.00000015", "0.0000006"), &factors("0.7"));
        assert_eq!(eco.cost(1, 0), Credits::from_nanos(1_050));
        // A third of a nano-credit is charged as one.
        let tiny = Rate::new(&price("0.0000000000333", "0"), &factors("1"));
        assert_eq!(tiny.cost(1, 0), Credits::from_nanos(1));
        assert_eq!(tiny.cost(0, 0), Credits::ZERO);
    }

    #[test]
    fn byok_pays_only_the_fee() {
        let mut f = factors("1");
        f.byok_fee = Some(d("0.05"));
        let rate = Rate::new(&price("0.000001", "0.000002"), &f);
        // 100 × 1e-5 + 100 × 2e-5 = 0.003 credits, 5 % of it = 0.00015.
        assert_eq!(rate.cost(100, 100), Credits::from_nanos(150_000));
        f.byok_fee = Some(Decimal::ZERO);
        assert_eq!(
            Rate::new(&price("0.000001", "0.000002"), &f).cost(100, 100),
            Credits::ZERO
        );
    }

    #[test]
    fn affordable_output_never_exceeds_the_budget() {
        let rate = Rate::new(&price("0.000001", "0.000003"), &factors("1"));
        let budget = Credits::from_nanos(1_000_000); // 0.001 credits
        let out = rate.output_tokens_affordable(budget, 10);
        assert!(rate.cost(10, out) <= budget);
        assert!(rate.cost(10, out + 1) > budget);
        assert_eq!(rate.output_tokens_affordable(Credits::ZERO, 10), 0);
        let free_output = Rate::new(&price("0.000001", "0"), &factors("1"));
        assert_eq!(free_output.output_tokens_affordable(budget, 10), u64::MAX);
    }

    #[test]
    fn absurd_token_counts_saturate_instead_of_wrapping() {
        let rate = Rate::new(&price("1000000", "1000000"), &factors("1"));
        assert_eq!(rate.cost(u64::MAX, u64::MAX), Credits::MAX);
    }
}
