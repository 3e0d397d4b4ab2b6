//! The prompt's ceiling: an upper bound of the tokens the provider will count for a request's
//! prompt, tight where a tokenizer for the model is available, and a bound everywhere.
//!
//! How each part is bounded:
//! - Text: OpenAI's models are counted exactly with their own tokenizer (`o200k_base` for
//!   GPT-4o, GPT-4.1, GPT-5 and the o-series, `cl100k_base` for GPT-4 and GPT-3.5;
//!   [`tiktoken_rs`], byte for byte the same tokens as OpenAI's tiktoken). Other models, and
//!   embedding models, are bounded by the text's UTF-8 bytes: every tokenizer in use (byte-level BPE, and
//!   SentencePiece with byte fallback) spends at least one byte per token. Past
//!   [`TOKENIZED_BYTES_MAX`] bytes in one request, the rest is counted by bytes too (a bound,
//!   and it keeps a 4 MiB prompt from costing the gateway a second of CPU).
//! - Structure: [`MESSAGE_FRAMING_TOKENS`] per chat message (OpenAI's own formula uses 3 plus
//!   one for a name) and [`REQUEST_FRAMING_TOKENS`] per request; tool and function
//!   definitions and response formats are counted as their JSON text, plus
//!   [`TOOL_FRAMING_TOKENS`] per tool and [`TOOLS_PROMPT_TOKENS`] once (providers wrap tools in
//!   a system prompt of their own: Anthropic's is 346 tokens).
//! - Images, by the model family's own rules, for the largest image it accepts (tollgate does
//!   not fetch or decode images): OpenAI's tiled models `base + 8 × tile` at high or auto
//!   detail (an image is scaled to fit 2048×2048, its short side to 768: at most 2×4 tiles of
//!   512), `base` at low detail (gpt-4o-mini: 2,833 and 5,667 per tile, so a high-detail image
//!   may cost 48,169 tokens); OpenAI's patch models 1,536 patches × their multiplier; Claude
//!   1,600; Gemini 16 tiles of 258. An unknown family is reserved as the dearest known image.
//! - Audio parts: one token per [`AUDIO_BYTES_PER_TOKEN`] bytes of decoded audio, far above any
//!   provider's rate. File parts (PDFs) cannot be bounded without parsing them: refused.
//!
//! Pure functions over the request body. The tokenizers are large (o200k_base takes ≈46 MB
//! resident, cl100k_base ≈24 MB) and slow to load (≈0.4 s): each loads once, on first use, and
//! [`warm_up`] loads those the upstream's models need at start-up, off the request path.

use std::sync::OnceLock;

use serde_json::{Map, Value};
use tiktoken_rs::CoreBPE;

use crate::prices::{ModelPrice, model_family};

use super::error::ApiError;
use super::request::{ClientRequest, Endpoint};

/// Tokens of framing per chat message (role markers, separators).
pub const MESSAGE_FRAMING_TOKENS: u64 = 4;
/// Tokens of framing per request (the reply's priming, a system preamble).
pub const REQUEST_FRAMING_TOKENS: u64 = 16;
/// Tokens per tool definition beyond its JSON (its rendering in the provider's tool format).
pub const TOOL_FRAMING_TOKENS: u64 = 8;
/// Tokens of the system prompt providers add when a request carries tools.
pub const TOOLS_PROMPT_TOKENS: u64 = 600;
/// The larger prompts of Anthropic's client tools, beyond [`TOOLS_PROMPT_TOKENS`] (its
/// documented additions: bash 245, the text editor 700, computer use 735 plus a system prompt
/// of up to 499; the memory tool's is not published and is taken as the editor's).
pub const CLIENT_TOOL_PROMPT_TOKENS: &[(&str, u64)] = &[
    ("bash_", 245),
    ("text_editor_", 700),
    ("computer_", 735 + 499),
    ("memory_", 700),
];
/// Input tokens reserved for each web search Anthropic may run: it bills a search's results as
/// input tokens of the turns after it. An allowance, not a bound (results are the provider's to
/// size; a typical search returns a few thousand tokens): a request whose results run over it
/// is still charged in full up to its hold, and the rest is booked as overage.
pub const SEARCH_RESULT_TOKENS: u64 = 20_000;
/// Text bytes per request counted with a tokenizer; the rest counts one token per byte.
pub const TOKENIZED_BYTES_MAX: usize = 1 << 20;
/// Decoded audio bytes per token, at least (16 kHz 16-bit PCM is 32,000 bytes a second; no
/// provider bills 1,000 tokens for a second of audio).
pub const AUDIO_BYTES_PER_TOKEN: u64 = 32;
/// The dearest image any known model bills (gpt-4o-mini at high detail, 8 tiles).
pub const IMAGE_TOKENS_UNKNOWN: u64 = 2_833 + 8 * 5_667;

