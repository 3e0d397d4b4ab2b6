//! `tollgate-server admin-tokens|users|credits|packages|power-levels|reconcile`: the admin's
//! command line over the same central operations as the admin API.
//!
//! Guarantees:
//! - An admin token is printed once, at creation, and only its SHA-256 is stored; `list` never
//!   shows a token.
//! - Credit operations are idempotent by `--operation-id` (key `admin:<id>`, shared with the
//!   API); amounts are exact decimal text, never floats.
//! - `--json` prints machine-readable JSON; otherwise aligned tables.
//! - `reconcile` exits 1 when the books differ (0 when they agree; 2 on an error).

use std::process::ExitCode;

use anyhow::{Context, bail};
use deadpool_postgres::Pool;
use serde::Serialize;
use tokio_postgres::error::SqlState;
use tollgate_schema::money::Credits;

use crate::central::api_keys;
use crate::central::credit::{self, CreditKind, CreditOp};
use crate::central::users::{self, USERS_PAGE_MAX, UserSet};
use crate::central::{catalog, operation, rfc3339, validate};
use crate::cli::{AdminTokensCommand, ApiKeyCommand, CreditArgs, CreditsCommand, UsersCommand};
use crate::reconcile;
use crate::tokens;

/// Who the CLI acts as in `central_operations.actor`.
const CLI_ACTOR: &str = "cli";
/// Longest admin token name (`admin_tokens.name`'s CHECK).
const TOKEN_NAME_LEN_MAX: usize = 64;

fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints rows under headers, columns padded to their widest cell.
fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn or_dash(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".to_owned())
}

#[derive(Debug, Serialize)]
struct TokenInfo {
    name: String,
    role: String,
    created_at: String,
    last_used_at: Option<String>,
    revoked_at: Option<String>,
}

