//! `tollgate prices`: list the active price table, import LiteLLM's price map.
//!
//! `list` prints the newest imported table, or the built-in one when none was imported, with
//! prices per million tokens as exact decimals. `import FILE` reads at most
//! [`PRICE_FILE_BYTES_MAX`] bytes, parses the whole file, then stores it as a new version in one
//! transaction; any error is one line and nothing is written.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use rust_decimal::Decimal;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Ctx, done, output};
use crate::cli::PricesCommand;
use crate::prices::{
    ModelMode, ModelPrice, PRICE_FILE_BYTES_MAX, PriceImportError, PriceTable,
    parse_litellm_report, per_million,
};

pub fn run(ctx: &Ctx, cmd: PricesCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PricesCommand::List => list(ctx),
        PricesCommand::Import { file } => import(ctx, &file),
    }
}

/// One model as `prices list --json` prints it: per token and per million tokens, as strings.
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
}

#[derive(Debug, Serialize)]
struct Listing<'a> {
    version: &'a str,
    /// "imported" or "builtin".
    source: &'static str,
    models: Vec<PriceRow<'a>>,
}

fn list(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ledger = ctx.ledger()?;
    let (table, source) = match ledger.price_table()? {
        Some(table) => (table, "imported"),
        None => (PriceTable::builtin(), "builtin"),
    };
    let rows = table
        .models()
        .map(price_row)
        .collect::<anyhow::Result<Vec<_>>>()?;
    if ctx.json {
        return done(output::json(&Listing {
            version: &table.version,
            source,
            models: rows,
        }));
    }
    output::line(&format!(
        "price table {} ({source}, {} models)",
        table.version,
        table.len()
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
    })
}

#[derive(Debug, Serialize)]
struct ImportReport {
    version: i64,
    unchanged: bool,
    models: u64,
    skipped_other_modes: usize,
    skipped_unpriced: usize,
    source: String,
    sha256: String,
    imported_at: String,
}

fn import(ctx: &Ctx, file: &Path) -> anyhow::Result<ExitCode> {
    let mut ledger = ctx.ledger()?;
    let shown = file.display();
    let bytes = read_bounded(file).with_context(|| format!("reading {shown}"))?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let parsed = parse_litellm_report(&bytes).with_context(|| format!("importing {shown}"))?;
    let source = shown.to_string();
    let stored = ledger
        .import_prices(&source, &sha256, &parsed.models)
        .with_context(|| format!("importing {shown}"))?;
    let report = ImportReport {
        version: stored.version,
        unchanged: stored.unchanged,
        models: stored.model_count,
        skipped_other_modes: parsed.skipped_other_modes,
        skipped_unpriced: parsed.skipped_unpriced,
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
    done(output::line(&format!(
        "{what}: {} models (skipped {} of other modes, {} without prices)",
        report.models, report.skipped_other_modes, report.skipped_unpriced
    )))
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
