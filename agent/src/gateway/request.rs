//! A client's request body, read and checked before anything is reserved: the endpoint's
//! allowlist of fields, the model, streaming, and every field that bounds the output.
//!
//! Guarantees:
//! - Only fields tollgate knows and prices are forwarded: each endpoint accepts OpenAI's
//!   documented parameters ([`Endpoint::fields`]) and the names an operator adds
//!   (`requests.extra_fields`); anything else is a 400 naming the field, so nothing a client
//!   sends can have LiteLLM serve another model (`fallbacks`, `models`, `extra_body`,
//!   `custom_llm_provider`, credentials, …) or lift the output cap (`max_output_tokens` on chat,
//!   `prediction`). `metadata` is accepted and never forwarded (LiteLLM acts on it).
//! - Every field that bounds output is read: `max_tokens`, `max_completion_tokens`, `n`,
//!   `best_of`, the prompt count of a completions batch, and Anthropic's
//!   `thinking.budget_tokens`; [`ClientRequest::set_output_cap`] writes one cap into all of
//!   them, so no field the upstream obeys asks for more than was reserved.
//! - A value of the wrong type or out of range is a 400 naming the field. Pure: no I/O.

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::{Map, Value};

use crate::prices::ModelMode;
use crate::prices::cost::SearchSize;

use super::error::ApiError;

/// Most choices (`n`, `best_of`) one request may ask for.
pub const CHOICES_MAX: u64 = 128;
/// Most prompts in one completions or embeddings batch.
pub const PROMPTS_MAX: u64 = 2_048;
/// Longest model name accepted.
pub const MODEL_NAME_LEN_MAX: usize = 256;
/// Most `top_logprobs` OpenAI allows.
pub const TOP_LOGPROBS_MAX: u64 = 20;
/// Longest response id accepted (`previous_response_id`).
pub const RESPONSE_ID_LEN_MAX: usize = 1_024;
/// Bytes one output token may take in a JSON answer (the longest tokens, JSON-escaped).
pub const ANSWER_BYTES_PER_TOKEN_MAX: u64 = 32;
/// Bytes one log probability alternative may take, per token.
pub const LOGPROB_BYTES_MAX: u64 = 128;
/// Bytes of a JSON answer besides its tokens, per choice (ids, usage, framing).
pub const ANSWER_OVERHEAD_BYTES: u64 = 4_096;

/// A request body, at most `limit` bytes, arriving within `timeout`.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::TooLarge { limit });
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut stream = body.into_data_stream();
    let mut bytes = BytesMut::new();
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .map_err(|_| {
                ApiError::RequestTimeout(format!(
                    "the request body did not arrive within {} s",
                    timeout.as_secs()
                ))
            })?;
        match next {
            None => return Ok(bytes.freeze()),
            Some(Err(e)) => {
                return Err(ApiError::BadRequest(format!(
                    "could not read the request body: {e}"
                )));
            }
            Some(Ok(chunk)) => {
                if bytes.len() + chunk.len() > limit {
                    return Err(ApiError::TooLarge { limit });
                }
                bytes.extend_from_slice(&chunk);
            }
        }
    }
}

/// The metered routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    /// OpenAI's Responses API.
    Responses,
    /// Anthropic's Messages API.
    Messages,
}

/// How an endpoint's answers and errors are shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// OpenAI's chat, completions and embeddings: `choices`, streams of `data:` chunks ending in
    /// `data: [DONE]`, errors as `{"error": {...}}`.
    Chat,
    /// OpenAI's Responses API: typed events ending in `response.completed`, `.incomplete` or
    /// `.failed`; errors as OpenAI's.
    Responses,
    /// Anthropic's Messages API: typed events ending in `message_stop`; errors as
    /// `{"type": "error", "error": {...}}`.
    Messages,
}

