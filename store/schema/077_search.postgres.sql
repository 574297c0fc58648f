-- Message search (client-server-api "Server Side Search"), PostgreSQL: a tsvector
-- ('english' configuration) of the searchable text of each timeline event (m.room.message
-- content.body, m.room.name content.name, m.room.topic content.topic and its text/plain
-- m.topic body) with a GIN index; keyed by the event's stream_ordering.  Filled after
-- commit by store/search.py's indexer, which records how far it got in
-- search_index_position (a restart resumes there, and existing history is indexed in the
-- background from position 0).
CREATE TABLE event_search (
    stream_ordering BIGINT PRIMARY KEY,
    key TEXT NOT NULL,
    vector TSVECTOR NOT NULL
);
CREATE INDEX event_search_vector ON event_search USING GIN (vector);

CREATE TABLE search_index_position (
    id INTEGER PRIMARY KEY,
    stream_ordering BIGINT NOT NULL
);
INSERT INTO search_index_position (id, stream_ordering) VALUES (1, 0);
