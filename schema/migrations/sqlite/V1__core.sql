-- tollgate agent database, version 1: the six core tables of the original credit schema, ported to
-- SQLite with its flaws fixed, plus what the agent needs (issued API keys, holds, credit lots, lot
-- movements, idempotency records, agent identity for sync, vault metadata).
--
-- Conventions (SCHEMA.md):
-- * Money is INTEGER nano-credits (1e-9 credit): every credit column in this file (balance,
--   amount, credits_charged, ...) counts nano-credits; USD prices are in cents and say so in their
--   name. SUMs are exact; an i64 holds ±9.2e9 credits.
-- * Times are TEXT, RFC 3339 UTC with milliseconds ('2026-11-24T16:20:00.000Z'): they sort as text.
-- * Booleans are INTEGER 0/1 with a CHECK.
-- * Only agent/src/ledger touches these tables. Tables meant never to change are guarded by triggers.

-- ---------------------------------------------------------------------------------------------
-- user_credits: one row per user. `balance` is a cache of the user's journal (credit_transactions);
-- `tollgate verify` proves balance = SUM(amount). `held` caches the sum of the user's open holds;
-- what a user may still reserve is balance - held, never negative.
CREATE TABLE user_credits (
    id                       INTEGER PRIMARY KEY,
    user_id                  TEXT    NOT NULL UNIQUE CHECK (length(user_id) BETWEEN 1 AND 128),
    balance                  INTEGER NOT NULL DEFAULT 0 CHECK (balance >= 0),
    held                     INTEGER NOT NULL DEFAULT 0 CHECK (held >= 0 AND held <= balance),
    lifetime_credits_purchased INTEGER NOT NULL DEFAULT 0 CHECK (lifetime_credits_purchased >= 0),
    subscription_tier        TEXT    NOT NULL DEFAULT 'trial'
        CHECK (subscription_tier IN ('free', 'trial', 'starter', 'professional', 'enterprise')),
    power_level              TEXT    NOT NULL DEFAULT 'balanced'
        CHECK (power_level IN ('eco', 'balanced', 'precision')),
    auto_renew               INTEGER NOT NULL DEFAULT 1 CHECK (auto_renew IN (0, 1)),
    -- The current billing cycle [start, end). Renewal happens lazily on the first operation that
    -- touches the user at or after `billing_cycle_end`.
    billing_cycle_start      TEXT    NOT NULL,
    billing_cycle_end        TEXT    NOT NULL CHECK (billing_cycle_end > billing_cycle_start),
    -- Credit granted at each renewal as an `allowance` lot expiring at the cycle's end.
    monthly_allowance        INTEGER NOT NULL DEFAULT 0 CHECK (monthly_allowance >= 0),
    -- Usage debits (and direct debits) in the current cycle; reset at renewal.
    credits_used_this_month  INTEGER NOT NULL DEFAULT 0 CHECK (credits_used_this_month >= 0),
    -- NULL = no cap. Reservations that would take used + held past the cap are refused.
    monthly_spend_cap        INTEGER CHECK (monthly_spend_cap IS NULL OR monthly_spend_cap >= 0),
    auto_recharge_threshold  INTEGER CHECK (auto_recharge_threshold IS NULL OR auto_recharge_threshold >= 0),
    auto_recharge_amount     INTEGER CHECK (auto_recharge_amount IS NULL OR auto_recharge_amount > 0),
    stripe_customer_id       TEXT,
    created_at               TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at               TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
-- The original also indexed tier and updated_at; both serve only admin listings of a table with
-- one row per user, which a scan answers, so they are not kept.

-- ---------------------------------------------------------------------------------------------
-- credit_transactions: the journal. Append-only (triggers below); corrections are new entries that
-- reference the entry they correct (`corrects_entry_id`). For every row
-- balance_after = balance_before + amount, and each user's rows chain: a row's balance_before is
-- the user's previous row's balance_after (0 for the first). `seq` is this agent's gapless sync
-- sequence, assigned in the transaction that writes the row; `hash` chains every row to the
-- previous one (sha256 over prev_hash and the row's canonical bytes, see ledger/journal.rs).
CREATE TABLE credit_transactions (
    id                      INTEGER PRIMARY KEY,
    entry_id                TEXT    NOT NULL UNIQUE,          -- UUIDv7
    seq                     INTEGER NOT NULL UNIQUE CHECK (seq >= 1),
    user_id                 TEXT    NOT NULL REFERENCES user_credits (user_id),
    transaction_type        TEXT    NOT NULL CHECK (transaction_type IN (
        'purchase', 'usage', 'refund', 'admin_adjustment', 'bonus', 'allowance', 'expiry')),
    amount                  INTEGER NOT NULL CHECK (amount <> 0),  -- positive adds, negative uses
    balance_before          INTEGER NOT NULL CHECK (balance_before >= 0),
    balance_after           INTEGER NOT NULL CHECK (balance_after >= 0),
    provider                TEXT,
    model                   TEXT,
    prompt_tokens           INTEGER CHECK (prompt_tokens IS NULL OR prompt_tokens >= 0),
    completion_tokens       INTEGER CHECK (completion_tokens IS NULL OR completion_tokens >= 0),
    total_tokens            INTEGER CHECK (total_tokens IS NULL OR total_tokens >= 0),
    cost_per_token          TEXT,                             -- exact decimal credits, informational
    power_level             TEXT CHECK (power_level IS NULL OR power_level IN ('eco', 'balanced', 'precision')),
    is_byok                 INTEGER NOT NULL DEFAULT 0 CHECK (is_byok IN (0, 1)),
    payment_method          TEXT CHECK (payment_method IS NULL OR payment_method IN (
        'stripe', 'paypal', 'manual', 'bonus', 'trial')),
    stripe_payment_intent_id TEXT,
    stripe_charge_id        TEXT,
    request_id              TEXT,
    invoice_id              TEXT,
    package_id              INTEGER REFERENCES credit_packages (id),
    metadata                TEXT CHECK (metadata IS NULL OR json_valid(metadata)),
    notes                   TEXT,
    admin_user_id           TEXT,
    -- The caller's idempotency key for entries from outside (request id, Stripe session id, admin
    -- operation id). Unique forever (partial index below): see idempotency_keys for the outcome.
    idempotency_key         TEXT,
    corrects_entry_id       TEXT REFERENCES credit_transactions (entry_id),
    prev_hash               BLOB    NOT NULL CHECK (length(prev_hash) = 32),
    hash                    BLOB    NOT NULL CHECK (length(hash) = 32),
    created_at              TEXT    NOT NULL,
    CHECK (balance_after = balance_before + amount)
);
-- History and the per-user chain walk by (user_id, id); this also serves the original's user_id
-- and (user_id, created_at) indexes, since id grows with created_at.
CREATE INDEX idx_credit_transactions_user ON credit_transactions (user_id, id);
-- Partial, so the many entries without a key (every usage entry) cost nothing here.
CREATE UNIQUE INDEX idx_credit_transactions_idempotency
    ON credit_transactions (idempotency_key) WHERE idempotency_key IS NOT NULL;
-- One usage debit per request id (SYNC.md invariant 3), and the lookup that makes settling a
-- request idempotent.
CREATE UNIQUE INDEX idx_credit_transactions_usage_request
    ON credit_transactions (request_id) WHERE transaction_type = 'usage';
-- Refunds find what was already refunded of a debit.
CREATE INDEX idx_credit_transactions_corrects
    ON credit_transactions (corrects_entry_id) WHERE corrects_entry_id IS NOT NULL;
CREATE INDEX idx_credit_transactions_stripe
    ON credit_transactions (stripe_payment_intent_id) WHERE stripe_payment_intent_id IS NOT NULL;
-- Dropped from the original: (transaction_type) and (created_at). Reports over the journal are
-- per user (served above) or full scans; sync reads by seq (UNIQUE above).

CREATE TRIGGER credit_transactions_no_update BEFORE UPDATE ON credit_transactions
BEGIN
    SELECT RAISE(ABORT, 'credit_transactions is append-only: add a correcting entry instead');
END;
CREATE TRIGGER credit_transactions_no_delete BEFORE DELETE ON credit_transactions
BEGIN
    SELECT RAISE(ABORT, 'credit_transactions is append-only: add a correcting entry instead');
END;

-- ---------------------------------------------------------------------------------------------
-- credit_lots: every credit-adding entry is a lot. Debits burn live lots in the order
-- (already expired first, then priority, earliest expiry with no expiry last, oldest) and record
-- each burn in lot_movements.
-- `remaining` caches SUM(lot_movements.amount) for the lot; the sum of a user's lots' remaining
-- equals the user's balance.
CREATE TABLE credit_lots (
    id             INTEGER PRIMARY KEY,
    user_id        TEXT    NOT NULL REFERENCES user_credits (user_id),
    entry_id       TEXT    NOT NULL UNIQUE REFERENCES credit_transactions (entry_id),
    kind           TEXT    NOT NULL CHECK (kind IN ('purchase', 'refund', 'admin_adjustment', 'bonus', 'allowance')),
    amount         INTEGER NOT NULL CHECK (amount > 0),
    remaining      INTEGER NOT NULL CHECK (remaining >= 0 AND remaining <= amount),
    priority       INTEGER NOT NULL,            -- lower burns first
    expires_at     TEXT,                        -- NULL: never expires
    created_at     TEXT    NOT NULL
);
CREATE INDEX idx_credit_lots_live ON credit_lots (user_id) WHERE remaining > 0;

-- lot_movements: what each journal entry did to each lot. A credit-adding entry creates its lot
-- with one positive movement; a debit or expiry burns lots with negative movements; a refund of
-- an earlier debit restores the lots that debit burned (positive). For every entry,
-- SUM(amount) over its movements = the entry's amount.
CREATE TABLE lot_movements (
    id         INTEGER PRIMARY KEY,                -- insertion order = burn order
    entry_id   INTEGER NOT NULL REFERENCES credit_transactions (id),
    lot_id     INTEGER NOT NULL REFERENCES credit_lots (id),
    amount     INTEGER NOT NULL CHECK (amount <> 0),
    UNIQUE (entry_id, lot_id)
);
CREATE INDEX idx_lot_movements_lot ON lot_movements (lot_id);
CREATE TRIGGER lot_movements_no_update BEFORE UPDATE ON lot_movements
BEGIN
    SELECT RAISE(ABORT, 'lot_movements is append-only');
END;
CREATE TRIGGER lot_movements_no_delete BEFORE DELETE ON lot_movements
BEGIN
    SELECT RAISE(ABORT, 'lot_movements is append-only');
END;

-- ---------------------------------------------------------------------------------------------
-- holds: reservations for in-flight requests, visible to every process that opens the file. An
-- open hold counts in user_credits.held. Settling deletes the hold (the usage entry and usage row
-- record it). A hold released without charge, or expired (its gateway never came back), stays as
-- a closed row so that a late settle or release of the same request id is answered correctly:
-- a released request is never charged, an expired one at most its hold.
CREATE TABLE holds (
    id          INTEGER PRIMARY KEY,
    hold_id     TEXT    NOT NULL UNIQUE,          -- UUIDv7
    request_id  TEXT    NOT NULL UNIQUE,
    user_id     TEXT    NOT NULL REFERENCES user_credits (user_id),
    amount      INTEGER NOT NULL CHECK (amount > 0),
    status      TEXT    NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'released', 'expired')),
    created_at  TEXT    NOT NULL,
    expires_at  TEXT    NOT NULL,
    closed_at   TEXT,
    CHECK ((status = 'open') = (closed_at IS NULL))
);
CREATE INDEX idx_holds_open ON holds (user_id, expires_at) WHERE status = 'open';

