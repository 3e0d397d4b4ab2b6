//! Reading a request and its response for metering, as pure functions over JSON: the prompt's
//! token bound, the output cap the client asked for, the usage the upstream reported, and an
//! estimate where it reported none.
//!
//! The prompt bound is a bound, not a guess: every tokenizer in use (byte-level BPE, and
//! SentencePiece with byte fallback) spends at least one byte of text per token, and the JSON
//! serialization of the prompt holds every byte of its text (serde_json does not escape non-ASCII),
//! so its length bounds the text tokens; message framing costs a few tokens per message, far less
//! than the JSON punctuation around each. Only images are not text: each image part adds
//! [`IMAGE_PART_TOKENS_MAX`].

use serde_json::Value;

/// Tokens one image part may cost at most (OpenAI's high-detail 2048×2048 image is 1,105; models
/// that tile finer stay under this).
pub const IMAGE_PART_TOKENS_MAX: u64 = 2_000;
/// Framing tokens added once per request (priming the reply).
const FRAMING_TOKENS: u64 = 16;
/// Bytes per token assumed when an upstream reports no usage and tokens must be estimated.
pub const ESTIMATE_BYTES_PER_TOKEN: u64 = 4;

/// The three metered routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
        }
    }

    /// The request field holding the prompt.
    fn prompt_field(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "messages",
            Endpoint::Completions => "prompt",
            Endpoint::Embeddings => "input",
        }
    }

    /// Whether the route produces output tokens.
    pub fn has_output(self) -> bool {
        self != Endpoint::Embeddings
    }
}

/// What was wrong with a request body, safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(pub String);

/// An upper bound on the request's prompt tokens.
pub fn prompt_token_bound(endpoint: Endpoint, body: &Value) -> Result<u64, BodyError> {
    let field = endpoint.prompt_field();
    let prompt = body
        .get(field)
        .ok_or_else(|| BodyError(format!("missing required field {field:?}")))?;
    match (endpoint, prompt) {
        (Endpoint::ChatCompletions, Value::Array(_)) => {}
        (Endpoint::ChatCompletions, _) => {
            return Err(BodyError("\"messages\" must be an array".into()));
        }
        (_, Value::String(_) | Value::Array(_)) => {}
        _ => {
            return Err(BodyError(format!("{field:?} must be a string or an array")));
        }
    }
    let mut bytes = json_len(prompt);
    // Tool and function definitions are part of the prompt too.
    for extra in ["tools", "functions", "tool_choice", "response_format"] {
        if let Some(v) = body.get(extra) {
            bytes += json_len(v);
        }
    }
    Ok(bytes + images(prompt) * IMAGE_PART_TOKENS_MAX + FRAMING_TOKENS)
}

fn json_len(v: &Value) -> u64 {
    serde_json::to_vec(v).map_or(0, |b| b.len() as u64)
}

/// Image parts (`{"type": "image_url", …}`) anywhere in the prompt.
fn images(v: &Value) -> u64 {
    match v {
        Value::Array(items) => items.iter().map(images).sum(),
        Value::Object(map) => {
            let own = u64::from(
                map.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t == "image_url" || t == "input_image"),
            );
            own + map.values().map(images).sum::<u64>()
        }
        _ => 0,
    }
}

/// Which field carries the client's output cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapField {
    MaxCompletionTokens,
    MaxTokens,
}

impl CapField {
    pub fn name(self) -> &'static str {
        match self {
            CapField::MaxCompletionTokens => "max_completion_tokens",
            CapField::MaxTokens => "max_tokens",
        }
    }
}

/// The client's output cap: the larger of `max_completion_tokens` and `max_tokens` (either may
/// be what the upstream obeys), or `None` when neither is set.
pub fn output_cap(body: &Value) -> Result<Option<u64>, BodyError> {
    let mut cap = None;
    for field in [CapField::MaxCompletionTokens, CapField::MaxTokens] {
        match body.get(field.name()) {
            None | Some(Value::Null) => {}
            Some(v) => {
                let n = v.as_u64().filter(|n| *n > 0).ok_or_else(|| {
                    BodyError(format!("{:?} must be a positive integer", field.name()))
                })?;
                cap = Some(cap.map_or(n, |c: u64| c.max(n)));
            }
        }
    }
    Ok(cap)
}

