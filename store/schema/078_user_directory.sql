-- The user directory (client-server-api "User Directory"), SQLite.
--
-- user_directory: one row per user the directory may show: local users (from registration
-- on, with their global profile) and users of other servers met in rooms this server is in
-- (with the profile of their membership, preferring public rooms').  *_norm are the
-- normalised word forms ranking compares against; in_room / in_public_room say whether the
-- user is joined to a room this server is in / to such a room that is public (join rule
-- public or history world_readable), kept current from room state by store/user_directory.py.
CREATE TABLE user_directory (
    id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL UNIQUE,
    display_name TEXT,
    avatar_url TEXT,
    is_local INTEGER NOT NULL,
    localpart_norm TEXT NOT NULL,
    display_norm TEXT NOT NULL,
    in_room INTEGER NOT NULL DEFAULT 0,
    in_public_room INTEGER NOT NULL DEFAULT 0,
    profile_public INTEGER NOT NULL DEFAULT 0
);
-- the words of a user's id and display name; row id = user_directory.id
CREATE VIRTUAL TABLE user_directory_search USING fts5(
    value,
    tokenize = 'unicode61 remove_diacritics 2',
    prefix = '1 2 3'
);

-- rooms this server is in (a local user is joined), and whether each is public
CREATE TABLE user_directory_rooms (
    room_id TEXT PRIMARY KEY,
    is_public INTEGER NOT NULL
);

-- how far the directory has followed the events stream; built = 0 until the first full
-- build from existing users and rooms has run
CREATE TABLE user_directory_position (
    id INTEGER PRIMARY KEY,
    stream_ordering BIGINT NOT NULL,
    built INTEGER NOT NULL
);
INSERT INTO user_directory_position (id, stream_ordering, built) VALUES (1, 0, 0);