/// What a prompt may use at most.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PromptCeiling {
    pub tokens: u64,
    pub images: u64,
    /// The prompt carries audio.
    pub audio: bool,
}

/// How a model's text is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tokenizer {
    O200k,
    Cl100k,
    /// One token per byte at most.
    Bytes,
}

static O200K: OnceLock<Option<CoreBPE>> = OnceLock::new();
static CL100K: OnceLock<Option<CoreBPE>> = OnceLock::new();

fn bpe(tokenizer: Tokenizer) -> Option<&'static CoreBPE> {
    match tokenizer {
        Tokenizer::O200k => O200K
            .get_or_init(|| tiktoken_rs::o200k_base().ok())
            .as_ref(),
        Tokenizer::Cl100k => CL100K
            .get_or_init(|| tiktoken_rs::cl100k_base().ok())
            .as_ref(),
        Tokenizer::Bytes => None,
    }
}

/// Loads `tokenizers` (call off the request path).
pub fn warm_up(tokenizers: &[Tokenizer]) {
    for t in tokenizers {
        let _ = bpe(*t);
    }
}

/// Whether `tokenizer` is loaded (counting with one that is not costs its load first).
pub fn is_loaded(tokenizer: Tokenizer) -> bool {
    match tokenizer {
        Tokenizer::O200k => O200K.get().is_some(),
        Tokenizer::Cl100k => CL100K.get().is_some(),
        Tokenizer::Bytes => true,
    }
}

/// The tokenizer of `price`'s model: OpenAI's own for OpenAI's model families (also when
/// resold, `openrouter/openai/gpt-4o`), else bytes.
pub fn tokenizer_for(price: &ModelPrice) -> Tokenizer {
    let family = model_family(&price.model);
    let openai_made = price.provider == "openai" || price.model.contains("openai/");
    if !openai_made {
        return Tokenizer::Bytes;
    }
    const O200K_FAMILIES: &[&str] = &[
        "gpt-4o",
        "gpt-4.1",
        "gpt-4.5",
        "gpt-5",
        "o1",
        "o3",
        "o4",
        "chatgpt-4o",
        "gpt-oss",
        "codex",
    ];
    // Not the embedding models, though they use cl100k: their prompts cost a fiftieth of a
    // chat model's, a bound by bytes is near enough, and the tokenizer would add 24 MB.
    const CL100K_FAMILIES: &[&str] = &["gpt-4", "gpt-3.5", "gpt-35", "davinci-002", "babbage-002"];
    if O200K_FAMILIES.iter().any(|f| family.starts_with(f)) {
        Tokenizer::O200k
    } else if CL100K_FAMILIES.iter().any(|f| family.starts_with(f)) {
        Tokenizer::Cl100k
    } else {
        Tokenizer::Bytes
    }
}

/// Most tokens one image may cost `price`'s model at `detail` ("low", "high", "auto").
pub fn image_tokens(price: &ModelPrice, detail: &str) -> u64 {
    let family = model_family(&price.model);
    let tiled = |base: u64, tile: u64| {
        if detail == "low" {
            base
        } else {
            base + 8 * tile
        }
    };
    let patches = |multiplier_percent: u64| (1_536 * multiplier_percent).div_ceil(100);
    // Most specific families first: `gpt-4o-mini` before `gpt-4o`, `gpt-4.1-mini` before
    // `gpt-4.1`.
    let rules: &[(&str, u64)] = &[
        ("gpt-4o-mini", tiled(2_833, 5_667)),
        ("gpt-4.1-mini", patches(162)),
        ("gpt-4.1-nano", patches(246)),
        ("gpt-5-mini", patches(162)),
        ("gpt-5-nano", patches(246)),
        ("o4-mini", patches(172)),
        ("gpt-5", tiled(70, 140)),
        ("gpt-4o", tiled(85, 170)),
        ("chatgpt-4o", tiled(85, 170)),
        ("gpt-4.1", tiled(85, 170)),
        ("gpt-4.5", tiled(85, 170)),
        ("gpt-4-turbo", tiled(85, 170)),
        ("o1", tiled(75, 150)),
        ("o3", tiled(75, 150)),
        ("computer-use", tiled(65, 129)),
        ("claude", 1_600),
        ("gemini", 16 * 258),
    ];
    rules
        .iter()
        .find(|(prefix, _)| family.starts_with(prefix))
        .map_or(IMAGE_TOKENS_UNKNOWN, |(_, tokens)| *tokens)
}