/// Writes `cap` into every output-cap field the request uses, or into `default_field` if it
/// uses none, so no field the upstream might obey asks for more than was reserved.
pub fn set_output_cap(body: &mut Value, cap: u64, default_field: CapField) {
    let mut set = false;
    for field in [CapField::MaxCompletionTokens, CapField::MaxTokens] {
        if body.get(field.name()).is_some_and(|v| !v.is_null()) {
            body[field.name()] = Value::from(cap);
            set = true;
        }
    }
    if !set {
        body[default_field.name()] = Value::from(cap);
    }
}

/// Request fields LiteLLM's proxy acts on that would let a client change what is served or
/// billed behind tollgate's back (fallback models, mock responses, other keys or endpoints):
/// removed before forwarding, with every field named `litellm_*` or `mock_*`.
pub const UPSTREAM_CONTROL_FIELDS: &[&str] = &[
    "fallbacks",
    "context_window_fallback_dict",
    "content_policy_fallbacks",
    "api_key",
    "api_base",
    "base_url",
    "api_version",
    "user_config",
    "num_retries",
    "model_list",
    "metadata",
    "guardrails",
];

/// Removes [`UPSTREAM_CONTROL_FIELDS`] and `litellm_*` / `mock_*` fields from the body.
pub fn strip_upstream_controls(body: &mut Value) {
    if let Some(map) = body.as_object_mut() {
        map.retain(|key, _| {
            !UPSTREAM_CONTROL_FIELDS.contains(&key.as_str())
                && !key.starts_with("litellm_")
                && !key.starts_with("mock_")
        });
    }
}

/// How many prompts a `/v1/completions` request carries (each gets its own completions): an
/// array of strings or of token arrays counts its items; a string or a flat token array is one.
pub fn prompt_count(endpoint: Endpoint, body: &Value) -> u64 {
    match (endpoint, body.get("prompt")) {
        (Endpoint::Completions, Some(Value::Array(items)))
            if items.iter().any(|i| i.is_string() || i.is_array()) =>
        {
            items.len().max(1) as u64
        }
        _ => 1,
    }
}

/// Most choices (`n`, `best_of`) one request may ask for.
pub const CHOICES_MAX: u64 = 128;

/// How many completions the request generates (`n`, and `best_of` for completions): each can
/// produce up to the output cap, so the reservation multiplies by this.
pub fn choices(body: &Value) -> Result<u64, BodyError> {
    let mut most = 1;
    for field in ["n", "best_of"] {
        match body.get(field) {
            None | Some(Value::Null) => {}
            Some(v) => {
                let n = v
                    .as_u64()
                    .filter(|n| (1..=CHOICES_MAX).contains(n))
                    .ok_or_else(|| {
                        BodyError(format!(
                            "{field:?} must be an integer from 1 to {CHOICES_MAX}"
                        ))
                    })?;
                most = most.max(n);
            }
        }
    }
    Ok(most)
}

/// Token counts as the upstream reported them (or as estimated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// The `usage` object of a response or a final stream chunk, if it has one.
pub fn reported_usage(body: &Value) -> Option<Usage> {
    let usage = body.get("usage")?;
    let prompt = usage.get("prompt_tokens")?.as_u64()?;
    let completion = usage
        .get("completion_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    Some(Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
    })
}

/// Bytes of generated text in a response body or a stream chunk: chat messages and deltas
/// (content and tool-call arguments) and completion texts.
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
                    n += str_len(m.get("content"));
                    n += str_len(m.get("reasoning_content"));
                    if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                        n += calls
                            .iter()
                            .map(|c| str_len(c.get("function").and_then(|f| f.get("arguments"))))
                            .sum::<u64>();
                    }
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

