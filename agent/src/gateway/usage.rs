//! Reading what an answer used, as pure functions over JSON: the usage the upstream reported
//! (with every detail LiteLLM passes on: cached and cache-written prompt tokens, audio, images,
//! reasoning, web searches), the text it generated, and an estimate where it reported none.
//!
//! Field by field, as LiteLLM 1.82.6 reports usage on its OpenAI-compatible routes:
//! `prompt_tokens` (cached, written and audio tokens included), `completion_tokens` (reasoning
//! and audio included), `prompt_tokens_details.{cached_tokens, cache_creation_tokens,
//! audio_tokens, image_tokens, text_tokens, image_count}` (and for Anthropic models the top-level
//! `cache_read_input_tokens` / `cache_creation_input_tokens`, and `cache_creation` split into
//! five-minute and one-hour writes), `completion_tokens_details.{reasoning_tokens,
//! audio_tokens, image_tokens, text_tokens}`, `server_tool_use.web_search_requests`. A count
//! that is absent, null or not a whole number reads as 0, as in LiteLLM.

use serde_json::Value;

use crate::prices::cost::TokenUsage;

/// Bytes per token assumed when an upstream reports no usage and tokens must be estimated.
pub const ESTIMATE_BYTES_PER_TOKEN: u64 = 4;

fn count(v: Option<&Value>) -> u64 {
    v.and_then(Value::as_u64).unwrap_or(0)
}

/// The `usage` object of a response or a final stream chunk, if it has one with a prompt count.
pub fn reported_usage(body: &Value) -> Option<TokenUsage> {
    let usage = body.get("usage").filter(|u| u.is_object())?;
    let prompt_tokens = usage.get("prompt_tokens")?.as_u64()?;
    let details = usage.get("prompt_tokens_details");
    let detail = |name: &str| count(details.and_then(|d| d.get(name)));
    let out = usage.get("completion_tokens_details");
    let out_detail = |name: &str| count(out.and_then(|d| d.get(name)));
    let cached = match detail("cached_tokens") {
        0 => count(usage.get("cache_read_input_tokens")),
        n => n,
    };
    let written = match detail("cache_creation_tokens") {
        0 => count(usage.get("cache_creation_input_tokens")),
        n => n,
    };
    let split = usage
        .get("cache_creation")
        .or_else(|| details.and_then(|d| d.get("cache_creation_token_details")))
        .filter(|s| s.is_object())
        .map(|s| {
            (
                count(s.get("ephemeral_5m_input_tokens")),
                count(s.get("ephemeral_1h_input_tokens")),
            )
        });
    Some(TokenUsage {
        prompt_tokens,
        completion_tokens: count(usage.get("completion_tokens")),
        cached_tokens: cached,
        cache_creation_tokens: written,
        cache_creation_split: split,
        prompt_text_tokens: detail("text_tokens"),
        prompt_audio_tokens: detail("audio_tokens"),
        prompt_image_tokens: detail("image_tokens"),
        image_count: detail("image_count"),
        completion_text_tokens: out_detail("text_tokens"),
        completion_audio_tokens: out_detail("audio_tokens"),
        reasoning_tokens: out_detail("reasoning_tokens"),
        completion_image_tokens: out_detail("image_tokens"),
        searches: count(
            usage
                .get("server_tool_use")
                .and_then(|s| s.get("web_search_requests")),
        ),
        search_size: Default::default(),
    })
}

/// Whether a response cites the web (`url_citation` annotations): OpenAI's search models bill
/// one search for it.
pub fn cites_the_web(body: &Value) -> bool {
    body.get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("message").or_else(|| c.get("delta")))
        .filter_map(|m| m.get("annotations").and_then(Value::as_array))
        .flatten()
        .any(|a| a.get("type").and_then(Value::as_str) == Some("url_citation"))
}

/// The model a response or chunk names.
pub fn response_model(body: &Value) -> Option<&str> {
    body.get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
}