/// OpenAI's chat completion parameters, and Anthropic's `thinking` (LiteLLM passes it to Claude
/// models; its budget is read and capped as output).
const CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "audio",
    "frequency_penalty",
    "function_call",
    "functions",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "max_tokens",
    "metadata",
    "modalities",
    "n",
    "parallel_tool_calls",
    "presence_penalty",
    "prompt_cache_key",
    "prompt_cache_retention",
    "reasoning_effort",
    "response_format",
    "safety_identifier",
    "seed",
    "service_tier",
    "stop",
    "store",
    "stream",
    "stream_options",
    "temperature",
    "thinking",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "user",
    "verbosity",
    "web_search_options",
];

/// OpenAI's (legacy) completion parameters.
const COMPLETION_FIELDS: &[&str] = &[
    "model",
    "prompt",
    "best_of",
    "echo",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "max_tokens",
    "metadata",
    "n",
    "presence_penalty",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "suffix",
    "temperature",
    "top_p",
    "user",
];

/// OpenAI's embedding parameters.
const EMBEDDING_FIELDS: &[&str] = &[
    "model",
    "input",
    "dimensions",
    "encoding_format",
    "metadata",
    "user",
];

/// OpenAI's Responses API parameters. Left out on purpose: `background` (no answer to meter),
/// `conversation` and `prompt` (server-side state of unknown size); `previous_response_id` is
/// accepted only for responses this gateway served (see `proxy`).
const RESPONSES_FIELDS: &[&str] = &[
    "model",
    "input",
    "include",
    "instructions",
    "max_output_tokens",
    "max_tool_calls",
    "metadata",
    "parallel_tool_calls",
    "previous_response_id",
    "prompt_cache_key",
    "reasoning",
    "safety_identifier",
    "service_tier",
    "store",
    "stream",
    "stream_options",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "truncation",
    "user",
];

/// Anthropic's Messages API parameters (left out: `mcp_servers`, `container`: server-side
/// tools tollgate cannot meter).
const MESSAGES_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "metadata",
    "service_tier",
    "stop_sequences",
    "stream",
    "system",
    "temperature",
    "thinking",
    "tool_choice",
    "tools",
    "top_k",
    "top_p",
];

/// Fields refused whatever an operator allows, with why: what they ask for cannot be metered.
const UNMETERABLE_FIELDS: &[(&str, &str)] = &[
    (
        "background",
        "a background response is answered later, elsewhere, and tollgate charges what it reads \
         from the answer; send the request in the foreground (streaming keeps it alive)",
    ),
    (
        "conversation",
        "a stored conversation adds earlier turns of unknown size to the prompt; send them as \
         \"input\", or continue from a response this gateway served (\"previous_response_id\")",
    ),
    (
        "prompt",
        "a stored prompt template adds text of unknown size to the prompt; send it as \
         \"instructions\"",
    ),
    (
        "mcp_servers",
        "remote MCP servers run tools, billed apart and of unknown size, that tollgate cannot meter",
    ),
    (
        "container",
        "a code execution container is billed by the hour, apart from tokens, and tollgate cannot \
         meter it",
    ),
];

/// Accepted, never forwarded: LiteLLM's proxy acts on them (tags, budgets, callbacks).
const DROPPED_FIELDS: &[&str] = &["metadata"];

