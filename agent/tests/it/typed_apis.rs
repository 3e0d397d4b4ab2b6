//! The APIs coding agents speak — OpenAI's Responses API and Anthropic's Messages API — through
//! the gateway, in front of the mock upstream: every charge equal to the price table's cost of
//! the usage reported (cached and cache-written tokens included), each stream kind's early ends
//! (a hang-up before the final usage, an error event mid-stream, a stall, an end without the
//! terminal event), `previous_response_id` bounded by the response served or refused, errors in
//! each API's own shape, Anthropic's headers and free token count, and the routes without
//! `/v1`.
//!
//! Prices are LiteLLM 1.82.6's own (the price-map subset), so each expected charge is written
//! out as LiteLLM's cost × 10 credits per USD.

use serde_json::{Value, json};
use tollgate::ledger::PowerLevel;
use tollgate_mock_upstream::MockUpstream;
use tollgate_schema::money::Credits;

use crate::gateway_support::{Gateway, User, assert_books_balance, usage_rows};
use crate::metering::{charged, import_prices, read_then_hang_up, start_priced, usd};

fn responses_body(model: &str, text: &str) -> Value {
    json!({"model": model, "input": text})
}

fn messages_body(model: &str, text: &str) -> Value {
    json!({"model": model, "max_tokens": 4000,
           "messages": [{"role": "user", "content": text}]})
}

/// A Messages request as Anthropic's SDK sends it: the key in `x-api-key`, its headers.
async fn post_messages(gw: &Gateway, key: &str, body: &Value) -> reqwest::Response {
    gw.http
        .post(gw.url("/v1/messages"))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "interleaved-thinking-2025-05-14")
        .json(body)
        .send()
        .await
        .unwrap()
}

/// A stream's events: (the `event:` name, the data as JSON).
fn events(text: &str) -> Vec<(Option<String>, Value)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = None;
            let mut data = Value::Null;
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                }
                if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).unwrap_or(Value::String(d.to_owned()));
                }
            }
            (name, data)
        })
        .collect()
}

#[tokio::test]
async fn responses_are_charged_the_price_of_their_reported_usage_cached_and_reasoning_included() {
    let (gw, keys) = start_priced(&[User::new("alice", "10")]).await;
    let text = "hi mock:prompt_tokens=1000 mock:cached=800 mock:tokens=16";
    // 200 × 1.5e-7 + 800 cached × 7.5e-8 + 16 × 6e-7 (uncached, 0.0001596).
    let expected = usd("0.0000996");
    let r = gw
        .post(
            "/v1/responses",
            &keys[0],
            &responses_body("gpt-4o-mini", text),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(charged(&r), expected);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["object"], "response");
    assert_eq!(body["usage"]["input_tokens_details"]["cached_tokens"], 800);
    // Streamed: the same charge, settled before the terminal event reaches the client.
    let mut streamed = responses_body("gpt-4o-mini", text);
    streamed["stream"] = json!(true);
    let r = gw.post("/v1/responses", &keys[0], &streamed).await;
    assert_eq!(r.status(), 200);
    let events = events(&r.text().await.unwrap());
    let (name, last) = events.last().unwrap();
    assert_eq!(name.as_deref(), Some("response.completed"));
    assert_eq!(last["response"]["usage"]["input_tokens"], 1000);
    assert!(
        !events.iter().any(|(_, d)| d == "[DONE]"),
        "no chat [DONE] on a Responses stream"
    );
    // A reasoning model: reasoning is output (3 prompt words × 2e-6 + 60 × 8e-6).
    let r = gw
        .post(
            "/v1/responses",
            &keys[0],
            &responses_body("o3", "think mock:reasoning=50 mock:tokens=10"),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(charged(&r), usd("0.000486"));
    let rows = usage_rows(gw.dir.path());
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1].credits_charged, expected, "{:?}", rows[1]);
    assert_eq!(rows[1].metadata["cached_tokens"], 800);
    assert_eq!(rows[1].metadata["usage_estimated"], false);
    assert_eq!(rows[2].metadata["reasoning_tokens"], 50);
    // The cap is the Responses API's own field.
    let sent = gw.mock.stats().last_body.unwrap();
    assert!(sent["max_output_tokens"].as_u64().is_some(), "{sent}");
    assert!(sent.get("max_tokens").is_none(), "{sent}");
    let dir = gw.stop().await;
    assert_books_balance(dir.path());
}

