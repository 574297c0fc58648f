-- The rooms half of Synapse's admin API (store/admin_rooms.py, web/synapse_admin_rooms.py,
-- web/synapse_admin_room_delete.py).
--
-- blocked_rooms: rooms no local user may join, be invited to or knock on (403), over
-- federation too (incoming invites are refused); the admin who blocked it.  A room need not
-- be known here to be blocked (Synapse blocks unknown rooms the same way).
CREATE TABLE blocked_rooms (
    room_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    blocked_ts BIGINT NOT NULL
);

-- Background room tasks: a room delete (kind 'delete': shutdown, then purge if asked) or a
-- history purge (kind 'purge_history').  status is Synapse's task status: scheduled |
-- active | complete | failed.  params and result are JSON (result: the delete's
-- shutdown_room answer as it grows).  A task left scheduled or active by a restart is
-- resumed at start-up (every step is idempotent).
CREATE TABLE admin_room_tasks (
    task_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    room_id TEXT NOT NULL,
    status TEXT NOT NULL,
    requester TEXT NOT NULL,
    params TEXT NOT NULL,
    result TEXT,
    error TEXT,
    created_ts BIGINT NOT NULL,
    updated_ts BIGINT NOT NULL
);
CREATE INDEX admin_room_tasks_room ON admin_room_tasks (room_id, created_ts);
CREATE INDEX admin_room_tasks_status ON admin_room_tasks (status);
