//! The ledger's vocabulary: the enums stored as text, the operations it accepts and the receipts
//! it returns. Plain data only; no SQL here.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tollgate_schema::money::Credits;

use tollgate_schema::text_enum;
pub use tollgate_schema::vocabulary::{EntryType, PowerLevel, Tier};

text_enum!(
    /// What kind of credit an `add` brings; each is a lot of its own.
    CreditKind, "credit type" {
        Purchase => "purchase",
        Bonus => "bonus",
        Refund => "refund",
        AdminAdjustment => "admin_adjustment",
        Allowance => "allowance",
        Escrow => "escrow",
    }
);

text_enum!(
    /// BYOK providers the vault accepts.
    Provider, "provider" {
        OpenAi => "openai",
        Anthropic => "anthropic",
        OpenRouter => "openrouter",
        Google => "google",
        Cohere => "cohere",
        Together => "together",
        Anyscale => "anyscale",
        DeepInfra => "deepinfra",
        Custom => "custom",
    }
);

text_enum!(
    /// Where a hold stands. Settled holds are deleted (their usage entry records them).
    HoldStatus, "hold status" {
        Open => "open",
        Released => "released",
        Expired => "expired",
    }
);

text_enum!(
    /// Why a request failed, as the usage log records it.
    UsageErrorType, "error type" {
        InsufficientCredits => "insufficient_credits",
        SpendCap => "spend_cap",
        RateLimit => "rate_limit",
        Timeout => "timeout",
        UpstreamError => "upstream_error",
        ClientDisconnected => "client_disconnected",
        InvalidRequest => "invalid_request",
        AuthError => "auth_error",
        InternalError => "internal_error",
    }
);

impl CreditKind {
    /// Burn priority of a lot of this kind: lower burns first. Credit given free or for a period
    /// goes before credit paid for.
    pub const fn priority(self) -> i64 {
        match self {
            CreditKind::Allowance => 10,
            CreditKind::Bonus => 20,
            CreditKind::Refund | CreditKind::AdminAdjustment => 30,
            CreditKind::Purchase => 40,
            // A fleet user's credit here is all grants; they burn oldest first.
            CreditKind::Escrow => 50,
        }
    }

    pub const fn entry_type(self) -> EntryType {
        match self {
            CreditKind::Purchase => EntryType::Purchase,
            CreditKind::Bonus => EntryType::Bonus,
            CreditKind::Refund => EntryType::Refund,
            CreditKind::AdminAdjustment => EntryType::AdminAdjustment,
            CreditKind::Allowance => EntryType::Allowance,
            CreditKind::Escrow => EntryType::Escrow,
        }
    }
}

/// A new user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub user_id: String,
    pub tier: Tier,
    pub power_level: PowerLevel,
    pub monthly_allowance: Credits,
    pub monthly_spend_cap: Option<Credits>,
}

impl NewUser {
    pub fn new(user_id: impl Into<String>) -> Self {
        NewUser {
            user_id: user_id.into(),
            tier: Tier::Trial,
            power_level: PowerLevel::Balanced,
            monthly_allowance: Credits::ZERO,
            monthly_spend_cap: None,
        }
    }
}

/// Changes to a user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserChanges {
    pub tier: Option<Tier>,
    pub power_level: Option<PowerLevel>,
    /// Takes effect from the next renewal.
    pub monthly_allowance: Option<Credits>,
    /// `Some(None)` removes the cap.
    pub monthly_spend_cap: Option<Option<Credits>>,
    pub auto_renew: Option<bool>,
}

/// A user as the ledger sees them, after lazy renewal and expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserAccount {
    pub user_id: String,
    pub balance: Credits,
    pub held: Credits,
    pub available: Credits,
    pub lifetime_credits_purchased: Credits,
    pub tier: Tier,
    pub power_level: PowerLevel,
    pub auto_renew: bool,
    pub billing_cycle_start: String,
    pub billing_cycle_end: String,
    pub monthly_allowance: Credits,
    pub credits_used_this_month: Credits,
    pub monthly_spend_cap: Option<Credits>,
    /// credits used this month / monthly allowance × 100, two decimals; 0 without an allowance.
    pub quota_usage_percent: rust_decimal::Decimal,
    pub created_at: String,
}

/// Credit added to a user (purchase, bonus, refund, admin adjustment). An `AdminAdjustment` may be
/// negative: it then burns lots like a debit and is refused if it would overdraw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddCredits {
    pub user_id: String,
    pub amount: Credits,
    pub kind: CreditKind,
    pub package: Option<String>,
    pub idempotency_key: Option<String>,
    pub note: Option<String>,
    /// A refund of this earlier debit entry: the credit goes back to the lots that debit burned.
    pub refund_of: Option<String>,
    pub expires_at: Option<String>,
    pub admin_user_id: Option<String>,
}

impl AddCredits {
    pub fn new(user_id: impl Into<String>, amount: Credits, kind: CreditKind) -> Self {
        AddCredits {
            user_id: user_id.into(),
            amount,
            kind,
            package: None,
            idempotency_key: None,
            note: None,
            refund_of: None,
            expires_at: None,
            admin_user_id: None,
        }
    }
}

