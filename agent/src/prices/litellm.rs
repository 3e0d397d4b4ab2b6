//! Reading LiteLLM's price map (`model_prices_and_context_window.json`) into [`ModelPrice`]s,
//! and the same price fields as LiteLLM's proxy config carries them per deployment.
//!
//! The file is a JSON object keyed by model name; of each entry we read `mode`,
//! `litellm_provider`, `max_output_tokens` (else `max_tokens`) and every price the gateway
//! charges by ([`read_price_fields`]: the per-token and per-unit costs, the
//! `search_context_cost_per_query` object, and the long-context keys `*_above_<N>[k]_tokens`);
//! the rest is ignored. The key `sample_spec`
//! documents the format and is skipped.
//!
//! Guarantees:
//! - Bounded: a file over [`PRICE_FILE_BYTES_MAX`] bytes or with more than [`PRICE_MODELS_MAX`]
//!   entries is refused before any entry is read; model names are at most
//!   [`MODEL_NAME_LEN_MAX`](super::MODEL_NAME_LEN_MAX) characters.
//! - LiteLLM's map as it is: a whole number written as a float (`"max_output_tokens":
//!   2000000.0`) is that integer. An entry that still cannot be read is skipped and reported
//!   (its name and why), never aborting the file; `strict` parsing refuses the whole file
//!   instead, naming the entry and the field, so an import stores all of it or nothing.
//! - Skipped, counted, not errors: entries of other modes (image generation, audio, rerank,
//!   moderation, ..., or no mode at all), and chat / completion / embedding / responses entries
//!   that give no input price, no provider, or (except embeddings) no output price. An
//!   embedding without an output price costs 0 per output token.
//! - Exact prices, never a float on the way. serde_json (without its `arbitrary_precision`
//!   feature, which would change every number in the workspace) reads a JSON number as an f64,
//!   and by default not even correctly rounded (`1e-28` comes back as `1.0000000000000001e-28`).
//!   So a document is parsed twice ([`parse_exact`]): once as is, for its structure, its types
//!   and serde_json's error positions; once with every number token turned into a string of its
//!   exact text ([`quote_numbers`]), from which a price is read as a decimal, exponent included
//!   (`1.5e-07` → `0.00000015`). A price is the file's number digit for digit, or an error if it
//!   needs more than the 28 digits a `Decimal` holds.
//! - Quality scores are merged here, at parse time: an imported model gets the built-in table's
//!   `quality_score` for the same model family (see `builtin::quality_score`), else `None`. The
//!   import stores them, so a table reads back as it was imported whatever a later binary's
//!   built-in scores say.

use rust_decimal::Decimal;
use serde_json::{Map, Value};

use super::{
    MODEL_NAME_LEN_MAX, ModelMode, ModelPrice, PRICE_TIERS_MAX, PROVIDER_LEN_MAX, PriceDims,
    PriceTier, SearchPrices, USD_PER_TOKEN_MAX, USD_PER_UNIT_MAX, builtin,
};

/// Largest price file read (LiteLLM's map is about 1.4 MB in 1.82.6).
pub const PRICE_FILE_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Most entries in a price file (LiteLLM's map has about 2,600).
pub const PRICE_MODELS_MAX: usize = 20_000;
/// The key that documents LiteLLM's format instead of pricing a model.
const SAMPLE_SPEC: &str = "sample_spec";
/// Characters of a name or value quoted in an error message.
const SHOWN_CHARS_MAX: usize = 80;
/// Largest decimal scale `Decimal` holds.
const DECIMAL_SCALE_MAX: i64 = 28;
/// Unreadable entries named in an import's report (the count is always exact).
pub const SKIPPED_NAMED_MAX: usize = 100;

/// What a price file held: the models kept, and how many entries were skipped and why.
#[derive(Debug, Clone, PartialEq)]
pub struct LiteLlmImport {
    /// The models with prices, in model-name order.
    pub models: Vec<ModelPrice>,
    /// Entries of other modes (image generation, audio, rerank, ...) or with no mode.
    pub skipped_other_modes: usize,
    /// Entries without an input price, a provider, or (except embeddings) an output price.
    pub skipped_unpriced: usize,
    /// Entries that could not be read, in name order (each with why).
    pub skipped_unreadable: Vec<SkippedEntry>,
}

/// An entry left out of an import because it could not be read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SkippedEntry {
    pub model: String,
    pub why: String,
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
        field: String,
        why: String,
    },
    #[error("the price file has no chat, completion, embedding or responses model with prices")]
    NoModels,
}

