//! The mock's deterministic arithmetic: scenario directives, token counts, reply words, cost.
//!
//! Guarantees, all pure and total (no panics on any input):
//! - A *directive* is a whitespace-separated word `mock:NAME` or `mock:NAME=VALUE`. Unknown names,
//!   and known names with a missing or unparsable value, are ignored; a later directive of the
//!   same name wins. Directive words still count as prompt words.
//! - Prompt tokens are whitespace-separated words ([`count_words`]), so they never exceed the
//!   UTF-8 byte length of the text they were counted in (every word has at least one byte).
//! - A reply is `N` words taken cyclically from [`WORDS`], one token each. `N` is the
//!   `mock:tokens=N` directive (at most [`REPLY_TOKENS_MAX`]) or [`REPLY_TOKENS_DEFAULT`], then
//!   capped by the request's `max_completion_tokens`/`max_tokens`; the finish reason is `length`
//!   exactly when the cap cut the reply, else `stop`.
//! - Cost is exact integer arithmetic in 1e-8 USD, printed with eight decimals.

use std::time::Duration;

/// The reply vocabulary; reply word `i` is `WORDS[i % WORDS.len()]`.
pub const WORDS: [&str; 32] = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "incididunt",
    "ut",
    "labore",
    "et",
    "dolore",
    "magna",
    "aliqua",
    "enim",
    "ad",
    "minim",
    "veniam",
    "quis",
    "nostrud",
    "exercitation",
    "ullamco",
    "laboris",
    "nisi",
    "aliquip",
    "ex",
    "ea",
];

/// Reply length when the request has no `mock:tokens=N` directive.
pub const REPLY_TOKENS_DEFAULT: u64 = 16;
/// The largest `mock:tokens=N` honoured, so a non-streaming reply stays a few megabytes.
pub const REPLY_TOKENS_MAX: u64 = 1_000_000;
/// The largest `mock:slow=MS` honoured (one hour), so a deadline never overflows.
pub const SLOW_MS_MAX: u64 = 3_600_000;
/// Pace of an endless stream that has no `mock:slow=MS`, so it does not spin a core.
pub const ENDLESS_PACE_MS: u64 = 5;

/// The directives found in a request. `Default` is "behave like a healthy model".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scenario {
    /// `mock:tokens=N`: the reply length before the request's cap.
    pub tokens: Option<u64>,
    /// `mock:no_usage`: no `usage` in JSON bodies, no usage chunk in streams.
    pub no_usage: bool,
    /// `mock:status=CODE` (200..=599): an OpenAI-shaped error with that status, never a stream.
    pub status: Option<u16>,
    /// `mock:malformed`: broken JSON, or a stream with a broken event.
    pub malformed: bool,
    /// `mock:slow=MS`: wait before each stream token, or before a non-stream response.
    pub slow_ms: Option<u64>,
    /// `mock:endless`: a stream that sends tokens until the client leaves.
    pub endless: bool,
    /// `mock:hang`: never respond (until the mock shuts down).
    pub hang: bool,
    /// `mock:stall_after=K`: a stream that stops sending after K tokens, without ending.
    pub stall_after: Option<u64>,
    /// `mock:cut_after=K`: a stream that is broken off after K tokens.
    pub cut_after: Option<u64>,
    /// `mock:error_after=K`: a stream that sends an error event after K tokens and ends there,
    /// without `[DONE]` (how LiteLLM reports a provider failing after its 200 headers).
    pub error_after: Option<u64>,
}

impl Scenario {
    /// Applies every directive found in `text`.
    pub fn scan(&mut self, text: &str) {
        // Cheap test first: the benchmark's prompts carry no directive.
        if !text.contains("mock:") {
            return;
        }
        for word in text.split_whitespace() {
            if let Some(directive) = word.strip_prefix("mock:") {
                self.apply(directive);
            }
        }
    }