impl Endpoint {
    pub const ALL: [Endpoint; 5] = [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Responses,
        Endpoint::Messages,
    ];

    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Responses => "/v1/responses",
            Endpoint::Messages => "/v1/messages",
        }
    }

    /// The name operators use for it in the config (`requests.extra_fields`).
    pub fn config_name(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
            Endpoint::Messages => "messages",
        }
    }

    /// How its answers and errors are shaped.
    pub fn wire(self) -> Wire {
        match self {
            Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings => Wire::Chat,
            Endpoint::Responses => Wire::Responses,
            Endpoint::Messages => Wire::Messages,
        }
    }

    /// The request fields forwarded as they are (besides an operator's additions).
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            Endpoint::ChatCompletions => CHAT_FIELDS,
            Endpoint::Completions => COMPLETION_FIELDS,
            Endpoint::Embeddings => EMBEDDING_FIELDS,
            Endpoint::Responses => RESPONSES_FIELDS,
            Endpoint::Messages => MESSAGES_FIELDS,
        }
    }

    /// Whether the route produces output tokens.
    pub fn has_output(self) -> bool {
        self != Endpoint::Embeddings
    }

    /// Whether a model of `mode` can serve this route (LiteLLM serves the Responses and
    /// Messages APIs for chat models too, translating).
    pub fn serves(self, mode: ModelMode) -> bool {
        matches!(
            (self, mode),
            (Endpoint::ChatCompletions, ModelMode::Chat)
                | (
                    Endpoint::Completions,
                    ModelMode::Completion | ModelMode::Chat
                )
                | (Endpoint::Embeddings, ModelMode::Embedding)
                | (Endpoint::Responses, ModelMode::Responses | ModelMode::Chat)
                | (Endpoint::Messages, ModelMode::Chat)
        )
    }

    /// The request field holding the prompt.
    pub fn prompt_field(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions | Endpoint::Messages => "messages",
            Endpoint::Completions => "prompt",
            Endpoint::Embeddings | Endpoint::Responses => "input",
        }
    }

    /// The cap field written when the client set none.
    fn default_cap_field(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "max_completion_tokens",
            Endpoint::Responses => "max_output_tokens",
            _ => "max_tokens",
        }
    }

    /// The fields that cap output, in the order the upstream prefers them.
    fn cap_fields(self) -> &'static [&'static str] {
        match self {
            Endpoint::ChatCompletions => &["max_completion_tokens", "max_tokens"],
            Endpoint::Completions | Endpoint::Messages => &["max_tokens"],
            Endpoint::Responses => &["max_output_tokens"],
            Endpoint::Embeddings => &[],
        }
    }
}

/// A web search the request asks for (`web_search_options`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchAsk {
    /// The size asked for; `None` = the provider's default.
    pub size: Option<SearchSize>,
}

/// A checked request body and what the meter needs to know of it.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    pub endpoint: Endpoint,
    /// The body, forwarded once edited (model, caps, usage).
    pub body: Map<String, Value>,
    /// The model asked for.
    pub model: String,
    pub stream: bool,
    /// The client asked for the usage chunk of a stream.
    pub usage_asked: bool,
    /// The client's output cap: the larger cap field, if it set one.
    pub output_cap: Option<u64>,
    /// Completions generated: choices per prompt × prompts. Each may use the whole cap.
    pub choices: u64,
    /// Anthropic's extended-thinking budget, if enabled.
    pub thinking_budget: Option<u64>,
    pub search: Option<SearchAsk>,
    /// Searches a provider-hosted web search tool in `tools` may run (its `max_uses`).
    pub search_tool_uses: u64,
    /// The request may produce audio (`modalities` includes it).
    pub audio_output: bool,
    /// Log probabilities per output token, if asked (they make a body larger).
    pub logprobs: Option<u64>,
    /// The Responses API response this request continues from.
    pub previous_response_id: Option<String>,
}

fn bad(message: String) -> ApiError {
    ApiError::BadRequest(message)
}

/// A positive integer field, if present (`null` is absent).
fn positive(body: &Map<String, Value>, field: &str) -> Result<Option<u64>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or_else(|| bad(format!("{field:?} must be a positive integer"))),
    }
}

