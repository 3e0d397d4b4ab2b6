//! How commands print: aligned text tables for people, JSON for programs (`--json`).
//! Everything goes to stdout; a closed pipe (`| head`) ends the program quietly (see main.rs).

use std::io::{self, Write};

use serde::Serialize;

/// Prints `value` as pretty JSON followed by a newline.
pub fn json<T: Serialize + ?Sized>(value: &T) -> io::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).map_err(io::Error::other)?;
    writeln!(out)
}

/// Prints rows under headers, each column as wide as its widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = io::stdout().lock();
    let line = |out: &mut io::StdoutLock<'_>, cells: Vec<&str>| -> io::Result<()> {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        writeln!(out, "{}", padded.join("  ").trim_end())
    };
    line(&mut out, headers.to_vec())?;
    for row in rows {
        line(&mut out, row.iter().map(String::as_str).collect())?;
    }
    Ok(())
}

/// Prints `label: value` pairs, labels aligned.
pub fn fields(pairs: &[(&str, String)]) -> io::Result<()> {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = io::stdout().lock();
    for (k, v) in pairs {
        writeln!(out, "{:<width$}  {v}", format!("{k}:"), width = width + 1)?;
    }
    Ok(())
}

/// Prints one line.
pub fn line(text: &str) -> io::Result<()> {
    writeln!(io::stdout().lock(), "{text}")
}

/// An optional value for a table cell.
pub fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}
