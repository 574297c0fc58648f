-- Accounts: users, devices, access and refresh tokens (stored as sha256 hashes), profiles,
-- registration tokens and User-Interactive Auth sessions.

CREATE TABLE users (
    name TEXT PRIMARY KEY,                -- full user id, @local:server
    password_hash TEXT,                   -- bcrypt; NULL = no password login
    creation_ts BIGINT NOT NULL,
    admin INTEGER NOT NULL DEFAULT 0,
    deactivated INTEGER NOT NULL DEFAULT 0,
    is_guest INTEGER NOT NULL DEFAULT 0,
    user_type TEXT
);

CREATE TABLE devices (
    user_id TEXT NOT NULL REFERENCES users(name),
    device_id TEXT NOT NULL,
    display_name TEXT,
    created_ts BIGINT NOT NULL,
    last_seen_ts BIGINT,
    last_seen_ip TEXT,
    last_seen_user_agent TEXT,
    PRIMARY KEY (user_id, device_id)
);

CREATE TABLE access_tokens (
    token_hash TEXT PRIMARY KEY,          -- sha256 hex of the token; the token is never stored
    user_id TEXT NOT NULL REFERENCES users(name),
    device_id TEXT,
    created_ts BIGINT NOT NULL,
    expires_ts BIGINT,                    -- NULL = does not expire
    refresh_token_hash TEXT               -- the refresh token this access token came with
);
CREATE INDEX access_tokens_user_device ON access_tokens (user_id, device_id);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(name),
    device_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    next_token_hash TEXT                  -- set once used: the token that replaced it
);
CREATE INDEX refresh_tokens_user_device ON refresh_tokens (user_id, device_id);

CREATE TABLE profiles (
    user_id TEXT PRIMARY KEY REFERENCES users(name),
    displayname TEXT,
    avatar_url TEXT
);

CREATE TABLE registration_tokens (
    token TEXT PRIMARY KEY,
    uses_allowed INTEGER,                 -- NULL = unlimited
    pending INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    expiry_time BIGINT                    -- ms since epoch; NULL = never
);

CREATE TABLE uia_sessions (
    session_id TEXT PRIMARY KEY,
    created_ts BIGINT NOT NULL,
    uri TEXT NOT NULL,
    method TEXT NOT NULL,
    clientdict TEXT NOT NULL,             -- JSON of the first request body
    completed TEXT NOT NULL,              -- JSON list of completed stage types
    params TEXT NOT NULL DEFAULT '{}',    -- JSON of stage results (e.g. the token used)
    user_id TEXT
);
