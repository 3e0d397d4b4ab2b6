-- tollgate agent database, version 3: the sync client's state (SYNC.md).
--
-- The agent's identity, acknowledged head and inbox cursor live in agent_identity (V1); this file
-- adds what the sync client reports and what it applied from the server. Only agent/src/ledger
-- touches these tables (ledger/sync.rs and ledger/inbox.rs).
--
-- Conventions (as in V1): times are TEXT, RFC 3339 UTC with milliseconds; sequence numbers are
-- INTEGER counting from 1 (0 = none yet).

-- ---------------------------------------------------------------------------------------------
-- sync_state: one row (id = 1), the sync client's bookkeeping, shown by `tollgate sync status`.
-- Nothing here decides what is pushed or applied: that is agent_identity.acked_seq and
-- agent_identity.inbox_cursor, moved in the same transactions as what they describe.
CREATE TABLE sync_state (
    id                 INTEGER PRIMARY KEY CHECK (id = 1),
    -- When the server last answered a push (entries or a heartbeat) with an acknowledged head.
    last_push_at       TEXT,
    -- When the server last answered a pull (a page of events, possibly empty).
    last_pull_at       TEXT,
    -- The most recent sync failure, one line, for a human (never a credential). It is kept after
    -- sync recovers: compare last_error_at with last_push_at / last_pull_at.
    last_error         TEXT CHECK (last_error IS NULL OR length(last_error) <= 2000),
    last_error_at      TEXT,
    -- The newest event seq in this agent's inbox on the server, as of the last pull; the inbox is
    -- drained when agent_identity.inbox_cursor reaches it.
    server_inbox_head  INTEGER NOT NULL DEFAULT 0 CHECK (server_inbox_head >= 0),
    -- When agent_identity.acked_seq last moved forward (the server acknowledged new entries).
    server_acked_at    TEXT,
    -- Bumped when a snapshot moves the inbox cursor back (the server lost events it had sent,
    -- e.g. restored from a backup): seqs after the new cursor are then new events, recorded in
    -- the new epoch, not conflicts with the ones recorded before.
    inbox_epoch        INTEGER NOT NULL DEFAULT 0 CHECK (inbox_epoch >= 0)
);
INSERT INTO sync_state (id) VALUES (1);

-- ---------------------------------------------------------------------------------------------
-- inbox_events: every central event this agent applied or refused, one row each, written in the
-- same transaction as the event's effects and as agent_identity.inbox_cursor moving to its seq.
-- A refused event (an adjustment the balance cannot cover, a value the agent does not accept)
-- has no effect but its row: the inbox never sticks on it, and the server's reconcile reports it.
-- Append-only (triggers below).
CREATE TABLE inbox_events (
    id           INTEGER PRIMARY KEY,
    -- The agent (agent_identity.agent_id at the time) whose inbox the event came from: a new
    -- enrolment is a new inbox whose seq starts again at 1.
    agent_id     TEXT    NOT NULL,
    -- The event's gapless seq in that agent's inbox on the server.
    seq          INTEGER NOT NULL CHECK (seq >= 1),
    -- sync_state.inbox_epoch when the event was recorded.
    epoch        INTEGER NOT NULL DEFAULT 0 CHECK (epoch >= 0),
    -- The server's event id (UUID): an event is applied at most once, whatever its seq.
    event_id     TEXT    NOT NULL UNIQUE,
    -- The event's type on the wire: user_upsert, credit, package_upsert, power_level_upsert.
    kind         TEXT    NOT NULL,
    outcome      TEXT    NOT NULL CHECK (outcome IN ('applied', 'refused')),
    -- Why a refused event was refused (one line); NULL when applied.
    detail       TEXT,
    -- The journal entry a credit event wrote (or had written before, under the same idempotency
    -- key); NULL for other events and for refusals.
    entry_id     TEXT REFERENCES credit_transactions (entry_id),
    applied_at   TEXT    NOT NULL,
    UNIQUE (agent_id, epoch, seq),
    CHECK ((outcome = 'refused') = (detail IS NOT NULL))
);

CREATE TRIGGER inbox_events_no_update BEFORE UPDATE ON inbox_events
BEGIN
    SELECT RAISE(ABORT, 'inbox_events is append-only');
END;
CREATE TRIGGER inbox_events_no_delete BEFORE DELETE ON inbox_events
BEGIN
    SELECT RAISE(ABORT, 'inbox_events is append-only');
END;
