//! The words both programs store and exchange, as types: tiers, power levels and which level a
//! tier may use, journal entry types, payment methods, fallback strategies, agent statuses.
//! Defined once, so the agent and the server can never disagree on a spelling or a rule (before,
//! the server let an admin put a trial user at `precision`, a level the agent's own CLI refuses
//! for that tier, and the gateways then served it).
//!
//! Each is an enum stored as text ([`text_enum!`]): `as_str`, `FromStr` whose error lists the
//! accepted values, `Display`, and serde in the same snake_case spelling. The SQL CHECK
//! constraints of both schemas spell the same lists (migrations are never edited, so a new word
//! needs a migration of its own on each side).

/// Declares an enum stored as text, with `ALL`, `as_str`, `FromStr` (whose error lists the
/// accepted values), `Display`, and serde in the same snake_case spelling.
#[macro_export]
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// Every spelling, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = String;
            fn from_str(text: &str) -> Result<Self, String> {
                match text {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "unknown {} {other:?} (expected one of: {})",
                        $what,
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(
    /// A user's subscription tier, lowest first.
    Tier, "tier" {
        Free => "free",
        Trial => "trial",
        Starter => "starter",
        Professional => "professional",
        Enterprise => "enterprise",
    }
);

text_enum!(
    /// How a request is routed and priced.
    PowerLevel, "power level" {
        Eco => "eco",
        Balanced => "balanced",
        Precision => "precision",
    }
);

impl Tier {
    /// The power levels users of this tier may run at (their own level, or one a request asks
    /// for).
    pub const fn levels_allowed(self) -> &'static [PowerLevel] {
        match self {
            Tier::Free | Tier::Trial => &[PowerLevel::Eco],
            Tier::Starter => &[PowerLevel::Eco, PowerLevel::Balanced],
            Tier::Professional | Tier::Enterprise => {
                &[PowerLevel::Eco, PowerLevel::Balanced, PowerLevel::Precision]
            }
        }
    }

    /// The level a new user of this tier runs at unless told: balanced where the tier allows it,
    /// else the best level it allows.
    pub fn default_power_level(self) -> PowerLevel {
        let allowed = self.levels_allowed();
        if allowed.contains(&PowerLevel::Balanced) {
            PowerLevel::Balanced
        } else {
            allowed.last().copied().unwrap_or(PowerLevel::Eco)
        }
    }

    /// Refuses a level this tier does not allow, saying which it allows.
    pub fn check_level(self, level: PowerLevel) -> Result<(), String> {
        let allowed = self.levels_allowed();
        if allowed.contains(&level) {
            return Ok(());
        }
        let names: Vec<&str> = allowed.iter().map(|l| l.as_str()).collect();
        Err(format!(
            "power level {level} is not available on the {self} tier (it allows: {})",
            names.join(", ")
        ))
    }

    /// Rank, lowest first (free < trial < starter < professional < enterprise).
    pub fn rank(self) -> usize {
        Tier::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }
}

text_enum!(
    /// The journal's transaction types. `escrow`: a fleet user's grant booked by the agent it
    /// was given to (positive, keyed `grant:…`), or what is left returned to the pool
    /// (negative, `release:…`).
    EntryType, "transaction type" {
        Purchase => "purchase",
        Usage => "usage",
        Refund => "refund",
        AdminAdjustment => "admin_adjustment",
        Bonus => "bonus",
        Allowance => "allowance",
        Expiry => "expiry",
        Escrow => "escrow",
    }
);

text_enum!(
    /// How a purchase was paid.
    PaymentMethod, "payment method" {
        Stripe => "stripe",
        Paypal => "paypal",
        Manual => "manual",
        Bonus => "bonus",
        Trial => "trial",
    }
);

text_enum!(
    /// How a power level picks among its providers when one fails.
    FallbackStrategy, "fallback strategy" {
        NextAvailable => "next_available",
        Cheapest => "cheapest",
        Fastest => "fastest",
    }
);

text_enum!(
    /// An agent's standing with the server.
    AgentStatus, "agent status" {
        Pending => "pending",
        Active => "active",
        Quarantined => "quarantined",
        Revoked => "revoked",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tier_defaults_to_a_level_it_allows() {
        for tier in Tier::ALL {
            assert!(
                tier.check_level(tier.default_power_level()).is_ok(),
                "{tier}"
            );
        }
        assert_eq!(Tier::Trial.default_power_level(), PowerLevel::Eco);
        assert_eq!(Tier::Starter.default_power_level(), PowerLevel::Balanced);
        let refused = Tier::Trial.check_level(PowerLevel::Precision).unwrap_err();
        assert!(
            refused.contains("trial") && refused.contains("eco"),
            "{refused}"
        );
        assert!(Tier::Free.rank() < Tier::Enterprise.rank());
    }

    #[test]
    fn spellings_round_trip_and_unknown_ones_name_the_choices() {
        for name in EntryType::NAMES {
            assert_eq!(name.parse::<EntryType>().unwrap().as_str(), *name);
        }
        let err = "wire".parse::<PaymentMethod>().unwrap_err();
        assert!(err.contains("stripe, paypal"), "{err}");
        assert_eq!(
            serde_json::to_string(&FallbackStrategy::NextAvailable).unwrap(),
            "\"next_available\""
        );
    }
}
