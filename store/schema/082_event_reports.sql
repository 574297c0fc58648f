-- Reports of content (client-server-api "Reporting content") and their admin API (Synapse's
-- "Event Reports" / "User Reports"), SQLite: ids from AUTOINCREMENT, so the id of a deleted
-- report is never handed out again.  The PostgreSQL version (082_event_reports.postgres.sql)
-- differs only in how ids are made.
--
-- event_reports: a user reported an event of a room they were joined to and could see;
-- reason and score as given (score: any integer; removed from the spec in v1.18).
CREATE TABLE event_reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ts BIGINT NOT NULL,          -- ms
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    user_id TEXT NOT NULL,                -- the reporter
    reason TEXT,
    score BIGINT
);
CREATE INDEX event_reports_received ON event_reports (received_ts, id);

-- room_reports: a user reported a room this server knows (joined or not)
CREATE TABLE room_reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ts BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX room_reports_received ON room_reports (received_ts, id);

-- user_reports: a user reported a local user that exists
CREATE TABLE user_reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ts BIGINT NOT NULL,
    target_user_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX user_reports_received ON user_reports (received_ts, id);
