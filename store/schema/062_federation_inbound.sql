-- Inbound federation (server-server-api.md "Transactions", "Send-to-device messaging",
-- "Device Management") and the outbound device-list state (federation/device_lists_out.py).

-- The answer given to each inbound transaction, so a retry of (origin, txn id) gets the same
-- answer without anything being applied twice.  Pruned after a day.
CREATE TABLE federation_inbound_txns (
    origin TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    response_json TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, txn_id)
);
CREATE INDEX federation_inbound_txns_ts ON federation_inbound_txns (received_ts);

-- m.direct_to_device messages already delivered: exactly once per (origin, sender, message_id).
-- Pruned after a week.
CREATE TABLE federation_to_device_seen (
    origin TEXT NOT NULL,
    sender TEXT NOT NULL,
    message_id TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, sender, message_id)
);
CREATE INDEX federation_to_device_seen_ts ON federation_to_device_seen (received_ts);

-- Remote users whose device list this server tracks.  stream_id is the last update applied
-- (the sender's m.device_list_update stream_id, kept as text: servers send ints or strings);
-- stale = 1 means an update was missed and the list must be fetched again.
CREATE TABLE remote_device_lists (
    user_id TEXT PRIMARY KEY,
    stream_id TEXT,
    stale INTEGER NOT NULL DEFAULT 0,
    updated_ts BIGINT NOT NULL
);

-- Devices of tracked remote users: keys_json is the device_keys object as the owner's server
-- sent it (NULL when the device has no keys).
CREATE TABLE remote_devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    display_name TEXT,
    keys_json TEXT,
    PRIMARY KEY (user_id, device_id)
);

-- Cross-signing keys of remote users (key_type: master | self_signing).
CREATE TABLE remote_cross_signing_keys (
    user_id TEXT NOT NULL,
    key_type TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Outbound: what other servers were last told about a local user's devices (item
-- "d:<device_id>" or "x:<key_type>", digest of what was sent), and the stream_id of the last
-- m.device_list_update sent for the user (the next one's prev_id).
CREATE TABLE device_lists_outbound (
    user_id TEXT NOT NULL,
    item TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (user_id, item)
);

CREATE TABLE device_lists_outbound_pos (
    user_id TEXT PRIMARY KEY,
    stream_id BIGINT NOT NULL
);
