-- The server this database belongs to (atrium/server_identity.py): the server_name it was
-- created with, which can never change, and the id of the signing key last used with it.
-- One row (id = 1), written at the first start (also the first start after this upgrade).
CREATE TABLE server_identity (
    id INTEGER PRIMARY KEY,
    server_name TEXT NOT NULL,
    signing_key_id TEXT,
    recorded_ts BIGINT NOT NULL
);
