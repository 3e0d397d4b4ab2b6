//! The two typed-event APIs coding agents speak, as a provider answers them: OpenAI's Responses
//! API (`POST /v1/responses`) and Anthropic's Messages API (`POST /v1/messages`, and
//! `POST /v1/messages/count_tokens`), JSON and streamed.
//!
//! The same arithmetic as the chat routes (`scenario`): prompt words are tokens, the reply is
//! `mock:tokens=N` words capped by `max_output_tokens` / `max_tokens`, and the directives apply
//! (`cached`, `cache_write`, `reasoning`, `searches`, `prompt_tokens`, `model=`, `status`,
//! `malformed`, `slow`, `stall_after`, `cut_after`, `error_after`, `usage_delay`, `no_usage`,
//! `chunk_words`, `ignore_cap`, `hang`, and `no_end`: the stream ends without its terminal
//! event). Usage is reported as each API does: Responses'
//! `input_tokens` includes cached tokens (`input_tokens_details.cached_tokens`) and
//! `output_tokens` reasoning (`output_tokens_details.reasoning_tokens`); Messages'
//! `input_tokens` excludes the cache (`cache_read_input_tokens`, `cache_creation_input_tokens`
//! beside it), arrives in `message_start`, and the output count in `message_delta`.
//!
//! Streams end with their terminal event (`response.completed` or `response.incomplete`;
//! `message_stop`), never `[DONE]`. `usage_delay` waits before the event that carries the final
//! usage; `error_after=K` sends the API's error event after K words and ends; `stall_after`
//! and `cut_after` as for chat. Errors are in each API's own shape.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::scenario::{self, Scenario, Usage};
use crate::state::Shared;
use crate::wire::CREATED;

type AppState = State<Arc<Shared>>;

/// Which API a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Responses,
    Messages,
}

/// Every text of a JSON value (strings under `text`, `content`, `input`, `instructions`,
/// `system`, recursively), for counting prompt words and finding directives.
fn texts(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|i| texts(i, out)),
        Value::Object(map) => {
            for key in [
                "text",
                "content",
                "input",
                "instructions",
                "system",
                "output",
            ] {
                if let Some(v) = map.get(key) {
                    texts(v, out);
                }
            }
        }
        _ => {}
    }
}

/// The prompt of a request: its texts, the texts of its last turn (where directives are read).
fn prompt(api: Api, body: &Value) -> (Vec<String>, Vec<String>) {
    let mut all = Vec::new();
    let mut last = Vec::new();
    match api {
        Api::Responses => {
            if let Some(i) = body.get("instructions") {
                texts(i, &mut all);
            }
            match body.get("input") {
                Some(Value::Array(items)) => {
                    for item in items {
                        texts(item, &mut all);
                    }
                    if let Some(item) = items.last() {
                        texts(item, &mut last);
                    }
                }
                Some(other) => {
                    texts(other, &mut all);
                    texts(other, &mut last);
                }
                None => {}
            }
        }
        Api::Messages => {
            if let Some(s) = body.get("system") {
                texts(s, &mut all);
            }
            if let Some(Value::Array(messages)) = body.get("messages") {
                for m in messages {
                    texts(m.get("content").unwrap_or(&Value::Null), &mut all);
                }
                if let Some(m) = messages.last() {
                    texts(m.get("content").unwrap_or(&Value::Null), &mut last);
                }
            }
        }
    }
    (all, last)
}

fn error_shape(api: Api, status: StatusCode, message: &str) -> Response {
    let kind = match (api, status.as_u16()) {
        (Api::Messages, 401) => "authentication_error",
        (Api::Messages, 403) => "permission_error",
        (Api::Messages, 404) => "not_found_error",
        (Api::Messages, 429) => "rate_limit_error",
        (Api::Messages, 529) => "overloaded_error",
        (Api::Messages, 400..=499) => "invalid_request_error",
        (Api::Messages, _) => "api_error",
        (Api::Responses, _) => "invalid_request_error",
    };
    let body = match api {
        Api::Messages => json!({"type": "error", "error": {"type": kind, "message": message}}),
        Api::Responses => {
            json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
        }
    };
    (status, axum::Json(body)).into_response()
}

pub(crate) async fn responses(
    State(shared): AppState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(shared, Api::Responses, headers, body).await
}

pub(crate) async fn messages(
    State(shared): AppState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(shared, Api::Messages, headers, body).await
}