/// Reads and checks `bytes` as a request to `endpoint`; `extra_fields` are the operator's
/// additions to the endpoint's allowlist.
pub fn parse(
    endpoint: Endpoint,
    bytes: &[u8],
    extra_fields: &[String],
) -> Result<ClientRequest, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| bad(format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(body) = value else {
        return Err(bad("the request body must be a JSON object".into()));
    };
    if let Some(field) = body
        .keys()
        .find(|k| !endpoint.fields().contains(&k.as_str()) && !extra_fields.iter().any(|e| e == *k))
    {
        if let Some((_, why)) = UNMETERABLE_FIELDS
            .iter()
            .find(|(name, _)| name == field)
            .filter(|_| {
                !body[field.as_str()].is_null() && body[field.as_str()] != Value::Bool(false)
            })
        {
            return Err(bad(format!(
                "field {field:?} is not accepted on {}: {why}",
                endpoint.path()
            )));
        }
        if !UNMETERABLE_FIELDS.iter().any(|(name, _)| name == field) {
            return Err(bad(format!(
                "field {field:?} is not accepted on {}: tollgate forwards only the fields it \
                 prices, and this one could change the model served or what it costs (an \
                 operator can allow it with requests.extra_fields)",
                endpoint.path()
            )));
        }
    }
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() && m.len() <= MODEL_NAME_LEN_MAX => m.clone(),
        Some(_) => {
            return Err(bad(format!(
                "\"model\" must be a non-empty string of at most {MODEL_NAME_LEN_MAX} characters"
            )));
        }
        None => return Err(bad("missing required field \"model\"".into())),
    };
    let prompt_field = endpoint.prompt_field();
    match (endpoint, body.get(prompt_field)) {
        (Endpoint::Responses, None) if body.contains_key("previous_response_id") => {}
        (_, None) => return Err(bad(format!("missing required field {prompt_field:?}"))),
        (Endpoint::ChatCompletions | Endpoint::Messages, Some(Value::Array(_))) => {}
        (Endpoint::ChatCompletions | Endpoint::Messages, Some(_)) => {
            return Err(bad("\"messages\" must be an array".into()));
        }
        (_, Some(Value::String(_) | Value::Array(_))) => {}
        (_, Some(_)) => {
            return Err(bad(format!(
                "{prompt_field:?} must be a string or an array"
            )));
        }
    }
    if endpoint == Endpoint::Messages && positive(&body, "max_tokens")?.is_none() {
        return Err(bad(
            "missing required field \"max_tokens\": the Messages API needs an output cap".into(),
        ));
    }
    let previous_response_id = match body.get("previous_response_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if !id.is_empty() && id.len() <= RESPONSE_ID_LEN_MAX => {
            Some(id.clone())
        }
        Some(_) => {
            return Err(bad(format!(
                "\"previous_response_id\" must be a response id of 1 to {RESPONSE_ID_LEN_MAX} \
                 characters"
            )));
        }
    };
    check_tools(endpoint, &body)?;
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b && endpoint.has_output(),
        Some(_) => return Err(bad("\"stream\" must be a boolean".into())),
    };
    let usage_asked = match body.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(bad(
                    "\"stream_options.include_usage\" must be a boolean".into()
                ));
            }
        },
        Some(_) => return Err(bad("\"stream_options\" must be an object".into())),
    };
    let mut output_cap = None;
    for field in endpoint.cap_fields() {
        if let Some(n) = positive(&body, field)? {
            output_cap = Some(output_cap.map_or(n, |c: u64| c.max(n)));
        }
    }
    let mut choices = 1;
    for field in ["n", "best_of"] {
        if let Some(n) = positive(&body, field)? {
            if n > CHOICES_MAX {
                return Err(bad(format!(
                    "{field:?} must be an integer from 1 to {CHOICES_MAX}"
                )));
            }
            choices = choices.max(n);
        }
    }
    let prompts = prompt_count(endpoint, &body);
    if prompts > PROMPTS_MAX {
        return Err(bad(format!(
            "{prompt_field:?} holds {prompts} prompts, more than {PROMPTS_MAX}"
        )));
    }
    let thinking_budget = thinking(&body)?;
    let search = match body.get("web_search_options") {
        None | Some(Value::Null) => None,
        Some(Value::Object(o)) => Some(SearchAsk {
            size: match o.get("search_context_size") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(SearchSize::parse(s).ok_or_else(|| {
                    bad(format!(
                        "\"web_search_options.search_context_size\" {s:?} is not low, medium or high"
                    ))
                })?),
                Some(_) => {
                    return Err(bad(
                        "\"web_search_options.search_context_size\" must be a string".into(),
                    ));
                }
            },
        }),
        Some(_) => return Err(bad("\"web_search_options\" must be an object".into())),
    };
    let search_tool_uses = search_tool_uses(&body)?;
    if let Some(tier) = body.get("service_tier")
        && !matches!(tier.as_str(), Some("auto" | "default" | "standard_only"))
        && !tier.is_null()
    {
        return Err(bad(format!(
            "\"service_tier\" {tier} is priced differently from the standard tier tollgate \
             charges; send \"auto\" or \"default\", or leave it out"
        )));
    }
    let audio_output = match body.get("modalities") {
        None | Some(Value::Null) => false,
        Some(Value::Array(items)) => items.iter().any(|m| m.as_str() == Some("audio")),
        Some(_) => return Err(bad("\"modalities\" must be an array".into())),
    };
    let logprobs = match (body.get("logprobs"), endpoint) {
        (_, Endpoint::Responses) => body
            .get("top_logprobs")
            .and_then(Value::as_u64)
            .map(|n| n.min(TOP_LOGPROBS_MAX)),
        (None | Some(Value::Null) | Some(Value::Bool(false)), _) => None,
        (Some(Value::Bool(true)), _) => Some(
            body.get("top_logprobs")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .min(TOP_LOGPROBS_MAX),
        ),
        (Some(v), Endpoint::Completions) => v.as_u64().map(|n| n.min(TOP_LOGPROBS_MAX)),
        (Some(_), _) => return Err(bad("\"logprobs\" must be a boolean".into())),
    };
    Ok(ClientRequest {
        endpoint,
        body,
        previous_response_id,
        model,
        stream,
        usage_asked,
        output_cap,
        choices: choices.saturating_mul(prompts),
        thinking_budget,
        search,
        search_tool_uses,
        audio_output,
        logprobs,
    })
}

