//! The server-sent-event body of a streaming chat or text completion, and its accounting.
//!
//! [`SseStream`] is a small state machine; every event (`data: <json>\n\n`) is its own item, so
//! it goes out as its own body frame. Sequence, for chat:
//! `role chunk, token chunk × N, finish chunk, [usage chunk], data: [DONE]`; for text
//! completions the same without the role chunk. The usage chunk (`"choices": []`) is sent only
//! when the request asked for it and `mock:no_usage` is absent. Scenarios bend it:
//! `malformed` sends the first chunk, `data: {broken`, `[DONE]`; `slow` waits before each token;
//! `endless` sends tokens until the client leaves; `stall_after=K` goes silent after K tokens;
//! `cut_after=K` ends the body with an error after K tokens (the client receives the K tokens,
//! then sees the connection broken, without a finish chunk or `[DONE]`; the tokens are flushed
//! first unless the client has stopped reading and the socket is full).
//!
//! Accounting: `streams_started` when the stream is made; `streams_completed` at the moment
//! the last item (`[DONE]`, or the `cut_after` error) is handed to the server, so a client that
//! has read `[DONE]` already sees it counted; `streams_cancelled` when the stream is dropped
//! before that (the client left), which wakes `wait_streams_cancelled`. A stream ended by the
//! mock's shutdown counts as neither completed nor cancelled. Any stream that waits (paced or
//! stalled) also watches the shutdown signal, so it cannot keep the server from stopping.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use serde::Serialize;
use tokio::time::{Instant, Sleep};

use crate::scenario::{self, FinishReason, Scenario, Usage};
use crate::state::Shared;
use crate::wire::{
    self, ChatChunk, ChatChunkChoice, Delta, SeqId, TextChoice, TextCompletion, Token,
};

/// Which API the stream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Chat,
    Text,
}

impl Kind {
    /// The prefix of response ids (`chatcmpl-mock-7`, `cmpl-mock-7`).
    pub(crate) fn id_prefix(self) -> &'static str {
        match self {
            Kind::Chat => "chatcmpl-mock-",
            Kind::Text => "cmpl-mock-",
        }
    }
}

/// Why a stream ended with an error item (which makes the server break the connection).
#[derive(Debug)]
pub(crate) enum StreamEnd {
    /// `mock:cut_after=K`.
    Cut,
    /// The mock is shutting down.
    Shutdown,
    /// A chunk failed to serialize (not expected to happen).
    Encode,
}

impl fmt::Display for StreamEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StreamEnd::Cut => "mock upstream cut the stream (mock:cut_after)",
            StreamEnd::Shutdown => "mock upstream is shutting down",
            StreamEnd::Encode => "mock upstream failed to encode a chunk",
        })
    }
}

impl std::error::Error for StreamEnd {}

/// What the stream sends next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Broken,
    /// The next token chunk, numbered from 0.
    Token(u64),
    Finish,
    Usage,
    Done,
    /// `stall_after`: silent until the client leaves or the mock stops.
    Stalled,
    /// `cut_after`: the break, one poll after the last token so the server flushes that first.
    Cut,
    /// `error_after`: an error event, and the end.
    ErrorEvent,
    Over,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Running,
    Completed,
    Aborted,
}

/// Everything a stream needs to know about its request.
#[derive(Debug)]
pub(crate) struct Plan {
    pub kind: Kind,
    pub seq: u64,
    pub model: String,
    pub reply_tokens: u64,
    pub finish_reason: FinishReason,
    /// `Some` when the usage chunk is sent.
    pub usage: Option<Usage>,
    pub scenario: Scenario,
}

pub(crate) struct SseStream {
    shared: Arc<Shared>,
    plan: Plan,
    /// Wait before each token chunk.
    pace: Option<Duration>,
    /// `usage_delay`: wait before the usage chunk.
    usage_delay: Option<Duration>,
    /// The pacing timer, allocated once and re-armed per token.
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
    /// Resolves when the mock stops; present whenever the stream may wait.
    shutdown: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    phase: Phase,
    outcome: Outcome,
}

impl SseStream {
    pub(crate) fn new(shared: Arc<Shared>, plan: Plan) -> SseStream {
        let pace = match (plan.scenario.slow(), plan.scenario.endless) {
            (Some(pace), _) if !pace.is_zero() => Some(pace),
            (_, true) => Some(Duration::from_millis(scenario::ENDLESS_PACE_MS)),
            _ => None,
        };
        let usage_delay = plan
            .scenario
            .usage_delay_ms
            .filter(|ms| *ms > 0 && plan.usage.is_some())
            .map(Duration::from_millis);
        let waits = pace.is_some() || plan.scenario.stall_after.is_some() || usage_delay.is_some();
        let shutdown: Option<Pin<Box<dyn Future<Output = ()> + Send>>> = if waits {
            Some(Box::pin(shared.stopped()))
        } else {
            None
        };
        shared.stream_started();
        SseStream {
            sleep: (pace.is_some() || usage_delay.is_some())
                .then(|| Box::pin(tokio::time::sleep(Duration::ZERO))),
            shared,
            plan,
            pace,
            usage_delay,
            armed: false,
            shutdown,
            phase: Phase::Start,
            outcome: Outcome::Running,
        }
    }

