-- The user directory (client-server-api "User Directory"), PostgreSQL: as the SQLite
-- version (073_user_directory.sql), with the words of each user's id and display name in a
-- tsvector column under a GIN index instead of an FTS5 table.
CREATE TABLE user_directory (
    user_id TEXT PRIMARY KEY,
    display_name TEXT,
    avatar_url TEXT,
    is_local INTEGER NOT NULL,
    localpart_norm TEXT NOT NULL,
    display_norm TEXT NOT NULL,
    in_room INTEGER NOT NULL DEFAULT 0,
    in_public_room INTEGER NOT NULL DEFAULT 0,
    profile_public INTEGER NOT NULL DEFAULT 0,
    vector TSVECTOR NOT NULL
);
CREATE INDEX user_directory_vector ON user_directory USING GIN (vector);

CREATE TABLE user_directory_rooms (
    room_id TEXT PRIMARY KEY,
    is_public INTEGER NOT NULL
);

CREATE TABLE user_directory_position (
    id INTEGER PRIMARY KEY,
    stream_ordering BIGINT NOT NULL,
    built INTEGER NOT NULL
);
INSERT INTO user_directory_position (id, stream_ordering, built) VALUES (1, 0, 0);
