//! The console's user pages.
//!
//! - `GET /console/users?q=PREFIX&after=ID`: users whose id starts with `q`, a page at a time,
//!   with balance, who holds it, spend this month, tier and level.
//! - `GET /console/users/{id}?before=ROW`: one user — settings, balance and who holds it, spend
//!   this month, credit operations not yet applied, usage charts (30 days: per day, per model,
//!   per power level), the journal a page at a time, and (full role) the credit and checkout
//!   forms.
//! - `POST /console/users/{id}/credit` (full role): a grant, refund or adjustment with an
//!   operation id, through [`credit::credit`] (idempotent by that id: sending the form twice
//!   applies it once).
//! - `POST /console/users/{id}/checkout` (full role): a Stripe Checkout link for a package,
//!   through [`checkout::create`].
//!
//! Guarantees: a refused form shows the page again with the reason and the admin's input kept,
//! and nothing written (the domain functions validate before writing).

use std::fmt::Write as _;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::html::{Notice, Section, attr, csrf_field, esc, or_dash, page, url_part};
use super::queries::{self, USERS_PAGE};
use super::session::{ConsoleSession, Needs};
use super::{ConsoleError, ConsoleForm, PageResult};
use crate::central::credit::{self, CreditKind, CreditOp};
use crate::central::users::{self as central_users, UserDetail};
use crate::central::{catalog, validate};
use crate::http::AppState;
use crate::stripe::checkout::{self, CheckoutRequest};
use tollgate_pages::charts;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ListQuery {
    /// The id prefix searched for.
    pub q: String,
    /// The last id of the previous page.
    pub after: Option<String>,
}

fn bad_query(e: &QueryRejection) -> ConsoleError {
    ConsoleError::new(
        StatusCode::BAD_REQUEST,
        format!("the page's address is not valid: {}", e.body_text()),
    )
}