    fn apply(&mut self, directive: &str) {
        let (name, value) = match directive.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (directive, None),
        };
        let number = value.and_then(|v| v.parse::<u64>().ok());
        match (name, number) {
            ("tokens", Some(n)) => self.tokens = Some(n.min(REPLY_TOKENS_MAX)),
            ("no_usage", _) => self.no_usage = true,
            ("status", Some(code)) if (200..=599).contains(&code) => {
                self.status = u16::try_from(code).ok();
            }
            ("malformed", _) => self.malformed = true,
            ("slow", Some(ms)) => self.slow_ms = Some(ms.min(SLOW_MS_MAX)),
            ("endless", _) => self.endless = true,
            ("hang", _) => self.hang = true,
            ("stall_after", Some(k)) => self.stall_after = Some(k),
            ("cut_after", Some(k)) => self.cut_after = Some(k),
            ("error_after", Some(k)) => self.error_after = Some(k),
            _ => {}
        }
    }

    /// The wait before a non-stream response, or before each stream token.
    pub fn slow(&self) -> Option<Duration> {
        self.slow_ms.map(Duration::from_millis)
    }
}

/// Why a reply ended, as OpenAI spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The reply reached its natural length.
    Stop,
    /// The request's token cap cut the reply.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// The planned reply: its length in tokens (= words) and why it ends there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub tokens: u64,
    pub finish_reason: FinishReason,
}

/// Plans the reply for `scenario` under the request's token cap, if any.
pub fn reply(scenario: &Scenario, cap: Option<u64>) -> Reply {
    let wanted = scenario.tokens.unwrap_or(REPLY_TOKENS_DEFAULT);
    match cap {
        Some(cap) if cap < wanted => Reply {
            tokens: cap,
            finish_reason: FinishReason::Length,
        },
        _ => Reply {
            tokens: wanted,
            finish_reason: FinishReason::Stop,
        },
    }
}

/// Reply word number `index` (cyclic over [`WORDS`]).
pub fn word(index: u64) -> &'static str {
    let len = WORDS.len() as u64;
    // `index % len` < 32, so the cast and the index are in range.
    WORDS
        .get((index % len) as usize)
        .copied()
        .unwrap_or("lorem")
}

/// The whole reply text: `tokens` words joined by single spaces.
pub fn reply_text(tokens: u64) -> String {
    let mut text = String::with_capacity(usize::try_from(tokens).unwrap_or(0).saturating_mul(7));
    for i in 0..tokens {
        if i > 0 {
            text.push(' ');
        }
        text.push_str(word(i));
    }
    text
}

/// Prompt tokens in `text`: its whitespace-separated words.
pub fn count_words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Token counts as OpenAI reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
        }
    }

    /// `x-litellm-response-cost`: 0.15 USD per million prompt tokens plus 0.60 USD per million
    /// completion tokens, exact, with eight decimals (e.g. `0.00001110`).
    pub fn cost_text(&self) -> String {
        const UNITS_PER_USD: u128 = 100_000_000; // the unit is 1e-8 USD
        let units = u128::from(self.prompt_tokens) * 15 + u128::from(self.completion_tokens) * 60;
        format!("{}.{:08}", units / UNITS_PER_USD, units % UNITS_PER_USD)
    }
}

