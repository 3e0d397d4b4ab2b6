//! What a request costs in credits: one place turns a model's USD cost (exactly LiteLLM's, see
//! `prices::cost`) into credits — × credits per USD × the level's multiplier × the tier's markup
//! (× the BYOK fee for a BYOK request) — and bounds what a request may cost before it is sent.
//! Pure and exact: `Decimal` arithmetic, rounded up to whole nano-credits once, at the end (a
//! request is never charged less than its price; the rounding is at most one nano-credit).

use rust_decimal::{Decimal, RoundingStrategy};
use tollgate_schema::money::Credits;

use crate::prices::ModelPrice;
use crate::prices::cost::{self, Ceiling, TokenUsage};

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

impl Factors {
    /// Credits per USD of provider cost, all factors applied. Saturating: an absurd factor
    /// makes every request unaffordable, never a panic.
    pub fn credits_per_usd(&self) -> Decimal {
        let mul = |a: Decimal, b: Decimal| a.checked_mul(b).unwrap_or(Decimal::MAX);
        mul(
            mul(
                mul(self.credits_per_usd, self.level_multiplier),
                self.tier_markup,
            ),
            self.byok_fee.unwrap_or(Decimal::ONE),
        )
    }
}

/// A model's price for one request: its USD prices and the request's credits per USD.
#[derive(Debug, Clone, PartialEq)]
pub struct Quote {
    pub price: ModelPrice,
    credits_per_usd: Decimal,
}

impl Quote {
    pub fn new(price: ModelPrice, factors: &Factors) -> Quote {
        Quote {
            price,
            credits_per_usd: factors.credits_per_usd(),
        }
    }

    /// The same factors at another model's price.
    pub fn at(&self, price: ModelPrice) -> Quote {
        Quote {
            price,
            credits_per_usd: self.credits_per_usd,
        }
    }

    fn credits(&self, usd: Decimal) -> Credits {
        usd.checked_mul(self.credits_per_usd)
            .map_or(Credits::MAX, to_credits_ceil)
    }

    /// What `usage` costs, rounded up to a nano-credit; `Credits::MAX` if it does not fit.
    pub fn cost(&self, usage: &TokenUsage) -> Credits {
        self.credits(cost::usd_cost(&self.price, usage))
    }

    /// The most a request within `ceiling` can cost.
    pub fn worst(&self, ceiling: &Ceiling) -> Credits {
        self.credits(cost::worst_case(&self.price, ceiling))
    }

    /// The most output tokens (all choices together) `budget` pays for, besides what `ceiling`
    /// needs without output (its output tokens are ignored); `u64::MAX` when output is free.
    pub fn output_tokens_affordable(&self, budget: Credits, ceiling: &Ceiling) -> u64 {
        let per_token = cost::output_price_ceiling(&self.price, ceiling)
            .checked_mul(self.credits_per_usd)
            .unwrap_or(Decimal::MAX);
        if per_token <= Decimal::ZERO {
            return u64::MAX;
        }
        let fixed = cost::worst_case_without_output(&self.price, ceiling)
            .checked_mul(self.credits_per_usd)
            .unwrap_or(Decimal::MAX);
        let left = budget.to_decimal().saturating_sub(fixed);
        if left <= Decimal::ZERO {
            return 0;
        }
        left.checked_div(per_token)
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
    use crate::prices::{ModelMode, PriceDims};

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
            dims: PriceDims::default(),
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
        let quote = Quote::new(price("0.00000015", "0.0000006"), &factors("1"));
        // 1000 × 1.5e-6 + 500 × 6e-6 = 0.0015 + 0.003 credits.
        assert_eq!(
            quote.cost(&TokenUsage::plain(1000, 500)),
            Credits::from_nanos(4_500_000)
        );
        // Eco's 0.7: 7 × 1.5e-7 × 10 = 1.05e-6 per input token → 1 token = 1050 nanos.
        let eco = Quote::new(price("0.00000015", "0.0000006"), &factors("0.7"));
        assert_eq!(
            eco.cost(&TokenUsage::plain(1, 0)),
            Credits::from_nanos(1_050)
        );
        // A third of a nano-credit is charged as one.
        let tiny = Quote::new(price("0.0000000000333", "0"), &factors("1"));
        assert_eq!(tiny.cost(&TokenUsage::plain(1, 0)), Credits::from_nanos(1));
        assert_eq!(tiny.cost(&TokenUsage::plain(0, 0)), Credits::ZERO);
    }

    #[test]
    fn byok_pays_only_the_fee() {
        let mut f = factors("1");
        f.byok_fee = Some(d("0.05"));
        let quote = Quote::new(price("0.000001", "0.000002"), &f);
        // 100 × 1e-5 + 100 × 2e-5 = 0.003 credits, 5 % of it = 0.00015.
        assert_eq!(
            quote.cost(&TokenUsage::plain(100, 100)),
            Credits::from_nanos(150_000)
        );
        f.byok_fee = Some(Decimal::ZERO);
        assert_eq!(
            Quote::new(price("0.000001", "0.000002"), &f).cost(&TokenUsage::plain(100, 100)),
            Credits::ZERO
        );
    }

    #[test]
    fn affordable_output_never_exceeds_the_budget() {
        let quote = Quote::new(price("0.000001", "0.000003"), &factors("1"));
        let budget = Credits::from_nanos(1_000_000); // 0.001 credits
        let ceiling = |output| Ceiling {
            prompt_tokens: 10,
            output_tokens: output,
            ..Ceiling::default()
        };
        let out = quote.output_tokens_affordable(budget, &ceiling(0));
        assert!(quote.worst(&ceiling(out)) <= budget);
        assert!(quote.worst(&ceiling(out + 1)) > budget);
        assert_eq!(
            quote.output_tokens_affordable(Credits::ZERO, &ceiling(0)),
            0
        );
        let free_output = Quote::new(price("0.000001", "0"), &factors("1"));
        assert_eq!(
            free_output.output_tokens_affordable(budget, &ceiling(0)),
            u64::MAX
        );
    }

    #[test]
    fn absurd_token_counts_saturate_instead_of_wrapping() {
        let quote = Quote::new(price("1", "1"), &factors("1"));
        assert_eq!(
            quote.cost(&TokenUsage::plain(u64::MAX, u64::MAX)),
            Credits::MAX
        );
    }
}