impl PriceImportError {
    fn field(model: &str, field: &str, why: impl Into<String>) -> PriceImportError {
        PriceImportError::BadField {
            model: model.to_owned(),
            field: field.to_owned(),
            why: why.into(),
        }
    }
}

/// The models of a LiteLLM price map, unreadable entries skipped (see [`parse_litellm_report`]).
pub fn parse_litellm(json: &[u8]) -> Result<Vec<ModelPrice>, PriceImportError> {
    parse_litellm_report(json, false).map(|report| report.models)
}

/// `json` parsed twice: as is, and with every number as the string of its exact text (see the
/// module doc). Both have the same keys in the same places.
pub fn parse_exact(json: &[u8]) -> Result<(Value, Value), String> {
    let value: Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    // Parsing the quoted form cannot fail where the original parsed.
    let quoted: Value = serde_json::from_slice(&quote_numbers(json)).map_err(|e| e.to_string())?;
    Ok((value, quoted))
}

/// Reads a LiteLLM price map: the models kept and the entries skipped. With `strict`, an entry
/// that cannot be read fails the whole file instead of being skipped.
pub fn parse_litellm_report(json: &[u8], strict: bool) -> Result<LiteLlmImport, PriceImportError> {
    let bytes = u64::try_from(json.len()).unwrap_or(u64::MAX);
    if bytes > PRICE_FILE_BYTES_MAX {
        return Err(PriceImportError::TooLarge {
            bytes,
            max: PRICE_FILE_BYTES_MAX,
        });
    }
    let (value, quoted) = parse_exact(json).map_err(PriceImportError::NotJson)?;
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
    let texts = quoted.as_object();
    let mut report = LiteLlmImport {
        models: Vec::new(),
        skipped_other_modes: 0,
        skipped_unpriced: 0,
        skipped_unreadable: Vec::new(),
    };
    let mut first_error = None;
    for (name, entry) in &entries {
        if name == SAMPLE_SPEC {
            continue;
        }
        let entry_texts = texts.and_then(|t| t.get(name)).and_then(Value::as_object);
        match read_entry(name, entry, entry_texts) {
            Ok(Entry::Priced(price)) => report.models.push(*price),
            Ok(Entry::OtherMode) => report.skipped_other_modes += 1,
            Ok(Entry::Unpriced) => report.skipped_unpriced += 1,
            Err(e) if strict => return Err(e),
            Err(e) => {
                report.skipped_unreadable.push(SkippedEntry {
                    model: shown(name),
                    why: e.to_string(),
                });
                first_error.get_or_insert(e);
            }
        }
    }
    if report.models.is_empty() {
        // Nothing to store: say why the first entry that could have been was not.
        return Err(first_error.unwrap_or(PriceImportError::NoModels));
    }
    // serde_json's map is sorted unless a dependency turns on `preserve_order`: sort anyway.
    report.models.sort_by(|a, b| a.model.cmp(&b.model));
    report
        .skipped_unreadable
        .sort_by(|a, b| a.model.cmp(&b.model));
    Ok(report)
}

/// What one entry turned out to be.
enum Entry {
    Priced(Box<ModelPrice>),
    OtherMode,
    Unpriced,
}

/// The price fields of one object (a price-map entry, or a deployment's `litellm_params`):
/// each `None` where the object gives none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceFields {
    pub input: Option<Decimal>,
    pub output: Option<Decimal>,
    pub dims: PriceDims,
    pub max_output_tokens: Option<u32>,
}

impl PriceFields {
    /// Whether the object names any price at all.
    pub fn is_priced(&self) -> bool {
        self.input.is_some() || self.output.is_some() || !self.dims.is_empty()
    }

