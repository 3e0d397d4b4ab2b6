//! Reading LiteLLM's price map (`model_prices_and_context_window.json`) into [`ModelPrice`]s.
//!
//! The file is a JSON object keyed by model name; each value is an object of which we read
//! `input_cost_per_token`, `output_cost_per_token`, `litellm_provider`, `mode` and
//! `max_output_tokens` (else `max_tokens`), and ignore the rest. The key `sample_spec` documents
//! the format and is skipped.
//!
//! Guarantees:
//! - Bounded: a file over [`PRICE_FILE_BYTES_MAX`] bytes or with more than [`PRICE_MODELS_MAX`]
//!   entries is refused before any entry is read; model names are at most
//!   [`MODEL_NAME_LEN_MAX`](super::MODEL_NAME_LEN_MAX) characters.
//! - All or nothing: any malformed entry fails the whole parse with an error naming the entry
//!   and the field, so an import never stores half a file.
//! - Skipped, counted, not errors: entries of other modes (image generation, audio, rerank,
//!   moderation, ..., or no mode at all), and chat / completion / embedding entries that give no
//!   input price, no provider, or (chat and completion) no output price. An embedding without an
//!   output price costs 0 per output token.
//! - Exact prices, never a float on the way. serde_json (without its `arbitrary_precision`
//!   feature, which would change every number in the workspace) reads a JSON number as an f64,
//!   and by default not even correctly rounded (`1e-28` comes back as `1.0000000000000001e-28`).
//!   So the file is parsed twice: once as is, for its structure, its types and serde_json's
//!   error positions; once with every number token turned into a string of its exact text
//!   ([`quote_numbers`]), from which a price is read as a decimal, exponent included
//!   (`1.5e-07` → `0.00000015`). A price is the file's number digit for digit, or an error if
//!   it needs more than the 28 digits a `Decimal` holds.
//! - Quality scores are merged here, at parse time: an imported model gets the built-in table's
//!   `quality_score` for the same model name (exact match), else `None`. The import stores them,
//!   so a table reads back as it was imported whatever a later binary's built-in scores say.

use rust_decimal::Decimal;
use serde_json::{Map, Value};

use super::{
    MODEL_NAME_LEN_MAX, ModelMode, ModelPrice, PROVIDER_LEN_MAX, USD_PER_TOKEN_MAX, builtin,
};