-- ---------------------------------------------------------------------------------------------
-- idempotency_keys: the permanent record of every keyed operation from outside. The same key with
-- the same request fingerprint returns `outcome` (success or refusal) again; a different
-- fingerprint is a conflict. Never deleted.
CREATE TABLE idempotency_keys (
    idempotency_key TEXT PRIMARY KEY CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    operation       TEXT NOT NULL,
    fingerprint     BLOB NOT NULL CHECK (length(fingerprint) = 32),
    outcome         TEXT NOT NULL CHECK (json_valid(outcome)),
    created_at      TEXT NOT NULL
) WITHOUT ROWID;

-- ---------------------------------------------------------------------------------------------
-- credit_packages: what can be bought. price_usd_cents already includes the discount;
-- discount_percent is for display only.
CREATE TABLE credit_packages (
    id                INTEGER PRIMARY KEY,
    name              TEXT    NOT NULL UNIQUE,
    credits           INTEGER NOT NULL CHECK (credits > 0),
    price_usd_cents   INTEGER NOT NULL CHECK (price_usd_cents > 0),
    discount_percent  INTEGER NOT NULL DEFAULT 0 CHECK (discount_percent BETWEEN 0 AND 100),
    min_tier          TEXT CHECK (min_tier IS NULL OR min_tier IN ('free', 'trial', 'starter', 'professional', 'enterprise')),
    is_active         INTEGER NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
    is_featured       INTEGER NOT NULL DEFAULT 0 CHECK (is_featured IN (0, 1)),
    sort_order        INTEGER NOT NULL DEFAULT 0,
    description       TEXT,
    badge_text        TEXT,
    created_at        TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at        TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

INSERT INTO credit_packages (sort_order, name, credits, price_usd_cents, discount_percent, badge_text, is_featured, description) VALUES
    (1, 'Starter Pack',    100000000000,  1000,  0, NULL,           0, 'Perfect for trying out the platform'),
    (2, 'Value Pack',      500000000000,  4500, 10, 'MOST POPULAR', 1, 'Best value for regular users'),
    (3, 'Pro Pack',       1000000000000,  8000, 20, 'BEST VALUE',   1, 'For power users and developers'),
    (4, 'Enterprise Pack', 5000000000000, 35000, 30, NULL,          0, 'Maximum credits for teams')
ON CONFLICT (name) DO NOTHING;

-- ---------------------------------------------------------------------------------------------
-- power_level_configs: how each level routes and prices. cost_multiplier_permille is the
-- original's cost_multiplier × 1000, kept exact (0.7 → 700).
CREATE TABLE power_level_configs (
    id                        INTEGER PRIMARY KEY,
    power_level               TEXT    NOT NULL UNIQUE CHECK (power_level IN ('eco', 'balanced', 'precision')),
    name                      TEXT    NOT NULL,
    description               TEXT,
    preferred_providers       TEXT    NOT NULL CHECK (json_valid(preferred_providers) AND json_type(preferred_providers) = 'array'),
    fallback_strategy         TEXT    NOT NULL CHECK (fallback_strategy IN ('next_available', 'cheapest', 'fastest')),
    cost_multiplier_permille  INTEGER NOT NULL CHECK (cost_multiplier_permille > 0),
    max_latency_ms            INTEGER NOT NULL CHECK (max_latency_ms > 0),
    min_quality_score         INTEGER NOT NULL CHECK (min_quality_score BETWEEN 0 AND 100),
    is_active                 INTEGER NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1))
);