/// An estimate of the prompt's tokens when the upstream reported none: the bound's bytes at
/// [`ESTIMATE_BYTES_PER_TOKEN`], never more than the bound.
pub fn estimate_prompt_tokens(bound: u64) -> u64 {
    estimate_tokens(bound).min(bound)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_prompt_bound_covers_text_tools_and_images() {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "héllo wörld"}]});
        let bound = prompt_token_bound(Endpoint::ChatCompletions, &body).unwrap();
        // At least one token per byte of text, however it is tokenized.
        assert!(bound >= "héllo wörld".len() as u64);
        let with_image = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}}
        ]}]});
        let b = prompt_token_bound(Endpoint::ChatCompletions, &with_image).unwrap();
        assert!(b >= IMAGE_PART_TOKENS_MAX);
        let with_tools = json!({"messages": [], "tools": [{"type": "function", "function": {"name": "a_long_tool_name"}}]});
        let without = json!({"messages": []});
        assert!(
            prompt_token_bound(Endpoint::ChatCompletions, &with_tools).unwrap()
                > prompt_token_bound(Endpoint::ChatCompletions, &without).unwrap() + 15
        );
    }

    #[test]
    fn bad_prompts_say_which_field() {
        let cases = [
            (
                Endpoint::ChatCompletions,
                json!({"model": "m"}),
                "missing required field \"messages\"",
            ),
            (
                Endpoint::ChatCompletions,
                json!({"messages": "hi"}),
                "\"messages\" must be an array",
            ),
            (
                Endpoint::Embeddings,
                json!({"input": 5}),
                "\"input\" must be a string or an array",
            ),
            (
                Endpoint::Completions,
                json!({}),
                "missing required field \"prompt\"",
            ),
        ];
        for (endpoint, body, expected) in cases {
            let err = prompt_token_bound(endpoint, &body).unwrap_err();
            assert_eq!(err.0, expected);
        }
    }

    #[test]
    fn output_caps_take_the_larger_field_and_must_be_positive() {
        assert_eq!(output_cap(&json!({})).unwrap(), None);
        assert_eq!(
            output_cap(&json!({"max_tokens": 100000, "max_completion_tokens": 7})).unwrap(),
            Some(100000)
        );
        assert_eq!(output_cap(&json!({"max_tokens": 5})).unwrap(), Some(5));
        // A cap is written into every field the request uses.
        let mut both = json!({"max_tokens": 9, "max_completion_tokens": 7});
        set_output_cap(&mut both, 3, CapField::MaxTokens);
        assert_eq!(both, json!({"max_tokens": 3, "max_completion_tokens": 3}));
        let mut none = json!({});
        set_output_cap(&mut none, 3, CapField::MaxCompletionTokens);
        assert_eq!(none, json!({"max_completion_tokens": 3}));
        for bad in [
            json!({"max_tokens": 0}),
            json!({"max_tokens": -1}),
            json!({"max_tokens": "9"}),
        ] {
            assert!(
                output_cap(&bad).unwrap_err().0.contains("max_tokens"),
                "{bad}"
            );
        }
    }

    #[test]
    fn litellm_controls_are_stripped_and_prompts_counted() {
        let mut body = json!({"model": "m", "messages": [], "fallbacks": ["claude-opus-4"],
            "mock_testing_fallbacks": true, "litellm_logging_obj": 1, "api_base": "http://x",
            "temperature": 0.2, "user": "u"});
        strip_upstream_controls(&mut body);
        assert_eq!(
            body,
            json!({"model": "m", "messages": [], "temperature": 0.2, "user": "u"})
        );
        let c = Endpoint::Completions;
        assert_eq!(prompt_count(c, &json!({"prompt": "one"})), 1);
        assert_eq!(prompt_count(c, &json!({"prompt": [1, 2, 3]})), 1);
        assert_eq!(prompt_count(c, &json!({"prompt": ["a", "b", "c"]})), 3);
        assert_eq!(prompt_count(c, &json!({"prompt": [[1], [2]]})), 2);
        assert_eq!(
            prompt_count(Endpoint::ChatCompletions, &json!({"prompt": ["a", "b"]})),
            1
        );
    }

    #[test]
    fn choices_multiply_the_output_and_are_bounded() {
        assert_eq!(choices(&json!({})).unwrap(), 1);
        assert_eq!(choices(&json!({"n": 3})).unwrap(), 3);
        assert_eq!(choices(&json!({"n": 2, "best_of": 5})).unwrap(), 5);
        for bad in [json!({"n": 0}), json!({"n": 129}), json!({"best_of": "2"})] {
            assert!(
                choices(&bad).unwrap_err().0.contains("must be an integer"),
                "{bad}"
            );
        }
    }

    #[test]
    fn usage_and_generated_text_are_read_from_bodies_and_chunks() {
        let body = json!({"choices": [{"message": {"content": "abcd", "tool_calls": [{"function": {"arguments": "{}"}}]}}],
                          "usage": {"prompt_tokens": 3, "completion_tokens": 4}});
        assert_eq!(
            reported_usage(&body),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4
            })
        );
        assert_eq!(generated_bytes(&body), 6);
        let chunk = json!({"choices": [{"delta": {"content": "xyz"}}]});
        assert_eq!(generated_bytes(&chunk), 3);
        assert_eq!(reported_usage(&chunk), None);
        let embedding = json!({"usage": {"prompt_tokens": 8, "total_tokens": 8}});
        assert_eq!(
            reported_usage(&embedding),
            Some(Usage {
                prompt_tokens: 8,
                completion_tokens: 0
            })
        );
        assert_eq!(estimate_tokens(9), 3);
        assert_eq!(estimate_prompt_tokens(2), 1);
    }
}
