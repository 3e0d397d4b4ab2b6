//! The routes: parse a request, read its scenario, answer like OpenAI (via LiteLLM) would.
//!
//! Guarantees: no input makes a handler panic; a body that is not JSON or lacks a required field
//! is a 400, an unknown route a 404, a wrong method a 405, all in OpenAI's error shape. Every
//! successful `/v1` response (JSON, stream, and `mock:malformed`'s 200) carries
//! `x-litellm-call-id` (unique per server: `mock-call-<n>`) and `x-litellm-response-cost`
//! (from the planned usage, eight decimals). `mock:hang` and every wait end when the mock shuts
//! down (with a 503), so a stopping server is never held up by its own scenarios.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use serde_json::json;

use crate::scenario::{self, Scenario, Usage};
use crate::state::Shared;
use crate::stream::{Kind, Plan, SseStream};
use crate::wire::{self, ChatRequest, CompletionRequest, EmbeddingRequest, SeqId};

const CALL_ID: HeaderName = HeaderName::from_static("x-litellm-call-id");
const RESPONSE_COST: HeaderName = HeaderName::from_static("x-litellm-response-cost");

type AppState = State<Arc<Shared>>;

/// Middleware: counts every request and records the `Authorization` of `/v1` requests.
pub(crate) async fn track(State(shared): AppState, request: Request, next: Next) -> Response {
    shared.count_request();
    let path = request.uri().path();
    if path == "/v1" || path.starts_with("/v1/") {
        shared.record_authorization(request.headers().get(AUTHORIZATION));
    }
    next.run(request).await
}

