//! A streamed (SSE) answer, metered as it passes — a chat stream, a Responses API stream or an
//! Anthropic Messages stream ([`Wire`]): each upstream event is forwarded as soon as it is whole
//! (never the whole stream buffered), its content counted, its usage read (chat's usage chunk
//! hidden from a client that did not ask for it), and the stream's last event (`data: [DONE]`,
//! `response.completed` / `.incomplete` / `.failed`, `message_stop`) held back until the request
//! is settled durably.
//!
//! How a stream ends decides what is charged — what the provider bills:
//! - its last event, or a chat stream's clean end: the reported usage, else an estimate
//!   (marked);
//! - the client goes away: the gateway keeps reading the upstream, for at most
//!   `upstream.disconnect_usage_wait_secs`, until its final usage arrives (chat's usage chunk,
//!   Anthropic's `message_delta`, the Responses terminal event), and charges that; if it does
//!   not come, an estimate of everything generated (every content, reasoning and tool-call
//!   delta, those read after the client left included; for Anthropic, the input side
//!   `message_start` reported exactly and the output estimated); then the upstream connection
//!   is closed, which stops the generation;
//! - the upstream breaks off, sends an error event, stalls past the idle timeout, or (Responses,
//!   Messages) ends without its last event: what was generated (the reported usage if it came,
//!   else an estimate), with the error logged and an error event in the stream's own shape to
//!   the client; if nothing was generated, the hold is released and nothing charged.
//!
//! Settling runs in its own task, so a client vanishing mid-settle cannot cut it short.

use std::collections::VecDeque;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;

use crate::ledger::UsageErrorType;
use crate::prices::cost::TokenUsage;

use super::error::ApiError;
use super::exchange::{Exchange, Outcome};
use super::request::Wire;
use super::sse::{self, Event, EventSplitter, UsageReport};
use super::usage::AnthropicUsage;

/// What has been read of the upstream's stream, and metered.
#[derive(Debug)]
struct Reading {
    wire: Wire,
    upstream: reqwest::Response,
    splitter: EventSplitter,
    /// The whole usage reported (chat, Responses), or Anthropic's pieces merged so far.
    reported: Option<TokenUsage>,
    anthropic: Option<AnthropicUsage>,
    /// The last usage the stream will send has come.
    final_usage: bool,
    /// Bytes of generated text seen (content, reasoning, tool calls).
    generated_bytes: u64,
    /// Chunks that carried generated text.
    content_chunks: u64,
    /// An event cited the web (a search was billed).
    cited: bool,
    /// The model the events name.
    model: Option<String>,
    /// The id of the response or message.
    response_id: Option<String>,
    /// The last Responses `sequence_number` seen.
    sequence: Option<u64>,
    /// The upstream sent the stream's last event.
    saw_end: bool,
    /// The upstream sent an error event (LiteLLM's way to fail after the 200 headers).
    upstream_error: Option<String>,
}

impl Reading {
    fn new(wire: Wire, upstream: reqwest::Response) -> Reading {
        Reading {
            wire,
            upstream,
            splitter: EventSplitter::default(),
            reported: None,
            anthropic: None,
            final_usage: false,
            generated_bytes: 0,
            content_chunks: 0,
            cited: false,
            model: None,
            response_id: None,
            sequence: None,
            saw_end: false,
            upstream_error: None,
        }
    }

