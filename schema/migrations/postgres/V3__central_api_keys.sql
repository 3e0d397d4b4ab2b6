-- tollgate central database, version 3: API keys governed centrally, and each agent's protocol.
--
-- `tollgate-server users api-key create` makes a key here (its SHA-256 only; the key is printed
-- once) and sends the hash to the agents that serve the user as an `api_key_upsert` inbox event
-- (protocol 2); a revocation is the same event with `revoked_at` set. An agent speaking
-- protocol 1 cannot read that event, so the server records each agent's protocol
-- (`agents.protocol_version`, from the agent's requests) and writes key events only to agents
-- that speak 2; when an agent's protocol rises to 2 the server sends it every key it missed, in
-- the transaction that records the new version.

ALTER TABLE agents ADD COLUMN protocol_version integer NOT NULL DEFAULT 1
    CHECK (protocol_version >= 1);
COMMENT ON COLUMN agents.protocol_version IS 'The sync protocol the agent spoke in its latest request; events it cannot read are never written to its inbox.';

CREATE TABLE api_keys (
    key_id      text        PRIMARY KEY CHECK (key_id ~ '^key_[0-9a-f]{16}$'),
    user_id     text        NOT NULL REFERENCES user_credits (user_id),
    key_hash    bytea       NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    prefix      text        NOT NULL CHECK (prefix LIKE 'tg\_%' AND length(prefix) <= 11),
    name        text        NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text        NOT NULL,
    revoked_at  timestamptz
);
CREATE INDEX idx_api_keys_user ON api_keys (user_id);
COMMENT ON TABLE api_keys IS 'API keys made centrally: SHA-256 only (the key is shown once); sent to the agents serving the user as api_key_upsert events.';