/// Refuses tools whose use tollgate cannot bound or meter: hosted tools billed per call or per
/// session, or that pull content of unknown size into the prompt (OpenAI's `web_search`,
/// `file_search`, `code_interpreter`, `image_generation`, `mcp`; Anthropic's `web_fetch`,
/// `code_execution`). Functions and client-side tools pass; Anthropic's web search passes with
/// `max_uses` (see [`search_tool_uses`]).
fn check_tools(endpoint: Endpoint, body: &Map<String, Value>) -> Result<(), ApiError> {
    let Some(tools) = body.get("tools") else {
        return Ok(());
    };
    let Some(tools) = tools.as_array() else {
        return if tools.is_null() {
            Ok(())
        } else {
            Err(bad("\"tools\" must be an array".into()))
        };
    };
    for tool in tools {
        let kind = tool.get("type").and_then(Value::as_str);
        let allowed = match (endpoint, kind) {
            (_, Some("function")) => true,
            (Endpoint::Responses, Some("custom")) => true,
            (Endpoint::Messages, None | Some("custom")) => true,
            (Endpoint::Messages, Some(k)) => [
                "bash_",
                "text_editor_",
                "computer_",
                "memory_",
                "web_search_",
            ]
            .iter()
            .any(|prefix| k.starts_with(prefix)),
            (Endpoint::ChatCompletions, Some(k)) => k == "custom" || k.starts_with("web_search"),
            _ => false,
        };
        if !allowed {
            return Err(bad(format!(
                "tools of type {} cannot be metered through this gateway (each call is billed \
                 apart, or pulls content of unknown size into the prompt); use function tools",
                kind.map_or_else(|| "(none)".to_owned(), |k| format!("{k:?}"))
            )));
        }
    }
    Ok(())
}

