-- Push (client-server-api modules/push.md): the user's own push rules, pushers, the push
-- actions computed for each local member of a room for each new event, and the evaluator's
-- durable progress.  push_rules rows are written only by the owner's UserActor; the
-- push_actions tables only by the push evaluator (actors/push_evaluator.py); pushers by the
-- /pushers/set handler and the push sender (failure bookkeeping, rejected pushkeys).

-- A user's rules that differ from the server defaults: user-defined rules per kind (most
-- important first) and enabled/actions overrides of any rule.  version bumps on each write
-- so caches (the evaluator's ruleset cache) can check freshness with one query.
CREATE TABLE push_rules (
    user_id TEXT PRIMARY KEY,
    rules TEXT NOT NULL,                      -- JSON {kind: [rule, ...]}
    overrides TEXT NOT NULL,                  -- JSON [[kind, rule_id, {"enabled", "actions"}]]
    version BIGINT NOT NULL
);

CREATE TABLE pushers (
    user_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    pushkey TEXT NOT NULL,
    kind TEXT NOT NULL,
    app_display_name TEXT NOT NULL,
    device_display_name TEXT NOT NULL,
    profile_tag TEXT,
    lang TEXT NOT NULL,
    data TEXT NOT NULL,                       -- JSON, including url
    device_id TEXT,                           -- the device that set it
    pushkey_ts BIGINT NOT NULL,               -- ms, when the pushkey was last set
    last_stream_ordering BIGINT NOT NULL,     -- notifications up to here were sent
    last_success_ts BIGINT,
    failing_since_ts BIGINT,
    PRIMARY KEY (user_id, app_id, pushkey)
);
CREATE INDEX pushers_app_key ON pushers (app_id, pushkey);

-- One row per (user, event) the user's push rules said to notify about.
CREATE TABLE event_push_actions (
    user_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    thread_id TEXT NOT NULL,                  -- 'main' or the thread root's event id
    actions TEXT NOT NULL,                    -- JSON list
    highlight INTEGER NOT NULL,
    ts BIGINT NOT NULL,                       -- ms, when the notification was generated
    PRIMARY KEY (user_id, event_id)
);
CREATE INDEX event_push_actions_room ON event_push_actions (user_id, room_id, stream_ordering);
CREATE INDEX event_push_actions_user ON event_push_actions (user_id, stream_ordering);

-- A local user's latest own event per (room, thread): sending an event reads up to it.
CREATE TABLE event_push_own (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, thread_id)
);

-- Events up to pos have been evaluated (one row); start-up catches up from here.
CREATE TABLE push_evaluator_position (
    pos BIGINT NOT NULL
);
INSERT INTO push_evaluator_position (pos) SELECT COALESCE(MAX(stream_ordering), 0) FROM events;