pub(crate) async fn chat(State(shared): AppState, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match recorded(&shared, body) {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let request: ChatRequest = match parse(&body, "chat completion") {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let prompt_tokens = request
        .messages
        .iter()
        .flat_map(|m| m.texts())
        .map(scenario::count_words)
        .sum();
    let mut scenario = Scenario::default();
    if let Some(last) = request.messages.last() {
        last.texts().for_each(|text| scenario.scan(text));
    }
    let generation = Generation {
        kind: Kind::Chat,
        model: &request.model,
        prompt_tokens,
        cap: request.max_completion_tokens.or(request.max_tokens),
        stream: request.stream.unwrap_or(false),
        include_usage: wire::include_usage(request.stream_options.as_ref()),
        scenario,
    };
    generate(shared, generation).await
}

pub(crate) async fn completions(
    State(shared): AppState,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match recorded(&shared, body) {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let request: CompletionRequest = match parse(&body, "completion") {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let mut scenario = Scenario::default();
    let mut prompt_tokens = 0;
    for text in request.prompt.0.iter() {
        scenario.scan(text);
        prompt_tokens += scenario::count_words(text);
    }
    let generation = Generation {
        kind: Kind::Text,
        model: &request.model,
        prompt_tokens,
        cap: request.max_tokens,
        stream: request.stream.unwrap_or(false),
        include_usage: wire::include_usage(request.stream_options.as_ref()),
        scenario,
    };
    generate(shared, generation).await
}

pub(crate) async fn embeddings(
    State(shared): AppState,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match recorded(&shared, body) {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let request: EmbeddingRequest = match parse(&body, "embeddings") {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let mut scenario = Scenario::default();
    if let Some(first) = request.input.0.first() {
        scenario.scan(first);
    }
    if let Some(response) = hold(&shared, &scenario).await {
        return response;
    }
    let prompt_tokens: u64 = request.input.0.iter().map(scenario::count_words).sum();
    let call = shared.next_call();
    let headers = litellm_headers(&shared, call, Usage::new(prompt_tokens, 0));
    if scenario.malformed {
        return malformed(headers);
    }
    let list = wire::EmbeddingList {
        object: "list",
        data: request
            .input
            .0
            .iter()
            .enumerate()
            .map(|(index, text)| wire::Embedding {
                object: "embedding",
                index,
                embedding: scenario::embedding(text),
            })
            .collect(),
        model: &request.model,
        usage: (!scenario.no_usage).then_some(wire::EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        }),
    };
    json_response(headers, &list)
}

/// `GET /v1/models` (no call number: only completions and embeddings are calls).
pub(crate) async fn models(State(shared): AppState) -> Response {
    match &shared.options.models {
        Some(names) => json_response(HeaderMap::new(), &wire::model_list(names)),
        None => json_response(HeaderMap::new(), &wire::models()),
    }
}

/// LiteLLM's `GET /model/info` (the deployments behind each model name), when the mock was
/// given one; else a 404, as a plain OpenAI-compatible server answers.
pub(crate) async fn model_info(State(shared): AppState, headers: HeaderMap) -> Response {
    let Some(info) = &shared.options.model_info else {
        return openai_error(StatusCode::NOT_FOUND, "Unknown route: GET /model/info");
    };
    if headers.get(AUTHORIZATION).is_none() {
        return openai_error(StatusCode::UNAUTHORIZED, "model info needs the master key");
    }
    json_response(HeaderMap::new(), info)
}

/// `mock:stall_body`: the headers of a JSON response now, its body never (until shutdown).
fn stalled_body(shared: Arc<Shared>, headers: HeaderMap) -> Response {
    let body = futures_util::stream::once(async move {
        shared.stopped().await;
        Err::<Bytes, std::io::Error>(std::io::Error::other("mock upstream is shutting down"))
    });
    let mut response = Response::new(Body::from_stream(body));
    let map = response.headers_mut();
    map.extend(headers);
    map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// LiteLLM's own liveness route; its body is the JSON string `"I'm alive!"`.
pub(crate) async fn liveliness() -> Response {
    Json("I'm alive!").into_response()
}

pub(crate) async fn not_found(request: Request) -> Response {
    let message = format!(
        "Unknown route: {} {}",
        request.method(),
        request.uri().path()
    );
    openai_error(StatusCode::NOT_FOUND, &message)
}

pub(crate) async fn method_not_allowed(request: Request) -> Response {
    let message = format!(
        "Method {} not allowed on {}",
        request.method(),
        request.uri().path()
    );
    openai_error(StatusCode::METHOD_NOT_ALLOWED, &message)
}

/// A chat or text completion request, parsed.
struct Generation<'a> {
    kind: Kind,
    model: &'a str,
    prompt_tokens: u64,
    /// `max_completion_tokens`, else `max_tokens`.
    cap: Option<u64>,
    stream: bool,
    include_usage: bool,
    scenario: Scenario,
}

async fn generate(shared: Arc<Shared>, g: Generation<'_>) -> Response {
    let scenario = g.scenario;
    let model = scenario.model.clone().unwrap_or_else(|| g.model.to_owned());
    if g.stream && scenario.status.is_none() && !scenario.hang {
        let reply = scenario::reply(&scenario, g.cap);
        let usage = Usage::of(&scenario, g.prompt_tokens, reply.tokens);
        let call = shared.next_call();
        let headers = litellm_headers(&shared, call, usage);
        let plan = Plan {
            kind: g.kind,
            seq: call,
            model,
            reply_tokens: reply.tokens,
            finish_reason: reply.finish_reason,
            usage: (g.include_usage && !scenario.no_usage).then_some(usage),
            scenario,
        };
        let mut response = Response::new(Body::from_stream(SseStream::new(shared, plan)));
        let map = response.headers_mut();
        map.extend(headers);
        map.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        map.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return response;
    }
    if let Some(response) = hold(&shared, &scenario).await {
        return response;
    }
    let reply = scenario::reply(&scenario, g.cap);
    let usage = Usage::of(&scenario, g.prompt_tokens, reply.tokens);
    let call = shared.next_call();
    let headers = litellm_headers(&shared, call, usage);
    if scenario.malformed {
        return malformed(headers);
    }
    if scenario.stall_body {
        return stalled_body(shared, headers);
    }
    let id = SeqId {
        prefix: g.kind.id_prefix(),
        seq: call,
    };
    let text = scenario::reply_text(reply.tokens);
    let usage = (!scenario.no_usage).then_some(usage);
    let finish_reason = reply.finish_reason.as_str();
    match g.kind {
        Kind::Chat => json_response(
            headers,
            &wire::ChatCompletion {
                id,
                object: "chat.completion",
                created: wire::CREATED,
                model: &model,
                choices: [wire::ChatChoice {
                    index: 0,
                    message: wire::AssistantMessage {
                        role: "assistant",
                        content: &text,
                    },
                    finish_reason,
                }],
                usage,
            },
        ),
        Kind::Text => json_response(
            headers,
            &wire::TextCompletion {
                id,
                object: "text_completion",
                created: wire::CREATED,
                model: &model,
                choices: &[wire::TextChoice {
                    text: text.as_str(),
                    index: 0,
                    logprobs: None,
                    finish_reason: Some(finish_reason),
                }],
                usage,
            },
        ),
    }
}

/// The scenario's part before a non-stream response: `hang`, then `slow`, then `status`.
/// `Some` is the response to send instead of the normal one.
async fn hold(shared: &Shared, scenario: &Scenario) -> Option<Response> {
    if scenario.hang {
        shared.stopped().await;
        return Some(shutting_down());
    }
    if let Some(delay) = scenario.slow()
        && !sleep_unless_stopped(shared, delay).await
    {
        return Some(shutting_down());
    }
    scenario.status.map(|code| status_error(shared, code))
}

/// Sleeps `delay`; `false` if the mock began to stop first.
async fn sleep_unless_stopped(shared: &Shared, delay: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = shared.stopped() => false,
    }
}

fn litellm_headers(shared: &Shared, call: u64, usage: Usage) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(4);
    if !shared.options.litellm_headers {
        return headers;
    }
    if let Ok(value) = HeaderValue::try_from(format!("mock-call-{call}")) {
        headers.insert(CALL_ID, value);
    }
    if let Ok(value) = HeaderValue::try_from(usage.cost_text()) {
        headers.insert(RESPONSE_COST, value);
    }
    headers
}

fn json_response<T: Serialize>(headers: HeaderMap, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut response = Response::new(Body::from(body));
            let map = response.headers_mut();
            map.extend(headers);
            map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(e) => error_body(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": {"message": format!("mock upstream failed to encode: {e}"),
                "type": "upstream_error", "param": null, "code": null}}),
        ),
    }
}

