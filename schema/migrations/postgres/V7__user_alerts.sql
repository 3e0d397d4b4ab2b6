-- tollgate central database, version 7: threshold alerts for fleet users.
--
-- A fleet user spends on many agents, so their thresholds are judged here, from what ingest
-- books: their use of the monthly allowance (credits_used_this_month / monthly_allowance) and
-- what they have left (pool + what agents hold − debt). Ingest inserts a row for each threshold
-- reached, in its own transaction; the unique key makes that once per user, kind, threshold and
-- billing period (a later batch finds the row and inserts nothing). A task on each replica
-- sends pending rows to the webhook outside any transaction, taking each with a lease
-- (`next_attempt_at` moved past the attempt's timeout, `FOR UPDATE SKIP LOCKED`), so replicas
-- never send one row at once and a slow webhook never holds a lock ingest waits on.

CREATE TABLE user_alerts (
    alert_id        bigserial   PRIMARY KEY,
    user_id         text        NOT NULL REFERENCES user_credits (user_id),
    kind            text        NOT NULL CHECK (kind IN ('allowance_used', 'low_balance')),
    -- A percentage of the monthly allowance, or a balance in credits.
    threshold       numeric(38,9) NOT NULL CHECK (threshold > 0),
    period_start    timestamptz NOT NULL,
    period_end      timestamptz NOT NULL CHECK (period_end > period_start),
    -- What was measured when the row was made: the percentage used, or the credit left.
    value           numeric(38,9) NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    dropped_at      timestamptz,
    CHECK (sent_at IS NULL OR dropped_at IS NULL),
    UNIQUE (user_id, kind, threshold, period_start)
);
COMMENT ON TABLE user_alerts IS 'Threshold alerts for fleet users: once per user, kind, threshold and billing period; an outbox the alert task sends from.';
COMMENT ON COLUMN user_alerts.next_attempt_at IS 'When the row may next be taken: the backoff after a failure, or the lease of an attempt in flight.';
COMMENT ON COLUMN user_alerts.dropped_at IS 'Every attempt failed: not sent, not retried.';

CREATE INDEX idx_user_alerts_pending ON user_alerts (next_attempt_at)
    WHERE sent_at IS NULL AND dropped_at IS NULL;
CREATE INDEX idx_user_alerts_period_end ON user_alerts (period_end);
