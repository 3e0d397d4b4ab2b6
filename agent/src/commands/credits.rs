//! `tollgate credits …`: add, debit, balance, history, and bulk import from JSON lines.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};
use tollgate_schema::money::Credits;

use super::{Ctx, done, output, parse_amount, parse_choice};
use crate::cli::CreditsCommand;
use crate::ledger::{
    AddCredits, BATCH_OPS_MAX, CreditKind, Debit, EntryReceipt, JournalEntry, Ledger, Op, Receipt,
};

/// Longest line `credits import` accepts, in bytes without its line ending. A longer line stops
/// the import: it is never read whole.
pub const IMPORT_LINE_LEN_MAX: usize = 64 * 1024;

pub fn run(ctx: &Ctx, cmd: CreditsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CreditsCommand::Add {
            user,
            amount,
            kind,
            package,
            idempotency_key,
            note,
            refund_of,
            expires_at,
        } => {
            let kind: CreditKind = parse_choice(&kind, "--type")?;
            let req = AddCredits {
                package,
                idempotency_key: local_key(idempotency_key)?,
                note,
                refund_of,
                expires_at,
                ..AddCredits::new(user, parse_amount(&amount, "AMOUNT")?, kind)
            };
            let receipt = ctx.ledger()?.add_credits(req)?;
            print_receipt(ctx, &receipt)
        }
        CreditsCommand::Debit {
            user,
            amount,
            idempotency_key,
            note,
        } => {
            let req = Debit {
                user_id: user,
                amount: parse_amount(&amount, "AMOUNT")?,
                idempotency_key: local_key(idempotency_key)?,
                note,
            };
            let receipt = ctx.ledger()?.debit(req)?;
            print_receipt(ctx, &receipt)
        }
        CreditsCommand::Balance { user } => {
            let a = ctx.ledger()?.account(&user)?;
            if ctx.json {
                return done(output::json(&serde_json::json!({
                    "user_id": a.user_id, "balance": a.balance, "held": a.held, "available": a.available,
                })));
            }
            done(output::fields(&[
                ("user", a.user_id.clone()),
                ("balance", a.balance.to_string()),
                ("held", a.held.to_string()),
                ("available", a.available.to_string()),
            ]))
        }
        CreditsCommand::History { user, limit } => history(ctx, &user, limit),
        CreditsCommand::Import { file, batch_size } => import(ctx, &file, batch_size),
    }
}

fn print_receipt(ctx: &Ctx, r: &EntryReceipt) -> anyhow::Result<ExitCode> {
    if ctx.json {
        return done(output::json(r));
    }
    done(output::fields(&[
        ("entry", r.entry_id.clone()),
        ("user", r.user_id.clone()),
        ("amount", r.amount.to_string()),
        ("balance", r.balance_after.to_string()),
    ]))
}

fn history(ctx: &Ctx, user: &str, limit: u32) -> anyhow::Result<ExitCode> {
    let entries = ctx.ledger()?.history(user, limit)?;
    if ctx.json {
        return done(output::json(&entries));
    }
    done(journal_table(&entries))
}

/// Journal entries as a table, in the order given.
pub fn journal_table(entries: &[JournalEntry]) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                e.created_at.clone(),
                e.transaction_type.to_string(),
                e.amount.to_string(),
                e.balance_after.to_string(),
                output::or_dash(e.request_id.as_deref().or(e.idempotency_key.as_deref())),
                output::or_dash(e.notes.as_deref()),
            ]
        })
        .collect();
    output::table(
        &[
            "SEQ",
            "TIME",
            "TYPE",
            "AMOUNT",
            "BALANCE",
            "REFERENCE",
            "NOTE",
        ],
        &rows,
    )
}

/// One line of `credits import`.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum ImportLine {
    Add {
        user: String,
        amount: Credits,
        #[serde(rename = "type")]
        kind: String,
        package: Option<String>,
        idempotency_key: Option<String>,
        note: Option<String>,
        refund_of: Option<String>,
        expires_at: Option<String>,
    },
    Debit {
        user: String,
        amount: Credits,
        idempotency_key: Option<String>,
        note: Option<String>,
    },
}

