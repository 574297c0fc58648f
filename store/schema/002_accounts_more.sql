-- Accounts, continued: refresh-token rotation needs to know whether the access token issued
-- with a refresh token has been used (spec: "Refreshing access tokens" — the old refresh
-- token stays valid until the new access or refresh token is used); UIA sessions are purged
-- by age.

ALTER TABLE access_tokens ADD COLUMN used INTEGER NOT NULL DEFAULT 0;

CREATE INDEX access_tokens_refresh ON access_tokens (refresh_token_hash);

CREATE INDEX refresh_tokens_next ON refresh_tokens (next_token_hash);

CREATE INDEX uia_sessions_created ON uia_sessions (created_ts);
