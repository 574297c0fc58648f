-- Federation II: events of OTHER servers that we, as the resident server, relay to the
-- room's other servers (server-server-api "Joining Rooms", "Leaving Rooms", "Knocking":
-- a join / leave / knock accepted through send_join / send_leave / send_knock reached only
-- us).  The outbound PDU reads (store/federation_queue.py) take these events as well as our
-- own, so the live window and the catch-up replay send them like ours; `origin` (the server
-- that sent the event to us) never gets it back.
CREATE TABLE federation_relayed (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    origin TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
