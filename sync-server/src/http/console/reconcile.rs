//! The console's reconcile page: `GET /console/reconcile` offers to run a reconcile;
//! `GET /console/reconcile?run=1` runs [`reconcile::run`] and shows what was checked and every
//! difference with its kind, user, agent and detail.
//!
//! Guarantees: a read-only session starts at most one reconcile per
//! `limits.read_only_reconcile_interval` per replica — the same gate, shared with the admin
//! API's read-only tokens ([`crate::http::gates::ReconcileGate`]); a refusal says when to retry.
//! A reconcile only reads (one read-only transaction), so it is a GET: the session cookie is
//! `SameSite=Strict`, so another site cannot start one in an admin's name.

use std::fmt::Write as _;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::html::{Notice, Section, esc, or_dash};
use super::session::ConsoleSession;
use super::{ConsoleError, PageResult};
use crate::http::AppState;
use crate::http::auth::AdminRole;
use crate::reconcile::{self, Report};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ReconcileQuery {
    /// Present: run a reconcile now.
    pub run: Option<String>,
}

const RUN_FORM: &str = r#"<form method="get" action="/console/reconcile"><input type="hidden" name="run" value="1"><p>A reconcile recomputes every balance and hash from the journals and compares them with the books; it reads everything, so it takes a moment on a large fleet.</p><button type="submit" id="run-reconcile">Run a reconcile</button></form>"#;

pub async fn page(
    State(state): State<AppState>,
    session: ConsoleSession,
    query: Result<Query<ReconcileQuery>, QueryRejection>,
) -> PageResult {
    let Query(query) = query.map_err(|e| {
        ConsoleError::new(
            StatusCode::BAD_REQUEST,
            format!("the page's address is not valid: {}", e.body_text()),
        )
    })?;
    let mut body = RUN_FORM.to_owned();
    if query.run.is_none() {
        return Ok((StatusCode::OK, page_html(&session, &Notice::None, &body)));
    }
    if session.role == AdminRole::Read {
        let interval = state.config.limits.read_only_reconcile_interval;
        if let Err(wait) = state.reconciles.read_only_start(interval) {
            let notice = Notice::Refused(format!(
                "a read-only session may start a reconcile once every {} s (it reads every \
                 journal); retry in {} s, or sign in with a full token",
                interval.as_secs(),
                wait.as_secs().max(1)
            ));
            return Ok((
                StatusCode::TOO_MANY_REQUESTS,
                page_html(&session, &notice, &body),
            ));
        }
    }
    let report = reconcile::run(&state.pool).await?;
    body.push_str(&report_html(&report));
    Ok((StatusCode::OK, page_html(&session, &Notice::None, &body)))
}

fn page_html(
    session: &ConsoleSession,
    notice: &Notice,
    body: &str,
) -> axum::response::Html<String> {
    super::html::page(session, Section::Reconcile, "Reconcile", notice, body)
}

fn report_html(report: &Report) -> String {
    let c = &report.checked;
    let verdict = if report.ok {
        r#"<p class="verdict ok" id="verdict">The books agree: no difference.</p>"#.to_owned()
    } else {
        format!(
            r#"<p class="verdict bad" id="verdict">{} difference(s) found.</p>"#,
            report.differences.len()
        )
    };
    let mut out = format!(
        r#"<section aria-labelledby="report-h"><h2 id="report-h">Report</h2>{verdict}<dl class="checked"><dt>Users</dt><dd>{}</dd><dt>Agents</dt><dd>{} ({} quarantined)</dd><dt>Streams</dt><dd>{}</dd><dt>Entries</dt><dd>{}</dd><dt>Hashes verified</dt><dd>{}</dd><dt>Usage debits</dt><dd>{}</dd><dt>Credit operations</dt><dd>{}</dd></dl>"#,
        c.users,
        c.agents,
        c.quarantined_agents,
        c.streams,
        c.entries,
        c.hashes_verified,
        c.usage_debits,
        c.credit_operations
    );
    if !report.differences.is_empty() {
        out.push_str(r#"<table id="differences"><thead><tr><th scope="col">Kind</th><th scope="col">User</th><th scope="col">Agent</th><th scope="col">Detail</th></tr></thead><tbody>"#);
        for d in &report.differences {
            let _ = write!(
                out,
                r#"<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
                esc(&d.kind),
                or_dash(d.user_id.as_deref()),
                or_dash(d.agent.as_deref()),
                esc(&d.detail)
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</section>");
    out
}