/// Largest price file read (LiteLLM's map is about 1.6 MB in late 2025).
pub const PRICE_FILE_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Most entries in a price file (LiteLLM's map has about 2,500).
pub const PRICE_MODELS_MAX: usize = 20_000;
/// The key that documents LiteLLM's format instead of pricing a model.
const SAMPLE_SPEC: &str = "sample_spec";
/// Characters of a name or value quoted in an error message.
const SHOWN_CHARS_MAX: usize = 80;
/// Largest decimal scale `Decimal` holds.
const DECIMAL_SCALE_MAX: i64 = 28;

/// What a price file held: the models kept, and how many entries were skipped and why.
#[derive(Debug, Clone, PartialEq)]
pub struct LiteLlmImport {
    /// The chat, completion and embedding models with prices, in model-name order.
    pub models: Vec<ModelPrice>,
    /// Entries of other modes (image generation, audio, rerank, ...) or with no mode.
    pub skipped_other_modes: usize,
    /// Chat, completion or embedding entries without an input price, a provider, or (chat and
    /// completion) an output price.
    pub skipped_unpriced: usize,
}

/// Why a price file was refused. Each message names the entry and field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceImportError {
    #[error("the price file is {bytes} bytes, more than the limit of {max} bytes")]
    TooLarge { bytes: u64, max: u64 },
    #[error("the price file is not valid JSON: {0}")]
    NotJson(String),
    #[error("the price file must be a JSON object keyed by model name, not {found}")]
    NotAnObject { found: &'static str },
    #[error("the price file has {count} entries, more than the limit of {max}")]
    TooManyModels { count: usize, max: usize },
    #[error("entry {model}: must be a JSON object, not {found}")]
    EntryNotObject { model: String, found: &'static str },
    #[error("entry {model}: invalid model name: {why}")]
    BadModelName { model: String, why: String },
    #[error("entry {model}: {field} {why}")]
    BadField {
        model: String,
        field: &'static str,
        why: String,
    },
    #[error("the price file has no chat, completion or embedding model with prices")]
    NoModels,
}

/// The chat, completion and embedding models of a LiteLLM price map, in model-name order
/// (see [`parse_litellm_report`] for what is skipped and why).
pub fn parse_litellm(json: &[u8]) -> Result<Vec<ModelPrice>, PriceImportError> {
    parse_litellm_report(json).map(|report| report.models)
}

/// Reads a LiteLLM price map: the models kept and the counts of entries skipped.
pub fn parse_litellm_report(json: &[u8]) -> Result<LiteLlmImport, PriceImportError> {
    let bytes = u64::try_from(json.len()).unwrap_or(u64::MAX);
    if bytes > PRICE_FILE_BYTES_MAX {
        return Err(PriceImportError::TooLarge {
            bytes,
            max: PRICE_FILE_BYTES_MAX,
        });
    }
    let value: Value =
        serde_json::from_slice(json).map_err(|e| PriceImportError::NotJson(e.to_string()))?;
    let Value::Object(entries) = value else {
        return Err(PriceImportError::NotAnObject {
            found: kind(&value),
        });
    };
    let count = entries.len() - usize::from(entries.contains_key(SAMPLE_SPEC));
    if count > PRICE_MODELS_MAX {
        return Err(PriceImportError::TooManyModels {
            count,
            max: PRICE_MODELS_MAX,
        });
    }
    // The same document with each number as the string of its text: parsing it cannot fail
    // where the original parsed, and it has the same keys in the same places.
    let quoted: Value = serde_json::from_slice(&quote_numbers(json))
        .map_err(|e| PriceImportError::NotJson(e.to_string()))?;
    let texts = quoted.as_object();
    let mut report = LiteLlmImport {
        models: Vec::new(),
        skipped_other_modes: 0,
        skipped_unpriced: 0,
    };
    for (name, entry) in &entries {
        if name == SAMPLE_SPEC {
            continue;
        }
        let entry_texts = texts.and_then(|t| t.get(name)).and_then(Value::as_object);
        match read_entry(name, entry, entry_texts)? {
            Entry::Priced(price) => report.models.push(price),
            Entry::OtherMode => report.skipped_other_modes += 1,
            Entry::Unpriced => report.skipped_unpriced += 1,
        }
    }
    if report.models.is_empty() {
        return Err(PriceImportError::NoModels);
    }
    // serde_json's map is sorted unless a dependency turns on `preserve_order`: sort anyway.
    report.models.sort_by(|a, b| a.model.cmp(&b.model));
    Ok(report)
}

/// What one entry turned out to be.
enum Entry {
    Priced(ModelPrice),
    OtherMode,
    Unpriced,
}

/// One entry; `texts` is the same entry from the number-quoted parse.
fn read_entry(
    name: &str,
    entry: &Value,
    texts: Option<&Map<String, Value>>,
) -> Result<Entry, PriceImportError> {
    let model = shown(name);
    check_model_name(name, &model)?;
    let Value::Object(fields) = entry else {
        return Err(PriceImportError::EntryNotObject {
            model,
            found: kind(entry),
        });
    };
    let mode = match fields.get("mode") {
        None | Some(Value::Null) => return Ok(Entry::OtherMode),
        Some(Value::String(text)) => match text.parse::<ModelMode>() {
            Ok(mode) => mode,
            Err(_) => return Ok(Entry::OtherMode),
        },
        Some(other) => {
            return Err(PriceImportError::BadField {
                model,
                field: "mode",
                why: format!("must be a string, not {}", describe(other)),
            });
        }
    };
    let input = price(fields, texts, &model, "input_cost_per_token")?;
    let output = price(fields, texts, &model, "output_cost_per_token")?;
    let provider = provider(fields, &model)?;
    let max_output_tokens = match token_limit(fields, &model, "max_output_tokens")? {
        Some(limit) => Some(limit),
        None => token_limit(fields, &model, "max_tokens")?,
    };
    let output = match (output, mode) {
        (Some(price), _) => Some(price),
        (None, ModelMode::Embedding) => Some(Decimal::ZERO),
        (None, ModelMode::Chat | ModelMode::Completion) => None,
    };
    let (Some(input), Some(output), Some(provider)) = (input, output, provider) else {
        return Ok(Entry::Unpriced);
    };
    Ok(Entry::Priced(ModelPrice {
        model: name.to_owned(),
        provider,
        mode,
        input_usd_per_token: input,
        output_usd_per_token: output,
        max_output_tokens,
        quality_score: builtin::quality_score(name),
    }))
}

fn check_model_name(name: &str, model: &str) -> Result<(), PriceImportError> {
    let why = if name.trim().is_empty() {
        "it is empty".to_owned()
    } else if name.chars().count() > MODEL_NAME_LEN_MAX {
        format!("it is longer than {MODEL_NAME_LEN_MAX} characters")
    } else if let Some(c) = name.chars().find(|c| c.is_control()) {
        format!("it contains the control character {c:?}")
    } else {
        return Ok(());
    };
    Err(PriceImportError::BadModelName {
        model: model.to_owned(),
        why,
    })
}

/// A price field: absent or null is `None`; a number must be a non-negative USD per token no
/// larger than [`USD_PER_TOKEN_MAX`], read exactly from its text in `texts` (see the module doc).
fn price(
    fields: &Map<String, Value>,
    texts: Option<&Map<String, Value>>,
    model: &str,
    field: &'static str,
) -> Result<Option<Decimal>, PriceImportError> {
    let bad = |why: String| PriceImportError::BadField {
        model: model.to_owned(),
        field,
        why,
    };
    match fields.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(_)) => {}
        Some(other) => return Err(bad(format!("must be a number, not {}", describe(other)))),
    }
    let text = texts
        .and_then(|t| t.get(field))
        .and_then(Value::as_str)
        .ok_or_else(|| bad("could not be read as written".to_owned()))?;
    let value = exact_decimal(text)
        .ok_or_else(|| bad(format!("{text} cannot be held exactly as a decimal price")))?;
    if value.is_sign_negative() && !value.is_zero() {
        return Err(bad(format!("is negative ({text})")));
    }
    if value > USD_PER_TOKEN_MAX {
        return Err(bad(format!(
            "is {text} USD per token, more than the limit of {USD_PER_TOKEN_MAX} \
             (is it a price per million tokens?)"
        )));
    }
    Ok(Some(value.abs().normalize()))
}

