//! The agent ↔ server sync protocol (SYNC.md): every type that crosses the wire, the journal
//! entry's canonical bytes and hash, and the protocol's named limits.
//!
//! Guarantees:
//! - Both sides hash an entry with the same code ([`Canonical::hash`]); the golden fixtures in
//!   `schema/tests/fixtures/wire/` pin the JSON of every message and one entry's hash, so a change
//!   to any of them fails a test before it can break a deployed peer.
//! - Every message names [`PROTOCOL_VERSION`]-compatible fields only; unknown fields are refused
//!   (`deny_unknown_fields`) so a typo never silently drops data. Messages evolve additively: a
//!   field added in a later version is optional and left out when empty, an event kind added
//!   later is sent only to agents that speak its version ([`EventBody::since_version`]); the
//!   previous version's messages are pinned in `schema/tests/fixtures/wire/v1/` and must read
//!   back and write out byte for byte.
//! - Amounts are [`Credits`] (exact decimal strings on the wire), never floats.
//!
//! Endpoints (all JSON; the agent authenticates with `Authorization: Bearer <credential>`):
//! - `POST /v1/agents/enroll` — [`EnrollRequest`] → [`EnrollResponse`] (no credential; the
//!   one-time token is the authentication).
//! - `POST /v1/sync/push` — [`PushRequest`] → [`PushResponse`]; refusals are [`ErrorBody`] with
//!   a code from [`error_code`].
//! - `GET /v1/sync/inbox?after=N&wait_ms=W` — [`InboxPage`]; `410` with code
//!   [`error_code::CURSOR_GONE`] when the server no longer holds the events after `N`.
//! - `GET /v1/sync/snapshot` — [`Snapshot`].
//! - `POST /v1/escrow/grants` (protocol 3) — [`GrantRequest`] → [`GrantResponse`].

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::money::Credits;

/// The protocol spoken by this build. History: 1 — enrolment, push, pull, snapshot; 2 — central
/// API keys ([`EventBody::ApiKeyUpsert`], [`Snapshot::api_keys`]) and the [`PROTOCOL_HEADER`];
/// 3 — escrow for fleet users ([`UserSettings::fleet`], `POST /v1/escrow/grants` with
/// [`GrantRequest`] / [`GrantResponse`], [`EventBody::EscrowGrant`]); 4 — overdraft lines on
/// grants ([`GrantSpec::overdraft`], booked with an [`OVERDRAFT_KEY_PREFIX`] key).
///
/// Negotiation (ARCHITECTURE.md "Protocol versions"): an agent names its version in every
/// request — in the body of an enrolment or push and, from version 2, in the
/// [`PROTOCOL_HEADER`] of every request (absent means 1). A server speaks every version from
/// [`PROTOCOL_VERSION_MIN`] to its own and answers in the agent's: it never sends an agent a
/// message or an event its version does not know. A version it does not speak is refused (HTTP
/// 400, [`error_code::UNSUPPORTED_PROTOCOL`]). So a fleet upgrades the server first, then its
/// agents one host at a time.
pub const PROTOCOL_VERSION: u32 = 4;
/// The oldest protocol this build's server still speaks: an agent one version behind keeps
/// syncing.
pub const PROTOCOL_VERSION_MIN: u32 = 1;
/// The request header in which an agent names its protocol version (from version 2; absent
/// means 1).
pub const PROTOCOL_HEADER: &str = "tollgate-protocol";

