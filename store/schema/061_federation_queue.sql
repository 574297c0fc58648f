-- Outbound federation (server-server-api "Transactions", "EDUs", "Send-to-device messaging",
-- "Device Management"): per-destination delivery state and the durable EDU outbox.
-- Written by the destination's RemoteServerActor (federation/remote_server.py), by
-- FederationSender.enqueue_durable inside the caller's transaction (outbox rows), and by
-- FederationSender.wake / reset_connection (back-off reset).  See store/federation_queue.py.

-- One row per destination we have tried to send to.  Times in ms since the epoch.
-- retry_interval > 0 means "backing off until retry_last_ts + retry_interval".
CREATE TABLE federation_destinations (
    destination TEXT PRIMARY KEY,
    failure_count INTEGER NOT NULL DEFAULT 0,   -- consecutive failed transactions
    failure_ts BIGINT,                          -- first failure of the current outage
    retry_last_ts BIGINT NOT NULL DEFAULT 0,    -- last failed attempt
    retry_interval BIGINT NOT NULL DEFAULT 0,   -- ms; 0 = healthy
    last_success_ts BIGINT,
    last_failure TEXT,                          -- why the last transaction failed
    last_failure_at BIGINT,
    pdu_position BIGINT                         -- last acknowledged events stream_ordering
);

-- Durable EDUs (m.direct_to_device, m.device_list_update, m.signing_key_update) not yet
-- acknowledged by their destination.  A row is deleted only once the destination answered
-- 200 to a transaction holding it (or refused that transaction for good, 4xx).
-- stream_id orders rows (allocated by the process, see FederationQueueStore).
CREATE TABLE federation_outbox (
    stream_id BIGINT PRIMARY KEY,
    destination TEXT NOT NULL,
    edu_type TEXT NOT NULL,
    content TEXT NOT NULL,                      -- JSON
    created_ts BIGINT NOT NULL
);
CREATE INDEX federation_outbox_destination ON federation_outbox (destination, stream_id);