/// `POST /v1/messages/count_tokens`: the prompt's words.
pub(crate) async fn count_tokens(
    State(shared): AppState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    shared.record_headers(&headers);
    let Ok(body) = body else {
        return error_shape(Api::Messages, StatusCode::BAD_REQUEST, "unreadable body");
    };
    shared.record_body(body.clone());
    let Ok(value) = serde_json::from_slice::<Value>(&body) else {
        return error_shape(Api::Messages, StatusCode::BAD_REQUEST, "body is not JSON");
    };
    let (all, _) = prompt(Api::Messages, &value);
    let words: u64 = all.iter().map(|t| scenario::count_words(t)).sum();
    axum::Json(json!({"input_tokens": words})).into_response()
}

async fn handle(
    shared: Arc<Shared>,
    api: Api,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    shared.record_headers(&headers);
    let body = match body {
        Ok(body) => body,
        Err(r) => return error_shape(api, r.status(), &r.body_text()),
    };
    shared.record_body(body.clone());
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return error_shape(
                api,
                StatusCode::BAD_REQUEST,
                "the body must be a JSON object",
            );
        }
    };
    let Some(model) = value
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return error_shape(api, StatusCode::BAD_REQUEST, "model is required");
    };
    let cap_field = match api {
        Api::Responses => "max_output_tokens",
        Api::Messages => "max_tokens",
    };
    let cap = value.get(cap_field).and_then(Value::as_u64);
    if api == Api::Messages && cap.is_none() {
        return error_shape(api, StatusCode::BAD_REQUEST, "max_tokens: Field required");
    }
    let (all, last) = prompt(api, &value);
    let mut scenario = Scenario::default();
    last.iter().for_each(|t| scenario.scan(t));
    let words: u64 = all.iter().map(|t| scenario::count_words(t)).sum();
    if scenario.hang {
        shared.stopped().await;
        return error_shape(api, StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    if let Some(code) = scenario.status {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return error_shape(api, status, &format!("mock upstream error {code}"));
    }
    let reply = scenario::reply(&scenario, cap);
    let usage = Usage::of(&scenario, words, reply.tokens);
    let call = shared.next_call();
    let model = scenario.model.clone().unwrap_or(model);
    let capped = reply.finish_reason == scenario::FinishReason::Length;
    let plan = Plan {
        api,
        call,
        model,
        reply_tokens: reply.tokens,
        capped,
        usage,
        scenario,
    };
    let stream = value.get("stream").and_then(Value::as_bool) == Some(true);
    if stream {
        shared.stream_started();
        let events = plan.events();
        let mut response = Response::new(Body::from_stream(event_stream(shared, events)));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return response;
    }
    if let Some(delay) = plan.scenario.slow() {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.stopped() => return error_shape(api, StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
        }
    }
    if plan.scenario.malformed {
        return (
            [(CONTENT_TYPE, "application/json")],
            Bytes::from_static(b"{\"this is not"),
        )
            .into_response();
    }
    axum::Json(plan.whole()).into_response()
}

/// Everything an answer needs.
struct Plan {
    api: Api,
    call: u64,
    model: String,
    reply_tokens: u64,
    /// The cap cut the reply.
    capped: bool,
    usage: Usage,
    scenario: Scenario,
}

impl Plan {
    fn text(&self) -> String {
        scenario::reply_text(self.reply_tokens)
    }

    fn responses_usage(&self) -> Value {
        let u = &self.usage;
        json!({
            "input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": u.details.cached},
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": u.details.reasoning},
            "total_tokens": u.total_tokens,
        })
    }

    /// Messages' input side: `input_tokens` without the cache.
    fn messages_input(&self) -> Value {
        let u = &self.usage;
        let d = &u.details;
        let mut usage = json!({
            "input_tokens": u.prompt_tokens.saturating_sub(d.cached).saturating_sub(d.cache_write),
            "cache_creation_input_tokens": d.cache_write,
            "cache_read_input_tokens": d.cached,
        });
        if d.searches > 0 {
            usage["server_tool_use"] = json!({"web_search_requests": d.searches});
        }
        usage
    }

    fn messages_usage(&self) -> Value {
        let mut usage = self.messages_input();
        usage["output_tokens"] = json!(self.usage.completion_tokens);
        usage
    }

    fn response_object(&self, status: &str, with_output: bool) -> Value {
        let usage = if self.scenario.no_usage || status == "in_progress" {
            Value::Null
        } else {
            self.responses_usage()
        };
        let output = if with_output {
            json!([{"type": "message", "id": format!("msg_mock_{}", self.call),
                "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": self.text(), "annotations": []}]}])
        } else {
            json!([])
        };
        json!({
            "id": format!("resp_mock_{}", self.call),
            "object": "response",
            "created_at": CREATED,
            "status": status,
            "model": self.model,
            "output": output,
            "incomplete_details": if status == "incomplete" {
                json!({"reason": "max_output_tokens"})
            } else {
                Value::Null
            },
            "usage": usage,
        })
    }

    /// The non-streamed answer.
    fn whole(&self) -> Value {
        match self.api {
            Api::Responses => {
                let status = if self.capped {
                    "incomplete"
                } else {
                    "completed"
                };
                self.response_object(status, true)
            }
            Api::Messages => {
                let mut message = json!({
                    "id": format!("msg_mock_{}", self.call),
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [{"type": "text", "text": self.text()}],
                    "stop_reason": if self.capped { "max_tokens" } else { "end_turn" },
                    "stop_sequence": null,
                    "usage": self.messages_usage(),
                });
                if self.scenario.no_usage {
                    message["usage"] = Value::Null;
                }
                message
            }
        }
    }

    fn event(kind: &str, data: &Value) -> Bytes {
        Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
    }

    /// The pieces of the reply, `chunk_words` words each.
    fn deltas(&self) -> Vec<String> {
        let per = self.scenario.chunk_words.unwrap_or(1).max(1);
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.reply_tokens {
            let n = per.min(self.reply_tokens - i);
            let mut piece = String::new();
            for j in 0..n {
                if j > 0 {
                    piece.push(' ');
                }
                piece.push_str(scenario::word(i + j));
            }
            if i + n < self.reply_tokens {
                piece.push(' ');
            }
            out.push(piece);
            i += n;
        }
        out
    }

    /// The stream's events, and what the stream does around them.
    fn events(&self) -> Planned {
        let deltas = self.deltas();
        let mut events = Vec::new();
        let mut words_before = Vec::new();
        let mut sequence = 0;
        let mut push = |events: &mut Vec<Bytes>, kind: &str, mut data: Value| {
            if self.api == Api::Responses {
                data["sequence_number"] = json!(sequence);
                sequence += 1;
            }
            data["type"] = json!(kind);
            events.push(Plan::event(kind, &data));
        };
        let error_event = |api: Api| match api {
            Api::Responses => Plan::event(
                "error",
                &json!({"type": "error", "code": "server_error",
                        "message": "mock upstream error mid-stream"}),
            ),
            Api::Messages => Plan::event(
                "error",
                &json!({"type": "error", "error": {"type": "overloaded_error",
                        "message": "mock upstream error mid-stream"}}),
            ),
        };
        match self.api {
            Api::Responses => {
                push(
                    &mut events,
                    "response.created",
                    json!({"response": self.response_object("in_progress", false)}),
                );
                words_before.push(0);
                let item = format!("msg_mock_{}", self.call);
                let mut sent = 0;
                for d in &deltas {
                    push(
                        &mut events,
                        "response.output_text.delta",
                        json!({"item_id": item, "output_index": 0, "content_index": 0, "delta": d}),
                    );
                    words_before.push(sent);
                    sent += d.split_whitespace().count() as u64;
                }
                push(
                    &mut events,
                    "response.output_text.done",
                    json!({"item_id": item, "output_index": 0, "content_index": 0,
                           "text": self.text()}),
                );
                words_before.push(sent);
                let terminal = if self.capped {
                    "response.incomplete"
                } else {
                    "response.completed"
                };
                let status = if self.capped {
                    "incomplete"
                } else {
                    "completed"
                };
                push(
                    &mut events,
                    terminal,
                    json!({"response": self.response_object(status, true)}),
                );
                words_before.push(sent);
            }
            Api::Messages => {
                let mut start_usage = self.messages_input();
                start_usage["output_tokens"] = json!(1);
                push(
                    &mut events,
                    "message_start",
                    json!({"message": {"id": format!("msg_mock_{}", self.call),
                        "type": "message", "role": "assistant", "model": self.model,
                        "content": [], "stop_reason": null, "stop_sequence": null,
                        "usage": if self.scenario.no_usage { Value::Null } else { start_usage }}}),
                );
                words_before.push(0);
                push(
                    &mut events,
                    "content_block_start",
                    json!({"index": 0, "content_block": {"type": "text", "text": ""}}),
                );
                words_before.push(0);
                let mut sent = 0;
                for d in &deltas {
                    push(
                        &mut events,
                        "content_block_delta",
                        json!({"index": 0, "delta": {"type": "text_delta", "text": d}}),
                    );
                    words_before.push(sent);
                    sent += d.split_whitespace().count() as u64;
                }
                push(&mut events, "content_block_stop", json!({"index": 0}));
                words_before.push(sent);
                let delta_usage = if self.scenario.no_usage {
                    Value::Null
                } else {
                    json!({"output_tokens": self.usage.completion_tokens})
                };
                push(
                    &mut events,
                    "message_delta",
                    json!({"delta": {"stop_reason": if self.capped { "max_tokens" } else { "end_turn" },
                        "stop_sequence": null}, "usage": delta_usage}),
                );
                words_before.push(sent);
                push(&mut events, "message_stop", json!({}));
                words_before.push(sent);
            }
        }
        if self.scenario.no_end {
            events.pop();
            words_before.pop();
        }
        // Where the scenario bends the stream: the first event sent after K words.
        let last = events.len().saturating_sub(1);
        let after = |k: u64| {
            words_before
                .iter()
                .position(|w| *w >= k && *w > 0)
                .or(Some(last))
        };
        let s = &self.scenario;
        let usage_event = match self.api {
            Api::Responses => last,
            Api::Messages => last.saturating_sub(1),
        };
        let mut planned = Planned {
            events: VecDeque::from(events),
            sent: 0,
            stall_at: s.stall_after.and_then(after),
            cut_at: s.cut_after.and_then(after),
            error_at: s
                .error_after
                .and_then(|k| if k == 0 { Some(1) } else { after(k) }),
            error_event: error_event(self.api),
            delay_at: s
                .usage_delay_ms
                .filter(|ms| *ms > 0)
                .map(|ms| (usage_event, Duration::from_millis(ms))),
            pace: s.slow(),
        };
        if s.malformed {
            planned.events.truncate(1);
            planned
                .events
                .push_back(Bytes::from_static(b"event: oops\ndata: {broken\n\n"));
        }
        planned
    }
}

