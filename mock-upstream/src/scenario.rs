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
//! - Usage details are reported as LiteLLM reports them (OpenAI's `prompt_tokens_details` /
//!   `completion_tokens_details`, and for cache writes also the top-level
//!   `cache_creation_input_tokens` / `cache_read_input_tokens` LiteLLM adds for Anthropic
//!   models); `prompt_tokens` includes the cached, written and audio tokens, `completion_tokens`
//!   the reasoning and audio tokens, as the providers count them.
//! - Cost is exact integer arithmetic in 1e-9 USD at gpt-4o-mini's prices (cached reads at
//!   half price), printed with nine decimals.

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
    /// `mock:prompt_tokens=N`: report N prompt tokens instead of counting words.
    pub prompt_tokens: Option<u64>,
    /// `mock:cached=N`: N of the prompt tokens were read from the cache.
    pub cached: Option<u64>,
    /// `mock:cache_write=N`: N prompt tokens were written to the cache (added to the prompt).
    pub cache_write: Option<u64>,
    /// `mock:audio_in=N`: N of the prompt tokens were audio.
    pub audio_in: Option<u64>,
    /// `mock:audio_out=N`: N audio tokens generated besides the reply (added to the completion).
    pub audio_out: Option<u64>,
    /// `mock:reasoning=N`: N reasoning tokens generated besides the reply (added to the
    /// completion).
    pub reasoning: Option<u64>,
    /// `mock:searches=N`: N web searches run (`usage.server_tool_use.web_search_requests`).
    pub searches: Option<u64>,
    /// `mock:chunk_words=K`: K reply words per stream chunk (default 1).
    pub chunk_words: Option<u64>,
    /// `mock:usage_delay=MS`: in a stream, wait MS before the usage chunk.
    pub usage_delay_ms: Option<u64>,
    /// `mock:model=NAME`: the response names this model instead of the one asked for.
    pub model: Option<String>,
    /// `mock:stall_body`: a non-stream response whose headers come at once and whose body never
    /// does (until the mock shuts down).
    pub stall_body: bool,
    /// `mock:ignore_cap`: the reply ignores the request's token cap (as LiteLLM's
    /// `mock_response` models do).
    pub ignore_cap: bool,
    /// `mock:no_end`: a typed stream (Responses, Messages) ends cleanly without its terminal
    /// event (`response.completed`, `message_stop`).
    pub no_end: bool,
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
        if name == "model" {
            if let Some(model) = value.filter(|v| !v.is_empty()) {
                self.model = Some(model.chars().take(200).collect());
            }
            return;
        }
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
            ("prompt_tokens", Some(n)) => self.prompt_tokens = Some(n.min(REPLY_TOKENS_MAX)),
            ("cached", Some(n)) => self.cached = Some(n),
            ("cache_write", Some(n)) => self.cache_write = Some(n.min(REPLY_TOKENS_MAX)),
            ("audio_in", Some(n)) => self.audio_in = Some(n),
            ("audio_out", Some(n)) => self.audio_out = Some(n.min(REPLY_TOKENS_MAX)),
            ("reasoning", Some(n)) => self.reasoning = Some(n.min(REPLY_TOKENS_MAX)),
            ("searches", Some(n)) => self.searches = Some(n.min(100)),
            ("chunk_words", Some(k)) if k > 0 => self.chunk_words = Some(k),
            ("usage_delay", Some(ms)) => self.usage_delay_ms = Some(ms.min(SLOW_MS_MAX)),
            ("stall_body", _) => self.stall_body = true,
            ("ignore_cap", _) => self.ignore_cap = true,
            ("no_end", _) => self.no_end = true,
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
    let cap = cap.filter(|_| !scenario.ignore_cap);
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

/// The breakdown of a usage report (all zero: none reported).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Details {
    pub cached: u64,
    pub cache_write: u64,
    pub audio_in: u64,
    pub audio_out: u64,
    pub reasoning: u64,
    pub searches: u64,
}

/// Token counts as OpenAI (through LiteLLM) reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub details: Details,
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            details: Details::default(),
        }
    }

    /// What a request with `prompt_words` of prompt and `reply_tokens` of reply used under
    /// `scenario` (its `prompt_tokens`, cache, audio, reasoning and search directives).
    pub fn of(scenario: &Scenario, prompt_words: u64, reply_tokens: u64) -> Usage {
        let details = Details {
            cached: scenario.cached.unwrap_or(0),
            cache_write: scenario.cache_write.unwrap_or(0),
            audio_in: scenario.audio_in.unwrap_or(0),
            audio_out: scenario.audio_out.unwrap_or(0),
            reasoning: scenario.reasoning.unwrap_or(0),
            searches: scenario.searches.unwrap_or(0),
        };
        let prompt = scenario
            .prompt_tokens
            .unwrap_or(prompt_words)
            .saturating_add(details.cache_write);
        let completion = reply_tokens
            .saturating_add(details.reasoning)
            .saturating_add(details.audio_out);
        Usage {
            details,
            ..Usage::new(prompt, completion)
        }
    }

    /// `x-litellm-response-cost`: gpt-4o-mini's 0.15 USD per million prompt tokens (0.075 for
    /// cached ones) plus 0.60 USD per million completion tokens, exact, with nine decimals
    /// (e.g. `0.000011100`).
    pub fn cost_text(&self) -> String {
        const UNITS_PER_USD: u128 = 1_000_000_000; // the unit is 1e-9 USD
        let cached = u128::from(self.details.cached.min(self.prompt_tokens));
        let uncached = u128::from(self.prompt_tokens) - cached;
        let units = uncached * 150 + cached * 75 + u128::from(self.completion_tokens) * 600;
        format!("{}.{:09}", units / UNITS_PER_USD, units % UNITS_PER_USD)
    }
}