    /// `base` with every price these fields give put in its place (a deployment's own prices
    /// win over the price table's, field by field, as in LiteLLM).
    pub fn over(&self, base: &ModelPrice) -> ModelPrice {
        let mut price = base.clone();
        if let Some(p) = self.input {
            price.input_usd_per_token = p;
        }
        if let Some(p) = self.output {
            price.output_usd_per_token = p;
        }
        let (d, o) = (&mut price.dims, &self.dims);
        let pick = |own: Option<Decimal>, base: Option<Decimal>| own.or(base);
        d.cache_read_input = pick(o.cache_read_input, d.cache_read_input);
        d.cache_creation_input = pick(o.cache_creation_input, d.cache_creation_input);
        d.cache_creation_input_1h = pick(o.cache_creation_input_1h, d.cache_creation_input_1h);
        d.input_audio = pick(o.input_audio, d.input_audio);
        d.input_image = pick(o.input_image, d.input_image);
        d.output_audio = pick(o.output_audio, d.output_audio);
        d.output_reasoning = pick(o.output_reasoning, d.output_reasoning);
        d.output_image = pick(o.output_image, d.output_image);
        d.per_image = pick(o.per_image, d.per_image);
        d.per_request = pick(o.per_request, d.per_request);
        d.search = o.search.or(d.search);
        if !o.tiers.is_empty() {
            d.tiers = o.tiers.clone();
        }
        if self.max_output_tokens.is_some() {
            price.max_output_tokens = self.max_output_tokens;
        }
        price
    }
}

/// Reads the price fields of `fields` (`texts`: the same object from the number-quoted parse).
/// `model` names the object in errors.
pub fn read_price_fields(
    fields: &Map<String, Value>,
    texts: Option<&Map<String, Value>>,
    model: &str,
) -> Result<PriceFields, PriceImportError> {
    let token = |field: &str| price(fields, texts, model, field, USD_PER_TOKEN_MAX);
    let unit = |field: &str| price(fields, texts, model, field, USD_PER_UNIT_MAX);
    let dims = PriceDims {
        cache_read_input: token("cache_read_input_token_cost")?,
        cache_creation_input: token("cache_creation_input_token_cost")?,
        cache_creation_input_1h: token("cache_creation_input_token_cost_above_1hr")?,
        input_audio: token("input_cost_per_audio_token")?,
        input_image: token("input_cost_per_image_token")?,
        output_audio: token("output_cost_per_audio_token")?,
        output_reasoning: token("output_cost_per_reasoning_token")?,
        output_image: token("output_cost_per_image_token")?,
        per_image: unit("input_cost_per_image")?,
        per_request: unit("input_cost_per_request")?,
        search: search_prices(fields, texts, model)?,
        tiers: tiers(fields, texts, model)?,
    };
    let max_output_tokens = match token_limit(fields, model, "max_output_tokens")? {
        Some(limit) => Some(limit),
        None => token_limit(fields, model, "max_tokens")?,
    };
    Ok(PriceFields {
        input: token("input_cost_per_token")?,
        output: token("output_cost_per_token")?,
        dims,
        max_output_tokens,
    })
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
            return Err(PriceImportError::field(
                &model,
                "mode",
                format!("must be a string, not {}", describe(other)),
            ));
        }
    };
    let read = read_price_fields(fields, texts, &model)?;
    let provider = provider(fields, &model)?;
    let output = match (read.output, mode) {
        (Some(price), _) => Some(price),
        (None, ModelMode::Embedding) => Some(Decimal::ZERO),
        (None, _) => None,
    };
    let (Some(input), Some(output), Some(provider)) = (read.input, output, provider) else {
        return Ok(Entry::Unpriced);
    };
    Ok(Entry::Priced(Box::new(ModelPrice {
        model: name.to_owned(),
        provider,
        mode,
        input_usd_per_token: input,
        output_usd_per_token: output,
        max_output_tokens: read.max_output_tokens,
        quality_score: builtin::quality_score(name),
        dims: read.dims,
    })))
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

/// One number read exactly: `value` must be a JSON number, `text` its quoted form.
fn exact_number(value: &Value, text: Option<&Value>) -> Result<(Decimal, String), String> {
    match value {
        Value::Number(_) => {}
        other => return Err(format!("must be a number, not {}", describe(other))),
    }
    let text = text
        .and_then(Value::as_str)
        .ok_or_else(|| "could not be read as written".to_owned())?;
    let value = exact_decimal(text)
        .ok_or_else(|| format!("{text} cannot be held exactly as a decimal price"))?;
    Ok((value, text.to_owned()))
}

/// A price field: absent or null is `None`; a number must be a non-negative USD amount no larger
/// than `max`, read exactly from its text in `texts` (see the module doc).
fn price(
    fields: &Map<String, Value>,
    texts: Option<&Map<String, Value>>,
    model: &str,
    field: &str,
    max: Decimal,
) -> Result<Option<Decimal>, PriceImportError> {
    let value = match fields.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    checked_price(value, texts.and_then(|t| t.get(field)), max)
        .map(Some)
        .map_err(|why| PriceImportError::field(model, field, why))
}