#[tokio::test]
async fn messages_are_charged_with_cache_reads_and_writes_and_anthropics_headers_reach_the_upstream()
 {
    let (gw, keys) = start_priced(&[User::new("alice", "10")]).await;
    let text = "hello mock:prompt_tokens=1000 mock:cached=600 mock:cache_write=300 mock:tokens=20";
    // Anthropic's input_tokens leave the cache out: 400 plain × 3e-6 + 600 read × 3e-7 + 300
    // written × 3.75e-6 + 20 × 1.5e-5.
    let expected = usd("0.002805");
    let r = post_messages(
        &gw,
        &keys[0],
        &messages_body("claude-sonnet-4-20250514", text),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(charged(&r), expected);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "message");
    assert_eq!(body["usage"]["cache_read_input_tokens"], 600);
    let stats = gw.mock.stats();
    assert_eq!(stats.last_anthropic_version.as_deref(), Some("2023-06-01"));
    assert_eq!(
        stats.last_anthropic_beta.as_deref(),
        Some("interleaved-thinking-2025-05-14")
    );
    // The user's tollgate key stays with tollgate; the upstream gets the gateway's.
    assert_eq!(stats.last_api_key, None);
    assert_eq!(
        stats.last_authorization.as_deref(),
        Some("Bearer sk-litellm-test")
    );
    // Streamed: usage in pieces (input in message_start, output in message_delta), the same
    // charge, and message_stop last.
    let mut streamed = messages_body("claude-sonnet-4-20250514", text);
    streamed["stream"] = json!(true);
    let r = post_messages(&gw, &keys[0], &streamed).await;
    assert_eq!(r.status(), 200);
    let events = events(&r.text().await.unwrap());
    assert_eq!(events.last().unwrap().0.as_deref(), Some("message_stop"));
    assert_eq!(events[0].0.as_deref(), Some("message_start"));
    let rows = usage_rows(gw.dir.path());
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].credits_charged, expected, "{:?}", rows[1]);
    assert_eq!(
        (rows[1].prompt_tokens, rows[1].completion_tokens),
        (1300, 20)
    );
    assert_eq!(rows[1].metadata["cache_creation_tokens"], 300);
    assert_eq!(rows[1].metadata["usage_estimated"], false);
    // `thinking.budget_tokens` counts toward the cap: never above what was reserved.
    let mut thinking = messages_body("claude-sonnet-4-20250514", "ponder");
    thinking["max_tokens"] = json!(2_000);
    thinking["thinking"] = json!({"type": "enabled", "budget_tokens": 5_000});
    let r = post_messages(&gw, &keys[0], &thinking).await;
    assert_eq!(r.status(), 200);
    let sent = gw.mock.stats().last_body.unwrap();
    assert!(
        sent["thinking"]["budget_tokens"].as_u64().unwrap() < 2_000,
        "{sent}"
    );
    let dir = gw.stop().await;
    assert_books_balance(dir.path());
}

