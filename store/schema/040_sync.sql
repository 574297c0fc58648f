-- Sync and the user's live streams: account data, receipts, presence, to-device inboxes,
-- device-list changes and stored filters.  Each stream's position is a BIGINT stream_id
-- (store/streams.py); rows are written only by the owning user's UserActor, except the
-- to-device inbox (written by the sender's actor) and device-list changes.

-- Global (room_id = '') and per-room account data; tags are room account data "m.tag".
CREATE TABLE account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    content TEXT NOT NULL,
    stream_id BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
);
CREATE INDEX account_data_user_stream ON account_data (user_id, stream_id);
CREATE INDEX account_data_stream ON account_data (stream_id);

-- The latest receipt per (room, type, user, thread); thread_id '' = unthreaded.
CREATE TABLE receipts (
    room_id TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    user_id TEXT NOT NULL,
    thread_id TEXT NOT NULL DEFAULT '',
    event_id TEXT NOT NULL,
    event_stream_ordering BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    stream_id BIGINT NOT NULL,
    PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
);
CREATE INDEX receipts_room_stream ON receipts (room_id, stream_id);
CREATE INDEX receipts_stream ON receipts (stream_id);

CREATE TABLE presence (
    user_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,                      -- online | unavailable | offline
    status_msg TEXT,
    last_active_ts BIGINT NOT NULL,
    currently_active INTEGER NOT NULL DEFAULT 0,
    stream_id BIGINT NOT NULL
);
CREATE INDEX presence_stream ON presence (stream_id);

-- Per-device to-device inbox: a row stays until a later /sync `since` acknowledges it.
CREATE TABLE device_inbox (
    stream_id BIGINT PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    type TEXT NOT NULL,
    content TEXT NOT NULL
);
CREATE INDEX device_inbox_target ON device_inbox (user_id, device_id, stream_id);

-- Rows of device_inbox are deleted, so the stream's high-water mark lives here (one row).
CREATE TABLE device_inbox_position (
    pos BIGINT NOT NULL
);
INSERT INTO device_inbox_position (pos) VALUES (0);

-- sendToDevice idempotency: (sender, sender's device, txn id).
CREATE TABLE device_inbox_txns (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

-- One row per change of a user's device list (device added/deleted, keys changed).
CREATE TABLE device_lists_stream (
    stream_id BIGINT PRIMARY KEY,
    user_id TEXT NOT NULL
);
CREATE INDEX device_lists_stream_user ON device_lists_stream (user_id, stream_id);

CREATE TABLE user_filters (
    user_id TEXT NOT NULL,
    filter_id BIGINT NOT NULL,
    filter_json TEXT NOT NULL,
    PRIMARY KEY (user_id, filter_id)
);