    /// Meters one event; returns what it means.
    fn meter(&mut self, event: &Bytes) -> Event {
        let read = Event::read(self.wire, event);
        if read.generated_bytes > 0 {
            self.content_chunks += 1;
            self.generated_bytes = self.generated_bytes.saturating_add(read.generated_bytes);
        }
        match read.usage {
            Some(UsageReport::Whole(u)) => self.reported = Some(u),
            Some(UsageReport::Anthropic(piece)) => {
                let merged = self.anthropic.unwrap_or_default().merge(piece);
                self.anthropic = Some(merged);
                self.reported = Some(merged.total());
            }
            None => {}
        }
        self.final_usage |= read.final_usage;
        if self.model.is_none() {
            self.model.clone_from(&read.model);
        }
        // The last event's id wins: LiteLLM's Responses bridge names the response anew at the end.
        if read.response_id.is_some() && (self.response_id.is_none() || read.is_end()) {
            self.response_id.clone_from(&read.response_id);
        }
        if read.sequence_number.is_some() {
            self.sequence = read.sequence_number;
        }
        self.cited |= read.cites;
        self.saw_end |= read.is_end();
        if read.is_error && self.upstream_error.is_none() {
            let text = String::from_utf8_lossy(event);
            self.upstream_error = Some(format!(
                "the upstream sent an error mid-stream: {}",
                text.trim().chars().take(300).collect::<String>()
            ));
        }
        read
    }

    /// Whether anything was generated or reported.
    fn served_anything(&self) -> bool {
        self.content_chunks > 0 || self.reported.is_some()
    }

    /// What was used so far: the reported usage once final; before that, what was reported
    /// (Anthropic's input side) with the output estimated (at least one token per content
    /// chunk); and whether it is an estimate.
    fn usage(&self, exchange: &mut Exchange) -> (TokenUsage, bool) {
        let estimated_output = exchange
            .estimate(self.generated_bytes)
            .completion_tokens
            .max(self.content_chunks);
        let (mut usage, estimated) = match self.reported {
            Some(u) if self.final_usage => (u, false),
            Some(mut u) => {
                u.completion_tokens = u.completion_tokens.max(estimated_output);
                if u.prompt_tokens == 0 {
                    // LiteLLM's Messages bridge starts with an all-zero usage.
                    u.prompt_tokens = exchange.estimate(0).prompt_tokens;
                }
                (u, true)
            }
            None => {
                let mut u = exchange.estimate(self.generated_bytes);
                u.completion_tokens = estimated_output;
                (u, true)
            }
        };
        exchange.count_searches(&mut usage, self.cited);
        (usage, estimated)
    }

    fn outcome(&self, exchange: &mut Exchange, ttft: Option<u32>) -> Outcome {
        let (usage, estimated) = self.usage(exchange);
        Outcome {
            usage,
            estimated,
            http_status: 200,
            time_to_first_token_ms: ttft,
            error: None,
            response_model: self.model.clone(),
            response_id: self.response_id.clone(),
        }
    }

    /// An error event in this stream's shape.
    fn error_event(&self, message: &str, kind: &str) -> Bytes {
        sse::error_event(self.wire, message, kind, self.sequence)
    }
}

/// The metered stream: the client's body, event by event.
#[derive(Debug)]
pub struct StreamMeter {
    /// `None` once the request's ledger work has been handed to a task.
    exchange: Option<Exchange>,
    /// `None` once the stream is over (or handed to a drain after the client left).
    reading: Option<Reading>,
    wire: Wire,
    hide_usage: bool,
    first_token_ms: Option<u32>,
    out: VecDeque<Bytes>,
    done: bool,
    idle: Duration,
    /// When the stream must end, whatever the upstream does.
    deadline: tokio::time::Instant,
    /// How long to read on for the usage after the client left.
    disconnect_wait: Duration,
}

impl StreamMeter {
    pub fn new(
        exchange: Exchange,
        wire: Wire,
        upstream: reqwest::Response,
        hide_usage: bool,
    ) -> StreamMeter {
        let config = &exchange.gw.config;
        let idle = config.stream_idle_timeout();
        let deadline = tokio::time::Instant::now() + config.stream_max();
        let disconnect_wait = config.disconnect_usage_wait();
        StreamMeter {
            exchange: Some(exchange),
            reading: Some(Reading::new(wire, upstream)),
            wire,
            hide_usage,
            first_token_ms: None,
            out: VecDeque::new(),
            done: false,
            idle,
            deadline,
            disconnect_wait,
        }
    }