fn checked_price(value: &Value, text: Option<&Value>, max: Decimal) -> Result<Decimal, String> {
    let (value, text) = exact_number(value, text)?;
    if value.is_sign_negative() && !value.is_zero() {
        return Err(format!("is negative ({text})"));
    }
    if value > max {
        let hint = if max == USD_PER_TOKEN_MAX {
            " (is it a price per million tokens?)"
        } else {
            ""
        };
        return Err(format!("is {text} USD, more than the limit of {max}{hint}"));
    }
    Ok(value.abs().normalize())
}

/// `search_context_cost_per_query`: an object of `search_context_size_low`, `_medium`,
/// `_high` (a missing size costs what LiteLLM charges for it: nothing).
fn search_prices(
    fields: &Map<String, Value>,
    texts: Option<&Map<String, Value>>,
    model: &str,
) -> Result<Option<SearchPrices>, PriceImportError> {
    const FIELD: &str = "search_context_cost_per_query";
    let object = match fields.get(FIELD) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(PriceImportError::field(
                model,
                FIELD,
                format!("must be an object, not {}", describe(other)),
            ));
        }
    };
    let texts = texts.and_then(|t| t.get(FIELD)).and_then(Value::as_object);
    let size = |name: &str| -> Result<Decimal, PriceImportError> {
        match object.get(name) {
            None | Some(Value::Null) => Ok(Decimal::ZERO),
            Some(v) => checked_price(v, texts.and_then(|t| t.get(name)), USD_PER_UNIT_MAX)
                .map_err(|why| PriceImportError::field(model, &format!("{FIELD}.{name}"), why)),
        }
    };
    Ok(Some(SearchPrices {
        low: size("search_context_size_low")?,
        medium: size("search_context_size_medium")?,
        high: size("search_context_size_high")?,
    }))
}

/// The long-context tiers: one per `input_cost_per_token_above_<N>[k]_tokens` key with a price,
/// with the output and cache prices of the same threshold; ascending by threshold.
fn tiers(
    fields: &Map<String, Value>,
    texts: Option<&Map<String, Value>>,
    model: &str,
) -> Result<Vec<PriceTier>, PriceImportError> {
    const PREFIX: &str = "input_cost_per_token_above_";
    let mut tiers = Vec::new();
    for key in fields.keys() {
        let Some(threshold) = key
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.strip_suffix("_tokens"))
        else {
            continue;
        };
        let Some(above_tokens) = threshold_tokens(threshold) else {
            // A service-tier variant (`…_tokens_priority`) or another spelling: not a tier.
            continue;
        };
        let token = |field: String| price(fields, texts, model, &field, USD_PER_TOKEN_MAX);
        let Some(input) = token(key.clone())? else {
            continue;
        };
        tiers.push(PriceTier {
            above_tokens,
            input,
            output: token(format!("output_cost_per_token_above_{threshold}_tokens"))?,
            cache_read_input: token(format!(
                "cache_read_input_token_cost_above_{threshold}_tokens"
            ))?,
            cache_creation_input: token(format!(
                "cache_creation_input_token_cost_above_{threshold}_tokens"
            ))?,
            cache_creation_input_1h: token(format!(
                "cache_creation_input_token_cost_above_1hr_above_{threshold}_tokens"
            ))?,
        });
    }
    if tiers.len() > PRICE_TIERS_MAX {
        return Err(PriceImportError::field(
            model,
            PREFIX,
            format!(
                "{} long-context tiers, more than {PRICE_TIERS_MAX}",
                tiers.len()
            ),
        ));
    }
    tiers.sort_by_key(|t| t.above_tokens);
    tiers.dedup_by_key(|t| t.above_tokens);
    Ok(tiers)
}

