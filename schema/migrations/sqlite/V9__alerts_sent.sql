-- tollgate agent database, version 9: the threshold alerts this agent has raised.
--
-- One row per user, kind, threshold and billing period: the alert task claims a row (INSERT OR
-- IGNORE) before it POSTs to the webhook, and sends only what it newly claimed. So an alert is
-- raised at most once per period and threshold, whatever happens in between: a restart, an
-- allowance lowered and raised again, a refund that takes usage back below a threshold. Claimed
-- before delivery: an alert whose every attempt fails, or that dies with the process, is not
-- raised again (alerts are notifications, not books). Rows of periods ended more than 400 days
-- ago are deleted as new ones are claimed.

CREATE TABLE alerts_sent (
    user_id      TEXT    NOT NULL,
    -- 'allowance_used' (threshold: a percentage of the monthly allowance, 1 to 1000) or
    -- 'low_balance' (threshold: credits, in nano-credits).
    kind         TEXT    NOT NULL CHECK (kind IN ('allowance_used', 'low_balance')),
    threshold    INTEGER NOT NULL CHECK (threshold > 0),
    -- The user's billing cycle the alert belongs to, [period_start, period_end) (RFC 3339).
    period_start TEXT    NOT NULL,
    period_end   TEXT    NOT NULL,
    -- What was measured: the percentage used (hundredths of a percent) or the balance (nanos).
    value        INTEGER NOT NULL,
    claimed_at   TEXT    NOT NULL,
    PRIMARY KEY (user_id, kind, threshold, period_start)
) WITHOUT ROWID;

CREATE INDEX idx_alerts_sent_period_end ON alerts_sent (period_end);
