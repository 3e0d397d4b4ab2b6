//! The SQL the ledger issues on its hot path (hold, settle, release, debit, add), in one place.
//!
//! Public so the ledger benchmark's baseline runs these very statements without the ledger's
//! logic; nothing outside `ledger/` executes them.

/// Columns selected by [`super::journal::entry_from_row`].
pub const ENTRY_COLUMNS: &str = "seq, entry_id, user_id, transaction_type, amount, balance_before, \
     balance_after, request_id, idempotency_key, package_id, corrects_entry_id, notes, created_at";

pub const CHAIN_HEAD: &str = "SELECT seq, hash FROM credit_transactions ORDER BY seq DESC LIMIT 1";

pub const INSERT_ENTRY: &str = "INSERT INTO credit_transactions (entry_id, seq, user_id, \
     transaction_type, amount, balance_before, balance_after, provider, model, prompt_tokens, \
     completion_tokens, total_tokens, cost_per_token, power_level, is_byok, payment_method, \
     request_id, package_id, metadata, notes, admin_user_id, idempotency_key, corrects_entry_id, \
     prev_hash, hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, \
     ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26)";

pub const SELECT_USER: &str = "SELECT id, user_id, balance, held, credits_used_this_month, \
     monthly_spend_cap, monthly_allowance, auto_renew, billing_cycle_start, billing_cycle_end, \
     lifetime_credits_purchased, created_at, fleet, escrow_valid_until FROM user_credits \
     WHERE user_id = ?1";

pub const SAVE_USER: &str = "UPDATE user_credits SET balance = ?2, held = ?3, \
     credits_used_this_month = ?4, billing_cycle_start = ?5, billing_cycle_end = ?6, \
     lifetime_credits_purchased = ?7, updated_at = ?8 WHERE id = ?1";

pub const LIVE_LOTS: &str = "SELECT id, remaining, priority, expires_at FROM credit_lots WHERE user_id = ?1 AND remaining > 0";

pub const INSERT_LOT: &str = "INSERT INTO credit_lots (user_id, entry_id, kind, amount, remaining, \
     priority, expires_at, created_at) VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, ?7)";

/// Moves a lot by a signed amount (negative burns, positive restores).
pub const MOVE_LOT: &str = "UPDATE credit_lots SET remaining = remaining + ?2 WHERE id = ?1";

pub const INSERT_MOVEMENT: &str =
    "INSERT INTO lot_movements (entry_id, lot_id, amount) VALUES (?1, ?2, ?3)";

pub const EXPIRED_HOLDS: &str = "SELECT id, request_id, amount FROM holds \
     WHERE user_id = ?1 AND status = 'open' AND expires_at <= ?2";

pub const COUNT_HOLDS: &str = "SELECT COUNT(*) FROM holds WHERE user_id = ?1 AND status = 'open'";

pub const HOLD_BY_REQUEST: &str =
    "SELECT id, hold_id, user_id, amount, status FROM holds WHERE request_id = ?1";

/// Closes an open hold as `released` or `expired` (?2), at ?3.
pub const CLOSE_HOLD: &str =
    "UPDATE holds SET status = ?2, closed_at = ?3 WHERE id = ?1 AND status = 'open'";

pub const INSERT_HOLD: &str = "INSERT INTO holds (hold_id, request_id, user_id, amount, created_at, \
     expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// Marks an expired hold released (it no longer counts anywhere; this only closes the request).
pub const RELEASE_EXPIRED_HOLD: &str =
    "UPDATE holds SET status = 'released' WHERE id = ?1 AND status = 'expired'";

pub const DELETE_HOLD: &str = "DELETE FROM holds WHERE id = ?1";

pub const USAGE_BY_REQUEST: &str =
    "SELECT user_id, credits_charged, overage_credits FROM llm_usage_log WHERE request_id = ?1";

pub const INSERT_USAGE: &str = "INSERT INTO llm_usage_log (request_id, session_id, user_id, app_id, \
     endpoint, model, provider, power_level, prompt_tokens, completion_tokens, total_tokens, \
     credits_charged, overage_credits, cost_per_token, is_byok, byok_key_id, latency_ms, \
     time_to_first_token_ms, tokens_per_second, success, http_status, error_message, error_type, \
     metadata, user_agent, client_ip, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, \
     ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27)";

/// What one hold issues, in order, in a batch where every operation succeeds. A test traces the
/// ledger against this list and the benchmark's baseline runs exactly these statements: change
/// all three together.
pub const HOLD_PATH: &[&str] = &[
    HOLD_BY_REQUEST,
    USAGE_BY_REQUEST,
    SELECT_USER,
    LIVE_LOTS,
    EXPIRED_HOLDS,
    COUNT_HOLDS,
    INSERT_HOLD,
    SAVE_USER,
];

/// What one settle of an open hold issues (one lot burned), in order; see [`HOLD_PATH`].
pub const SETTLE_PATH: &[&str] = &[
    HOLD_BY_REQUEST,
    SELECT_USER,
    LIVE_LOTS,
    EXPIRED_HOLDS,
    DELETE_HOLD,
    INSERT_ENTRY,
    MOVE_LOT,
    INSERT_MOVEMENT,
    INSERT_USAGE,
    SAVE_USER,
];

pub const SAVEPOINT: &str = "SAVEPOINT ledger_op";
pub const RELEASE_SAVEPOINT: &str = "RELEASE ledger_op";
pub const ROLLBACK_SAVEPOINT: &str = "ROLLBACK TO ledger_op";