#[tokio::test]
async fn errors_come_in_each_apis_shape_so_the_sdks_raise_their_own() {
    let (gw, keys) = start_priced(&[User::new("alice", "10"), User::new("broke", "0")]).await;
    let body = messages_body("claude-sonnet-4-20250514", "hello");
    // A bad key: Anthropic's authentication_error.
    let r = post_messages(&gw, "tg_not_a_key", &body).await;
    assert_eq!(r.status(), 401);
    let error: Value = r.json().await.unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "authentication_error", "{error}");
    // No credit: Anthropic's billing_error, not to be retried.
    let r = post_messages(&gw, &keys[1], &body).await;
    assert_eq!(r.status(), 402);
    assert_eq!(r.headers()["x-should-retry"], "false");
    let error: Value = r.json().await.unwrap();
    assert_eq!(error["error"]["type"], "billing_error", "{error}");
    // The Messages API requires max_tokens; the error names it.
    let mut uncapped = body.clone();
    uncapped.as_object_mut().unwrap().remove("max_tokens");
    let r = post_messages(&gw, &keys[0], &uncapped).await;
    assert_eq!(r.status(), 400);
    let error: Value = r.json().await.unwrap();
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens"),
        "{error}"
    );
    // A model no price table knows: invalid_request_error naming it.
    let r = post_messages(&gw, &keys[0], &messages_body("claude-nonexistent", "hi")).await;
    assert_eq!(r.status(), 400);
    let error: Value = r.json().await.unwrap();
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("claude-nonexistent"),
        "{error}"
    );
    // The Responses API answers in OpenAI's shape.
    let r = gw
        .post(
            "/v1/responses",
            &keys[1],
            &responses_body("gpt-4o-mini", "hello"),
        )
        .await;
    assert_eq!(r.status(), 402);
    let error: Value = r.json().await.unwrap();
    assert_eq!(error["error"]["code"], "insufficient_quota", "{error}");
    // Modes tollgate cannot meter are refused by name, never passed through.
    for (field, value) in [
        ("background", json!(true)),
        ("conversation", json!("conv_1")),
        ("prompt", json!({"id": "pmpt_1"})),
    ] {
        let mut body = responses_body("gpt-4o-mini", "hello");
        body[field] = value;
        let before = gw.mock.stats().requests;
        let r = gw.post("/v1/responses", &keys[0], &body).await;
        assert_eq!(r.status(), 400, "{field}");
        let text = r.text().await.unwrap();
        assert!(
            text.contains(&format!("\\\"{field}\\\"")),
            "{field}: {text}"
        );
        assert_eq!(
            gw.mock.stats().requests,
            before,
            "{field} reached the upstream"
        );
    }
    // Hosted tools billed apart are refused; function tools pass.
    let mut hosted = responses_body("gpt-4o-mini", "hello");
    hosted["tools"] = json!([{"type": "web_search"}]);
    let r = gw.post("/v1/responses", &keys[0], &hosted).await;
    assert_eq!(r.status(), 400);
    hosted["tools"] = json!([{"type": "function", "name": "f", "parameters": {"type": "object"}}]);
    let r = gw.post("/v1/responses", &keys[0], &hosted).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let dir = gw.stop().await;
    assert_books_balance(dir.path());
}

#[tokio::test]
async fn previous_response_id_is_bounded_by_the_response_served_or_refused() {
    // 0.12 credits = 0.012 USD.
    let (gw, keys) = start_priced(&[User::new("alice", "0.12"), User::new("bob", "10")]).await;
    // A response of 60,000 prompt tokens: 60,000 × 1.5e-7 + 10 × 6e-7 = 0.009006 USD.
    let mut first = responses_body(
        "gpt-4o-mini",
        "long mock:prompt_tokens=60000 mock:tokens=10",
    );
    first["max_output_tokens"] = json!(16_000);
    let r = gw.post("/v1/responses", &keys[0], &first).await;
    assert_eq!(r.status(), 200);
    assert_eq!(charged(&r), usd("0.009006"));
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Continuing from it adds its 60,010 tokens to the prompt: more than the 0.002994 USD left
    // can pay for, so it is refused before anything is bought...
    let mut next = responses_body("gpt-4o-mini", "and then?");
    next["max_output_tokens"] = json!(16);
    next["previous_response_id"] = json!(id);
    let before = gw.mock.stats().requests;
    let r = gw.post("/v1/responses", &keys[0], &next).await;
    assert_eq!(r.status(), 402, "{}", r.text().await.unwrap());
    assert_eq!(gw.mock.stats().requests, before);
    // ...while the same turn without the history is affordable.
    let mut fresh = next.clone();
    fresh
        .as_object_mut()
        .unwrap()
        .remove("previous_response_id");
    let r = gw.post("/v1/responses", &keys[0], &fresh).await;
    assert_eq!(r.status(), 200);
    // Bob, with credit, may not continue from Alice's response; nobody from an unknown one.
    for (key, id) in [(&keys[1], id.as_str()), (&keys[1], "resp_never_served")] {
        let mut body = next.clone();
        body["previous_response_id"] = json!(id);
        let r = gw.post("/v1/responses", key, &body).await;
        assert_eq!(r.status(), 400);
        let text = r.text().await.unwrap();
        assert!(text.contains("previous_response_id"), "{text}");
    }
    assert_eq!(gw.mock.stats().requests, before + 1);
    // Bob continues from his own response: served, the history reserved.
    let r = gw
        .post(
            "/v1/responses",
            &keys[1],
            &responses_body("gpt-4o-mini", "hi"),
        )
        .await;
    let bobs = r.json::<Value>().await.unwrap()["id"].clone();
    let mut body = next.clone();
    body["previous_response_id"] = bobs;
    let r = gw.post("/v1/responses", &keys[1], &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        gw.mock.stats().last_body.unwrap()["previous_response_id"],
        body["previous_response_id"]
    );
    let dir = gw.stop().await;
    assert_books_balance(dir.path());
}

