-- Message search (client-server-api "Server Side Search"), SQLite: an FTS5 index of the
-- searchable text of timeline events (m.room.message content.body, m.room.name
-- content.name, m.room.topic content.topic and its text/plain m.topic body), one row per
-- event, the row id being the event's stream_ordering (so "most recent first" walks the
-- index backwards and a hit joins events on its primary key).  Porter stemming, like
-- PostgreSQL's 'english' configuration.  Filled after commit by store/search.py's indexer,
-- which records how far it got in search_index_position (a restart resumes there, and
-- existing history is indexed in the background from position 0).
CREATE VIRTUAL TABLE event_search USING fts5(
    value,
    key UNINDEXED,
    tokenize = 'porter unicode61 remove_diacritics 2'
);

CREATE TABLE search_index_position (
    id INTEGER PRIMARY KEY,
    stream_ordering BIGINT NOT NULL
);
INSERT INTO search_index_position (id, stream_ordering) VALUES (1, 0);