/// `200k` → 200,000; `128` → 128; anything else (`200k_tokens_priority`) → `None`.
fn threshold_tokens(text: &str) -> Option<u64> {
    let (digits, scale) = match text.strip_suffix('k') {
        Some(digits) => (digits, 1_000),
        None => (text, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(scale)
}

/// `litellm_provider`, normalized: absent or null is `None`.
fn provider(fields: &Map<String, Value>, model: &str) -> Result<Option<String>, PriceImportError> {
    let bad = |why: String| PriceImportError::field(model, "litellm_provider", why);
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
        "openai" | "text-completion-openai" | "chatgpt" => "openai",
        "anthropic" | "anthropic_text" => "anthropic",
        "openrouter" => "openrouter",
        "gemini" | "google" => "google",
        p if p.starts_with("vertex_ai") => "google",
        "cohere" | "cohere_chat" => "cohere",
        "together_ai" | "together" => "together",
        "deepinfra" => "deepinfra",
        "anyscale" => "anyscale",
        "mistral" | "codestral" | "text-completion-codestral" => "mistral",
        "xai" => "xai",
        other => other,
    }
}

/// A token limit: absent or null is `None`; else a whole number from 0 to `u32::MAX`, written
/// as an integer or as a float with nothing after the point (`2000000.0`, as LiteLLM's map does).
fn token_limit(
    fields: &Map<String, Value>,
    model: &str,
    field: &'static str,
) -> Result<Option<u32>, PriceImportError> {
    let whole = |n: &serde_json::Number| -> Option<u32> {
        if let Some(v) = n.as_u64() {
            return u32::try_from(v).ok();
        }
        let f = n.as_f64()?;
        // Exact: a float with no fraction in u32's range converts without loss.
        (f.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&f)).then_some(f as u32)
    };
    match fields.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if whole(n).is_some() => Ok(whole(n)),
        Some(other) => Err(PriceImportError::field(
            model,
            field,
            format!(
                "must be a whole number from 0 to {}, not {}",
                u32::MAX,
                describe(other)
            ),
        )),
    }
}