/// A stream's events and the scenario's bends, by event index.
struct Planned {
    events: VecDeque<Bytes>,
    /// Events handed out so far.
    sent: usize,
    stall_at: Option<usize>,
    cut_at: Option<usize>,
    error_at: Option<usize>,
    error_event: Bytes,
    delay_at: Option<(usize, Duration)>,
    pace: Option<Duration>,
}

/// Counts a stream the client left before its end as cancelled.
struct EventStream {
    shared: Arc<Shared>,
    finished: bool,
}

/// The streamed body of `planned`.
fn event_stream(
    shared: Arc<Shared>,
    planned: Planned,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let guard = EventStream {
        shared,
        finished: false,
    };
    {
        futures_util::stream::unfold((planned, guard), |(mut p, mut guard)| async move {
            let shared = guard.shared.clone();
            let index = p.sent;
            if p.stall_at == Some(index) {
                shared.stopped().await;
                return None;
            }
            if p.cut_at == Some(index) {
                guard.finished = true;
                shared.stream_completed();
                return Some((
                    Err(std::io::Error::other("mock upstream cut the stream")),
                    (p, guard),
                ));
            }
            if p.error_at == Some(index) {
                guard.finished = true;
                shared.stream_completed();
                p.events.clear();
                p.stall_at = None;
                let event = p.error_event.clone();
                p.error_at = None;
                return Some((Ok(event), (p, guard)));
            }
            let wait = match p.delay_at {
                Some((at, d)) if at == index => Some(d),
                _ if index > 0 => p.pace,
                _ => None,
            };
            if let Some(d) = wait {
                tokio::select! {
                    () = tokio::time::sleep(d) => {}
                    () = shared.stopped() => return None,
                }
            }
            let event = p.events.pop_front()?;
            p.sent += 1;
            if p.events.is_empty() {
                guard.finished = true;
                shared.stream_completed();
            }
            Some((Ok(event), (p, guard)))
        })
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.stream_cancelled();
        }
    }
}
