//! The agent's HTTP client for the sync protocol (`tollgate_schema::wire`): enrol, push, pull
//! (a long poll) and snapshot.
//!
//! Guarantees:
//! - Every body sent names [`PROTOCOL_VERSION`], and every answer must name it too.
//! - The credential travels only in the `Authorization` header, which reqwest marks sensitive;
//!   it is never in a URL, a log or an error message. Redirects are not followed, so it is never
//!   sent anywhere but the configured server.
//! - Every call has a timeout (the constants below); a long poll's is its wait plus
//!   [`LONG_POLL_GRACE`]. Answers are read up to [`RESPONSE_BYTES_MAX`].
//! - A refusal the server explains with an [`ErrorBody`] becomes [`ClientError::Server`] with its
//!   code as an [`ErrorCode`], its message and (on a push) its acknowledged head; anything that is
//!   not the body the protocol promises is [`ClientError::Protocol`]; no answer at all is
//!   [`ClientError::Transport`].

use std::fmt;
use std::time::Duration;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use tollgate_schema::wire::{
    EnrollRequest, EnrollResponse, ErrorBody, GrantRequest, GrantResponse, InboxPage,
    LONG_POLL_MAX_MS, PROTOCOL_HEADER, PROTOCOL_VERSION, PushRequest, PushResponse, Snapshot,
    UserSettings, error_code,
};

use super::config::SyncConfig;
use crate::gateway::config::Secret;
use crate::gateway::error_chain;

/// How long connecting to the server may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an enrolment, push or snapshot may take, answer included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How much longer than its wait a long poll may take before it counts as failed.
pub const LONG_POLL_GRACE: Duration = Duration::from_secs(10);
/// The largest answer read (a snapshot of many users is the largest).
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The longest server message kept in an error.
const SERVER_MESSAGE_LEN_MAX: usize = 500;

/// The server's refusal codes ([`error_code`]), typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    UnsupportedProtocol,
    Unauthorized,
    Forbidden,
    Quarantined,
    Conflict,
    Gap,
    BadHash,
    TooLarge,
    CursorGone,
    IdempotencyConflict,
    NotFound,
    Unavailable,
    /// A code this build does not know, or `http_<status>` for an answer without an
    /// [`ErrorBody`] (a proxy's error page).
    Other(String),
}

impl ErrorCode {
    pub fn parse(code: &str) -> ErrorCode {
        match code {
            error_code::BAD_REQUEST => ErrorCode::BadRequest,
            error_code::UNSUPPORTED_PROTOCOL => ErrorCode::UnsupportedProtocol,
            error_code::UNAUTHORIZED => ErrorCode::Unauthorized,
            error_code::FORBIDDEN => ErrorCode::Forbidden,
            error_code::QUARANTINED => ErrorCode::Quarantined,
            error_code::CONFLICT => ErrorCode::Conflict,
            error_code::GAP => ErrorCode::Gap,
            error_code::BAD_HASH => ErrorCode::BadHash,
            error_code::TOO_LARGE => ErrorCode::TooLarge,
            error_code::CURSOR_GONE => ErrorCode::CursorGone,
            error_code::IDEMPOTENCY_CONFLICT => ErrorCode::IdempotencyConflict,
            error_code::NOT_FOUND => ErrorCode::NotFound,
            error_code::UNAVAILABLE => ErrorCode::Unavailable,
            other => ErrorCode::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::BadRequest => error_code::BAD_REQUEST,
            ErrorCode::UnsupportedProtocol => error_code::UNSUPPORTED_PROTOCOL,
            ErrorCode::Unauthorized => error_code::UNAUTHORIZED,
            ErrorCode::Forbidden => error_code::FORBIDDEN,
            ErrorCode::Quarantined => error_code::QUARANTINED,
            ErrorCode::Conflict => error_code::CONFLICT,
            ErrorCode::Gap => error_code::GAP,
            ErrorCode::BadHash => error_code::BAD_HASH,
            ErrorCode::TooLarge => error_code::TOO_LARGE,
            ErrorCode::CursorGone => error_code::CURSOR_GONE,
            ErrorCode::IdempotencyConflict => error_code::IDEMPOTENCY_CONFLICT,
            ErrorCode::NotFound => error_code::NOT_FOUND,
            ErrorCode::Unavailable => error_code::UNAVAILABLE,
            ErrorCode::Other(code) => code,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a call to the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a refusal.
    #[error("the sync server refused ({status} {code}): {message}")]
    Server {
        status: u16,
        code: ErrorCode,
        message: String,
        /// On a push refusal: the server's contiguous acknowledged head.
        acked_seq: Option<i64>,
    },
    /// No answer: connection refused, reset, timed out.
    #[error("cannot reach the sync server: {0}")]
    Transport(String),
    /// An answer that is not what the protocol promises.
    #[error("the sync server's answer breaks the protocol: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The server's refusal code, if the server refused.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the server could not be reached or could not serve (no answer, or a 5xx): a
    /// partition or an outage, not a refusal.
    pub fn unreachable(&self) -> bool {
        match self {
            ClientError::Transport(_) => true,
            ClientError::Server { status, .. } => *status >= 500,
            ClientError::Protocol(_) => false,
        }
    }
}

/// A client for one server and one credential. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct SyncClient {
    http: reqwest::Client,
    server: String,
    credential: Secret,
}

impl fmt::Debug for SyncClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncClient")
            .field("server", &self.server)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

fn http_client() -> Result<reqwest::Client, ClientError> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ClientError::Transport(error_chain(&e)))
}

