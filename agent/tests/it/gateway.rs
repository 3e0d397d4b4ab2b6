//! The gateway end to end over real HTTP: a client → `gateway::serve` → the mock upstream, with
//! the books checked after each request through a second connection to the same SQLite file.

use serde_json::{Value, json};
use tollgate::ledger::{PowerLevel, Tier};

use crate::gateway_support::{
    Gateway, User, assert_books_balance, c, chat_body, mini_cost, usage_rows,
};

/// The mock counts the words of the messages: "hello there" is two prompt tokens.
const HELLO: &str = "hello there";

#[tokio::test]
async fn a_json_chat_is_charged_exactly_its_usage_and_says_so_in_headers() {
    let (gw, keys) = Gateway::start(&[User::new("alice", "10")], |_| {}).await;
    let response = gw.chat(&keys[0], chat_body("gpt-4o-mini", HELLO)).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["usage"]["prompt_tokens"], 2);
    assert_eq!(body["usage"]["completion_tokens"], 16);
    let expected = mini_cost(2, 16);
    let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
    assert_eq!(c(&header("x-tollgate-credits-charged")), expected);
    let balance = c("10").checked_sub(expected).unwrap();
    assert_eq!(c(&header("x-tollgate-balance")), balance);
    assert!(header("x-tollgate-request-id").starts_with("req_"));
    assert_eq!(gw.balance("alice"), balance);
    // The key's last use is recorded.
    let keys_listed = gw.ledger().api_keys("alice").unwrap();
    assert!(keys_listed[0].last_used_at.is_some());
    // Held nothing after: the hold was settled.
    assert_eq!(gw.ledger().account("alice").unwrap().held, c("0"));
    // The upstream got the gateway's key, never the client's.
    let stats = gw.mock.stats();
    assert_eq!(
        stats.last_authorization.as_deref(),
        Some("Bearer sk-litellm-test")
    );
    let rows = usage_rows(gw.dir.path());
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!((row.prompt_tokens, row.completion_tokens), (2, 16));
    assert_eq!(row.credits_charged, expected);
    assert!(row.success);
    assert_eq!(row.metadata["usage_estimated"], false);
    assert_eq!(row.metadata["litellm_call_id"], "mock-call-1");
    assert!(row.metadata["litellm_response_cost"].is_string());
    assert_eq!(row.metadata["price_table"], "builtin-2026-11");
    let dir = gw.stop().await;
    assert_books_balance(dir.path());
    // The request fed provider health (written at the latest when the gateway stops).
    let health = crate::gateway_support::open_ledger(dir.path())
        .provider_health()
        .unwrap();
    assert_eq!(health.len(), 1);
    assert_eq!(
        (health[0].provider.as_str(), health[0].status),
        ("openai", "healthy")
    );
    assert_eq!(health[0].success_rate_permille, Some(1000));
}