/// Most entries in one push: bounds one PostgreSQL transaction and one request body.
pub const PUSH_ENTRIES_MAX: usize = 1_000;
/// Largest push body the server reads (bytes); a full batch of ordinary entries is ~0.7 MB.
pub const PUSH_BODY_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Most events in one inbox page.
pub const INBOX_PAGE_MAX: usize = 500;
/// Longest a pull may wait for new events (milliseconds).
pub const LONG_POLL_MAX_MS: u64 = 30_000;
/// Longest credential, enrolment token or admin token accepted (bytes).
pub const TOKEN_LEN_MAX: usize = 256;
/// Most users an agent brings to its enrolment.
pub const ENROLL_USERS_MAX: usize = 100_000;
/// The largest enrolment body (its users, about 150 bytes each).
pub const ENROLL_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The hash that precedes an incarnation's first entry.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// Machine-readable refusal codes carried in [`ErrorBody`].
pub mod error_code {
    /// The body is not valid JSON for the endpoint, or a field is out of range.
    pub const BAD_REQUEST: &str = "bad_request";
    /// The protocol version is not one this server speaks.
    pub const UNSUPPORTED_PROTOCOL: &str = "unsupported_protocol";
    /// Missing, unknown or revoked credential / token.
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// The admin token's role does not allow this.
    pub const FORBIDDEN: &str = "forbidden";
    /// The agent is quarantined: it replayed an entry with different content. Nothing more is
    /// accepted from it until an admin clears it.
    pub const QUARANTINED: &str = "quarantined";
    /// An entry at or below the acknowledged head differs from the one held: the agent is now
    /// quarantined.
    pub const CONFLICT: &str = "conflict";
    /// The batch starts past head + 1 or is not consecutive. Resend from `acked_seq + 1`.
    pub const GAP: &str = "gap";
    /// An entry's hash does not match its content or does not chain on its predecessor.
    pub const BAD_HASH: &str = "bad_hash";
    /// The batch or body is larger than the protocol allows.
    pub const TOO_LARGE: &str = "too_large";
    /// The inbox cursor is older than what the server keeps: fetch a snapshot.
    pub const CURSOR_GONE: &str = "cursor_gone";
    /// An idempotency key was reused with different content.
    pub const IDEMPOTENCY_CONFLICT: &str = "idempotency_conflict";
    /// The thing named does not exist.
    pub const NOT_FOUND: &str = "not_found";
    /// The server cannot answer now (database down); retry later.
    pub const UNAVAILABLE: &str = "unavailable";
    /// Too many requests of this kind at once, or too soon after the last; retry after the
    /// `Retry-After` header's seconds.
    pub const TOO_MANY_REQUESTS: &str = "too_many_requests";
    /// The request body did not arrive in time.
    pub const REQUEST_TIMEOUT: &str = "request_timeout";
    /// A push for an incarnation the agent never enrolled with: enrol that database first.
    pub const UNKNOWN_INCARNATION: &str = "unknown_incarnation";
}

/// Every refusal: `{"error": {"code": ..., "message": ..., "acked_seq": ...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    /// One of [`error_code`].
    pub code: String,
    /// A sentence naming what was wrong, for a human.
    pub message: String,
    /// On push refusals: the stream's contiguous acknowledged head, so the agent can resend from
    /// the right place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_seq: Option<i64>,
}

// ---------------------------------------------------------------------------------------------
// Enrolment

/// The agent trades a one-time enrolment token for its credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub protocol_version: u32,
    pub token: String,
    /// The agent database's incarnation (UUID), for the admin's view.
    pub incarnation: String,
    /// The users the agent already has, with their settings: the server adopts them, homed on
    /// this agent (their balances follow with the journal). At most [`ENROLL_USERS_MAX`]. Added
    /// after protocol 1's first release: absent means none, and it is left out when empty, so an
    /// agent without users sends what earlier agents sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollResponse {
    pub protocol_version: u32,
    /// The server's id for this agent (UUID).
    pub agent_id: String,
    /// The name the admin gave the agent.
    pub agent_name: String,
    /// The bearer credential for every later request. Shown once; stored hashed on the server.
    pub credential: String,
}

// ---------------------------------------------------------------------------------------------
// Push

/// A batch of consecutive journal entries of one incarnation, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    pub protocol_version: u32,
    /// The agent database's incarnation (UUID). A restored or new database is a new stream.
    pub incarnation: String,
    /// The agent's newest seq at the time of the push (for the server's view of lag).
    pub head_seq: i64,
    /// At most [`PUSH_ENTRIES_MAX`], consecutive by seq. May be empty (a heartbeat).
    pub entries: Vec<WireEntry>,
}

