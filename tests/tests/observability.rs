//! What an operator monitors: the Grafana dashboards (`deploy/grafana/`) and the Prometheus
//! alert rules (`deploy/prometheus/`) against the real binaries' `/metrics`, and the sync
//! metrics' values through an outage.
//!
//! - The rules pass `promtool check rules`, and their unit tests (`tollgate-rules.test.yml`,
//!   promtool's format) pass `promtool test rules`; promtool comes from Debian's package
//!   (`tollgate_e2e::promtool`).
//! - The dashboards are importable as they are: a `datasource` variable every panel and query
//!   uses, only Grafana's built-in panel types.
//! - Every metric a dashboard or a rule names exists on a live `/metrics`: an enrolled agent
//!   and the server, after traffic that makes every labelled family appear (served, streamed,
//!   refused and failed requests, a fleet user's grant, a Stripe delivery, a reconcile). The
//!   agent dashboard is checked against the agent, the server's against the server, the rules
//!   against both.
//! - The sync gauges follow an outage: entries not acknowledged and their age grow while the
//!   server is down, push failures are counted as unreachable, and all return to 0 once it is
//!   back; the server's per-agent gauges show a quarantine until the agent is released.
//!
//! Metric names are read from PromQL by one rule (see [`metric_names`]): after removing string
//! literals, label matchers `{…}`, ranges `[…]`, grouping clauses (`by (…)`, `without (…)`,
//! `on (…)`, `ignoring (…)`, `group_left (…)`, `group_right (…)`), Grafana variables (`$x`,
//! `${x}`) and numbers, every identifier that is neither a PromQL keyword nor followed by `(`
//! (a function or aggregation) is a metric name. The test fails on any name the live
//! `/metrics` does not have.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use tollgate_e2e::{Agent, Database, Server, eventually, ok, small_chat, word_with_prefix};
use tollgate_mock_upstream::MockUpstream;

/// How long a state another process reaches may take (generous for a loaded CI machine).
const CONVERGE: Duration = Duration::from_secs(60);

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

// ---------------------------------------------------------------------------------------------
// Reading PromQL and the exposition

/// The words of PromQL's grouping clauses, each followed by a label list in parentheses.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// PromQL's keywords: never metric names.
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
    "atan2",
];