/// Runs `text` as a streamed request on `api` ("responses" or "messages") and returns the
/// client's events.
async fn stream(gw: &Gateway, key: &str, api: &str, text: &str) -> reqwest::Response {
    let (path, mut body) = match api {
        "responses" => ("/v1/responses", responses_body("gpt-4o-mini", text)),
        _ => (
            "/v1/messages",
            messages_body("claude-sonnet-4-20250514", text),
        ),
    };
    body["stream"] = json!(true);
    gw.post(path, key, &body).await
}

#[tokio::test]
async fn a_client_that_hangs_up_before_the_final_usage_pays_the_reported_usage() {
    for api in ["responses", "messages"] {
        let (gw, keys) = start_priced(&[User::new("alice", "10")]).await;
        let r = stream(
            &gw,
            &keys[0],
            api,
            "talk mock:tokens=3000 mock:chunk_words=1000 mock:usage_delay=300",
        )
        .await;
        assert_eq!(r.status(), 200);
        // All the content, then gone before the event with the final usage.
        let done = if api == "responses" {
            "response.output_text.done"
        } else {
            "content_block_stop"
        };
        read_then_hang_up(r, |seen| seen.contains(done)).await;
        gw.wait_for("the hang-up's settle", |l| {
            l.account("alice").unwrap().held == Credits::ZERO
        })
        .await;
        let rows = usage_rows(gw.dir.path());
        assert_eq!(rows[0].completion_tokens, 3000, "{api}: {rows:?}");
        assert_eq!(rows[0].metadata["usage_estimated"], false, "{api}");
        assert_eq!(
            rows[0].error_type.as_deref(),
            Some("client_disconnected"),
            "{api}"
        );
        // 4 prompt words: gpt-4o-mini 4 × 1.5e-7 + 3000 × 6e-7; claude 4 × 3e-6 + 3000 × 1.5e-5.
        let expected = if api == "responses" {
            usd("0.0018006")
        } else {
            usd("0.045012")
        };
        assert_eq!(rows[0].credits_charged, expected, "{api}");
        let dir = gw.stop().await;
        assert_books_balance(dir.path());
    }
}

#[tokio::test]
async fn an_error_event_mid_stream_charges_what_was_generated_and_reaches_the_client() {
    for api in ["responses", "messages"] {
        let (gw, keys) = start_priced(&[User::new("alice", "10")]).await;
        let r = stream(
            &gw,
            &keys[0],
            api,
            "talk mock:tokens=100 mock:error_after=50",
        )
        .await;
        assert_eq!(r.status(), 200);
        let events = events(&r.text().await.unwrap());
        let (name, data) = events.last().unwrap();
        assert_eq!(name.as_deref(), Some("error"), "{api}: {events:?}");
        assert_eq!(data["type"], "error", "{api}");
        let rows = usage_rows(gw.dir.path());
        assert_eq!(
            rows[0].error_type.as_deref(),
            Some("upstream_error"),
            "{api}"
        );
        assert!(rows[0].completion_tokens >= 50, "{api}: {rows:?}");
        assert!(rows[0].credits_charged.is_positive(), "{api}");
        if api == "messages" {
            // message_start's input side is exact even though the output is estimated.
            assert_eq!(rows[0].prompt_tokens, 3, "{rows:?}");
        }
        let dir = gw.stop().await;
        assert_books_balance(dir.path());
    }
}

#[tokio::test]
async fn a_stall_and_a_missing_terminal_event_end_with_an_error_event_and_a_charge() {
    for api in ["responses", "messages"] {
        let mock = MockUpstream::spawn().await.unwrap();
        let (gw, keys) = Gateway::start_with(
            mock,
            &[User::new("alice", "10")],
            |l, _| import_prices(l),
            |config| config.upstream.stream_idle_timeout_secs = 1,
        )
        .await;
        let r = stream(
            &gw,
            &keys[0],
            api,
            "talk mock:tokens=400 mock:chunk_words=100 mock:stall_after=200",
        )
        .await;
        let stalled = events(&r.text().await.unwrap());
        let (name, data) = stalled.last().unwrap();
        assert_eq!(name.as_deref(), Some("error"), "{api}: {stalled:?}");
        assert!(data.to_string().contains("silent"), "{api}: {data}");
        let r = stream(&gw, &keys[0], api, "talk mock:tokens=30 mock:no_end").await;
        let unended = events(&r.text().await.unwrap());
        let (name, data) = unended.last().unwrap();
        assert_eq!(name.as_deref(), Some("error"), "{api}: {unended:?}");
        assert!(data.to_string().contains("final event"), "{api}: {data}");
        let rows = usage_rows(gw.dir.path());
        assert_eq!(rows[0].error_type.as_deref(), Some("timeout"), "{api}");
        assert!(rows[0].completion_tokens >= 200, "{api}: {rows:?}");
        assert_eq!(
            rows[1].error_type.as_deref(),
            Some("upstream_error"),
            "{api}"
        );
        assert!(rows[1].completion_tokens >= 30, "{api}: {rows:?}");
        assert!(rows[1].credits_charged.is_positive(), "{api}");
        let dir = gw.stop().await;
        assert_books_balance(dir.path());
    }
}

