//! The gateway at its edges: a client that disconnects mid-stream, hundreds of concurrent
//! requests racing for too little credit, BYOK, low-balance alerts, and a table of bad requests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};
use tollgate::keys::{master, vault};
use tollgate::ledger::{AddCredits, CreditKind, EntryType, PowerLevel, Provider, Tier};
use tollgate_mock_upstream::MockUpstream;
use tollgate_schema::money::Credits;
use zeroize::Zeroizing;

use crate::gateway_support::{
    Gateway, User, assert_books_balance, c, chat_body, mini_cost, usage_rows,
};

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_is_charged_once_for_what_was_streamed() {
    let (gw, keys) = Gateway::start(&[User::new("alice", "10")], |_| {}).await;
    let mut body = chat_body("gpt-4o-mini", "talk mock:endless mock:slow=2");
    body["stream"] = json!(true);
    let mut response = gw.chat(&keys[0], body).await;
    assert_eq!(response.status(), 200);
    // Read until five content chunks arrived, then hang up.
    let mut seen = String::new();
    while seen.matches("\"content\":\"").count() < 6 {
        let chunk = response.chunk().await.unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(response);
    // The gateway cut the upstream stream.
    tokio::time::timeout(Duration::from_secs(10), gw.mock.wait_streams_cancelled(1))
        .await
        .expect("the upstream stream was not cut");
    gw.wait_for("the disconnect's settle", |l| {
        l.account("alice").unwrap().held == Credits::ZERO
    })
    .await;
    let rows = usage_rows(gw.dir.path());
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.error_type.as_deref(), Some("client_disconnected"));
    assert_eq!(row.metadata["usage_estimated"], true);
    // At least what the client read was charged, at the model's price.
    assert!(row.completion_tokens >= 5, "{row:?}");
    assert_eq!(
        row.credits_charged,
        mini_cost(row.prompt_tokens as u64, row.completion_tokens as u64)
    );
    // Charged once: one usage entry in the journal, and the balance says the same.
    let history = gw.ledger().history("alice", 100).unwrap();
    let usage_entries: Vec<_> = history
        .iter()
        .filter(|e| e.transaction_type == EntryType::Usage)
        .collect();
    assert_eq!(usage_entries.len(), 1);
    assert_eq!(
        gw.balance("alice"),
        c("10").checked_sub(row.credits_charged).unwrap()
    );
    let dir = gw.stop().await;
    assert_books_balance(dir.path());
}