/// The result printed for one line, once its batch is durable.
#[derive(Debug, Serialize)]
struct LineResult {
    line: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    ok: Option<EntryReceipt>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Prefixes of the central server's operation keys (`admin:<id>`, `stripe:<session>`): entries
/// carrying them come only through sync, where the server pairs each with its operation.
pub const CENTRAL_KEY_PREFIXES: &[&str] = &["admin:", "stripe:"];

/// A key given on this host, refusing the central server's namespaces.
fn local_key(key: Option<String>) -> anyhow::Result<Option<String>> {
    if let Some(key) = &key
        && let Some(prefix) = CENTRAL_KEY_PREFIXES.iter().find(|p| key.starts_with(**p))
    {
        anyhow::bail!(
            "idempotency key {key:?}: keys starting with {prefix:?} are reserved for the central \
             server's operations (they arrive through sync)"
        );
    }
    Ok(key)
}

fn parse_line(text: &str) -> anyhow::Result<Op> {
    Ok(match serde_json::from_str::<ImportLine>(text)? {
        ImportLine::Add {
            user,
            amount,
            kind,
            package,
            idempotency_key,
            note,
            refund_of,
            expires_at,
        } => Op::AddCredits(AddCredits {
            package,
            idempotency_key: local_key(idempotency_key)?,
            note,
            refund_of,
            expires_at,
            ..AddCredits::new(user, amount, parse_choice(&kind, "type")?)
        }),
        ImportLine::Debit {
            user,
            amount,
            idempotency_key,
            note,
        } => Op::Debit(Debit {
            user_id: user,
            amount,
            idempotency_key: local_key(idempotency_key)?,
            note,
        }),
    })
}

/// Applies JSON lines in group-committed batches; prints each line's result after its batch
/// commits, so every `ok` printed is durable. Exit 1 if any line failed. A line that cannot be
/// read (longer than [`IMPORT_LINE_LEN_MAX`], not UTF-8, an I/O error) stops the import with an
/// error naming it, once the lines before it have been applied and their results printed.
fn import(ctx: &Ctx, file: &Path, batch_size: usize) -> anyhow::Result<ExitCode> {
    if batch_size == 0 || batch_size > BATCH_OPS_MAX {
        return Err(anyhow!(
            "invalid --batch-size {batch_size}: use 1 to {BATCH_OPS_MAX}"
        ));
    }
    let source: Box<dyn Read> = if file == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?)
    };
    let mut ledger = ctx.ledger()?;
    let mut reader = BufReader::new(source);
    let mut buf = Vec::new();
    let mut failed = 0usize;
    let mut line_no = 0usize;
    let mut at_end = false;
    while !at_end {
        // (line number, parsed op or parse error) for the next batch.
        let mut batch: Vec<(usize, anyhow::Result<Op>)> = Vec::with_capacity(batch_size);
        let mut stopped = None;
        while batch.len() < batch_size {
            let text = match next_line(&mut reader, &mut buf, line_no + 1) {
                Ok(Some(text)) => text,
                Ok(None) => {
                    at_end = true;
                    break;
                }
                Err(e) => {
                    stopped = Some(e);
                    break;
                }
            };
            line_no += 1;
            if text.trim().is_empty() {
                continue;
            }
            batch.push((line_no, parse_line(text)));
        }
        if !batch.is_empty() {
            failed += apply_batch(&mut ledger, batch)?;
        }
        if let Some(e) = stopped {
            return Err(e);
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Line `line` of an import without its line ending, or `None` at the end of the input. Reads at
/// most [`IMPORT_LINE_LEN_MAX`] bytes and a `\r\n`, so a line with no end cannot take unbounded
/// memory; a longer line is an error.
fn next_line<'b>(
    reader: &mut impl BufRead,
    buf: &'b mut Vec<u8>,
    line: usize,
) -> anyhow::Result<Option<&'b str>> {
    const STOPPED: &str =
        "the import stopped there; the lines before it were applied and their results printed";
    buf.clear();
    let read = reader
        .by_ref()
        .take(IMPORT_LINE_LEN_MAX as u64 + 2)
        .read_until(b'\n', buf)
        .with_context(|| format!("reading line {line} of the import"))?;
    if read == 0 {
        return Ok(None);
    }
    let buf: &'b Vec<u8> = buf;
    let text = match buf.strip_suffix(b"\n") {
        Some(text) => text.strip_suffix(b"\r").unwrap_or(text),
        None => buf.as_slice(),
    };
    if text.len() > IMPORT_LINE_LEN_MAX {
        bail!("line {line} is longer than {IMPORT_LINE_LEN_MAX} bytes; {STOPPED}");
    }
    match std::str::from_utf8(text) {
        Ok(text) => Ok(Some(text)),
        Err(_) => bail!("line {line} is not UTF-8; {STOPPED}"),
    }
}

/// Commits one batch and prints its results; returns how many lines failed.
fn apply_batch(
    ledger: &mut Ledger,
    batch: Vec<(usize, anyhow::Result<Op>)>,
) -> anyhow::Result<usize> {
    let ops: Vec<Op> = batch
        .iter()
        .filter_map(|(_, op)| op.as_ref().ok().cloned())
        .collect();
    let mut applied = ledger.apply(&ops)?.into_iter();
    let mut out = std::io::stdout().lock();
    let mut failed = 0;
    for (line, parsed) in batch {
        let result = match parsed {
            Err(e) => Err(format!("{e:#}")),
            Ok(_) => match applied.next() {
                Some(Ok(Receipt::Entry(r))) => Ok(r),
                Some(Ok(other)) => Err(format!("unexpected result {other:?}")),
                Some(Err(e)) => Err(e.to_string()),
                None => Err("no result".to_owned()),
            },
        };
        let printed = match result {
            Ok(r) => LineResult {
                line,
                ok: Some(r),
                error: None,
            },
            Err(e) => {
                failed += 1;
                LineResult {
                    line,
                    ok: None,
                    error: Some(e),
                }
            }
        };
        serde_json::to_writer(&mut out, &printed)?;
        writeln!(out)?;
    }
    out.flush()?;
    Ok(failed)
}
