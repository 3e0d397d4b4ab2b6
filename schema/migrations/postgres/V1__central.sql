-- tollgate central database (tollgate-server), version 1: the credit data model of SCHEMA.md in
-- its PostgreSQL form, and what sync needs (SYNC.md): agents and their credentials, per-agent entry
-- streams with acknowledged heads, per-agent inboxes, central operations, admin tokens, and what
-- was received from Stripe.
--
-- Conventions:
-- * Money is NUMERIC(38,9): exact, 9 fractional digits (the agent's INTEGER nano-credits).
-- * Times are timestamptz, except a journal entry's created_at, kept as the exact text the agent
--   hashed (so the server can recompute every entry's hash).
-- * Secrets (agent credentials, enrolment tokens, admin tokens) are stored as SHA-256 hashes only.
-- * The home-agent mode: each user is homed on one agent that holds the user's whole balance;
--   central credit for the user becomes an event in that agent's inbox, and comes back as the
--   agent's journal entry. The central journal is the union of the agents' journals.
-- * Only BYOK keys and the per-request usage log stay on the agents (keys never leave the host
--   they were stored on; usage rows are the agent's local record). Their tables are not here.

-- ---------------------------------------------------------------------------------------------
-- updated_at, maintained by trigger (as in the original).
CREATE FUNCTION set_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;

-- ---------------------------------------------------------------------------------------------
-- agents: every tollgate agent the server knows. An agent authenticates with a bearer credential
-- whose SHA-256 is stored here; the server learns the agent's id from the credential, never from a
-- request body.
CREATE TABLE agents (
    agent_id           uuid        PRIMARY KEY,
    name               text        NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    status             text        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'active', 'quarantined', 'revoked')),
    credential_hash    bytea       UNIQUE CHECK (credential_hash IS NULL OR length(credential_hash) = 32),
    -- The incarnation the agent enrolled with / last pushed from.
    incarnation        uuid,
    -- The per-agent inbox's gapless counter: the seq of the newest event. Bumped under this row's
    -- lock in the transaction that writes the event, so events commit in seq order, no gaps.
    inbox_head         bigint      NOT NULL DEFAULT 0 CHECK (inbox_head >= 0),
    -- The newest event the agent has applied (it pulls "after" this).
    inbox_acked        bigint      NOT NULL DEFAULT 0 CHECK (inbox_acked >= 0 AND inbox_acked <= inbox_head),
    -- Events with seq <= this were pruned; a cursor below it must start over from a snapshot.
    inbox_pruned_through bigint    NOT NULL DEFAULT 0 CHECK (inbox_pruned_through >= 0 AND inbox_pruned_through <= inbox_acked),
    quarantine_reason  text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    enrolled_at        timestamptz,
    revoked_at         timestamptz,
    last_seen_at       timestamptz,
    CHECK ((status = 'quarantined') = (quarantine_reason IS NOT NULL)),
    CHECK ((status = 'revoked') = (revoked_at IS NOT NULL)),
    CHECK (status = 'pending' OR enrolled_at IS NOT NULL OR status = 'revoked')
);
COMMENT ON TABLE agents IS 'Every tollgate agent: identity, credential hash, status and inbox counters.';
COMMENT ON COLUMN agents.credential_hash IS 'SHA-256 of the bearer credential; NULL until enrolled.';
COMMENT ON COLUMN agents.inbox_head IS 'Gapless per-agent inbox counter, bumped under the row lock.';
COMMENT ON COLUMN agents.inbox_acked IS 'Newest inbox event the agent reported applied.';
COMMENT ON COLUMN agents.inbox_pruned_through IS 'Inbox events at or below this seq were pruned.';

-- enrollment_tokens: one-time tokens an admin creates for an agent (`agents enroll NAME`).
CREATE TABLE enrollment_tokens (
    token_hash   bytea       PRIMARY KEY CHECK (length(token_hash) = 32),
    agent_id     uuid        NOT NULL REFERENCES agents (agent_id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz,
    CHECK (expires_at > created_at)
);
COMMENT ON TABLE enrollment_tokens IS 'One-time enrolment tokens (SHA-256 only); used_at set when traded for a credential.';

-- agent_streams: one append-only entry stream per (agent, incarnation). acked_seq is the
-- contiguous head: every entry 1..acked_seq is in credit_transactions, none beyond.
CREATE TABLE agent_streams (
    agent_id           uuid        NOT NULL REFERENCES agents (agent_id),
    incarnation        uuid        NOT NULL,
    acked_seq          bigint      NOT NULL DEFAULT 0 CHECK (acked_seq >= 0),
    -- The hash of entry acked_seq (32 zero bytes when acked_seq = 0): the next entry chains on it.
    head_hash          bytea       NOT NULL DEFAULT decode(repeat('00', 32), 'hex') CHECK (length(head_hash) = 32),
    -- The agent's own newest seq, as it last reported (for lag).
    reported_head_seq  bigint      NOT NULL DEFAULT 0 CHECK (reported_head_seq >= 0),
    created_at         timestamptz NOT NULL DEFAULT now(),
    last_push_at       timestamptz,
    PRIMARY KEY (agent_id, incarnation)
);
COMMENT ON TABLE agent_streams IS 'Per (agent, incarnation) entry stream with its contiguous acknowledged head.';
COMMENT ON COLUMN agent_streams.acked_seq IS 'Contiguous head: entries 1..acked_seq are stored, once; never max(seq).';

-- ---------------------------------------------------------------------------------------------
-- user_credits: one row per user known centrally. balance caches the sum of the user's central
-- journal (agent entries); reconcile proves it.
CREATE TABLE user_credits (
    id                         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id                    text        NOT NULL UNIQUE CHECK (length(user_id) BETWEEN 1 AND 128),
    home_agent_id              uuid        REFERENCES agents (agent_id),
    balance                    numeric(38,9) NOT NULL DEFAULT 0 CHECK (balance >= 0),
    lifetime_credits_purchased numeric(38,9) NOT NULL DEFAULT 0 CHECK (lifetime_credits_purchased >= 0),
    subscription_tier          text        NOT NULL DEFAULT 'trial'
        CHECK (subscription_tier IN ('free', 'trial', 'starter', 'professional', 'enterprise')),
    power_level                text        NOT NULL DEFAULT 'balanced'
        CHECK (power_level IN ('eco', 'balanced', 'precision')),
    auto_renew                 boolean     NOT NULL DEFAULT true,
    billing_cycle_start        timestamptz NOT NULL DEFAULT date_trunc('month', now()),
    billing_cycle_end          timestamptz NOT NULL DEFAULT date_trunc('month', now()) + interval '1 month',
    monthly_allowance          numeric(38,9) NOT NULL DEFAULT 0 CHECK (monthly_allowance >= 0),
    credits_used_this_month    numeric(38,9) NOT NULL DEFAULT 0 CHECK (credits_used_this_month >= 0),
    monthly_spend_cap          numeric(38,9) CHECK (monthly_spend_cap IS NULL OR monthly_spend_cap >= 0),
    auto_recharge_threshold    numeric(38,9) CHECK (auto_recharge_threshold IS NULL OR auto_recharge_threshold >= 0),
    auto_recharge_amount       numeric(38,9) CHECK (auto_recharge_amount IS NULL OR auto_recharge_amount > 0),
    stripe_customer_id         text,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now(),
    CHECK (billing_cycle_end > billing_cycle_start)
);
CREATE INDEX idx_user_credits_home_agent ON user_credits (home_agent_id);
CREATE TRIGGER user_credits_updated_at BEFORE UPDATE ON user_credits
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
COMMENT ON TABLE user_credits IS 'One row per user: balance (cache of the central journal), tier, power level, home agent.';
COMMENT ON COLUMN user_credits.balance IS 'Cache of SUM(credit_transactions.amount) for the user; never negative.';
COMMENT ON COLUMN user_credits.home_agent_id IS 'The agent holding this user''s balance (home-agent mode); central credit goes to its inbox.';
COMMENT ON COLUMN user_credits.credits_used_this_month IS 'Usage debits ingested in the current billing cycle (calendar month on the server).';
COMMENT ON COLUMN user_credits.monthly_spend_cap IS 'NULL = no cap.';

-- credit_transactions: the central journal = every agent entry, stored once, exactly as the agent
-- hashed it. Append-only. (agent_id, incarnation, seq) is contiguous per stream.
CREATE TABLE credit_transactions (
    id                       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entry_id                 uuid        NOT NULL UNIQUE,
    agent_id                 uuid        NOT NULL,
    incarnation              uuid        NOT NULL,
    seq                      bigint      NOT NULL CHECK (seq >= 1),
    user_id                  text        NOT NULL REFERENCES user_credits (user_id),
    transaction_type         text        NOT NULL CHECK (transaction_type IN (
        'purchase', 'usage', 'refund', 'admin_adjustment', 'bonus', 'allowance', 'expiry')),
    amount                   numeric(38,9) NOT NULL CHECK (amount <> 0),
    balance_before           numeric(38,9) NOT NULL CHECK (balance_before >= 0),
    balance_after            numeric(38,9) NOT NULL CHECK (balance_after >= 0),
    provider                 text,
    model                    text,
    prompt_tokens            bigint CHECK (prompt_tokens IS NULL OR prompt_tokens >= 0),
    completion_tokens        bigint CHECK (completion_tokens IS NULL OR completion_tokens >= 0),
    total_tokens             bigint CHECK (total_tokens IS NULL OR total_tokens >= 0),
    cost_per_token           text,
    power_level              text CHECK (power_level IS NULL OR power_level IN ('eco', 'balanced', 'precision')),
    is_byok                  boolean     NOT NULL,
    payment_method           text CHECK (payment_method IS NULL OR payment_method IN (
        'stripe', 'paypal', 'manual', 'bonus', 'trial')),
    stripe_payment_intent_id text,
    stripe_charge_id         text,
    request_id               text,
    invoice_id               text,
    -- The agent's local package id (not a key into this database's credit_packages).
    package_id               bigint,
    -- Kept as the exact JSON text the agent hashed.
    metadata                 text,
    notes                    text,
    admin_user_id            text,
    idempotency_key          text,
    corrects_entry_id        uuid,
    prev_hash                bytea       NOT NULL CHECK (length(prev_hash) = 32),
    hash                     bytea       NOT NULL CHECK (length(hash) = 32),
    created_at               text        NOT NULL,
    received_at              timestamptz NOT NULL DEFAULT now(),
    UNIQUE (agent_id, incarnation, seq),
    FOREIGN KEY (agent_id, incarnation) REFERENCES agent_streams (agent_id, incarnation),
    CHECK (balance_after = balance_before + amount)
);
CREATE INDEX idx_credit_transactions_user ON credit_transactions (user_id, id);
CREATE INDEX idx_credit_transactions_idempotency ON credit_transactions (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- A central credit operation's key (admin:<id>, stripe:<session>) is applied by exactly one entry
-- across all agents (ingest checks each against its operation first; this closes the race).
-- Agents refuse these prefixes for their own keys.
CREATE UNIQUE INDEX idx_credit_transactions_central_key ON credit_transactions (idempotency_key)
    WHERE idempotency_key LIKE 'admin:%' OR idempotency_key LIKE 'stripe:%';
CREATE INDEX idx_credit_transactions_usage_request ON credit_transactions (request_id)
    WHERE transaction_type = 'usage';
CREATE INDEX idx_credit_transactions_stripe ON credit_transactions (stripe_payment_intent_id)
    WHERE stripe_payment_intent_id IS NOT NULL;
COMMENT ON TABLE credit_transactions IS 'Central journal: every agent entry once, as hashed on the agent. Append-only.';
COMMENT ON COLUMN credit_transactions.seq IS 'The agent''s gapless sequence within (agent_id, incarnation).';
COMMENT ON COLUMN credit_transactions.hash IS 'sha256(prev_hash || canonical JSON), recomputed by the server on ingest and by reconcile.';
COMMENT ON COLUMN credit_transactions.idempotency_key IS 'The agent''s key; for central credit events, the central operation key (pairs them in reconcile).';
COMMENT ON COLUMN credit_transactions.created_at IS 'The agent''s timestamp, exact text as hashed.';

CREATE FUNCTION journal_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: add a correcting entry instead', TG_TABLE_NAME;
END $$;
CREATE TRIGGER credit_transactions_no_update BEFORE UPDATE OR DELETE ON credit_transactions
    FOR EACH ROW EXECUTE FUNCTION journal_is_append_only();
CREATE TRIGGER credit_transactions_no_truncate BEFORE TRUNCATE ON credit_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION journal_is_append_only();

-- quarantined_entries: an entry an agent replayed with content different from the one held. The
-- agent is quarantined (agents.status) until an admin looks; this keeps the evidence.
CREATE TABLE quarantined_entries (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id      uuid        NOT NULL REFERENCES agents (agent_id),
    incarnation   uuid        NOT NULL,
    seq           bigint      NOT NULL,
    held_hash     bytea       NOT NULL,
    offered_hash  text        NOT NULL,
    offered       jsonb       NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE quarantined_entries IS 'Evidence of a replayed entry whose content differed from the stored one.';

-- ---------------------------------------------------------------------------------------------
-- credit_packages, power_level_configs: the catalog, managed centrally, sent to agents.
CREATE TABLE credit_packages (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name              text        NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
    credits           numeric(38,9) NOT NULL CHECK (credits > 0),
    price_usd         numeric(12,2) NOT NULL CHECK (price_usd > 0),
    discount_percent  integer     NOT NULL DEFAULT 0 CHECK (discount_percent BETWEEN 0 AND 100),
    min_tier          text CHECK (min_tier IS NULL OR min_tier IN ('free', 'trial', 'starter', 'professional', 'enterprise')),
    is_active         boolean     NOT NULL DEFAULT true,
    is_featured       boolean     NOT NULL DEFAULT false,
    sort_order        integer     NOT NULL DEFAULT 0,
    description       text,
    badge_text        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER credit_packages_updated_at BEFORE UPDATE ON credit_packages
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
COMMENT ON TABLE credit_packages IS 'What can be bought. price_usd already includes the discount; discount_percent is for display.';
INSERT INTO credit_packages (sort_order, name, credits, price_usd, discount_percent, badge_text, is_featured, description) VALUES
    (1, 'Starter Pack',      100,  10.00,  0, NULL,           false, 'Perfect for trying out the platform'),
    (2, 'Value Pack',        500,  45.00, 10, 'MOST POPULAR', true,  'Best value for regular users'),
    (3, 'Pro Pack',         1000,  80.00, 20, 'BEST VALUE',   true,  'For power users and developers'),
    (4, 'Enterprise Pack',  5000, 350.00, 30, NULL,           false, 'Maximum credits for teams')
ON CONFLICT (name) DO NOTHING;

CREATE TABLE power_level_configs (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    power_level         text        NOT NULL UNIQUE CHECK (power_level IN ('eco', 'balanced', 'precision')),
    name                text        NOT NULL,
    description         text,
    preferred_providers jsonb       NOT NULL CHECK (jsonb_typeof(preferred_providers) = 'array'),
    fallback_strategy   text        NOT NULL CHECK (fallback_strategy IN ('next_available', 'cheapest', 'fastest')),
    cost_multiplier     numeric(6,3) NOT NULL CHECK (cost_multiplier > 0),
    max_latency_ms      integer     NOT NULL CHECK (max_latency_ms > 0),
    min_quality_score   integer     NOT NULL CHECK (min_quality_score BETWEEN 0 AND 100),
    is_active           boolean     NOT NULL DEFAULT true
);
COMMENT ON TABLE power_level_configs IS 'How each power level routes and prices requests.';
INSERT INTO power_level_configs (power_level, name, description, preferred_providers, fallback_strategy, cost_multiplier, max_latency_ms, min_quality_score) VALUES
    ('eco',       'Eco Mode',       'Cost-optimized routing using cheapest providers', '["openrouter","together","deepinfra"]', 'next_available', 0.7, 5000, 70),
    ('balanced',  'Balanced Mode',  'Balanced cost and performance',                   '["openai","anthropic","openrouter"]',   'next_available', 1.0, 3000, 85),
    ('precision', 'Precision Mode', 'Maximum quality, premium providers',              '["anthropic","openai"]',                'next_available', 1.5, 2000, 95)
ON CONFLICT (power_level) DO NOTHING;

-- ---------------------------------------------------------------------------------------------
-- central_operations: every change made centrally (admin grant/refund/adjust, Stripe grant, user
-- or catalog change), keyed by its idempotency key. The same key with the same content returns
-- the stored result; with different content it is a conflict. Written in the same transaction as
-- the inbox event(s) it produces.
CREATE TABLE central_operations (
    operation_key  text        PRIMARY KEY CHECK (length(operation_key) BETWEEN 1 AND 255),
    kind           text        NOT NULL CHECK (kind IN ('credit', 'user_upsert', 'package_upsert', 'power_level_upsert')),
    fingerprint    bytea       NOT NULL CHECK (length(fingerprint) = 32),
    user_id        text,
    amount         numeric(38,9),
    agent_id       uuid        REFERENCES agents (agent_id),
    inbox_seq      bigint,
    result         jsonb       NOT NULL,
    actor          text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'credit') = (amount IS NOT NULL AND amount <> 0 AND user_id IS NOT NULL))
);
CREATE INDEX idx_central_operations_user ON central_operations (user_id) WHERE user_id IS NOT NULL;
COMMENT ON TABLE central_operations IS 'Idempotency record of every central change; credit operations pair with the agent entry carrying the same idempotency_key.';
COMMENT ON COLUMN central_operations.actor IS 'Who made it: admin token name, ''stripe'', or ''cli''.';

-- agent_inbox: per-agent events, gapless seq per agent (agents.inbox_head), written in the
-- transaction of the change. Pruned only at or below what the agent acknowledged.
CREATE TABLE agent_inbox (
    agent_id       uuid        NOT NULL REFERENCES agents (agent_id),
    seq            bigint      NOT NULL CHECK (seq >= 1),
    event_id       uuid        NOT NULL UNIQUE,
    kind           text        NOT NULL,
    body           jsonb       NOT NULL,
    operation_key  text        REFERENCES central_operations (operation_key),
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_id, seq)
);
COMMENT ON TABLE agent_inbox IS 'Per-agent central events (wire EventBody JSON), gapless seq per agent.';

CREATE FUNCTION agent_inbox_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        RAISE EXCEPTION 'agent_inbox is append-only';
    END IF;
    IF OLD.seq > (SELECT inbox_acked FROM agents WHERE agent_id = OLD.agent_id) THEN
        RAISE EXCEPTION 'agent_inbox event % of agent % is not acknowledged and cannot be pruned',
            OLD.seq, OLD.agent_id;
    END IF;
    RETURN OLD;
END $$;
CREATE TRIGGER agent_inbox_guard BEFORE UPDATE OR DELETE ON agent_inbox
    FOR EACH ROW EXECUTE FUNCTION agent_inbox_guard();

-- ---------------------------------------------------------------------------------------------
-- admin_tokens: bearer tokens for the admin API (SHA-256 only). read: every GET; full: writes too.
CREATE TABLE admin_tokens (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text        NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 64),
    role          text        NOT NULL CHECK (role IN ('read', 'full')),
    token_hash    bytea       NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
COMMENT ON TABLE admin_tokens IS 'Admin API tokens, hashed; revoked_at set = refused.';

-- ---------------------------------------------------------------------------------------------
-- Stripe: Checkout Sessions created for a package, and every webhook event id received (stored
-- before acting, in the same transaction as the grant).
CREATE TABLE checkout_sessions (
    session_id      text        PRIMARY KEY,
    user_id         text        NOT NULL REFERENCES user_credits (user_id),
    package_name    text        NOT NULL,
    credits         numeric(38,9) NOT NULL CHECK (credits > 0),
    price_usd       numeric(12,2) NOT NULL CHECK (price_usd > 0),
    status          text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'granted')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    granted_at      timestamptz,
    CHECK ((status = 'granted') = (granted_at IS NOT NULL))
);
COMMENT ON TABLE checkout_sessions IS 'Stripe Checkout Sessions we created; the grant is keyed on session_id (operation key stripe:<session_id>).';

