-- tollgate central database, version 2: a checkout is recorded before Stripe is called.
--
-- Before, the `checkout_sessions` row was written after Stripe answered: a crash between the two
-- left a session a buyer could pay that the server could never grant. Now each checkout gets our
-- own id (`checkout_id`) and its row, status 'creating', is written first; the id goes to
-- Stripe as the call's Idempotency-Key and in the session's metadata; Stripe's session id is
-- filled in when it answers (status 'open'), or by the webhook from the metadata if the server
-- died first; a refused call marks the row 'failed'.

ALTER TABLE checkout_sessions ADD COLUMN checkout_id uuid;
UPDATE checkout_sessions SET checkout_id = gen_random_uuid();
ALTER TABLE checkout_sessions ALTER COLUMN checkout_id SET NOT NULL;
ALTER TABLE checkout_sessions DROP CONSTRAINT checkout_sessions_pkey;
ALTER TABLE checkout_sessions ADD PRIMARY KEY (checkout_id);
ALTER TABLE checkout_sessions ALTER COLUMN session_id DROP NOT NULL;
ALTER TABLE checkout_sessions ADD CONSTRAINT checkout_sessions_session_id_key UNIQUE (session_id);
ALTER TABLE checkout_sessions DROP CONSTRAINT checkout_sessions_status_check;
ALTER TABLE checkout_sessions ADD CONSTRAINT checkout_sessions_status_check
    CHECK (status IN ('creating', 'open', 'granted', 'failed'));
ALTER TABLE checkout_sessions ADD CONSTRAINT checkout_sessions_session_known
    CHECK (session_id IS NOT NULL OR status IN ('creating', 'failed'));

COMMENT ON TABLE checkout_sessions IS 'Stripe Checkout Sessions: written (creating) before Stripe is called, keyed by our checkout_id (the call''s Idempotency-Key and the session''s metadata); the grant is keyed on session_id (operation key stripe:<session_id>).';
