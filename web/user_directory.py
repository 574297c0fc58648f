"""``POST /_matrix/client/v3/user_directory/search`` (client-server-api "User Directory",
users.yaml) and the wiring that keeps the directory current (store/user_directory.py says
who is found and how results rank).

Inputs: ``search_term`` (required string), ``limit`` (integer, default 10, at most 50;
Synapse's bounds).  The answer is ``{"results": [{user_id, display_name?, avatar_url?}],
"limited": bool}``; with ``user_directory.enabled: false`` it is always empty.  Guests may
not search (403 ``M_GUEST_ACCESS_FORBIDDEN``, as Synapse).

What moves the directory: the events stream (memberships, join rules, history visibility:
a :class:`StreamFollower` woken by the rooms' ``on_persisted`` hook, which is how remote
users met in shared rooms arrive too), registration and deactivation (accounts hooks, in
their transactions), and profile changes (``profile_listeners``).  A search first waits
briefly for the follower to reach the present, so a user who just joined a room is found.
The first start over an existing database builds the directory from the users and rooms
there, in the background, with progress in the log.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import gevent
from flask import Blueprint, Flask, jsonify

from atrium.errors import bad_json, invalid_param, missing_param
from atrium.user_directory_config import UserDirectoryConfig, parse_user_directory_config
from store.search import StreamFollower
from store.user_directory import DirectoryStore, SearchOptions
from web.auth import require_auth
from web.http import json_body

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 10
MAX_LIMIT = 50
MAX_TERM = 1024
STEP_BATCH = 500
BARRIER_TIMEOUT = 2.0        # s a search waits for the directory to reach the present
BUILDING = 50_000            # stream positions behind: catching up on history, don't wait
BUILD_WAIT = 0.25            # s a search waits while the first build runs
_WAKE_TYPES = {"m.room.member", "m.room.join_rules", "m.room.history_visibility"}


class DirectoryFollower:
    """The follower's step: the first build when the directory has never been built, then
    the events stream."""

    def __init__(self, store: DirectoryStore, built: bool) -> None:
        self.store, self.built = store, built

    def step(self, frm: int, upto: int) -> tuple[int, bool]:
        if not self.built:
            self._build(upto)
            self.built = True
            return upto, True
        return self.store.step(frm, upto, STEP_BATCH)

    def _build(self, upto: int) -> None:
        users, rooms = self.store.build_plan()
        big = len(users) + len(rooms) > 1000
        if big:
            log.info("user directory: building from %d users and %d rooms", len(users),
                     len(rooms))
        for i in range(0, len(users), 500):
            self.store.build_users(users[i:i + 500])
            gevent.sleep(0)
        told = time.monotonic()
        for i, room_id in enumerate(rooms):
            self.store.build_room(room_id)
            gevent.sleep(0)
            if big and time.monotonic() - told >= 5:
                told = time.monotonic()
                log.info("user directory: %d of %d rooms", i + 1, len(rooms))
        self.store.finish_build(upto)
        if big:
            log.info("user directory: built")


def parse_search(body: dict[str, Any]) -> tuple[str, int]:
    term = body.get("search_term")
    if term is None:
        raise missing_param("Missing 'search_term'")
    if not isinstance(term, str):
        raise bad_json("'search_term' must be a string")
    if len(term) > MAX_TERM:
        raise invalid_param(f"'search_term' may be at most {MAX_TERM} characters")
    limit = body.get("limit", DEFAULT_LIMIT)
    if limit is None:
        limit = DEFAULT_LIMIT
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise bad_json("'limit' must be an integer")
    return term, max(0, min(limit, MAX_LIMIT))


def register(app: Flask, runtime: Any) -> None:
    config: UserDirectoryConfig = parse_user_directory_config(runtime.config.raw)
    rooms = runtime.parts["rooms"]
    accounts = runtime.parts["accounts"]
    store = DirectoryStore(runtime.db, runtime.config.server_name)
    position, built = store.position()
    worker = DirectoryFollower(store, built)
    follower = StreamFollower("user directory", rooms.events.stream, worker.step,
                              store.save_position, position)
    if not built:   # the build runs even on an empty stream
        follower.position = min(follower.position, -1)
    opts = SearchOptions(all_users=config.search_all_users,
                         prefer_local=config.prefer_local_users,
                         exclude_remote=config.exclude_remote_users)
    runtime.parts["user_directory"] = store
    runtime.parts["user_directory_follower"] = follower

    def on_persisted(room_id: str, events: Sequence[tuple[dict[str, Any], int]]) -> None:
        if any(ev.get("type") in _WAKE_TYPES for ev, _ in events):
            follower.wake()

    rooms.on_persisted.append(on_persisted)
    accounts.on_user_registered.append(lambda txn, user_id: store.refresh_local_txn(
        txn, [user_id]))
    accounts.on_user_deactivated.append(store.delete_user_txn)

    def on_profile_changed(user_id: str, field: str, value: str | None) -> None:
        store.refresh_local(user_id)

    runtime.parts.setdefault("profile_listeners", []).append(on_profile_changed)
    runtime.shutdown_hooks.append(follower.stop)
    follower.start()
    bp = Blueprint("user_directory", __name__)

    @bp.post("/_matrix/client/v3/user_directory/search")
    def search() -> Any:
        """POST /_matrix/client/v3/user_directory/search"""
        req = require_auth()
        term, limit = parse_search(json_body())
        if not config.enabled:
            return jsonify({"results": [], "limited": False})
        now = rooms.events.stream.current()
        if now - follower.position <= BUILDING:   # else: history is being read, answer now
            follower.wait_for(now, BARRIER_TIMEOUT if worker.built else BUILD_WAIT)
        results, limited = store.search(req.user_id, term, limit, opts)
        return jsonify({"results": results, "limited": limited})

    app.register_blueprint(bp)