    /// The next piece of the client's body; `None` at the end.
    async fn next(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        loop {
            if let Some(bytes) = self.out.pop_front() {
                return Some(Ok(bytes));
            }
            if self.done {
                return None;
            }
            let reading = self.reading.as_mut()?;
            let now = tokio::time::Instant::now();
            let wait = self.idle.min(self.deadline.saturating_duration_since(now));
            match tokio::time::timeout(wait, reading.upstream.chunk()).await {
                Err(_) => {
                    let why = if tokio::time::Instant::now() >= self.deadline {
                        "the stream reached the gateway's stream_max_secs limit".to_owned()
                    } else {
                        format!(
                            "the upstream stream was silent for {} s",
                            self.idle.as_secs()
                        )
                    };
                    self.end_early(UsageErrorType::Timeout, why, true).await;
                }
                Ok(Err(e)) => {
                    let why = format!(
                        "the upstream stream broke off: {}",
                        super::error_chain(&e.without_url())
                    );
                    self.end_early(UsageErrorType::UpstreamError, why, true)
                        .await;
                }
                Ok(Ok(None)) => {
                    if let Some(rest) = reading.splitter.finish() {
                        self.pass(rest);
                    }
                    let reading = self.reading.as_mut()?;
                    match reading.upstream_error.take() {
                        Some(why) => {
                            self.end_early(UsageErrorType::UpstreamError, why, false)
                                .await;
                        }
                        // Ended without its last event and without a token: nothing was served.
                        None if !reading.saw_end && !reading.served_anything() => {
                            let why = "the upstream stream ended before any output".to_owned();
                            self.end_early(UsageErrorType::UpstreamError, why, true)
                                .await;
                        }
                        // The typed streams always end with their own last event: without it
                        // the answer is cut short (charged as generated, and said).
                        None if !reading.saw_end && self.wire != Wire::Chat => {
                            let why =
                                "the upstream stream ended without its final event".to_owned();
                            self.end_early(UsageErrorType::UpstreamError, why, true)
                                .await;
                        }
                        None => self.finish().await,
                    }
                }
                Ok(Ok(Some(bytes))) => match reading.splitter.push(&bytes) {
                    Err(e) => {
                        self.end_early(UsageErrorType::UpstreamError, e.to_string(), true)
                            .await;
                    }
                    Ok(events) => {
                        for event in events {
                            let Some(reading) = self.reading.as_mut() else {
                                break;
                            };
                            if Event::read(self.wire, &event).is_end() {
                                // Metered (a Responses end carries the usage), then settled:
                                // the last event goes out only once the charge is durable.
                                reading.meter(&event);
                                match reading.upstream_error.take() {
                                    Some(why) => {
                                        self.end_early(UsageErrorType::UpstreamError, why, false)
                                            .await;
                                    }
                                    None => self.finish().await,
                                }
                                self.out.push_back(event);
                                break;
                            }
                            self.pass(event);
                        }
                    }
                },
            }
        }
    }

    /// Meters one event and queues it for the client (without usage, if hidden).
    fn pass(&mut self, event: Bytes) {
        let Some(reading) = self.reading.as_mut() else {
            return;
        };
        let had_content = reading.content_chunks > 0;
        let read = reading.meter(&event);
        if !had_content
            && reading.content_chunks > 0
            && let Some(exchange) = &self.exchange
        {
            let after = exchange.origin.started.elapsed();
            exchange.observe_first_token(after);
            self.first_token_ms = Some(u32::try_from(after.as_millis()).unwrap_or(u32::MAX));
        }
        let forwarded = if self.hide_usage && self.wire == Wire::Chat {
            sse::without_usage(&event, &read)
        } else {
            Some(event)
        };
        if let Some(bytes) = forwarded {
            self.out.push_back(bytes);
        }
    }

