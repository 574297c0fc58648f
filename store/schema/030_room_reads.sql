-- Indexes for the read side of rooms (store/room_reads.py): topological pagination of a
-- room's timeline by (depth, stream_ordering), relation children by position, and the
-- thread list of a room.

CREATE INDEX events_room_topological ON events (room_id, depth, stream_ordering);
CREATE INDEX event_relations_room_rel ON event_relations (room_id, rel_type, relates_to_id);
CREATE INDEX event_relations_parent_stream ON event_relations (relates_to_id, stream_ordering);