/// Counts text toward the ceiling: with the tokenizer while the budget of tokenized bytes
/// lasts, by bytes after.
struct Counter {
    bpe: Option<&'static CoreBPE>,
    tokenized_left: usize,
    tokens: u64,
}

impl Counter {
    fn text(&mut self, text: &str) {
        let n = match self.bpe {
            Some(bpe) if text.len() <= self.tokenized_left => {
                self.tokenized_left -= text.len();
                bpe.encode_ordinary(text).len() as u64
            }
            _ => text.len() as u64,
        };
        self.tokens = self.tokens.saturating_add(n);
    }

    fn json(&mut self, value: &Value) {
        match value {
            Value::String(s) => self.text(s),
            Value::Null => {}
            other => self.text(&other.to_string()),
        }
    }

    fn add(&mut self, tokens: u64) {
        self.tokens = self.tokens.saturating_add(tokens);
    }
}

fn bad(message: String) -> ApiError {
    ApiError::BadRequest(message)
}

/// The ceiling of `request`'s prompt for `price`'s model.
pub fn prompt_ceiling(
    request: &ClientRequest,
    price: &ModelPrice,
) -> Result<PromptCeiling, ApiError> {
    let mut counter = Counter {
        bpe: bpe(tokenizer_for(price)),
        tokenized_left: TOKENIZED_BYTES_MAX,
        tokens: REQUEST_FRAMING_TOKENS,
    };
    let mut ceiling = PromptCeiling::default();
    let body = &request.body;
    match request.endpoint {
        Endpoint::ChatCompletions => {
            let messages = body.get("messages").and_then(Value::as_array);
            for message in messages.into_iter().flatten() {
                message_item(message, price, &mut counter, &mut ceiling)?;
            }
            tools(body, &["tools", "functions"], &mut counter);
            for field in ["tool_choice", "response_format", "function_call"] {
                if let Some(value) = body.get(field) {
                    counter.json(value);
                }
            }
        }
        Endpoint::Completions | Endpoint::Embeddings => {
            let field = request.endpoint.prompt_field();
            if let Some(prompt) = body.get(field) {
                prompts(prompt, field, &mut counter)?;
            }
            if let Some(suffix) = body.get("suffix") {
                counter.json(suffix);
            }
        }
        Endpoint::Responses => {
            if let Some(instructions) = body.get("instructions") {
                counter.json(instructions);
            }
            match body.get("input") {
                Some(Value::Array(items)) => {
                    for item in items {
                        message_item(item, price, &mut counter, &mut ceiling)?;
                    }
                }
                Some(other) => counter.json(other),
                None => {}
            }
            tools(body, &["tools"], &mut counter);
            for field in ["tool_choice", "text"] {
                if let Some(value) = body.get(field) {
                    counter.json(value);
                }
            }
        }
        Endpoint::Messages => {
            match body.get("system") {
                Some(Value::Array(blocks)) => {
                    for block in blocks {
                        part(block, price, &mut counter, &mut ceiling)?;
                    }
                }
                Some(other) => counter.json(other),
                None => {}
            }
            let messages = body.get("messages").and_then(Value::as_array);
            for message in messages.into_iter().flatten() {
                message_item(message, price, &mut counter, &mut ceiling)?;
            }
            tools(body, &["tools"], &mut counter);
            if let Some(value) = body.get("tool_choice") {
                counter.json(value);
            }
        }
    }
    ceiling.tokens = counter.tokens;
    Ok(ceiling)
}

