-- Memberships of local users in rooms this server does not take part in (Federation II):
-- an invite received over /invite, a knock made through /send_knock, and the leave that
-- rejects such an invite or rescinds such a knock.  The room's DAG is not here (we hold
-- no state of the room), so these rows are what /sync shows in its invite / knock / leave
-- sections until the user joins.  stream_ordering is taken from the events stream, so a
-- /sync token orders them with every room event.
CREATE TABLE remote_memberships (
    stream_ordering BIGINT PRIMARY KEY,
    event_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    membership TEXT NOT NULL,                 -- invite | knock | leave
    room_version TEXT NOT NULL,
    event_json TEXT NOT NULL,                 -- the member event (PDU + event_id)
    stripped_state TEXT NOT NULL,             -- JSON list of stripped state events
    origin TEXT NOT NULL,                     -- the server that can be asked about the room
    created_ts BIGINT NOT NULL
);
CREATE INDEX remote_memberships_user ON remote_memberships (user_id, stream_ordering);