/// Bytes of generated text in a response body or a stream chunk: chat messages and deltas
/// (content, reasoning, refusals, tool-call arguments, audio transcripts) and completion texts.
pub fn generated_bytes(body: &Value) -> u64 {
    let Some(choices) = body.get("choices").and_then(Value::as_array) else {
        return 0;
    };
    choices
        .iter()
        .map(|choice| {
            let mut n = str_len(choice.get("text"));
            for part in ["message", "delta"] {
                if let Some(m) = choice.get(part) {
                    for field in ["content", "reasoning_content", "reasoning", "refusal"] {
                        n += str_len(m.get(field));
                    }
                    n += str_len(m.get("audio").and_then(|a| a.get("transcript")));
                    if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                        n += calls
                            .iter()
                            .map(|c| str_len(c.get("function").and_then(|f| f.get("arguments"))))
                            .sum::<u64>();
                    }
                    n += str_len(m.get("function_call").and_then(|f| f.get("arguments")));
                }
            }
            n
        })
        .sum()
}

fn str_len(v: Option<&Value>) -> u64 {
    v.and_then(Value::as_str).map_or(0, |s| s.len() as u64)
}

/// Tokens estimated from bytes of text (rounded up).
pub fn estimate_tokens(bytes: u64) -> u64 {
    bytes.div_ceil(ESTIMATE_BYTES_PER_TOKEN)
}

/// An estimate of the prompt's tokens when the upstream reported none: its ceiling's bytes at
/// [`ESTIMATE_BYTES_PER_TOKEN`] for a byte-counted ceiling, else the ceiling itself (exact for
/// OpenAI's tokenizers), never more than the ceiling.
pub fn estimate_prompt_tokens(ceiling: u64, exact: bool) -> u64 {
    if exact {
        ceiling
    } else {
        estimate_tokens(ceiling).min(ceiling)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn usage_and_its_details_are_read_as_litellm_reports_them() {
        let body = json!({"usage": {"prompt_tokens": 1000, "completion_tokens": 500,
            "prompt_tokens_details": {"cached_tokens": 800, "audio_tokens": 3},
            "completion_tokens_details": {"reasoning_tokens": 200, "audio_tokens": null},
            "server_tool_use": {"web_search_requests": 2}}});
        let u = reported_usage(&body).unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (1000, 500));
        assert_eq!((u.cached_tokens, u.prompt_audio_tokens), (800, 3));
        assert_eq!((u.reasoning_tokens, u.completion_audio_tokens), (200, 0));
        assert_eq!(u.searches, 2);
        // Anthropic through LiteLLM: top-level cache counts and the 5m/1h split.
        let anthropic = json!({"usage": {"prompt_tokens": 1300, "completion_tokens": 10,
            "cache_creation_input_tokens": 300, "cache_read_input_tokens": 900,
            "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200}}});
        let u = reported_usage(&anthropic).unwrap();
        assert_eq!((u.cached_tokens, u.cache_creation_tokens), (900, 300));
        assert_eq!(u.cache_creation_split, Some((100, 200)));
        let embedding = json!({"usage": {"prompt_tokens": 8, "total_tokens": 8}});
        assert_eq!(reported_usage(&embedding), Some(TokenUsage::plain(8, 0)));
        assert_eq!(reported_usage(&json!({"usage": null})), None);
        assert_eq!(reported_usage(&json!({"choices": []})), None);
    }

    #[test]
    fn generated_text_is_counted_from_every_kind_of_delta() {
        let body = json!({"choices": [{"message": {"content": "abcd", "reasoning_content": "xy",
            "tool_calls": [{"function": {"arguments": "{}"}}]}}], "model": "gpt-4o"});
        assert_eq!(generated_bytes(&body), 8);
        assert_eq!(response_model(&body), Some("gpt-4o"));
        let chunk = json!({"choices": [{"delta": {"content": "xyz", "reasoning": "r"}}]});
        assert_eq!(generated_bytes(&chunk), 4);
        assert_eq!(estimate_tokens(9), 3);
        assert_eq!(estimate_prompt_tokens(2, false), 1);
        assert_eq!(estimate_prompt_tokens(20, true), 20);
        let cited = json!({"choices": [{"message": {"content": "a",
            "annotations": [{"type": "url_citation", "url_citation": {}}]}}]});
        assert!(cites_the_web(&cited));
        assert!(!cites_the_web(&body));
    }
}