/// The server's answer to a push it accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushResponse {
    pub protocol_version: u32,
    pub incarnation: String,
    /// The contiguous acknowledged head: every entry with seq ≤ this is stored centrally, once.
    pub acked_seq: i64,
}

/// One journal entry as it crosses the wire: the canonical fields (in [`Canonical`]'s order),
/// then the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireEntry {
    pub seq: i64,
    pub entry_id: String,
    pub user_id: String,
    pub transaction_type: String,
    pub amount: Credits,
    pub balance_before: Credits,
    pub balance_after: Credits,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    pub cost_per_token: Option<String>,
    pub power_level: Option<String>,
    pub is_byok: bool,
    pub payment_method: Option<String>,
    pub request_id: Option<String>,
    pub package_id: Option<i64>,
    pub metadata: Option<String>,
    pub notes: Option<String>,
    pub admin_user_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub corrects_entry_id: Option<String>,
    pub created_at: String,
    pub total_tokens: Option<i64>,
    pub stripe_payment_intent_id: Option<String>,
    pub stripe_charge_id: Option<String>,
    pub invoice_id: Option<String>,
    /// Lower-case hex of the previous entry's hash (64 zeros for seq 1).
    pub prev_hash: String,
    /// Lower-case hex of `sha256(prev_hash ‖ canonical JSON)`.
    pub hash: String,
}

impl WireEntry {
    /// The bytes this entry's hash covers.
    pub fn canonical(&self) -> Canonical<'_> {
        Canonical {
            seq: self.seq,
            entry_id: &self.entry_id,
            user_id: &self.user_id,
            transaction_type: &self.transaction_type,
            amount: self.amount,
            balance_before: self.balance_before,
            balance_after: self.balance_after,
            provider: self.provider.as_deref(),
            model: self.model.as_deref(),
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            cost_per_token: self.cost_per_token.as_deref(),
            power_level: self.power_level.as_deref(),
            is_byok: self.is_byok,
            payment_method: self.payment_method.as_deref(),
            request_id: self.request_id.as_deref(),
            package_id: self.package_id,
            metadata: self.metadata.as_deref(),
            notes: self.notes.as_deref(),
            admin_user_id: self.admin_user_id.as_deref(),
            idempotency_key: self.idempotency_key.as_deref(),
            corrects_entry_id: self.corrects_entry_id.as_deref(),
            created_at: &self.created_at,
            total_tokens: self.total_tokens,
            stripe_payment_intent_id: self.stripe_payment_intent_id.as_deref(),
            stripe_charge_id: self.stripe_charge_id.as_deref(),
            invoice_id: self.invoice_id.as_deref(),
        }
    }

    /// Checks the entry is internally sound: its hash is `sha256(prev_hash ‖ canonical)` and
    /// `balance_after = balance_before + amount` with neither negative. Chaining onto the
    /// predecessor is the receiver's check (it holds the predecessor).
    pub fn check(&self) -> Result<(), EntryProblem> {
        let prev = decode_hash(&self.prev_hash).ok_or(EntryProblem::MalformedHash("prev_hash"))?;
        let hash = decode_hash(&self.hash).ok_or(EntryProblem::MalformedHash("hash"))?;
        if self.canonical().hash(&prev) != hash {
            return Err(EntryProblem::HashMismatch);
        }
        if self.seq < 1 {
            return Err(EntryProblem::Field("seq", "must be at least 1"));
        }
        if self.amount == Credits::ZERO {
            return Err(EntryProblem::Field("amount", "must not be zero"));
        }
        if self.balance_before.is_negative() || self.balance_after.is_negative() {
            return Err(EntryProblem::Field("balance_after", "must not be negative"));
        }
        if self.balance_before.checked_add(self.amount) != Some(self.balance_after) {
            return Err(EntryProblem::Field(
                "balance_after",
                "must equal balance_before + amount",
            ));
        }
        Ok(())
    }
}

/// Why an entry is not sound on its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryProblem {
    #[error("{0} is not 64 lower-case hex digits")]
    MalformedHash(&'static str),
    #[error("hash does not match the entry's content and prev_hash")]
    HashMismatch,
    #[error("{0} {1}")]
    Field(&'static str, &'static str),
}

