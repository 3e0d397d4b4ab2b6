//! The mock over real HTTP on loopback, driven by reqwest: every route, every scenario a caller
//! relies on, and the stream accounting. No test sleeps; waits are on the mock's own signals.

// Test helpers are not `#[test]` functions, so clippy's test allowances miss them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_util::StreamExt;
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use tollgate_mock_upstream::MockUpstream;

async fn post(mock: &MockUpstream, path: &str, body: &Value) -> Response {
    Client::new()
        .post(format!("{}{path}", mock.url()))
        .bearer_auth("sk-test")
        .json(body)
        .send()
        .await
        .unwrap()
}

fn chat(content: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]})
}

fn chat_stream(content: &str, include_usage: bool) -> Value {
    let mut body = chat(content);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": include_usage});
    body
}

/// The `data:` payloads of a complete SSE body.
async fn events(response: Response) -> Vec<String> {
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    assert!(text.ends_with("\n\n"), "{text:?}");
    text.split_terminator("\n\n")
        .map(|event| event.strip_prefix("data: ").unwrap().to_owned())
        .collect()
}

fn parse(event: &str) -> Value {
    serde_json::from_str(event).unwrap()
}

fn assert_openai_error(body: &Value, kind: &str) {
    assert!(body["error"]["message"].is_string(), "{body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
}

#[tokio::test]
async fn chat_json_with_usage_and_litellm_headers() {
    let mock = MockUpstream::spawn().await.unwrap();
    let response = post(
        &mock,
        "/v1/chat/completions",
        &chat("hello there mock:tokens=3"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-litellm-call-id"], "mock-call-1");
    // 3 prompt words × 0.15e-6 + 3 completion words × 0.6e-6 = 2.25e-6.
    assert_eq!(response.headers()["x-litellm-response-cost"], "0.000002250");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["id"], "chatcmpl-mock-1");
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(
        body["choices"][0]["message"],
        json!({"role": "assistant", "content": "lorem ipsum dolor"})
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6})
    );

    let stats = mock.stats();
    assert_eq!(stats.requests, 1);
    assert_eq!(stats.last_authorization.as_deref(), Some("Bearer sk-test"));
    assert_eq!(stats.last_body, Some(chat("hello there mock:tokens=3")));

    // Default length, all messages counted, text parts counted, other parts ignored.
    let body = json!({"model": "m", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "one two"}, {"type": "image_url", "image_url": {"url": "x y z"}}]}
    ]});
    let response = post(&mock, "/v1/chat/completions", &body).await;
    assert_eq!(response.headers()["x-litellm-call-id"], "mock-call-2");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 16, "total_tokens": 20})
    );
    mock.shutdown().await;
}

