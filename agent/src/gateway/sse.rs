//! Server-sent events as the three stream kinds carry them, read on the fly: [`EventSplitter`]
//! cuts the upstream's bytes into whole events (holding back at most one incomplete event,
//! bounded by [`EVENT_BYTES_MAX`]); [`Event::read`] says what an event is to the meter — the
//! content it carries, its usage, an error, the stream's end — for OpenAI's chat streams (`data:`
//! chunks ending in `data: [DONE]`), OpenAI's Responses API (typed events ending in
//! `response.completed`, `.incomplete` or `.failed`, usage in the last) and Anthropic's Messages
//! API (typed events ending in `message_stop`, usage in pieces), so the gateway can meter it,
//! hide chat's usage chunk from a client that did not ask for it, and hold the last event back
//! until the request is settled.
//!
//! Events pass through byte for byte unless the usage must be hidden: then a usage-only chunk is
//! dropped and a usage field on a content chunk is removed (that chunk alone is re-serialized).

use bytes::{Bytes, BytesMut};
use serde_json::Value;

use crate::prices::cost::TokenUsage;

use super::request::{RESPONSE_ID_LEN_MAX, Wire};
use super::usage::{self, AnthropicUsage};

/// The largest single event accepted from an upstream (a stream chunk is a few hundred bytes;
/// tool-call arguments can be large, but never this).
pub const EVENT_BYTES_MAX: usize = 1 << 20;

/// Cuts a byte stream into whole SSE events (each with its blank-line terminator).
#[derive(Debug, Default)]
pub struct EventSplitter {
    pending: BytesMut,
    /// How far `pending` was already searched for a terminator.
    scanned: usize,
}

/// An upstream event over [`EVENT_BYTES_MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the upstream sent a stream event over {EVENT_BYTES_MAX} bytes")]
pub struct EventTooLarge;

impl EventSplitter {
    /// Feeds bytes; returns the events they completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Bytes>, EventTooLarge> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = find_terminator(&self.pending, self.scanned) {
            events.push(self.pending.split_to(end).freeze());
            self.scanned = 0;
        }
        self.scanned = self.pending.len().saturating_sub(3);
        if self.pending.len() > EVENT_BYTES_MAX {
            return Err(EventTooLarge);
        }
        Ok(events)
    }

    /// What is left when the stream ends: an unterminated last event, if any.
    pub fn finish(&mut self) -> Option<Bytes> {
        let rest = self.pending.split().freeze();
        self.scanned = 0;
        (!rest.iter().all(u8::is_ascii_whitespace)).then_some(rest)
    }
}

/// The end (exclusive) of the first event in `buf`: after "\n\n" or "\r\n\r\n".
fn find_terminator(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' {
            if buf[i + 1] == b'\n' {
                return Some(i + 2);
            }
            if buf[i + 1] == b'\r' && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// A usage report in a stream event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageReport {
    /// The request's whole usage (chat's usage chunk, a Responses terminal event).
    Whole(TokenUsage),
    /// A piece of Anthropic's usage, merged into what came before.
    Anthropic(AnthropicUsage),
}

/// What kind of event it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Kind {
    /// Data the meter reads: content, usage, an error.
    Data,
    /// The stream's last event (chat's `data: [DONE]`, Responses' `response.completed`,
    /// `.incomplete` or `.failed`, Messages' `message_stop`): held back until the request is
    /// settled.
    End,
    /// A comment, a keep-alive, or data that is not JSON.
    #[default]
    Other,
}

/// What one event means to the meter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Event {
    pub kind: Kind,
    /// Bytes of generated text it carries (content, reasoning, tool-call arguments).
    pub generated_bytes: u64,
    pub usage: Option<UsageReport>,
    /// The usage it carries is the last the stream will report (chat's usage chunk, Anthropic's
    /// `message_delta`, a Responses terminal event): a drain may stop reading here.
    pub final_usage: bool,
    /// A chat chunk with choices (one with usage and none is OpenAI's usage-only chunk).
    pub has_choices: bool,
    /// An error event (chat's `{"error": …}`, Responses' `error` and `response.failed`,
    /// Messages' `error`).
    pub is_error: bool,
    /// The model it names.
    pub model: Option<String>,
    /// It cites the web (a search was billed).
    pub cites: bool,
    /// The id of the response or message it belongs to.
    pub response_id: Option<String>,
    /// A Responses event's `sequence_number`.
    pub sequence_number: Option<u64>,
}

