//! `tollgate prices`: the price table the gateway charges by — list, show, import LiteLLM's price
//! map, set a model's prices, alias a name, list versions, and make an earlier version active.
//!
//! Every change stores a new version (the newest is active; a running gateway picks it up within
//! two seconds), so a usage row's price table can always be read back. Prices on the command
//! line are USD per million tokens, as price lists quote them; fees are USD. `import FILE` reads
//! at most [`PRICE_FILE_BYTES_MAX`] bytes and parses the whole file before storing anything;
//! entries it cannot read are skipped and listed (`--strict`: refused, nothing stored). Any error
//! is one line and writes nothing.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use rust_decimal::Decimal;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Ctx, done, output, parse_choice};
use crate::cli::{PriceSetArgs, PricesCommand};
use crate::ledger::Ledger;
use crate::ledger::prices::{NewPriceVersion, PriceOrigin, content_sha256};
use crate::prices::{
    ModelMode, ModelPrice, PRICE_FILE_BYTES_MAX, PriceDims, PriceImportError, PriceTable,
    SkippedEntry, builtin, normalize_provider, parse_litellm_report, per_million,
};

pub fn run(ctx: &Ctx, cmd: PricesCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PricesCommand::List => list(ctx),
        PricesCommand::Import { file, strict } => import(ctx, &file, strict),
        PricesCommand::Show { model } => show(ctx, &model),
        PricesCommand::Set(args) => set(ctx, &args),
        PricesCommand::Alias { name, model } => alias(ctx, &name, &model),
        PricesCommand::Versions => versions(ctx),
        PricesCommand::Use { version } => use_version(ctx, &version),
    }
}

/// The active table: the newest stored version, else the built-in one; and which it is.
fn active(ledger: &Ledger) -> anyhow::Result<(PriceTable, &'static str)> {
    Ok(match ledger.price_table()? {
        Some(table) => (table, "stored"),
        None => (PriceTable::builtin(), "builtin"),
    })
}

/// One model as `prices list --json` and `prices show --json` print it: per token and per
/// million tokens, as strings, and every other dimension it carries.
#[derive(Debug, Serialize)]
struct PriceRow<'a> {
    model: &'a str,
    provider: &'a str,
    mode: ModelMode,
    input_usd_per_token: Decimal,
    output_usd_per_token: Decimal,
    input_usd_per_million: Decimal,
    output_usd_per_million: Decimal,
    max_output_tokens: Option<u32>,
    quality_score: Option<u8>,
    #[serde(skip_serializing_if = "PriceDims::is_empty")]
    dimensions: &'a PriceDims,
}

#[derive(Debug, Serialize)]
struct Listing<'a> {
    version: &'a str,
    /// "stored" (a version in the database) or "builtin".
    source: &'static str,
    models: Vec<PriceRow<'a>>,
    aliases: &'a BTreeMap<String, String>,
}

fn list(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ledger = ctx.ledger()?;
    let (table, source) = active(&ledger)?;
    let rows = table
        .models()
        .map(price_row)
        .collect::<anyhow::Result<Vec<_>>>()?;
    if ctx.json {
        return done(output::json(&Listing {
            version: &table.version,
            source,
            models: rows,
            aliases: table.aliases(),
        }));
    }
    output::line(&format!(
        "price table {} ({source}, {} models, {} aliases)",
        table.version,
        table.len(),
        table.aliases().len()
    ))?;
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.model.to_owned(),
                r.provider.to_owned(),
                r.mode.to_string(),
                r.input_usd_per_million.to_string(),
                r.output_usd_per_million.to_string(),
                output::or_dash(r.dimensions.cache_read_input.and_then(per_million)),
                output::or_dash(r.max_output_tokens),
                output::or_dash(r.quality_score),
            ]
        })
        .collect();
    done(output::table(
        &[
            "MODEL",
            "PROVIDER",
            "MODE",
            "USD/1M IN",
            "USD/1M OUT",
            "USD/1M CACHED",
            "MAX OUTPUT",
            "QUALITY",
        ],
        &cells,
    ))
}