CREATE TABLE stripe_events (
    event_id     text        PRIMARY KEY,
    event_type   text        NOT NULL,
    session_id   text,
    outcome      text        NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE stripe_events IS 'Every verified webhook event id, stored before acting; a redelivery is answered from here.';

-- ---------------------------------------------------------------------------------------------
-- The original's functions, with its flaws fixed.

-- add_credits: adds a positive amount to a user's cached balance. Refuses a non-positive amount
-- and an unknown user (the original silently did nothing for an unknown user).
CREATE FUNCTION add_credits(p_user_id text, p_amount numeric) RETURNS numeric
LANGUAGE plpgsql AS $$
DECLARE
    new_balance numeric(38,9);
BEGIN
    IF p_amount IS NULL OR p_amount <= 0 THEN
        RAISE EXCEPTION 'add_credits: amount must be positive, got %', p_amount
            USING ERRCODE = 'check_violation';
    END IF;
    UPDATE user_credits SET balance = balance + p_amount
        WHERE user_id = p_user_id RETURNING balance INTO new_balance;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'add_credits: unknown user %', p_user_id USING ERRCODE = 'no_data_found';
    END IF;
    RETURN new_balance;
END $$;
COMMENT ON FUNCTION add_credits(text, numeric) IS 'Adds a positive amount to a user''s balance; refuses <= 0 and unknown users.';

-- debit_credits: takes a positive amount from a user's balance. Refuses a non-positive amount (the
-- original credited the user on a negative debit) and refuses to overdraw.
CREATE FUNCTION debit_credits(p_user_id text, p_amount numeric) RETURNS numeric
LANGUAGE plpgsql AS $$
DECLARE
    new_balance numeric(38,9);
