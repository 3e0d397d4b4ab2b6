//! HTML for the console: escaping, the page layout (navigation, who is signed in, sign-out),
//! notices, and small pieces every page uses.
//!
//! Guarantees: every text that did not come from this file goes through [`esc`] (or [`attr`]
//! for attribute values) before it is written into a page; pages load only the embedded
//! stylesheet; every form a page writes carries the session's CSRF secret ([`csrf_field`]).

use std::fmt::Write as _;

use axum::http::StatusCode;
use axum::response::Html;

use super::session::ConsoleSession;

pub use tollgate_pages::{attr, esc, url_part};

/// The console's sections, for the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Users,
    Agents,
    Reconcile,
    Catalog,
}

const SECTIONS: &[(Section, &str, &str)] = &[
    (Section::Users, "/console/users", "Users"),
    (Section::Agents, "/console/agents", "Agents"),
    (Section::Reconcile, "/console/reconcile", "Reconcile"),
    (
        Section::Catalog,
        "/console/catalog",
        "Packages & power levels",
    ),
];

/// What a page says after a form: done, or refused with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Notice {
    #[default]
    None,
    /// A change was made (HTML, already escaped).
    Done(String),
    /// A form was refused: the reason, as text.
    Refused(String),
}

impl Notice {
    fn render(&self) -> String {
        match self {
            Notice::None => String::new(),
            Notice::Done(html) => {
                format!(r#"<div class="notice done" role="status" id="notice">{html}</div>"#)
            }
            Notice::Refused(text) => format!(
                r#"<div class="notice refused" role="alert" id="error"><strong>Not done:</strong> {}</div>"#,
                esc(text)
            ),
        }
    }
}

/// The hidden field every form carries.
pub fn csrf_field(session: &ConsoleSession) -> String {
    format!(
        r#"<input type="hidden" name="csrf" value="{}">"#,
        attr(&session.csrf)
    )
}

fn head(title: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{} · tollgate console</title>
<link rel="stylesheet" href="/console/assets/console.css">
</head>
"#,
        esc(title)
    )
}

/// A whole page for a signed-in admin: navigation, who is signed in (and whether read-only), the
/// notice, then `body` (HTML).
pub fn page(
    session: &ConsoleSession,
    section: Section,
    title: &str,
    notice: &Notice,
    body: &str,
) -> Html<String> {
    let mut out = head(title);
    out.push_str(r##"<body><a class="skip" href="#main">Skip to content</a><header class="top"><span class="brand">tollgate console</span><nav aria-label="Console sections"><ul>"##);
    for (s, href, label) in SECTIONS {
        let current = if *s == section {
            r#" aria-current="page""#
        } else {
            ""
        };
        let _ = write!(out, r#"<li><a href="{href}"{current}>{label}</a></li>"#);
    }
    let role = if session.can_change() {
        r#"<span class="role full" id="role">full access</span>"#
    } else {
        r#"<span class="role read" id="role">read-only</span>"#
    };
    let _ = write!(
        out,
        r#"</ul></nav><div class="who">Signed in as <strong id="admin-name">{}</strong> {role}<form method="post" action="/console/logout" class="inline">{}<button type="submit" class="link">Sign out</button></form></div></header>
<main id="main" tabindex="-1"><h1>{}</h1>{}{body}</main></body></html>"#,
        esc(&session.name),
        csrf_field(session),
        esc(title),
        notice.render(),
    );
    Html(out)
}

/// A page for someone not signed in (sign-in, errors).
pub fn bare_page(title: &str, body: &str) -> Html<String> {
    let mut out = head(title);
    let _ = write!(
        out,
        r#"<body><header class="top"><span class="brand">tollgate console</span></header><main id="main" tabindex="-1"><h1>{}</h1>{body}</main></body></html>"#,
        esc(title)
    );
    Html(out)
}

/// The page of a failure outside a form.
pub fn error_page(status: StatusCode, message: &str) -> Html<String> {
    bare_page(
        status.canonical_reason().unwrap_or("Error"),
        &format!(
            r#"<div class="notice refused" role="alert" id="error">{}</div><p><a href="/console/users">Back to the console</a> · <a href="/console/login">Sign in</a></p>"#,
            esc(message)
        ),
    )
}

/// An optional text, or a dash.
pub fn or_dash(text: Option<&str>) -> String {
    text.map_or_else(|| "—".to_owned(), esc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            esc(r#"<script>"x" & 'y'</script>"#),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
        assert_eq!(url_part("a b/c@d"), "a%20b%2Fc%40d");
    }
}