INSERT INTO power_level_configs (power_level, name, description, preferred_providers, fallback_strategy, cost_multiplier_permille, max_latency_ms, min_quality_score) VALUES
    ('eco',       'Eco Mode',       'Cost-optimized routing using cheapest providers', '["openrouter","together","deepinfra"]', 'next_available',  700, 5000, 70),
    ('balanced',  'Balanced Mode',  'Balanced cost and performance',                   '["openai","anthropic","openrouter"]',   'next_available', 1000, 3000, 85),
    ('precision', 'Precision Mode', 'Maximum quality, premium providers',              '["anthropic","openai"]',                'next_available', 1500, 2000, 95)
ON CONFLICT (power_level) DO NOTHING;

-- ---------------------------------------------------------------------------------------------
-- user_provider_keys: BYOK keys, AES-256-GCM encrypted (envelope in agent/src/keys/crypto.rs),
-- bound by associated data to (user_id, provider, key_name). Only the last four characters and
-- a fingerprint are kept in the clear, for listings.
CREATE TABLE user_provider_keys (
    id                 INTEGER PRIMARY KEY,
    user_id            TEXT    NOT NULL REFERENCES user_credits (user_id),
    provider           TEXT    NOT NULL CHECK (provider IN ('openai', 'anthropic', 'openrouter', 'google',
                                   'cohere', 'together', 'anyscale', 'deepinfra', 'custom')),
    encrypted_key      BLOB    NOT NULL,
    key_name           TEXT    NOT NULL CHECK (length(key_name) BETWEEN 1 AND 64),
    key_last4          TEXT    NOT NULL,
    key_fingerprint    TEXT    NOT NULL,
    is_default         INTEGER NOT NULL DEFAULT 0 CHECK (is_default IN (0, 1)),
    is_active          INTEGER NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
    last_used          TEXT,
    total_requests     INTEGER NOT NULL DEFAULT 0 CHECK (total_requests >= 0),
    total_tokens       INTEGER NOT NULL DEFAULT 0 CHECK (total_tokens >= 0),
    monthly_usage      INTEGER NOT NULL DEFAULT 0 CHECK (monthly_usage >= 0),  -- nano-credits
    expires_at         TEXT,
    rotation_reminder  TEXT,
    created_at         TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at         TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (user_id, provider, key_name)
);
CREATE INDEX idx_user_provider_keys_provider ON user_provider_keys (provider);
CREATE INDEX idx_user_provider_keys_active ON user_provider_keys (user_id) WHERE is_active = 1;
-- At most one default per (user, provider).
CREATE UNIQUE INDEX idx_user_provider_keys_default
    ON user_provider_keys (user_id, provider) WHERE is_default = 1;

