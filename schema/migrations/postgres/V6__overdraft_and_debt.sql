-- tollgate central database, version 6: overdraft lines for fleet users, and debt.
--
-- * `overdraft`: a line an admin may give a fleet user. Each grant made to an agent speaking
--   protocol 4 carries it; an agent that cannot reach the server when it needs more of the
--   user's credit may draw the line once per grant, as an `escrow` entry keyed
--   `overdraft:<grant key>` (ingest checks it against the grant, once).
-- * `debt`: what a fleet user owes: overdrafts drawn and money Stripe took back (refunds,
--   disputes) beyond what their pool held. The pool and the debt are one signed position
--   (pool − debt): credit coming in (a purchase, a grant, a release, a dispute won) pays the
--   debt first, and what goes out beyond the pool becomes debt — so one of the two is always
--   zero.
-- * So for a fleet user: pool − debt = pool credits − grants + releases − overdrafts.
-- * A home user owes what money Stripe returned took beyond the balance their home could still
--   cover; their next credit repays it before the rest is sent to the home. Each operation's
--   result says how much it booked (`debt_booked`) or repaid (`debt_repaid`).

ALTER TABLE user_credits
    ADD COLUMN debt numeric(38,9) NOT NULL DEFAULT 0 CHECK (debt >= 0),
    ADD COLUMN overdraft numeric(38,9) CHECK (overdraft > 0),
    ADD CONSTRAINT user_credits_pool_or_debt CHECK (pool = 0 OR debt = 0),
    ADD CONSTRAINT user_credits_overdraft_is_fleet CHECK (fleet OR overdraft IS NULL);
COMMENT ON COLUMN user_credits.debt IS 'What the user owes: overdrafts drawn and money Stripe returned beyond their pool (fleet) or home balance, less what later credit repaid. Zero whenever pool > 0.';
COMMENT ON COLUMN user_credits.overdraft IS 'A fleet user''s overdraft line, carried by each grant (protocol 4); NULL: none.';

-- An overdraft key, like a grant's, is applied by exactly one entry.
DROP INDEX idx_credit_transactions_central_key;
CREATE UNIQUE INDEX idx_credit_transactions_central_key ON credit_transactions (idempotency_key)
    WHERE idempotency_key LIKE 'admin:%' OR idempotency_key LIKE 'stripe:%'
       OR idempotency_key LIKE 'grant:%' OR idempotency_key LIKE 'release:%'
       OR idempotency_key LIKE 'overdraft:%';
