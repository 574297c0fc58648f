"""``GET /initialSync`` and ``GET /rooms/{roomId}/initialSync`` (old_sync.yaml,
room_initial_sync.yaml): snapshots of the deprecated sync API, still served as Synapse
serves them.  Registered by web/legacy_events.py (one legacy sync area).

``/initialSync``: every room the user is joined or invited to (left and banned ones too with
``archived=true``; forgotten rooms never), each with its ``membership``, directory
``visibility`` and room ``account_data`` (tags are ``m.tag``, first); an invite carries the
invite event and ``inviter``; a joined room its ``limit`` (default 10) most recent visible
events (``messages``) and current ``state``; a left room its events up to the leave and the
state the leave left.  Around them: the presence of users sharing a room (not offline),
global ``account_data``, the joined rooms' ``receipts`` and ``end``, a /sync token that
``GET /events`` goes on from.

``/rooms/{roomId}/initialSync``: one room, for a member, for a user who left it (what they
saw up to the leave; a banned user likewise), and for anyone when the room is
world-readable (a peek: no ``membership``, as Synapse); else 403 M_FORBIDDEN.  A joined or
peeked room adds its members' ``presence`` and its ``receipts``.

``messages.start`` is a /messages token just before the oldest event of the chunk (or where
the walk stopped); ``messages.end`` a /sync token at the end of the chunk, which /messages
accepts too.  History visibility applies to every event; aggregations are not bundled
(client-server-api: not required on deprecated endpoints).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import gevent.pool
from flask import Blueprint, Flask, jsonify

from atrium.errors import MatrixError, invalid_param
from protocol.ids import is_valid_room_id
from store.events import StoredEvent
from store.legacy_reads import LegacyReads
from store.sync import Membership
from web.auth import require_auth
from web.client_events import client_events
from web.http import query_bool, query_int
from web.legacy_events import (DEFAULT_LIMIT, MAX_LIMIT, presence_event, receipt_events,
                               remote_event)
from web.pagination import before_token, topo_token
from web.room_service import RoomService
from web.sync_token import SyncToken
from web.timeline import Reader
from web.visibility import history_visibility, state_at

V3 = "/_matrix/client/v3"
ROOM_WORKERS = 8


def register(app: Flask, runtime: Any) -> None:
    svc = runtime.parts["sync"]
    rooms: RoomService = runtime.parts["rooms"]
    reads = LegacyReads(runtime.db)
    bp = Blueprint("initial_sync", __name__)

    @bp.get(f"{V3}/initialSync")
    def get_initial_sync() -> Any:
        """GET /_matrix/client/v3/initialSync"""
        req = require_auth()
        limit = query_int("limit", DEFAULT_LIMIT, minimum=0, maximum=MAX_LIMIT) or 0
        archived = query_bool("archived")
        snap = Snapshot(svc, rooms, reads, req.user_id, req.device_id, limit)
        return jsonify(snap.all_rooms(archived))

    @bp.get(f"{V3}/rooms/<room_id>/initialSync")
    def get_room_initial_sync(room_id: str) -> Any:
        """GET /_matrix/client/v3/rooms/{roomId}/initialSync"""
        req = require_auth(allow_guest=True)
        limit = query_int("limit", DEFAULT_LIMIT, minimum=0, maximum=MAX_LIMIT) or 0
        if not is_valid_room_id(room_id):
            raise invalid_param(f"Invalid room id {room_id!r}")
        snap = Snapshot(svc, rooms, reads, req.user_id, req.device_id, limit)
        return jsonify(snap.one_room(room_id))

    app.register_blueprint(bp)


class _NotIgnored:
    """A walk filter (web/timeline.py ``Reader.walk``): drops ignored users' non-state
    events (modules/ignore_users.md)."""

    def __init__(self, ignored: frozenset[str]) -> None:
        self.ignored = ignored

    def matches(self, se: StoredEvent) -> bool:
        return "state_key" in se.event or se.event.get("sender") not in self.ignored


@dataclass
class Snapshot:
    """One initialSync request, at the positions it started at."""

    svc: Any                          # web.sync_service.SyncService
    rooms: RoomService
    reads: LegacyReads
    user_id: str
    device_id: str | None
    limit: int
    upto: SyncToken = field(init=False)
    now_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def __post_init__(self) -> None:
        self.upto = self.svc.current_token()
        self.ignored = self.svc.ignored_users(self.user_id)

    # ------------------------------------------------------------------ /initialSync
    def all_rooms(self, archived: bool) -> dict[str, Any]:
        svc, upto = self.svc, self.upto
        history = svc.memberships.get(self.user_id, upto.events)
        wanted = ("join", "invite", "leave", "ban") if archived else ("join", "invite")
        forgotten = svc.store.forgotten_rooms(self.user_id)
        picked = {r: ms[-1] for r, ms in history.items()
                  if ms[-1].membership in wanted and r not in forgotten}
        remote = self._remote_rows(history, wanted, forgotten)
        public = self.reads.public_rooms(picked)
        ad_rows = svc.account_data.changed(self.user_id, None, upto.account_data)
        room_ad: dict[str, list[dict[str, Any]]] = {}
        for room_id, type_, content in ad_rows:
            if room_id:
                room_ad.setdefault(room_id, []).append({"type": type_, "content": content})
        jobs = [(r, m) for r, m in picked.items()]
        pool = gevent.pool.Pool(max(1, min(ROOM_WORKERS, len(jobs))))
        entries = list(pool.imap(
            lambda job: self._room_entry(job[0], job[1], job[0] in public,
                                         room_ad.get(job[0], [])), jobs))
        entries += [self._remote_entry(row) for row in remote]
        joined = [r for r, m in picked.items() if m.membership == "join"]
        presence: list[dict[str, Any]] = []
        if svc.presence_enabled:
            audience = svc.store.joined_members(joined) | {self.user_id}
            presence = [presence_event(row, self.now_ms) for row in
                        svc.presence.changed(audience, None, upto.presence)]
        return {
            "rooms": [e for e in entries if e is not None],
            "presence": presence,
            "account_data": [{"type": t, "content": c} for r, t, c in ad_rows if not r],
            "receipts": receipt_events(svc.receipts.changed(joined, None, upto.receipts),
                                       self.user_id),
            "end": upto.encode(),
        }

    def _remote_rows(self, history: dict[str, list[Membership]], wanted: tuple[str, ...],
                     forgotten: set[str]) -> list[Any]:
        """Invites (and, archived, their rejections) made through another server for rooms
        this server does not hold, where the room's own history is not newer."""
        store = getattr(self.rooms, "remote_invites", None)
        if store is None:
            return []
        out = []
        for room_id, row in store.latest(self.user_id, self.upto.events).items():
            ms = history.get(room_id)
            if ms and ms[-1].stream_ordering > row.stream_ordering:
                continue
            if row.membership in wanted and room_id not in forgotten:
                out.append(row)
        return out

    def _remote_entry(self, row: Any) -> dict[str, Any] | None:
        ev = remote_event(self.rooms.events, row, self.now_ms)
        if ev is None:
            return None
        entry: dict[str, Any] = {"room_id": row.room_id, "membership": row.membership,
                                 "visibility": "private"}
        if row.membership == "invite":
            entry.update(invite=ev, inviter=row.sender)
        else:
            end = replace(self.upto, events=row.stream_ordering).encode()
            entry.update(messages={"chunk": [ev], "start": end, "end": end}, state=[],
                         account_data=[])
        return entry

    def _room_entry(self, room_id: str, m: Membership, public: bool,
                    account_data: list[dict[str, Any]]) -> dict[str, Any] | None:
        rv = self.rooms.room_version(room_id)
        if rv is None:
            return None
        entry: dict[str, Any] = {"room_id": room_id, "membership": m.membership,
                                 "visibility": "public" if public else "private"}
        if m.membership == "invite":
            se = self.rooms.events.get_event(m.event_id)
            if se is not None:
                entry["invite"] = self._format([se])[0]
                entry["inviter"] = se.event.get("sender")
            return entry
        entry.update(self._history(room_id, m))
        entry["account_data"] = _tags_first(account_data)
        return entry

    # ------------------------------------------------------------------ /rooms/{id}/initialSync
    def one_room(self, room_id: str) -> dict[str, Any]:
        membership, member_eid = self.rooms.membership(room_id, self.user_id)
        if membership in ("leave", "ban") and \
                room_id in self.svc.store.forgotten_rooms(self.user_id):
            membership = None
        if membership == "join" or (membership in ("leave", "ban") and member_eid):
            se = self.rooms.events.get_event(member_eid) if membership != "join" else None
            at = Membership(room_id, membership, member_eid or "",
                            se.stream_ordering if se is not None else self.upto.events)
            peek = False
        elif self.rooms.room_version(room_id) is not None and history_visibility(
                self.rooms, self.rooms.events.get_current_state_ids(room_id)) \
                == "world_readable":
            at, peek = Membership(room_id, "join", "", self.upto.events), True
        else:
            raise MatrixError(403, "M_FORBIDDEN", "You are not a member of this room and it"
                              " cannot be previewed")
        public = bool(self.reads.public_rooms([room_id]))
        out: dict[str, Any] = {"room_id": room_id,
                               "visibility": "public" if public else "private"}
        if not peek:
            out["membership"] = at.membership
        out.update(self._history(room_id, at))
        presence: list[dict[str, Any]] = []
        receipts: list[dict[str, Any]] = []
        if at.membership == "join":
            svc = self.svc
            if svc.presence_enabled:
                members = svc.store.joined_members([room_id])
                presence = [presence_event(row, self.now_ms) for row in
                            svc.presence.changed(members, None, self.upto.presence)]
            receipts = receipt_events(svc.receipts.changed([room_id], None, self.upto.receipts),
                                      self.user_id)
        out["presence"] = presence
        out["receipts"] = receipts
        out["account_data"] = _tags_first(
            [{"type": t, "content": c} for t, c in self.reads.room_account_data(
                self.user_id, room_id)])
        return out

    # ------------------------------------------------------------------ shared
    def _history(self, room_id: str, m: Membership) -> dict[str, Any]:
        """``messages`` and ``state``: now for a joined (or peeked) room, as the user's
        leave (or ban) left it otherwise."""
        if m.membership == "join":
            hi = self.upto.events
            state = self.rooms.events.get_current_state_ids(room_id)
            end = self.upto.encode()
        else:
            hi = m.stream_ordering
            leave = self.rooms.events.get_event(m.event_id)
            state = state_at(self.rooms, leave) if leave is not None else {}
            end = replace(self.upto, events=hi).encode()
        rd = Reader(self.rooms, self.user_id, self.device_id)
        cut = rd.reads.topological_cut(room_id, hi)
        flt: Any = _NotIgnored(self.ignored) if self.ignored else None
        page = rd.walk(rd.timeline_fetch(room_id, None), lo=None, hi=cut, backwards=True,
                       limit=self.limit, flt=flt)
        chunk = list(reversed(page.events))
        if page.next_cut is not None:
            start = topo_token(page.next_cut)
        elif chunk:
            start = before_token((int(chunk[0].event.get("depth", 0)), chunk[0].stream_ordering))
        else:
            start = end
        found = self.rooms.events.get_events(state.values())
        state_events = [found[state[k]] for k in sorted(state) if state[k] in found]
        return {"messages": {"chunk": self._format(chunk), "start": start, "end": end},
                "state": self._format(state_events)}

    def _format(self, ses: list[StoredEvent]) -> list[dict[str, Any]]:
        if not ses:
            return []
        rv = self.rooms.room_version(ses[0].room_id)
        if rv is None:
            return []
        return client_events(self.rooms.events, ses, rv, device_id=self.device_id,
                             user_id=self.user_id, now_ms=self.now_ms)


def _tags_first(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Room account data with ``m.tag`` first (as Synapse lists it)."""
    return sorted(events, key=lambda ev: ev["type"] != "m.tag")