impl SyncClient {
    pub fn new(config: &SyncConfig) -> Result<SyncClient, ClientError> {
        Ok(SyncClient {
            http: http_client()?,
            server: config.server.clone(),
            credential: config.credential().clone(),
        })
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    /// Trades a one-time enrolment token for this agent's id and credential (`server` is a base
    /// URL as [`super::config::server_url`] returns it), bringing the agent's `users` (the server
    /// adopts them, homed on this agent). The token is spent by the server.
    pub async fn enroll(
        server: &str,
        token: &Secret,
        incarnation: &str,
        users: Vec<UserSettings>,
    ) -> Result<EnrollResponse, ClientError> {
        let http = http_client()?;
        let body = EnrollRequest {
            protocol_version: PROTOCOL_VERSION,
            token: token.expose().to_owned(),
            incarnation: incarnation.to_owned(),
            users,
        };
        let request = http
            .post(format!("{server}/v1/agents/enroll"))
            .header(PROTOCOL_HEADER, PROTOCOL_VERSION)
            .timeout(REQUEST_TIMEOUT)
            .json(&body);
        // Wipe the body's copy of the token (the serialized request is reqwest's).
        drop(zeroize::Zeroizing::new(body.token));
        // serde_json's message may quote a value; the answer holds the credential, so only the
        // position is kept.
        let answer: EnrollResponse = send(request, "enrolment", true).await?;
        check_version(answer.protocol_version)?;
        Ok(answer)
    }

    /// Sends a batch of entries (or none, a heartbeat).
    pub async fn push(&self, body: &PushRequest) -> Result<PushResponse, ClientError> {
        let answer: PushResponse = self
            .call(
                self.http.post(self.url("/v1/sync/push")).json(body),
                REQUEST_TIMEOUT,
                "push",
            )
            .await?;
        check_version(answer.protocol_version)?;
        Ok(answer)
    }

    /// Events after `after`, waiting up to `wait` (at most the protocol's
    /// [`LONG_POLL_MAX_MS`]) for the first one if there is none yet.
    pub async fn pull(&self, after: i64, wait: Duration) -> Result<InboxPage, ClientError> {
        let wait_ms = u64::try_from(wait.as_millis())
            .unwrap_or(u64::MAX)
            .min(LONG_POLL_MAX_MS);
        let request = self
            .http
            .get(self.url(&format!("/v1/sync/inbox?after={after}&wait_ms={wait_ms}")));
        let answer: InboxPage = self
            .call(
                request,
                Duration::from_millis(wait_ms) + LONG_POLL_GRACE,
                "inbox",
            )
            .await?;
        check_version(answer.protocol_version)?;
        Ok(answer)
    }

    /// Asks for a grant of a fleet user's pool (protocol 3).
    pub async fn grant(&self, body: &GrantRequest) -> Result<GrantResponse, ClientError> {
        let answer: GrantResponse = self
            .call(
                self.http.post(self.url("/v1/escrow/grants")).json(body),
                REQUEST_TIMEOUT,
                "grant",
            )
            .await?;
        check_version(answer.protocol_version)?;
        Ok(answer)
    }

    /// Everything the server holds for this agent (after a `cursor_gone`).
    pub async fn snapshot(&self) -> Result<Snapshot, ClientError> {
        let answer: Snapshot = self
            .call(
                self.http.get(self.url("/v1/sync/snapshot")),
                REQUEST_TIMEOUT,
                "snapshot",
            )
            .await?;
        check_version(answer.protocol_version)?;
        Ok(answer)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Duration,
        what: &str,
    ) -> Result<T, ClientError> {
        let request = request
            .bearer_auth(self.credential.expose())
            .header(PROTOCOL_HEADER, PROTOCOL_VERSION)
            .timeout(timeout);
        send(request, what, false).await
    }
}

/// Sends `request` and reads its answer as `T` (2xx) or as a refusal.
async fn send<T: DeserializeOwned>(
    request: reqwest::RequestBuilder,
    what: &str,
    secret_answer: bool,
) -> Result<T, ClientError> {
    let mut response = request
        .send()
        .await
        .map_err(|e| ClientError::Transport(error_chain(&e)))?;
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ClientError::Transport(error_chain(&e)))?
    {
        if body.len() + chunk.len() > RESPONSE_BYTES_MAX {
            return Err(ClientError::Protocol(format!(
                "the {what} answer is larger than {RESPONSE_BYTES_MAX} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    if status.is_success() {
        return serde_json::from_slice(&body).map_err(|e| {
            ClientError::Protocol(if secret_answer {
                format!(
                    "the {what} answer is not the expected JSON (line {}, column {})",
                    e.line(),
                    e.column()
                )
            } else {
                format!("the {what} answer is not the expected JSON: {e}")
            })
        });
    }
    Err(refusal(status, &body))
}

/// A non-2xx answer as a typed refusal.
fn refusal(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => ClientError::Server {
            status: status.as_u16(),
            code: ErrorCode::parse(&error.code),
            message: short(&error.message),
            acked_seq: error.acked_seq,
        },
        Err(_) => ClientError::Server {
            status: status.as_u16(),
            code: ErrorCode::Other(format!("http_{}", status.as_u16())),
            message: if status.is_redirection() {
                "the server answered with a redirect, which the agent does not follow: check \
                 the server URL in sync.toml"
                    .to_owned()
            } else {
                short(&String::from_utf8_lossy(body))
            },
            acked_seq: None,
        },
    }
}

fn check_version(version: u32) -> Result<(), ClientError> {
    if version == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(ClientError::Protocol(format!(
            "it speaks protocol version {version}, this agent speaks {PROTOCOL_VERSION}"
        )))
    }
}

/// A server's text on one line, cut to [`SERVER_MESSAGE_LEN_MAX`] characters.
fn short(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(SERVER_MESSAGE_LEN_MAX) {
        Some((end, _)) => format!("{}…", &line[..end]),
        None => line,
    }
}
