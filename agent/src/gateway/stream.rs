//! A streamed (SSE) response, metered as it passes: each upstream event is forwarded as soon as
//! it is whole (never the whole stream buffered), its content counted, the usage chunk read (and
//! hidden from a client that did not ask for it), and the final `data: [DONE]` held back until
//! the request is settled durably.
//!
//! How a stream ends decides what is charged:
//! - `[DONE]` or the upstream's clean end: the reported usage, else an estimate (marked);
//! - the client goes away: what was generated so far (reported usage if it already came, else
//!   one token per content chunk, marked estimated) — dropping the stream drops the upstream
//!   response, which closes the upstream connection and stops the generation;
//! - the upstream breaks off or stalls past the idle timeout: what was generated so far, with
//!   the error in the usage log and an error event to the client; if nothing was generated, the
//!   hold is released and nothing charged.
//!
//! Settling runs in its own task, so a client vanishing mid-settle cannot cut it short.

use std::collections::VecDeque;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;

use crate::ledger::UsageErrorType;

use super::error::ApiError;
use super::proxy::{Meter, Outcome, early_end};
use super::sse::{self, Event, EventSplitter};
use super::usage::{self, Usage};

#[derive(Debug)]
pub struct StreamMeter {
    /// `None` once the request's ledger work has been handed to a task.
    meter: Option<Meter>,
    upstream: reqwest::Response,
    hide_usage: bool,
    splitter: EventSplitter,
    reported: Option<Usage>,
    content_chunks: u64,
    first_token_ms: Option<u32>,
    out: VecDeque<Bytes>,
    done: bool,
    /// The upstream sent `[DONE]`.
    saw_done: bool,
    /// The upstream sent an error event (LiteLLM's way to fail after the 200 headers).
    upstream_error: Option<String>,
    idle: Duration,
    /// When the stream must end, whatever the upstream does.
    deadline: tokio::time::Instant,
}