    fn id(&self) -> SeqId {
        SeqId {
            prefix: self.plan.kind.id_prefix(),
            seq: self.plan.seq,
        }
    }

    /// One `data: <json>\n\n` event.
    fn event<T: Serialize>(value: &T) -> Result<Bytes, StreamEnd> {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(b"data: ");
        serde_json::to_writer(&mut buf, value).map_err(|_| StreamEnd::Encode)?;
        buf.extend_from_slice(b"\n\n");
        Ok(Bytes::from(buf))
    }

    fn chat_chunk(
        &self,
        choice: Option<ChatChunkChoice>,
        usage: Option<Usage>,
    ) -> Result<Bytes, StreamEnd> {
        let choices: &[ChatChunkChoice] = match &choice {
            Some(choice) => std::slice::from_ref(choice),
            None => &[],
        };
        Self::event(&ChatChunk {
            id: self.id(),
            object: "chat.completion.chunk",
            created: wire::CREATED,
            model: &self.plan.model,
            choices,
            usage,
        })
    }

    fn text_chunk<T: Serialize>(
        &self,
        choice: Option<TextChoice<T>>,
        usage: Option<Usage>,
    ) -> Result<Bytes, StreamEnd> {
        let choices: &[TextChoice<T>] = match &choice {
            Some(choice) => std::slice::from_ref(choice),
            None => &[],
        };
        Self::event(&TextCompletion {
            id: self.id(),
            object: "text_completion",
            created: wire::CREATED,
            model: &self.plan.model,
            choices,
            usage,
        })
    }

    fn role_chunk(&self) -> Result<Bytes, StreamEnd> {
        let delta = Delta {
            role: Some("assistant"),
            content: Some(Token {
                first: 0,
                count: 0,
                space: false,
            }),
        };
        self.chat_chunk(
            Some(ChatChunkChoice {
                index: 0,
                delta,
                finish_reason: None,
            }),
            None,
        )
    }

    fn token_chunk(&self, first: u64, count: u64, last: bool) -> Result<Bytes, StreamEnd> {
        let token = Token {
            first,
            count,
            space: !last,
        };
        match self.plan.kind {
            Kind::Chat => {
                let delta = Delta {
                    role: None,
                    content: Some(token),
                };
                self.chat_chunk(
                    Some(ChatChunkChoice {
                        index: 0,
                        delta,
                        finish_reason: None,
                    }),
                    None,
                )
            }
            Kind::Text => self.text_chunk(
                Some(TextChoice {
                    text: token,
                    index: 0,
                    logprobs: None,
                    finish_reason: None,
                }),
                None,
            ),
        }
    }

    fn finish_chunk(&self) -> Result<Bytes, StreamEnd> {
        let finish_reason = Some(self.plan.finish_reason.as_str());
        match self.plan.kind {
            Kind::Chat => self.chat_chunk(
                Some(ChatChunkChoice {
                    index: 0,
                    delta: Delta::default(),
                    finish_reason,
                }),
                None,
            ),
            Kind::Text => self.text_chunk(
                Some(TextChoice {
                    text: "",
                    index: 0,
                    logprobs: None,
                    finish_reason,
                }),
                None,
            ),
        }
    }

    fn usage_chunk(&self, usage: Usage) -> Result<Bytes, StreamEnd> {
        match self.plan.kind {
            Kind::Chat => self.chat_chunk(None, Some(usage)),
            Kind::Text => self.text_chunk::<&str>(None, Some(usage)),
        }
    }

    /// Hands out `item`; an error item ends the stream.
    fn emit(&mut self, item: Result<Bytes, StreamEnd>) -> Poll<Option<Result<Bytes, StreamEnd>>> {
        if item.is_err() {
            self.phase = Phase::Over;
            self.outcome = Outcome::Aborted;
        }
        Poll::Ready(Some(item))
    }

    fn complete(
        &mut self,
        item: Result<Bytes, StreamEnd>,
    ) -> Poll<Option<Result<Bytes, StreamEnd>>> {
        self.phase = Phase::Over;
        self.outcome = Outcome::Completed;
        self.shared.stream_completed();
        Poll::Ready(Some(item))
    }
}

