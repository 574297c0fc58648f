-- The users half of Synapse's admin API (store/admin_users.py, web/synapse_admin_users.py).
--
-- users.shadow_banned: the user's room sends, invites and typing answer success and do
-- nothing.  users.locked: the user's tokens are refused (401 M_USER_LOCKED).
-- users.erased: deactivated with erase=true.
ALTER TABLE users ADD COLUMN shadow_banned INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN locked INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN erased INTEGER NOT NULL DEFAULT 0;

-- Per-user override of the message rate limit (rc_message); 0 / 0 = not limited.
CREATE TABLE ratelimit_override (
    user_id TEXT PRIMARY KEY,
    messages_per_second BIGINT NOT NULL,
    burst_count BIGINT NOT NULL
);

-- Identities of the user at external auth providers (set by the admin API only).
CREATE TABLE user_external_ids (
    auth_provider TEXT NOT NULL,
    external_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (auth_provider, external_id)
);
CREATE INDEX user_external_ids_user ON user_external_ids (user_id);

-- Deactivated users still to be taken out of their rooms: written in the deactivation's
-- transaction, deleted once every room is left, resumed at start-up after a crash.
CREATE TABLE users_pending_parting (
    user_id TEXT PRIMARY KEY,
    queued_ts BIGINT NOT NULL
);

-- Access tokens an admin made with "login as a user": the admin who asked (no device).
ALTER TABLE access_tokens ADD COLUMN puppeted_by TEXT;