impl serde::Serialize for Usage {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let d = &self.details;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("prompt_tokens", &self.prompt_tokens)?;
        map.serialize_entry("completion_tokens", &self.completion_tokens)?;
        map.serialize_entry("total_tokens", &self.total_tokens)?;
        if d.cached > 0 || d.cache_write > 0 || d.audio_in > 0 {
            map.serialize_entry(
                "prompt_tokens_details",
                &serde_json::json!({"cached_tokens": d.cached, "audio_tokens": d.audio_in,
                    "cache_creation_tokens": d.cache_write}),
            )?;
        }
        if d.reasoning > 0 || d.audio_out > 0 {
            map.serialize_entry(
                "completion_tokens_details",
                &serde_json::json!({"reasoning_tokens": d.reasoning, "audio_tokens": d.audio_out}),
            )?;
        }
        if d.cache_write > 0 {
            map.serialize_entry("cache_creation_input_tokens", &d.cache_write)?;
            map.serialize_entry("cache_read_input_tokens", &d.cached)?;
        }
        if d.searches > 0 {
            map.serialize_entry(
                "server_tool_use",
                &serde_json::json!({"web_search_requests": d.searches}),
            )?;
        }
        map.end()
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
                "xmock:hang mock:unknown=1 mock: mock:= mock:model= mock:chunk_words=0",
                Scenario::default(),
            ),
            (
                "mock:cached=3 mock:cache_write=4 mock:reasoning=5 mock:audio_in=6 mock:audio_out=7 \
                 mock:searches=2 mock:chunk_words=100 mock:usage_delay=50 mock:model=gpt-4o \
                 mock:prompt_tokens=250000 mock:stall_body mock:ignore_cap",
                Scenario {
                    cached: Some(3),
                    cache_write: Some(4),
                    reasoning: Some(5),
                    audio_in: Some(6),
                    audio_out: Some(7),
                    searches: Some(2),
                    chunk_words: Some(100),
                    usage_delay_ms: Some(50),
                    model: Some("gpt-4o".into()),
                    prompt_tokens: Some(250_000),
                    stall_body: true,
                    ignore_cap: true,
                    ..Default::default()
                },
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
        assert_eq!(Usage::new(0, 0).cost_text(), "0.000000000");
        assert_eq!(Usage::new(10, 16).cost_text(), "0.000011100");
        assert_eq!(Usage::new(1_000_000, 1_000_000).cost_text(), "0.750000000");
        let cached = Usage::of(&scan("mock:cached=4"), 10, 0);
        assert_eq!(cached.cost_text(), "0.000001200");
        assert_eq!(Usage::new(u64::MAX, u64::MAX).total_tokens, u64::MAX);
        assert!(!Usage::new(u64::MAX, u64::MAX).cost_text().is_empty());
    }

    #[test]
    fn usage_details_are_reported_as_litellm_does() {
        let usage = Usage::of(
            &scan("mock:cached=3 mock:cache_write=4 mock:reasoning=5 mock:searches=1"),
            10,
            20,
        );
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (14, 25));
        let json = serde_json::to_value(usage).unwrap();
        assert_eq!(json["prompt_tokens_details"]["cached_tokens"], 3);
        assert_eq!(json["prompt_tokens_details"]["cache_creation_tokens"], 4);
        assert_eq!(json["cache_creation_input_tokens"], 4);
        assert_eq!(json["completion_tokens_details"]["reasoning_tokens"], 5);
        assert_eq!(json["server_tool_use"]["web_search_requests"], 1);
        let plain = serde_json::to_value(Usage::new(1, 2)).unwrap();
        assert_eq!(
            plain,
            serde_json::json!({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})
        );
    }

    #[test]
    fn embeddings_are_deterministic_and_bounded() {
        let a = embedding("hello");
        assert_eq!(a, embedding("hello"));
        assert_ne!(a, embedding("hellp"));
        assert!(a.iter().all(|v| (-1.0..1.0).contains(v)));
    }
}
