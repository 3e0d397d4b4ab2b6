//! `tollgate usage report`: requests, tokens, credits and latency from the request log.
//!
//! `--since DUR` is a whole number and a unit (`s`, `m`, `h`, `d`: `30m`, `24h`, `7d`), at most
//! [`SINCE_MAX_DAYS`] days, counted back from now. `--by` is model, provider, day or level;
//! `--format` is table, json or csv (`--json` means `--format json`). Every bad value is a
//! one-line error before anything is read. Tables and CSV end with a `total` row; JSON carries a
//! `total` object. CSV follows RFC 4180: a header line, CRLF line ends, and fields holding a
//! comma, quote or line break quoted with inner quotes doubled.

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use time::Duration;

use super::{Ctx, done, output, parse_choice};
use crate::cli::UsageCommand;
use crate::ledger::reports::{GroupBy, UsageFilter, UsageGroup, UsageReport};

/// The longest `--since`, in days (ten years).
pub const SINCE_MAX_DAYS: i64 = 3650;

/// How a report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Table,
    Json,
    Csv,
}

pub fn run(ctx: &Ctx, cmd: UsageCommand) -> anyhow::Result<ExitCode> {
    let UsageCommand::Report {
        user,
        since,
        by,
        format,
    } = cmd;
    let by: GroupBy = parse_choice(&by, "--by")?;
    let format = parse_format(&format, ctx.json)?;
    let since = since.as_deref().map(parse_since).transpose()?;
    let ledger = ctx.ledger()?;
    let filter = UsageFilter {
        user_id: user,
        since: since.map(|back| ledger.clock().now() - back),
    };
    let report = ledger.usage_report(&filter, by)?;
    match format {
        Format::Json => done(output::json(&report)),
        Format::Table => done(print_table(&report)),
        Format::Csv => done(write_csv(&mut io::stdout().lock(), &report)),
    }
}

fn parse_format(text: &str, json_flag: bool) -> anyhow::Result<Format> {
    let format = match text {
        "table" => Format::Table,
        "json" => Format::Json,
        "csv" => Format::Csv,
        other => bail!("invalid --format: {other:?} (expected one of: table, json, csv)"),
    };
    match (json_flag, format) {
        (false, f) => Ok(f),
        // --format's default is table, so --json with it means json.
        (true, Format::Table | Format::Json) => Ok(Format::Json),
        (true, Format::Csv) => bail!("--json and --format csv disagree: give one of them"),
    }
}

/// `--since`: `<whole number><s|m|h|d>`, from 1 second to [`SINCE_MAX_DAYS`] days.
pub fn parse_since(text: &str) -> anyhow::Result<Duration> {
    let bad = || {
        anyhow!(
            "invalid --since: {text:?} is not a duration (use a whole number and a unit s, m, h \
             or d, e.g. 30m, 24h, 7d)"
        )
    };
    let unit_at = text.char_indices().last().map(|(i, _)| i).ok_or_else(bad)?;
    let (number, unit) = text.split_at(unit_at);
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let seconds_per_unit: i64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let max_seconds = SINCE_MAX_DAYS * 86_400;
    let seconds = number
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(seconds_per_unit))
        .filter(|s| *s <= max_seconds)
        .ok_or_else(|| anyhow!("invalid --since: {text:?} is longer than {SINCE_MAX_DAYS}d"))?;
    if seconds == 0 {
        bail!("invalid --since: {text:?} is zero; give a duration of at least 1s");
    }
    Ok(Duration::seconds(seconds))
}

/// The report's cells, one row per group then the totals: the same for table and CSV.
fn cells(group: &UsageGroup) -> Vec<String> {
    let opt = |v: Option<u64>| v.map_or_else(String::new, |v| v.to_string());
    vec![
        group.key.clone(),
        group.requests.to_string(),
        group.successes.to_string(),
        group.errors.to_string(),
        group.prompt_tokens.to_string(),
        group.completion_tokens.to_string(),
        group.credits_charged.to_string(),
        group.overage_credits.to_string(),
        opt(group.avg_latency_ms),
        opt(group.p95_latency_ms),
        group.byok_requests.to_string(),
        if group.litellm_costed_requests == 0 {
            String::new()
        } else {
            group.litellm_cost_usd.to_string()
        },
        group.litellm_costed_requests.to_string(),
    ]
}

const COLUMNS: [&str; 12] = [
    "requests",
    "successes",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "credits_charged",
    "overage_credits",
    "avg_latency_ms",
    "p95_latency_ms",
    "byok_requests",
    "litellm_cost_usd",
    "litellm_costed_requests",
];