impl Event {
    /// Reads one whole event of a `wire` stream.
    pub fn read(wire: Wire, event: &[u8]) -> Event {
        let Some(data) = data_of(event) else {
            return Event::default();
        };
        if wire == Wire::Chat && data.trim_ascii() == b"[DONE]" {
            return Event {
                kind: Kind::End,
                ..Event::default()
            };
        }
        let Ok(json) = serde_json::from_slice::<Value>(&data) else {
            return Event::default();
        };
        match wire {
            Wire::Chat => chat(&json),
            Wire::Responses => responses(&json),
            Wire::Messages => messages(&json),
        }
    }

    /// Whether it is the stream's last event.
    pub fn is_end(&self) -> bool {
        self.kind == Kind::End
    }
}

/// A non-empty string of at most [`RESPONSE_ID_LEN_MAX`] bytes (a model name, a response id).
fn text(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= RESPONSE_ID_LEN_MAX)
        .map(str::to_owned)
}

fn chat(json: &Value) -> Event {
    let usage = usage::chat_usage(json);
    Event {
        kind: Kind::Data,
        generated_bytes: usage::generated_bytes(Wire::Chat, json),
        final_usage: usage.is_some(),
        usage: usage.map(UsageReport::Whole),
        has_choices: json
            .get("choices")
            .and_then(Value::as_array)
            .is_some_and(|c| !c.is_empty()),
        is_error: json.get("error").is_some(),
        model: usage::response_model(json).map(str::to_owned),
        cites: usage::cites_the_web(json),
        ..Event::default()
    }
}

/// A Responses API event: `{"type": "response.output_text.delta", "delta": "…", …}`; the
/// response object rides in `response.created`, `.in_progress` and the terminal events.
fn responses(json: &Value) -> Event {
    let kind = json.get("type").and_then(Value::as_str).unwrap_or("");
    let response = json.get("response");
    let mut event = Event {
        kind: Kind::Data,
        model: response.and_then(|r| text(r.get("model"))),
        response_id: response.and_then(|r| text(r.get("id"))),
        sequence_number: json.get("sequence_number").and_then(Value::as_u64),
        ..Event::default()
    };
    match kind {
        "response.completed" | "response.incomplete" | "response.failed" => {
            event.kind = Kind::End;
            let usage = response.and_then(usage::responses_usage);
            event.final_usage = usage.is_some();
            event.usage = usage.map(UsageReport::Whole);
            event.is_error = kind == "response.failed";
        }
        "error" => event.is_error = true,
        k if k.ends_with(".delta") => {
            event.generated_bytes = json
                .get("delta")
                .and_then(Value::as_str)
                .map_or(0, |d| d.len() as u64);
        }
        _ => {}
    }
    event
}

/// An Anthropic Messages event: `message_start` (the message, with the input side of its
/// usage), `content_block_start` / `_delta` / `_stop`, `message_delta` (the output count so
/// far), `message_stop`, `ping`, `error`.
fn messages(json: &Value) -> Event {
    let kind = json.get("type").and_then(Value::as_str).unwrap_or("");
    let mut event = Event {
        kind: Kind::Data,
        ..Event::default()
    };
    match kind {
        "message_start" => {
            let message = json.get("message");
            event.model = message.and_then(|m| text(m.get("model")));
            event.response_id = message.and_then(|m| text(m.get("id")));
            event.usage = message
                .and_then(|m| m.get("usage"))
                .and_then(AnthropicUsage::read)
                .map(UsageReport::Anthropic);
            event.generated_bytes =
                message.map_or(0, |m| usage::generated_bytes(Wire::Messages, m));
        }
        "content_block_start" => {
            event.generated_bytes = json.get("content_block").map_or(0, usage::item_text_bytes);
        }
        "content_block_delta" => {
            let delta = json.get("delta");
            event.generated_bytes = ["text", "partial_json", "thinking"]
                .iter()
                .filter_map(|f| delta.and_then(|d| d.get(*f)).and_then(Value::as_str))
                .map(|s| s.len() as u64)
                .sum();
        }
        "message_delta" => {
            event.usage = json
                .get("usage")
                .and_then(AnthropicUsage::read)
                .map(UsageReport::Anthropic);
            event.final_usage = event.usage.is_some();
        }
        "message_stop" => event.kind = Kind::End,
        "error" => event.is_error = true,
        "ping" => event.kind = Kind::Other,
        _ => {}
    }
    event
}

/// The event's data: its `data:` lines joined by newlines (`None` without any).
fn data_of(event: &[u8]) -> Option<Vec<u8>> {
    let mut data: Option<Vec<u8>> = None;
    for line in event.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"data:") {
            let rest = rest.strip_prefix(b" ").unwrap_or(rest);
            let d = data.get_or_insert_with(Vec::new);
            if !d.is_empty() {
                d.push(b'\n');
            }
            d.extend_from_slice(rest);
        }
    }
    data
}

