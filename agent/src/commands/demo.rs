//! `tollgate demo`: a newcomer's first look, with nothing else installed. In a temporary data dir
//! it creates a user, buys the Starter Pack, runs metered requests through the ledger exactly as
//! the gateway does (reserve the worst case, settle the metered cost, release on failure, refuse
//! what cannot be afforded), then prints the balance, the journal, the lots and `verify`.

use std::process::ExitCode;
use std::sync::Arc;

use serde::Serialize;
use tollgate_schema::money::Credits;

use super::output;
use crate::ledger::{
    AddCredits, CreditKind, HOLD_TTL_DEFAULT, HoldRequest, Ledger, LedgerError, NewUser, OpenMode,
    PowerLevel, Release, Settle, SystemClock, Tier, UsageErrorType, UsageRecord,
};

const USER: &str = "demo-user";

/// One simulated request: its id, worst-case reservation and metered cost (`None`: it failed
/// upstream).
struct DemoRequest {
    id: &'static str,
    model: &'static str,
    reserve: &'static str,
    cost: Option<&'static str>,
}

const REQUESTS: &[DemoRequest] = &[
    DemoRequest {
        id: "req-1",
        model: "gpt-4o-mini",
        reserve: "2.5",
        cost: Some("0.183"),
    },
    DemoRequest {
        id: "req-2",
        model: "claude-3-5-sonnet",
        reserve: "12",
        cost: Some("7.0425"),
    },
    DemoRequest {
        id: "req-3",
        model: "gpt-4o",
        reserve: "6",
        cost: None,
    },
    DemoRequest {
        id: "req-4",
        model: "gpt-4o",
        reserve: "500",
        cost: Some("480"),
    },
];

#[derive(Debug, Serialize)]
struct RequestOutcome {
    request_id: &'static str,
    model: &'static str,
    outcome: String,
}

fn credits(text: &str) -> anyhow::Result<Credits> {
    Ok(text.parse()?)
}

pub fn run(json: bool) -> anyhow::Result<ExitCode> {
    let dir = tempfile::Builder::new()
        .prefix("tollgate-demo-")
        .tempdir()?;
    let mut ledger = Ledger::open(
        &dir.path().join("tollgate.db"),
        OpenMode::CreateIfMissing,
        Arc::new(SystemClock),
    )?;
    let mut user = NewUser::new(USER);
    user.tier = Tier::Starter;
    ledger.create_user(&user)?;
    ledger.add_credits(AddCredits {
        package: Some("Starter Pack".to_owned()),
        idempotency_key: Some("demo-checkout-1".to_owned()),
        note: Some("Starter Pack, paid".to_owned()),
        ..AddCredits::new(USER, credits("100")?, CreditKind::Purchase)
    })?;

    let mut outcomes = Vec::new();
    for r in REQUESTS {
        outcomes.push(RequestOutcome {
            request_id: r.id,
            model: r.model,
            outcome: run_request(&mut ledger, r)?,
        });
    }
    let account = ledger.account(USER)?;
    let journal = ledger.history(USER, 100)?;
    let lots = ledger.live_lots(USER)?;
    let report = ledger.verify()?;

    if json {
        output::json(&serde_json::json!({
            "data_dir": dir.path().display().to_string(),
            "requests": outcomes,
            "account": account,
            "journal": journal,
            "lots": lots,
            "verify": report,
        }))?;
    } else {
        output::line(&format!(
            "tollgate demo — a throwaway ledger in {}\n",
            dir.path().display()
        ))?;
        output::line(&format!(
            "{USER} bought the Starter Pack (100 credits). Metered requests:"
        ))?;
        let rows: Vec<Vec<String>> = outcomes
            .iter()
            .map(|o| {
                vec![
                    o.request_id.to_owned(),
                    o.model.to_owned(),
                    o.outcome.clone(),
                ]
            })
            .collect();
        output::table(&["REQUEST", "MODEL", "OUTCOME"], &rows)?;
        output::line(&format!(
            "\nBalance: {} credits ({} held, {} available)\n\nJournal (newest first):",
            account.balance, account.held, account.available
        ))?;
        super::credits::journal_table(&journal)?;
        output::line(&format!(
            "\nverify: {} ({} entries, {} violations)",
            if report.is_clean() { "ok" } else { "FAILED" },
            report.entries,
            report.violations.len()
        ))?;
        output::line(
            "\nNext: `tollgate init`, then `tollgate users add`, `tollgate credits add` (see README).",
        )?;
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Reserve, then settle or release, as the gateway does; a refusal is an outcome, not an error.
fn run_request(ledger: &mut Ledger, r: &DemoRequest) -> anyhow::Result<String> {
    let hold = HoldRequest {
        user_id: USER.to_owned(),
        request_id: r.id.to_owned(),
        amount: credits(r.reserve)?,
        min_amount: None,
        ttl: HOLD_TTL_DEFAULT,
    };
    match ledger.hold(hold) {
        Ok(_) => {}
        Err(LedgerError::Refused(refusal)) => return Ok(format!("refused (HTTP 402): {refusal}")),
        Err(e) => return Err(e.into()),
    }
    let usage = UsageRecord {
        endpoint: "/v1/chat/completions".to_owned(),
        model: r.model.to_owned(),
        provider: Some("demo".to_owned()),
        power_level: Some(PowerLevel::Balanced),
        ..UsageRecord::default()
    };
    match r.cost {
        Some(cost) => {
            let settled = ledger.settle(Settle {
                user_id: USER.to_owned(),
                request_id: r.id.to_owned(),
                cost: credits(cost)?,
                usage,
            })?;
            Ok(format!(
                "reserved {}, charged {}",
                r.reserve, settled.charged
            ))
        }
        None => {
            let usage = UsageRecord {
                error_type: Some(UsageErrorType::UpstreamError),
                http_status: Some(502),
                ..usage
            };
            let released = ledger.release(Release {
                user_id: USER.to_owned(),
                request_id: r.id.to_owned(),
                usage: Some(usage),
            })?;
            Ok(format!(
                "upstream failed: released {}, charged nothing",
                released.released
            ))
        }
    }
}