/// Most searches a provider-hosted web search tool in `tools` may run (Anthropic's
/// `{"type": "web_search_20250305", "max_uses": N}`): each search is billed, so such a tool must
/// say how many it may run.
fn search_tool_uses(body: &Map<String, Value>) -> Result<u64, ApiError> {
    let tools = body.get("tools").and_then(Value::as_array);
    let mut uses: u64 = 0;
    for tool in tools.into_iter().flatten() {
        let kind = tool.get("type").and_then(Value::as_str).unwrap_or("");
        if !kind.starts_with("web_search") {
            continue;
        }
        let max = tool
            .get("max_uses")
            .and_then(Value::as_u64)
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                bad(format!(
                    "a {kind:?} tool must set \"max_uses\": each search it runs is billed, and \
                     tollgate reserves for them before the request is sent"
                ))
            })?;
        uses = uses.saturating_add(max);
    }
    Ok(uses)
}

/// `thinking`: `{"type": "enabled", "budget_tokens": N}` gives a budget; `disabled` none.
fn thinking(body: &Map<String, Value>) -> Result<Option<u64>, ApiError> {
    let Some(thinking) = body.get("thinking").filter(|t| !t.is_null()) else {
        return Ok(None);
    };
    let Some(object) = thinking.as_object() else {
        return Err(bad("\"thinking\" must be an object".into()));
    };
    match object.get("type").and_then(Value::as_str) {
        Some("disabled") => Ok(None),
        Some("enabled") => positive(object, "budget_tokens")?.map(Some).ok_or_else(|| {
            bad("\"thinking.budget_tokens\" is required when thinking is enabled".into())
        }),
        _ => Err(bad(
            "\"thinking.type\" must be \"enabled\" or \"disabled\"".into()
        )),
    }
}

/// How many prompts a completions or embeddings request carries (each gets its own
/// completions): an array of strings or of token arrays counts its items; a string or a flat
/// token array is one.
fn prompt_count(endpoint: Endpoint, body: &Map<String, Value>) -> u64 {
    match (endpoint, body.get("prompt")) {
        (Endpoint::Completions, Some(Value::Array(items)))
            if items.iter().any(|i| i.is_string() || i.is_array()) =>
        {
            items.len().max(1) as u64
        }
        _ => 1,
    }
}

impl ClientRequest {
    /// The most web searches the request may run: one for OpenAI's search models; for
    /// Anthropic's models (`provider`) the `max_uses` LiteLLM sets from the context size (1, 5,
    /// 10) — without a size their number is unbounded, so such a request is refused.
    pub fn searches_ceiling(&self, provider: &str) -> Result<u64, ApiError> {
        let Some(search) = self.search else {
            return Ok(self.search_tool_uses);
        };
        if provider != "anthropic" {
            return Ok(1 + self.search_tool_uses);
        }
        let options = match search.size {
            Some(SearchSize::Low) => 1,
            Some(SearchSize::Medium) => 5,
            Some(SearchSize::High) => 10,
            None => {
                return Err(bad(
                "web search on an Anthropic model needs \"web_search_options.search_context_size\" \
                 (low, medium or high), which bounds how many searches it may run and bill"
                        .into(),
                ));
            }
        };
        Ok(options + self.search_tool_uses)
    }

    /// Refuses a non-streamed request whose answer (`per_choice` tokens for each of `choices`)
    /// could be larger than `limit` bytes, the most the gateway reads.
    pub fn check_answer_size(
        &self,
        per_choice: u64,
        choices: u64,
        limit: usize,
    ) -> Result<(), ApiError> {
        let per_token = ANSWER_BYTES_PER_TOKEN_MAX
            + self
                .logprobs
                .map_or(0, |n| (n + 1).saturating_mul(LOGPROB_BYTES_MAX));
        let most = per_choice
            .saturating_mul(per_token)
            .saturating_add(ANSWER_OVERHEAD_BYTES)
            .saturating_mul(choices);
        if most > limit as u64 {
            return Err(bad(format!(
                "this request's answer could reach {most} bytes, more than the gateway reads \
                 (limits.response_bytes_max = {limit}); ask for fewer tokens or choices, or \
                 stream it"
            )));
        }
        Ok(())
    }