/// Lower-case hex of a hash.
pub fn encode_hash(hash: &[u8; 32]) -> String {
    hex::encode(hash)
}

/// A hash from 64 lower-case hex digits; `None` for anything else.
pub fn decode_hash(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// The bytes an entry's hash covers, in this field order: the JSON of this struct. Changing the
/// fields, their order or their encoding is a protocol change (bump [`PROTOCOL_VERSION`]); the
/// golden hash fixture catches an accidental one.
#[derive(Debug, Serialize)]
pub struct Canonical<'a> {
    pub seq: i64,
    pub entry_id: &'a str,
    pub user_id: &'a str,
    pub transaction_type: &'a str,
    pub amount: Credits,
    pub balance_before: Credits,
    pub balance_after: Credits,
    pub provider: Option<&'a str>,
    pub model: Option<&'a str>,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    pub cost_per_token: Option<&'a str>,
    pub power_level: Option<&'a str>,
    pub is_byok: bool,
    pub payment_method: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub package_id: Option<i64>,
    pub metadata: Option<&'a str>,
    pub notes: Option<&'a str>,
    pub admin_user_id: Option<&'a str>,
    pub idempotency_key: Option<&'a str>,
    pub corrects_entry_id: Option<&'a str>,
    pub created_at: &'a str,
    pub total_tokens: Option<i64>,
    pub stripe_payment_intent_id: Option<&'a str>,
    pub stripe_charge_id: Option<&'a str>,
    pub invoice_id: Option<&'a str>,
}

impl Canonical<'_> {
    /// `sha256(prev_hash ‖ JSON of self)`.
    pub fn hash(&self, prev_hash: &[u8; 32]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(prev_hash);
        // Serializing a struct of strings and integers to a Vec cannot fail.
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        hasher.update(&bytes);
        hasher.finalize().into()
    }

    /// The entry as sent, with its chain.
    pub fn to_wire(&self, prev_hash: &[u8; 32], hash: &[u8; 32]) -> WireEntry {
        let own = |s: Option<&str>| s.map(str::to_owned);
        WireEntry {
            seq: self.seq,
            entry_id: self.entry_id.to_owned(),
            user_id: self.user_id.to_owned(),
            transaction_type: self.transaction_type.to_owned(),
            amount: self.amount,
            balance_before: self.balance_before,
            balance_after: self.balance_after,
            provider: own(self.provider),
            model: own(self.model),
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            cost_per_token: own(self.cost_per_token),
            power_level: own(self.power_level),
            is_byok: self.is_byok,
            payment_method: own(self.payment_method),
            request_id: own(self.request_id),
            package_id: self.package_id,
            metadata: own(self.metadata),
            notes: own(self.notes),
            admin_user_id: own(self.admin_user_id),
            idempotency_key: own(self.idempotency_key),
            corrects_entry_id: own(self.corrects_entry_id),
            created_at: self.created_at.to_owned(),
            total_tokens: self.total_tokens,
            stripe_payment_intent_id: own(self.stripe_payment_intent_id),
            stripe_charge_id: own(self.stripe_charge_id),
            invoice_id: own(self.invoice_id),
            prev_hash: encode_hash(prev_hash),
            hash: encode_hash(hash),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pull

/// Events after the agent's cursor, oldest first, at most [`INBOX_PAGE_MAX`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxPage {
    pub protocol_version: u32,
    pub events: Vec<InboxEvent>,
    /// The newest event seq in this agent's inbox (the agent is drained when its cursor is here).
    pub head: i64,
}

/// One central event for one agent. `seq` is gapless per agent; `event_id` makes applying it
/// idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxEvent {
    pub seq: i64,
    /// UUID.
    pub event_id: String,
    /// RFC 3339, UTC, when the server wrote the event.
    pub created_at: String,
    pub body: EventBody,
}