fn price_row(m: &ModelPrice) -> anyhow::Result<PriceRow<'_>> {
    let million = |price: Decimal| {
        per_million(price).with_context(|| format!("the price of {:?} is out of range", m.model))
    };
    Ok(PriceRow {
        model: &m.model,
        provider: &m.provider,
        mode: m.mode,
        input_usd_per_token: m.input_usd_per_token.normalize(),
        output_usd_per_token: m.output_usd_per_token.normalize(),
        input_usd_per_million: million(m.input_usd_per_token)?,
        output_usd_per_million: million(m.output_usd_per_token)?,
        max_output_tokens: m.max_output_tokens,
        quality_score: m.quality_score,
        dimensions: &m.dims,
    })
}

fn show(ctx: &Ctx, name: &str) -> anyhow::Result<ExitCode> {
    let ledger = ctx.ledger()?;
    let (table, _) = active(&ledger)?;
    let price = table.resolve(name).ok_or_else(|| {
        anyhow!(
            "model {name:?} is not in price table {}; add it with `tollgate prices set` or \
             import LiteLLM's price map",
            table.version
        )
    })?;
    let row = price_row(price)?;
    if ctx.json {
        return done(output::json(&row));
    }
    let million = |p: Option<Decimal>| output::or_dash(p.and_then(per_million));
    let d = &price.dims;
    let mut pairs = vec![
        ("model", price.model.clone()),
        ("price table", table.version.clone()),
        ("provider", price.provider.clone()),
        ("mode", price.mode.to_string()),
        ("USD per 1M input", row.input_usd_per_million.to_string()),
        ("USD per 1M output", row.output_usd_per_million.to_string()),
        ("USD per 1M cached input", million(d.cache_read_input)),
        ("USD per 1M cache writes", million(d.cache_creation_input)),
        (
            "USD per 1M 1h cache writes",
            million(d.cache_creation_input_1h),
        ),
        ("USD per 1M audio input", million(d.input_audio)),
        ("USD per 1M image input", million(d.input_image)),
        ("USD per 1M audio output", million(d.output_audio)),
        ("USD per 1M reasoning", million(d.output_reasoning)),
        ("USD per image", output::or_dash(d.per_image)),
        ("USD per request", output::or_dash(d.per_request)),
        (
            "USD per search (low/medium/high)",
            d.search.map_or("-".to_owned(), |s| {
                format!("{}/{}/{}", s.low, s.medium, s.high)
            }),
        ),
        (
            "max output tokens",
            output::or_dash(price.max_output_tokens),
        ),
        ("quality score", output::or_dash(price.quality_score)),
    ];
    for tier in &d.tiers {
        pairs.push((
            "above tokens: USD per 1M in/out",
            format!(
                "{}: {}/{}",
                tier.above_tokens,
                million(Some(tier.input)),
                million(tier.output)
            ),
        ));
    }
    if price.model != name {
        pairs.insert(1, ("asked as", name.to_owned()));
    }
    done(output::fields(&pairs))
}

#[derive(Debug, Serialize)]
struct ImportReport {
    version: i64,
    unchanged: bool,
    models: u64,
    skipped_other_modes: usize,
    skipped_unpriced: usize,
    skipped_unreadable: usize,
    /// The first [`crate::prices::SKIPPED_NAMED_MAX`] of them, each with why.
    unreadable: Vec<SkippedEntry>,
    source: String,
    sha256: String,
    imported_at: String,
}

fn import(ctx: &Ctx, file: &Path, strict: bool) -> anyhow::Result<ExitCode> {
    let mut ledger = ctx.ledger()?;
    let shown = file.display();
    let bytes = read_bounded(file).with_context(|| format!("reading {shown}"))?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let parsed =
        parse_litellm_report(&bytes, strict).with_context(|| format!("importing {shown}"))?;
    let source = shown.to_string();
    let stored = ledger
        .import_prices(&source, &sha256, &parsed.models)
        .with_context(|| format!("importing {shown}"))?;
    let skipped = parsed.skipped_unreadable.len();
    let report = ImportReport {
        version: stored.version,
        unchanged: stored.unchanged,
        models: stored.model_count,
        skipped_other_modes: parsed.skipped_other_modes,
        skipped_unpriced: parsed.skipped_unpriced,
        skipped_unreadable: skipped,
        unreadable: parsed
            .skipped_unreadable
            .into_iter()
            .take(crate::prices::SKIPPED_NAMED_MAX)
            .collect(),
        source,
        sha256,
        imported_at: stored.imported_at,
    };
    if ctx.json {
        return done(output::json(&report));
    }
    let what = if report.unchanged {
        format!(
            "unchanged: price table version {} already holds this file",
            report.version
        )
    } else {
        format!("imported price table version {}", report.version)
    };
    output::line(&format!(
        "{what}: {} models (skipped {} of other modes, {} without prices, {} unreadable)",
        report.models, report.skipped_other_modes, report.skipped_unpriced, skipped
    ))?;
    for entry in &report.unreadable {
        output::line(&format!("  skipped {}: {}", entry.model, entry.why))?;
    }
    if skipped > report.unreadable.len() {
        output::line(&format!(
            "  … and {} more (see --json)",
            skipped - report.unreadable.len()
        ))?;
    }
    done(Ok(()))
}