    /// Writes `cap` into every output-cap field the request uses, or the endpoint's own field if
    /// it uses none, and lowers a thinking budget below it, so no field the upstream obeys asks
    /// for more than was reserved.
    pub fn set_output_cap(&mut self, cap: u64) {
        if !self.endpoint.has_output() {
            return;
        }
        let mut set = false;
        for field in self.endpoint.cap_fields() {
            if self.body.get(*field).is_some_and(|v| !v.is_null()) {
                self.body.insert((*field).to_owned(), Value::from(cap));
                set = true;
            }
        }
        if !set {
            self.body.insert(
                self.endpoint.default_cap_field().to_owned(),
                Value::from(cap),
            );
        }
        if let Some(budget) = self.thinking_budget
            && budget >= cap
            && let Some(thinking) = self.body.get_mut("thinking").and_then(Value::as_object_mut)
        {
            let lowered = cap.saturating_sub(1);
            thinking.insert("budget_tokens".into(), Value::from(lowered));
            self.thinking_budget = Some(lowered);
        }
    }

    /// Asks the upstream for the usage chunk of a chat or completions stream (hidden again from a
    /// client that did not ask for it); the Responses and Messages APIs always send usage.
    pub fn ask_stream_usage(&mut self) {
        if self.endpoint.wire() != Wire::Chat {
            return;
        }
        match self
            .body
            .get_mut("stream_options")
            .and_then(Value::as_object_mut)
        {
            Some(options) => {
                options.insert("include_usage".into(), Value::Bool(true));
            }
            None => {
                self.body.insert(
                    "stream_options".into(),
                    serde_json::json!({"include_usage": true}),
                );
            }
        }
    }