BEGIN
    IF p_amount IS NULL OR p_amount <= 0 THEN
        RAISE EXCEPTION 'debit_credits: amount must be positive, got %', p_amount
            USING ERRCODE = 'check_violation';
    END IF;
    UPDATE user_credits SET balance = balance - p_amount
        WHERE user_id = p_user_id AND balance >= p_amount RETURNING balance INTO new_balance;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM user_credits WHERE user_id = p_user_id) THEN
            RAISE EXCEPTION 'debit_credits: user % cannot cover %', p_user_id, p_amount
                USING ERRCODE = 'check_violation';
        END IF;
        RAISE EXCEPTION 'debit_credits: unknown user %', p_user_id USING ERRCODE = 'no_data_found';
    END IF;
    RETURN new_balance;
END $$;
COMMENT ON FUNCTION debit_credits(text, numeric) IS 'Takes a positive amount; refuses <= 0, unknown users and overdrafts.';

CREATE FUNCTION get_balance(p_user_id text) RETURNS numeric
LANGUAGE sql STABLE AS $$
    SELECT balance FROM user_credits WHERE user_id = p_user_id
$$;
COMMENT ON FUNCTION get_balance(text) IS 'The user''s cached balance; NULL for an unknown user.';

-- quota_usage_percent: credits used this month / monthly allowance × 100, two decimals; 0 when
-- there is no allowance (the original divided by zero).
CREATE FUNCTION quota_usage_percent(p_user_id text) RETURNS numeric
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN monthly_allowance = 0 THEN 0::numeric
                ELSE round(credits_used_this_month * 100 / monthly_allowance, 2) END
    FROM user_credits WHERE user_id = p_user_id
$$;
COMMENT ON FUNCTION quota_usage_percent(text) IS 'credits_used_this_month / monthly_allowance * 100 (2 dp); 0 without an allowance.';
