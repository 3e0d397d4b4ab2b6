-- tollgate agent database, version 6: API keys made centrally.
--
-- Once an agent is enrolled, its users' API keys are governed by the sync server: it makes them
-- and sends each key's hash (never the key) to the agents that serve the user, as an inbox event
-- (protocol 2). `origin` tells a key made on this agent ('local', every key before this version)
-- from one the server sent ('central'), which only the server may revoke.

ALTER TABLE api_keys ADD COLUMN origin TEXT NOT NULL DEFAULT 'local'
    CHECK (origin IN ('local', 'central'));
