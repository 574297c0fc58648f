"""``GET /events`` and ``GET /events/{eventId}``: the event stream of the deprecated sync API
(old_sync.yaml) and its peeking form for rooms the user is not joined to (peeking_events.yaml,
client-server-api "Room Previews").  Both are deprecated but still served, as Synapse does.

``/events`` is served from the same streams, tokens and notifier as /sync: ``from`` and
``end`` are /sync tokens (web/sync_token.py), and a long-poll (``timeout`` ms, 30 s by
default as in Synapse) sleeps on one notifier waiter until a stream moves for the user.  The
``chunk`` holds, in this order:

* room events after ``from`` in the rooms the user was joined to (and the user's own
  membership events anywhere: invites, kicks), the first ``limit`` (default 10) by stream
  position, with history visibility and ignored users applied; when cut at ``limit``, ``end``
  stops at the last one so the next request goes on from there;
* ``m.presence`` of users sharing a room with the user (``content.user_id`` names the user,
  as the old API did), plus the presence of who joined in a join event of the chunk;
* ``m.typing`` and ``m.receipt`` of the joined rooms, with ``room_id``; private receipts only
  to their owner;
* account data: global ``{type, content}``, per room (tags are ``m.tag``) with ``room_id``.

With ``room_id`` the stream is that room's only.  A room the user is not joined to may be
peeked into only if its current ``m.room.history_visibility`` is ``world_readable`` (else 403
M_FORBIDDEN); the events shown are those the user may see (world-readable ones).  The
notifier wakes users by room membership, so a peeker waits under a key of its own which
:class:`PeekWatch` wakes from the room's hooks (events, typing, receipts); presence changes
do not wake a peek, they come with its next answer.

``end`` moves only the streams served here (events, typing, receipts, account data,
presence); the to-device and device-list positions stay those of ``from``, so an /events
token handed to /sync never acknowledges to-device messages it did not deliver.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

from flask import Blueprint, Flask, jsonify, request

from atrium.errors import MatrixError, invalid_param
from protocol.ids import is_valid_room_id
from protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from store.events import StoredEvent
from store.legacy_reads import LegacyReads
from store.presence import PresenceRow
from store.receipts import Receipt
from store.remote_invites import RemoteMembership
from web.auth import require_auth
from web.client_events import client_event, prefetch
from web.http import query_int
from web.notifier import Notifier, Waiter
from web.room_service import RoomService
from web.sync import MAX_TIMEOUT_MS
from web.sync_token import SyncToken
from web.visibility import Visibility, history_visibility, served_event

from actors.user_messages import SyncStarted

V3 = "/_matrix/client/v3"
DEFAULT_TIMEOUT_MS = 30_000
DEFAULT_LIMIT = 10
MAX_LIMIT = 1000
PRIVATE_RECEIPT = "m.read.private"
#: the streams /events serves (the others keep the ``from`` token's positions)
SERVED = ("events", "typing", "receipts", "account_data", "presence")


def register(app: Flask, runtime: Any) -> None:
    """The /events routes, and the /initialSync ones (web/initial_sync.py): one legacy
    sync area, registered by web/areas.py after the sync area it reads from."""
    from web import initial_sync

    svc = runtime.parts["sync"]
    rooms: RoomService = runtime.parts["rooms"]
    reads = LegacyReads(runtime.db)
    peeks = PeekWatch(svc)
    runtime.parts["legacy_peeks"] = peeks
    bp = Blueprint("legacy_events", __name__)

    @bp.get(f"{V3}/events")
    def get_events() -> Any:
        """GET /_matrix/client/v3/events"""
        req = require_auth(allow_guest=True)
        room_id = request.args.get("room_id")
        if req.is_guest and room_id is None:
            raise MatrixError(400, "M_MISSING_PARAM", "Guest users must specify room_id")
        raw_from = request.args.get("from") or None
        since = SyncToken.decode(raw_from) if raw_from not in (None, "END") else None
        timeout = query_int("timeout", DEFAULT_TIMEOUT_MS, minimum=0,
                            maximum=MAX_TIMEOUT_MS) or 0
        limit = query_int("limit", DEFAULT_LIMIT, minimum=0, maximum=MAX_LIMIT) or DEFAULT_LIMIT
        peeking = room_id is not None and _peek_access(rooms, req.user_id, room_id)
        if svc.presence_enabled and not req.is_guest:
            svc.hint_user(req.user_id, SyncStarted(set_presence="online", timeout_ms=timeout))
        stream = EventStream(svc=svc, reads=reads, peeks=peeks, user_id=req.user_id,
                             device_id=req.device_id, room_id=room_id, peeking=peeking,
                             limit=limit)
        return jsonify(stream.wait(since, timeout))

    @bp.get(f"{V3}/events/<event_id>")
    def get_event(event_id: str) -> Any:
        """GET /_matrix/client/v3/events/{eventId}"""
        req = require_auth()
        se = rooms.events.get_event(event_id)
        rv = rooms.room_version(se.room_id) if se is not None else None
        se = served_event(rooms, req.user_id, se) if se is not None and rv is not None \
            else None   # as served: pruned for an erased sender
        if se is None or rv is None:
            raise MatrixError(404, "M_NOT_FOUND", "Event not found")
        return jsonify(client_event(rooms.events, se, rv, device_id=req.device_id,
                                    user_id=req.user_id, bundle=True))

    app.register_blueprint(bp)
    initial_sync.register(app, runtime)


def _peek_access(rooms: RoomService, user_id: str, room_id: str) -> bool:
    """For ``/events?room_id=``: False when the user is joined, True when the room may be
    peeked into (world-readable now); 403 otherwise (an unknown room included, as Synapse)."""
    if not is_valid_room_id(room_id):
        raise invalid_param(f"Invalid room id {room_id!r}")
    membership, _ = rooms.membership(room_id, user_id)
    if membership == "join":
        return False
    if rooms.room_version(room_id) is not None and history_visibility(
            rooms, rooms.events.get_current_state_ids(room_id)) == "world_readable":
        return True
    raise MatrixError(403, "M_FORBIDDEN", "You are not joined to this room and it cannot be"
                      " previewed")


class PeekWatch:
    """Wake-ups for /events long-polls peeking into a room.  Each peek waits under the key
    ``peek|{room}|{user}`` (never a user id); the room's new events (a RoomService hook, woken
    once the events stream can be read at them), typing changes and receipts wake the keys
    of that room."""

    def __init__(self, svc: Any) -> None:
        self.notifier: Notifier = svc.notifier
        self._events_stream = svc.events.stream
        self._keys: dict[str, dict[str, int]] = {}     # room → key → waiting polls
        self._receipt_rooms: set[str] = set()
        svc.rooms.on_persisted.append(self._persisted)
        svc.typing.listeners.append(self._typing)
        svc.receipts.on_read_moved.append(self._receipt)
        # a receipt whose position was not readable yet when its hook ran is readable once
        # the stream advances: wake its room's peeks again then
        svc.receipts.stream.add_listener(self._receipts_advanced)

    def register(self, room_id: str, user_id: str) -> Waiter:
        key = f"peek|{room_id}|{user_id}"
        keys = self._keys.setdefault(room_id, {})
        keys[key] = keys.get(key, 0) + 1
        return self.notifier.register(key)

    def unregister(self, room_id: str, waiter: Waiter) -> None:
        self.notifier.unregister(waiter)
        keys = self._keys.get(room_id, {})
        n = keys.get(waiter.user_id, 0) - 1
        if n > 0:
            keys[waiter.user_id] = n
            return
        keys.pop(waiter.user_id, None)
        if not keys:
            self._keys.pop(room_id, None)

    def peeking(self) -> int:
        return sum(sum(keys.values()) for keys in self._keys.values())

    def _wake(self, room_id: str, stream: Any = None, pos: int = 0) -> None:
        keys = self._keys.get(room_id)
        if keys:
            self.notifier.wake_users(list(keys), stream, pos)

    def _persisted(self, room_id: str, events: Any) -> None:
        if room_id in self._keys and events:
            self._wake(room_id, self._events_stream, max(so for _, so in events))

    def _typing(self, room_id: str, user_id: str, typing: bool) -> None:
        self._wake(room_id)

    def _receipt(self, user_id: str, room_id: str) -> None:
        if room_id in self._keys:
            self._wake(room_id)
            self._receipt_rooms.add(room_id)

    def _receipts_advanced(self, pos: int) -> None:
        if self._receipt_rooms:
            pending, self._receipt_rooms = self._receipt_rooms, set()
            for room_id in pending:
                self._wake(room_id)


@dataclass
class EventStream:
    """One /events request: what it may see, and the wait for it."""

    svc: Any                       # web.sync_service.SyncService
    reads: LegacyReads
    peeks: PeekWatch
    user_id: str
    device_id: str | None
    room_id: str | None            # the ``room_id`` parameter
    peeking: bool
    limit: int
    now_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    _versions: dict[str, RoomVersion | None] = field(default_factory=dict)

    def wait(self, since: SyncToken | None, timeout_ms: int) -> dict[str, Any]:
        """Compute from ``since`` (now when absent); while nothing is new, sleep on the
        notifier until woken or the timeout ends.  An empty computation moves the cursor
        on, so a wake-up reads only what came after it."""
        svc = self.svc
        start = since if since is not None else svc.current_token()
        waiter: Waiter | None = None
        if timeout_ms > 0:  # before computing: no wake-up is lost
            waiter = (self.peeks.register(self.room_id, self.user_id)
                      if self.peeking and self.room_id is not None
                      else svc.notifier.register(self.user_id))
        deadline = time.monotonic() + timeout_ms / 1000.0
        cursor = start
        try:
            while True:
                if waiter is not None:
                    waiter.event.clear()
                upto = svc.current_token().max(cursor)
                # a chunk cut at ``limit`` whose events were all hidden: go on at once
                while any(getattr(cursor, s) < getattr(upto, s) for s in SERVED):
                    self.now_ms = int(time.time() * 1000)
                    chunk, cursor = self.compute(cursor, upto)
                    if chunk or waiter is None:
                        return {"chunk": chunk, "start": start.encode(), "end": cursor.encode()}
                remaining = deadline - time.monotonic()
                if waiter is None or remaining <= 0 or not waiter.wait(remaining) \
                        or svc.notifier.closed:
                    return {"chunk": [], "start": start.encode(), "end": cursor.encode()}
        finally:
            if waiter is not None:
                if self.peeking and self.room_id is not None:
                    self.peeks.unregister(self.room_id, waiter)
                else:
                    svc.notifier.unregister(waiter)

    # ------------------------------------------------------------------ one answer
    def compute(self, since: SyncToken, upto: SyncToken) -> tuple[list[dict[str, Any]],
                                                                  SyncToken]:
        """The chunk for (since, upto] and the token it ends at."""
        svc = self.svc
        history = {} if self.peeking else svc.memberships.get(self.user_id, upto.events)
        if self.room_id is not None:
            joined_now = [self.room_id]
        else:
            joined_now = [r for r, ms in history.items() if ms[-1].membership == "join"]
        chunk, events_end = self._room_events(since.events, upto.events, history)
        if svc.presence_enabled and since.presence < upto.presence:
            audience = svc.store.joined_members(joined_now) | {self.user_id}
            chunk += [presence_event(row, self.now_ms) for row in
                      svc.presence.changed(audience, since.presence, upto.presence)]
        if since.typing < upto.typing:
            for room_id in joined_now:
                users = svc.typing.typing(room_id, since.typing, upto.typing)
                if users is not None:
                    chunk.append({"type": "m.typing", "room_id": room_id,
                                  "content": {"user_ids": users}})
        if since.receipts < upto.receipts:
            chunk += receipt_events(svc.receipts.changed(joined_now, since.receipts,
                                                         upto.receipts), self.user_id)
        if since.account_data < upto.account_data:
            chunk += self._account_data(since.account_data, upto.account_data)
        end = replace(since, events=events_end, typing=upto.typing, receipts=upto.receipts,
                      account_data=upto.account_data, presence=upto.presence)
        return chunk, end

    def _room_events(self, lo: int, hi: int, history: dict[str, Any]
                     ) -> tuple[list[dict[str, Any]], int]:
        """Room events in (lo, hi] (the first ``limit``), then the presence of who joined;
        and the events position the answer ends at."""
        if hi <= lo:
            return [], hi
        svc = self.svc
        if self.room_id is not None:
            rooms = [self.room_id]
        else:
            rooms = [r for r, ms in history.items() if _joined_during(ms, lo)]
            moved = svc.positions.moved_since(lo, hi)
            if moved is not None:
                rooms = [r for r in rooms if moved(r)]
        rows = self.reads.events_after(rooms, lo, hi, self.limit)
        own: dict[str, int] = {}
        remote: list[RemoteMembership] = []
        if self.room_id is None:  # the user's own memberships in other rooms: invites, kicks
            scanned = set(rooms)
            own = {m.event_id: m.stream_ordering for r, ms in history.items()
                   if r not in scanned for m in ms if lo < m.stream_ordering <= hi}
            store = getattr(svc.rooms, "remote_invites", None)
            if store is not None:
                remote = [row for row in store.rows(self.user_id)
                          if lo < row.stream_ordering <= hi]
        picked = sorted([(so, eid) for eid, so in rows] + [(so, eid) for eid, so in own.items()]
                        + [(row.stream_ordering, row.event_id) for row in remote])
        cut = len(rows) >= self.limit or len(picked) > self.limit
        picked = picked[:self.limit]
        end = picked[-1][0] if cut and picked else hi
        found = svc.get_events([eid for _, eid in picked])
        ses = [found[eid] for _, eid in picked if eid in found]
        keep = {se.event_id: se for se in self._visible(ses, own)}  # as served
        remote_by_id = {row.event_id: row for row in remote}
        out: list[dict[str, Any]] = []
        joins: list[StoredEvent] = []
        prefetch(svc.events, [se for se in ses if se.event_id in keep])
        for _, eid in picked:
            if eid in keep:
                se = keep[eid]
                rv = self._version(se.room_id)
                if rv is None:
                    continue
                out.append(client_event(svc.events, se, rv, device_id=self.device_id,
                                        user_id=self.user_id, now_ms=self.now_ms))
                if se.event.get("type") == "m.room.member" and \
                        (se.event.get("content") or {}).get("membership") == "join":
                    joins.append(se)
            elif eid in remote_by_id:
                ev = remote_event(svc.events, remote_by_id[eid], self.now_ms)
                if ev is not None:
                    out.append(ev)
        if joins and svc.presence_enabled:
            out += self._joined_presence(joins, hi)
        return out, end

    def _visible(self, ses: list[StoredEvent], own: dict[str, int]) -> list[StoredEvent]:
        """History visibility and ignored users; the user's own membership events are
        always theirs to see."""
        ignored = self.svc.ignored_users(self.user_id)
        mine = [se for se in ses if se.event_id in own]
        rest = [se for se in ses if se.event_id not in own and not (
            se.event.get("sender") in ignored and "state_key" not in se.event)]
        return mine + Visibility(self.svc.events, self.user_id).filter(rest)

    def _joined_presence(self, joins: list[StoredEvent], upto_ev: int) -> list[dict[str, Any]]:
        """As Synapse: a join of the user brings the presence of the room's members, a join
        of someone else that member's presence."""
        users: set[str] = set()
        svc = self.svc
        for se in joins:
            target = se.event.get("state_key")
            if target == self.user_id:
                users |= svc.store.joined_members([se.room_id])
            elif isinstance(target, str):
                users.add(target)
        rows = svc.presence.changed(users, None, svc.presence.stream.current())
        return [presence_event(row, self.now_ms) for row in sorted(rows, key=lambda r: r.user_id)]

    def _account_data(self, lo: int, hi: int) -> list[dict[str, Any]]:
        out = []
        for room_id, type_, content in self.svc.account_data.changed(self.user_id, lo, hi):
            if self.room_id is not None and room_id != self.room_id:
                continue
            ev: dict[str, Any] = {"type": type_, "content": content}
            if room_id:
                ev["room_id"] = room_id
            out.append(ev)
        return out

    def _version(self, room_id: str) -> RoomVersion | None:
        if room_id not in self._versions:
            self._versions[room_id] = self.svc.rooms.room_version(room_id)
        return self._versions[room_id]