#[tokio::test]
async fn hundreds_of_concurrent_requests_never_overdraw_and_refusals_are_402() {
    // Each request really costs 2 × 1,500 + 16 × 6,000 = 99,000 nano-credits; 0.01 credits
    // covers about a hundred of them, while each reserves far more up front.
    const REQUESTS: usize = 300;
    let (gw, keys) = Gateway::start(&[User::new("alice", "0.01")], |_| {}).await;
    let gw = Arc::new(gw);
    let mut tasks = Vec::new();
    for _ in 0..REQUESTS {
        let gw = gw.clone();
        let key = keys[0].clone();
        tasks.push(tokio::spawn(async move {
            let mut body = chat_body("gpt-4o-mini", "hello there");
            body["max_tokens"] = json!(100);
            let r = gw.chat(&key, body).await;
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            (status, body)
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::PAYMENT_REQUIRED => {
                assert_eq!(body["error"]["code"], "insufficient_quota");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
    let gw = Arc::into_inner(gw).unwrap();
    let account = gw.ledger().account("alice").unwrap();
    assert!(!account.balance.is_negative());
    assert_eq!(account.held, Credits::ZERO);
    let rows = usage_rows(gw.dir.path());
    assert_eq!(rows.len(), REQUESTS, "one usage row per request");
    let charged = rows
        .iter()
        .map(|r| r.credits_charged)
        .fold(Credits::ZERO, |a, b| a.checked_add(b).unwrap());
    assert_eq!(c("0.01").checked_sub(charged).unwrap(), account.balance);
    // Every success was charged its metered usage, exactly.
    for row in rows.iter().filter(|r| r.success) {
        assert_eq!(
            row.credits_charged,
            mini_cost(row.prompt_tokens as u64, row.completion_tokens as u64)
        );
    }
    assert_eq!(rows.iter().filter(|r| r.success).count(), ok);
    let dir = gw.stop().await;
    assert_books_balance(dir.path());
}

/// Stores `secret` as alice's default openai key (creating the master key file first).
fn store_openai_key(ledger: &mut tollgate::ledger::Ledger, dir: &std::path::Path, secret: &str) {
    store_key(ledger, dir, "openai", secret);
}

/// Stores `secret` as alice's default key for `provider`, with a fresh master key file.
pub fn store_key(
    ledger: &mut tollgate::ledger::Ledger,
    dir: &std::path::Path,
    provider: &str,
    secret: &str,
) {
    master::init_key_file(dir).unwrap();
    let (key, _) = vault::load_master(ledger, dir, None).unwrap();
    vault::add_key(
        ledger,
        &key,
        "alice",
        provider.parse::<Provider>().unwrap(),
        "main",
        Zeroizing::new(secret.to_owned()),
        true,
    )
    .unwrap();
}

#[tokio::test]
async fn byok_requests_go_to_the_provider_with_the_users_key_and_pay_the_fee() {
    const SECRET: &str = "sk-alice-own-openai-key-1234";
    let provider = MockUpstream::spawn().await.unwrap();
    let provider_url = format!("{}/v1", provider.url());
    let litellm = MockUpstream::spawn().await.unwrap();
    let (gw, keys) = Gateway::start_with(
        litellm,
        &[User::new("alice", "10")],
        |ledger, dir| store_openai_key(ledger, dir, SECRET),
        |config| {
            config.pricing.byok_fee_percent = "10".parse().unwrap();
            config.providers.get_mut("openai").unwrap().base_url = provider_url;
        },
    )
    .await;
    let litellm_before = gw.mock.stats().requests;
    let r = gw
        .chat(&keys[0], chat_body("gpt-4o-mini", "hello there"))
        .await;
    assert_eq!(r.status(), 200);
    // 10 % of the price.
    let expected = Credits::from_nanos(mini_cost(2, 16).nanos() / 10);
    assert_eq!(
        c(r.headers()["x-tollgate-credits-charged"].to_str().unwrap()),
        expected
    );
    assert_eq!(
        provider.stats().last_authorization.as_deref(),
        Some(&*format!("Bearer {SECRET}"))
    );
    assert_eq!(
        gw.mock.stats().requests,
        litellm_before,
        "LiteLLM was not involved"
    );
    let rows = usage_rows(gw.dir.path());
    assert!(rows[0].is_byok && rows[0].success);
    // A model of another provider still goes through LiteLLM with the gateway's key.
    let r = gw
        .chat(&keys[0], chat_body("claude-sonnet-4", "hello there"))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        gw.mock.stats().last_authorization.as_deref(),
        Some("Bearer sk-litellm-test")
    );
    // The key never reached a log file or the usage log.
    let dir = gw.stop().await;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "the BYOK key appears in clear in the data dir"
        );
    }
    assert_books_balance(dir.path());
}

#[tokio::test]
async fn byok_at_a_zero_fee_is_a_free_success() {
    let provider = MockUpstream::spawn().await.unwrap();
    let provider_url = format!("{}/v1", provider.url());
    let litellm = MockUpstream::spawn().await.unwrap();
    let (gw, keys) = Gateway::start_with(
        litellm,
        &[User::new("alice", "0")],
        |ledger, dir| store_openai_key(ledger, dir, "sk-alice-zero-fee-key-5678"),
        |config| config.providers.get_mut("openai").unwrap().base_url = provider_url,
    )
    .await;
    // No credit at all, and still served: it costs nothing.
    let r = gw
        .chat(&keys[0], chat_body("gpt-4o-mini", "hello there"))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tollgate-credits-charged"], "0");
    let rows = usage_rows(gw.dir.path());
    assert!(rows[0].success && rows[0].is_byok);
    assert_eq!(rows[0].credits_charged, Credits::ZERO);
    let dir = gw.stop().await;
    assert_books_balance(dir.path());
}

/// A webhook receiver that refuses its first delivery, then records every body.
struct Webhook {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
    delivered: tokio::sync::watch::Receiver<usize>,
}

async fn webhook() -> Webhook {
    let bodies = Arc::new(Mutex::new(Vec::<Value>::new()));
    let (tx, delivered) = tokio::sync::watch::channel(0usize);
    let tx = Arc::new(tx);
    let calls = Arc::new(Mutex::new(0usize));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let bodies = bodies.clone();
            move |axum::Json(body): axum::Json<Value>| {
                let bodies = bodies.clone();
                let calls = calls.clone();
                let tx = tx.clone();
                async move {
                    let n = {
                        let mut calls = calls.lock().unwrap();
                        *calls += 1;
                        *calls
                    };
                    bodies.lock().unwrap().push(body);
                    if n == 1 {
                        return StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    tx.send_modify(|d| *d += 1);
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Webhook {
        url,
        bodies,
        delivered,
    }
}

#[tokio::test]
async fn a_low_balance_alert_is_sent_once_per_period_and_retried() {
    let mut hook = webhook().await;
    let url = hook.url.clone();
    let (gw, keys) = Gateway::start(
        &[
            User::new("alice", "10"),
            User::new("bob", "10"),
            User::new("carol", "10"),
        ],
        |config| {
            config.alerts.webhook_url = Some(url);
            config.alerts.low_balance_threshold = Some(c("9.99995"));
            config.alerts.backoff_initial_ms = 5;
        },
    )
    .await;
    // alice's first request crosses 9.99995 (10 → 9.999901); the next two stay below it.
    for _ in 0..3 {
        let r = gw
            .chat(&keys[0], chat_body("gpt-4o-mini", "hello there"))
            .await;
        assert_eq!(r.status(), 200);
    }
    // bob crosses last; alerts go out in order, so once bob's is in, alice had all of hers.
    let r = gw
        .chat(&keys[1], chat_body("gpt-4o-mini", "hello there"))
        .await;
    assert_eq!(r.status(), 200);
    tokio::time::timeout(
        Duration::from_secs(10),
        hook.delivered.wait_for(|d| *d >= 2),
    )
    .await
    .expect("alerts were not delivered")
    .unwrap();
    let bodies = hook.bodies.lock().unwrap().clone();
    let users: Vec<&str> = bodies
        .iter()
        .map(|b| b["user_id"].as_str().unwrap())
        .collect();
    // alice's alert twice (refused, then retried), bob's once.
    assert_eq!(users, ["alice", "alice", "bob"]);
    assert_eq!(bodies[0]["event"], "low_balance");
    assert_eq!(bodies[0]["balance"], "9.999901");
    assert_eq!(bodies[0]["threshold"], "9.99995");
    // Topped up above the threshold, alice crosses again on her next charge, in the same
    // billing period: no second alert. carol crosses after her; once carol's alert is in, a
    // second one of alice's would have been too.
    gw.ledger()
        .add_credits(AddCredits::new("alice", c("0.0003"), CreditKind::Bonus))
        .unwrap();
    let r = gw
        .chat(&keys[0], chat_body("gpt-4o-mini", "hello there"))
        .await;
    assert_eq!(r.status(), 200);
    assert!(gw.balance("alice") < c("9.99995"), "alice crossed again");
    let r = gw
        .chat(&keys[2], chat_body("gpt-4o-mini", "hello there"))
        .await;
    assert_eq!(r.status(), 200);
    tokio::time::timeout(
        Duration::from_secs(10),
        hook.delivered.wait_for(|d| *d >= 3),
    )
    .await
    .expect("carol's alert was not delivered")
    .unwrap();
    let bodies = hook.bodies.lock().unwrap().clone();
    let users: Vec<&str> = bodies
        .iter()
        .map(|b| b["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["alice", "alice", "bob", "carol"]);
    assert_eq!(gw.ledger().alerts_claimed("alice").unwrap().len(), 1);
    // Each crossing is counted on /metrics (alice twice, bob and carol once), alerted or not.
    let metrics = gw
        .http
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "tollgate_low_balance_crossings_total 4"),
        "{metrics}"
    );
    gw.stop().await;
}

/// (method, path, Authorization, body, extra header, status, message fragment)
type BadRequest<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    String,
    Option<(&'a str, &'a str)>,
    u16,
    &'a str,
);

#[tokio::test]
async fn bad_requests_get_a_status_and_a_message_naming_the_problem() {
    let mut trial = User::new("trial", "10");
    trial.tier = Tier::Trial;
    trial.level = PowerLevel::Eco;
    let (gw, keys) = Gateway::start(&[User::new("alice", "10"), trial], |config| {
        config.limits.body_bytes_max = 10_000;
    })
    .await;
    let upstream_before = gw.mock.stats().requests;
    let key = &keys[0];
    let chat = "/v1/chat/completions";
    let big = "x".repeat(20_000);
    let cases: Vec<BadRequest> = vec![
        (
            "POST",
            chat,
            None,
            "{}".into(),
            None,
            401,
            "missing API key",
        ),
        (
            "POST",
            chat,
            Some("Basic abc"),
            "{}".into(),
            None,
            401,
            "must be \"Bearer <key>\"",
        ),
        (
            "POST",
            chat,
            Some("Bearer tg_nope"),
            "{}".into(),
            None,
            401,
            "invalid API key",
        ),
        (
            "POST",
            chat,
            Some(key),
            "not json".into(),
            None,
            400,
            "not valid JSON",
        ),
        (
            "POST",
            chat,
            Some(key),
            "[1, 2]".into(),
            None,
            400,
            "must be a JSON object",
        ),
        (
            "POST",
            chat,
            Some(key),
            "{\"messages\": []}".into(),
            None,
            400,
            "missing required field \"model\"",
        ),
        (
            "POST",
            chat,
            Some(key),
            "{\"model\": 7, \"messages\": []}".into(),
            None,
            400,
            "\"model\" must be a non-empty string",
        ),
        (
            "POST",
            chat,
            Some(key),
            "{\"model\": \"gpt-4o-mini\"}".into(),
            None,
            400,
            "missing required field \"messages\"",
        ),
        (
            "POST",
            chat,
            Some(key),
            "{\"model\": \"gpt-4o-mini\", \"messages\": \"hi\"}".into(),
            None,
            400,
            "\"messages\" must be an array",
        ),
        (
            "POST",
            chat,
            Some(key),
            "{\"model\": \"gpt-4o-mini\", \"messages\": [], \"stream\": \"yes\"}".into(),
            None,
            400,
            "\"stream\" must be a boolean",
        ),
        (
            "POST",
            chat,
            Some(key),
            "{\"model\": \"gpt-4o-mini\", \"messages\": [], \"max_tokens\": 0}".into(),
            None,
            400,
            "\"max_tokens\" must be a positive integer",
        ),
        (
            "POST",
            chat,
            Some(key),
            "{\"model\": \"gpt-4o-mini\", \"messages\": [], \"max_completion_tokens\": \"ten\"}"
                .into(),
            None,
            400,
            "\"max_completion_tokens\" must be a positive integer",
        ),
        (
            "POST",
            chat,
            Some(key),
            "{\"model\": \"gpt-9-imaginary\", \"messages\": []}".into(),
            None,
            400,
            "is not in price table",
        ),
        (
            "POST",
            chat,
            Some(key),
            "{\"model\": \"text-embedding-3-small\", \"messages\": []}".into(),
            None,
            400,
            "cannot serve /v1/chat/completions",
        ),
        (
            "POST",
            chat,
            Some(key),
            "{\"model\": \"gpt-4o-mini\", \"messages\": []}".into(),
            Some(("x-tollgate-power-level", "turbo")),
            400,
            "invalid x-tollgate-power-level",
        ),
        (
            "POST",
            chat,
            Some(&keys[1]),
            "{\"model\": \"gpt-4o-mini\", \"messages\": []}".into(),
            Some(("x-tollgate-power-level", "precision")),
            403,
            "not available on the trial tier",
        ),
        (
            "POST",
            "/v1/embeddings",
            Some(key),
            "{\"model\": \"auto\", \"input\": \"x\"}".into(),
            None,
            400,
            "no model the upstream serves fits \"auto\"",
        ),
        (
            "POST",
            "/v1/embeddings",
            Some(key),
            "{\"model\": \"text-embedding-3-small\", \"input\": 5}".into(),
            None,
            400,
            "\"input\" must be a string or an array",
        ),
        (
            "POST",
            chat,
            Some(key),
            format!(
                "{{\"model\": \"gpt-4o-mini\", \"messages\": [{{\"role\": \"user\", \"content\": \"{big}\"}}]}}"
            ),
            None,
            413,
            "request body over 10000 bytes",
        ),
        (
            "GET",
            chat,
            Some(key),
            String::new(),
            None,
            404,
            "GET /v1/chat/completions is not a route",
        ),
        (
            "POST",
            "/v1/images/generations",
            Some(key),
            "{}".into(),
            None,
            404,
            "is not a route of this gateway",
        ),
        (
            "POST",
            "/v1/chat/completions/extra",
            Some(key),
            "{}".into(),
            None,
            404,
            "is not a route",
        ),
    ];
    for (method, path, auth, body, header, status, fragment) in cases {
        let mut request = gw
            .http
            .request(method.parse().unwrap(), gw.url(path))
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(auth) = auth {
            let value = if auth.starts_with("tg_") {
                format!("Bearer {auth}")
            } else {
                auth.to_owned()
            };
            request = request.header("authorization", value);
        }
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap();
        let got = response.status().as_u16();
        let json: Value = response.json().await.unwrap();
        let message = json["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(
            got,
            status,
            "{method} {path} {}: {json}",
            &body[..body.len().min(80)]
        );
        assert!(
            message.contains(fragment),
            "{method} {path}: {message:?} lacks {fragment:?}"
        );
        assert!(json["error"]["type"].is_string() && json["error"]["code"].is_string());
    }
    assert_eq!(
        gw.mock.stats().requests,
        upstream_before,
        "no bad request reached the upstream"
    );
    assert_eq!(gw.balance("alice"), c("10"));
    let dir = gw.stop().await;
    assert_books_balance(dir.path());
}