impl Stream for SseStream {
    type Item = Result<Bytes, StreamEnd>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.phase == Phase::Over {
            return Poll::Ready(None);
        }
        if let Some(shutdown) = this.shutdown.as_mut()
            && shutdown.as_mut().poll(cx).is_ready()
        {
            this.phase = Phase::Over;
            this.outcome = Outcome::Aborted;
            return Poll::Ready(Some(Err(StreamEnd::Shutdown)));
        }
        loop {
            match this.phase {
                Phase::Start => {
                    let malformed = this.plan.scenario.malformed;
                    this.phase = if malformed {
                        Phase::Broken
                    } else {
                        Phase::Token(0)
                    };
                    match this.plan.kind {
                        Kind::Chat => {
                            let chunk = this.role_chunk();
                            return this.emit(chunk);
                        }
                        Kind::Text if malformed => {
                            let chunk = this.token_chunk(0, 1, false);
                            return this.emit(chunk);
                        }
                        Kind::Text => {}
                    }
                }
                Phase::Broken => {
                    this.phase = Phase::Done;
                    return Poll::Ready(Some(Ok(Bytes::from_static(b"data: {broken\n\n"))));
                }
                Phase::Token(sent) => {
                    let scenario = &this.plan.scenario;
                    if scenario.stall_after.is_some_and(|k| sent >= k) {
                        this.phase = Phase::Stalled;
                        continue;
                    }
                    if scenario.error_after.is_some_and(|k| sent >= k) {
                        this.phase = Phase::ErrorEvent;
                        continue;
                    }
                    if scenario.cut_after.is_some_and(|k| sent >= k) {
                        // hyper drops what it has buffered when a body fails; returning
                        // `Pending` once lets it flush the tokens sent so far.
                        this.phase = Phase::Cut;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    if !scenario.endless && sent >= this.plan.reply_tokens {
                        this.phase = Phase::Finish;
                        continue;
                    }
                    if let (Some(pace), Some(sleep)) = (this.pace, this.sleep.as_mut()) {
                        if !this.armed {
                            sleep.as_mut().reset(Instant::now() + pace);
                            this.armed = true;
                        }
                        ready!(sleep.as_mut().poll(cx));
                        this.armed = false;
                    }
                    let per_chunk = scenario.chunk_words.unwrap_or(1).max(1);
                    let count = if scenario.endless {
                        per_chunk
                    } else {
                        per_chunk.min(this.plan.reply_tokens - sent)
                    };
                    let next = sent.saturating_add(count);
                    let last = !scenario.endless && next >= this.plan.reply_tokens;
                    this.phase = Phase::Token(next);
                    let chunk = this.token_chunk(sent, count, last);
                    return this.emit(chunk);
                }
                Phase::Finish => {
                    this.phase = if this.plan.usage.is_some() {
                        Phase::Usage
                    } else {
                        Phase::Done
                    };
                    let chunk = this.finish_chunk();
                    return this.emit(chunk);
                }
                Phase::Usage => {
                    if let (Some(delay), Some(sleep)) = (this.usage_delay, this.sleep.as_mut()) {
                        if !this.armed {
                            sleep.as_mut().reset(Instant::now() + delay);
                            this.armed = true;
                        }
                        ready!(sleep.as_mut().poll(cx));
                        this.armed = false;
                        this.usage_delay = None;
                    }
                    this.phase = Phase::Done;
                    let chunk = match this.plan.usage {
                        Some(usage) => this.usage_chunk(usage),
                        None => continue,
                    };
                    return this.emit(chunk);
                }
                Phase::Cut => return this.complete(Err(StreamEnd::Cut)),
                Phase::ErrorEvent => {
                    return this.complete(Ok(Bytes::from_static(
                        b"data: {\"error\":{\"message\":\"mock upstream error mid-stream\",\"type\":\"upstream_error\",\"code\":500}}\n\n",
                    )));
                }
                Phase::Done => return this.complete(Ok(Bytes::from_static(b"data: [DONE]\n\n"))),
                // Woken only by the shutdown future polled above (or dropped by the client).
                Phase::Stalled => return Poll::Pending,
                Phase::Over => return Poll::Ready(None),
            }
        }
    }
}

