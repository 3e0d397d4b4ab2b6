//! The console's agents page.
//!
//! - `GET /console/agents`: every agent with its status, sync lag (entries it holds that the
//!   server has not stored), last push and last contact, inbox progress, and why it is
//!   quarantined; a Release button beside each quarantined agent for a full-role admin.
//! - `POST /console/agents/{name}/release` (full role): [`agents::release`], the operation the
//!   CLI and the admin API use (only a quarantined agent moves back to active).

use std::fmt::Write as _;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Html;
use serde::Deserialize;

use super::html::{Notice, Section, attr, csrf_field, esc, or_dash, page, url_part};
use super::session::{ConsoleSession, Needs};
use super::{ConsoleError, ConsoleForm, PageResult};
use crate::http::AppState;
use crate::sync::agents::{self, AgentSummary};

pub async fn list(State(state): State<AppState>, session: ConsoleSession) -> PageResult {
    Ok((
        StatusCode::OK,
        agents_page(&state, &session, Notice::None).await?,
    ))
}

async fn agents_page(
    state: &AppState,
    session: &ConsoleSession,
    notice: Notice,
) -> Result<Html<String>, ConsoleError> {
    let all = agents::list(&state.pool).await?;
    Ok(page(
        session,
        Section::Agents,
        "Agents",
        &notice,
        &table(session, &all),
    ))
}

fn table(session: &ConsoleSession, all: &[AgentSummary]) -> String {
    if all.is_empty() {
        return r#"<p id="no-agents">No agent is registered yet (<code>tollgate-server agents enroll NAME</code>).</p>"#.to_owned();
    }
    let quarantined = all.iter().filter(|a| a.status == "quarantined").count();
    let mut out = format!(
        r#"<p>{} agents, <strong id="quarantined-count">{quarantined}</strong> quarantined.</p><table id="agents"><thead><tr><th scope="col">Agent</th><th scope="col">Status</th><th scope="col" class="num">Sync lag (entries)</th><th scope="col">Stored up to</th><th scope="col">Last push</th><th scope="col">Last contact</th><th scope="col">Inbox applied / written</th><th scope="col">Quarantine</th></tr></thead><tbody>"#,
        all.len()
    );
    for a in all {
        let quarantine = match (&a.quarantine_reason, a.status.as_str()) {
            (Some(reason), "quarantined") => {
                let button = if session.can_change() {
                    format!(
                        r#"<form method="post" action="/console/agents/{}/release" class="inline">{}<button type="submit" id="release-{}">Release {}</button></form>"#,
                        url_part(&a.name),
                        csrf_field(session),
                        attr(&a.name),
                        esc(&a.name)
                    )
                } else {
                    String::new()
                };
                format!(r#"<span class="reason">{}</span> {button}"#, esc(reason))
            }
            _ => "—".to_owned(),
        };
        let _ = write!(
            out,
            r#"<tr id="agent-{}"><th scope="row">{}</th><td><span class="status {}">{}</span></td><td class="num">{}</td><td>seq {}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{quarantine}</td></tr>"#,
            attr(&a.name),
            esc(&a.name),
            attr(&a.status),
            esc(&a.status),
            a.lag,
            a.acked_seq,
            or_dash(a.last_push_at.as_deref()),
            or_dash(a.last_seen_at.as_deref()),
            a.inbox_acked,
            a.inbox_head,
        );
    }
    out.push_str("</tbody></table>");
    out
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ReleaseForm {
    pub csrf: String,
}

pub async fn release(
    State(state): State<AppState>,
    session: ConsoleSession,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    ConsoleForm(form): ConsoleForm<ReleaseForm>,
) -> PageResult {
    session.check_form(&headers, &state.config.console, &form.csrf, Needs::Full)?;
    let Path(name) = path.map_err(|e| {
        ConsoleError::new(
            StatusCode::BAD_REQUEST,
            format!("the agent name in the address is not valid: {e}"),
        )
    })?;
    let (status, notice) = match agents::release(&state.pool, &name).await {
        Ok(agent) => {
            tracing::info!(admin = %session.name, agent = %name, "console: agent released");
            (
                StatusCode::OK,
                Notice::Done(format!(
                    "Agent {} is {} again.",
                    esc(&agent.name),
                    esc(&agent.status)
                )),
            )
        }
        Err(e) => {
            let e = ConsoleError::from(e);
            (e.status, Notice::Refused(e.message))
        }
    };
    Ok((status, agents_page(&state, &session, notice).await?))
}