/// A prompt of strings or token ids: a string, an array of token ids, or an array of either.
fn prompts(prompt: &Value, field: &str, counter: &mut Counter) -> Result<(), ApiError> {
    match prompt {
        Value::String(s) => counter.text(s),
        Value::Array(items) if items.iter().all(Value::is_u64) => counter.add(items.len() as u64),
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::String(s) => counter.text(s),
                    Value::Array(ids) if ids.iter().all(Value::is_u64) => {
                        counter.add(ids.len() as u64);
                    }
                    _ => {
                        return Err(bad(format!(
                            "{field:?} must be a string, an array of strings, or token ids"
                        )));
                    }
                }
            }
        }
        _ => return Err(bad(format!("{field:?} must be a string or an array"))),
    }
    Ok(())
}

/// Counts the tool definitions in `fields`: their JSON, framing per tool, the system prompt
/// providers wrap tools in, and the larger prompts of Anthropic's client tools.
fn tools(body: &Map<String, Value>, fields: &[&str], counter: &mut Counter) {
    let mut count = 0;
    for field in fields {
        let Some(list) = body.get(*field).and_then(Value::as_array) else {
            continue;
        };
        count += list.len() as u64;
        counter.json(&Value::Array(list.clone()));
        for tool in list {
            let kind = tool.get("type").and_then(Value::as_str).unwrap_or("");
            if let Some((_, tokens)) = CLIENT_TOOL_PROMPT_TOKENS
                .iter()
                .find(|(prefix, _)| kind.starts_with(prefix))
            {
                counter.add(*tokens);
            }
        }
    }
    if count > 0 {
        counter.add(TOOLS_PROMPT_TOKENS + count * TOOL_FRAMING_TOKENS);
    }
}

/// One message or input item: a chat message, a Responses input item, an Anthropic message.
fn message_item(
    item: &Value,
    price: &ModelPrice,
    counter: &mut Counter,
    ceiling: &mut PromptCeiling,
) -> Result<(), ApiError> {
    if !item.is_object() {
        return Err(bad("each message or input item must be an object".into()));
    }
    counter.add(MESSAGE_FRAMING_TOKENS);
    part(item, price, counter, ceiling)
}