/// What happened centrally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum EventBody {
    /// Create the user or set their settings (the whole state: applying it twice is harmless).
    UserUpsert(UserSettings),
    /// Credit moved centrally for a user homed on this agent: a purchase, bonus, refund or admin
    /// adjustment (which may be negative). Applied as one journal entry keyed by
    /// `idempotency_key`; a negative adjustment the balance cannot cover is refused by the agent
    /// and shows up in reconcile.
    Credit(CreditEvent),
    /// Create or replace a credit package (by name).
    PackageUpsert(PackageSpec),
    /// Replace a power level's routing configuration.
    PowerLevelUpsert(PowerLevelSpec),
    /// An API key made (or revoked) centrally for a user this agent serves: only its hash
    /// crosses the wire. Protocol 2.
    ApiKeyUpsert(ApiKeySpec),
    /// Protocol 3: a grant for a fleet user (the same as the grant request's answer).
    EscrowGrant(GrantSpec),
}

impl EventBody {
    /// The oldest protocol version that knows this event: a server never sends it to an agent
    /// speaking an older one.
    pub const fn since_version(&self) -> u32 {
        match self {
            EventBody::UserUpsert(settings) if settings.fleet => 3,
            EventBody::UserUpsert(_)
            | EventBody::Credit(_)
            | EventBody::PackageUpsert(_)
            | EventBody::PowerLevelUpsert(_) => 1,
            EventBody::ApiKeyUpsert(_) => 2,
            EventBody::EscrowGrant(grant) if grant.overdraft.is_some() => 4,
            EventBody::EscrowGrant(_) => 3,
        }
    }
}

/// An API key issued centrally, as an agent stores it: never the key, only its SHA-256
/// ([`crate::api_key::hash`]). The whole state, so applying it twice is harmless; a revoked key
/// stays revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySpec {
    /// `key_` and 16 hex digits.
    pub key_id: String,
    pub user_id: String,
    /// Lower-case hex of the key's SHA-256.
    pub key_hash: String,
    /// The key's first characters (`tg_` and eight more), for listings.
    pub prefix: String,
    pub name: Option<String>,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// RFC 3339, UTC; `None` while the key is live.
    pub revoked_at: Option<String>,
}

/// A user's centrally managed settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSettings {
    pub user_id: String,
    /// One of [`TIERS`].
    pub tier: String,
    /// One of [`POWER_LEVELS`].
    pub power_level: String,
    pub monthly_allowance: Credits,
    /// `None`: no cap.
    pub monthly_spend_cap: Option<Credits>,
    /// A fleet user (protocol 3): served by every agent, their credit held centrally in a pool
    /// from which each agent spends only the grants it was given (SYNC.md "Escrow"). Left out
    /// when false, so a home user's settings read as they did in versions 1 and 2.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fleet: bool,
}

/// `POST /v1/escrow/grants` (protocol 3): an agent asks for a grant carved from a fleet user's
/// pool. Idempotent by `request_id` per agent: a retry answers the grant the first request
/// made, never a second one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    pub protocol_version: u32,
    /// The agent's own id for this request (1..=[`GRANT_REQUEST_ID_LEN_MAX`] of
    /// `[A-Za-z0-9._-]`).
    pub request_id: String,
    pub user_id: String,
    /// What the agent would like: its recent spend for the user over a few tens of seconds.
    pub want: Credits,
    /// The worst-case cost of one request for the user (the grant is at least this, when the
    /// pool holds it).
    pub worst_case: Credits,
}

/// The answer to a [`GrantRequest`]: the grant, or none when the pool is empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantResponse {
    pub protocol_version: u32,
    pub grant: Option<GrantSpec>,
    /// What the pool holds after this grant.
    pub pool_free: Credits,
}

/// A grant carved from a fleet user's pool for one agent. The agent books it as an `escrow`
/// entry keyed `key`; it may spend it until `valid_for_ms` has passed on its own clock (from
/// when it received it), and returns what is left with its own `escrow` entry keyed
/// `release:…`. Also sent as an [`EventBody::EscrowGrant`], so a lost answer loses nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantSpec {
    /// `grant:<agent id>:<request id>`: the central operation key the entry carries.
    pub key: String,
    pub user_id: String,
    pub amount: Credits,
    pub valid_for_ms: u64,
    /// Since protocol 4: the user's overdraft line, when an admin set one. If this agent cannot
    /// reach the server when it needs more of the user's credit, it may book once, as an `escrow`
    /// entry keyed [`OVERDRAFT_KEY_PREFIX`] + `key`, up to this much more: credit the user does
    /// not have yet, which the server books as their debt (repaid by their next credit). Left
    /// out when there is no line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overdraft: Option<Credits>,
}

