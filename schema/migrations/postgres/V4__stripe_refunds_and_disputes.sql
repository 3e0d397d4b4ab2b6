-- tollgate central database, version 4: Stripe refunds and disputes take credit back.
--
-- Before, `charge.refunded` and disputes were ignored: credit bought with a payment that was
-- refunded or charged back stayed spendable. Now each takes back the share of the package's
-- credit that the money returned is of the price paid (exact, rounded down: never more than
-- was bought), as a central adjustment sent to the user's home agent; a dispute won gives it
-- back. `payment_intent_id` ties Stripe's charges and disputes to the session that was granted
-- (filled when it is granted); `credits_taken_back` keeps the sum of what was taken back (so the
-- takings never exceed the credit bought); `stripe_refunds` keeps, per charge, the cumulative
-- refunded amount already handled (Stripe's `amount_refunded` is cumulative, and events may
-- arrive twice or out of order); `stripe_disputes` each dispute's state.

ALTER TABLE checkout_sessions ADD COLUMN payment_intent_id text UNIQUE
    CHECK (payment_intent_id IS NULL OR length(payment_intent_id) BETWEEN 1 AND 255);
ALTER TABLE checkout_sessions ADD COLUMN credits_taken_back numeric(38,9) NOT NULL DEFAULT 0
    CHECK (credits_taken_back >= 0 AND credits_taken_back <= credits);

CREATE TABLE stripe_refunds (
    charge_id       text        PRIMARY KEY CHECK (length(charge_id) BETWEEN 1 AND 255),
    session_id      text        NOT NULL REFERENCES checkout_sessions (session_id),
    refunded_cents  bigint      NOT NULL CHECK (refunded_cents > 0),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE stripe_refunds IS 'Per refunded charge: the cumulative refunded amount (cents) whose credit was taken back.';

CREATE TABLE stripe_disputes (
    dispute_id      text        PRIMARY KEY CHECK (length(dispute_id) BETWEEN 1 AND 255),
    session_id      text        NOT NULL REFERENCES checkout_sessions (session_id),
    credits         numeric(38,9) NOT NULL CHECK (credits >= 0),
    status          text        NOT NULL CHECK (status IN ('taken_back', 'won', 'lost')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    closed_at       timestamptz,
    CHECK ((status = 'taken_back') = (closed_at IS NULL))
);
COMMENT ON TABLE stripe_disputes IS 'Each dispute: the credit taken back when it opened, given back if it is won.';