/// A content part, block or item, whatever the API: media by their own rules, nested content
/// (Anthropic's tool results, a Responses function output) part by part, the rest as its JSON
/// text, and encrypted content (reasoning carried between turns, search results) by its bytes.
fn part(
    value: &Value,
    price: &ModelPrice,
    counter: &mut Counter,
    ceiling: &mut PromptCeiling,
) -> Result<(), ApiError> {
    let Some(fields) = value.as_object() else {
        counter.json(value);
        return Ok(());
    };
    let kind = fields.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "image_url" | "input_image" | "image" => {
            let detail = fields
                .get("image_url")
                .and_then(|i| i.get("detail"))
                .or_else(|| fields.get("detail"))
                .and_then(Value::as_str)
                .unwrap_or("auto");
            counter.add(image_tokens(price, detail));
            ceiling.images += 1;
        }
        "input_audio" => {
            let data = fields
                .get("input_audio")
                .and_then(|a| a.get("data"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let decoded = (data.len() as u64).div_ceil(4) * 3;
            counter.add(decoded.div_ceil(AUDIO_BYTES_PER_TOKEN) + 1);
            ceiling.audio = true;
        }
        "document" => document(fields, price, counter, ceiling)?,
        "file" | "input_file" | "container_upload" => {
            return Err(bad(format!(
                "content parts of type {kind:?} cannot be metered: their tokens (a PDF's pages \
                 and text) cannot be bounded before the request is sent; send the text instead"
            )));
        }
        "item_reference" => {
            return Err(bad(
                "input items of type \"item_reference\" cannot be metered: they pull a stored \
                 item of unknown size into the prompt; send the item itself"
                    .into(),
            ));
        }
        _ => {
            for (key, value) in fields {
                match (key.as_str(), value) {
                    ("type", _) => {}
                    ("content" | "output", Value::Array(parts)) => {
                        for p in parts {
                            part(p, price, counter, ceiling)?;
                        }
                    }
                    (_, value) => {
                        counter.json(value);
                        counter.add(encrypted_bytes(key, value));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Anthropic's document block: plain text or nested content is counted; a PDF is refused.
fn document(
    fields: &Map<String, Value>,
    price: &ModelPrice,
    counter: &mut Counter,
    ceiling: &mut PromptCeiling,
) -> Result<(), ApiError> {
    let source = fields.get("source");
    match source.and_then(|s| s.get("type")).and_then(Value::as_str) {
        Some("text") => counter.json(source.and_then(|s| s.get("data")).unwrap_or(&Value::Null)),
        Some("content") => match source.and_then(|s| s.get("content")) {
            Some(Value::Array(parts)) => {
                for p in parts {
                    part(p, price, counter, ceiling)?;
                }
            }
            Some(other) => counter.json(other),
            None => {}
        },
        _ => {
            return Err(bad(
                "document blocks of a PDF or a file cannot be metered: their tokens cannot be \
                 bounded before the request is sent; send a text document or the text instead"
                    .into(),
            ));
        }
    }
    for field in ["title", "context"] {
        if let Some(v) = fields.get(field) {
            counter.json(v);
        }
    }
    Ok(())
}

/// Bytes of encrypted content under `key` (at any depth): the provider decrypts it into tokens,
/// at most one per byte.
fn encrypted_bytes(key: &str, value: &Value) -> u64 {
    match value {
        Value::String(s) if key == "encrypted_content" => s.len() as u64,
        Value::Array(items) => items.iter().map(|v| encrypted_bytes(key, v)).sum(),
        Value::Object(map) => map.iter().map(|(k, v)| encrypted_bytes(k, v)).sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::gateway::request;
    use crate::prices::PriceTable;

    fn price(model: &str) -> ModelPrice {
        let mut p = PriceTable::builtin().get("gpt-4o-mini").unwrap().clone();
        p.model = model.into();
        p.provider = if model.starts_with("claude") {
            "anthropic".into()
        } else {
            "openai".into()
        };
        p
    }

    fn ceiling(endpoint: Endpoint, body: Value, model: &str) -> Result<PromptCeiling, ApiError> {
        let request = request::parse(endpoint, &serde_json::to_vec(&body).unwrap(), &[])?;
        prompt_ceiling(&request, &price(model))
    }

    #[test]
    fn openai_text_is_counted_exactly_and_other_text_by_bytes() {
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(20);
        let body = json!({"model": "m", "messages": [{"role": "user", "content": text}]});
        let gpt = ceiling(Endpoint::ChatCompletions, body.clone(), "gpt-4o-mini").unwrap();
        let claude = ceiling(Endpoint::ChatCompletions, body, "claude-sonnet-4").unwrap();
        let exact = tiktoken_rs::o200k_base()
            .unwrap()
            .encode_ordinary(&text)
            .len() as u64;
        // Text, the role ("user": 1 token), one message's framing and the request's.
        assert_eq!(
            gpt.tokens,
            exact + 1 + MESSAGE_FRAMING_TOKENS + REQUEST_FRAMING_TOKENS
        );
        assert!(
            exact * 4 < text.len() as u64,
            "bytes would overestimate ~4x"
        );
        assert_eq!(
            claude.tokens,
            text.len() as u64 + 4 + MESSAGE_FRAMING_TOKENS + REQUEST_FRAMING_TOKENS
        );
    }

    /// Counts by OpenAI's own Python tiktoken (0.14, the encodings LiteLLM 1.82.6 ships), for
    /// texts of every kind: tiktoken-rs must agree token for token. Made with
    /// `TIKTOKEN_CACHE_DIR=<litellm>/litellm_core_utils/tokenizers python -c 'import tiktoken; …
    /// len(tiktoken.get_encoding(name).encode_ordinary(text))'`.
    #[test]
    fn the_tokenizers_count_as_openais_own() {
        let fixture: Vec<serde_json::Value> =
            serde_json::from_str(include_str!("../../tests/fixtures/tiktoken_counts.json"))
                .unwrap();
        assert!(fixture.len() > 10);
        for row in fixture {
            let text = row["text"].as_str().unwrap();
            for (tokenizer, name) in [
                (Tokenizer::O200k, "o200k_base"),
                (Tokenizer::Cl100k, "cl100k_base"),
            ] {
                let ours = bpe(tokenizer).unwrap().encode_ordinary(text).len() as u64;
                assert_eq!(Some(ours), row[name].as_u64(), "{name}: {text:?}");
            }
        }
    }

    #[test]
    fn tokenizers_follow_the_model_family() {
        for (model, tokenizer) in [
            ("gpt-4o-mini-2024-07-18", Tokenizer::O200k),
            ("o3", Tokenizer::O200k),
            ("gpt-5-nano", Tokenizer::O200k),
            ("gpt-4-turbo", Tokenizer::Cl100k),
            ("gpt-3.5-turbo-instruct", Tokenizer::Cl100k),
            ("text-embedding-3-small", Tokenizer::Bytes),
            ("claude-sonnet-4", Tokenizer::Bytes),
            ("my-house-model", Tokenizer::Bytes),
        ] {
            assert_eq!(tokenizer_for(&price(model)), tokenizer, "{model}");
        }
        let mut resold = price("openrouter/openai/gpt-4o");
        resold.provider = "openrouter".into();
        assert_eq!(tokenizer_for(&resold), Tokenizer::O200k);
    }

    #[test]
    fn images_are_bounded_by_each_familys_tiling_rules() {
        // OpenAI's published examples: a 1024×1024 high-detail image is 4 tiles; the bound
        // takes the largest an image can be (8 tiles).
        assert_eq!(image_tokens(&price("gpt-4o-mini"), "high"), 48_169);
        assert!(image_tokens(&price("gpt-4o-mini"), "auto") >= 2_833 + 4 * 5_667);
        assert_eq!(image_tokens(&price("gpt-4o-mini"), "low"), 2_833);
        assert_eq!(
            image_tokens(&price("gpt-4o-2024-08-06"), "high"),
            85 + 8 * 170
        );
        assert_eq!(image_tokens(&price("gpt-4.1-mini"), "high"), 2_489);
        assert_eq!(image_tokens(&price("o3"), "low"), 75);
        assert_eq!(image_tokens(&price("claude-sonnet-4"), "high"), 1_600);
        assert_eq!(
            image_tokens(&price("some-vision-model"), "low"),
            IMAGE_TOKENS_UNKNOWN
        );
        let body = json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what"},
            {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "https://x/z.png", "detail": "low"}}
        ]}]});
        let c = ceiling(Endpoint::ChatCompletions, body, "gpt-4o-mini").unwrap();
        assert_eq!(c.images, 2);
        assert!(c.tokens >= 48_169 + 2_833, "{c:?}");
    }

    #[test]
    fn files_are_refused_and_audio_bounded() {
        let file = json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,AAAA"}}]}]});
        let err = ceiling(Endpoint::ChatCompletions, file, "gpt-4o").unwrap_err();
        assert!(err.to_string().contains("\"file\""), "{err}");
        let audio = json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "A".repeat(4000), "format": "wav"}}]}]});
        let c = ceiling(Endpoint::ChatCompletions, audio, "gpt-4o-audio-preview").unwrap();
        assert!(c.audio);
        assert!(c.tokens >= 3000 / AUDIO_BYTES_PER_TOKEN);
    }

    #[test]
    fn tools_prompts_and_token_ids_count() {
        let with_tools = json!({"model": "m", "messages": [], "tools": [
            {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]});
        let without = json!({"model": "m", "messages": []});
        let a = ceiling(Endpoint::ChatCompletions, with_tools, "gpt-4o").unwrap();
        let b = ceiling(Endpoint::ChatCompletions, without, "gpt-4o").unwrap();
        assert!(a.tokens > b.tokens + TOOLS_PROMPT_TOKENS + TOOL_FRAMING_TOKENS);
        let ids = json!({"model": "m", "prompt": [[1, 2, 3], [4, 5]]});
        let c = ceiling(Endpoint::Completions, ids, "gpt-3.5-turbo-instruct").unwrap();
        assert_eq!(c.tokens, 5 + REQUEST_FRAMING_TOKENS);
        let bad = json!({"model": "m", "input": [{"x": 1}]});
        assert!(ceiling(Endpoint::Embeddings, bad, "text-embedding-3-small").is_err());
    }
}
