//! Threshold alerts end to end, with the real binaries and a real webhook receiver on loopback:
//! the agent alerts a user once at each of 50/80/100 % of their monthly allowance as their usage
//! crosses it, never again in that period (a second crossing after a restart included), and again
//! in the next period; a webhook that always fails is retried, then the alert dropped and counted;
//! the server alerts a fleet user spending through agents once per threshold (allowance and low
//! balance), retrying a refused delivery.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tollgate_e2e::{Agent, Database, Gateway, Server, eventually};
use tollgate_mock_upstream::MockUpstream;

const WAIT: Duration = Duration::from_secs(30);

/// A webhook receiver: refuses (500) its first `fail_first` calls, then records each body.
struct Hook {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
    calls: Arc<AtomicUsize>,
}

impl Hook {
    async fn start(fail_first: usize) -> Hook {
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let calls: Arc<AtomicUsize> = Arc::default();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post({
                let (bodies, calls) = (bodies.clone(), calls.clone());
                move |axum::Json(body): axum::Json<Value>| {
                    let (bodies, calls) = (bodies.clone(), calls.clone());
                    async move {
                        if calls.fetch_add(1, Ordering::SeqCst) < fail_first {
                            return StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        bodies.lock().unwrap().push(body);
                        StatusCode::OK
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Hook { url, bodies, calls }
    }

    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }

    /// `user`'s alerts received so far: (kind, threshold, period start).
    fn of(&self, user: &str) -> Vec<(String, String, String)> {
        self.bodies()
            .iter()
            .filter(|b| b["user"] == user)
            .map(|b| {
                (
                    b["kind"].as_str().unwrap().to_owned(),
                    b["threshold"].as_str().unwrap().to_owned(),
                    b["period"]["start"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// Waits until `user` has an alert at `threshold`.
    async fn wait_for(&self, user: &str, threshold: &str) {
        eventually(&format!("{user}'s alert at {threshold}"), WAIT, || async {
            self.of(user)
                .iter()
                .any(|(_, t, _)| t == threshold)
                .then_some(())
        })
        .await;
    }
}

/// One chat (the same prompt every time, so the same cost); the status and the credits charged.
async fn chat(http: &reqwest::Client, gateway: &str, key: &str) -> (u16, Decimal) {
    let r = http
        .post(format!("{gateway}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "gpt-4o-mini", "max_tokens": 100,
            "messages": [{"role": "user", "content": "alert mock:tokens=40"}]}))
        .send()
        .await
        .unwrap();
    let charged = r
        .headers()
        .get("x-tollgate-credits-charged")
        .map_or(Decimal::ZERO, |v| v.to_str().unwrap().parse().unwrap());
    (r.status().as_u16(), charged)
}

/// A chat that must be served.
async fn served(http: &reqwest::Client, gateway: &str, key: &str) {
    assert_eq!(chat(http, gateway, key).await.0, 200);
}

/// A user at `tier` with `allowance` a month, 10 credits bought and an API key.
fn user_at(agent: &Agent, name: &str, tier: &str, allowance: Decimal) -> String {
    agent.ok(&[
        "users",
        "add",
        name,
        "--tier",
        tier,
        "--monthly-allowance",
        &allowance.to_string(),
    ]);
    agent.ok(&["credits", "add", name, "10", "--type", "purchase"]);
    agent.json(&["users", "api-key", "create", name, "--name", "t"])["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A starter user.
fn user(agent: &Agent, name: &str, allowance: Decimal) -> String {
    user_at(agent, name, "starter", allowance)
}

/// What one [`chat`] costs a user at `tier`, measured on a throwaway standalone agent.
async fn cost_of_a_chat(upstream: &str, tier: &str) -> Decimal {
    let probe = Agent::init("probe");
    let key = user_at(&probe, "probe", tier, Decimal::ZERO);
    let gateway = probe.start_gateway(upstream, &[]);
    let (status, charged) = chat(&reqwest::Client::new(), &gateway.url, &key).await;
    assert_eq!(status, 200);
    assert!(charged > Decimal::ZERO);
    charged
}

fn gateway_with(agent: &Agent, upstream: &str, config: &str, envs: &[(&str, &str)]) -> Gateway {
    let path = agent.data_dir().join("alerts.toml");
    std::fs::write(&path, config).unwrap();
    let mut all = vec![("TOLLGATE_CONFIG", path.to_str().unwrap())];
    all.extend_from_slice(envs);
    agent.start_gateway(upstream, &all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_alerts_once_per_allowance_threshold_and_period_across_a_restart() {
    let upstream = MockUpstream::spawn().await.unwrap();
    let c = cost_of_a_chat(&upstream.url(), "starter").await;
    let hook = Hook::start(0).await;
    let config = format!(
        "[alerts]\nwebhook_url = \"{}\"\nallowance_thresholds = [50, 80, 100]\nbackoff_initial_ms = 5\n",
        hook.url
    );
    let agent = Agent::init("edge");
    let alice = user(&agent, "alice", c * Decimal::from(10));
    let http = reqwest::Client::new();
    let mut gateway = gateway_with(&agent, &upstream.url(), &config, &[]);

    // Each chat uses 10 % of alice's allowance: the 5th reaches 50 %, the 8th 80 %, the 10th
    // 100 %. Alerts go out in order, so when one arrives any earlier one would have too.
    let thresholds =
        |user: &str| -> Vec<String> { hook.of(user).into_iter().map(|(_, t, _)| t).collect() };
    for n in 1..=12 {
        served(&http, &gateway.url, &alice).await;
        match n {
            5 => hook.wait_for("alice", "50").await,
            8 => hook.wait_for("alice", "80").await,
            10 => hook.wait_for("alice", "100").await,
            _ => {}
        }
        let expected: &[&str] = match n {
            1..=4 => &[],
            5..=7 => &["50"],
            8..=9 => &["50", "80"],
            _ => &["50", "80", "100"],
        };
        if matches!(n, 5 | 8 | 10) {
            assert_eq!(thresholds("alice"), expected, "after chat {n}");
        }
    }
    let first = hook.bodies()[0].clone();
    assert_eq!(first["kind"], "allowance_used");
    assert_eq!(first["source"], "agent");
    assert_eq!(first["value"], "50");
    assert_eq!(
        first["used"],
        (c * Decimal::from(5)).normalize().to_string()
    );
    let period = hook.of("alice")[0].2.clone();

    // The allowance doubled (alice is back at 60 %), the gateway restarted (kill -9): crossing
    // 80 % and 100 % again in the same period sends nothing.
    agent.ok(&[
        "users",
        "set",
        "alice",
        "--monthly-allowance",
        &(c * Decimal::from(20)).to_string(),
    ]);
    gateway.process.kill();
    gateway = gateway_with(&agent, &upstream.url(), &config, &[]);
    for _ in 13..=20 {
        served(&http, &gateway.url, &alice).await;
    }
    // A sentinel: bob's one chat reaches all three of his thresholds; once his 100 % is in, a
    // second alert of alice's would have been too.
    let bob = user(&agent, "bob", c);
    served(&http, &gateway.url, &bob).await;
    hook.wait_for("bob", "100").await;
    assert_eq!(thresholds("alice"), ["50", "80", "100"], "sent again");
    assert_eq!(thresholds("bob"), ["50", "80", "100"]);

    // The next billing period (the clock a month and two days on): alice's first chats renew
    // her cycle and her usage starts over; at 50 % she is alerted again, for the new period.
    gateway.process.kill();
    gateway = gateway_with(
        &agent,
        &upstream.url(),
        &config,
        &[("TOLLGATE_CLOCK_SKEW_SECS", "2764800")],
    );
    for _ in 1..=10 {
        served(&http, &gateway.url, &alice).await;
    }
    hook.wait_for("alice", "50").await;
    eventually("alice's second 50 % alert", WAIT, || async {
        (hook.of("alice").len() == 4).then_some(())
    })
    .await;
    let alerts = hook.of("alice");
    assert_eq!(alerts[3].1, "50");
    assert!(alerts[3].2 > period, "{alerts:?}: not a later period");
    drop(gateway);
    agent.assert_verified();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_is_retried_then_the_alert_dropped_and_counted() {
    let upstream = MockUpstream::spawn().await.unwrap();
    let c = cost_of_a_chat(&upstream.url(), "starter").await;
    let hook = Hook::start(usize::MAX).await;
    let config = format!(
        "[alerts]\nwebhook_url = \"{}\"\nattempts_max = 3\nbackoff_initial_ms = 5\n",
        hook.url
    );
    let agent = Agent::init("edge");
    // One chat uses the whole allowance: three alerts (50, 80, 100 %), three attempts each.
    let key = user(&agent, "carol", c);
    let gateway = gateway_with(&agent, &upstream.url(), &config, &[]);
    let http = reqwest::Client::new();
    served(&http, &gateway.url, &key).await;
    let metrics = eventually("three alerts dropped", WAIT, || async {
        let text = http
            .get(format!("{}/metrics", gateway.admin_url))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .any(|l| l == "tollgate_alerts_dropped_total 3")
            .then_some(text)
    })
    .await;
    assert!(metrics.contains("tollgate_alerts_dropped_total 3"));
    assert_eq!(
        hook.calls.load(Ordering::SeqCst),
        9,
        "3 alerts × 3 attempts"
    );
    assert!(hook.bodies().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_alerts_a_fleet_user_once_per_threshold() {
    let upstream = MockUpstream::spawn().await.unwrap();
    let c = cost_of_a_chat(&upstream.url(), "professional").await;
    // The first delivery is refused: retried.
    let hook = Hook::start(1).await;
    let given = c * Decimal::from(1000);
    // What ann has left (pool + held by agents − debt) is given − used: below this past 9.5
    // chats' worth.
    let low = given - c * Decimal::from(19) / Decimal::from(2);
    let db = Database::create().await;
    let server = Server {
        database_url: db.url.clone(),
        envs: vec![
            ("TOLLGATE_SERVER_ALERT_WEBHOOK_URL".into(), hook.url.clone()),
            ("TOLLGATE_SERVER_ALERT_LOW_BALANCE".into(), low.to_string()),
            ("TOLLGATE_SERVER_ALERT_POLL_MS".into(), "50".into()),
            (
                "TOLLGATE_SERVER_ALERT_BACKOFF_INITIAL_MS".into(),
                "10".into(),
            ),
        ],
    };
    server.ok(&["migrate"]);
    let running = server.start("127.0.0.1:0");
    let base = format!("http://{}", running.addr);
    let (agents, gateways) = tollgate_e2e::enrolled_gateways(&server, &base, &upstream.url(), 2);

    // A fleet user, funded centrally, allowance ten chats a month.
    server.ok(&[
        "users",
        "set",
        "ann",
        "--tier",
        "professional",
        "--monthly-allowance",
        &(c * Decimal::from(10)).to_string(),
    ]);
    let key: Value = serde_json::from_str(&server.ok(&[
        "users", "api-key", "create", "ann", "--name", "fleet", "--json",
    ]))
    .unwrap();
    let key = key["key"].as_str().unwrap().to_owned();
    server.ok(&[
        "credits",
        "grant",
        "ann",
        &given.to_string(),
        "--operation-id",
        "fund-ann",
    ]);

    // Chats served on alternating agents (a 402 while a grant is on its way is retried) until
    // the server has booked more than the allowance: a chat may cost less than the probe's when
    // a small grant caps its output, so the test goes by what the server counted.
    let http = reqwest::Client::new();
    let pg = db.client().await;
    let pushed = |agents: &[Agent]| {
        agents.iter().all(|a| {
            let s = a.json(&["sync", "status"]);
            s["head_seq"] == s["acked_seq"]
        })
    };
    let push_all = || async {
        eventually("every agent pushed", WAIT, || async {
            if pushed(&agents) {
                return Some(());
            }
            for a in &agents {
                a.ok(&["sync", "now"]);
            }
            None
        })
        .await;
    };
    let used = || async {
        let used: Decimal = pg
            .query_one(
                "SELECT credits_used_this_month FROM user_credits WHERE user_id = 'ann'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        used
    };
    let allowance = c * Decimal::from(10);
    let mut n = 0;
    while used().await <= allowance {
        assert!(n < 40, "40 chats and the allowance is not used up");
        let url = &gateways[n % 2].1;
        eventually("a chat served", WAIT, || async {
            (chat(&http, url, &key).await.0 == 200).then_some(())
        })
        .await;
        n += 1;
        push_all().await;
    }
    assert!(
        given - used().await < low,
        "below the low-balance threshold too"
    );
    eventually("four alerts sent", WAIT, || async {
        let pending: i64 = pg
            .query_one(
                "SELECT count(*) FROM user_alerts WHERE sent_at IS NULL",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (pending == 0 && hook.bodies().len() == 4).then_some(())
    })
    .await;
    let mut got: Vec<(String, String)> = hook
        .bodies()
        .iter()
        .map(|b| {
            assert_eq!(b["user"], "ann");
            assert_eq!(b["source"], "server");
            let value: Decimal = b["value"].as_str().unwrap().parse().unwrap();
            let threshold: Decimal = b["threshold"].as_str().unwrap().parse().unwrap();
            if b["kind"] == "low_balance" {
                assert!(value < threshold, "{b}");
            } else {
                assert!(value >= threshold, "{b}");
            }
            assert!(
                b["period"]["start"]
                    .as_str()
                    .unwrap()
                    .ends_with("-01T00:00:00Z"),
                "{b}"
            );
            (
                b["kind"].as_str().unwrap().to_owned(),
                b["threshold"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    let low_text = low.normalize().to_string();
    assert_eq!(
        got,
        [
            ("allowance_used".to_owned(), "100".to_owned()),
            ("allowance_used".to_owned(), "50".to_owned()),
            ("allowance_used".to_owned(), "80".to_owned()),
            ("low_balance".to_owned(), low_text),
        ]
    );
    assert_eq!(hook.calls.load(Ordering::SeqCst), 5, "one refused, retried");
    let metrics = http
        .get(format!("http://{}/metrics", running.admin_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tollgate_server_alerts_total{outcome=\"sent\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_server_alerts_total{outcome=\"retried\"} 1"),
        "{metrics}"
    );

    // More usage in the same period: no new alert is even recorded.
    for (_, url) in &gateways {
        served(&http, url, &key).await;
    }
    push_all().await;
    let rows: i64 = pg
        .query_one("SELECT count(*) FROM user_alerts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 4);
}
