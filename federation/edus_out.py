"""Outbound EDUs of shared rooms (server-server-api.md "Typing Notifications", "Receipts",
"Presence"): ``m.typing``, ``m.receipt`` and ``m.presence`` for LOCAL users, sent with
``fed.sender.send_ephemeral`` (in memory, coalesced by key, dropped when stale).

* typing: every start / refresh / stop / expiry of a local user's typing
  (``TypingTracker.listeners``) goes to every other server with joined members in the room;
* receipts: a listener on the receipts stream reads what moved since it last looked and
  sends each local ``m.read`` receipt (threaded ones with ``thread_id``) to the room's other
  servers.  ``m.read.private`` NEVER leaves the server (receipts.md), nor does anything of a
  remote user (no echo of what other servers told us);
* presence: a listener on the presence stream sends each local user's change to every server
  sharing a room with the user (nothing when presence is switched off).

Destinations come from ``current_state`` (joined memberships), through :class:`JoinedServers`:
a small bounded cache per room, dropped when a membership event of the room is persisted
(``RoomService.on_persisted``) and after ``ttl`` seconds anyway.

``install(app, fed, parts)`` also attaches the inbound side (``federation.edus.RoomEdus``) to
``fed.edus``; call it after ``federation.inbound.install``.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any, Callable

import gevent

from federation.edus import RoomEdus
from federation.presence_timers import PresenceTimers
from store.database import Database

log = logging.getLogger(__name__)

PRIVATE_RECEIPT = "m.read.private"
FEDERATED_RECEIPTS = ("m.read",)
ROOM_CACHE = 10_000
ROOM_TTL = 60.0
MAX_ROWS = 1_000           # rows read per look at a stream (the rest on the next turn)


def _server_of(user_id: str) -> str:
    return user_id.partition(":")[2]


class JoinedServers:
    """Which servers have joined members, per room and per user (from ``current_state``)."""

    def __init__(self, db: Database, server_name: str, *, ttl: float = ROOM_TTL,
                 max_rooms: int = ROOM_CACHE, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.db = db
        self.server_name = server_name
        self.ttl = ttl
        self.max_rooms = max_rooms
        self.clock = clock
        self._rooms: OrderedDict[str, tuple[float, frozenset[str]]] = OrderedDict()

    def of_room(self, room_id: str) -> frozenset[str]:
        """Other servers with a user joined to ``room_id`` (ours left out)."""
        now = self.clock()
        hit = self._rooms.get(room_id)
        if hit is not None and now - hit[0] < self.ttl:
            self._rooms.move_to_end(room_id)
            return hit[1]
        members = self.db.run("room_joined_servers", lambda t: [r[0] for r in t.query(
            "SELECT state_key FROM current_state WHERE room_id = ? AND type = 'm.room.member'"
            " AND membership = 'join'", (room_id,))])
        servers = frozenset(s for s in map(_server_of, members)
                            if s and s != self.server_name)
        self._rooms[room_id] = (now, servers)
        self._rooms.move_to_end(room_id)
        while len(self._rooms) > self.max_rooms:
            self._rooms.popitem(last=False)
        return servers

    def sharing_with(self, user_id: str) -> set[str]:
        """Other servers with a user joined to any room ``user_id`` is joined to."""
        rooms = self.db.run("user_joined_rooms", lambda t: [r[0] for r in t.query(
            "SELECT room_id FROM current_state WHERE type = 'm.room.member'"
            " AND state_key = ? AND membership = 'join'", (user_id,))])
        out: set[str] = set()
        for room_id in rooms:
            out |= self.of_room(room_id)
        return out

    def invalidate(self, room_id: str) -> None:
        self._rooms.pop(room_id, None)

    def on_persisted(self, room_id: str, events: Any) -> None:
        """RoomService hook: a membership event changes who is joined."""
        if any(ev.get("type") == "m.room.member" for ev, _ in events):
            self._rooms.pop(room_id, None)


class _StreamTail:
    """Follows one stream from the position it had at start: ``moved(pos)`` (a stream
    listener, called in the writer's greenlet) only records the position; one worker
    greenlet reads the rows in (done, pos] and hands them to ``deliver``."""

    def __init__(self, name: str, start: int, read: Callable[[int, int], list[tuple]],
                 deliver: Callable[[tuple], None]) -> None:
        self.name = name
        self.done = start
        self.target = start
        self._read = read
        self._deliver = deliver
        self._worker: Any = None

    def moved(self, pos: int) -> None:
        if pos > self.target:
            self.target = pos
        if self._worker is None and self.target > self.done:
            self._worker = gevent.spawn(self._run)

    def _run(self) -> None:
        try:
            while self.target > self.done:
                upto = self.target
                rows = self._read(self.done, upto)
                if len(rows) >= MAX_ROWS:
                    upto = max(int(r[-1]) for r in rows)  # the rest on the next turn
                for row in rows:
                    try:
                        self._deliver(row)
                    except Exception:  # noqa: BLE001 - one row must not stop the others
                        log.exception("%s: outbound EDU not sent", self.name)
                self.done = upto
        except Exception:  # noqa: BLE001 - ephemeral: what was missed is not retried
            log.exception("%s: reading the stream failed", self.name)
            self.done = self.target
        finally:
            self._worker = None

    def flush(self, timeout: float) -> None:
        if self._worker is not None:
            self._worker.join(timeout=timeout)


class RoomEduSender:
    """Builds and routes the outbound typing / receipt / presence EDUs (module docstring).
    ``sender()`` returns ``fed.sender`` (None: nothing is sent)."""

    def __init__(self, server_name: str, servers: JoinedServers,
                 sender: Callable[[], Any], *, presence_enabled: bool = True) -> None:
        self.server_name = server_name
        self.servers = servers
        self._sender = sender
        self.presence_enabled = presence_enabled
        self._suffix = ":" + server_name
        self.tails: list[_StreamTail] = []

    def _local(self, user_id: Any) -> bool:
        return isinstance(user_id, str) and user_id.endswith(self._suffix)

    def _send(self, destinations: Any, edu_type: str, content: dict[str, Any],
              key: str) -> int:
        sender = self._sender()
        if sender is None:
            return 0
        n = 0
        for d in sorted(destinations):
            try:
                sender.send_ephemeral(d, edu_type, content, key=key)
                n += 1
            except Exception:  # noqa: BLE001 - ephemeral: one destination must not stop others
                log.exception("%s EDU to %s not queued", edu_type, d)
        return n

    # -- typing ---------------------------------------------------------------------------
    def on_typing(self, room_id: str, user_id: str, typing: bool) -> int:
        """TypingTracker listener; the number of destinations told."""
        if not self._local(user_id):
            return 0
        content = {"room_id": room_id, "user_id": user_id, "typing": bool(typing)}
        return self._send(self.servers.of_room(room_id), "m.typing", content,
                          f"{room_id}|{user_id}")

    # -- receipts -------------------------------------------------------------------------
    def send_receipt(self, room_id: str, receipt_type: str, user_id: str, thread_id: str,
                     event_id: str, ts: int) -> int:
        if receipt_type == PRIVATE_RECEIPT or receipt_type not in FEDERATED_RECEIPTS \
                or not self._local(user_id):
            return 0
        data: dict[str, Any] = {"ts": int(ts)}
        if thread_id:
            data["thread_id"] = thread_id
        content = {room_id: {receipt_type: {user_id: {"event_ids": [event_id],
                                                      "data": data}}}}
        return self._send(self.servers.of_room(room_id), "m.receipt", content,
                          f"{room_id}|{receipt_type}|{user_id}|{thread_id}")

    def _receipt_row(self, row: tuple) -> None:
        room_id, receipt_type, user_id, thread_id, event_id, ts, _ = row
        self.send_receipt(room_id, receipt_type, user_id, thread_id or "", event_id, ts)

    # -- presence -------------------------------------------------------------------------
    def send_presence(self, user_id: str, state: str, status_msg: str | None,
                      last_active_ts: int, currently_active: bool,
                      now_ms: int | None = None) -> int:
        if not self.presence_enabled or not self._local(user_id):
            return 0
        now = int(time.time() * 1000) if now_ms is None else now_ms
        entry: dict[str, Any] = {"user_id": user_id, "presence": state,
                                 "last_active_ago": max(0, now - int(last_active_ts)),
                                 "currently_active": bool(currently_active)}
        if status_msg is not None:
            entry["status_msg"] = status_msg
        return self._send(self.servers.sharing_with(user_id), "m.presence",
                          {"push": [entry]}, user_id)

    def _presence_row(self, row: tuple) -> None:
        user_id, state, status_msg, last_active_ts, currently_active, _ = row
        self.send_presence(user_id, state, status_msg, int(last_active_ts),
                           bool(currently_active))

    # -- stream tails ---------------------------------------------------------------------
    def follow(self, db: Database, receipts_stream: Any, presence_stream: Any) -> None:
        """Listen on the receipts and presence streams (from their current positions)."""
        suffix = "%" + self._suffix

        def read_receipts(lo: int, hi: int) -> list[tuple]:
            return db.run("outbound_receipts", lambda t: t.query(
                "SELECT room_id, receipt_type, user_id, thread_id, event_id, ts, stream_id"
                " FROM receipts WHERE stream_id > ? AND stream_id <= ? AND user_id LIKE ?"
                " AND receipt_type <> ? ORDER BY stream_id LIMIT ?",
                (lo, hi, suffix, PRIVATE_RECEIPT, MAX_ROWS)))

        def read_presence(lo: int, hi: int) -> list[tuple]:
            return db.run("outbound_presence", lambda t: t.query(
                "SELECT user_id, state, status_msg, last_active_ts, currently_active,"
                " stream_id FROM presence WHERE stream_id > ? AND stream_id <= ?"
                " AND user_id LIKE ? ORDER BY stream_id LIMIT ?",
                (lo, hi, suffix, MAX_ROWS)))

        receipts = _StreamTail("receipts", receipts_stream.current(), read_receipts,
                               self._receipt_row)
        receipts_stream.add_listener(receipts.moved)
        self.tails.append(receipts)
        if self.presence_enabled:
            presence = _StreamTail("presence", presence_stream.current(), read_presence,
                                   self._presence_row)
            presence_stream.add_listener(presence.moved)
            self.tails.append(presence)

    def flush(self, timeout: float = 1.0) -> None:
        """Wait (bounded) for the stream tails: for tests and shutdown."""
        for tail in self.tails:
            tail.flush(timeout)


def install(app: Any, fed: Any, parts: dict[str, Any]) -> RoomEduSender | None:
    """Wire typing / receipts / presence both ways (once): the outbound sender on the
    typing tracker and the receipts and presence streams, and ``fed.edus.room_edus``."""
    if "room_edus_out" in fed.extras:
        return fed.extras["room_edus_out"]
    sync = parts.get("sync")
    rooms = parts.get("rooms")
    if sync is None or rooms is None:
        return None
    servers = JoinedServers(fed.db, fed.server_name)
    out = RoomEduSender(fed.server_name, servers, lambda: fed.sender,
                        presence_enabled=bool(getattr(sync, "presence_enabled", True)))
    fed.extras["room_edus_out"] = out
    fed.extras["joined_servers"] = servers
    rooms.on_persisted.append(servers.on_persisted)
    sync.typing.listeners.append(out.on_typing)
    out.follow(fed.db, sync.receipts.stream, sync.presence.stream)
    if fed.edus is not None:
        fed.edus.room_edus = RoomEdus.from_parts(fed.server_name, sync, rooms)
        if out.presence_enabled:
            timers = PresenceTimers(fed.server_name, sync.presence, fed.edus.room_edus, out,
                                    sync.notifier)
            fed.extras["presence_timers"] = timers
            timers.start()
    return out