/// `litellm_provider`, normalized: absent or null is `None`.
fn provider(fields: &Map<String, Value>, model: &str) -> Result<Option<String>, PriceImportError> {
    let bad = |why: String| PriceImportError::BadField {
        model: model.to_owned(),
        field: "litellm_provider",
        why,
    };
    let text = match fields.get("litellm_provider") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(text)) => text,
        Some(other) => return Err(bad(format!("must be a string, not {}", describe(other)))),
    };
    if text.trim().is_empty() || text.chars().count() > PROVIDER_LEN_MAX {
        return Err(bad(format!(
            "{} must be 1 to {PROVIDER_LEN_MAX} characters",
            shown(text)
        )));
    }
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(bad(format!("contains the control character {c:?}")));
    }
    Ok(Some(normalize_provider(text).to_owned()))
}

/// LiteLLM's provider name as one of tollgate's providers where it is one of them; else as is.
pub fn normalize_provider(litellm: &str) -> &str {
    match litellm {
        "openai" | "text-completion-openai" => "openai",
        "anthropic" => "anthropic",
        "openrouter" => "openrouter",
        "gemini" => "google",
        p if p.starts_with("vertex_ai") => "google",
        "cohere" | "cohere_chat" => "cohere",
        "together_ai" => "together",
        "deepinfra" => "deepinfra",
        "anyscale" => "anyscale",
        other => other,
    }
}

