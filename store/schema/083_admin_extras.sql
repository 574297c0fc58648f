-- More of Synapse's admin API (store/admin_extras.py, web/synapse_admin_redact.py).
--
-- admin_redact_tasks: "redact the events of a user" tasks (POST /_synapse/admin/v1/user/
-- {userId}/redact), run in the background and asked about by redact id.  status is
-- Synapse's task status: scheduled | active | complete | failed.  params (JSON): rooms,
-- reason, limit, use_admin, before_ts, after_ts.  result (JSON): {"failed_redactions":
-- {event_id: why}}, written as it grows.  A task left scheduled or active by a restart is
-- run again at start-up (events already redacted are skipped).
CREATE TABLE admin_redact_tasks (
    redact_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    requester TEXT NOT NULL,
    status TEXT NOT NULL,
    params TEXT NOT NULL,
    result TEXT NOT NULL,
    error TEXT,
    created_ts BIGINT NOT NULL,
    updated_ts BIGINT NOT NULL
);
CREATE INDEX admin_redact_tasks_user ON admin_redact_tasks (user_id, status);
CREATE INDEX admin_redact_tasks_status ON admin_redact_tasks (status);
