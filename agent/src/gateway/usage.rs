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

use super::request::Wire;

/// Bytes per token assumed when an upstream reports no usage and tokens must be estimated.
pub const ESTIMATE_BYTES_PER_TOKEN: u64 = 4;

fn count(v: Option<&Value>) -> u64 {
    v.and_then(Value::as_u64).unwrap_or(0)
}

/// The usage an answer reports, read as its API shapes it: a chat answer or chunk, a Responses
/// API response object, or an Anthropic message (whose counts may be partial: see
/// [`AnthropicUsage`]).
pub fn reported_usage(wire: Wire, body: &Value) -> Option<TokenUsage> {
    match wire {
        Wire::Chat => chat_usage(body),
        Wire::Responses => responses_usage(body),
        Wire::Messages => AnthropicUsage::read(body.get("usage")?).map(AnthropicUsage::total),
    }
}

/// The Responses API's `usage`: `input_tokens` (cached tokens included, as
/// `input_tokens_details.cached_tokens`), `output_tokens` (reasoning included, as
/// `output_tokens_details.reasoning_tokens`).
pub fn responses_usage(response: &Value) -> Option<TokenUsage> {
    let usage = response.get("usage").filter(|u| u.is_object())?;
    let input_tokens = usage.get("input_tokens")?.as_u64()?;
    let details = usage.get("input_tokens_details");
    let detail = |name: &str| count(details.and_then(|d| d.get(name)));
    let out = usage.get("output_tokens_details");
    let out_detail = |name: &str| count(out.and_then(|d| d.get(name)));
    Some(TokenUsage {
        prompt_tokens: input_tokens,
        completion_tokens: count(usage.get("output_tokens")),
        cached_tokens: detail("cached_tokens"),
        cache_creation_tokens: detail("cache_creation_tokens"),
        prompt_text_tokens: detail("text_tokens"),
        prompt_audio_tokens: detail("audio_tokens"),
        completion_text_tokens: out_detail("text_tokens"),
        reasoning_tokens: out_detail("reasoning_tokens"),
        ..TokenUsage::default()
    })
}

/// Anthropic's usage as a Messages stream reports it, in pieces: `message_start` carries the
/// input side (`input_tokens`, which excludes the cache, `cache_creation_input_tokens`,
/// `cache_read_input_tokens`, the five-minute/one-hour split) and a first output count; each
/// `message_delta` carries the cumulative `output_tokens` (and, lately, the input side again).
/// A count present in a later piece replaces the earlier one: the last one counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnthropicUsage {
    pub input_tokens: Option<u64>,
    pub cache_creation_input_tokens: Option<u64>,
    pub cache_read_input_tokens: Option<u64>,
    pub cache_creation_split: Option<(u64, u64)>,
    pub output_tokens: Option<u64>,
    pub web_search_requests: Option<u64>,
}

impl AnthropicUsage {
    /// A `usage` object, if it is one.
    pub fn read(usage: &Value) -> Option<AnthropicUsage> {
        let usage = usage.as_object()?;
        let n = |name: &str| usage.get(name).and_then(Value::as_u64);
        let split = usage
            .get("cache_creation")
            .filter(|s| s.is_object())
            .map(|s| {
                (
                    count(s.get("ephemeral_5m_input_tokens")),
                    count(s.get("ephemeral_1h_input_tokens")),
                )
            });
        Some(AnthropicUsage {
            input_tokens: n("input_tokens"),
            cache_creation_input_tokens: n("cache_creation_input_tokens"),
            cache_read_input_tokens: n("cache_read_input_tokens"),
            cache_creation_split: split,
            output_tokens: n("output_tokens"),
            web_search_requests: usage
                .get("server_tool_use")
                .and_then(|s| s.get("web_search_requests"))
                .and_then(Value::as_u64),
        })
    }

    /// `later` over `self`: each count `later` has replaces this one's.
    pub fn merge(self, later: AnthropicUsage) -> AnthropicUsage {
        AnthropicUsage {
            input_tokens: later.input_tokens.or(self.input_tokens),
            cache_creation_input_tokens: later
                .cache_creation_input_tokens
                .or(self.cache_creation_input_tokens),
            cache_read_input_tokens: later
                .cache_read_input_tokens
                .or(self.cache_read_input_tokens),
            cache_creation_split: later.cache_creation_split.or(self.cache_creation_split),
            output_tokens: later.output_tokens.or(self.output_tokens),
            web_search_requests: later.web_search_requests.or(self.web_search_requests),
        }
    }

    /// As tollgate prices usage: the prompt counts every input token, cached and written ones
    /// included (as LiteLLM's `prompt_tokens` does).
    pub fn total(self) -> TokenUsage {
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let written = self.cache_creation_input_tokens.unwrap_or(0);
        TokenUsage {
            prompt_tokens: self
                .input_tokens
                .unwrap_or(0)
                .saturating_add(read)
                .saturating_add(written),
            completion_tokens: self.output_tokens.unwrap_or(0),
            cached_tokens: read,
            cache_creation_tokens: written,
            cache_creation_split: self.cache_creation_split,
            searches: self.web_search_requests.unwrap_or(0),
            ..TokenUsage::default()
        }
    }
}