/// `mock:malformed` outside streams: a 200 that claims JSON and is not.
fn malformed(headers: HeaderMap) -> Response {
    let mut response = Response::new(Body::from(&b"{\"this is not"[..]));
    let map = response.headers_mut();
    map.extend(headers);
    map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_body(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

/// OpenAI's shape for a request the mock refuses.
fn openai_error(status: StatusCode, message: &str) -> Response {
    error_body(
        status,
        json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}}),
    )
}

/// The body of a POST, recorded for [`crate::Stats::last_body`]; a body that could not be read
/// is answered at once.
fn recorded(shared: &Shared, body: Result<Bytes, BytesRejection>) -> Result<Bytes, Box<Response>> {
    let body = body.map_err(|rejection| Box::new(rejected(&rejection)))?;
    shared.record_body(body.clone());
    Ok(body)
}

/// The request parsed from `body` (borrowing from it), or a 400 naming the `what` request.
fn parse<'a, T: serde::Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, Box<Response>> {
    serde_json::from_slice(body)
        .map_err(|e| Box::new(invalid_request(&format!("invalid {what} request: {e}"))))
}

fn invalid_request(message: &str) -> Response {
    openai_error(StatusCode::BAD_REQUEST, message)
}

/// The body could not be read (too large, broken transfer).
fn rejected(rejection: &BytesRejection) -> Response {
    openai_error(rejection.status(), &rejection.body_text())
}

/// `mock:status=CODE`.
/// `mock:status=CODE`. A 401 or 403 quotes the caller's key back, as a careless provider might:
/// whoever relays it must keep it out of logs and answers.
fn status_error(shared: &Shared, code: u16) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = match code {
        401 | 403 => format!(
            "Incorrect API key provided: {}",
            shared.stats().last_authorization.unwrap_or_default()
        ),
        _ => format!("mock upstream error {code}"),
    };
    error_body(
        status,
        json!({"error": {"message": message, "type": "upstream_error", "code": code}}),
    )
}

/// A waiting request (`hang`, `slow`) released by the mock's shutdown.
fn shutting_down() -> Response {
    error_body(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"error": {"message": "mock upstream is shutting down", "type": "upstream_error", "code": 503}}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test]
    async fn hang_waits_for_shutdown_then_503() {
        let shared = Arc::new(Shared::new());
        let body = Bytes::from_static(
            br#"{"model":"m","messages":[{"role":"user","content":"hi mock:hang"}]}"#,
        );
        let mut pending = Box::pin(chat(State(shared.clone()), Ok(body)));
        for _ in 0..3 {
            assert!((&mut pending).now_or_never().is_none());
            tokio::task::yield_now().await;
        }
        assert!(shared.stats().last_body.is_some());
        shared.stop();
        let response = pending.await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn slow_non_stream_is_released_by_shutdown() {
        let shared = Arc::new(Shared::new());
        shared.stop();
        let body = Bytes::from_static(br#"{"model":"m","input":"mock:slow=3600000"}"#);
        let response = embeddings(State(shared), Ok(body)).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
