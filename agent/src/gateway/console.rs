//! A read-only view of this agent's own books on its admin listener (`/console/`): users with
//! their balances, and one user's balance and usage charts — the server console's page code
//! where it is shared (`tollgate_pages`: escaping, charts, the stylesheet).
//!
//! Guarantees: GET only, nothing written; served only on the admin listener (loopback by
//! default, like `/metrics`: whoever reaches it sees every user's balance, so keep it there);
//! every text from the books is escaped; lists are bounded (`ledger::overview`); no script,
//! nothing loaded from elsewhere.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tollgate_pages::{STYLESHEET, charts, esc, url_part};

use super::Gateway;
use crate::ledger::LedgerError;
use crate::ledger::overview::{UsageCharts, UserLine};

/// Users on one page of the listing.
const USERS_PER_PAGE: i64 = 50;
/// Days of usage the charts cover.
const CHART_DAYS: i64 = 30;

/// The view's routes, merged into the admin router.
pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route(
            "/console",
            get(|| async { axum::response::Redirect::to("/console/") }),
        )
        .route("/console/", get(users))
        .route("/console/users/{user_id}", get(user))
        .route("/console/assets/console.css", get(stylesheet))
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLESHEET,
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    after: Option<String>,
}

async fn users(State(gw): State<Arc<Gateway>>, Query(q): Query<PageQuery>) -> Response {
    let after = q.after.clone();
    let page = gw
        .writer
        .read(move |l| l.users_page(after.as_deref(), USERS_PER_PAGE))
        .await;
    let lines = match page {
        Ok(Ok(lines)) => lines,
        Ok(Err(e)) => return failed(&e.to_string()),
        Err(e) => return failed(&e.to_string()),
    };
    let mut body = String::from(
        r#"<table class="data"><caption>Users on this agent</caption><thead><tr><th scope="col">User</th><th scope="col">Balance</th><th scope="col">Held</th><th scope="col">Spent this month</th><th scope="col">Tier</th><th scope="col">Level</th><th scope="col">Served as</th></tr></thead><tbody>"#,
    );
    for u in &lines {
        row(&mut body, u);
    }
    body.push_str("</tbody></table>");
    if i64::try_from(lines.len()).is_ok_and(|n| n == USERS_PER_PAGE)
        && let Some(last) = lines.last()
    {
        let _ = write!(
            body,
            r#"<p><a href="/console/?after={}">Next users</a></p>"#,
            url_part(&last.user_id)
        );
    }
    if lines.is_empty() {
        body.push_str("<p>No users here yet.</p>");
    }
    layout("Users", &body).into_response()
}

fn row(out: &mut String, u: &UserLine) {
    let _ = write!(
        out,
        r#"<tr><th scope="row"><a href="/console/users/{}">{}</a></th><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
        url_part(&u.user_id),
        esc(&u.user_id),
        u.balance,
        u.held,
        u.used_this_month,
        esc(&u.tier),
        esc(&u.power_level),
        if u.fleet {
            "fleet user (grants)"
        } else {
            "this agent's user"
        }
    );
}

async fn user(State(gw): State<Arc<Gateway>>, Path(user_id): Path<String>) -> Response {
    let id = user_id.clone();
    let read = gw
        .writer
        .read(
            move |l| -> Result<(crate::ledger::UserAccount, UsageCharts), LedgerError> {
                Ok((l.account(&id)?, l.usage_charts(&id, CHART_DAYS)?))
            },
        )
        .await;
    let (account, usage) = match read {
        Ok(Ok(found)) => found,
        Ok(Err(LedgerError::UnknownUser(_) | LedgerError::InvalidUserId(_))) => {
            let body = format!("<p>No user {} on this agent.</p>", esc(&user_id));
            return (StatusCode::NOT_FOUND, layout("No such user", &body)).into_response();
        }
        Ok(Err(e)) => return failed(&e.to_string()),
        Err(e) => return failed(&e.to_string()),
    };
    let mut body = format!(
        r#"<dl class="facts"><dt>Balance</dt><dd id="balance">{}</dd><dt>Held by requests in flight</dt><dd>{}</dd><dt>Available</dt><dd>{}</dd><dt>Spent this month</dt><dd>{}</dd><dt>Tier</dt><dd>{}</dd><dt>Power level</dt><dd>{}</dd></dl>"#,
        account.balance,
        account.held,
        account.available,
        account.credits_used_this_month,
        esc(account.tier.as_str()),
        esc(account.power_level.as_str()),
    );
    body.push_str(&charts::days_chart(
        "chart-days",
        "Credits charged per day (UTC)",
        &usage.by_day,
    ));
    body.push_str(&charts::bars_chart(
        "chart-models",
        "Credits charged per model",
        "Model",
        &usage.by_model,
    ));
    body.push_str(&charts::bars_chart(
        "chart-levels",
        "Credits charged per power level",
        "Power level",
        &usage.by_level,
    ));
    body.push_str(r#"<p><a href="/console/">All users</a></p>"#);
    layout(&user_id, &body).into_response()
}

fn failed(why: &str) -> Response {
    tracing::warn!(error = why, "the read-only view could not read the books");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        layout(
            "Not available",
            "<p>The books could not be read; see the log.</p>",
        ),
    )
        .into_response()
}

fn layout(title: &str, body: &str) -> Html<String> {
    Html(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · tollgate agent</title><link rel="stylesheet" href="/console/assets/console.css"></head>
<body><header class="top"><span class="brand">tollgate agent — read-only</span><nav aria-label="Sections"><ul><li><a href="/console/">Users</a></li></ul></nav></header>
<main id="main"><h1>{title}</h1>{body}</main></body></html>"#,
        title = esc(title),
    ))
}
