//! `tollgate usage report` through the real binary: a data dir built with the CLI, usage rows
//! written through the library's ledger (only the gateway writes them otherwise), then exact
//! table, JSON and CSV output, the user and time filters, and one-line errors for bad values.

use std::sync::Arc;

use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};
use tollgate::ledger::clock::to_text;
use tollgate::ledger::{
    HoldRequest, Ledger, ManualClock, OpenMode, PowerLevel, Release, Settle, UsageErrorType,
    UsageRecord,
};
use tollgate_schema::money::Credits;

use tollgate_e2e::Agent;

const ODD_MODEL: &str = "my \"custom\", model";

fn c(text: &str) -> Credits {
    text.parse().unwrap()
}

fn usage(model: &str, provider: Option<&str>, latency: u32) -> UsageRecord {
    UsageRecord {
        endpoint: "/v1/chat/completions".into(),
        model: model.into(),
        provider: provider.map(str::to_owned),
        power_level: Some(PowerLevel::Balanced),
        prompt_tokens: 100,
        completion_tokens: 20,
        latency_ms: Some(latency),
        ..UsageRecord::default()
    }
}

/// alice: a gpt-4o request three days ago; another gpt-4o request and a failed claude request an
/// hour ago. bob: a BYOK request an hour ago whose cost (3) overran its hold (1).
/// Returns the data dir and the UTC days of the two times.
fn books() -> (Agent, String, String) {
    let agent = Agent::init("local");
    agent.ok(&["users", "add", "alice"]);
    agent.ok(&[
        "users",
        "add",
        "bob",
        "--tier",
        "enterprise",
        "--power-level",
        "precision",
    ]);
    agent.ok(&["credits", "add", "alice", "100", "--type", "purchase"]);
    agent.ok(&["credits", "add", "bob", "50", "--type", "purchase"]);
    let now = OffsetDateTime::now_utc();
    let (old, recent) = (now - Duration::days(3), now - Duration::hours(1));
    let clock = ManualClock::new(old);
    let mut ledger = Ledger::open(
        &agent.data_dir().join("tollgate.db"),
        OpenMode::MustExist,
        Arc::new(clock.clone()),
    )
    .unwrap();
    let mut hold = |user: &str, id: &str, amount: &str| {
        ledger
            .hold(HoldRequest {
                user_id: user.into(),
                request_id: id.into(),
                amount: c(amount),
                min_amount: None,
                ttl: Duration::minutes(5),
            })
            .unwrap();
    };
    hold("alice", "r1", "5");
    let settle = |ledger: &mut Ledger, user: &str, id: &str, cost: &str, u: UsageRecord| {
        ledger
            .settle(Settle {
                user_id: user.into(),
                request_id: id.into(),
                cost: c(cost),
                usage: u,
            })
            .unwrap();
    };
    // LiteLLM's cost as it reports it (a float's text), beside tollgate's 1.5 credits.
    let costed = |cost: &str, latency| UsageRecord {
        metadata: Some(json!({"litellm_response_cost": cost})),
        ..usage("gpt-4o", Some("openai"), latency)
    };
    settle(&mut ledger, "alice", "r1", "1.5", costed("0.15", 100));
    clock.set(recent);
    for (user, id, amount) in [
        ("alice", "r2", "5"),
        ("alice", "r3", "5"),
        ("bob", "r4", "1"),
    ] {
        ledger
            .hold(HoldRequest {
                user_id: user.into(),
                request_id: id.into(),
                amount: c(amount),
                min_amount: None,
                ttl: Duration::minutes(5),
            })
            .unwrap();
    }
    settle(&mut ledger, "alice", "r2", "0.25", costed("2.5e-02", 300));
    ledger
        .release(Release {
            user_id: "alice".into(),
            request_id: "r3".into(),
            usage: Some(UsageRecord {
                error_type: Some(UsageErrorType::Timeout),
                completion_tokens: 0,
                ..usage("claude-sonnet-4", None, 50)
            }),
        })
        .unwrap();
    let byok = UsageRecord {
        is_byok: true,
        power_level: Some(PowerLevel::Precision),
        ..usage(ODD_MODEL, Some("anthropic"), 200)
    };
    settle(&mut ledger, "bob", "r4", "3", byok);
    drop(ledger);
    let day = |t: OffsetDateTime| to_text(t)[..10].to_owned();
    (agent, day(old), day(recent))
}