/// A token limit: absent or null is `None`; else a whole number from 0 to `u32::MAX`.
fn token_limit(
    fields: &Map<String, Value>,
    model: &str,
    field: &'static str,
) -> Result<Option<u32>, PriceImportError> {
    match fields.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_u64().is_some_and(|v| u32::try_from(v).is_ok()) => {
            Ok(n.as_u64().and_then(|v| u32::try_from(v).ok()))
        }
        Some(other) => Err(PriceImportError::BadField {
            model: model.to_owned(),
            field,
            why: format!(
                "must be a whole number from 0 to {}, not {}",
                u32::MAX,
                describe(other)
            ),
        }),
    }
}

/// The exact decimal a JSON number's text denotes, exponent included (`1.5e-07`, `2E3`); `None`
/// if it has more digits or a smaller or larger magnitude than `Decimal` holds exactly.
fn exact_decimal(text: &str) -> Option<Decimal> {
    let Some(at) = text.find(['e', 'E']) else {
        return Decimal::from_str_exact(text).ok();
    };
    let (base, exponent) = (&text[..at], &text[at + 1..]);
    let mut value = Decimal::from_str_exact(base).ok()?;
    let exponent: i64 = exponent.parse().ok()?;
    let scale = i64::from(value.scale()).checked_sub(exponent)?;
    if scale > DECIMAL_SCALE_MAX {
        // Trailing zeros of the base may make room ("10e-29"); otherwise too small to hold.
        value = value.normalize();
        let scale = i64::from(value.scale()).checked_sub(exponent)?;
        value.set_scale(u32::try_from(scale).ok()?).ok()?;
        return Some(value);
    }
    if scale >= 0 {
        value.set_scale(u32::try_from(scale).ok()?).ok()?;
        return Some(value);
    }
    // A positive exponent beyond the base's fraction: scale up by a power of ten.
    let up = u32::try_from(-scale).ok()?;
    if i64::from(up) > DECIMAL_SCALE_MAX {
        return None;
    }
    value.set_scale(0).ok()?;
    value.checked_mul(Decimal::from_i128_with_scale(10_i128.checked_pow(up)?, 0))
}