pub async fn admin_tokens(
    pool: &Pool,
    cmd: AdminTokensCommand,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let conn = pool.get().await.context("connecting to the database")?;
    match cmd {
        AdminTokensCommand::Create { name, role } => {
            if name.is_empty()
                || name.len() > TOKEN_NAME_LEN_MAX
                || name.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                bail!(
                    "a token name is 1 to {TOKEN_NAME_LEN_MAX} characters without spaces, got \
                     {name:?}"
                );
            }
            if role != "read" && role != "full" {
                bail!("--role {role:?} is not read or full");
            }
            let token = tokens::generate(tokens::ADMIN_TOKEN_PREFIX)?;
            let inserted = conn
                .execute(
                    "INSERT INTO admin_tokens (name, role, token_hash) VALUES ($1, $2, $3)",
                    &[&name, &role, &tokens::hash(&token)],
                )
                .await;
            if let Err(e) = inserted {
                if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                    bail!(
                        "an admin token named {name:?} already exists (revoke it, or pick \
                         another name)"
                    );
                }
                return Err(e).context("storing the admin token");
            }
            if json {
                print_json(&serde_json::json!({
                    "name": name, "role": role, "token": token.as_str(),
                }))?;
            } else {
                println!(
                    "admin token {name:?} (role {role}) created. It is shown only now; store it \
                     somewhere safe:"
                );
                println!("{}", token.as_str());
            }
            Ok(ExitCode::SUCCESS)
        }
        AdminTokensCommand::List => {
            let rows = conn
                .query(
                    "SELECT name, role, created_at, last_used_at, revoked_at FROM admin_tokens \
                     ORDER BY name",
                    &[],
                )
                .await?;
            let list: Vec<TokenInfo> = rows
                .iter()
                .map(|r| TokenInfo {
                    name: r.get("name"),
                    role: r.get("role"),
                    created_at: rfc3339(r.get("created_at")),
                    last_used_at: r
                        .get::<_, Option<time::OffsetDateTime>>("last_used_at")
                        .map(rfc3339),
                    revoked_at: r
                        .get::<_, Option<time::OffsetDateTime>>("revoked_at")
                        .map(rfc3339),
                })
                .collect();
            if json {
                print_json(&list)?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .into_iter()
                    .map(|t| {
                        vec![
                            t.name,
                            t.role,
                            t.created_at,
                            or_dash(t.last_used_at),
                            or_dash(t.revoked_at),
                        ]
                    })
                    .collect();
                print_table(&["NAME", "ROLE", "CREATED", "LAST USED", "REVOKED"], &rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        AdminTokensCommand::Revoke { name } => {
            let revoked = conn
                .query_opt(
                    "UPDATE admin_tokens SET revoked_at = now() \
                     WHERE name = $1 AND revoked_at IS NULL RETURNING id",
                    &[&name],
                )
                .await?
                .is_some();
            if !revoked {
                let exists = conn
                    .query_opt("SELECT 1 FROM admin_tokens WHERE name = $1", &[&name])
                    .await?
                    .is_some();
                if !exists {
                    bail!("no admin token is named {name:?}");
                }
            }
            if json {
                print_json(&serde_json::json!({"name": name, "revoked": true}))?;
            } else if revoked {
                println!("admin token {name:?} revoked: it is refused from now on");
            } else {
                println!("admin token {name:?} was already revoked");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub async fn users(pool: &Pool, cmd: UsersCommand, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        UsersCommand::List => {
            let conn = pool.get().await.context("connecting to the database")?;
            let mut all = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = users::list_users(&conn, after.as_deref(), USERS_PAGE_MAX).await?;
                let full = page.len() as i64 == USERS_PAGE_MAX;
                after = page.last().map(|u| u.user_id.clone());
                all.extend(page);
                if !full {
                    break;
                }
            }
            if json {
                print_json(&all)?;
            } else {
                let rows: Vec<Vec<String>> = all
                    .into_iter()
                    .map(|u| {
                        vec![
                            u.user_id,
                            or_dash(u.home_agent),
                            u.balance.to_string(),
                            u.tier,
                            u.power_level,
                            u.lifetime_credits_purchased.to_string(),
                            or_dash(u.last_entry_at),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "USER",
                        "HOME",
                        "BALANCE",
                        "TIER",
                        "POWER",
                        "PURCHASED",
                        "LAST ENTRY",
                    ],
                    &rows,
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        UsersCommand::ApiKey(cmd) => api_key(pool, cmd, json).await,
        UsersCommand::Show { user_id } => {
            let conn = pool.get().await.context("connecting to the database")?;
            let user = users::show_user(&conn, &user_id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no user {user_id:?} is known centrally"))?;
            if json {
                print_json(&user)?;
            } else {
                let held = user
                    .held_by
                    .iter()
                    .map(|h| format!("{} on {}", h.credits, h.agent))
                    .collect::<Vec<_>>()
                    .join(", ");
                let cap = user
                    .monthly_spend_cap
                    .map_or_else(|| "none".to_owned(), |c| c.to_string());
                let rows = [
                    ("user", user.summary.user_id.clone()),
                    (
                        "served by",
                        match (&user.summary.home_agent, user.fleet) {
                            (_, true) => "every agent (fleet user)".to_owned(),
                            (Some(home), false) => format!("home agent {home}"),
                            (None, false) => "-".to_owned(),
                        },
                    ),
                    (
                        "pool",
                        user.pool.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                    ),
                    (
                        "debt",
                        user.debt.map_or_else(|| "-".to_owned(), |d| d.to_string()),
                    ),
                    (
                        "overdraft line",
                        user.overdraft
                            .map_or_else(|| "none".to_owned(), |o| o.to_string()),
                    ),
                    ("balance held by agents", user.summary.balance.to_string()),
                    (
                        "held by",
                        if held.is_empty() {
                            "-".to_owned()
                        } else {
                            held
                        },
                    ),
                    ("tier", user.summary.tier.clone()),
                    ("power level", user.summary.power_level.clone()),
                    ("monthly allowance", user.monthly_allowance.to_string()),
                    ("monthly spend cap", cap),
                    ("spent this month", user.credits_used_this_month.to_string()),
                    (
                        "purchased",
                        user.summary.lifetime_credits_purchased.to_string(),
                    ),
                    ("live API keys", user.live_api_keys.to_string()),
                    (
                        "pending central credit",
                        user.pending_credit_operations.len().to_string(),
                    ),
                ];
                for (name, value) in rows {
                    println!("{name:<24}{value}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        UsersCommand::Set(args) => {
            let req = UserSet {
                user_id: args.user_id,
                home_agent: args.home,
                fleet: args.fleet,
                tier: args.tier,
                power_level: args.power_level,
                monthly_allowance: args
                    .monthly_allowance
                    .as_deref()
                    .map(|t| validate::credits("--monthly-allowance", t))
                    .transpose()?,
                monthly_spend_cap: args
                    .monthly_spend_cap
                    .as_deref()
                    .map(|t| validate::spend_cap("--monthly-spend-cap", t))
                    .transpose()?,
                overdraft: args
                    .overdraft
                    .as_deref()
                    .map(|t| validate::overdraft("--overdraft", t))
                    .transpose()?,
            };
            let key = operation::fresh_key("user");
            let applied = users::set_user(pool, &req, &key, CLI_ACTOR).await?;
            if json {
                print_json(&applied)?;
            } else {
                let r = &applied.result;
                let verb = if r.created { "created" } else { "updated" };
                match (&r.home_agent, r.inbox_seq) {
                    (Some(home), Some(seq)) => println!(
                        "user {} {verb} on agent {home} (tier {}, power level {}); sent to the \
                         agent as inbox event {seq}",
                        r.user.user_id, r.user.tier, r.user.power_level,
                    ),
                    _ => println!(
                        "fleet user {} {verb} (tier {}, power level {}); served by every agent \
                         from grants of their pool; settings sent to {}",
                        r.user.user_id,
                        r.user.tier,
                        r.user.power_level,
                        if r.sent_to.is_empty() {
                            "no agent yet (none speaks protocol 3)".to_owned()
                        } else {
                            r.sent_to.join(", ")
                        }
                    ),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `tollgate-server users api-key …`.
async fn api_key(pool: &Pool, cmd: ApiKeyCommand, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        ApiKeyCommand::Create { user_id, name } => {
            let made = api_keys::create(pool, &user_id, &name, CLI_ACTOR).await?;
            if json {
                #[derive(Serialize)]
                struct Shown<'a> {
                    key: &'a str,
                    #[serde(flatten)]
                    info: &'a api_keys::ApiKeyInfo,
                    sent_to: &'a [String],
                }
                print_json(&Shown {
                    key: &made.secret,
                    info: &made.info,
                    sent_to: &made.sent_to,
                })?;
            } else {
                println!(
                    "API key {} ({}) for user {}, sent to {}. It is shown only now; only its \
                     hash is kept:",
                    made.info.key_id,
                    made.info.name,
                    made.info.user_id,
                    agents_text(&made.sent_to)
                );
                println!("{}", made.secret.as_str());
            }
            Ok(ExitCode::SUCCESS)
        }
        ApiKeyCommand::List { user_id } => {
            let keys = api_keys::list(pool, &user_id).await?;
            if json {
                print_json(&keys)?;
            } else {
                let rows: Vec<Vec<String>> = keys
                    .into_iter()
                    .map(|k| {
                        vec![
                            k.key_id,
                            k.prefix,
                            k.name,
                            k.created_at,
                            or_dash(k.revoked_at),
                        ]
                    })
                    .collect();
                print_table(&["ID", "PREFIX", "NAME", "CREATED", "REVOKED"], &rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        ApiKeyCommand::Revoke { key_id } => {
            let revoked = api_keys::revoke(pool, &key_id).await?;
            if json {
                print_json(&revoked)?;
            } else if revoked.newly {
                println!(
                    "API key {key_id} revoked; sent to {}",
                    agents_text(&revoked.sent_to)
                );
            } else {
                println!("API key {key_id} was already revoked");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// "agent a, agent b" or why none.
fn agents_text(names: &[String]) -> String {
    if names.is_empty() {
        "no agent yet (the user has no home agent that can take it: it is revoked, or speaks an \
         older protocol and gets every key when it upgrades)"
            .to_owned()
    } else {
        names
            .iter()
            .map(|n| format!("agent {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub async fn credits(pool: &Pool, cmd: CreditsCommand, json: bool) -> anyhow::Result<ExitCode> {
    let (kind, args): (CreditKind, CreditArgs) = match cmd {
        CreditsCommand::Grant(a) => (CreditKind::Grant, a),
        CreditsCommand::Refund(a) => (CreditKind::Refund, a),
        CreditsCommand::Adjust(a) => (CreditKind::Adjust, a),
    };
    let amount: Credits = validate::credits("AMOUNT", &args.amount)?;
    let op = CreditOp {
        user_id: args.user_id,
        kind,
        amount,
        operation_id: args.operation_id,
        note: args.note,
        actor: CLI_ACTOR.to_owned(),
    };
    let applied = credit::credit(pool, &op).await?;
    if json {
        print_json(&applied)?;
    } else {
        let r = &applied.result;
        let destination = match (&r.agent, r.inbox_seq, r.pool) {
            (Some(agent), Some(seq), _) => format!("agent {agent} (inbox event {seq})"),
            (_, _, Some(pool)) => format!("the fleet pool (now {pool})"),
            _ => "nowhere".to_owned(),
        };
        if applied.replayed {
            println!(
                "operation {} was already applied ({} {} for {}, to {destination}); nothing new \
                 was written",
                r.operation_key,
                r.kind.as_str(),
                r.amount,
                r.user_id,
            );
        } else if r.pool.is_some() {
            println!(
                "{} {} for {} booked on {destination} (operation {}); agents get it as grants",
                r.kind.as_str(),
                r.amount,
                r.user_id,
                r.operation_key
            );
        } else {
            println!(
                "{} {} for {} sent to {destination} (operation {}); the balance changes when the \
                 agent applies it",
                r.kind.as_str(),
                r.amount,
                r.user_id,
                r.operation_key
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn packages(pool: &Pool, json: bool) -> anyhow::Result<ExitCode> {
    let conn = pool.get().await.context("connecting to the database")?;
    let list = catalog::packages(&conn).await?;
    if json {
        print_json(&list)?;
    } else {
        let rows: Vec<Vec<String>> = list
            .into_iter()
            .map(|p| {
                vec![
                    p.spec.sort_order.to_string(),
                    p.spec.name,
                    p.spec.credits.to_string(),
                    p.price_usd,
                    format!("{}%", p.spec.discount_percent),
                    or_dash(p.spec.min_tier),
                    if p.spec.is_active { "yes" } else { "no" }.to_owned(),
                    if p.spec.is_featured { "yes" } else { "no" }.to_owned(),
                    or_dash(p.spec.badge_text),
                ]
            })
            .collect();
        print_table(
            &[
                "SORT", "NAME", "CREDITS", "USD", "DISCOUNT", "MIN TIER", "ACTIVE", "FEATURED",
                "BADGE",
            ],
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn power_levels(pool: &Pool, json: bool) -> anyhow::Result<ExitCode> {
    let conn = pool.get().await.context("connecting to the database")?;
    let list = catalog::power_levels(&conn).await?;
    if json {
        print_json(&list)?;
    } else {
        let rows: Vec<Vec<String>> = list
            .into_iter()
            .map(|l| {
                vec![
                    l.power_level,
                    l.name,
                    l.preferred_providers.join(","),
                    l.fallback_strategy,
                    l.cost_multiplier,
                    l.max_latency_ms.to_string(),
                    l.min_quality_score.to_string(),
                    if l.is_active { "yes" } else { "no" }.to_owned(),
                ]
            })
            .collect();
        print_table(
            &[
                "LEVEL",
                "NAME",
                "PROVIDERS",
                "FALLBACK",
                "MULTIPLIER",
                "MAX MS",
                "MIN QUALITY",
                "ACTIVE",
            ],
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn reconcile(pool: &Pool, json: bool) -> anyhow::Result<ExitCode> {
    let report = reconcile::run(pool).await?;
    if json {
        print_json(&report)?;
    } else {
        let c = &report.checked;
        println!(
            "checked {} users, {} agents ({} quarantined), {} streams, {} entries ({} hashes \
             verified), {} usage debits, {} credit operations",
            c.users,
            c.agents,
            c.quarantined_agents,
            c.streams,
            c.entries,
            c.hashes_verified,
            c.usage_debits,
            c.credit_operations
        );
        if report.ok {
            println!("OK: the books agree");
        } else {
            println!("{} difference(s):", report.differences.len());
            let rows: Vec<Vec<String>> = report
                .differences
                .iter()
                .map(|d| {
                    vec![
                        d.kind.clone(),
                        or_dash(d.agent.clone()),
                        or_dash(d.user_id.clone()),
                        d.detail.clone(),
                    ]
                })
                .collect();
            print_table(&["KIND", "AGENT", "USER", "DETAIL"], &rows);
        }
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
