-- OpenID tokens (client-server-api "OpenID", server-server-api "OpenID"): a user asks for a
-- short-lived token (POST /user/{userId}/openid/request_token) and hands it to a third
-- party, which exchanges it at GET /_matrix/federation/v1/openid/userinfo for the user id.
-- Only the sha256 of a token is kept; expired rows are pruned when new tokens are made.
CREATE TABLE openid_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);
CREATE INDEX openid_tokens_expiry ON openid_tokens (expires_ts);

-- sendToDevice to users of other servers: the m.direct_to_device EDUs of one request are
-- queued once per (sender, sender's device, txn id), like device_inbox_txns for local
-- targets (a retried request must not queue them again).
CREATE TABLE federation_to_device_txns (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);