/// The exact decimal a JSON number's text denotes, exponent included (`1.5e-07`, `2E3`); `None`
/// if it has more digits or a smaller or larger magnitude than `Decimal` holds exactly.
pub fn exact_decimal(text: &str) -> Option<Decimal> {
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
    use crate::prices::PriceTier;

    fn d(text: &str) -> Decimal {
        Decimal::from_str_exact(text).unwrap()
    }

    fn parse(json: &str) -> Result<LiteLlmImport, PriceImportError> {
        parse_litellm_report(json.as_bytes(), true)
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
                dims: PriceDims::default(),
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
                "no chat, completion, embedding or responses model with prices",
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
                "entry \"m1\": input_cost_per_token is 2.5 USD, more than the limit of 1 (is it a price per million tokens?)",
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

    /// What LiteLLM 1.82.6's own map does that the first importer refused: whole numbers as
    /// floats (`xai/grok-4-fast-reasoning` has `"max_output_tokens": 2000000.0`).
    #[test]
    fn whole_numbers_written_as_floats_are_integers() {
        let json = r#"{"xai/grok-4-fast-reasoning": {"litellm_provider": "xai", "mode": "chat",
            "input_cost_per_token": 2e-07, "output_cost_per_token": 5e-07,
            "max_input_tokens": 2000000.0, "max_output_tokens": 2000000.0, "max_tokens": 2000000.0}}"#;
        let models = parse(json).unwrap().models;
        assert_eq!(models[0].max_output_tokens, Some(2_000_000));
        assert_eq!(models[0].provider, "xai");
        for bad in ["1.5", "-1.0", "5000000000.0"] {
            let json = format!(
                r#"{{"m": {{"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1e-6,
                    "output_cost_per_token": 1e-6, "max_output_tokens": {bad}}}}}"#
            );
            assert!(
                err(&json).contains("max_output_tokens must be a whole number"),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_unreadable_entry_is_skipped_and_named_unless_strict() {
        let json = r#"{
            "good": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1e-6,
                     "output_cost_per_token": 2e-6},
            "bad-price": {"litellm_provider": "openai", "mode": "chat",
                          "input_cost_per_token": "cheap", "output_cost_per_token": 2e-6},
            "bad-limit": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1e-6,
                          "output_cost_per_token": 2e-6, "max_tokens": 1.5},
            "not-an-object": 7
        }"#;
        let report = parse_litellm_report(json.as_bytes(), false).unwrap();
        assert_eq!(report.models.len(), 1);
        assert_eq!(report.models[0].model, "good");
        let skipped: Vec<(&str, &str)> = report
            .skipped_unreadable
            .iter()
            .map(|s| (s.model.as_str(), s.why.as_str()))
            .collect();
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert_eq!(skipped[0].0, "\"bad-limit\"");
        assert!(
            skipped[0].1.contains("max_tokens must be a whole number"),
            "{skipped:?}"
        );
        assert!(
            skipped[1]
                .1
                .contains("input_cost_per_token must be a number"),
            "{skipped:?}"
        );
        assert!(
            skipped[2].1.contains("must be a JSON object"),
            "{skipped:?}"
        );
        // Strict: the first bad entry refuses the whole file, naming it.
        let strict = parse_litellm_report(json.as_bytes(), true)
            .unwrap_err()
            .to_string();
        assert!(strict.starts_with("entry \"bad-limit\""), "{strict}");
    }

    #[test]
    fn every_price_dimension_is_read_exactly() {
        let json = r#"{"claude-sonnet-4-20250514": {
            "litellm_provider": "anthropic", "mode": "chat", "max_output_tokens": 64000,
            "input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
            "cache_read_input_token_cost": 3e-07, "cache_creation_input_token_cost": 3.75e-06,
            "cache_creation_input_token_cost_above_1hr": 6e-06,
            "input_cost_per_token_above_200k_tokens": 6e-06,
            "output_cost_per_token_above_200k_tokens": 2.25e-05,
            "cache_read_input_token_cost_above_200k_tokens": 6e-07,
            "cache_creation_input_token_cost_above_200k_tokens": 7.5e-06,
            "input_cost_per_token_above_200k_tokens_priority": 9e-06,
            "input_cost_per_token_priority": 5e-06,
            "search_context_cost_per_query": {"search_context_size_high": 0.01,
                "search_context_size_low": 0.01, "search_context_size_medium": 0.01}},
          "gpt-4o-audio-preview": {"litellm_provider": "openai", "mode": "chat",
            "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
            "input_cost_per_audio_token": 4e-05, "output_cost_per_audio_token": 8e-05},
          "o3": {"litellm_provider": "openai", "mode": "responses", "input_cost_per_token": 2e-06,
            "output_cost_per_token": 8e-06, "output_cost_per_reasoning_token": 8e-06,
            "input_cost_per_request": 0.005, "input_cost_per_image": 0.0025}
        }"#;
        let report = parse(json).unwrap();
        let get = |name: &str| report.models.iter().find(|m| m.model == name).unwrap();
        let sonnet = &get("claude-sonnet-4-20250514").dims;
        assert_eq!(sonnet.cache_read_input, Some(d("0.0000003")));
        assert_eq!(sonnet.cache_creation_input, Some(d("0.00000375")));
        assert_eq!(sonnet.cache_creation_input_1h, Some(d("0.000006")));
        assert_eq!(
            sonnet.tiers,
            vec![PriceTier {
                above_tokens: 200_000,
                input: d("0.000006"),
                output: Some(d("0.0000225")),
                cache_read_input: Some(d("0.0000006")),
                cache_creation_input: Some(d("0.0000075")),
                cache_creation_input_1h: None,
            }],
            "the _priority variant is not a tier"
        );
        assert_eq!(sonnet.search.unwrap().medium, d("0.01"));
        let audio = &get("gpt-4o-audio-preview").dims;
        assert_eq!(audio.input_audio, Some(d("0.00004")));
        assert_eq!(audio.output_audio, Some(d("0.00008")));
        let o3 = get("o3");
        assert_eq!(o3.mode, ModelMode::Responses);
        assert_eq!(o3.dims.output_reasoning, Some(d("0.000008")));
        assert_eq!(o3.dims.per_request, Some(d("0.005")));
        assert_eq!(o3.dims.per_image, Some(d("0.0025")));
        assert_eq!(threshold_tokens("128"), Some(128));
        assert_eq!(threshold_tokens("1k"), Some(1000));
        assert_eq!(threshold_tokens("200k_tokens_priority"), None);
        assert_eq!(threshold_tokens("k"), None);
    }

    #[test]
    fn a_deployments_own_prices_win_field_by_field() {
        let (value, texts) = parse_exact(
            br#"{"input_cost_per_token": 1e-06, "cache_read_input_token_cost": 1e-07,
                 "model": "openai/gpt-4o", "api_base": "http://x"}"#,
        )
        .unwrap();
        let own =
            read_price_fields(value.as_object().unwrap(), texts.as_object(), "house").unwrap();
        assert!(own.is_priced());
        let base = crate::prices::PriceTable::builtin()
            .get("gpt-4o")
            .unwrap()
            .clone();
        let merged = own.over(&base);
        assert_eq!(merged.input_usd_per_token, d("0.000001"));
        assert_eq!(merged.output_usd_per_token, base.output_usd_per_token);
        assert_eq!(merged.dims.cache_read_input, Some(d("0.0000001")));
        let (none, _) = parse_exact(br#"{"model": "x"}"#).unwrap();
        assert!(
            !read_price_fields(none.as_object().unwrap(), None, "x")
                .unwrap()
                .is_priced()
        );
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
