//! The fuzz targets' bodies: what each checks beyond "no panic, no hang".
//!
//! - [`stream`]: bytes cut into events in pieces of any size give the same events as whole
//!   (the splitter never loses or reorders a byte); every event reads without panicking; chat's
//!   usage hiding re-serializes what it reads; Anthropic usage pieces merge; an error event
//!   tollgate writes reads back as an error of the same stream kind.
//! - [`request`]: a body the endpoint accepts gets a prompt ceiling (or a clear refusal); once
//!   capped at N, every cap field it forwards is at most N and the forwarded body is itself
//!   accepted, with that cap, by the same endpoint.

use serde_json::Value;
use tollgate::gateway::request::{self, Endpoint, Wire};
use tollgate::gateway::sse::{self, Event, EventSplitter, UsageReport};
use tollgate::gateway::tokens;
use tollgate::prices::PriceTable;

/// Feeds `data` to `wire`'s stream reader: the first byte picks the piece size.
pub fn stream(wire: Wire, data: &[u8]) {
    let Some((&piece, bytes)) = data.split_first() else {
        return;
    };
    let mut pieces = EventSplitter::default();
    let mut cut = Vec::new();
    for chunk in bytes.chunks(usize::from(piece).max(1)) {
        match pieces.push(chunk) {
            Ok(events) => cut.extend(events),
            Err(_) => return,
        }
    }
    cut.extend(pieces.finish());
    let mut whole = EventSplitter::default();
    let mut at_once = whole.push(bytes).expect("fits in pieces, fits whole");
    at_once.extend(whole.finish());
    assert_eq!(cut, at_once, "events depend on how the bytes arrived");
    for event in &cut {
        let read = Event::read(wire, event);
        if wire == Wire::Chat {
            let _ = sse::without_usage(event, &read);
        }
        if let Some(UsageReport::Anthropic(u)) = read.usage {
            let _ = u.merge(u).total();
        }
    }
    let text = String::from_utf8_lossy(bytes);
    let own = sse::error_event(wire, &text, "upstream_error", Some(u64::MAX));
    assert!(
        Event::read(wire, &own).is_error,
        "tollgate's own error event does not read as one"
    );
}

/// Checks `data` as a request body to `endpoint`, then follows it as the gateway would.
pub fn request(endpoint: Endpoint, data: &[u8]) {
    let Ok(mut parsed) = request::parse(endpoint, data, &[]) else {
        return;
    };
    let table = PriceTable::builtin();
    // An OpenAI model (counted with its tokenizer) or another (counted by bytes).
    let model = if data.len().is_multiple_of(2) {
        "gpt-4o-mini"
    } else {
        "claude-sonnet-4"
    };
    let price = table.resolve(model).expect("a built-in price").clone();
    if tokens::prompt_ceiling(&parsed, &price).is_err() {
        return;
    }
    let _ = parsed.searches_ceiling(&price.provider);
    let cap = 1 + (data.len() as u64 % 5_000);
    let _ = parsed.check_answer_size(cap, parsed.choices, 1 << 20);
    parsed.set_output_cap(cap);
    if !endpoint.has_output() {
        assert!(
            parsed.body.keys().all(|k| !k.starts_with("max_")),
            "a cap written into an embeddings request"
        );
    }
    if parsed.stream {
        parsed.ask_stream_usage();
    }
    let forwarded = parsed.forwarded("served-model");
    for field in ["max_tokens", "max_completion_tokens", "max_output_tokens"] {
        if let Some(n) = forwarded.get(field).and_then(Value::as_u64) {
            assert!(n <= cap, "{field} = {n} over the cap {cap}");
        }
    }
    if let Some(budget) = forwarded
        .pointer("/thinking/budget_tokens")
        .and_then(Value::as_u64)
        && parsed.thinking_budget.is_some()
    {
        assert!(
            budget < cap,
            "a thinking budget of {budget} at a cap of {cap}"
        );
    }
    let bytes = serde_json::to_vec(&forwarded).expect("a JSON value serializes");
    let again = request::parse(endpoint, &bytes, &[]).expect("the forwarded body is accepted");
    if endpoint.has_output() {
        assert_eq!(
            again.output_cap,
            Some(cap),
            "the cap did not survive forwarding"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target's name and its check.
    type Target<'a> = (&'a str, &'a dyn Fn(&[u8]));

    /// Every seed of every target, run through its check (what the fuzzers start from).
    #[test]
    fn the_seeds_pass_their_checks() {
        let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../seeds");
        let targets: [Target<'_>; 8] = [
            ("chat_sse", &|d| stream(Wire::Chat, d)),
            ("responses_events", &|d| stream(Wire::Responses, d)),
            ("messages_events", &|d| stream(Wire::Messages, d)),
            ("request_chat_completions", &|d| {
                request(Endpoint::ChatCompletions, d)
            }),
            ("request_completions", &|d| {
                request(Endpoint::Completions, d)
            }),
            ("request_embeddings", &|d| request(Endpoint::Embeddings, d)),
            ("request_responses", &|d| request(Endpoint::Responses, d)),
            ("request_messages", &|d| request(Endpoint::Messages, d)),
        ];
        for (target, check) in targets {
            let mut ran = 0;
            for seed in std::fs::read_dir(seeds.join(target)).unwrap() {
                check(&std::fs::read(seed.unwrap().path()).unwrap());
                ran += 1;
            }
            assert!(ran > 0, "{target} has no seeds");
        }
    }

    /// A request a seed makes is accepted, so the check follows it all the way.
    #[test]
    fn the_request_seeds_are_accepted() {
        let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../seeds");
        for (target, endpoint) in [
            ("request_chat_completions", Endpoint::ChatCompletions),
            ("request_completions", Endpoint::Completions),
            ("request_embeddings", Endpoint::Embeddings),
            ("request_responses", Endpoint::Responses),
            ("request_messages", Endpoint::Messages),
        ] {
            for seed in std::fs::read_dir(seeds.join(target)).unwrap() {
                let path = seed.unwrap().path();
                let body = std::fs::read(&path).unwrap();
                request::parse(endpoint, &body, &[])
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
        }
    }
}