    /// The stream ended normally: settle (in a task, awaited).
    async fn finish(&mut self) {
        self.done = true;
        let (Some(mut exchange), Some(reading)) = (self.exchange.take(), self.reading.take())
        else {
            return;
        };
        let to_first_token = self.first_token_ms.map_or_else(
            || exchange.origin.started.elapsed(),
            |ms| Duration::from_millis(u64::from(ms)),
        );
        exchange.observe(to_first_token, true, None);
        let outcome = reading.outcome(&mut exchange, self.first_token_ms);
        let sequence = reading.sequence;
        drop(reading);
        if let Err(e) = settle_in_task(exchange, outcome).await {
            self.out.push_back(sse::error_event(
                self.wire,
                &e.to_string(),
                "server_error",
                sequence,
            ));
        }
    }

    /// The upstream failed mid-stream: charge what was generated; tell the client unless the
    /// upstream's own error event already did (`tell`).
    async fn end_early(&mut self, error: UsageErrorType, why: String, tell: bool) {
        self.done = true;
        let (Some(mut exchange), Some(reading)) = (self.exchange.take(), self.reading.take())
        else {
            return;
        };
        if tell {
            self.out
                .push_back(reading.error_event(&why, "upstream_error"));
        }
        exchange.observe(exchange.origin.started.elapsed(), false, Some(&why));
        if !reading.served_anything() {
            // Nothing generated: release, charge nothing.
            let e = if error == UsageErrorType::Timeout {
                ApiError::UpstreamTimeout(why)
            } else {
                ApiError::UpstreamFailed(why)
            };
            // In a task, awaited: durable before the stream's last byte, and not cancelled
            // if the client leaves meanwhile.
            let _ = tokio::spawn(async move { exchange.fail(&e, None).await }).await;
            return;
        }
        let mut outcome = reading.outcome(&mut exchange, self.first_token_ms);
        outcome.error = Some((error, why));
        drop(reading);
        let _ = settle_in_task(exchange, outcome).await;
    }
}

impl Drop for StreamMeter {
    /// The client went away before the end: read on for the usage, then charge, in a task.
    fn drop(&mut self) {
        let (Some(exchange), Some(reading)) = (self.exchange.take(), self.reading.take()) else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(
                exchange,
                reading,
                self.disconnect_wait,
                self.first_token_ms,
            ));
        }
    }
}

/// After the client left: reads the upstream for at most `wait` until its usage (or its end)
/// arrives, then closes it and charges what it reported, or an estimate of all it generated.
async fn drain(
    mut exchange: Exchange,
    mut reading: Reading,
    wait: Duration,
    first_token_ms: Option<u32>,
) {
    let deadline = tokio::time::Instant::now() + wait;
    while !reading.final_usage && !reading.saw_end {
        match tokio::time::timeout_at(deadline, reading.upstream.chunk()).await {
            Ok(Ok(Some(bytes))) => match reading.splitter.push(&bytes) {
                Ok(events) => {
                    for event in events {
                        reading.meter(&event);
                    }
                }
                Err(_) => break,
            },
            // Over, broken, or out of time.
            _ => break,
        }
    }
    let mut outcome = reading.outcome(&mut exchange, first_token_ms);
    // Dropping the response closes the upstream connection and stops the generation.
    drop(reading);
    outcome.error = Some((
        UsageErrorType::ClientDisconnected,
        "the client disconnected mid-stream".into(),
    ));
    if let Err(e) = exchange.settle(outcome).await {
        tracing::error!(error = %e, "settling a stream the client left failed");
    }
}

/// Settles in a spawned task (it completes even if the caller is dropped) and waits for it.
async fn settle_in_task(exchange: Exchange, outcome: Outcome) -> Result<(), ApiError> {
    let request_id = exchange.origin.request_id.clone();
    let task = tokio::spawn(async move { exchange.settle(outcome).await.map(|_| ()) });
    task.await.unwrap_or_else(|e| {
        tracing::error!(request_id = %request_id, error = %e, "a settle task failed");
        Err(ApiError::Internal { request_id })
    })
}

/// The streamed response: headers now, events as they come.
pub fn respond(meter: StreamMeter) -> Response {
    let body = futures_util::stream::unfold(meter, |mut s| async move {
        s.next().await.map(|item| (item, s))
    });
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
