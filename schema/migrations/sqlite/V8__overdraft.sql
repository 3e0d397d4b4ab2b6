-- tollgate agent database, version 8: overdraft lines for fleet users (protocol 4).
--
-- A grant may carry the user's overdraft line. The newest line booked here is kept on the user's
-- row until it is drawn: if this agent cannot reach the sync server when the user needs more
-- credit, it books the line once as an `escrow` entry keyed `overdraft:<grant key>` (the server
-- checks it against that grant and books it as the user's debt), and clears it.

ALTER TABLE user_credits ADD COLUMN overdraft_line INTEGER CHECK (overdraft_line > 0);
ALTER TABLE user_credits ADD COLUMN overdraft_key TEXT
    CHECK ((overdraft_key IS NULL) = (overdraft_line IS NULL));
