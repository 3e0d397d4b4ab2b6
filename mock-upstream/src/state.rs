//! The state a mock server shares between its handlers, its streams and its owner.
//!
//! Guarantees: counters only grow; `cancelled` lives in a `watch` channel so a waiter that
//! subscribes late still sees every cancellation that happened before; the two `Mutex`es are
//! held only to swap in a reference-counted value (never across an await, never to parse), and a
//! poisoned lock is recovered rather than propagated. The last body is kept as the raw bytes
//! (a reference-count bump per request) and parsed only when [`Shared::stats`] is called.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use axum::http::HeaderValue;
use bytes::Bytes;
use tokio::sync::watch;

use crate::Stats;

pub(crate) struct Shared {
    /// Every request to any route (counted by the tracking middleware).
    requests: AtomicU64,
    streams_started: AtomicU64,
    streams_completed: AtomicU64,
    /// Cancelled streams; a `watch` so `wait_streams_cancelled` cannot miss an earlier change.
    cancelled: watch::Sender<u64>,
    /// Numbers the successful calls, for response ids and `x-litellm-call-id`.
    calls: AtomicU64,
    /// The `Authorization` header of the last `/v1` request (`None`: it had none).
    last_authorization: Mutex<Option<HeaderValue>>,
    /// The body of the last POST to a known route, unparsed.
    last_body: Mutex<Option<Bytes>>,
    /// Anthropic's headers of the last Messages request: `anthropic-version`, `anthropic-beta`,
    /// `x-api-key`.
    last_anthropic: Mutex<[Option<String>; 3]>,
    /// Flips to `true` once: the server is stopping, and everything that waits must end.
    shutdown: watch::Sender<bool>,
    /// How the mock behaves beyond its scenarios (fixed at start).
    pub(crate) options: crate::Options,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    #[cfg(test)]
    pub(crate) fn new() -> Shared {
        Shared::with_options(crate::Options::default())
    }

    pub(crate) fn with_options(options: crate::Options) -> Shared {
        Shared {
            options,
            requests: AtomicU64::new(0),
            streams_started: AtomicU64::new(0),
            streams_completed: AtomicU64::new(0),
            cancelled: watch::Sender::new(0),
            calls: AtomicU64::new(0),
            last_authorization: Mutex::new(None),
            last_body: Mutex::new(None),
            last_anthropic: Mutex::new([None, None, None]),
            shutdown: watch::Sender::new(false),
        }
    }

    pub(crate) fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::SeqCst);
    }

    /// The next call number, starting at 1.
    pub(crate) fn next_call(&self) -> u64 {
        self.calls.fetch_add(1, Ordering::SeqCst).wrapping_add(1)
    }

    pub(crate) fn record_authorization(&self, value: Option<&HeaderValue>) {
        let mut last = lock(&self.last_authorization);
        if last.as_ref() != value {
            *last = value.cloned();
        }
    }

    pub(crate) fn record_body(&self, body: Bytes) {
        let old = lock(&self.last_body).replace(body);
        drop(old); // outside the lock
    }

    pub(crate) fn record_headers(&self, headers: &axum::http::HeaderMap) {
        let get = |name: &str| {
            headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        *lock(&self.last_anthropic) = [
            get("anthropic-version"),
            get("anthropic-beta"),
            get("x-api-key"),
        ];
    }

    pub(crate) fn stream_started(&self) {
        self.streams_started.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn stream_completed(&self) {
        self.streams_completed.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn stream_cancelled(&self) {
        self.cancelled.send_modify(|n| *n += 1);
    }

    pub(crate) async fn wait_streams_cancelled(&self, n: u64) {
        let mut rx = self.cancelled.subscribe();
        // The sender lives as long as `self`, so this can only end by the condition holding.
        let _ = rx.wait_for(|cancelled| *cancelled >= n).await;
    }

    pub(crate) fn stop(&self) {
        self.shutdown.send_replace(true);
    }

    /// Resolves once [`Shared::stop`] has been called (at once if it already was).
    pub(crate) fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.subscribe();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        let last_authorization = lock(&self.last_authorization)
            .as_ref()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let last_body = lock(&self.last_body).clone();
        let [anthropic_version, anthropic_beta, api_key] = lock(&self.last_anthropic).clone();
        Stats {
            requests: self.requests.load(Ordering::SeqCst),
            streams_started: self.streams_started.load(Ordering::SeqCst),
            streams_completed: self.streams_completed.load(Ordering::SeqCst),
            streams_cancelled: *self.cancelled.borrow(),
            last_authorization,
            last_body: last_body.and_then(|b| serde_json::from_slice(&b).ok()),
            last_anthropic_version: anthropic_version,
            last_anthropic_beta: anthropic_beta,
            last_api_key: api_key,
        }
    }
}
