-- E-mail validation sessions of Atrium itself (client-server-api "Adding Account
-- Administrative Contact Information", the /requestToken endpoints; store/threepid_validation.py).
--
-- A session is what one /requestToken answer's ``sid`` names: an address, the client's
-- secret, and what the proof is for (``purpose``: register, add_threepid, password_reset,
-- so a link clicked for one cannot be spent on another).  ``send_attempt`` only sends again
-- when it grows.  Each e-mail sent carries a fresh token; only its sha256 is kept, one row per
-- token, used once.  ``validated_at`` is set when a token is submitted; a validated session
-- is spent (deleted) by the one operation that uses it.  ``expires_ts``: an unvalidated
-- session dies with its last token, a validated one some time after validation.
CREATE TABLE threepid_validation_sessions (
    session_id TEXT PRIMARY KEY,
    purpose TEXT NOT NULL,
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    client_secret TEXT NOT NULL,
    last_send_attempt BIGINT NOT NULL,
    next_link TEXT,
    created_ts BIGINT NOT NULL,
    expires_ts BIGINT NOT NULL,
    validated_at BIGINT
);
CREATE INDEX threepid_validation_by_address
    ON threepid_validation_sessions (medium, address, client_secret);
CREATE INDEX threepid_validation_expiry ON threepid_validation_sessions (expires_ts);

CREATE TABLE threepid_validation_tokens (
    token_hash TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);
CREATE INDEX threepid_validation_tokens_by_session ON threepid_validation_tokens (session_id);

-- 3PIDs this server validated itself are rows of user_threepids with id_server '' (the
-- identity-server binds of 070 keep the server's name there).  Such an address belongs to
-- one account only: login by 3PID and password reset must find exactly one user.
CREATE UNIQUE INDEX user_threepids_validated_here
    ON user_threepids (medium, address) WHERE id_server = '';
