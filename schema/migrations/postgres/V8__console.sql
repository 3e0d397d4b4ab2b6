-- tollgate central database, version 8: the browser console (`/console/`, issue 12).
--
-- * console_sessions: server-side sessions of admins signed in to the console with an admin
--   token. The browser holds only a random session id in an HttpOnly cookie; the server stores
--   its SHA-256, never the id or the admin token. A session lives while its token is not
--   revoked, at most until expires_at, and ends when idle longer than the server's idle limit
--   (checked on every request against last_seen_at). csrf_token is the per-session secret every
--   console form carries in a hidden field.
-- * Two indexes for the console's reads: users by id prefix in byte order (the search box pages
--   through a range of this index), and a user's usage entries by time (the usage charts read
--   only their window, not the user's whole history).

CREATE TABLE console_sessions (
    id_hash         bytea       PRIMARY KEY CHECK (length(id_hash) = 32),
    admin_token_id  bigint      NOT NULL REFERENCES admin_tokens (id),
    csrf_token      text        NOT NULL CHECK (length(csrf_token) BETWEEN 32 AND 128),
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    CHECK (expires_at > created_at)
);
CREATE INDEX idx_console_sessions_token ON console_sessions (admin_token_id, created_at);
CREATE INDEX idx_console_sessions_expiry ON console_sessions (expires_at);
COMMENT ON TABLE console_sessions IS 'Console sign-ins: SHA-256 of the cookie''s session id, the admin token it was made with, its CSRF secret and lifetime.';
COMMENT ON COLUMN console_sessions.id_hash IS 'SHA-256 of the random session id the browser holds; the id itself is never stored.';

CREATE INDEX idx_user_credits_user_id_bytes ON user_credits ((user_id COLLATE "C"));
CREATE INDEX idx_credit_transactions_user_usage_time ON credit_transactions (user_id, created_at)
    WHERE transaction_type = 'usage';
