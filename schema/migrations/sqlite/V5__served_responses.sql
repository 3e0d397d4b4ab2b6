-- tollgate agent database, version 5: the Responses API's responses this agent served.
--
-- A Responses request may name `previous_response_id`: the provider then adds that response's
-- whole conversation (its prompt and its output) to the new prompt. The gateway reserves for it
-- only if it knows how large that is: the tokens it metered for the response it served. One row
-- per response served (its id as the client saw it), written with the request's usage row in the
-- same transaction; rows older than the retention (agent/src/ledger/holds.rs
-- SERVED_RESPONSE_RETENTION_DAYS, as long as OpenAI keeps a stored response) are deleted as the
-- same user is served again.

CREATE TABLE served_responses (
    response_id        TEXT    PRIMARY KEY CHECK (length(response_id) BETWEEN 1 AND 1024),
    request_id         TEXT    NOT NULL,
    user_id            TEXT    NOT NULL REFERENCES user_credits (user_id),
    prompt_tokens      INTEGER NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens  INTEGER NOT NULL CHECK (completion_tokens >= 0),
    created_at         TEXT    NOT NULL
) WITHOUT ROWID;

CREATE INDEX served_responses_by_user ON served_responses (user_id, created_at);