/// A price in USD per million tokens from the command line, as USD per token.
fn per_token(text: &str, flag: &str) -> anyhow::Result<Decimal> {
    let million = Decimal::from_str_exact(text)
        .map_err(|e| anyhow!("invalid --{flag}: {text:?} is not a decimal number ({e})"))?;
    if million.is_sign_negative() && !million.is_zero() {
        return Err(anyhow!("invalid --{flag}: a price cannot be negative"));
    }
    million
        .checked_div(Decimal::from(1_000_000))
        .map(|d| d.normalize())
        .ok_or_else(|| anyhow!("invalid --{flag}: {text:?} is out of range"))
}

fn fee(text: &str, flag: &str) -> anyhow::Result<Decimal> {
    let usd = Decimal::from_str_exact(text)
        .map_err(|e| anyhow!("invalid --{flag}: {text:?} is not a decimal number ({e})"))?;
    if usd.is_sign_negative() && !usd.is_zero() {
        return Err(anyhow!("invalid --{flag}: a fee cannot be negative"));
    }
    Ok(usd.normalize())
}

/// Stores `models` and `aliases` as a new version made by `origin`, and prints what happened.
fn store(
    ctx: &Ctx,
    ledger: &mut Ledger,
    origin: PriceOrigin,
    source: &str,
    models: &[ModelPrice],
    aliases: &BTreeMap<String, String>,
) -> anyhow::Result<ExitCode> {
    let sha256 = content_sha256(models, aliases);
    let stored = ledger.store_price_version(&NewPriceVersion {
        origin,
        source,
        sha256_hex: &sha256,
        models,
        aliases,
    })?;
    if ctx.json {
        return done(output::json(&stored));
    }
    done(output::line(&if stored.unchanged {
        format!(
            "unchanged: price table version {} already holds this",
            stored.version
        )
    } else {
        format!(
            "price table version {} is active ({} models)",
            stored.version, stored.model_count
        )
    }))
}

fn set(ctx: &Ctx, args: &PriceSetArgs) -> anyhow::Result<ExitCode> {
    let mut ledger = ctx.ledger()?;
    let (table, _) = active(&ledger)?;
    let existing = table.get(&args.model).cloned();
    let mode = args
        .mode
        .as_deref()
        .map(|m| parse_choice::<ModelMode>(m, "--mode"))
        .transpose()?;
    let mut price = match existing {
        Some(price) => price,
        None => {
            let (Some(provider), Some(_), Some(_)) = (&args.provider, &args.input, &args.output)
            else {
                return Err(anyhow!(
                    "model {:?} is not in price table {}: a new model needs --provider, \
                     --input and --output",
                    args.model,
                    table.version
                ));
            };
            ModelPrice {
                model: args.model.clone(),
                provider: normalize_provider(provider).to_owned(),
                mode: mode.unwrap_or(ModelMode::Chat),
                input_usd_per_token: Decimal::ZERO,
                output_usd_per_token: Decimal::ZERO,
                max_output_tokens: None,
                quality_score: builtin::quality_score(&args.model),
                dims: PriceDims::default(),
            }
        }
    };
    let opt = |text: &Option<String>, flag: &str| text.as_deref().map(|t| per_token(t, flag));
    if let Some(p) = opt(&args.input, "input").transpose()? {
        price.input_usd_per_token = p;
    }
    if let Some(p) = opt(&args.output, "output").transpose()? {
        price.output_usd_per_token = p;
    }
    let d = &mut price.dims;
    for (field, text, flag) in [
        (&mut d.cache_read_input, &args.cache_read, "cache-read"),
        (
            &mut d.cache_creation_input,
            &args.cache_write,
            "cache-write",
        ),
        (&mut d.output_reasoning, &args.reasoning, "reasoning"),
        (&mut d.input_audio, &args.audio_input, "audio-input"),
        (&mut d.output_audio, &args.audio_output, "audio-output"),
    ] {
        if let Some(p) = opt(text, flag).transpose()? {
            *field = Some(p);
        }
    }
    if let Some(text) = &args.per_request {
        d.per_request = Some(fee(text, "per-request")?);
    }
    if let Some(provider) = &args.provider {
        price.provider = normalize_provider(provider).to_owned();
    }
    if let Some(mode) = mode {
        price.mode = mode;
    }
    if args.max_output_tokens.is_some() {
        price.max_output_tokens = args.max_output_tokens;
    }
    if args.quality.is_some() {
        price.quality_score = args.quality;
    }
    let source = format!("prices set {}", args.model);
    let (mut models, aliases) = table.into_models();
    models.retain(|m| m.model != price.model);
    models.push(price);
    store(
        ctx,
        &mut ledger,
        PriceOrigin::Set,
        &source,
        &models,
        &aliases,
    )
}