/// A direct debit (not through a hold): a `usage` entry counted in the month's spend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Debit {
    pub user_id: String,
    pub amount: Credits,
    pub idempotency_key: Option<String>,
    pub note: Option<String>,
}

/// Reserve credit for an in-flight request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRequest {
    pub user_id: String,
    /// Unique per request; a retry with the same id and amount returns the same hold.
    pub request_id: String,
    pub amount: Credits,
    /// A flexible hold: if `amount` is more than the user can afford, reserve what they can
    /// afford instead, as long as that is at least this much (the gateway then caps the request's
    /// output to what was reserved). `None`: all of `amount` or nothing.
    pub min_amount: Option<Credits>,
    /// How long the hold lives if never settled (a crashed gateway): then released lazily.
    pub ttl: time::Duration,
}

/// What the gateway learned about a finished request, written to `llm_usage_log`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageRecord {
    pub endpoint: String,
    pub model: String,
    pub provider: Option<String>,
    pub power_level: Option<PowerLevel>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub cost_per_token: Option<String>,
    pub is_byok: bool,
    pub byok_key_id: Option<i64>,
    pub latency_ms: Option<u32>,
    pub time_to_first_token_ms: Option<u32>,
    pub tokens_per_second: Option<f64>,
    pub http_status: Option<u16>,
    pub error_type: Option<UsageErrorType>,
    pub error_message: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub session_id: Option<String>,
    pub app_id: Option<String>,
    pub user_agent: Option<String>,
    pub client_ip: Option<String>,
    /// A Responses API response's id, recorded as served (it may be continued from).
    pub response_id: Option<String>,
}

/// Settle a held request at its metered cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Settle {
    pub user_id: String,
    pub request_id: String,
    /// The metered cost. At most the hold is debited; any excess is booked as overage.
    pub cost: Credits,
    pub usage: UsageRecord,
}

/// Release a hold without charging (upstream failure, refusal after reserving).
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    pub user_id: String,
    pub request_id: String,
    /// The request's usage row, if one should be logged: a failure when it has an error type,
    /// else a success that cost nothing.
    pub usage: Option<UsageRecord>,
}

/// One operation in a group-committed batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    AddCredits(AddCredits),
    Debit(Debit),
    Hold(HoldRequest),
    Settle(Settle),
    Release(Release),
}

/// A journal entry written by an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryReceipt {
    pub entry_id: String,
    pub seq: i64,
    pub user_id: String,
    pub amount: Credits,
    pub balance_after: Credits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HoldReceipt {
    pub hold_id: String,
    pub request_id: String,
    pub user_id: String,
    pub amount: Credits,
    /// What the user may still reserve after this hold.
    pub available_after: Credits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SettleReceipt {
    pub request_id: String,
    pub user_id: String,
    /// The usage entry; `None` when the cost was zero.
    pub entry: Option<EntryReceipt>,
    pub charged: Credits,
    /// Metered cost the hold could not cover, booked on the usage row, not charged.
    pub overage: Credits,
    /// Where the user stands after this charge, for threshold alerts; `None` on a replayed
    /// settle (the first one already reported it).
    #[serde(skip)]
    pub quota: Option<QuotaState>,
}

/// A user's billing-cycle counters after a charge (what threshold alerts are judged on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaState {
    /// Usage in the current cycle, this charge included.
    pub used_this_month: Credits,
    pub monthly_allowance: Credits,
    /// The current billing cycle, `[cycle_start, cycle_end)`, as stored (RFC 3339).
    pub cycle_start: String,
    pub cycle_end: String,
    /// A fleet user: their thresholds are the server's, not an agent's.
    pub fleet: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseReceipt {
    pub request_id: String,
    /// Zero when the hold was already gone (released before, or expired).
    pub released: Credits,
}

/// The result of one operation of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Receipt {
    Entry(EntryReceipt),
    Hold(HoldReceipt),
    Settle(SettleReceipt),
    Release(ReleaseReceipt),
}

/// One journal row, for history and verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JournalEntry {
    pub seq: i64,
    pub entry_id: String,
    pub user_id: String,
    pub transaction_type: EntryType,
    pub amount: Credits,
    pub balance_before: Credits,
    pub balance_after: Credits,
    pub request_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub package_id: Option<i64>,
    pub corrects_entry_id: Option<String>,
    pub notes: Option<String>,
    pub created_at: String,
}

/// A credit lot: what one credit-adding entry left to spend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lot {
    pub id: i64,
    pub kind: CreditKind,
    pub amount: Credits,
    pub remaining: Credits,
    pub priority: i64,
    pub expires_at: Option<String>,
    pub created_at: String,
}

/// Parses a stored time, mapping a bad value to a corruption error.
pub(crate) fn parse_stored_time(text: &str) -> Result<OffsetDateTime, super::LedgerError> {
    super::clock::from_text(text)
        .map_err(|e| super::LedgerError::Corrupt(format!("time {text:?}: {e}")))
}