#[tokio::test]
async fn count_tokens_is_forwarded_free_and_the_routes_without_v1_serve_the_same() {
    let (gw, keys) = start_priced(&[User::new("alice", "10")]).await;
    let count = |body: Value, key: &str| {
        gw.http
            .post(gw.url("/v1/messages/count_tokens"))
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
    };
    let body = json!({"model": "claude-sonnet-4-20250514",
                      "messages": [{"role": "user", "content": "one two three"}]});
    let r = count(body.clone(), &keys[0]).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["input_tokens"], 3);
    assert_eq!(
        gw.mock.stats().last_anthropic_version.as_deref(),
        Some("2023-06-01")
    );
    assert!(
        usage_rows(gw.dir.path()).is_empty(),
        "a count is not a request"
    );
    assert_eq!(gw.balance("alice"), crate::gateway_support::c("10"));
    let r = count(body.clone(), "tg_wrong").await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["type"],
        "authentication_error"
    );
    let mut odd = body.clone();
    odd["api_base"] = json!("http://elsewhere");
    let r = count(odd, &keys[0]).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("api_base"));
    // The same routes without /v1, as LiteLLM accepts them.
    for (path, body) in [
        (
            "/chat/completions",
            crate::gateway_support::chat_body("gpt-4o-mini", "hi"),
        ),
        ("/responses", responses_body("gpt-4o-mini", "hi")),
        ("/messages", messages_body("claude-sonnet-4-20250514", "hi")),
        ("/messages/count_tokens", body.clone()),
    ] {
        let r = gw.post(path, &keys[0], &body).await;
        assert_eq!(r.status(), 200, "{path}: {}", r.text().await.unwrap());
    }
    let r = gw
        .http
        .get(gw.url("/models"))
        .bearer_auth(&keys[0])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(usage_rows(gw.dir.path()).len(), 3);
    let dir = gw.stop().await;
    assert_books_balance(dir.path());
}

#[tokio::test]
async fn byok_messages_go_to_anthropic_with_the_users_key_as_x_api_key() {
    const SECRET: &str = "sk-ant-alice-own-key-5678";
    let provider = MockUpstream::spawn().await.unwrap();
    let provider_url = format!("{}/v1", provider.url());
    let litellm = MockUpstream::spawn().await.unwrap();
    let (gw, keys) = Gateway::start_with(
        litellm,
        &[User {
            level: PowerLevel::Balanced,
            ..User::new("alice", "10")
        }],
        |ledger, dir| {
            import_prices(ledger);
            crate::gateway_edges::store_key(ledger, dir, "anthropic", SECRET);
        },
        |config| {
            config.pricing.byok_fee_percent = "10".parse().unwrap();
            config.providers.get_mut("anthropic").unwrap().base_url = provider_url;
        },
    )
    .await;
    let r = gw
        .http
        .post(gw.url("/v1/messages"))
        .header("x-api-key", &keys[0])
        .json(&messages_body("claude-sonnet-4-20250514", "hello there"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let stats = provider.stats();
    assert_eq!(stats.last_api_key.as_deref(), Some(SECRET));
    assert_eq!(stats.last_authorization, None);
    assert_eq!(
        stats.last_anthropic_version.as_deref(),
        Some("2023-06-01"),
        "a default API version"
    );
    assert_eq!(
        stats.last_body.unwrap()["model"],
        "claude-sonnet-4-20250514"
    );
    // The Responses API is OpenAI's: a BYOK Anthropic key cannot serve it, said plainly.
    let r = gw
        .post(
            "/v1/responses",
            &keys[0],
            &responses_body("claude-sonnet-4-20250514", "hi"),
        )
        .await;
    assert_eq!(r.status(), 400);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("cannot serve /v1/responses")
    );
    let dir = gw.stop().await;
    assert_books_balance(dir.path());
}
