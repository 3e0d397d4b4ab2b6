//! What both tollgate programs' pages share — the server's console and the agent's read-only
//! view of its own books: HTML escaping ([`esc`], [`attr`], [`url_part`]), the usage charts
//! ([`charts`], inline SVG drawn from exact amounts) and the stylesheet ([`STYLESHEET`]).
//!
//! Guarantees: pure functions of their input, no I/O; every text they write into a page is
//! escaped; nothing is loaded from elsewhere (the stylesheet is embedded).

use std::fmt::Write as _;

pub mod charts;

/// The pages' one stylesheet, served by each program under its own path.
pub const STYLESHEET: &str = include_str!("console.css");

/// `text` made safe for HTML text and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` for an attribute value (the same escaping; named for the reader).
pub fn attr(text: &str) -> String {
    esc(text)
}

/// `text` as one URL path segment or query value (everything but unreserved characters
/// percent-encoded).
pub fn url_part(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}
