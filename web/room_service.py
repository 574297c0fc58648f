"""The rooms part of the wiring: the room supervisor over RoomActors, the event and state
stores, and the helpers handlers use to talk to a room (``ask`` with the request's trace id)
or read it (straight from the store: reads never go through the actor)."""
from __future__ import annotations

import secrets
import string
import time
from typing import Any, Callable, Sequence

from flask import g, request

from atrium.config import Config
from atrium.errors import MatrixError
from protocol.canonical import CanonicalJsonError
from protocol.events import build_event
from protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from store.database import Database
from store.events import EventStore, StoredEvent
from store.remote_invites import RemoteInviteStore
from store.state import StateGroupStore
from supervision import Supervisor, Tracer

from actors.room import RoomActor, RoomDeps
from actors.room_messages import EventSpec, Send, Sent

_ID_CHARS = string.ascii_letters


class RoomService:
    def __init__(self, config: Config, db: Database, signing_key: Any, tracer: Tracer) -> None:
        self.config = config
        self.db = db
        self.state_groups = StateGroupStore(db, cache_size=config.caches.state_groups)
        self.events = EventStore(db, self.state_groups, cache_size=config.caches.events)
        # memberships of local users in rooms we do not hold (remote invites, knocks and
        # their rejections): federation/membership.py and federation/join.py write them,
        # web/sync_rooms.py shows them
        self.remote_invites = RemoteInviteStore(db, self.events.stream)
        self._last_create_ts = 0
        self.on_persisted: list[Callable[[str, Sequence[tuple[dict[str, Any], int]]], None]] = []
        self.deps = RoomDeps(db=db, events=self.events, state_groups=self.state_groups,
                             server_name=config.server_name, signing_key=signing_key,
                             on_persisted=self.on_persisted)
        a = config.actors
        self.supervisor = Supervisor(
            "rooms", lambda room_id: RoomActor(room_id, self.deps), tracer=tracer,
            max_mailbox=a.mailbox_size, ask_timeout=a.ask_timeout, idle_timeout=a.idle_timeout,
            restart_delay=a.restart_delay, max_restarts=a.max_restarts,
            restart_window=a.restart_window, park_duration=a.park_duration)

    # ---------------------------------------------------------------- talking to rooms
    def ask(self, room_id: str, msg: Any) -> Any:
        return self.supervisor.ask(room_id, msg, trace_id=getattr(g, "request_id", None),
                                   sender=f"web {request.method} {request.path}"[:120])

    def send(self, room_id: str, spec: EventSpec, *, txn: tuple[str, str] | None = None,
             redacts: str | None = None) -> Sent:
        self.require_room(room_id)
        return self.ask(room_id, Send(spec=spec, txn=txn, redacts=redacts))

    # ---------------------------------------------------------------- reading
    def room_version(self, room_id: str) -> RoomVersion | None:
        return self.events.room_version(room_id)

    def require_room(self, room_id: str) -> RoomVersion:
        rv = self.room_version(room_id)
        if rv is None:
            raise MatrixError(404, "M_NOT_FOUND", "Unknown room")
        return rv

    def membership(self, room_id: str, user_id: str) -> tuple[str | None, str | None]:
        """(membership, event_id) of the user's current membership in the room."""
        r = self.db.run("membership", lambda t: t.query_one(
            "SELECT membership, event_id FROM current_state WHERE room_id = ?"
            " AND type = 'm.room.member' AND state_key = ?", (room_id, user_id)))
        return (r[0], r[1]) if r else (None, None)

    def current_state_event(self, room_id: str, etype: str, skey: str) -> StoredEvent | None:
        eid = self.db.run("state_event", lambda t: t.query_value(
            "SELECT event_id FROM current_state WHERE room_id = ? AND type = ?"
            " AND state_key = ?", (room_id, etype, skey)))
        return self.events.get_event(eid) if eid else None

    def next_create_ts(self) -> int:
        """Milliseconds now, but strictly increasing within this process."""
        ts = max(int(time.time() * 1000), self._last_create_ts + 1)
        self._last_create_ts = ts
        return ts

    def build_create_event(self, rv: RoomVersion, sender: str, content: dict[str, Any]
                           ) -> dict[str, Any]:
        """A new room's signed ``m.room.create`` (with a fresh room id, except where the
        version derives it from the event's hash).  Content the room version cannot hold
        (a float, an integer out of range in a strict version) is the client's error: 400
        M_BAD_JSON, as for every other event (``RoomActor._build``)."""
        room_id = None if rv.room_id_is_create_event_hash else self.new_room_id()
        try:
            # v12: the room id is the create event's hash; a per-process monotonic timestamp
            # keeps two identical creates in the same millisecond from colliding
            return build_event(rv, room_id=room_id, sender=sender, type="m.room.create",
                               content=content, state_key="", prev_events=[], auth_events=[],
                               depth=1, origin_server_ts=self.next_create_ts(),
                               server_name=self.config.server_name,
                               signing_key=self.deps.signing_key)
        except CanonicalJsonError as e:
            raise MatrixError(400, "M_BAD_JSON", f"The create content cannot go into room"
                              f" version {rv.identifier}: {e}") from None

    def new_room_id(self) -> str:
        return "!" + "".join(secrets.choice(_ID_CHARS) for _ in range(18)) + \
            ":" + self.config.server_name

    def resolve_room_version(self, requested: Any) -> RoomVersion:
        if requested is not None and not isinstance(requested, str):
            raise MatrixError(400, "M_BAD_JSON", "room_version must be a string")
        v = self.config.default_room_version if requested is None else requested
        if not isinstance(v, str) or v not in KNOWN_ROOM_VERSIONS:
            raise MatrixError(400, "M_UNSUPPORTED_ROOM_VERSION",
                              f"Room version {v!r} is not supported")
        return KNOWN_ROOM_VERSIONS[v]