/// A deterministic 8-dimensional embedding of `text`, each value in [-1, 1) with 24 bits of
/// precision (so it prints short and round-trips exactly).
pub fn embedding(text: &str) -> [f64; 8] {
    // FNV-1a over the bytes, then splitmix64 per dimension.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut out = [0.0; 8];
    for (i, value) in out.iter_mut().enumerate() {
        let mut z = hash.wrapping_add((i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let unit = (z >> 40) as f64 / f64::from(1u32 << 24); // [0, 1)
        *value = unit * 2.0 - 1.0;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &str) -> Scenario {
        let mut s = Scenario::default();
        s.scan(text);
        s
    }

    #[test]
    fn directives_are_parsed_and_bad_ones_ignored() {
        let cases: &[(&str, Scenario)] = &[
            ("hello", Scenario::default()),
            (
                "mock:tokens=3",
                Scenario {
                    tokens: Some(3),
                    ..Default::default()
                },
            ),
            (
                "mock:tokens=x mock:tokens=-1 mock:tokens",
                Scenario::default(),
            ),
            (
                "mock:tokens=99999999999",
                Scenario {
                    tokens: Some(REPLY_TOKENS_MAX),
                    ..Default::default()
                },
            ),
            (
                "a mock:tokens=2 b mock:tokens=5",
                Scenario {
                    tokens: Some(5),
                    ..Default::default()
                },
            ),
            (
                "mock:status=503",
                Scenario {
                    status: Some(503),
                    ..Default::default()
                },
            ),
            (
                "mock:status=99 mock:status=600 mock:status=70000",
                Scenario::default(),
            ),
            (
                "mock:no_usage mock:malformed",
                Scenario {
                    no_usage: true,
                    malformed: true,
                    ..Default::default()
                },
            ),
            (
                "mock:slow=20 mock:endless",
                Scenario {
                    slow_ms: Some(20),
                    endless: true,
                    ..Default::default()
                },
            ),
            (
                "mock:slow=99999999999",
                Scenario {
                    slow_ms: Some(SLOW_MS_MAX),
                    ..Default::default()
                },
            ),
            (
                "mock:hang",
                Scenario {
                    hang: true,
                    ..Default::default()
                },
            ),
            (
                "mock:stall_after=2 mock:cut_after=3 mock:error_after=4",
                Scenario {
                    stall_after: Some(2),
                    cut_after: Some(3),
                    error_after: Some(4),
                    ..Default::default()
                },
            ),
            (
                "xmock:hang mock:unknown=1 mock: mock:=",
                Scenario::default(),
            ),
            (
                "line\nmock:hang\tend",
                Scenario {
                    hang: true,
                    ..Default::default()
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(&scan(text), want, "{text:?}");
        }
    }

    #[test]
    fn reply_respects_the_cap() {
        let plain = Scenario::default();
        let ten = Scenario {
            tokens: Some(10),
            ..Default::default()
        };
        let cases = [
            (&plain, None, 16, FinishReason::Stop),
            (&plain, Some(4), 4, FinishReason::Length),
            (&plain, Some(16), 16, FinishReason::Stop),
            (&plain, Some(100), 16, FinishReason::Stop),
            (&ten, Some(3), 3, FinishReason::Length),
            (&ten, Some(0), 0, FinishReason::Length),
            (&ten, None, 10, FinishReason::Stop),
        ];
        for (scenario, cap, tokens, finish_reason) in cases {
            assert_eq!(
                reply(scenario, cap),
                Reply {
                    tokens,
                    finish_reason
                },
                "{scenario:?} {cap:?}"
            );
        }
    }

    #[test]
    fn reply_text_is_cyclic_words() {
        assert_eq!(reply_text(0), "");
        assert_eq!(reply_text(3), "lorem ipsum dolor");
        let long = reply_text(33);
        assert_eq!(count_words(&long), 33);
        assert!(long.ends_with(" ea lorem"));
    }

    #[test]
    fn words_never_exceed_bytes() {
        for text in [
            "",
            " ",
            "a",
            "a b",
            "  a\t\nb  ",
            "é ü 中文 字",
            "\u{3000}x\u{3000}",
            "mock:tokens=1",
        ] {
            assert!(count_words(text) <= text.len() as u64, "{text:?}");
        }
        assert_eq!(count_words("  one two\tthree\nfour "), 4);
    }

    #[test]
    fn cost_is_exact_with_eight_decimals() {
        assert_eq!(Usage::new(0, 0).cost_text(), "0.00000000");
        assert_eq!(Usage::new(10, 16).cost_text(), "0.00001110");
        assert_eq!(Usage::new(1_000_000, 1_000_000).cost_text(), "0.75000000");
        assert_eq!(Usage::new(u64::MAX, u64::MAX).total_tokens, u64::MAX);
        assert!(!Usage::new(u64::MAX, u64::MAX).cost_text().is_empty());
    }

    #[test]
    fn embeddings_are_deterministic_and_bounded() {
        let a = embedding("hello");
        assert_eq!(a, embedding("hello"));
        assert_ne!(a, embedding("hellp"));
        assert!(a.iter().all(|v| (-1.0..1.0).contains(v)));
    }
}