pub async fn list(
    State(state): State<AppState>,
    session: ConsoleSession,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> PageResult {
    let Query(query) = query.map_err(|e| bad_query(&e))?;
    let q = query.q.trim();
    let conn = state.pool.get().await?;
    let mut body = format!(
        r#"<form method="get" action="/console/users" class="search" role="search">
<label for="q">User id starts with</label>
<input id="q" name="q" type="search" value="{}" autocomplete="off" spellcheck="false">
<button type="submit">Search</button>
</form>"#,
        attr(q)
    );
    let (status, notice) = match queries::users_page(
        &conn,
        q,
        query.after.as_deref(),
        USERS_PAGE + 1,
    )
    .await
    {
        Ok(mut rows) => {
            let more = rows.len() > usize::try_from(USERS_PAGE).unwrap_or(50);
            rows.truncate(usize::try_from(USERS_PAGE).unwrap_or(50));
            body.push_str(&users_table(&rows));
            let mut pager = String::new();
            if query.after.is_some() {
                let _ = write!(
                    pager,
                    r#"<a href="/console/users?q={}">First page</a>"#,
                    url_part(q)
                );
            }
            if let (true, Some(last)) = (more, rows.last()) {
                let _ = write!(
                    pager,
                    r#"<a href="/console/users?q={}&amp;after={}" rel="next" id="next-page">Next page</a>"#,
                    url_part(q),
                    url_part(&last.user_id)
                );
            }
            if !pager.is_empty() {
                let _ = write!(
                    body,
                    r#"<nav class="pager" aria-label="Pages">{pager}</nav>"#
                );
            }
            (StatusCode::OK, Notice::None)
        }
        Err(e) => {
            let e = ConsoleError::from(e);
            (e.status, Notice::Refused(e.message))
        }
    };
    Ok((
        status,
        page(&session, Section::Users, "Users", &notice, &body),
    ))
}

fn holder(row: &queries::UserRow) -> String {
    if row.fleet {
        format!("fleet (pool {})", row.pool)
    } else {
        row.home_agent
            .as_deref()
            .map_or_else(|| "no home".to_owned(), str::to_owned)
    }
}

fn users_table(rows: &[queries::UserRow]) -> String {
    if rows.is_empty() {
        return r#"<p id="no-users">No user matches.</p>"#.to_owned();
    }
    let mut out = String::from(
        r#"<table id="users"><caption class="sr">Users, by id</caption><thead><tr><th scope="col">User</th><th scope="col" class="num">Balance</th><th scope="col">Held by</th><th scope="col" class="num">Spent this month</th><th scope="col">Tier</th><th scope="col">Level</th><th scope="col">Last entry</th></tr></thead><tbody>"#,
    );
    for r in rows {
        let _ = write!(
            out,
            r#"<tr><th scope="row"><a href="/console/users/{}">{}</a></th><td class="num">{}</td><td>{}</td><td class="num">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            url_part(&r.user_id),
            esc(&r.user_id),
            r.balance,
            esc(&holder(r)),
            r.used_this_month,
            esc(&r.tier),
            esc(&r.power_level),
            or_dash(r.last_entry_at.as_deref()),
        );
    }
    out.push_str("</tbody></table>");
    out
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ShowQuery {
    /// The journal page: entries older than this row id.
    pub before: Option<i64>,
}

fn user_id(path: Result<Path<String>, PathRejection>) -> Result<String, ConsoleError> {
    let Path(id) = path.map_err(|e| {
        ConsoleError::new(
            StatusCode::BAD_REQUEST,
            format!("the user id in the address is not valid: {e}"),
        )
    })?;
    validate::user_id("user id", &id).map_err(ConsoleError::from)?;
    Ok(id)
}

pub async fn show(
    State(state): State<AppState>,
    session: ConsoleSession,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ShowQuery>, QueryRejection>,
) -> PageResult {
    let id = user_id(path)?;
    let Query(query) = query.map_err(|e| bad_query(&e))?;
    user_page(
        &state,
        &session,
        &id,
        query.before,
        Notice::None,
        &Forms::fresh(),
    )
    .await
    .map(|html| (StatusCode::OK, html))
}

/// What the user page's forms hold: fresh, or what a refused form was sent with.
#[derive(Debug, Clone, Default)]
struct Forms {
    credit: CreditForm,
    package: String,
}

impl Forms {
    fn fresh() -> Forms {
        Forms {
            credit: CreditForm {
                kind: "grant".to_owned(),
                operation_id: format!("console-{}", uuid::Uuid::now_v7()),
                ..CreditForm::default()
            },
            package: String::new(),
        }
    }
}

async fn user_page(
    state: &AppState,
    session: &ConsoleSession,
    id: &str,
    before: Option<i64>,
    notice: Notice,
    forms: &Forms,
) -> Result<axum::response::Html<String>, ConsoleError> {
    let conn = state.pool.get().await?;
    let detail = central_users::show_user(&conn, id).await?.ok_or_else(|| {
        ConsoleError::new(
            StatusCode::NOT_FOUND,
            format!("no user {id:?} is known centrally"),
        )
    })?;
    let today = time::OffsetDateTime::now_utc().date();
    let usage = queries::usage(&conn, id, today).await?;
    let (journal, older) = queries::journal_page(&conn, id, before).await?;
    let packages = catalog::packages(&conn).await?;
    drop(conn);
    let mut body = summary(&detail);
    body.push_str(&charts_section(&usage));
    if session.can_change() {
        body.push_str(&credit_form(session, id, &forms.credit));
        body.push_str(&checkout_form(session, id, &packages, &forms.package));
    } else {
        body.push_str(
            r#"<p class="help" id="read-only-note">This session is read-only: credit and checkout forms need a full-role admin token.</p>"#,
        );
    }
    body.push_str(&journal_section(id, &journal, before, older));
    Ok(page(
        session,
        Section::Users,
        &format!("User {id}"),
        &notice,
        &body,
    ))
}

fn summary(d: &UserDetail) -> String {
    let s = &d.summary;
    let mut held = String::new();
    for h in &d.held_by {
        let _ = write!(
            held,
            r#"<li><a href="/console/agents#agent-{}">{}</a>: {}</li>"#,
            attr(&h.agent),
            esc(&h.agent),
            h.credits
        );
    }
    if held.is_empty() {
        held.push_str("<li>no agent</li>");
    }
    let mode = if d.fleet {
        format!(
            "fleet user (served by every agent; pool {})",
            d.pool.map(|p| p.to_string()).unwrap_or_default()
        )
    } else {
        format!(
            "home agent {} ({})",
            s.home_agent.as_deref().unwrap_or("none"),
            d.home_agent_status.as_deref().unwrap_or("unknown")
        )
    };
    let mut pending = String::new();
    for p in &d.pending_credit_operations {
        let _ = write!(
            pending,
            r#"<li><code>{}</code>: {} to {} (inbox seq {})</li>"#,
            esc(&p.operation_key),
            p.amount,
            or_dash(p.agent.as_deref()),
            p.inbox_seq
                .map_or_else(|| "—".to_owned(), |s| s.to_string())
        );
    }
    let pending = if pending.is_empty() {
        "<p>None: every credit operation sent to an agent is back in its journal.</p>".to_owned()
    } else {
        format!(r#"<ul id="pending">{pending}</ul>"#)
    };
    format!(
        r#"<section aria-labelledby="balance-h" class="cards">
<div class="card"><h2 id="balance-h">Balance</h2><p class="big" id="balance">{}</p><p>credits, held by:</p><ul id="held-by">{held}</ul></div>
<div class="card"><h2>This month</h2><p class="big" id="spent-this-month">{}</p><p>credits spent from {} to {}</p><p>Allowance {} · cap {}</p></div>
<div class="card"><h2>Settings</h2><dl class="settings">
<dt>Served as</dt><dd id="served-as">{}</dd>
<dt>Tier</dt><dd id="tier">{}</dd><dt>Power level</dt><dd id="power-level">{}</dd>
<dt>Lifetime purchased</dt><dd>{}</dd><dt>Journal entries</dt><dd>{}</dd>
<dt>Live API keys</dt><dd>{}</dd><dt>Created</dt><dd>{}</dd></dl></div>
</section>
<section aria-labelledby="pending-h"><h2 id="pending-h">Credit operations not yet applied</h2>{pending}</section>"#,
        s.balance,
        d.credits_used_this_month,
        esc(&d.billing_cycle_start),
        esc(&d.billing_cycle_end),
        d.monthly_allowance,
        d.monthly_spend_cap
            .map_or_else(|| "none".to_owned(), |c| c.to_string()),
        esc(&mode),
        esc(&s.tier),
        esc(&s.power_level),
        s.lifetime_credits_purchased,
        d.entries,
        d.live_api_keys,
        esc(&d.created_at),
    )
}

fn charts_section(usage: &queries::Usage) -> String {
    format!(
        r#"<section aria-labelledby="usage-h" id="usage"><h2 id="usage-h">Usage, last {} days</h2><p>{} requests, {} credits.</p>
<div class="charts">{}<div class="two">{}{}</div></div></section>"#,
        queries::USAGE_DAYS,
        usage.requests,
        usage.total,
        charts::days_chart("chart-days", "Credits spent per day (UTC)", &usage.by_day),
        charts::bars_chart(
            "chart-models",
            "Credits spent per model",
            "Model",
            &usage.by_model
        ),
        charts::bars_chart(
            "chart-levels",
            "Credits spent per power level",
            "Power level",
            &usage.by_level
        ),
    )
}

fn credit_form(session: &ConsoleSession, id: &str, f: &CreditForm) -> String {
    let mut kinds = String::new();
    for (value, label) in [
        ("grant", "Grant (bonus credit)"),
        ("refund", "Refund"),
        ("adjust", "Adjust (may be negative)"),
    ] {
        let selected = if f.kind == value { " selected" } else { "" };
        let _ = write!(
            kinds,
            r#"<option value="{value}"{selected}>{label}</option>"#
        );
    }
    format!(
        r#"<section aria-labelledby="credit-h" class="card"><h2 id="credit-h">Grant or adjust credit</h2>
<form method="post" action="/console/users/{}/credit" id="credit-form">{}
<div class="fields">
<label for="kind">Kind</label><select id="kind" name="kind">{kinds}</select>
<label for="amount">Amount (credits)</label><input id="amount" name="amount" inputmode="decimal" required value="{}" aria-describedby="amount-help">
<label for="operation_id">Operation id</label><input id="operation_id" name="operation_id" required value="{}" spellcheck="false" aria-describedby="op-help">
<label for="note">Note</label><input id="note" name="note" value="{}">
</div>
<p id="amount-help" class="help">An exact decimal, e.g. 12.5; only an adjustment may be negative.</p>
<p id="op-help" class="help">Sending the same operation id again applies nothing twice: keep it to retry, change it for a new operation.</p>
<button type="submit" id="credit-submit">Apply</button></form></section>"#,
        url_part(id),
        csrf_field(session),
        attr(&f.amount),
        attr(&f.operation_id),
        attr(&f.note),
    )
}

fn checkout_form(
    session: &ConsoleSession,
    id: &str,
    packages: &[catalog::PackageView],
    chosen: &str,
) -> String {
    let mut options = String::new();
    for p in packages.iter().filter(|p| p.spec.is_active) {
        let selected = if p.spec.name == chosen {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            options,
            r#"<option value="{}"{selected}>{} — {} credits for ${}</option>"#,
            attr(&p.spec.name),
            esc(&p.spec.name),
            p.spec.credits,
            esc(&p.price_usd)
        );
    }
    format!(
        r#"<section aria-labelledby="checkout-h" class="card"><h2 id="checkout-h">Stripe checkout link</h2>
<form method="post" action="/console/users/{}/checkout" id="checkout-form">{}
<label for="package">Package</label><select id="package" name="package">{options}</select>
<button type="submit" id="checkout-submit">Make a checkout link</button></form></section>"#,
        url_part(id),
        csrf_field(session)
    )
}

fn journal_section(
    id: &str,
    rows: &[queries::JournalRow],
    before: Option<i64>,
    older: Option<i64>,
) -> String {
    let mut out =
        String::from(r#"<section aria-labelledby="journal-h"><h2 id="journal-h">Journal</h2>"#);
    if rows.is_empty() {
        out.push_str(r#"<p id="no-entries">No entries.</p>"#);
    } else {
        out.push_str(r#"<table id="journal"><thead><tr><th scope="col">When (agent's clock)</th><th scope="col">Agent · seq</th><th scope="col">Type</th><th scope="col" class="num">Amount</th><th scope="col" class="num">Balance after</th><th scope="col">Model · level · tokens</th><th scope="col">Key · note</th></tr></thead><tbody>"#);
        for r in rows {
            let usage = match (&r.model, &r.power_level, r.total_tokens) {
                (None, None, None) => "—".to_owned(),
                (m, l, t) => format!(
                    "{} · {} · {}",
                    or_dash(m.as_deref()),
                    or_dash(l.as_deref()),
                    t.map_or_else(|| "—".to_owned(), |t| t.to_string())
                ),
            };
            let _ = write!(
                out,
                r#"<tr><td>{}</td><td>{} · {}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td><td>{usage}</td><td><code>{}</code> {}</td></tr>"#,
                esc(&r.created_at),
                or_dash(r.agent.as_deref()),
                r.seq,
                esc(&r.kind),
                r.amount,
                r.balance_after,
                or_dash(r.key.as_deref()),
                r.notes.as_deref().map(esc).unwrap_or_default(),
            );
        }
        out.push_str("</tbody></table>");
    }
    let mut pager = String::new();
    if before.is_some() {
        let _ = write!(
            pager,
            r#"<a href="/console/users/{}#journal-h">Newest entries</a>"#,
            url_part(id)
        );
    }
    if let Some(older) = older {
        let _ = write!(
            pager,
            r#"<a href="/console/users/{}?before={older}#journal-h" rel="next" id="older-entries">Older entries</a>"#,
            url_part(id)
        );
    }
    if !pager.is_empty() {
        let _ = write!(
            out,
            r#"<nav class="pager" aria-label="Journal pages">{pager}</nav>"#
        );
    }
    out.push_str("</section>");
    out
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CreditForm {
    pub csrf: String,
    pub kind: String,
    pub amount: String,
    pub operation_id: String,
    pub note: String,
}

pub async fn credit(
    State(state): State<AppState>,
    session: ConsoleSession,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    ConsoleForm(form): ConsoleForm<CreditForm>,
) -> PageResult {
    session.check_form(&headers, &state.config.console, &form.csrf, Needs::Full)?;
    let id = user_id(path)?;
    let outcome = async {
        let op = CreditOp {
            user_id: id.clone(),
            kind: form.kind.parse::<CreditKind>()?,
            amount: validate::credits("amount", form.amount.trim())?,
            operation_id: form.operation_id.trim().to_owned(),
            note: Some(form.note.trim().to_owned()).filter(|n| !n.is_empty()),
            actor: session.name.clone(),
        };
        credit::credit(&state.pool, &op).await
    }
    .await;
    match outcome {
        Ok(applied) => {
            let r = &applied.result;
            tracing::info!(admin = %session.name, user = %id, key = %r.operation_key, "console credit");
            state
                .metrics
                .inbox_events_written
                .inc_by(applied.events_written);
            let whereto = match (&r.agent, r.inbox_seq, r.pool) {
                (Some(agent), Some(seq), _) => format!(
                    "sent to agent {} (inbox seq {seq}); the balance moves when the agent has applied it and synced",
                    esc(agent)
                ),
                (_, _, Some(pool)) => format!("booked on the fleet pool, now {pool}"),
                _ => "recorded".to_owned(),
            };
            let replayed = if applied.replayed {
                " This operation id was used before with the same content: nothing new was written."
            } else {
                ""
            };
            let notice = Notice::Done(format!(
                "Applied <code>{}</code>: {} of {} credits, {whereto}.{replayed}",
                esc(&r.operation_key),
                esc(&format!("{:?}", r.kind).to_lowercase()),
                r.amount,
            ));
            let html = user_page(&state, &session, &id, None, notice, &Forms::fresh()).await?;
            Ok((StatusCode::OK, html))
        }
        Err(e) => {
            let e = ConsoleError::from(e);
            let forms = Forms {
                credit: form,
                package: String::new(),
            };
            let html = user_page(
                &state,
                &session,
                &id,
                None,
                Notice::Refused(e.message),
                &forms,
            )
            .await?;
            Ok((e.status, html))
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CheckoutForm {
    pub csrf: String,
    pub package: String,
}

pub async fn checkout(
    State(state): State<AppState>,
    session: ConsoleSession,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    ConsoleForm(form): ConsoleForm<CheckoutForm>,
) -> PageResult {
    session.check_form(&headers, &state.config.console, &form.csrf, Needs::Full)?;
    let id = user_id(path)?;
    let request = CheckoutRequest {
        user_id: id.clone(),
        package: form.package.clone(),
    };
    let outcome = checkout::create(
        &state.pool,
        &state.http,
        state.config.stripe.as_ref(),
        &session.name,
        request,
    )
    .await;
    let mut forms = Forms::fresh();
    let (status, notice) = match outcome {
        Ok(created) => {
            let link = if created.url.starts_with("https://") || created.url.starts_with("http://")
            {
                format!(
                    r#"<a href="{}" id="checkout-link" rel="noreferrer">{}</a>"#,
                    attr(&created.url),
                    esc(&created.url)
                )
            } else {
                esc(&created.url)
            };
            (
                StatusCode::OK,
                Notice::Done(format!(
                    "Checkout for {} ({} credits, ${}): send the buyer to {link}",
                    esc(&created.package),
                    created.credits,
                    esc(&created.price_usd)
                )),
            )
        }
        Err(e) => {
            forms.package = form.package;
            let e = ConsoleError::from(e);
            (e.status, Notice::Refused(e.message))
        }
    };
    let html = user_page(&state, &session, &id, None, notice, &forms).await?;
    Ok((status, html))
}