-- vault_meta: which master key encrypts user_provider_keys, as a key id (a keyed hash of the key,
-- never the key). Lets the agent say "wrong master key" instead of failing on the first decrypt.
CREATE TABLE vault_meta (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    master_key_id  TEXT NOT NULL,
    rotated_at     TEXT NOT NULL
);

-- ---------------------------------------------------------------------------------------------
-- api_keys: keys tollgate issues to users. Only a SHA-256 of the key is stored (the key carries
-- 256 bits of randomness, so a fast hash is enough); `prefix` is shown in listings.
CREATE TABLE api_keys (
    id            INTEGER PRIMARY KEY,
    key_id        TEXT    NOT NULL UNIQUE,
    user_id       TEXT    NOT NULL REFERENCES user_credits (user_id),
    key_hash      BLOB    NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    prefix        TEXT    NOT NULL,
    name          TEXT,
    created_at    TEXT    NOT NULL,
    last_used_at  TEXT,
    revoked_at    TEXT
);
CREATE INDEX idx_api_keys_user ON api_keys (user_id);

-- ---------------------------------------------------------------------------------------------
-- llm_usage_log: one row per LLM request, success or not. credits_charged is what the settle
-- debited; overage_credits what the metered cost exceeded the hold by (booked here explicitly,
-- never charged silently).
CREATE TABLE llm_usage_log (
    id                      INTEGER PRIMARY KEY,
    request_id              TEXT    NOT NULL UNIQUE,
    session_id              TEXT,
    user_id                 TEXT    NOT NULL REFERENCES user_credits (user_id),
    app_id                  TEXT,
    endpoint                TEXT    NOT NULL,
    model                   TEXT    NOT NULL,
    provider                TEXT,
    power_level             TEXT CHECK (power_level IS NULL OR power_level IN ('eco', 'balanced', 'precision')),
    prompt_tokens           INTEGER NOT NULL DEFAULT 0 CHECK (prompt_tokens >= 0),
    completion_tokens       INTEGER NOT NULL DEFAULT 0 CHECK (completion_tokens >= 0),
    total_tokens            INTEGER NOT NULL DEFAULT 0 CHECK (total_tokens >= 0),
    credits_charged         INTEGER NOT NULL DEFAULT 0 CHECK (credits_charged >= 0),
    overage_credits         INTEGER NOT NULL DEFAULT 0 CHECK (overage_credits >= 0),
    cost_per_token          TEXT,
    is_byok                 INTEGER NOT NULL DEFAULT 0 CHECK (is_byok IN (0, 1)),
    byok_key_id             INTEGER REFERENCES user_provider_keys (id) ON DELETE SET NULL,
    latency_ms              INTEGER CHECK (latency_ms IS NULL OR latency_ms >= 0),
    time_to_first_token_ms  INTEGER CHECK (time_to_first_token_ms IS NULL OR time_to_first_token_ms >= 0),
    tokens_per_second       REAL,                 -- a rate for dashboards, never money
    success                 INTEGER NOT NULL CHECK (success IN (0, 1)),
    http_status             INTEGER,
    error_message           TEXT,
    error_type              TEXT CHECK (error_type IS NULL OR error_type IN (
        'insufficient_credits', 'spend_cap', 'rate_limit', 'timeout', 'upstream_error',
        'client_disconnected', 'invalid_request', 'auth_error', 'internal_error')),
    metadata                TEXT CHECK (metadata IS NULL OR json_valid(metadata)),
    user_agent              TEXT,
    client_ip               TEXT,
    created_at              TEXT    NOT NULL
);
-- Kept: UNIQUE request_id (above), (user_id, created_at) for per-user reports and (created_at) for
-- reports over a time range. Dropped from the original's eleven: the duplicate pkey/request_id
-- indexes, user_id alone (a prefix of the composite), and model, provider, app_id, session_id,
-- success: each is written on every request and read only by reports that group a time range,
-- which the created_at index serves.
CREATE INDEX idx_llm_usage_log_user_time ON llm_usage_log (user_id, created_at);
CREATE INDEX idx_llm_usage_log_time ON llm_usage_log (created_at);