/// `json` (valid JSON) with every number token written as a JSON string of its exact text:
/// `{"a": 1.5e-07}` → `{"a": "1.5e-07"}`. Outside strings, only number tokens hold a digit or a
/// `-` (`true`, `false`, `null` hold neither), and a number token's characters are
/// `0-9 - + . e E`, none of which needs escaping in a string.
fn quote_numbers(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + json.len() / 8);
    let mut in_string = false;
    let mut i = 0;
    while let Some(&b) = json.get(i) {
        if in_string {
            out.push(b);
            match b {
                b'\\' => {
                    // The escaped character, whatever it is, cannot end the string.
                    if let Some(&next) = json.get(i + 1) {
                        out.push(next);
                        i += 1;
                    }
                }
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                out.push(b);
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while json
                    .get(i)
                    .is_some_and(|c| matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                {
                    i += 1;
                }
                out.push(b'"');
                out.extend_from_slice(json.get(start..i).unwrap_or_default());
                out.push(b'"');
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// A JSON value's kind, for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON value for a message: its kind, and its text if it is a short scalar.
fn describe(value: &Value) -> String {
    match value {
        Value::String(text) => format!("a string ({})", shown(text)),
        Value::Number(n) => format!("{n}"),
        Value::Bool(b) => format!("a boolean ({b})"),
        other => kind(other).to_owned(),
    }
}

/// `text` quoted for a one-line message, cut at [`SHOWN_CHARS_MAX`] characters.
fn shown(text: &str) -> String {
    if text.chars().count() <= SHOWN_CHARS_MAX {
        format!("{text:?}")
    } else {
        let cut: String = text.chars().take(SHOWN_CHARS_MAX).collect();
        format!("{cut:?}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        Decimal::from_str_exact(text).unwrap()
    }

    fn parse(json: &str) -> Result<LiteLlmImport, PriceImportError> {
        parse_litellm_report(json.as_bytes())
    }

    fn err(json: &str) -> String {
        parse(json).unwrap_err().to_string()
    }

    const SAMPLE: &str = r#"{
        "sample_spec": {"input_cost_per_token": 0.0, "litellm_provider": "one of ...",
                        "max_tokens": "LEGACY parameter", "mode": "one of: chat, embedding"},
        "gpt-4o-mini": {"input_cost_per_token": 1.5e-07, "output_cost_per_token": 6e-07,
                        "litellm_provider": "openai", "mode": "chat", "max_output_tokens": 16384,
                        "max_tokens": 16384, "supports_vision": true},
        "claude-x": {"input_cost_per_token": 0.000003, "output_cost_per_token": 0.000015,
                     "litellm_provider": "anthropic", "mode": "chat", "max_tokens": 8192},
        "vertex_ai/gemini-pro": {"input_cost_per_token": 1.25E-7, "output_cost_per_token": 3.75e-7,
                                 "litellm_provider": "vertex_ai-language-models", "mode": "chat"},
        "amazon.titan-embed": {"input_cost_per_token": 1e-07, "litellm_provider": "bedrock",
                               "mode": "embedding", "max_output_tokens": null},
        "dall-e-3": {"litellm_provider": "openai", "mode": "image_generation",
                     "output_cost_per_image": 0.04},
        "whisper-1": {"input_cost_per_second": 0.0001, "litellm_provider": "openai",
                      "mode": "audio_transcription"},
        "nomode": {"input_cost_per_token": 1e-06},
        "free-chat": {"litellm_provider": "openrouter", "mode": "chat"},
        "half-priced": {"input_cost_per_token": 1e-06, "litellm_provider": "together_ai",
                        "mode": "completion"},
        "gpt-3.5-turbo-instruct": {"input_cost_per_token": 0.0000015,
                                   "output_cost_per_token": 0.000002,
                                   "litellm_provider": "text-completion-openai",
                                   "mode": "completion", "max_tokens": 4096}
    }"#;

    #[test]
    fn a_price_map_reads_exactly_with_skips_counted() {
        let report = parse(SAMPLE).unwrap();
        let names: Vec<&str> = report.models.iter().map(|m| m.model.as_str()).collect();
        assert_eq!(
            names,
            [
                "amazon.titan-embed",
                "claude-x",
                "gpt-3.5-turbo-instruct",
                "gpt-4o-mini",
                "vertex_ai/gemini-pro"
            ]
        );
        assert_eq!(report.skipped_other_modes, 3, "image, audio, no mode");
        assert_eq!(report.skipped_unpriced, 2, "no prices; no output price");
        let get = |name: &str| report.models.iter().find(|m| m.model == name).unwrap();
        assert_eq!(
            get("gpt-4o-mini"),
            &ModelPrice {
                model: "gpt-4o-mini".into(),
                provider: "openai".into(),
                mode: ModelMode::Chat,
                input_usd_per_token: d("0.00000015"),
                output_usd_per_token: d("0.0000006"),
                max_output_tokens: Some(16_384),
                quality_score: Some(82),
            }
        );
        assert_eq!(
            get("gpt-4o-mini").input_usd_per_token.to_string(),
            "0.00000015"
        );
        let claude = get("claude-x");
        assert_eq!(claude.output_usd_per_token.to_string(), "0.000015");
        assert_eq!(
            claude.max_output_tokens,
            Some(8192),
            "max_tokens as fallback"
        );
        assert_eq!(claude.quality_score, None, "not in the built-in table");
        let gemini = get("vertex_ai/gemini-pro");
        assert_eq!(gemini.provider, "google");
        assert_eq!(gemini.input_usd_per_token.to_string(), "0.000000125");
        assert_eq!(gemini.output_usd_per_token.to_string(), "0.000000375");
        let embed = get("amazon.titan-embed");
        assert_eq!(
            embed.provider, "bedrock",
            "unknown providers are kept as named"
        );
        assert_eq!(embed.mode, ModelMode::Embedding);
        assert_eq!(embed.output_usd_per_token, Decimal::ZERO);
        assert_eq!(embed.max_output_tokens, None);
        let instruct = get("gpt-3.5-turbo-instruct");
        assert_eq!(
            (instruct.provider.as_str(), instruct.mode),
            ("openai", ModelMode::Completion)
        );
        assert_eq!(instruct.quality_score, Some(70));
        assert_eq!(parse_litellm(SAMPLE.as_bytes()).unwrap(), report.models);
    }

    #[test]
    fn numbers_read_exactly_in_every_notation() {
        for (text, exact) in [
            ("1.5e-07", "0.00000015"),
            ("1.5E-7", "0.00000015"),
            ("0.00000015", "0.00000015"),
            ("2.4414e-07", "0.00000024414"),
            ("5.46875e-07", "0.000000546875"),
            ("3e-6", "0.000003"),
            ("0", "0"),
            ("-0.0", "0"),
            ("1", "1"),
            ("125e-8", "0.00000125"),
            ("0.02e1", "0.2"),
            // serde_json's own f64 for these is off by one unit in the last place.
            ("1e-28", "0.0000000000000000000000000001"),
            ("1.4999999999999999e-07", "0.00000014999999999999999"),
        ] {
            let json = format!(
                r#"{{"m": {{"mode": "embedding", "litellm_provider": "openai", "input_cost_per_token": {text}}}}}"#
            );
            let models = parse_litellm(json.as_bytes()).unwrap();
            assert_eq!(models[0].input_usd_per_token, d(exact), "{text}");
            assert_eq!(models[0].input_usd_per_token.to_string(), exact, "{text}");
        }
        assert_eq!(exact_decimal("2.5e+2"), Some(d("250")));
        assert_eq!(exact_decimal("1.25E0"), Some(d("1.25")));
        assert_eq!(exact_decimal("1e-40"), None);
        assert_eq!(exact_decimal("1e40"), None);
        assert_eq!(exact_decimal("0.12345678901234567890123456789"), None);
        assert_eq!(exact_decimal("abc"), None);
        assert_eq!(exact_decimal("1e"), None);
    }

    #[test]
    fn quoting_numbers_leaves_strings_and_literals_alone() {
        let json = r#"{"a-1": [1, -2.5e-07, true, null, "x\"9", "\\", 3E+2], "b": {"c": 0}}"#;
        let quoted = String::from_utf8(quote_numbers(json.as_bytes())).unwrap();
        assert_eq!(
            quoted,
            r#"{"a-1": ["1", "-2.5e-07", true, null, "x\"9", "\\", "3E+2"], "b": {"c": "0"}}"#
        );
        let original: Value = serde_json::from_str(json).unwrap();
        let reparsed: Value = serde_json::from_str(&quoted).unwrap();
        assert_eq!(original["a-1"][4], reparsed["a-1"][4]);
        assert_eq!(original["a-1"][5], reparsed["a-1"][5]);
    }

    #[test]
    fn every_bad_file_is_refused_with_a_message_naming_the_problem() {
        let entry = |body: &str| {
            format!(r#"{{"m1": {{"mode": "chat", "litellm_provider": "openai", {body}}}}}"#)
        };
        let cases: Vec<(String, &str)> = vec![
            (
                "not json".into(),
                "the price file is not valid JSON: expected ident at line 1 column 2",
            ),
            (
                "[1, 2]".into(),
                "must be a JSON object keyed by model name, not an array",
            ),
            (
                "{}".into(),
                "no chat, completion or embedding model with prices",
            ),
            (
                r#"{"m1": 3}"#.into(),
                "entry \"m1\": must be a JSON object, not a number",
            ),
            (
                entry(r#""input_cost_per_token": -1e-06, "output_cost_per_token": 1e-06"#),
                "entry \"m1\": input_cost_per_token is negative (-1e-06)",
            ),
            (
                entry(r#""input_cost_per_token": 1e-06, "output_cost_per_token": "0.1""#),
                "entry \"m1\": output_cost_per_token must be a number, not a string (\"0.1\")",
            ),
            (
                entry(r#""input_cost_per_token": 2.5, "output_cost_per_token": 10"#),
                "entry \"m1\": input_cost_per_token is 2.5 USD per token, more than the limit of 1",
            ),
            (
                entry(r#""input_cost_per_token": 1e-40, "output_cost_per_token": 0"#),
                "entry \"m1\": input_cost_per_token 1e-40 cannot be held exactly",
            ),
            (
                entry(r#""input_cost_per_token": 1e-6, "max_output_tokens": 1.5"#),
                "entry \"m1\": max_output_tokens must be a whole number from 0 to 4294967295, not 1.5",
            ),
            (
                entry(r#""input_cost_per_token": 1e-6, "max_tokens": "many""#),
                "entry \"m1\": max_tokens must be a whole number",
            ),
            (
                r#"{"m1": {"mode": 7}}"#.into(),
                "entry \"m1\": mode must be a string, not 7",
            ),
            (
                r#"{"m1": {"mode": "chat", "litellm_provider": ["openai"]}}"#.into(),
                "entry \"m1\": litellm_provider must be a string, not an array",
            ),
            (
                r#"{"": {"mode": "chat"}}"#.into(),
                "entry \"\": invalid model name: it is empty",
            ),
            (
                format!(r#"{{"{}": {{}}}}"#, "x".repeat(201)),
                "invalid model name: it is longer than 200 characters",
            ),
            (
                r#"{"a\u0007b": {}}"#.into(),
                "invalid model name: it contains the control character '\\u{7}'",
            ),
        ];
        for (json, expected) in cases {
            let message = err(&json);
            assert!(
                message.contains(expected),
                "{json}\n  gave: {message}\n  want: {expected}"
            );
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn limits_are_enforced_before_reading_entries() {
        let big = vec![b' '; usize::try_from(PRICE_FILE_BYTES_MAX).unwrap() + 1];
        assert_eq!(
            parse_litellm(&big).unwrap_err(),
            PriceImportError::TooLarge {
                bytes: PRICE_FILE_BYTES_MAX + 1,
                max: PRICE_FILE_BYTES_MAX
            }
        );
        let mut many = serde_json::Map::new();
        for i in 0..=PRICE_MODELS_MAX {
            many.insert(format!("m{i}"), Value::Null);
        }
        let json = serde_json::to_vec(&Value::Object(many)).unwrap();
        assert_eq!(
            parse_litellm(&json).unwrap_err().to_string(),
            format!(
                "the price file has {} entries, more than the limit of {PRICE_MODELS_MAX}",
                PRICE_MODELS_MAX + 1
            )
        );
    }

    #[test]
    fn a_long_name_is_cut_in_messages() {
        let name = "y".repeat(500);
        let message = err(&format!(r#"{{"{name}": 1}}"#));
        assert!(message.len() < 200, "{message}");
        assert!(message.contains('…'), "{message}");
    }

    #[test]
    fn providers_normalize_to_tollgates_names() {
        for (litellm, ours) in [
            ("openai", "openai"),
            ("text-completion-openai", "openai"),
            ("anthropic", "anthropic"),
            ("openrouter", "openrouter"),
            ("gemini", "google"),
            ("vertex_ai", "google"),
            ("vertex_ai-language-models", "google"),
            ("vertex_ai-anthropic_models", "google"),
            ("cohere", "cohere"),
            ("cohere_chat", "cohere"),
            ("together_ai", "together"),
            ("deepinfra", "deepinfra"),
            ("anyscale", "anyscale"),
            ("bedrock", "bedrock"),
            ("mistral", "mistral"),
        ] {
            assert_eq!(normalize_provider(litellm), ours, "{litellm}");
        }
    }
}