#[test]
fn a_report_by_model_prints_exact_figures_as_table_json_and_csv() {
    let (agent, _, _) = books();
    let table = agent.ok(&["usage", "report"]);
    let expected = [
        "MODEL               REQUESTS  SUCCESSES  ERRORS  PROMPT TOKENS  COMPLETION TOKENS  CREDITS CHARGED  OVERAGE CREDITS  AVG LATENCY MS  P95 LATENCY MS  BYOK REQUESTS  LITELLM COST USD  LITELLM COSTED REQUESTS",
        "gpt-4o              2         2          0       200            40                 1.75             0                200             300             0              0.175             2",
        "my \"custom\", model  1         1          0       100            20                 1                2                200             200             1              -                 0",
        "claude-sonnet-4     1         0          1       100            0                  0                0                50              50              0              -                 0",
        "total               4         3          1       400            60                 2.75             2                163             300             1              0.175             2",
    ];
    assert_eq!(table.lines().collect::<Vec<_>>(), expected, "\n{table}");

    let report = agent.json(&["usage", "report"]);
    assert_eq!(report["by"], "model");
    assert_eq!(report["user"], Value::Null);
    assert_eq!(report["since"], Value::Null);
    assert_eq!(
        report["groups"][1],
        json!({
            "key": ODD_MODEL,
            "requests": 1,
            "successes": 1,
            "errors": 0,
            "prompt_tokens": 100,
            "completion_tokens": 20,
            "credits_charged": "1",
            "overage_credits": "2",
            "avg_latency_ms": 200,
            "p95_latency_ms": 200,
            "byok_requests": 1,
            "litellm_cost_usd": "0",
            "litellm_costed_requests": 0
        })
    );
    assert_eq!(
        report["total"],
        json!({
            "key": "total",
            "requests": 4,
            "successes": 3,
            "errors": 1,
            "prompt_tokens": 400,
            "completion_tokens": 60,
            "credits_charged": "2.75",
            "overage_credits": "2",
            "avg_latency_ms": 163,
            "p95_latency_ms": 300,
            "byok_requests": 1,
            "litellm_cost_usd": "0.175",
            "litellm_costed_requests": 2
        })
    );
    assert_eq!(
        agent.json(&["usage", "report", "--format", "json"]),
        report,
        "--format json is --json"
    );

    let csv = agent.ok(&["usage", "report", "--format", "csv"]);
    assert_eq!(
        csv,
        "model,requests,successes,errors,prompt_tokens,completion_tokens,credits_charged,overage_credits,avg_latency_ms,p95_latency_ms,byok_requests,litellm_cost_usd,litellm_costed_requests\r\n\
         gpt-4o,2,2,0,200,40,1.75,0,200,300,0,0.175,2\r\n\
         \"my \"\"custom\"\", model\",1,1,0,100,20,1,2,200,200,1,,0\r\n\
         claude-sonnet-4,1,0,1,100,0,0,0,50,50,0,,0\r\n\
         total,4,3,1,400,60,2.75,2,163,300,1,0.175,2\r\n"
    );
}

#[test]
fn reports_group_by_provider_day_and_level_and_filter_by_user_and_time() {
    let (agent, old_day, recent_day) = books();
    let keyed = |args: &[&str]| -> Vec<(String, u64, String)> {
        let report = agent.json(args);
        report["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                (
                    g["key"].as_str().unwrap().to_owned(),
                    g["requests"].as_u64().unwrap(),
                    g["credits_charged"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let s = |t: &str| t.to_owned();
    assert_eq!(
        keyed(&["usage", "report", "--by", "provider"]),
        [
            (s("openai"), 2, s("1.75")),
            (s("anthropic"), 1, s("1")),
            (s("-"), 1, s("0"))
        ]
    );
    assert_eq!(
        keyed(&["usage", "report", "--by", "day"]),
        [(old_day, 1, s("1.5")), (recent_day.clone(), 3, s("1.25"))]
    );
    assert_eq!(
        keyed(&["usage", "report", "--by", "level"]),
        [(s("balanced"), 3, s("1.75")), (s("precision"), 1, s("1"))]
    );
    // The last two hours of alice's requests: r2 and r3.
    let recent = agent.json(&[
        "usage", "report", "--user", "alice", "--since", "2h", "--by", "day",
    ]);
    assert_eq!(recent["user"], "alice");
    assert!(recent["since"].as_str().unwrap().ends_with('Z'));
    assert_eq!(recent["groups"].as_array().unwrap().len(), 1);
    assert_eq!(recent["groups"][0]["key"], recent_day);
    assert_eq!(recent["total"]["requests"], 2);
    assert_eq!(recent["total"]["errors"], 1);
    assert_eq!(recent["total"]["credits_charged"], "0.25");
    assert_eq!(
        keyed(&["usage", "report", "--user", "bob", "--since", "7d"]),
        [(s(ODD_MODEL), 1, s("1"))]
    );
    // Nothing in the last 30 minutes: no groups, a zero total.
    let csv = agent.ok(&["usage", "report", "--since", "30m", "--format", "csv"]);
    assert_eq!(
        csv.lines().nth(1),
        Some("total,0,0,0,0,0,0,0,,,0,,0"),
        "{csv}"
    );
    let table = agent.ok(&["usage", "report", "--since", "30m"]);
    assert_eq!(table.lines().count(), 2, "{table}");
    assert!(
        table.lines().nth(1).unwrap().starts_with("total "),
        "{table}"
    );
}

#[test]
fn bad_report_options_are_one_line_errors() {
    let agent = Agent::init("local");
    agent.ok(&["users", "add", "alice"]);
    let cases: &[(&[&str], &str)] = &[
        (
            &["usage", "report", "--by", "user"],
            "invalid --by: unknown grouping \"user\" (expected one of: model, provider, day, level)",
        ),
        (
            &["usage", "report", "--since", "7x"],
            "invalid --since: \"7x\" is not a duration (use a whole number and a unit s, m, h or d, e.g. 30m, 24h, 7d)",
        ),
        (
            &["usage", "report", "--since=-1d"],
            "invalid --since: \"-1d\" is not a duration",
        ),
        (
            &["usage", "report", "--since", "3651d"],
            "invalid --since: \"3651d\" is longer than 3650d",
        ),
        (
            &["usage", "report", "--since", "0s"],
            "invalid --since: \"0s\" is zero",
        ),
        (
            &["usage", "report", "--format", "xml"],
            "invalid --format: \"xml\" (expected one of: table, json, csv)",
        ),
        (
            &["--json", "usage", "report", "--format", "csv"],
            "--json and --format csv disagree",
        ),
        (
            &["usage", "report", "--user", "carol"],
            "unknown user \"carol\"",
        ),
    ];
    for (args, expected) in cases {
        let out = agent.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!("error: {expected}")),
            "{args:?}\n  gave: {stderr}  want: error: {expected}"
        );
    }
}
