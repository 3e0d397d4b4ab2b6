//! The gateway's access log: one line per request on the API listener, under the target
//! [`TARGET`] (so `TOLLGATE_LOG=info,tollgate::access=warn` keeps only the refusals), in the
//! format the operator chose (`log.format`: text or JSON, where each field is a key of
//! `fields`).
//!
//! A request served is logged at info; a refusal (401, 402, 403, 429, 400, …), an upstream
//! failure, or a request that ended early (a stream cut, a client gone) at warn, with `error`
//! (a stable code) and `reason` (the message the client got, or the failure's cause).
//!
//! Guarantees: every line has the same fields (`request_id`, `user`, `route`, `model`, `level`,
//! `status`, `prompt_tokens`, `completion_tokens`, `credits`, `latency_ms`, `upstream`,
//! `stream`; `"-"` where a value is not known); no key is ever in a line — neither the caller's
//! API key (only the user it belongs to), nor the upstream's key, nor a BYOK key (only its
//! provider), and `upstream` is the upstream's host and port, never its URL's user or password.
//! Text that comes from the client (a path, a model name) is cut to [`CLIENT_TEXT_LEN_MAX`]
//! characters. Metered requests are logged once their usage row is written (a stream: when it
//! ends), so the line carries what was charged.

use std::time::Duration;

use tollgate_schema::money::Credits;

use crate::ledger::PowerLevel;

/// The tracing target of every access line.
pub const TARGET: &str = "tollgate::access";
/// The most characters of a client's text (a path, a model) put in a line.
pub const CLIENT_TEXT_LEN_MAX: usize = 200;
/// The most characters of a reason put in a line.
const REASON_LEN_MAX: usize = 500;

/// Where a request went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Upstream {
    /// Nowhere: refused (or answered) by the gateway itself.
    #[default]
    None,
    /// The configured upstream (LiteLLM), by host and port.
    Configured(String),
    /// Straight to a provider with the user's own key (BYOK), by provider name.
    Byok(String),
}

impl Upstream {
    /// The configured upstream's `host:port` (never the URL's credentials or path).
    pub fn configured(url: &str) -> Upstream {
        let host = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| {
                let host = u.host_str()?.to_owned();
                Some(match u.port_or_known_default() {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                })
            })
            .unwrap_or_else(|| "upstream".to_owned());
        Upstream::Configured(host)
    }

    /// How a line names it: `host:port`, `byok:<provider>`, or `-`.
    pub fn text(&self) -> String {
        match self {
            Upstream::None => "-".to_owned(),
            Upstream::Configured(host) => host.clone(),
            Upstream::Byok(provider) => format!("byok:{provider}"),
        }
    }
}

/// One request's line.
#[derive(Debug, Default)]
pub struct AccessLine<'a> {
    pub request_id: &'a str,
    /// The user the API key belongs to (`None` before authentication).
    pub user: Option<&'a str>,
    /// The route template (`/v1/chat/completions`) or, for a 404, the path asked for.
    pub route: &'a str,
    pub model: Option<&'a str>,
    pub level: Option<PowerLevel>,
    pub status: u16,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// What was charged (zero for a refusal or a failure released).
    pub credits: Credits,
    /// From the request's arrival to its end (a stream's last event).
    pub latency: Duration,
    pub upstream: Upstream,
    pub stream: bool,
    /// A stable code (an error type or the OpenAI-shaped code) and the reason, for a refusal
    /// or a failure.
    pub error: Option<(&'a str, &'a str)>,
}

/// Emits one access line at `$level` (tracing needs the level at compile time).
macro_rules! access_event {
    ($level:expr, $line:expr, $error:expr, $reason:expr, $message:literal) => {
        tracing::event!(
            target: TARGET,
            $level,
            request_id = %$line.request_id,
            user = %cut($line.user.unwrap_or("-")),
            route = %cut($line.route),
            model = %cut($line.model.unwrap_or("-")),
            level = %$line.level.map_or("-", PowerLevel::as_str),
            status = $line.status,
            prompt_tokens = $line.prompt_tokens,
            completion_tokens = $line.completion_tokens,
            credits = %$line.credits,
            latency_ms = u64::try_from($line.latency.as_millis()).unwrap_or(u64::MAX),
            upstream = %$line.upstream.text(),
            stream = $line.stream,
            error = %$error,
            reason = %$reason,
            $message
        )
    };
}

impl AccessLine<'_> {
    /// Whether this line is logged at warn: a refusal, a failure, or a request ended early.
    pub fn is_warning(&self) -> bool {
        self.status >= 400 || self.error.is_some()
    }

    /// Writes the line: info for a request served, warn otherwise.
    pub fn emit(&self) {
        if !self.is_warning() {
            access_event!(tracing::Level::INFO, self, "-", "-", "request served");
            return;
        }
        let (code, reason) = self.error.unwrap_or(("-", "-"));
        let reason = cut_to(reason, REASON_LEN_MAX);
        if self.status >= 500 || matches!(code, "upstream_error" | "timeout" | "internal_error") {
            access_event!(tracing::Level::WARN, self, code, reason, "request failed");
        } else if self.status < 400 {
            access_event!(
                tracing::Level::WARN,
                self,
                code,
                reason,
                "request ended early"
            );
        } else {
            access_event!(tracing::Level::WARN, self, code, reason, "request refused");
        }
    }
}

/// At most [`CLIENT_TEXT_LEN_MAX`] characters of `text`.
pub fn cut(text: &str) -> &str {
    cut_to(text, CLIENT_TEXT_LEN_MAX)
}

fn cut_to(text: &str, chars: usize) -> &str {
    match text.char_indices().nth(chars) {
        Some((at, _)) => text.get(..at).unwrap_or(text),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_is_named_by_host_and_port_without_credentials() {
        assert_eq!(
            Upstream::configured("http://user:sk-secret@litellm.internal:4000/v1").text(),
            "litellm.internal:4000"
        );
        assert_eq!(
            Upstream::configured("https://litellm.example.com").text(),
            "litellm.example.com:443"
        );
        assert_eq!(Upstream::Byok("openai".into()).text(), "byok:openai");
        assert_eq!(Upstream::None.text(), "-");
    }

    #[test]
    fn client_text_is_cut_on_a_character_boundary() {
        let long = "é".repeat(CLIENT_TEXT_LEN_MAX + 5);
        assert_eq!(cut(&long).chars().count(), CLIENT_TEXT_LEN_MAX);
        assert_eq!(cut("gpt-4o-mini"), "gpt-4o-mini");
    }

    #[test]
    fn refusals_and_failures_are_warnings_served_requests_are_not() {
        let served = AccessLine {
            status: 200,
            ..AccessLine::default()
        };
        assert!(!served.is_warning());
        let cut_short = AccessLine {
            status: 200,
            error: Some(("client_disconnected", "the client disconnected mid-stream")),
            ..AccessLine::default()
        };
        assert!(cut_short.is_warning());
        let refused = AccessLine {
            status: 402,
            ..AccessLine::default()
        };
        assert!(refused.is_warning());
    }
}
