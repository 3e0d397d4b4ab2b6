-- tollgate central database, version 5: escrow for fleet users (SYNC.md "Escrow").
--
-- A fleet user has no home agent: every agent serves them. The server holds their credit in a
-- pool (`user_credits.pool`); an agent spends only grants carved from it.
-- * Central credit for a fleet user (an admin grant, a Stripe purchase) goes into the pool: a
--   `credit` operation with no agent (`central_operations.agent_id IS NULL`), no inbox event.
-- * A grant is a `credit` operation keyed `grant:<agent id>:<request id>`, sent to the agent
--   that asked, taken from the pool in the same transaction. The agent books it as an `escrow`
--   entry carrying that key, exactly like any central credit.
-- * What an agent holds of a fleet user is the sum of its entries for them
--   (`escrow_holdings`, a cache reconcile proves); it returns what is left with its own negative
--   `escrow` entry keyed `release:…`, which ingest adds back to the pool.
-- * So for a fleet user: pool = pool credits − grants + releases, and user_credits.balance (the
--   journal sum, as for every user) = what the agents hold.

ALTER TABLE user_credits
    ADD COLUMN fleet boolean NOT NULL DEFAULT false,
    ADD COLUMN pool numeric(38,9) NOT NULL DEFAULT 0 CHECK (pool >= 0),
    ADD CONSTRAINT user_credits_fleet_has_no_home CHECK (NOT fleet OR home_agent_id IS NULL),
    ADD CONSTRAINT user_credits_pool_is_fleet CHECK (fleet OR pool = 0);
COMMENT ON COLUMN user_credits.fleet IS 'Served by every agent; credit held in pool, spent through grants (SYNC.md escrow).';
COMMENT ON COLUMN user_credits.pool IS 'A fleet user''s credit not granted to any agent: pool credits − grants + releases.';

ALTER TABLE credit_transactions DROP CONSTRAINT credit_transactions_transaction_type_check;
ALTER TABLE credit_transactions ADD CONSTRAINT credit_transactions_transaction_type_check
    CHECK (transaction_type IN ('purchase', 'usage', 'refund', 'admin_adjustment', 'bonus',
                                'allowance', 'expiry', 'escrow'));

-- A grant's key, like every central operation key, is applied by exactly one entry; a release
-- key is used once.
DROP INDEX idx_credit_transactions_central_key;
CREATE UNIQUE INDEX idx_credit_transactions_central_key ON credit_transactions (idempotency_key)
    WHERE idempotency_key LIKE 'admin:%' OR idempotency_key LIKE 'stripe:%'
       OR idempotency_key LIKE 'grant:%' OR idempotency_key LIKE 'release:%';

-- What each agent holds of each fleet user: the sum of its entries for them.
CREATE TABLE escrow_holdings (
    user_id     text        NOT NULL REFERENCES user_credits (user_id),
    agent_id    uuid        NOT NULL REFERENCES agents (agent_id),
    balance     numeric(38,9) NOT NULL DEFAULT 0 CHECK (balance >= 0),
    -- A home user turned fleet user: their former home's balance became its holding; until its
    -- first escrow entry for them, its entries are judged as a home agent's (they were written
    -- before it applied the change).
    converting  boolean     NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, agent_id)
);
COMMENT ON TABLE escrow_holdings IS 'Per fleet user and agent: the sum of the agent''s entries for the user (grants − spend − releases).';

-- Recent grants of a user, for sizing the next one fairly.
CREATE INDEX idx_central_operations_grants ON central_operations (user_id, created_at)
    WHERE operation_key LIKE 'grant:%';