-- usage_summary_daily: the original's materialized usage summary, as a plain view so it is always
-- current (the original's refresh function was never called). p95 latency is computed by the
-- report code from llm_usage_log.
CREATE VIEW usage_summary_daily AS
SELECT user_id,
       provider,
       model,
       power_level,
       substr(created_at, 1, 10)                    AS day,
       COUNT(*)                                     AS requests,
       SUM(success)                                 AS successes,
       COUNT(*) - SUM(success)                      AS errors,
       SUM(prompt_tokens)                           AS prompt_tokens,
       SUM(completion_tokens)                       AS completion_tokens,
       SUM(total_tokens)                            AS total_tokens,
       SUM(credits_charged)                         AS credits_charged,
       AVG(latency_ms)                              AS avg_latency_ms,
       SUM(is_byok)                                 AS byok_requests
FROM llm_usage_log
GROUP BY user_id, provider, model, power_level, substr(created_at, 1, 10);

-- ---------------------------------------------------------------------------------------------
-- provider_health: per provider, fed by the gateway from live traffic.
CREATE TABLE provider_health (
    provider               TEXT    PRIMARY KEY,
    status                 TEXT    NOT NULL DEFAULT 'healthy' CHECK (status IN ('healthy', 'degraded', 'down')),
    avg_latency_ms         INTEGER,
    p95_latency_ms         INTEGER,
    success_rate_permille  INTEGER CHECK (success_rate_permille IS NULL OR success_rate_permille BETWEEN 0 AND 1000),
    consecutive_failures   INTEGER NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    last_error             TEXT,
    last_checked           TEXT,
    updated_at             TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- ---------------------------------------------------------------------------------------------
-- agent_identity: this database's sync identity (SYNC.md). A new database is a new incarnation;
-- seq numbers live in credit_transactions.seq. The acknowledged head and inbox cursor are for the
-- sync client.
CREATE TABLE agent_identity (
    id                INTEGER PRIMARY KEY CHECK (id = 1),
    incarnation       TEXT    NOT NULL,            -- UUIDv7, new for every new database
    agent_id          TEXT,                        -- set by enrolment
    acked_seq         INTEGER NOT NULL DEFAULT 0 CHECK (acked_seq >= 0),
    inbox_cursor      INTEGER NOT NULL DEFAULT 0 CHECK (inbox_cursor >= 0),
    created_at        TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- ---------------------------------------------------------------------------------------------
-- updated_at, maintained by triggers (the ledger also sets it; the trigger covers every other
-- writer). It fires only when an UPDATE left updated_at unchanged.
CREATE TRIGGER user_credits_updated_at AFTER UPDATE ON user_credits
FOR EACH ROW WHEN NEW.updated_at IS OLD.updated_at
BEGIN
    UPDATE user_credits SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id;
END;
CREATE TRIGGER credit_packages_updated_at AFTER UPDATE ON credit_packages
FOR EACH ROW WHEN NEW.updated_at IS OLD.updated_at
BEGIN
    UPDATE credit_packages SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id;
END;
CREATE TRIGGER user_provider_keys_updated_at AFTER UPDATE ON user_provider_keys
FOR EACH ROW WHEN NEW.updated_at IS OLD.updated_at
BEGIN
    UPDATE user_provider_keys SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id;
END;