def _joined_during(ms: list[Any], lo: int) -> bool:
    """Was the user joined to the room at ``lo`` or at some point after it?"""
    at_lo = None
    for m in ms:
        if m.stream_ordering > lo:
            if m.membership == "join":
                return True
        else:
            at_lo = m
    return at_lo is not None and at_lo.membership == "join"


# ---------------------------------------------------------------------- shared formats
def presence_event(row: PresenceRow, now_ms: int) -> dict[str, Any]:
    """An ``m.presence`` event as the legacy endpoints give it: ``content.user_id`` names
    the user (as Synapse), and ``sender`` too (as /sync)."""
    content: dict[str, Any] = {"user_id": row.user_id, "presence": row.state,
                               "last_active_ago": max(0, now_ms - row.last_active_ts)}
    if row.state == "online":
        content["currently_active"] = row.currently_active
    if row.status_msg is not None:
        content["status_msg"] = row.status_msg
    return {"type": "m.presence", "sender": row.user_id, "content": content}


def receipt_events(receipts: Iterable[Receipt], user_id: str) -> list[dict[str, Any]]:
    """One ``m.receipt`` event per room (with ``room_id``); private receipts only for their
    owner (modules/receipts.md)."""
    by_room: dict[str, dict[str, Any]] = defaultdict(dict)
    for r in receipts:
        if r.receipt_type == PRIVATE_RECEIPT and r.user_id != user_id:
            continue
        entry: dict[str, Any] = {"ts": r.ts}
        if r.thread_id:
            entry["thread_id"] = r.thread_id
        by_room[r.room_id].setdefault(r.event_id, {}).setdefault(
            r.receipt_type, {})[r.user_id] = entry
    return [{"type": "m.receipt", "room_id": room_id, "content": content}
            for room_id, content in by_room.items()]


def remote_event(store: Any, row: RemoteMembership, now_ms: int) -> dict[str, Any] | None:
    """The member event of a membership made through another server (an invite received
    over federation, its rejection), for a room this server does not hold."""
    rv = KNOWN_ROOM_VERSIONS.get(row.room_version)
    if rv is None:
        return None
    se = StoredEvent(event=row.event, room_id=row.room_id, stream_ordering=row.stream_ordering,
                     state_group=None, outlier=True, rejection=None, soft_failed=False,
                     redacted_by=None, txn_device=None, txn_id=None)
    return client_event(store, se, rv, now_ms=now_ms)
