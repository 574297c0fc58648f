"""Memberships of local users in rooms this server does not hold (table
``remote_memberships``, migration ``066_remote_invites.sql``).

Server-server-api "Inviting to a room": an invite to one of our users arrives over
``PUT /invite`` for a room we may know nothing about; "Knocking upon a room" and "Leaving
Rooms (Rejecting Invites)": a knock or a rejection made through another server.  None of
these has a room DAG here (the RoomActor of such a room does not exist), so each is one row:
the member event, the stripped state that describes the room, and a position taken from the
events stream so /sync orders it with every room event (web/sync_rooms.py shows the latest
row of each room in ``invite`` / ``knock`` / ``leave`` until the room's own history is newer).

The events stream's generator starts from ``MAX(events.stream_ordering)``; a row written
after the last event would have its position handed out again after a restart, so the store
moves the stream past its own rows when it is built.

Reads are served from memory: the set of users who have any row is loaded once, so a /sync of
everyone else costs nothing; a user's rows are read once and kept (bounded) until the next
write for that user.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from store.database import Database, Txn
from store.streams import StreamIdGenerator

MAX_CACHED_USERS = 10_000


@dataclass(frozen=True)
class RemoteMembership:
    stream_ordering: int
    event_id: str
    room_id: str
    user_id: str
    sender: str
    membership: str            # invite | knock | leave
    room_version: str
    event: dict[str, Any]
    stripped_state: list[dict[str, Any]]
    origin: str


class RemoteInviteStore:
    def __init__(self, db: Database, stream: StreamIdGenerator) -> None:
        self.db = db
        self.stream = stream
        #: ``fn(user_id, stream_ordering)`` after a row is committed (wake the user's /sync)
        self.on_recorded: list[Callable[[str, int], None]] = []
        self._lock = threading.Lock()
        self._cache: dict[str, list[RemoteMembership]] = {}

        def _load(txn: Txn) -> tuple[int, set[str]]:
            top = int(txn.query_value("SELECT MAX(stream_ordering) FROM remote_memberships",
                                      default=0) or 0)
            users = {r[0] for r in txn.query("SELECT DISTINCT user_id FROM remote_memberships")}
            return top, users

        top, self._users = db.run("remote_memberships_load", _load)
        gap = top - stream.current()
        if gap > 0:   # positions of our rows must never be handed out again
            with stream.allocate(gap):
                pass

    # ------------------------------------------------------------------ writing
    def record(self, user_id: str, room_id: str, membership: str, event: dict[str, Any], *,
               room_version: str, stripped_state: list[dict[str, Any]], origin: str) -> int:
        """Store one membership of ``user_id``; its stream position."""
        payload = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
        stripped = json.dumps(stripped_state, separators=(",", ":"), ensure_ascii=False)

        def _insert(txn: Txn, pos: int) -> None:
            txn.execute(
                "INSERT INTO remote_memberships (stream_ordering, event_id, room_id, user_id,"
                " sender, membership, room_version, event_json, stripped_state, origin,"
                " created_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (pos, event["event_id"], room_id, user_id, event["sender"], membership,
                 room_version, payload, stripped, origin, int(time.time() * 1000)))

        with self.stream.allocate(1) as (pos,):
            self.db.run("remote_membership_record", _insert, pos, write=True)
            with self._lock:
                self._users.add(user_id)
                self._cache.pop(user_id, None)
        for fn in self.on_recorded:
            fn(user_id, pos)
        return pos

    # ------------------------------------------------------------------ reading
    def rows(self, user_id: str) -> list[RemoteMembership]:
        """Every row of ``user_id``, oldest first."""
        if user_id not in self._users:
            return []
        cached = self._cache.get(user_id)
        if cached is not None:
            return cached
        rows = self.db.run("remote_memberships_of", lambda t: t.query(
            "SELECT stream_ordering, event_id, room_id, user_id, sender, membership,"
            " room_version, event_json, stripped_state, origin FROM remote_memberships"
            " WHERE user_id = ? ORDER BY stream_ordering", (user_id,)))
        out = [RemoteMembership(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]),
                                json.loads(r[8]), r[9]) for r in rows]
        with self._lock:
            if len(self._cache) >= MAX_CACHED_USERS:
                self._cache.clear()
            self._cache[user_id] = out
        return out

    def latest(self, user_id: str, upto: int) -> dict[str, RemoteMembership]:
        """room → the user's newest row at or before ``upto``."""
        out: dict[str, RemoteMembership] = {}
        for row in self.rows(user_id):
            if row.stream_ordering <= upto:
                out[row.room_id] = row
        return out

    def latest_in(self, user_id: str, room_id: str) -> RemoteMembership | None:
        """The user's newest row for ``room_id`` (None: none)."""
        found = None
        for row in self.rows(user_id):
            if row.room_id == room_id:
                found = row
        return found