impl Drop for SseStream {
    fn drop(&mut self) {
        if self.outcome == Outcome::Running {
            self.shared.stream_cancelled();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use serde_json::Value;

    fn plan(kind: Kind, scenario: Scenario, usage: bool) -> Plan {
        let reply = scenario::reply(&scenario, None);
        Plan {
            kind,
            seq: 1,
            model: "m".into(),
            reply_tokens: reply.tokens,
            finish_reason: reply.finish_reason,
            usage: usage.then(|| Usage::new(2, reply.tokens)),
            scenario,
        }
    }

    /// Drains a stream that never waits; returns its items, each checked to be one event.
    async fn drain(stream: SseStream) -> Vec<Result<String, String>> {
        stream
            .map(|item| match item {
                Ok(bytes) => {
                    let text = String::from_utf8(bytes.to_vec()).unwrap();
                    assert!(
                        text.starts_with("data: ") && text.ends_with("\n\n"),
                        "{text:?}"
                    );
                    assert_eq!(
                        text.matches("\n\n").count(),
                        1,
                        "one event per frame: {text:?}"
                    );
                    Ok(text["data: ".len()..text.len() - 2].to_owned())
                }
                Err(e) => Err(e.to_string()),
            })
            .collect()
            .await
    }

    fn json(item: &Result<String, String>) -> Value {
        serde_json::from_str(item.as_ref().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn chat_stream_sequence_and_accounting() {
        let shared = Arc::new(Shared::new());
        let scenario = Scenario {
            tokens: Some(3),
            ..Default::default()
        };
        let items = drain(SseStream::new(
            shared.clone(),
            plan(Kind::Chat, scenario, true),
        ))
        .await;
        assert_eq!(items.len(), 3 + 2 + 1 + 1);
        assert_eq!(
            json(&items[0])["choices"][0]["delta"],
            serde_json::json!({"role":"assistant","content":""})
        );
        let text: String = items[1..4]
            .iter()
            .map(|i| {
                json(i)["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(text, scenario::reply_text(3));
        assert_eq!(
            json(&items[4])["choices"][0]["delta"],
            serde_json::json!({})
        );
        assert_eq!(json(&items[4])["choices"][0]["finish_reason"], "stop");
        assert_eq!(json(&items[5])["choices"], serde_json::json!([]));
        assert_eq!(json(&items[5])["usage"]["total_tokens"], 5);
        assert_eq!(items[6].as_deref(), Ok("[DONE]"));
        let stats = shared.stats();
        assert_eq!(
            (
                stats.streams_started,
                stats.streams_completed,
                stats.streams_cancelled
            ),
            (1, 1, 0)
        );
    }

    #[tokio::test]
    async fn text_stream_has_no_role_chunk() {
        let shared = Arc::new(Shared::new());
        let scenario = Scenario {
            tokens: Some(2),
            ..Default::default()
        };
        let items = drain(SseStream::new(shared, plan(Kind::Text, scenario, false))).await;
        assert_eq!(items.len(), 2 + 1 + 1);
        assert_eq!(json(&items[0])["choices"][0]["text"], "lorem ");
        assert_eq!(json(&items[1])["choices"][0]["text"], "ipsum");
        assert_eq!(json(&items[2])["choices"][0]["finish_reason"], "stop");
        assert_eq!(json(&items[0])["object"], "text_completion");
    }

    #[tokio::test]
    async fn cut_and_malformed() {
        let shared = Arc::new(Shared::new());
        let cut = Scenario {
            cut_after: Some(2),
            ..Default::default()
        };
        let items = drain(SseStream::new(shared.clone(), plan(Kind::Chat, cut, true))).await;
        assert_eq!(items.len(), 1 + 2 + 1);
        assert!(items[3].is_err());
        let malformed = Scenario {
            malformed: true,
            ..Default::default()
        };
        let items = drain(SseStream::new(
            shared.clone(),
            plan(Kind::Chat, malformed, true),
        ))
        .await;
        assert_eq!(items.len(), 3);
        assert_eq!(items[1].as_deref(), Ok("{broken"));
        assert_eq!(items[2].as_deref(), Ok("[DONE]"));
        let stats = shared.stats();
        assert_eq!(
            (
                stats.streams_started,
                stats.streams_completed,
                stats.streams_cancelled
            ),
            (2, 2, 0)
        );
    }

    #[tokio::test]
    async fn dropped_and_shut_down_streams() {
        let shared = Arc::new(Shared::new());
        let mut stream =
            SseStream::new(shared.clone(), plan(Kind::Chat, Scenario::default(), false));
        assert!(stream.next().await.unwrap().is_ok());
        drop(stream);
        shared.wait_streams_cancelled(1).await;

        let stall = Scenario {
            stall_after: Some(0),
            ..Default::default()
        };
        let mut stream = SseStream::new(shared.clone(), plan(Kind::Chat, stall, false));
        assert!(stream.next().await.unwrap().is_ok()); // the role chunk, then silence
        shared.stop();
        assert!(matches!(
            stream.next().await,
            Some(Err(StreamEnd::Shutdown))
        ));
        assert!(stream.next().await.is_none());
        drop(stream);
        let stats = shared.stats();
        assert_eq!(
            (
                stats.streams_started,
                stats.streams_completed,
                stats.streams_cancelled
            ),
            (2, 0, 1)
        );
    }
}