/// The output cap the gateway set, from its `x-tollgate-max-tokens` header.
fn max_tokens_header(response: &reqwest::Response) -> u64 {
    response.headers()["x-tollgate-max-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The events of an SSE body, as their data strings.
fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_stream_passes_through_with_usage_hidden_unless_asked_and_settles_before_done() {
    let (gw, keys) = Gateway::start(&[User::new("alice", "10")], |_| {}).await;
    let mut body = chat_body("gpt-4o-mini", &format!("{HELLO} mock:tokens=5"));
    body["stream"] = json!(true);
    let response = gw.chat(&keys[0], body.clone()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = sse_data(&response.text().await.unwrap());
    // role chunk, 5 tokens, finish chunk, [DONE]; no usage chunk: the client did not ask.
    assert_eq!(events.len(), 8, "{events:?}");
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert!(
        events.iter().all(|e| !e.contains("\"usage\"")),
        "{events:?}"
    );
    // The upstream was asked for usage anyway, and the charge is exact.
    let asked = gw.mock.stats().last_body.unwrap();
    assert_eq!(asked["stream_options"]["include_usage"], true);
    let rows = usage_rows(gw.dir.path());
    assert_eq!(rows[0].credits_charged, mini_cost(3, 5));
    assert_eq!(rows[0].metadata["usage_estimated"], false);

    // A client that asks for usage gets the usage chunk before [DONE].
    body["stream_options"] = json!({"include_usage": true});
    let events = sse_data(&gw.chat(&keys[0], body).await.text().await.unwrap());
    assert_eq!(events.len(), 9);
    let usage: Value = serde_json::from_str(&events[7]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    let dir = gw.stop().await;
    assert_books_balance(dir.path());
}

#[tokio::test]
async fn without_reported_usage_the_charge_is_an_estimate_and_marked_so() {
    let (gw, keys) = Gateway::start(&[User::new("alice", "10")], |_| {}).await;
    let response = gw
        .chat(&keys[0], chat_body("gpt-4o-mini", "hi mock:no_usage"))
        .await;
    assert_eq!(response.status(), 200);
    let charged = c(response.headers()["x-tollgate-credits-charged"]
        .to_str()
        .unwrap());
    assert!(charged.is_positive());
    let rows = usage_rows(gw.dir.path());
    assert_eq!(rows[0].metadata["usage_estimated"], true);
    assert_eq!(rows[0].credits_charged, charged);
    let mut body = chat_body("gpt-4o-mini", "hi mock:no_usage mock:tokens=7");
    body["stream"] = json!(true);
    let response = gw.chat(&keys[0], body).await;
    assert!(response.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    let rows = usage_rows(gw.dir.path());
    // A quarter token per byte of generated text (49 bytes), and at least one per chunk.
    assert_eq!(rows[1].completion_tokens, 13);
    assert_eq!(rows[1].metadata["usage_estimated"], true);
    let dir = gw.stop().await;
    assert_books_balance(dir.path());
}

#[tokio::test]
async fn upstream_failures_release_the_hold_and_charge_nothing() {
    let (gw, keys) = Gateway::start(&[User::new("alice", "10")], |config| {
        config.upstream.response_timeout_secs = 1;
    })
    .await;
    let cases = [
        ("mock:status=500", 502, "upstream_error"),
        ("mock:status=503", 502, "upstream_error"),
        ("mock:status=429", 429, "rate_limit"),
        ("mock:status=400", 400, "upstream_error"),
        ("mock:hang", 504, "timeout"),
    ];
    for (i, (directive, status, error_type)) in cases.iter().enumerate() {
        let response = gw.chat(&keys[0], chat_body("gpt-4o-mini", directive)).await;
        assert_eq!(response.status().as_u16(), *status, "{directive}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"]["message"].is_string(), "{directive}: {body}");
        let rows = usage_rows(gw.dir.path());
        assert_eq!(rows.len(), i + 1, "{directive}: one usage row per request");
        let row = rows.last().unwrap();
        assert_eq!(row.error_type.as_deref(), Some(*error_type), "{directive}");
        assert!(!row.success);
        assert_eq!(row.credits_charged, c("0"));
    }
    let account = gw.ledger().account("alice").unwrap();
    assert_eq!((account.balance, account.held), (c("10"), c("0")));
    // An upstream that is not there at all.
    let (gw2, keys2) = Gateway::start(&[User::new("bob", "10")], |config| {
        config.upstream.url = "http://127.0.0.1:9".into();
    })
    .await;
    let response = gw2.chat(&keys2[0], chat_body("gpt-4o-mini", HELLO)).await;
    assert_eq!(response.status(), 502);
    assert_eq!(gw2.balance("bob"), c("10"));
    for gw in [gw, gw2] {
        let dir = gw.stop().await;
        assert_books_balance(dir.path());
    }
}

#[tokio::test]
async fn a_stream_the_upstream_cuts_is_charged_for_what_was_streamed() {
    let (gw, keys) = Gateway::start(&[User::new("alice", "10")], |_| {}).await;
    let mut body = chat_body("gpt-4o-mini", "go mock:cut_after=3");
    body["stream"] = json!(true);
    let response = gw.chat(&keys[0], body).await;
    let text = response.text().await.unwrap_or_default();
    assert!(text.contains("upstream_error"), "{text}");
    let rows = usage_rows(gw.dir.path());
    assert_eq!(rows.len(), 1);
    // "lorem ipsum dolor ": 18 bytes, a quarter token each.
    assert_eq!(rows[0].completion_tokens, 5);
    assert_eq!(rows[0].error_type.as_deref(), Some("upstream_error"));
    assert_eq!(rows[0].metadata["usage_estimated"], true);
    assert!(rows[0].credits_charged.is_positive());
    let dir = gw.stop().await;
    assert_books_balance(dir.path());
}

#[tokio::test]
async fn refusals_come_in_openais_shape_with_the_right_status() {
    let mut poor = User::new("poor", "0.000001");
    poor.tier = Tier::Professional;
    let mut capped = User::new("capped", "10");
    capped.cap = Some("0.000001");
    let mut eco = User::new("eco", "10");
    eco.tier = Tier::Trial;
    eco.level = PowerLevel::Eco;
    let (gw, keys) = Gateway::start(&[poor, capped, eco], |_| {}).await;
    let upstream_before = gw.mock.stats().requests;

    let r = gw.chat(&keys[0], chat_body("gpt-4o-mini", HELLO)).await;
    assert_eq!(r.status(), 402);
    // OpenAI's SDKs must not retry what only new credit can fix.
    assert_eq!(r.headers()["x-should-retry"], "false");
    assert_eq!(
        r.headers()["x-request-id"],
        r.headers()["x-tollgate-request-id"]
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "insufficient_quota");
    assert_eq!(body["error"]["balance_available"], "0.000001");
    assert!(c(body["error"]["estimated_cost"].as_str().unwrap()) > c("0.000001"));

    let r = gw.chat(&keys[1], chat_body("gpt-4o-mini", HELLO)).await;
    assert_eq!(r.status(), 429);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "monthly_spend_cap_reached");

    let r = gw.chat(&keys[2], chat_body("gpt-4o-mini", HELLO)).await;
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        "model \"gpt-4o-mini\" (an openai model) is not available at power level eco; levels that allow it: balanced, precision"
    );

    // The trial user's model list: eco's providers, and only the aliases their tier allows.
    let ids = gw.model_ids(&keys[2]).await;
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert!(ids.contains(&"auto") && ids.contains(&"eco"), "{ids:?}");
    assert!(
        !ids.contains(&"balanced") && !ids.contains(&"gpt-4o-mini"),
        "{ids:?}"
    );

    let r = gw
        .chat("tg_not_a_key", chat_body("gpt-4o-mini", HELLO))
        .await;
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");

    // Every authenticated refusal left a usage row; nothing was charged.
    let rows = usage_rows(gw.dir.path());
    let types: Vec<_> = rows.iter().map(|r| r.error_type.clone().unwrap()).collect();
    assert_eq!(types, ["insufficient_credits", "spend_cap", "auth_error"]);
    assert_eq!(
        gw.mock.stats().requests,
        upstream_before,
        "nothing reached the upstream"
    );
    let dir = gw.stop().await;
    assert_books_balance(dir.path());
}

#[tokio::test]
async fn output_is_capped_at_what_the_user_can_afford() {
    // 0.01 credits: the prompt costs ~nothing, each output token 6e-6 credits → ~1,600 tokens.
    let (gw, keys) = Gateway::start(&[User::new("alice", "0.01")], |_| {}).await;
    let mut body = chat_body("gpt-4o-mini", HELLO);
    body["max_tokens"] = json!(100_000);
    let response = gw.chat(&keys[0], body).await;
    assert_eq!(response.status(), 200);
    let capped: u64 = max_tokens_header(&response);
    let sent = gw.mock.stats().last_body.unwrap();
    assert_eq!(sent["max_tokens"], capped);
    assert!(capped > 1_000 && capped < 1_700, "{capped}");
    // Four choices share the reservation: each gets a quarter of the output.
    let mut body = chat_body("gpt-4o-mini", HELLO);
    body["max_tokens"] = json!(100_000);
    body["n"] = json!(4);
    let response = gw.chat(&keys[0], body).await;
    let per_choice: u64 = max_tokens_header(&response);
    assert!(
        per_choice * 4 <= capped && per_choice * 4 > capped - 40,
        "{per_choice} vs {capped}"
    );
    // Without a cap, the gateway sets one all the same (chat's current field).
    gw.chat(&keys[0], chat_body("gpt-4o-mini", HELLO)).await;
    let sent = gw.mock.stats().last_body.unwrap();
    assert!(
        sent["max_completion_tokens"].as_u64().unwrap() < 1_700,
        "{sent}"
    );
    // Both fields set: the larger is reserved and both are lowered, so neither can overrun.
    let mut body = chat_body("gpt-4o-mini", HELLO);
    body["max_tokens"] = json!(100_000);
    body["max_completion_tokens"] = json!(5);
    gw.chat(&keys[0], body).await;
    let sent = gw.mock.stats().last_body.unwrap();
    assert!(sent["max_tokens"].as_u64().unwrap() < 1_700, "{sent}");
    assert_eq!(sent["max_tokens"], sent["max_completion_tokens"]);
    // A completion of four prompts shares the reservation four ways.
    let r = gw
        .post(
            "/v1/completions",
            &keys[0],
            &json!({"model": "gpt-3.5-turbo-instruct", "prompt": ["a", "b", "c", "d"], "max_tokens": 100_000}),
        )
        .await;
    let per_prompt: u64 = max_tokens_header(&r);
    let r = gw
        .post(
            "/v1/completions",
            &keys[0],
            &json!({"model": "gpt-3.5-turbo-instruct", "prompt": "a", "max_tokens": 100_000}),
        )
        .await;
    let single: u64 = max_tokens_header(&r);
    // (The second request ran on a balance the first had lowered a little.)
    assert!(
        per_prompt * 4 <= single + 16 && per_prompt * 4 > single * 9 / 10,
        "{per_prompt} vs {single}"
    );
    let dir = gw.stop().await;
    assert_books_balance(dir.path());
}

#[tokio::test]
async fn litellm_control_fields_never_reach_the_upstream() {
    let (gw, keys) = Gateway::start(&[User::new("alice", "10")], |_| {}).await;
    // Refused by name, nothing bought (the allowlist: see metering.rs for every field).
    for field in [
        "fallbacks",
        "mock_testing_fallbacks",
        "api_base",
        "litellm_metadata",
    ] {
        let mut body = chat_body("gpt-4o-mini", HELLO);
        body[field] = json!(true);
        let r = gw.chat(&keys[0], body).await;
        assert_eq!(r.status(), 400, "{field}");
    }
    // `metadata` is OpenAI's and accepted, but LiteLLM acts on it: never forwarded.
    let mut body = chat_body("gpt-4o-mini", HELLO);
    body["metadata"] = json!({"tags": ["free"]});
    body["temperature"] = json!(0.5);
    let r = gw.chat(&keys[0], body).await;
    assert_eq!(r.status(), 200);
    let sent = gw.mock.stats().last_body.unwrap();
    assert!(
        sent.get("metadata").is_none(),
        "metadata was forwarded: {sent}"
    );
    assert_eq!(sent["temperature"], 0.5);
    gw.stop().await;
}

#[tokio::test]
async fn a_stream_is_ended_at_its_time_limit_and_charged_for_what_was_streamed() {
    let (gw, keys) = Gateway::start(&[User::new("alice", "10")], |config| {
        config.upstream.stream_max_secs = 1;
    })
    .await;
    let mut body = chat_body("gpt-4o-mini", "go mock:endless mock:slow=20");
    body["stream"] = json!(true);
    let text = gw.chat(&keys[0], body).await.text().await.unwrap();
    assert!(text.contains("stream_max_secs"), "{text}");
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        gw.mock.wait_streams_cancelled(1),
    )
    .await
    .expect("the upstream stream was not cut");
    let rows = usage_rows(gw.dir.path());
    assert_eq!(rows[0].error_type.as_deref(), Some("timeout"));
    assert!(rows[0].completion_tokens > 0 && rows[0].credits_charged.is_positive());
    let dir = gw.stop().await;
    assert_books_balance(dir.path());
}

#[tokio::test]
async fn embeddings_and_completions_are_metered_too() {
    let (gw, keys) = Gateway::start(&[User::new("alice", "10")], |_| {}).await;
    let r = gw
        .post(
            "/v1/embeddings",
            &keys[0],
            &json!({"model": "text-embedding-3-small", "input": ["one two three", "four"]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    // 4 words × 0.02 USD per million × 10 credits per USD.
    assert_eq!(
        c(r.headers()["x-tollgate-credits-charged"].to_str().unwrap()),
        c("0.0000008")
    );
    let r = gw
        .post(
            "/v1/completions",
            &keys[0],
            &json!({"model": "gpt-3.5-turbo-instruct", "prompt": "say hi", "max_tokens": 4}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 4);
    let rows = usage_rows(gw.dir.path());
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r.success && r.credits_charged.is_positive())
    );
    let dir = gw.stop().await;
    assert_books_balance(dir.path());
}

#[tokio::test]
async fn aliases_route_through_the_catalog_and_models_lists_the_level() {
    let (gw, keys) = Gateway::start(&[User::new("alice", "10")], |_| {}).await;
    let r = gw.chat(&keys[0], chat_body("balanced", HELLO)).await;
    assert_eq!(r.status(), 200);
    let sent = gw.mock.stats().last_body.unwrap();
    let chosen = sent["model"].as_str().unwrap().to_owned();
    assert_ne!(chosen, "balanced");
    let rows = usage_rows(gw.dir.path());
    assert_eq!(rows[0].model, chosen);
    assert_eq!(rows[0].metadata["alias"], "balanced");
    let ids = gw.model_ids(&keys[0]).await;
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert!(
        ids.contains(&"gpt-4o-mini") && ids.contains(&"auto"),
        "{ids:?}"
    );
    assert!(
        !ids.contains(&"together/meta-llama/Llama-3.3-70B-Instruct-Turbo"),
        "{ids:?}"
    );
    let one = |id: &'static str| {
        gw.http
            .get(gw.url(&format!("/v1/models/{id}")))
            .bearer_auth(&keys[0])
            .send()
    };
    assert_eq!(one("gpt-4o-mini").await.unwrap().status(), 200);
    let r = one("together/meta-llama/Llama-3.3-70B-Instruct-Turbo")
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    gw.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics_answer_on_the_admin_listener_only() {
    let (gw, keys) = Gateway::start(&[User::new("alice", "10")], |_| {}).await;
    gw.chat(&keys[0], chat_body("gpt-4o-mini", HELLO)).await;
    // Clients' listener: health, and no metrics or readiness.
    assert_eq!(
        gw.http
            .get(gw.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for path in ["/metrics", "/readyz"] {
        let r = gw.http.get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path} on the API listener");
        let body = r.text().await.unwrap();
        assert!(body.contains("admin listener"), "{body}");
        assert!(!body.contains("tollgate_requests_total"), "{body}");
    }
    let get = |path: &'static str| gw.http.get(gw.admin_url(path)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    // The admin listener serves nothing of the API.
    let api = gw
        .http
        .post(gw.admin_url("/v1/chat/completions"))
        .bearer_auth(&keys[0])
        .json(&chat_body("gpt-4o-mini", HELLO))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 404);
    let ready = get("/readyz").await.unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    for needle in [
        "tollgate_requests_total{route=\"/v1/chat/completions\",status=\"200\",model=\"gpt-4o-mini\",level=\"balanced\"} 1",
        "tollgate_credits_charged_nanocredits_total 99000",
        "tollgate_ledger_commit_seconds_count",
        "tollgate_upstream_latency_seconds_count{route=\"/v1/chat/completions\"} 1",
        "tollgate_open_holds 0",
    ] {
        assert!(metrics.contains(needle), "{needle} not in\n{metrics}");
    }
    gw.stop().await;
    // An upstream that is not there: not ready.
    let (gw, _) = Gateway::start(&[], |config| {
        config.upstream.url = "http://127.0.0.1:9".into();
    })
    .await;
    let ready = gw.http.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert!(
        body["upstream"].as_str().unwrap().contains("unreachable"),
        "{body}"
    );
    gw.stop().await;
}

#[test]
fn the_demo_runs_requests_through_the_gateway_and_its_books_balance() {
    let output = std::process::Command::new(tollgate_e2e::binary("tollgate"))
        .args(["demo", "--json"])
        .env_remove("TOLLGATE_DATA_DIR")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let demo: Value = serde_json::from_slice(&output.stdout).unwrap();
    let statuses: Vec<u64> = demo["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 200, 200, 200, 502, 402]);
    assert_eq!(demo["verify"]["violations"].as_array().unwrap().len(), 0);
    // The balance is the Starter Pack less exactly what the usage report says was charged.
    let charged = c(demo["usage"]["total"]["credits_charged"].as_str().unwrap());
    let balance = c(demo["account"]["balance"].as_str().unwrap());
    assert_eq!(c("100").checked_sub(charged).unwrap(), balance);
    assert!(charged.is_positive());
    // The streamed request was charged: one usage entry per successful request.
    let usage_entries = demo["journal"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["transaction_type"] == "usage")
        .count();
    assert_eq!(usage_entries, 4);
}

#[tokio::test]
async fn an_error_event_mid_stream_charges_what_was_streamed_and_logs_the_failure() {
    let (gw, keys) = Gateway::start(&[User::new("alice", "10")], |_| {}).await;
    let mut body = chat_body("gpt-4o-mini", "go mock:error_after=3");
    body["stream"] = json!(true);
    let text = gw.chat(&keys[0], body.clone()).await.text().await.unwrap();
    assert!(text.contains("mock upstream error mid-stream"), "{text}");
    let rows = usage_rows(gw.dir.path());
    assert_eq!(rows[0].error_type.as_deref(), Some("upstream_error"));
    assert!(!rows[0].success);
    assert_eq!(rows[0].completion_tokens, 5, "18 bytes of text");
    assert!(rows[0].credits_charged.is_positive());
    // Before any token: released, nothing charged.
    body["messages"][0]["content"] = json!("go mock:error_after=0");
    let before = gw.balance("alice");
    let text = gw.chat(&keys[0], body).await.text().await.unwrap();
    assert!(text.contains("mock upstream error mid-stream"), "{text}");
    let rows = usage_rows(gw.dir.path());
    assert_eq!(rows[1].error_type.as_deref(), Some("upstream_error"));
    assert_eq!(rows[1].credits_charged, c("0"));
    assert_eq!(gw.balance("alice"), before);
    let dir = gw.stop().await;
    assert_books_balance(dir.path());
}