/// The metric names `expr` refers to, by the rule in this file's doc.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // String literals first (they may hold braces), then what sits in braces and brackets.
    let mut text = String::new();
    let mut chars = expr.chars().peekable();
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                let quote = c;
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == quote {
                        break;
                    }
                }
                text.push(' ');
            }
            '{' => depth_brace += 1,
            '}' => {
                depth_brace -= 1;
                text.push(' ');
            }
            '[' => depth_bracket += 1,
            ']' => {
                depth_bracket -= 1;
                text.push(' ');
            }
            _ if depth_brace > 0 || depth_bracket > 0 => {}
            _ => text.push(c),
        }
    }
    // Then grouping clauses: `by (…)` and its kin, label lists rather than names.
    let chars: Vec<char> = text.chars().collect();
    let mut text = Vec::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        let word_start = i == 0 || !(chars[i - 1].is_ascii_alphanumeric() || chars[i - 1] == '_');
        let clause = GROUPING.iter().find(|w| {
            let w: Vec<char> = w.chars().collect();
            word_start
                && chars[i..].starts_with(&w)
                && chars[i + w.len()..]
                    .iter()
                    .find(|c| !c.is_whitespace())
                    .is_some_and(|c| *c == '(')
        });
        if clause.is_some() {
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            text.push(' ');
        } else {
            text.push(chars[i]);
        }
        i += 1;
    }
    // Tokens: variables, numbers, identifiers (and whether a `(` follows).
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        if c == '$' {
            // A Grafana variable: $name or ${name}.
            i += 1;
            while i < text.len() && (text[i].is_alphanumeric() || "_{}:".contains(text[i])) {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && text.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number (1e9, 0.99, 0x1F): its letters are not names.
            while i < text.len() && (text[i].is_alphanumeric() || text[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < text.len() && (text[i].is_ascii_alphanumeric() || "_:".contains(text[i])) {
                i += 1;
            }
            let word: String = text[start..i].iter().collect();
            let called = text[i..]
                .iter()
                .find(|c| !c.is_whitespace())
                .is_some_and(|c| *c == '(');
            if !called && !KEYWORDS.contains(&word.to_lowercase().as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The sample names of a text exposition (`name{…} value` or `name value`).
fn sample_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The value of exactly `series` (`name` or `name{labels}` as exposed), if present.
fn value(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split(' ').next()?.parse().ok()
    })
}

async fn scrape(http: &reqwest::Client, admin_url: &str) -> String {
    let response = http
        .get(format!("{admin_url}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

// ---------------------------------------------------------------------------------------------
// The files

/// Every `expr` of the rules file, with its alert's name.
fn rule_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy().join("prometheus/tollgate-rules.yml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut out = Vec::new();
    for group in doc["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"]
                .as_str()
                .or(rule["record"].as_str())
                .unwrap()
                .to_owned();
            out.push((name, rule["expr"].as_str().unwrap().to_owned()));
        }
    }
    assert!(!out.is_empty());
    out
}

/// The dashboards by file name.
fn dashboards() -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = std::fs::read_dir(deploy().join("grafana"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&p).unwrap();
            let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, json)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        out.push(panel);
        if let Some(inner) = panel["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

/// Every query of a dashboard: each panel target's `expr`, and each query variable's query.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if var["type"] == "query" {
            let query = var["query"]["query"]
                .as_str()
                .or(var["query"].as_str())
                .unwrap();
            // label_values(metric, label): the metric.
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .and_then(|q| q.rsplit_once(','))
                .map_or(query, |(metric, _)| metric);
            out.push(inner.to_owned());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn metric_names_follow_the_documented_rule() {
    let names = metric_names(
        r#"sum by (instance, le) (rate(tollgate_ledger_commit_seconds_bucket{instance=~"$instance",x="a{b}"}[$__rate_interval])) / 1e9
           and on (agent) max without (kind) (tollgate_server_agent_lag_entries) > bool 0.5
           or time() - tollgate_server_reconcile_last_run_timestamp_seconds offset 5m
           unless ${datasource_var} histogram_quantile(0.99, x:recorded:rate5m)"#,
    );
    let expected: BTreeSet<String> = [
        "tollgate_ledger_commit_seconds_bucket",
        "tollgate_server_agent_lag_entries",
        "tollgate_server_reconcile_last_run_timestamp_seconds",
        "x:recorded:rate5m",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(names, expected);
    let exposition = "# HELP a A.\n# TYPE a counter\na_total{x=\"1\"} 3\nb 4.5\n# EOF\n";
    assert_eq!(
        sample_names(exposition),
        ["a_total", "b"].into_iter().map(str::to_owned).collect()
    );
    assert_eq!(value(exposition, "b"), Some(4.5));
    assert_eq!(value(exposition, "a_total{x=\"1\"}"), Some(3.0));
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests() {
    let promtool = tollgate_e2e::promtool::promtool();
    let dir = deploy().join("prometheus");
    for args in [
        ["check", "rules", "tollgate-rules.yml"],
        ["test", "rules", "tollgate-rules.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?}:\n{text}");
        assert!(text.contains("SUCCESS"), "promtool {args:?}:\n{text}");
    }
    // Every alert an on-call person receives says what it is and what to do.
    let text = std::fs::read_to_string(dir.join("tollgate-rules.yml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    for group in doc["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().unwrap();
            for key in ["summary", "description"] {
                let annotation = rule["annotations"][key].as_str().unwrap_or_default();
                assert!(annotation.len() > 20, "{name} has no {key}");
            }
            assert!(rule["labels"]["severity"].as_str().is_some(), "{name}");
        }
    }
}

/// Grafana's own panel types: importable without a plugin.
const CORE_PANELS: &[&str] = &[
    "row",
    "timeseries",
    "stat",
    "gauge",
    "bargauge",
    "table",
    "text",
];

#[test]
fn dashboards_are_importable_with_a_datasource_variable_and_core_panels() {
    let all = dashboards();
    let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["tollgate-agent.json", "tollgate-server.json"],
        "one dashboard per program"
    );
    for (name, d) in &all {
        assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()), "{name}");
        assert!(d["title"].as_str().is_some(), "{name}");
        assert!(
            d.get("id").is_none_or(Value::is_null),
            "{name}: no fixed id"
        );
        let vars = d["templating"]["list"].as_array().unwrap();
        let datasource = vars
            .iter()
            .find(|v| v["type"] == "datasource")
            .unwrap_or_else(|| panic!("{name}: no datasource variable"));
        assert_eq!(datasource["query"], "prometheus", "{name}");
        let var = format!("${{{}}}", datasource["name"].as_str().unwrap());
        for v in vars.iter().filter(|v| v["type"] == "query") {
            assert_eq!(
                v["datasource"]["uid"], var,
                "{name}: variable {}",
                v["name"]
            );
        }
        let mut queries = 0;
        for panel in panels(d) {
            let kind = panel["type"].as_str().unwrap();
            assert!(
                CORE_PANELS.contains(&kind),
                "{name}: panel type {kind} needs a plugin"
            );
            if kind == "row" {
                continue;
            }
            assert_eq!(
                panel["datasource"]["uid"], var,
                "{name}: panel {}",
                panel["title"]
            );
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{name}: panel {}", panel["title"]);
            for t in targets {
                assert_eq!(t["datasource"]["uid"], var, "{name}: {}", panel["title"]);
                queries += 1;
            }
        }
        assert!(queries >= 10, "{name}: {queries} queries");
        for requirement in d["__requires"].as_array().into_iter().flatten() {
            let id = requirement["id"].as_str().unwrap();
            assert!(
                ["grafana", "prometheus"].contains(&id) || CORE_PANELS.contains(&id),
                "{name} requires {id}"
            );
        }
    }
}

/// The admin API's reconcile (a full token), which the server's reconcile gauges show.
async fn reconcile(http: &reqwest::Client, base: &str, token: &str) {
    let response = http
        .get(format!("{base}/admin/v1/reconcile"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Enrols a new agent `name` with `server` at `base` and starts its gateway before `upstream`.
fn enrolled(
    server: &Server,
    base: &str,
    name: &str,
    upstream: &str,
) -> (Agent, tollgate_e2e::Gateway) {
    let agent = Agent::init(name);
    let token = word_with_prefix(&server.ok(&["agents", "enroll", name]), "tge_");
    ok(
        agent.command(&["enroll", "--server", base, "--token", "-"]),
        Some(&token),
    );
    let gateway = agent.start_gateway(upstream, &[]);
    (agent, gateway)
}

/// A chat at `gateway` with `key` and `content` (streamed or not): its status.
async fn chat(
    http: &reqwest::Client,
    gateway: &str,
    key: &str,
    content: &str,
    stream: bool,
) -> u16 {
    let response = http
        .post(format!("{gateway}/v1/chat/completions"))
        .bearer_auth(key)
        .json(
            &json!({"model": "gpt-4o-mini", "max_tokens": 50, "stream": stream,
                      "messages": [{"role": "user", "content": content}]}),
        )
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let _ = response.bytes().await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_a_dashboard_or_rule_names_is_on_a_live_metrics() {
    let db = Database::create().await;
    let server = Server::migrated(&db);
    let (_server_process, addr, server_admin) = server.serve_with_admin("127.0.0.1:0");
    let base = format!("http://{addr}");
    let server_admin = format!("http://{server_admin}");
    let token = word_with_prefix(
        &server.ok(&["admin-tokens", "create", "ops", "--role", "full"]),
        "tgadm_",
    );
    let upstream = MockUpstream::spawn().await.unwrap();
    let (_agent, gateway) = enrolled(&server, &base, "edge-0", &upstream.url());
    let http = reqwest::Client::new();

    // A home user with credit, one without, and a fleet user with a pool.
    let alice = server.user_with_key("alice", "edge-0", "professional");
    server.ok(&[
        "credits",
        "grant",
        "alice",
        "5",
        "--operation-id",
        "fund-alice",
    ]);
    let bob = server.user_with_key("bob", "edge-0", "professional");
    server.ok(&["users", "set", "ann", "--tier", "professional"]);
    let made: Value = serde_json::from_str(
        &server.ok(&["users", "api-key", "create", "ann", "--name", "k", "--json"]),
    )
    .unwrap();
    let ann = made["key"].as_str().unwrap().to_owned();
    server.ok(&["credits", "grant", "ann", "5", "--operation-id", "fund-ann"]);

    // Served (once alice's credit has arrived), streamed, refused, failed upstream.
    eventually("alice's credit on the agent", CONVERGE, || async {
        (small_chat(&http, &gateway.url, &alice, 0).await == 200).then_some(())
    })
    .await;
    assert_eq!(
        chat(&http, &gateway.url, &alice, "s mock:tokens=8", true).await,
        200
    );
    assert_eq!(
        chat(&http, &gateway.url, &alice, "f mock:status=500", false).await,
        502
    );
    eventually("bob's key on the agent", CONVERGE, || async {
        (small_chat(&http, &gateway.url, &bob, 1).await == 402).then_some(())
    })
    .await;
    // The fleet user: refused until the escrow loop has a grant, then served.
    eventually("a grant of ann's pool", CONVERGE, || async {
        (small_chat(&http, &gateway.url, &ann, 2).await == 200).then_some(())
    })
    .await;
    // A Stripe delivery (Stripe is not configured here: counted as such) and a reconcile.
    let response = http
        .post(format!("{base}/stripe/webhook"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(!response.status().is_success());

    // Everything pushed before the scrape (the sync gauges say so themselves).
    let agent_text = eventually("the agent to be synced", CONVERGE, || async {
        let text = scrape(&http, &gateway.admin_url).await;
        (value(&text, "tollgate_sync_unacked_entries") == Some(0.0)
            && value(&text, "tollgate_sync_head_seq").is_some_and(|h| h >= 4.0))
        .then_some(text)
    })
    .await;
    reconcile(&http, &base, &token).await;
    let server_text = scrape(&http, &server_admin).await;

    // Values the traffic above implies.
    assert_eq!(value(&agent_text, "tollgate_fleet_users"), Some(1.0));
    assert!(value(&agent_text, "tollgate_fleet_credits_held_nanocredits").unwrap() > 0.0);
    assert!(
        value(
            &agent_text,
            "tollgate_fleet_grant_requests_total{outcome=\"granted\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(value(&agent_text, "tollgate_sync_push_blocked"), Some(0.0));
    assert!(
        value(
            &server_text,
            "tollgate_server_grants_total{outcome=\"granted\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        value(&server_text, "tollgate_server_fleet_users"),
        Some(1.0)
    );
    assert_eq!(
        value(&server_text, "tollgate_server_database_up"),
        Some(1.0)
    );
    assert_eq!(
        value(&server_text, "tollgate_server_agents{status=\"active\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(
            &server_text,
            "tollgate_server_agent_lag_entries{agent=\"edge-0\"}"
        ),
        Some(0.0)
    );
    assert!(
        value(
            &server_text,
            "tollgate_server_reconcile_last_run_timestamp_seconds"
        )
        .unwrap()
            > 0.0
    );

    // The names.
    let agent_names = sample_names(&agent_text);
    let server_names = sample_names(&server_text);
    let mut missing = Vec::new();
    let mut checked = 0;
    for (file, dashboard) in dashboards() {
        let live = if file.contains("server") {
            &server_names
        } else {
            &agent_names
        };
        for expr in dashboard_exprs(&dashboard) {
            for name in metric_names(&expr) {
                checked += 1;
                if !live.contains(&name) {
                    missing.push(format!("{file}: {name} (in {expr})"));
                }
            }
        }
    }
    for (alert, expr) in rule_exprs() {
        for name in metric_names(&expr) {
            checked += 1;
            if !agent_names.contains(&name) && !server_names.contains(&name) {
                missing.push(format!("rule {alert}: {name} (in {expr})"));
            }
        }
    }
    assert!(
        checked > 40,
        "only {checked} names found: is the rule right?"
    );
    assert!(
        missing.is_empty(),
        "metrics named but not on a live /metrics:\n{}\n\nagent:\n{agent_names:?}\nserver:\n{server_names:?}",
        missing.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_metrics_follow_an_outage_and_a_quarantine() {
    let db = Database::create().await;
    let server = Server::migrated(&db);
    // A fixed port, so the restarted server answers where the agent points.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let (mut first, addr, _) = server.serve_with_admin(&listen);
    let base = format!("http://{addr}");
    let upstream = MockUpstream::spawn().await.unwrap();
    let (agent, gateway) = enrolled(&server, &base, "edge-0", &upstream.url());
    let http = reqwest::Client::new();
    let alice = server.user_with_key("alice", "edge-0", "professional");
    server.ok(&[
        "credits",
        "grant",
        "alice",
        "5",
        "--operation-id",
        "fund-alice",
    ]);
    eventually("alice's credit on the agent", CONVERGE, || async {
        (small_chat(&http, &gateway.url, &alice, 0).await == 200).then_some(())
    })
    .await;
    let metrics = || scrape(&http, &gateway.admin_url);
    // The gauges are refreshed every second: wait for them to show the journal's real head.
    let head = agent.json(&["sync", "status"])["head_seq"]
        .as_i64()
        .unwrap() as f64;
    eventually("everything acknowledged", CONVERGE, || async {
        let text = metrics().await;
        (value(&text, "tollgate_sync_acked_seq") == Some(head)
            && value(&text, "tollgate_sync_unacked_entries") == Some(0.0)
            && value(&text, "tollgate_sync_oldest_unacked_age_seconds") == Some(0.0))
        .then_some(())
    })
    .await;

    // The server goes away; the agent keeps serving, and its entries wait.
    first.kill();
    for n in 1..=3 {
        assert_eq!(small_chat(&http, &gateway.url, &alice, n).await, 200);
    }
    let text = eventually(
        "three entries waiting, pushes failing",
        CONVERGE,
        || async {
            let text = metrics().await;
            let failed = value(
                &text,
                "tollgate_sync_errors_total{loop=\"push\",kind=\"unreachable\"}",
            )?;
            (value(&text, "tollgate_sync_unacked_entries") == Some(3.0)
                && failed >= 1.0
                && value(&text, "tollgate_sync_seconds_since_success{loop=\"push\"}")? > 1.0)
                .then_some(text)
        },
    )
    .await;
    let age = value(&text, "tollgate_sync_oldest_unacked_age_seconds").unwrap();
    assert!(age > 0.0, "{text}");
    eventually("the oldest entry's age to grow", CONVERGE, || async {
        (value(&metrics().await, "tollgate_sync_oldest_unacked_age_seconds")? > age + 1.0)
            .then_some(())
    })
    .await;

    // Back on the same address: everything is pushed, and the gauges return to 0.
    let (_second, _, server_admin) = server.serve_with_admin(&listen);
    let server_admin = format!("http://{server_admin}");
    eventually("the entries pushed after the outage", CONVERGE, || async {
        let text = metrics().await;
        (value(&text, "tollgate_sync_unacked_entries") == Some(0.0)
            && value(&text, "tollgate_sync_oldest_unacked_age_seconds") == Some(0.0)
            && value(&text, "tollgate_sync_seconds_since_success{loop=\"push\"}")? < 5.0)
            .then_some(())
    })
    .await;
    let text = scrape(&http, &server_admin).await;
    assert_eq!(
        value(&text, "tollgate_server_agent_lag_entries{agent=\"edge-0\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "tollgate_server_agents{status=\"quarantined\"}"),
        Some(0.0)
    );
    assert_eq!(
        value(&text, "tollgate_server_agent_quarantined{agent=\"edge-0\"}"),
        Some(0.0)
    );

    // A quarantine (set as ingest sets it) shows per agent until the admin releases it.
    let pg = db.client().await;
    pg.execute(
        "UPDATE agents SET status = 'quarantined', quarantine_reason = 'test' WHERE name = $1",
        &[&"edge-0"],
    )
    .await
    .unwrap();
    let text = scrape(&http, &server_admin).await;
    assert_eq!(
        value(&text, "tollgate_server_agent_quarantined{agent=\"edge-0\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "tollgate_server_agents{status=\"quarantined\"}"),
        Some(1.0)
    );
    // The agent's own side: its next push is refused, and it says so.
    assert_eq!(small_chat(&http, &gateway.url, &alice, 9).await, 200);
    eventually(
        "the agent to report its pushes refused",
        CONVERGE,
        || async {
            let text = metrics().await;
            (value(&text, "tollgate_sync_push_blocked") == Some(1.0)
                && value(
                    &text,
                    "tollgate_sync_errors_total{loop=\"push\",kind=\"refused\"}",
                )? >= 1.0)
                .then_some(())
        },
    )
    .await;
    server.ok(&["agents", "release", "edge-0"]);
    let text = scrape(&http, &server_admin).await;
    assert_eq!(
        value(&text, "tollgate_server_agent_quarantined{agent=\"edge-0\"}"),
        Some(0.0)
    );
    assert_eq!(
        value(&text, "tollgate_server_agents{status=\"active\"}"),
        Some(1.0)
    );
}