    /// The body to forward, naming `model`, without the fields tollgate keeps to itself.
    pub fn forwarded(&self, model: &str) -> Value {
        let mut body = self.body.clone();
        for field in DROPPED_FIELDS {
            body.remove(*field);
        }
        body.insert("model".into(), Value::String(model.to_owned()));
        Value::Object(body)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn chat(body: Value) -> Result<ClientRequest, ApiError> {
        parse(
            Endpoint::ChatCompletions,
            &serde_json::to_vec(&body).unwrap(),
            &[],
        )
    }

    fn message(result: Result<ClientRequest, ApiError>) -> String {
        result.unwrap_err().to_string()
    }

    #[test]
    fn only_the_endpoints_fields_and_the_operators_additions_pass() {
        let body = json!({"model": "m", "messages": [], "temperature": 0.2, "user": "u",
                          "metadata": {"tags": ["x"]}});
        let request = chat(body).unwrap();
        let forwarded = request.forwarded("served");
        assert_eq!(forwarded["model"], "served");
        assert!(
            forwarded.get("metadata").is_none(),
            "metadata is not forwarded"
        );
        assert_eq!(forwarded["temperature"], 0.2);
        for field in [
            "fallbacks",
            "extra_body",
            "models",
            "route",
            "api_key",
            "mock_response",
        ] {
            let err = message(chat(json!({"model": "m", "messages": [], field: 1})));
            assert!(err.contains(&format!("{field:?}")), "{field}: {err}");
        }
        // max_output_tokens is a Responses field, not chat's.
        assert!(
            message(chat(
                json!({"model": "m", "messages": [], "max_output_tokens": 5})
            ))
            .contains("\"max_output_tokens\"")
        );
        let extra = ["x_custom".to_owned()];
        let ok = parse(
            Endpoint::ChatCompletions,
            br#"{"model": "m", "messages": [], "x_custom": 1}"#,
            &extra,
        );
        assert!(ok.is_ok());
        assert!(
            parse(
                Endpoint::Embeddings,
                br#"{"model": "m", "input": "a", "n": 2}"#,
                &[]
            )
            .is_err()
        );
    }

    #[test]
    fn every_output_bound_is_read_and_capped_together() {
        let r = chat(json!({"model": "m", "messages": [], "max_tokens": 100000,
                            "max_completion_tokens": 7, "n": 3}))
        .unwrap();
        assert_eq!((r.output_cap, r.choices), (Some(100_000), 3));
        let mut r = chat(json!({"model": "m", "messages": [], "max_tokens": 9,
                                "max_completion_tokens": 7}))
        .unwrap();
        r.set_output_cap(3);
        assert_eq!(
            (
                r.body["max_tokens"].clone(),
                r.body["max_completion_tokens"].clone()
            ),
            (json!(3), json!(3))
        );
        let mut r = chat(json!({"model": "m", "messages": []})).unwrap();
        r.set_output_cap(5);
        assert_eq!(r.body["max_completion_tokens"], 5);
        assert!(r.body.get("max_tokens").is_none());
        let mut r = chat(json!({"model": "m", "messages": [], "max_tokens": 5000,
            "thinking": {"type": "enabled", "budget_tokens": 4000}}))
        .unwrap();
        assert_eq!(r.thinking_budget, Some(4000));
        r.set_output_cap(1000);
        assert_eq!(r.body["thinking"]["budget_tokens"], 999);
        assert_eq!(r.body["max_tokens"], 1000);
        let completions = parse(
            Endpoint::Completions,
            br#"{"model": "m", "prompt": ["a", "b", "c"], "best_of": 2, "max_tokens": 4}"#,
            &[],
        )
        .unwrap();
        assert_eq!(completions.choices, 6, "2 choices for each of 3 prompts");
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            (json!({"messages": []}), "missing required field \"model\""),
            (json!({"model": "m"}), "missing required field \"messages\""),
            (
                json!({"model": "m", "messages": "hi"}),
                "\"messages\" must be an array",
            ),
            (json!({"model": "", "messages": []}), "\"model\" must be"),
            (
                json!({"model": "m", "messages": [], "max_tokens": 0}),
                "\"max_tokens\"",
            ),
            (
                json!({"model": "m", "messages": [], "max_tokens": "9"}),
                "\"max_tokens\"",
            ),
            (json!({"model": "m", "messages": [], "n": 129}), "\"n\""),
            (
                json!({"model": "m", "messages": [], "stream": "yes"}),
                "\"stream\"",
            ),
            (
                json!({"model": "m", "messages": [], "thinking": {"type": "enabled"}}),
                "thinking.budget_tokens",
            ),
            (
                json!({"model": "m", "messages": [], "service_tier": "priority"}),
                "\"service_tier\"",
            ),
            (
                json!({"model": "m", "messages": [],
                       "web_search_options": {"search_context_size": "huge"}}),
                "search_context_size",
            ),
        ];
        for (body, expected) in cases {
            let err = message(chat(body.clone()));
            assert!(err.contains(expected), "{body}: {err}");
        }
        assert!(message(parse(Endpoint::ChatCompletions, b"[1]", &[])).contains("JSON object"));
        assert!(message(parse(Endpoint::ChatCompletions, b"{", &[])).contains("not valid JSON"));
    }

    #[test]
    fn streams_usage_and_search_are_read() {
        let mut r = chat(json!({"model": "m", "messages": [], "stream": true,
            "web_search_options": {"search_context_size": "high"}, "modalities": ["text", "audio"],
            "logprobs": true, "top_logprobs": 5}))
        .unwrap();
        assert!(r.stream && !r.usage_asked);
        assert_eq!(r.search.unwrap().size, Some(SearchSize::High));
        assert!(r.audio_output);
        assert_eq!(r.logprobs, Some(5));
        r.ask_stream_usage();
        assert_eq!(r.body["stream_options"]["include_usage"], true);
        let embeddings = parse(
            Endpoint::Embeddings,
            br#"{"model": "m", "input": "a", "stream": true}"#,
            &[],
        );
        assert!(embeddings.is_err(), "stream is not an embeddings field");
    }
}
