-- Other servers' signing keys (server-server-api "Retrieving server keys"), as the keyring
-- learned them, and the signed key responses they came in (what the notary serves again).

-- One row per (server, key id).  valid_until_ts is the effective validity: the lesser of the
-- response's valid_until_ts and fetched_ts + 7 days (rooms v5+ "signing key validity
-- period"), the greatest seen for this verify key.  expired_ts is set once the key was
-- listed under old_verify_keys; it then wins over valid_until_ts.
CREATE TABLE server_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    verify_key TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    expired_ts BIGINT,
    fetched_ts BIGINT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);

-- The latest self-signed /_matrix/key/v2/server response of server_name, as obtained from
-- from_server (the server itself, or a notary); only the server's own signatures are kept.
-- valid_until_ts is the response's own (not capped).
CREATE TABLE server_key_responses (
    server_name TEXT NOT NULL,
    from_server TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    response_json TEXT NOT NULL,
    fetched_ts BIGINT NOT NULL,
    PRIMARY KEY (server_name, from_server)
);
