-- tollgate agent database, version 7: escrow for fleet users (SYNC.md "Escrow").
--
-- A fleet user is served by every agent of a fleet; the sync server holds their credit in a
-- pool and grants each agent a share. This agent books a grant as an `escrow` entry (positive,
-- keyed with the grant's key `grant:…`) and its lot, spends it with the usual holds, and returns
-- what is left with its own `escrow` entry (negative, keyed `release:…`).
-- * user_credits.fleet marks such a user (set by the server's settings); escrow_valid_until is
--   when the newest grant stops admitting new reservations, on this agent's clock (NULL: none
--   received). It moves no money.
-- * credit_transactions and credit_lots take the new type/kind. SQLite cannot alter a CHECK, so
--   both tables are rebuilt with their rows, ids, indexes and triggers, by SQLite's procedure:
--   the migration runs with foreign keys off and the agent checks them all after
--   (agent/src/ledger/db.rs), so the lots, lot movements and inbox events pointing at these rows
--   find them again.

ALTER TABLE user_credits ADD COLUMN fleet INTEGER NOT NULL DEFAULT 0 CHECK (fleet IN (0, 1));
ALTER TABLE user_credits ADD COLUMN escrow_valid_until TEXT;

CREATE TABLE credit_transactions_v7 (
    id                      INTEGER PRIMARY KEY,
    entry_id                TEXT    NOT NULL UNIQUE,          -- UUIDv7
    seq                     INTEGER NOT NULL UNIQUE CHECK (seq >= 1),
    user_id                 TEXT    NOT NULL REFERENCES user_credits (user_id),
    transaction_type        TEXT    NOT NULL CHECK (transaction_type IN (
        'purchase', 'usage', 'refund', 'admin_adjustment', 'bonus', 'allowance', 'expiry',
        'escrow')),
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
    idempotency_key         TEXT,
    corrects_entry_id       TEXT REFERENCES credit_transactions (entry_id),
    prev_hash               BLOB    NOT NULL CHECK (length(prev_hash) = 32),
    hash                    BLOB    NOT NULL CHECK (length(hash) = 32),
    created_at              TEXT    NOT NULL,
    CHECK (balance_after = balance_before + amount)
);
INSERT INTO credit_transactions_v7 SELECT * FROM credit_transactions;
DROP TABLE credit_transactions;
ALTER TABLE credit_transactions_v7 RENAME TO credit_transactions;
CREATE INDEX idx_credit_transactions_user ON credit_transactions (user_id, id);
CREATE UNIQUE INDEX idx_credit_transactions_idempotency
    ON credit_transactions (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE UNIQUE INDEX idx_credit_transactions_usage_request
    ON credit_transactions (request_id) WHERE transaction_type = 'usage';
CREATE INDEX idx_credit_transactions_corrects
    ON credit_transactions (corrects_entry_id) WHERE corrects_entry_id IS NOT NULL;
CREATE INDEX idx_credit_transactions_stripe
    ON credit_transactions (stripe_payment_intent_id) WHERE stripe_payment_intent_id IS NOT NULL;
CREATE TRIGGER credit_transactions_no_update BEFORE UPDATE ON credit_transactions
BEGIN
    SELECT RAISE(ABORT, 'credit_transactions is append-only: add a correcting entry instead');
END;
CREATE TRIGGER credit_transactions_no_delete BEFORE DELETE ON credit_transactions
BEGIN
    SELECT RAISE(ABORT, 'credit_transactions is append-only: add a correcting entry instead');
END;

CREATE TABLE credit_lots_v7 (
    id             INTEGER PRIMARY KEY,
    user_id        TEXT    NOT NULL REFERENCES user_credits (user_id),
    entry_id       TEXT    NOT NULL UNIQUE REFERENCES credit_transactions (entry_id),
    kind           TEXT    NOT NULL CHECK (kind IN ('purchase', 'refund', 'admin_adjustment',
                                                    'bonus', 'allowance', 'escrow')),
    amount         INTEGER NOT NULL CHECK (amount > 0),
    remaining      INTEGER NOT NULL CHECK (remaining >= 0 AND remaining <= amount),
    priority       INTEGER NOT NULL,            -- lower burns first
    expires_at     TEXT,                        -- NULL: never expires
    created_at     TEXT    NOT NULL
);
INSERT INTO credit_lots_v7 SELECT * FROM credit_lots;
DROP TABLE credit_lots;
ALTER TABLE credit_lots_v7 RENAME TO credit_lots;
CREATE INDEX idx_credit_lots_live ON credit_lots (user_id) WHERE remaining > 0;