pub(crate) fn print_table(report: &UsageReport) -> io::Result<()> {
    let first = report.by.as_str().to_uppercase();
    let headers: Vec<String> = std::iter::once(first)
        .chain(COLUMNS.iter().map(|c| c.replace('_', " ").to_uppercase()))
        .collect();
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let rows: Vec<Vec<String>> = report
        .groups
        .iter()
        .chain(std::iter::once(&report.total))
        .map(|g| {
            let mut row = cells(g);
            if let Some(key) = row.first_mut() {
                *key = printable(key);
            }
            for cell in row.iter_mut().skip(1) {
                if cell.is_empty() {
                    "-".clone_into(cell);
                }
            }
            row
        })
        .collect();
    output::table(&headers, &rows)
}

/// A key for a terminal: control characters escaped, so a model name cannot move the cursor.
fn printable(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn write_csv(out: &mut impl Write, report: &UsageReport) -> io::Result<()> {
    let header: Vec<String> = std::iter::once(report.by.as_str().to_owned())
        .chain(COLUMNS.iter().map(|c| (*c).to_owned()))
        .collect();
    write_csv_line(out, &header)?;
    for group in report.groups.iter().chain(std::iter::once(&report.total)) {
        write_csv_line(out, &cells(group))?;
    }
    out.flush()
}

fn write_csv_line(out: &mut impl Write, fields: &[String]) -> io::Result<()> {
    let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
    write!(out, "{}\r\n", line.join(","))
}

/// One RFC 4180 field: quoted when it holds a comma, a double quote, CR or LF (or starts or ends
/// with a space, which some readers trim), inner quotes doubled.
fn csv_field(field: &str) -> String {
    let needs_quotes =
        field.contains([',', '"', '\r', '\n']) || field.starts_with(' ') || field.ends_with(' ');
    if needs_quotes {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_their_units_and_bounds() {
        assert_eq!(parse_since("30m").unwrap(), Duration::minutes(30));
        assert_eq!(parse_since("24h").unwrap(), Duration::hours(24));
        assert_eq!(parse_since("7d").unwrap(), Duration::days(7));
        assert_eq!(parse_since("45s").unwrap(), Duration::seconds(45));
        assert_eq!(parse_since("3650d").unwrap(), Duration::days(3650));
        assert_eq!(parse_since("87600h").unwrap(), Duration::days(3650));
        for bad in [
            "", "7", "d", "7x", "-7d", "+7d", "7.5h", "7 d", "7D", "1w", "7dd", "٣d",
        ] {
            let err = parse_since(bad).unwrap_err().to_string();
            assert!(err.contains("is not a duration"), "{bad:?}: {err}");
        }
        for long in [
            "3651d",
            "87601h",
            "99999999999999999999d",
            "9223372036854775807s",
        ] {
            let err = parse_since(long).unwrap_err().to_string();
            assert!(err.contains("is longer than 3650d"), "{long:?}: {err}");
        }
        assert!(
            parse_since("0h")
                .unwrap_err()
                .to_string()
                .contains("is zero")
        );
    }

    #[test]
    fn formats_parse_and_json_means_json() {
        assert_eq!(parse_format("table", false).unwrap(), Format::Table);
        assert_eq!(parse_format("csv", false).unwrap(), Format::Csv);
        assert_eq!(parse_format("table", true).unwrap(), Format::Json);
        assert_eq!(parse_format("json", true).unwrap(), Format::Json);
        assert!(parse_format("csv", true).is_err());
        assert_eq!(
            parse_format("xml", false).unwrap_err().to_string(),
            "invalid --format: \"xml\" (expected one of: table, json, csv)"
        );
    }

    #[test]
    fn csv_fields_are_quoted_as_rfc_4180_says() {
        assert_eq!(csv_field("gpt-4o"), "gpt-4o");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("cr\r"), "\"cr\r\"");
        assert_eq!(csv_field(" padded"), "\" padded\"");
        assert_eq!(csv_field(""), "");
        let mut out = Vec::new();
        write_csv_line(&mut out, &["a\"b".into(), "1".into(), String::new()]).unwrap();
        assert_eq!(out, b"\"a\"\"b\",1,\r\n");
    }

    #[test]
    fn table_keys_cannot_carry_control_characters() {
        assert_eq!(printable("gpt\u{1b}[2J"), "gpt\\u{1b}[2J");
        assert_eq!(printable("plain-model"), "plain-model");
    }
}