/// The `usage` object of a chat answer or a final stream chunk, if it has one with a prompt
/// count.
pub fn chat_usage(body: &Value) -> Option<TokenUsage> {
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

/// Bytes of generated text in an answer: a chat answer's choices, a Responses API response's
/// output items, an Anthropic message's content blocks.
pub fn generated_bytes(wire: Wire, body: &Value) -> u64 {
    match wire {
        Wire::Chat => chat_generated_bytes(body),
        Wire::Responses => body
            .get("output")
            .and_then(Value::as_array)
            .map_or(0, |items| items.iter().map(item_text_bytes).sum()),
        Wire::Messages => body
            .get("content")
            .and_then(Value::as_array)
            .map_or(0, |blocks| blocks.iter().map(item_text_bytes).sum()),
    }
}

/// Bytes of generated text in one output item or content block: its text, summaries, refusal,
/// thinking, tool-call arguments or input (as JSON), at any depth.
pub fn item_text_bytes(item: &Value) -> u64 {
    let Some(fields) = item.as_object() else {
        return 0;
    };
    fields
        .iter()
        .map(|(key, value)| match (key.as_str(), value) {
            (
                "text" | "refusal" | "thinking" | "arguments" | "input" | "transcript",
                Value::String(s),
            ) => s.len() as u64,
            ("input", v @ Value::Object(_)) => v.to_string().len() as u64,
            ("content" | "summary", Value::Array(parts)) => parts.iter().map(item_text_bytes).sum(),
            _ => 0,
        })
        .sum()
}

/// Bytes of generated text in a chat answer or stream chunk: messages and deltas (content,
/// reasoning, refusals, tool-call arguments, audio transcripts) and completion texts.
fn chat_generated_bytes(body: &Value) -> u64 {
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
        let u = reported_usage(Wire::Chat, &body).unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (1000, 500));
        assert_eq!((u.cached_tokens, u.prompt_audio_tokens), (800, 3));
        assert_eq!((u.reasoning_tokens, u.completion_audio_tokens), (200, 0));
        assert_eq!(u.searches, 2);
        // Anthropic through LiteLLM: top-level cache counts and the 5m/1h split.
        let anthropic = json!({"usage": {"prompt_tokens": 1300, "completion_tokens": 10,
            "cache_creation_input_tokens": 300, "cache_read_input_tokens": 900,
            "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200}}});
        let u = reported_usage(Wire::Chat, &anthropic).unwrap();
        assert_eq!((u.cached_tokens, u.cache_creation_tokens), (900, 300));
        assert_eq!(u.cache_creation_split, Some((100, 200)));
        let embedding = json!({"usage": {"prompt_tokens": 8, "total_tokens": 8}});
        assert_eq!(
            reported_usage(Wire::Chat, &embedding),
            Some(TokenUsage::plain(8, 0))
        );
        assert_eq!(reported_usage(Wire::Chat, &json!({"usage": null})), None);
        assert_eq!(reported_usage(Wire::Chat, &json!({"choices": []})), None);
    }

    #[test]
    fn responses_and_messages_usage_are_read_in_their_own_shapes() {
        let response = json!({"id": "resp_1", "model": "gpt-5", "output": [
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "why"}]},
            {"type": "function_call", "arguments": "{\"a\":1}"},
            {"type": "message", "content": [{"type": "output_text", "text": "hello", "annotations": []}]}],
            "usage": {"input_tokens": 1000, "input_tokens_details": {"cached_tokens": 400},
                      "output_tokens": 300, "output_tokens_details": {"reasoning_tokens": 200}}});
        let u = reported_usage(Wire::Responses, &response).unwrap();
        assert_eq!(
            (
                u.prompt_tokens,
                u.cached_tokens,
                u.completion_tokens,
                u.reasoning_tokens
            ),
            (1000, 400, 300, 200)
        );
        assert_eq!(generated_bytes(Wire::Responses, &response), 3 + 7 + 5);
        // Anthropic's input_tokens leave out the cache; tollgate's prompt counts it all.
        let message = json!({"id": "msg_1", "content": [{"type": "text", "text": "hey"},
            {"type": "thinking", "thinking": "hmm"},
            {"type": "tool_use", "name": "f", "input": {"q": 1}}],
            "usage": {"input_tokens": 10, "cache_creation_input_tokens": 200,
                      "cache_read_input_tokens": 3000, "output_tokens": 42,
                      "cache_creation": {"ephemeral_5m_input_tokens": 150, "ephemeral_1h_input_tokens": 50},
                      "server_tool_use": {"web_search_requests": 2}}});
        let u = reported_usage(Wire::Messages, &message).unwrap();
        assert_eq!(
            (
                u.prompt_tokens,
                u.cached_tokens,
                u.cache_creation_tokens,
                u.completion_tokens
            ),
            (3210, 3000, 200, 42)
        );
        assert_eq!((u.cache_creation_split, u.searches), (Some((150, 50)), 2));
        assert_eq!(generated_bytes(Wire::Messages, &message), 3 + 3 + 7);
        assert_eq!(
            reported_usage(Wire::Messages, &json!({"content": []})),
            None
        );
    }

    #[test]
    fn generated_text_is_counted_from_every_kind_of_delta() {
        let body = json!({"choices": [{"message": {"content": "abcd", "reasoning_content": "xy",
            "tool_calls": [{"function": {"arguments": "{}"}}]}}], "model": "gpt-4o"});
        assert_eq!(generated_bytes(Wire::Chat, &body), 8);
        assert_eq!(response_model(&body), Some("gpt-4o"));
        let chunk = json!({"choices": [{"delta": {"content": "xyz", "reasoning": "r"}}]});
        assert_eq!(generated_bytes(Wire::Chat, &chunk), 4);
        assert_eq!(estimate_tokens(9), 3);
        assert_eq!(estimate_prompt_tokens(2, false), 1);
        assert_eq!(estimate_prompt_tokens(20, true), 20);
        let cited = json!({"choices": [{"message": {"content": "a",
            "annotations": [{"type": "url_citation", "url_citation": {}}]}}]});
        assert!(cites_the_web(&cited));
        assert!(!cites_the_web(&body));
    }
}