/// A chat event with its `usage` removed, for a client that did not ask for it: `None` to drop
/// a usage-only chunk entirely. (The Responses and Messages APIs always carry usage.)
pub fn without_usage(event: &Bytes, read: &Event) -> Option<Bytes> {
    if read.usage.is_none() {
        return Some(event.clone());
    }
    if !read.has_choices {
        return None;
    }
    let data = data_of(event)?;
    let mut json: Value = serde_json::from_slice(&data).ok()?;
    if let Some(map) = json.as_object_mut() {
        map.remove("usage");
    }
    let mut out = b"data: ".to_vec();
    out.extend_from_slice(&serde_json::to_vec(&json).ok()?);
    out.extend_from_slice(b"\n\n");
    Some(Bytes::from(out))
}

/// An error event in `wire`'s own shape, sent when tollgate must end a stream itself: OpenAI's
/// `{"error": …}` chunk, the Responses API's `error` event (numbered after `sequence`, the last
/// number seen), Anthropic's `error` event (which its SDK raises as an `APIStatusError`).
pub fn error_event(wire: Wire, message: &str, kind: &str, sequence: Option<u64>) -> Bytes {
    match wire {
        Wire::Chat => {
            let json = serde_json::json!({"error": {"message": message, "type": kind,
                "param": null, "code": kind}});
            Bytes::from(format!("data: {json}\n\n"))
        }
        Wire::Responses => {
            let json = serde_json::json!({"type": "error", "code": kind, "message": message,
                "param": null, "sequence_number": sequence.map_or(0, |n| n.saturating_add(1))});
            Bytes::from(format!("event: error\ndata: {json}\n\n"))
        }
        Wire::Messages => {
            let json = serde_json::json!({"type": "error",
                "error": {"type": "api_error", "message": message}});
            Bytes::from(format!("event: error\ndata: {json}\n\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_cut_at_blank_lines_however_the_bytes_arrive() {
        let stream = b"data: {\"a\":1}\n\ndata: {\"b\":2}\r\n\r\n: keep-alive\n\ndata: [DONE]\n\n";
        for split in 1..stream.len() {
            let mut s = EventSplitter::default();
            let mut events = s.push(&stream[..split]).unwrap();
            events.extend(s.push(&stream[split..]).unwrap());
            assert_eq!(events.len(), 4, "split at {split}");
            assert_eq!(events.concat(), stream.to_vec());
            assert_eq!(s.finish(), None);
        }
        let mut s = EventSplitter::default();
        assert!(s.push(b"data: {\"tail\":").unwrap().is_empty());
        assert_eq!(s.finish().as_deref(), Some(&b"data: {\"tail\":"[..]));
    }

    #[test]
    fn an_endless_event_is_refused() {
        let mut s = EventSplitter::default();
        let big = vec![b'x'; EVENT_BYTES_MAX + 1];
        assert_eq!(s.push(&big), Err(EventTooLarge));
    }

    #[test]
    fn chat_events_are_read_for_content_usage_and_the_end() {
        let read = |b: &[u8]| Event::read(Wire::Chat, b);
        assert!(read(b"data: [DONE]\n\n").is_end());
        assert_eq!(read(b": ping\n\n"), Event::default());
        assert_eq!(read(b"data: {broken\n\n"), Event::default());
        let content = read(b"data: {\"choices\":[{\"delta\":{\"content\":\"hey \"}}]}\n\n");
        assert_eq!(
            content,
            Event {
                kind: Kind::Data,
                generated_bytes: 4,
                has_choices: true,
                ..Event::default()
            }
        );
        let usage = read(
            b"data: {\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7}}\n\n",
        );
        assert_eq!(
            usage,
            Event {
                kind: Kind::Data,
                usage: Some(UsageReport::Whole(TokenUsage::plain(5, 7))),
                final_usage: true,
                model: Some("m".into()),
                ..Event::default()
            }
        );
        assert!(read(b"data: {\"error\":{\"message\":\"x\"}}\n\n").is_error);
    }

    #[test]
    fn responses_events_carry_deltas_and_end_with_the_usage() {
        let read = |b: &str| Event::read(Wire::Responses, b.as_bytes());
        let created = read(
            "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\
             \"response\":{\"id\":\"resp_1\",\"model\":\"gpt-4o\",\"usage\":null}}\n\n",
        );
        assert_eq!(created.response_id.as_deref(), Some("resp_1"));
        assert_eq!(created.model.as_deref(), Some("gpt-4o"));
        assert_eq!((created.usage, created.is_end()), (None, false));
        let delta = read(
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\
             \"delta\":\"hello\",\"sequence_number\":4}\n\n",
        );
        assert_eq!((delta.generated_bytes, delta.sequence_number), (5, Some(4)));
        let args = read(
            "data: {\"type\":\"response.function_call_arguments.delta\",\"delta\":\"{}\"}\n\n",
        );
        assert_eq!(args.generated_bytes, 2);
        for end in [
            "response.completed",
            "response.incomplete",
            "response.failed",
        ] {
            let e = read(&format!(
                "data: {{\"type\":\"{end}\",\"response\":{{\"id\":\"resp_1\",\"usage\":\
                 {{\"input_tokens\":100,\"input_tokens_details\":{{\"cached_tokens\":60}},\
                 \"output_tokens\":30,\"output_tokens_details\":{{\"reasoning_tokens\":20}}}}}}}}\n\n"
            ));
            assert!(e.is_end() && e.final_usage, "{end}");
            assert_eq!(e.is_error, end == "response.failed");
            let Some(UsageReport::Whole(u)) = e.usage else {
                panic!("{end}: {e:?}")
            };
            assert_eq!(
                (
                    u.prompt_tokens,
                    u.cached_tokens,
                    u.completion_tokens,
                    u.reasoning_tokens
                ),
                (100, 60, 30, 20)
            );
        }
        assert!(read("event: error\ndata: {\"type\":\"error\",\"message\":\"x\"}\n\n").is_error);
        // LiteLLM appends chat's [DONE] to a Responses stream: not an event of this kind.
        assert!(!read("data: [DONE]\n\n").is_end());
    }

    #[test]
    fn messages_events_carry_usage_in_pieces_and_end_with_message_stop() {
        let read = |b: &str| Event::read(Wire::Messages, b.as_bytes());
        let start = read(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\
             \"model\":\"claude-sonnet-4-5\",\"content\":[],\"usage\":{\"input_tokens\":10,\
             \"cache_creation_input_tokens\":20,\"cache_read_input_tokens\":30,\"output_tokens\":1}}}\n\n",
        );
        assert_eq!(start.response_id.as_deref(), Some("msg_1"));
        assert!(!start.final_usage);
        let Some(UsageReport::Anthropic(first)) = start.usage else {
            panic!("{start:?}")
        };
        assert_eq!(first.total().prompt_tokens, 60);
        let text = read(
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\
             \"delta\":{\"type\":\"text_delta\",\"text\":\"abc\"}}\n\n",
        );
        assert_eq!(text.generated_bytes, 3);
        let json = read(
            "data: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"input_json_delta\",\
             \"partial_json\":\"{\\\"a\\\"\"}}\n\n",
        );
        assert_eq!(json.generated_bytes, 4);
        let delta = read(
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\
             \"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n",
        );
        assert!(delta.final_usage);
        let Some(UsageReport::Anthropic(last)) = delta.usage else {
            panic!("{delta:?}")
        };
        let merged = first.merge(last).total();
        assert_eq!(
            (
                merged.prompt_tokens,
                merged.cached_tokens,
                merged.cache_creation_tokens,
                merged.completion_tokens
            ),
            (60, 30, 20, 15)
        );
        assert!(read("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n").is_end());
        assert_eq!(
            read("event: ping\ndata: {\"type\":\"ping\"}\n\n").kind,
            Kind::Other
        );
        assert!(
            read("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n")
                .is_error
        );
    }

    #[test]
    fn tollgates_own_error_events_take_each_streams_shape() {
        let chat = error_event(Wire::Chat, "gone", "upstream_error", None);
        assert!(Event::read(Wire::Chat, &chat).is_error);
        let responses = error_event(Wire::Responses, "gone", "upstream_error", Some(7));
        assert!(responses.starts_with(b"event: error\n"));
        assert!(Event::read(Wire::Responses, &responses).is_error);
        assert_eq!(
            Event::read(Wire::Responses, &responses).sequence_number,
            Some(8)
        );
        let messages = error_event(Wire::Messages, "gone", "upstream_error", None);
        assert!(messages.starts_with(b"event: error\n"));
        assert!(Event::read(Wire::Messages, &messages).is_error);
    }

    #[test]
    fn usage_is_hidden_by_dropping_or_rewriting_the_chunk() {
        let only =
            Bytes::from_static(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n");
        let read = |b: &Bytes| Event::read(Wire::Chat, b);
        assert_eq!(without_usage(&only, &read(&only)), None);
        let mixed = Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{}}],\"usage\":{\"prompt_tokens\":1}}\n\n",
        );
        let rewritten = without_usage(&mixed, &read(&mixed)).unwrap();
        assert_eq!(&rewritten[..], b"data: {\"choices\":[{\"delta\":{}}]}\n\n");
        let plain =
            Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n");
        assert_eq!(without_usage(&plain, &read(&plain)), Some(plain.clone()));
    }
}