impl StreamMeter {
    pub fn new(meter: Meter, upstream: reqwest::Response, hide_usage: bool) -> StreamMeter {
        let idle = meter.gw.config.stream_idle_timeout();
        let deadline = tokio::time::Instant::now() + meter.gw.config.stream_max();
        StreamMeter {
            meter: Some(meter),
            upstream,
            hide_usage,
            splitter: EventSplitter::default(),
            reported: None,
            content_chunks: 0,
            first_token_ms: None,
            out: VecDeque::new(),
            done: false,
            saw_done: false,
            upstream_error: None,
            idle,
            deadline,
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
            let now = tokio::time::Instant::now();
            let wait = self.idle.min(self.deadline.saturating_duration_since(now));
            match tokio::time::timeout(wait, self.upstream.chunk()).await {
                Err(_) => {
                    let why = if tokio::time::Instant::now() >= self.deadline {
                        "the stream reached the gateway's stream_max_secs limit".to_owned()
                    } else {
                        format!(
                            "the upstream stream was silent for {} s",
                            self.idle.as_secs()
                        )
                    };
                    self.end_early(UsageErrorType::Timeout, why).await;
                }
                Ok(Err(e)) => {
                    let why = format!(
                        "the upstream stream broke off: {}",
                        super::error_chain(&e.without_url())
                    );
                    self.end_early(UsageErrorType::UpstreamError, why).await;
                }
                Ok(Ok(None)) => {
                    if let Some(rest) = self.splitter.finish() {
                        self.pass(rest);
                    }
                    match self.upstream_error.take() {
                        Some(why) => self.end_early(UsageErrorType::UpstreamError, why).await,
                        // Ended without [DONE] and without a token: nothing was served.
                        None if !self.saw_done
                            && self.content_chunks == 0
                            && self.reported.is_none() =>
                        {
                            let why = "the upstream stream ended before any output".to_owned();
                            self.end_early(UsageErrorType::UpstreamError, why).await;
                        }
                        None => self.finish().await,
                    }
                }
                Ok(Ok(Some(bytes))) => match self.splitter.push(&bytes) {
                    Err(e) => {
                        self.end_early(UsageErrorType::UpstreamError, e.to_string())
                            .await
                    }
                    Ok(events) => {
                        for event in events {
                            if Event::read(&event) == Event::Done {
                                self.saw_done = true;
                                // Settle first: the last byte goes out only once it is durable.
                                match self.upstream_error.take() {
                                    Some(why) => {
                                        self.end_early(UsageErrorType::UpstreamError, why).await;
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
        let read = Event::read(&event);
        if let Event::Chunk {
            generated_bytes,
            usage,
            is_error,
            ..
        } = &read
        {
            if *generated_bytes > 0 {
                self.content_chunks += 1;
                if self.first_token_ms.is_none()
                    && let Some(m) = &self.meter
                {
                    let after = m.started.elapsed();
                    m.observe_first_token(after);
                    self.first_token_ms =
                        Some(u32::try_from(after.as_millis()).unwrap_or(u32::MAX));
                }
            }
            if let Some(u) = usage {
                self.reported = Some(*u);
            }
            if *is_error && self.upstream_error.is_none() {
                let text = String::from_utf8_lossy(&event);
                self.upstream_error = Some(format!(
                    "the upstream sent an error mid-stream: {}",
                    text.trim().chars().take(300).collect::<String>()
                ));
            }
        }
        let forwarded = if self.hide_usage {
            sse::without_usage(&event, &read)
        } else {
            Some(event)
        };
        if let Some(bytes) = forwarded {
            self.out.push_back(bytes);
        }
    }

    /// What was generated so far: the reported usage, else an estimate (one token per content
    /// chunk, as OpenAI streams them); and whether it is an estimate.
    fn usage_so_far(&self, prompt_bound: u64) -> (Usage, bool) {
        match self.reported {
            Some(u) => (u, false),
            None => (
                Usage {
                    prompt_tokens: usage::estimate_prompt_tokens(prompt_bound),
                    completion_tokens: self.content_chunks,
                },
                true,
            ),
        }
    }

    /// The stream ended normally: settle (in a task, awaited).
    async fn finish(&mut self) {
        self.done = true;
        let Some(meter) = self.meter.take() else {
            return;
        };
        let to_first_token = self.first_token_ms.map_or_else(
            || meter.started.elapsed(),
            |ms| Duration::from_millis(u64::from(ms)),
        );
        meter.observe(to_first_token, true, None);
        let (usage, estimated) = self.usage_so_far(meter.prompt_bound);
        let outcome = Outcome {
            usage,
            estimated,
            http_status: 200,
            time_to_first_token_ms: self.first_token_ms,
            error: None,
        };
        if let Err(e) = settle_in_task(meter, outcome).await {
            self.out
                .push_back(sse::error_event(&e.to_string(), "server_error"));
        }
    }

    /// The upstream failed mid-stream: charge what was generated, tell the client.
    async fn end_early(&mut self, error: UsageErrorType, why: String) {
        self.done = true;
        // The upstream's own error event was forwarded already; otherwise tell the client.
        if !why.starts_with("the upstream sent an error") {
            self.out.push_back(sse::error_event(&why, "upstream_error"));
        }
        let Some(mut meter) = self.meter.take() else {
            return;
        };
        meter.observe(meter.started.elapsed(), false, Some(&why));
        let (usage, estimated) = self.usage_so_far(meter.prompt_bound);
        if self.reported.is_none() && self.content_chunks == 0 {
            // Nothing generated: release, charge nothing.
            let e = if error == UsageErrorType::Timeout {
                ApiError::UpstreamTimeout(why)
            } else {
                ApiError::UpstreamFailed(why)
            };
            tokio::spawn(async move { meter.fail(&e, None).await });
            return;
        }
        let outcome = early_end(usage, estimated, self.first_token_ms, error, why, 200);
        let _ = settle_in_task(meter, outcome).await;
    }
}

impl Drop for StreamMeter {
    /// The client went away before the end: charge what was generated, in a task. Dropping
    /// `upstream` with this struct closes the upstream connection.
    fn drop(&mut self) {
        let Some(meter) = self.meter.take() else {
            return;
        };
        let (usage, estimated) = self.usage_so_far(meter.prompt_bound);
        let outcome = early_end(
            usage,
            estimated,
            self.first_token_ms,
            UsageErrorType::ClientDisconnected,
            "the client disconnected mid-stream".into(),
            200,
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(settle_in_task(meter, outcome));
        }
    }
}

/// Settles in a spawned task (it completes even if the caller is dropped) and waits for it.
async fn settle_in_task(mut meter: Meter, outcome: Outcome) -> Result<(), ApiError> {
    let request_id = meter.request_id.clone();
    let task = tokio::spawn(async move { meter.settle(outcome).await.map(|_| ()) });
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