#[tokio::test]
async fn chat_stream_without_and_with_usage() {
    let mock = MockUpstream::spawn().await.unwrap();
    for include_usage in [false, true] {
        let response = post(
            &mock,
            "/v1/chat/completions",
            &chat_stream("hi mock:tokens=4", include_usage),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().contains_key("x-litellm-call-id"));
        assert!(response.headers().contains_key("x-litellm-response-cost"));
        let events = events(response).await;
        let usage_chunks = usize::from(include_usage);
        assert_eq!(events.len(), 4 + 2 + usage_chunks + 1, "{events:?}");
        assert_eq!(events.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| parse(e))
            .collect();
        for chunk in &chunks {
            assert_eq!(chunk["object"], "chat.completion.chunk");
            assert_eq!(chunk["model"], "gpt-4o-mini");
            assert_eq!(chunk["id"], chunks[0]["id"]);
        }
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(chunks[0]["choices"][0]["finish_reason"], Value::Null);
        let text: String = chunks[1..5]
            .iter()
            .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
            .collect();
        assert_eq!(text, "lorem ipsum dolor sit");
        assert_eq!(chunks[5]["choices"][0]["delta"], json!({}));
        assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
        if include_usage {
            assert_eq!(chunks[6]["choices"], json!([]));
            assert_eq!(
                chunks[6]["usage"],
                json!({"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6})
            );
        }
        assert!(chunks.iter().take(6).all(|c| c.get("usage").is_none()));
    }
    let stats = mock.stats();
    assert_eq!(
        (
            stats.streams_started,
            stats.streams_completed,
            stats.streams_cancelled
        ),
        (2, 2, 0)
    );
    mock.shutdown().await;
}

#[tokio::test]
async fn no_usage_in_json_and_stream() {
    let mock = MockUpstream::spawn().await.unwrap();
    let body: Value = post(&mock, "/v1/chat/completions", &chat("mock:no_usage"))
        .await
        .json()
        .await
        .unwrap();
    assert!(body.get("usage").is_none(), "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let events = events(
        post(
            &mock,
            "/v1/chat/completions",
            &chat_stream("mock:no_usage mock:tokens=2", true),
        )
        .await,
    )
    .await;
    assert_eq!(events.len(), 2 + 2 + 1);
    assert!(events.iter().all(|e| !e.contains("usage")));
    mock.shutdown().await;
}

#[tokio::test]
async fn status_directive_is_an_openai_error_even_for_streams() {
    let mock = MockUpstream::spawn().await.unwrap();
    for body in [
        chat("mock:status=503"),
        chat_stream("mock:status=503", true),
    ] {
        let response = post(&mock, "/v1/chat/completions", &body).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({"error": {"message": "mock upstream error 503", "type": "upstream_error", "code": 503}})
        );
    }
    assert_eq!(mock.stats().streams_started, 0);
    let response = post(
        &mock,
        "/v1/embeddings",
        &json!({"model": "e", "input": "mock:status=429"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    mock.shutdown().await;
}

#[tokio::test]
async fn malformed_json_and_stream() {
    let mock = MockUpstream::spawn().await.unwrap();
    let response = post(&mock, "/v1/chat/completions", &chat("mock:malformed")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.text().await.unwrap(), "{\"this is not");

    let events = events(
        post(
            &mock,
            "/v1/chat/completions",
            &chat_stream("mock:malformed", true),
        )
        .await,
    )
    .await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(
        parse(&events[0])["choices"][0]["delta"]["role"],
        "assistant"
    );
    assert_eq!(events[1], "{broken");
    assert!(serde_json::from_str::<Value>(&events[1]).is_err());
    assert_eq!(events[2], "[DONE]");
    mock.shutdown().await;
}

#[tokio::test]
async fn max_tokens_caps_the_reply() {
    let mock = MockUpstream::spawn().await.unwrap();
    let mut body = chat("mock:tokens=10");
    body["max_tokens"] = json!(3);
    let reply: Value = post(&mock, "/v1/chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        reply["choices"][0]["message"]["content"],
        "lorem ipsum dolor"
    );
    assert_eq!(reply["choices"][0]["finish_reason"], "length");
    assert_eq!(reply["usage"]["completion_tokens"], 3);

    // max_completion_tokens wins over max_tokens; the default 16 is capped too.
    let mut body = chat("hi");
    body["max_tokens"] = json!(100);
    body["max_completion_tokens"] = json!(5);
    let reply: Value = post(&mock, "/v1/chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(reply["usage"]["completion_tokens"], 5);
    assert_eq!(reply["choices"][0]["finish_reason"], "length");

    // A cap above the reply changes nothing.
    let mut body = chat("mock:tokens=2");
    body["max_tokens"] = json!(2);
    let reply: Value = post(&mock, "/v1/chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");

    let mut body = chat_stream("mock:tokens=10", true);
    body["max_tokens"] = json!(3);
    let events = events(post(&mock, "/v1/chat/completions", &body).await).await;
    assert_eq!(events.len(), 3 + 2 + 1 + 1);
    assert_eq!(parse(&events[4])["choices"][0]["finish_reason"], "length");
    assert_eq!(parse(&events[5])["usage"]["completion_tokens"], 3);
    mock.shutdown().await;
}

#[tokio::test]
async fn embeddings() {
    let mock = MockUpstream::spawn().await.unwrap();
    let body = json!({"model": "text-embedding-3-small", "input": ["a b c", "d"]});
    let response = post(&mock, "/v1/embeddings", &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-litellm-response-cost"], "0.000000600");
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["object"], "list");
    assert_eq!(reply["model"], "text-embedding-3-small");
    assert_eq!(
        reply["usage"],
        json!({"prompt_tokens": 4, "total_tokens": 4})
    );
    let data = reply["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], i);
        assert_eq!(item["embedding"].as_array().unwrap().len(), 8);
    }
    // Deterministic: the same input gives the same vector, also as a single string.
    let again: Value = post(
        &mock,
        "/v1/embeddings",
        &json!({"model": "x", "input": "a b c"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(again["data"][0]["embedding"], data[0]["embedding"]);
    mock.shutdown().await;
}

#[tokio::test]
async fn completions_json_and_stream() {
    let mock = MockUpstream::spawn().await.unwrap();
    let body = json!({"model": "gpt-4o-mini", "prompt": "say mock:tokens=2", "max_tokens": 50});
    let reply: Value = post(&mock, "/v1/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(reply["object"], "text_completion");
    assert_eq!(reply["id"], "cmpl-mock-1");
    assert_eq!(reply["choices"][0]["text"], "lorem ipsum");
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        reply["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4})
    );

    let body = json!({"model": "m", "prompt": ["a b", "c mock:tokens=3"], "stream": true,
        "stream_options": {"include_usage": true}});
    let events = events(post(&mock, "/v1/completions", &body).await).await;
    // Token chunks, the finish chunk, the usage chunk, [DONE].
    assert_eq!(events.len(), 3 + 1 + 1 + 1, "{events:?}");
    let text: String = events[..3]
        .iter()
        .map(|e| parse(e)["choices"][0]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, "lorem ipsum dolor");
    assert_eq!(parse(&events[3])["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        parse(&events[4])["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7})
    );
    assert_eq!(events[5], "[DONE]");
    mock.shutdown().await;
}

#[tokio::test]
async fn dropped_endless_stream_counts_as_cancelled() {
    let mock = MockUpstream::spawn().await.unwrap();
    let response = post(
        &mock,
        "/v1/chat/completions",
        &chat_stream("mock:endless mock:slow=1 mock:tokens=2", true),
    )
    .await;
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    // More than the reply length: endless ignores it.
    while seen.matches("\n\n").count() < 10 {
        seen.push_str(std::str::from_utf8(&body.next().await.unwrap().unwrap()).unwrap());
    }
    assert!(!seen.contains("[DONE]"));
    drop(body);
    mock.wait_streams_cancelled(1).await;
    let stats = mock.stats();
    assert_eq!(
        (
            stats.streams_started,
            stats.streams_completed,
            stats.streams_cancelled
        ),
        (1, 0, 1)
    );
    // A waiter that comes after the fact resolves at once.
    mock.wait_streams_cancelled(1).await;
    mock.shutdown().await;
}

#[tokio::test]
async fn stalled_stream_sends_k_tokens_and_never_ends() {
    let mock = MockUpstream::spawn().await.unwrap();
    let response = post(
        &mock,
        "/v1/chat/completions",
        &chat_stream("mock:stall_after=2", true),
    )
    .await;
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    while seen.matches("\n\n").count() < 3 {
        seen.push_str(std::str::from_utf8(&body.next().await.unwrap().unwrap()).unwrap());
    }
    assert_eq!(
        seen.matches("\n\n").count(),
        3,
        "role chunk and two tokens only: {seen}"
    );
    // The stream is still open: shutting down breaks it rather than finishing it.
    mock.shutdown().await;
    let rest: Vec<_> = body.collect().await;
    assert!(rest.iter().any(|item| item.is_err()), "{rest:?}");
    let after: String = rest
        .iter()
        .filter_map(|i| i.as_ref().ok())
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert!(!after.contains("[DONE]"));
}

#[tokio::test]
async fn cut_stream_breaks_the_connection() {
    let mock = MockUpstream::spawn().await.unwrap();
    let response = post(
        &mock,
        "/v1/chat/completions",
        &chat_stream("mock:cut_after=2", true),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let items: Vec<_> = response.bytes_stream().collect().await;
    assert!(items.last().unwrap().is_err(), "{items:?}");
    let text: String = items
        .iter()
        .filter_map(|i| i.as_ref().ok())
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert_eq!(text.matches("\n\n").count(), 3, "{text}");
    assert!(!text.contains("[DONE]") && !text.contains("finish_reason\":\"stop"));
    let stats = mock.stats();
    assert_eq!((stats.streams_completed, stats.streams_cancelled), (1, 0));
    mock.shutdown().await;
}

#[tokio::test]
async fn slow_stream_still_completes() {
    let mock = MockUpstream::spawn().await.unwrap();
    let events = events(
        post(
            &mock,
            "/v1/chat/completions",
            &chat_stream("mock:slow=1 mock:tokens=3", false),
        )
        .await,
    )
    .await;
    assert_eq!(events.len(), 3 + 2 + 1);
    mock.shutdown().await;
}

#[tokio::test]
async fn unknown_route_bad_json_and_missing_fields() {
    let mock = MockUpstream::spawn().await.unwrap();
    let client = Client::new();

    let response = client
        .get(format!("{}/v1/nope", mock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = response.json().await.unwrap();
    assert_openai_error(&body, "invalid_request_error");
    assert_eq!(body["error"]["param"], Value::Null);
    assert_eq!(body["error"]["code"], Value::Null);

    let response = client
        .get(format!("{}/v1/chat/completions", mock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_openai_error(&response.json().await.unwrap(), "invalid_request_error");

    for (path, body) in [
        ("/v1/chat/completions", "{not json"),
        ("/v1/chat/completions", r#"{"messages":[]}"#),
        ("/v1/chat/completions", r#"{"model":"m"}"#),
        ("/v1/completions", r#"{"model":"m"}"#),
        ("/v1/embeddings", r#"{"model":"m","input":{}}"#),
        ("/v1/embeddings", ""),
    ] {
        let response = client
            .post(format!("{}{path}", mock.url()))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path} {body}");
        assert_openai_error(&response.json().await.unwrap(), "invalid_request_error");
    }
    let stats = mock.stats();
    assert_eq!(stats.requests, 8);
    assert_eq!(stats.last_body, None, "the last POST was not JSON");
    assert_eq!(stats.last_authorization, None);
    mock.shutdown().await;
}

#[tokio::test]
async fn models_and_liveliness() {
    let mock = MockUpstream::spawn().await.unwrap();
    let client = Client::new();
    let models: Value = client
        .get(format!("{}/v1/models", mock.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "gpt-4o-mini",
            "gpt-4o",
            "claude-sonnet-4",
            "text-embedding-3-small"
        ]
    );

    let response = client
        .get(format!("{}/health/liveliness", mock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "\"I'm alive!\"");
    mock.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_an_endless_stream() {
    let mock = MockUpstream::spawn().await.unwrap();
    let response = post(
        &mock,
        "/v1/chat/completions",
        &chat_stream("mock:endless mock:slow=1", false),
    )
    .await;
    let mut body = response.bytes_stream();
    assert!(body.next().await.unwrap().is_ok());
    mock.shutdown().await;
    let rest: Vec<_> = body.collect().await;
    assert!(rest.last().is_some_and(|item| item.is_err()));
}

#[tokio::test]
async fn usage_details_multi_word_chunks_and_another_model() {
    let mock = MockUpstream::spawn().await.unwrap();
    let body = chat(
        "hi mock:tokens=7 mock:chunk_words=3 mock:cached=1 mock:reasoning=4 mock:model=gpt-4o",
    );
    let json: Value = post(&mock, "/v1/chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(json["model"], "gpt-4o");
    assert_eq!(
        json["usage"]["completion_tokens"], 11,
        "7 words + 4 reasoning"
    );
    assert_eq!(json["usage"]["prompt_tokens_details"]["cached_tokens"], 1);
    assert_eq!(
        json["usage"]["completion_tokens_details"]["reasoning_tokens"],
        4
    );
    let events = events(
        post(
            &mock,
            "/v1/chat/completions",
            &chat_stream("hi mock:tokens=7 mock:chunk_words=3", true),
        )
        .await,
    )
    .await;
    let contents: Vec<String> = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| {
            parse(e)["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        contents,
        ["lorem ipsum dolor ", "sit amet consectetur ", "adipiscing"]
    );
}

#[tokio::test]
async fn a_delayed_usage_chunk_comes_after_the_content() {
    let mock = MockUpstream::spawn().await.unwrap();
    let started = tokio::time::Instant::now();
    let events = events(
        post(
            &mock,
            "/v1/chat/completions",
            &chat_stream("hi mock:tokens=2 mock:usage_delay=150", true),
        )
        .await,
    )
    .await;
    assert!(started.elapsed() >= std::time::Duration::from_millis(150));
    let usage = parse(&events[events.len() - 2]);
    assert_eq!(usage["usage"]["completion_tokens"], 2);
}

#[tokio::test]
async fn a_stalled_body_sends_headers_and_no_body_until_shutdown() {
    let mock = MockUpstream::spawn().await.unwrap();
    let response = post(&mock, "/v1/chat/completions", &chat("hi mock:stall_body")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.bytes_stream();
    let waited = tokio::time::timeout(std::time::Duration::from_millis(100), body.next()).await;
    assert!(waited.is_err(), "no body before shutdown");
    mock.shutdown().await;
}

#[tokio::test]
async fn model_info_is_served_only_when_configured() {
    let plain = MockUpstream::spawn().await.unwrap();
    let status = Client::new()
        .get(format!("{}/model/info", plain.url()))
        .bearer_auth("k")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::NOT_FOUND);
    let info = json!({"data": [{"model_name": "m", "litellm_params": {"model": "openai/gpt-4o"}}]});
    let mock = MockUpstream::spawn_with(tollgate_mock_upstream::Options {
        models: Some(vec!["m".into()]),
        model_info: Some(info.clone()),
        litellm_headers: false,
    })
    .await
    .unwrap();
    let got: Value = Client::new()
        .get(format!("{}/model/info", mock.url()))
        .bearer_auth("k")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, info);
    let models: Value = Client::new()
        .get(format!("{}/v1/models", mock.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "m");
    assert_eq!(models["data"].as_array().unwrap().len(), 1);
}

/// `event: kind` and the parsed data of each event of a typed stream.
async fn typed_events(response: Response) -> Vec<(String, Value)> {
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    text.split_terminator("\n\n")
        .map(|event| {
            let mut lines = event.lines();
            let kind = lines
                .next()
                .unwrap()
                .strip_prefix("event: ")
                .unwrap()
                .to_owned();
            let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
            (kind, parse(data))
        })
        .collect()
}

#[tokio::test]
async fn the_responses_api_json_and_stream() {
    let mock = MockUpstream::spawn().await.unwrap();
    let body = json!({"model": "gpt-4o", "input": "hi there mock:tokens=5 mock:cached=1 mock:reasoning=2",
                      "max_output_tokens": 100});
    let json: Value = post(&mock, "/v1/responses", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(json["object"], "response");
    assert_eq!(json["status"], "completed");
    assert_eq!(json["usage"]["input_tokens"], 5);
    assert_eq!(json["usage"]["input_tokens_details"]["cached_tokens"], 1);
    assert_eq!(json["usage"]["output_tokens"], 7, "5 words + 2 reasoning");
    assert_eq!(
        json["usage"]["output_tokens_details"]["reasoning_tokens"],
        2
    );
    assert_eq!(
        json["output"][0]["content"][0]["text"],
        "lorem ipsum dolor sit amet"
    );
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    stream["max_output_tokens"] = json!(3);
    let events = typed_events(post(&mock, "/v1/responses", &stream).await).await;
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"response.created"));
    assert_eq!(kinds.last(), Some(&"response.incomplete"), "capped at 3");
    let deltas = kinds
        .iter()
        .filter(|k| **k == "response.output_text.delta")
        .count();
    assert_eq!(deltas, 3);
    let last = &events.last().unwrap().1;
    assert_eq!(last["response"]["usage"]["output_tokens"], 5);
    assert!(events.iter().all(|(k, d)| d["type"] == k.as_str()));
}

#[tokio::test]
async fn the_messages_api_json_stream_errors_and_count_tokens() {
    let mock = MockUpstream::spawn().await.unwrap();
    let body = json!({"model": "claude-sonnet-4", "max_tokens": 100,
        "system": "be brief", "messages": [{"role": "user",
        "content": "hi mock:tokens=4 mock:cached=2 mock:cache_write=3"}]});
    let response = Client::new()
        .post(format!("{}/v1/messages", mock.url()))
        .header("x-api-key", "sk-ant-test")
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "prompt-caching-2024-07-31")
        .json(&body)
        .send()
        .await
        .unwrap();
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["type"], "message");
    assert_eq!(json["stop_reason"], "end_turn");
    // 6 prompt words (the system's 2 and the message's 4) + 3 written, 2 of them read from the
    // cache: input 4, read 2, written 3.
    assert_eq!(
        json["usage"],
        json!({"input_tokens": 4, "cache_creation_input_tokens": 3,
               "cache_read_input_tokens": 2, "output_tokens": 4})
    );
    let stats = mock.stats();
    assert_eq!(stats.last_anthropic_version.as_deref(), Some("2023-06-01"));
    assert_eq!(
        stats.last_anthropic_beta.as_deref(),
        Some("prompt-caching-2024-07-31")
    );
    assert_eq!(stats.last_api_key.as_deref(), Some("sk-ant-test"));
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let events = typed_events(post(&mock, "/v1/messages", &stream).await).await;
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"message_start"));
    assert_eq!(kinds.last(), Some(&"message_stop"));
    assert_eq!(
        events[0].1["message"]["usage"]["cache_read_input_tokens"],
        2
    );
    let delta = events.iter().find(|(k, _)| k == "message_delta").unwrap();
    assert_eq!(delta.1["usage"]["output_tokens"], 4);
    // An error event mid-stream, in Anthropic's shape.
    let mut failing = stream.clone();
    failing["messages"][0]["content"] = json!("hi mock:tokens=9 mock:error_after=2");
    let events = typed_events(post(&mock, "/v1/messages", &failing).await).await;
    let (kind, data) = events.last().unwrap();
    assert_eq!(kind, "error");
    assert_eq!(data["error"]["type"], "overloaded_error");
    // Errors and max_tokens, as Anthropic answers them.
    let mut missing = body.clone();
    missing.as_object_mut().unwrap().remove("max_tokens");
    let r = post(&mock, "/v1/messages", &missing).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let error: Value = r.json().await.unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    let counted: Value = post(&mock, "/v1/messages/count_tokens", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(counted["input_tokens"], 6, "system 2 words + message 4");
}