/// Longest grant request id.
pub const GRANT_REQUEST_ID_LEN_MAX: usize = 64;
/// The prefix of a grant's key ([`GrantSpec::key`]).
pub const GRANT_KEY_PREFIX: &str = "grant:";
/// The prefix of the key of an agent's entry returning what is left of its grants to the pool.
pub const RELEASE_KEY_PREFIX: &str = "release:";
/// The prefix of the key of an agent's entry drawing a grant's overdraft line
/// ([`GrantSpec::overdraft`]): `overdraft:` followed by the grant's key.
pub const OVERDRAFT_KEY_PREFIX: &str = "overdraft:";
/// The journal entry type of grants and overdrafts (positive) and releases (negative).
pub const ESCROW_ENTRY_TYPE: &str = "escrow";

/// Kinds of central credit movement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditEventKind {
    Purchase,
    Bonus,
    Refund,
    AdminAdjustment,
}

impl CreditEventKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            CreditEventKind::Purchase => "purchase",
            CreditEventKind::Bonus => "bonus",
            CreditEventKind::Refund => "refund",
            CreditEventKind::AdminAdjustment => "admin_adjustment",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditEvent {
    pub user_id: String,
    pub kind: CreditEventKind,
    /// Positive, except an admin adjustment, which may be negative. Never zero.
    pub amount: Credits,
    /// The central operation's key (e.g. `stripe:cs_…`, `admin:<operation id>`); the agent
    /// writes it on the entry, so the entry is unique and reconcile can pair them.
    pub idempotency_key: String,
    /// The package bought, by name.
    pub package: Option<String>,
    pub note: Option<String>,
    pub admin_user_id: Option<String>,
}

/// A credit package as the server sells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageSpec {
    pub name: String,
    pub credits: Credits,
    pub price_usd_cents: i64,
    pub discount_percent: i64,
    pub min_tier: Option<String>,
    pub is_active: bool,
    pub is_featured: bool,
    pub sort_order: i64,
    pub description: Option<String>,
    pub badge_text: Option<String>,
}

/// A power level's routing configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerLevelSpec {
    /// One of [`POWER_LEVELS`].
    pub power_level: String,
    pub name: String,
    pub description: Option<String>,
    pub preferred_providers: Vec<String>,
    /// next_available | cheapest | fastest.
    pub fallback_strategy: String,
    /// Exact decimal text, e.g. "0.7".
    pub cost_multiplier: String,
    pub max_latency_ms: i64,
    pub min_quality_score: i64,
    pub is_active: bool,
}

/// Everything the server holds for an agent, sent when its inbox cursor is gone. Applying it
/// upserts each item; the agent then continues from `cursor`. Credit is not in a snapshot:
/// credit events are never pruned before the agent has acknowledged them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub protocol_version: u32,
    /// Continue pulling after this seq.
    pub cursor: i64,
    /// The users homed on this agent.
    pub users: Vec<UserSettings>,
    pub packages: Vec<PackageSpec>,
    pub power_levels: Vec<PowerLevelSpec>,
    /// The API keys (hashes) of those users, revoked ones included. Protocol 2: left out when
    /// empty, and always empty for an agent speaking 1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<ApiKeySpec>,
}

/// Subscription tiers (the spellings of [`crate::vocabulary::Tier`]).
pub const TIERS: &[&str] = crate::vocabulary::Tier::NAMES;
/// Power levels ([`crate::vocabulary::PowerLevel`]).
pub const POWER_LEVELS: &[&str] = crate::vocabulary::PowerLevel::NAMES;
/// Fallback strategies of a power level ([`crate::vocabulary::FallbackStrategy`]).
pub const FALLBACK_STRATEGIES: &[&str] = crate::vocabulary::FallbackStrategy::NAMES;