fn alias(ctx: &Ctx, name: &str, model: &str) -> anyhow::Result<ExitCode> {
    let mut ledger = ctx.ledger()?;
    let (table, _) = active(&ledger)?;
    let target = table
        .resolve(model)
        .map(|p| p.model.clone())
        .ok_or_else(|| {
            anyhow!(
                "model {model:?} is not in price table {}; set its prices first",
                table.version
            )
        })?;
    let source = format!("prices alias {name} {model}");
    let (models, mut aliases) = table.into_models();
    aliases.insert(name.to_owned(), target);
    store(
        ctx,
        &mut ledger,
        PriceOrigin::Alias,
        &source,
        &models,
        &aliases,
    )
}

fn versions(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ledger = ctx.ledger()?;
    let versions = ledger.price_versions()?;
    if ctx.json {
        return done(output::json(&versions));
    }
    if versions.is_empty() {
        return done(output::line(&format!(
            "no stored versions: the gateway charges by the built-in table ({})",
            builtin::VERSION
        )));
    }
    let cells: Vec<Vec<String>> = versions
        .iter()
        .map(|v| {
            vec![
                format!("{}{}", v.version, if v.active { " *" } else { "" }),
                v.origin.as_str().to_owned(),
                v.model_count.to_string(),
                v.alias_count.to_string(),
                v.imported_at.clone(),
                v.source.clone(),
            ]
        })
        .collect();
    done(output::table(
        &["VERSION", "ORIGIN", "MODELS", "ALIASES", "AT", "SOURCE"],
        &cells,
    ))
}

fn use_version(ctx: &Ctx, which: &str) -> anyhow::Result<ExitCode> {
    let mut ledger = ctx.ledger()?;
    let table = if which == "builtin" || which == builtin::VERSION {
        PriceTable::builtin()
    } else {
        let number: i64 = which
            .trim_start_matches("imported-")
            .parse()
            .map_err(|_| anyhow!("invalid version {which:?}: give a number from `tollgate prices versions`, or builtin"))?;
        ledger
            .price_table_at(number)?
            .ok_or_else(|| anyhow!("there is no price table version {number}"))?
    };
    let source = format!("prices use {which}");
    let (models, aliases) = table.into_models();
    store(
        ctx,
        &mut ledger,
        PriceOrigin::Use,
        &source,
        &models,
        &aliases,
    )
}

/// The file's bytes, refusing one larger than [`PRICE_FILE_BYTES_MAX`] without reading past it.
fn read_bounded(file: &Path) -> anyhow::Result<Vec<u8>> {
    let handle = std::fs::File::open(file)?;
    let mut bytes = Vec::new();
    handle
        .take(PRICE_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)?;
    let read = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if read > PRICE_FILE_BYTES_MAX {
        let size = std::fs::metadata(file).map_or(read, |m| m.len().max(read));
        return Err(PriceImportError::TooLarge {
            bytes: size,
            max: PRICE_FILE_BYTES_MAX,
        }
        .into());
    }
    Ok(bytes)
}
