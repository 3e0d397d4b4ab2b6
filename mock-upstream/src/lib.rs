//! A mock LLM provider that speaks OpenAI's HTTP API like LiteLLM does, JSON and SSE streams, for
//! tollgate's demo, end-to-end tests and benchmarks.
//!
//! Guarantees: deterministic (replies, token counts, embeddings and ids depend only on the
//! requests and their order); no input makes it panic; it stops when asked (or when its
//! [`MockUpstream`] is dropped), even with hanging, stalled or endless requests in flight.
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `POST /v1/embeddings`,
//! `POST /v1/responses` (OpenAI's Responses API), `POST /v1/messages` and
//! `POST /v1/messages/count_tokens` (Anthropic's Messages API; see `typed`), `GET /v1/models`, `GET /model/info` (LiteLLM's deployments, when started with [`Options`]
//! that have one; else a 404 as from a plain OpenAI-compatible server), `GET /health/liveliness`;
//! anything else is a 404 (405 for a known path with the wrong method) in OpenAI's error shape.
//!
//! Tokens: prompt tokens are the whitespace-separated words of the chat messages' texts (all
//! messages; string contents and `text` parts), of the prompt strings, or of the input strings;
//! never more than their UTF-8 bytes. A reply is `N` words cycled from a fixed list ("lorem
//! ipsum dolor …"), one token each: `N` = `mock:tokens=N` or 16, capped by
//! `max_completion_tokens` (else `max_tokens`), with `finish_reason` `length` when the cap cut it.
//!
//! Scenarios: directives `mock:NAME[=VALUE]` in the last chat message, in any prompt string, or
//! in the first embedding input: `tokens=N`, `no_usage`, `status=CODE` (200..=599),
//! `malformed`, `slow=MS`, `endless`, `hang`, `stall_after=K`, `cut_after=K`,
//! `error_after=K`, `stall_body`, `ignore_cap`; usage details `prompt_tokens=N`, `cached=N`,
//! `cache_write=N`, `audio_in=N`, `audio_out=N`, `reasoning=N`, `searches=N`; stream shape
//! `chunk_words=K`, `usage_delay=MS`; and `model=NAME` (the model the response names). See the
//! `scenario` and `stream` modules for the exact behaviour of each.
//!
//! Modules: `scenario` (directives, token and cost arithmetic; pure), `wire` (OpenAI's shapes),
//! `handlers` (the routes), `stream` (the SSE body and its accounting), `state` (shared counters).

mod handlers;
mod scenario;
mod state;
mod stream;
mod typed;
mod wire;

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::state::Shared;

pub use crate::scenario::{REPLY_TOKENS_DEFAULT, REPLY_TOKENS_MAX, WORDS};

/// The largest request body accepted (a longer one is a 413 in OpenAI's error shape).
pub const BODY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// How long [`MockUpstream::shutdown`] lets open connections finish before it abandons them.
/// Every wait of the mock's own ends at shutdown, so only a client that stops reading mid-body
/// can use it up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running mock upstream. Dropping it stops the server too (in the background); call
/// [`MockUpstream::shutdown`] to wait until it has stopped.
pub struct MockUpstream {
    /// Where it listens.
    addr: SocketAddr,
    /// Counters and the stop signal, shared with the handlers.
    shared: Arc<Shared>,
    /// The server task; taken by `shutdown`.
    task: Option<JoinHandle<io::Result<()>>>,
}

/// How the mock behaves beyond its scenarios.
#[derive(Debug, Clone)]
pub struct Options {
    /// `GET /v1/models`' names (`None`: a fixed list of four).
    pub models: Option<Vec<String>>,
    /// LiteLLM's `GET /model/info` answer (`None`: a 404, as from a plain OpenAI-compatible
    /// server).
    pub model_info: Option<serde_json::Value>,
    /// Whether answers carry LiteLLM's `x-litellm-*` headers: yes when the mock stands in for
    /// LiteLLM, no when it plays the provider behind a real LiteLLM (which would pass them on).
    pub litellm_headers: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            models: None,
            model_info: None,
            litellm_headers: true,
        }
    }
}

/// What the mock has seen so far; a snapshot.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Every request to any route, counted when it arrives.
    pub requests: u64,
    /// Streaming responses begun.
    pub streams_started: u64,
    /// Streams whose last item was handed to the server: `[DONE]`, or the break of
    /// `mock:cut_after` (which ends on the mock's terms). Counted before the client can see it.
    pub streams_completed: u64,
    /// Streams dropped before their end (the client left). A stream ended by the mock's own
    /// shutdown counts in neither this nor `streams_completed`.
    pub streams_cancelled: u64,
    /// The `Authorization` header of the last `/v1` request (`None` if that request had none).
    pub last_authorization: Option<String>,
    /// The body of the last POST to a known route, parsed as JSON (`None` if it was not JSON).
    pub last_body: Option<serde_json::Value>,
    /// The `anthropic-version`, `anthropic-beta` and `x-api-key` headers of the last Messages
    /// or Responses request.
    pub last_anthropic_version: Option<String>,
    pub last_anthropic_beta: Option<String>,
    pub last_api_key: Option<String>,
}

impl MockUpstream {
    /// Serves on `listener` (already bound, e.g. to 127.0.0.1:0) in a task on the current tokio
    /// runtime. Connections get `TCP_NODELAY`, so paced stream events leave at once.
    pub async fn start(listener: TcpListener) -> io::Result<MockUpstream> {
        MockUpstream::start_with(listener, Options::default()).await
    }

    /// As [`MockUpstream::start`], serving `catalog`.
    pub async fn start_with(listener: TcpListener, catalog: Options) -> io::Result<MockUpstream> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::with_options(catalog));
        let app = router(shared.clone());
        let stopped = shared.stopped();
        let listener = listener.tap_io(|tcp| {
            // Best effort: without it only latency suffers.
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
        });
        Ok(MockUpstream {
            addr,
            shared,
            task: Some(task),
        })
    }

    /// Binds 127.0.0.1:0 and starts.
    pub async fn spawn() -> io::Result<MockUpstream> {
        MockUpstream::spawn_with(Options::default()).await
    }

    /// Binds 127.0.0.1:0 and starts, serving `catalog`.
    pub async fn spawn_with(catalog: Options) -> io::Result<MockUpstream> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        MockUpstream::start_with(listener, catalog).await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash, no `/v1`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Resolves once at least `n` streams have been cancelled, including ones cancelled before
    /// this call.
    pub async fn wait_streams_cancelled(&self, n: u64) {
        self.shared.wait_streams_cancelled(n).await;
    }

    /// Stops the server: no new connections; hanging, stalled, slow and endless requests end at
    /// once (a 503, or a broken stream); returns when the server task has ended, or after a grace
    /// period if a client holds a connection open by not reading.
    pub async fn shutdown(mut self) {
        self.shared.stop();
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

impl fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockUpstream")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(handlers::chat))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/embeddings", post(handlers::embeddings))
        .route("/v1/responses", post(typed::responses))
        .route("/v1/messages", post(typed::messages))
        .route("/v1/messages/count_tokens", post(typed::count_tokens))
        .route("/v1/models", get(handlers::models))
        .route("/model/info", get(handlers::model_info))
        .route("/health/liveliness", get(handlers::liveliness))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            handlers::track,
        ))
        .with_state(shared)
}
