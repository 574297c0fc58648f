"""Read-only queries over a room's DAG for the federation side: the state before / after an
event, auth chains, the walks behind ``/backfill`` and ``/get_missing_events``, the event
closest to a time, the servers in a room, the room's server ACL, and history visibility per
server.  Nothing here writes (the RoomActor is the only writer of a room).

Spec: server-server-api.md "Backfilling and retrieving missing events", "Retrieving events",
"Retrieving event authorisation information" (data/api/server-server/backfill.yaml,
events.yaml, event_auth.yaml); client-server-api/modules/history_visibility.md for the
visibility rules, applied to a server as Synapse's ``filter_events_for_server`` does.

State model (store/schema/020_rooms.sql): ``events.state_group`` is the state AFTER the
event.  The state BEFORE an event is therefore:

* the same group when the event is not a state event, or was rejected (neither changes
  the state: after == before);
* otherwise the state after its prev events: one prev → that prev's group; several → the
  prevs' maps resolved with the room version's state resolution (``resolve``), exactly as
  the RoomActor computed it when the event arrived.  (A state event's group minus its own
  entry is NOT used: the delta chain does not say what the key held before a merge.)
"""
from __future__ import annotations

import heapq
from typing import Any, Callable, Iterable, Mapping, Sequence

from protocol.events import create_event_id_for_room_id, prev_event_ids
from protocol.redaction import redact
from protocol.room_versions import RoomVersion
from protocol.state_res import resolve_state
from store.admin_users import erased_users
from store.database import Database, Txn
from store.events import EventStore, StoredEvent
from store.state import StateGroupStore, StateKey

StateMap = dict[StateKey, str]
Resolver = Callable[[RoomVersion, list[Mapping[StateKey, str]],
                     Callable[[str], Mapping[str, Any] | None]], StateMap]

HV_KEY = ("m.room.history_visibility", "")
ACL_KEY = ("m.room.server_acl", "")
OPEN_VISIBILITY = ("world_readable", "shared")
KNOWN_VISIBILITY = ("world_readable", "shared", "invited", "joined")
_CHUNK = 200


def _default_resolve(rv: RoomVersion, sets: list[Mapping[StateKey, str]],
                     get_event: Callable[[str], Mapping[str, Any] | None]) -> StateMap:
    return resolve_state(rv, sets, get_event)


def server_of_user(user_id: str) -> str:
    """The server part of a user id (everything after the first ``:``)."""
    return user_id.split(":", 1)[1] if ":" in user_id else ""


def is_served(se: StoredEvent) -> bool:
    """Events a walk over the timeline may hand out: not rejected, not an outlier."""
    return se.rejection is None and not se.outlier


class RoomFederationReads:
    def __init__(self, db: Database, events: EventStore, state_groups: StateGroupStore,
                 *, resolve: Resolver | None = None) -> None:
        self.db = db
        self.events = events
        self.state_groups = state_groups
        self.resolve: Resolver = resolve or _default_resolve

    # ------------------------------------------------------------------ state at events
    def state_ids_after(self, event_id: str) -> StateMap | None:
        """The room state after ``event_id``; None if the event is unknown, an outlier or
        has no state stored."""
        se = self.events.get_event(event_id)
        if se is None or se.outlier or se.state_group is None:
            return None
        return self.state_groups.get_state(se.state_group)

    def prev_states(self, event_id: str) -> list[StateMap] | None:
        """The states after each prev event of ``event_id`` (one map per prev); None if the
        event or the state after one of its prevs is unknown.  [] for the create event."""
        se = self.events.get_event(event_id)
        if se is None:
            return None
        out: list[StateMap] = []
        prevs = prev_event_ids(se.event)
        known = self.events.get_events(prevs)
        for p in prevs:
            pse = known.get(p)
            if pse is None or pse.outlier or pse.state_group is None:
                return None
            out.append(self.state_groups.get_state(pse.state_group))
        return out

    def state_ids_before(self, event_id: str) -> StateMap | None:
        """The room state before ``event_id`` (see the module docstring); None if unknown."""
        se = self.events.get_event(event_id)
        if se is None or se.outlier:
            return None
        if se.state_group is not None and (
                "state_key" not in se.event or se.rejection is not None):
            return self.state_groups.get_state(se.state_group)
        states = self.prev_states(event_id)
        if states is None:
            return None
        if len(states) <= 1:
            return dict(states[0]) if states else {}
        rv = self.events.room_version(se.room_id)
        if rv is None:
            return None
        return dict(self.resolve(rv, states, self._auth_lookup))

    def _auth_lookup(self, event_id: str) -> Mapping[str, Any] | None:
        se = self.events.get_event(event_id)
        return se.event if se is not None and se.rejection is None else None

    # ------------------------------------------------------------------ auth chains
    def auth_chain_ids(self, event_ids: Iterable[str], *, include_given: bool = False,
                       room_id: str | None = None) -> set[str]:
        """Every event reachable from ``event_ids`` over auth_events edges (the given
        ones too with ``include_given``).  With ``room_id`` of a room whose id is its
        create event's hash (v12), the create event is added as the implied auth event of
        every other event (rooms/v12.md: it is not listed in ``auth_events``; Synapse's
        auth chains include it, and a joining server needs it).  Without ``room_id`` the
        room of the first given event is used."""
        start = list(dict.fromkeys(event_ids))
        chain = self.db.run("auth_chain_ids", self._auth_chain_txn, start, include_given)
        if room_id is None and start:   # the room of the given events
            room_id = next((se.room_id for se in self.events.get_events(start[:1]).values()),
                           None)
        if room_id is not None and start:
            rv = self.events.room_version(room_id)
            if rv is not None and rv.room_id_is_create_event_hash:
                create_id = create_event_id_for_room_id(room_id)
                if any(e != create_id for e in start) or include_given:
                    chain.add(create_id)
        return chain

    @staticmethod
    def _auth_chain_txn(txn: Txn, start: list[str], include_given: bool) -> set[str]:
        seen: set[str] = set(start)
        chain: set[str] = set(start) if include_given else set()
        front = list(start)
        while front:
            nxt: list[str] = []
            for i in range(0, len(front), _CHUNK):
                chunk = front[i:i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                for (aid,) in txn.query(
                        f"SELECT auth_id FROM event_auth WHERE event_id IN ({marks})", chunk):
                    chain.add(aid)
                    if aid not in seen:
                        seen.add(aid)
                        nxt.append(aid)
            front = nxt
        return chain

    def auth_chain(self, event_ids: Iterable[str], *, include_given: bool = False,
                   room_id: str | None = None) -> list[StoredEvent]:
        """The stored events of :meth:`auth_chain_ids` that were not rejected, oldest
        (lowest depth) first."""
        ids = self.auth_chain_ids(event_ids, include_given=include_given, room_id=room_id)
        got = [se for se in self.events.get_events(sorted(ids)).values()
               if se.rejection is None]
        got.sort(key=lambda se: (int(se.event.get("depth", 0)), se.stream_ordering))
        return got

    # ------------------------------------------------------------------ DAG walks
    def _prev_rows(self, event_ids: Sequence[str]) -> dict[str, list[str]]:
        """event id → its prev event ids (from event_edges)."""
        def q(txn: Txn) -> dict[str, list[str]]:
            out: dict[str, list[str]] = {e: [] for e in event_ids}
            for i in range(0, len(event_ids), _CHUNK):
                chunk = list(event_ids[i:i + _CHUNK])
                marks = ",".join("?" * len(chunk))
                for eid, prev in txn.query("SELECT event_id, prev_event_id FROM event_edges"
                                           f" WHERE event_id IN ({marks})", chunk):
                    out[eid].append(prev)
            return out
        return self.db.run("prev_edges", q) if event_ids else {}

    def backfill(self, room_id: str, from_event_ids: Iterable[str], limit: int
                 ) -> list[StoredEvent]:
        """``/backfill``: the given events and those before them, newest first by depth,
        walking prev edges breadth-first in depth order, at most ``limit``.  Events of
        other rooms, outliers and rejected events are never returned (the walk still goes
        through a rejected event's prevs: it is part of the DAG)."""
        if limit <= 0:
            return []
        heap: list[tuple[int, int, str]] = []
        queued: set[str] = set()
        out: list[StoredEvent] = []

        def push(ids: Iterable[str]) -> None:
            fresh = [e for e in dict.fromkeys(ids) if e not in queued]
            queued.update(fresh)
            for eid, se in self.events.get_events(fresh).items():
                if se.room_id == room_id and not se.outlier:
                    heapq.heappush(heap, (-int(se.event.get("depth", 0)),
                                          -se.stream_ordering, eid))

        push(from_event_ids)
        while heap and len(out) < limit:
            batch: list[str] = []
            while heap and len(batch) < limit - len(out):
                _, _, eid = heapq.heappop(heap)
                se = self.events.get_event(eid)
                if se is None:
                    continue
                if se.rejection is None:
                    out.append(se)
                    if len(out) >= limit:
                        break
                batch.append(eid)
            if len(out) >= limit or not batch:
                break
            prevs = self._prev_rows(batch)
            push(p for eid in batch for p in prevs.get(eid, ()))
        return out

    def missing_events(self, room_id: str, earliest: Iterable[str], latest: Iterable[str],
                       limit: int, min_depth: int = 0) -> list[StoredEvent]:
        """``/get_missing_events``: a breadth-first walk of prev_events from ``latest``,
        never entering ``earliest`` (nor returning ``latest`` itself), stopping at
        ``limit`` events and below ``min_depth``; the result oldest first (the walk's order
        reversed).  Only events of ``room_id`` that are neither outliers nor rejected."""
        if limit <= 0:
            return []
        seen: set[str] = set(earliest)
        front = [e for e in dict.fromkeys(latest) if e not in seen]
        start = self.events.get_events(front)
        front = [e for e in front if e in start and start[e].room_id == room_id]
        seen.update(front)
        results: list[StoredEvent] = []
        while front and len(results) < limit:
            prevs = self._prev_rows(front)
            new_ids = [p for eid in front for p in prevs.get(eid, ()) if p not in seen]
            new_ids = list(dict.fromkeys(new_ids))
            seen.update(new_ids)
            got = self.events.get_events(new_ids)
            nxt: list[str] = []
            for p in new_ids:
                se = got.get(p)
                if se is None or se.room_id != room_id or se.outlier:
                    continue
                if int(se.event.get("depth", 0)) < min_depth:
                    continue
                nxt.append(p)
                if se.rejection is None and len(results) < limit:
                    results.append(se)
            front = nxt
        results.reverse()
        return results

    def closest_event(self, room_id: str, ts: int, direction: str) -> StoredEvent | None:
        """``/timestamp_to_event``: the room's timeline event with ``origin_server_ts`` at
        or after ``ts`` (``direction`` "f") or at or before it ("b"), closest first."""
        if direction == "f":
            sql = ("SELECT event_id FROM events WHERE room_id = ? AND origin_server_ts >= ?"
                   " AND outlier = 0 AND rejection IS NULL"
                   " ORDER BY origin_server_ts ASC, stream_ordering ASC LIMIT 1")
        elif direction == "b":
            sql = ("SELECT event_id FROM events WHERE room_id = ? AND origin_server_ts <= ?"
                   " AND outlier = 0 AND rejection IS NULL"
                   " ORDER BY origin_server_ts DESC, stream_ordering DESC LIMIT 1")
        else:
            raise ValueError(f"direction must be 'f' or 'b', not {direction!r}")
        eid = self.db.run("closest_event", lambda t: t.query_value(sql, (room_id, ts)))
        return self.events.get_event(eid) if eid else None

    # ------------------------------------------------------------------ room-level facts
    def forward_extremities(self, room_id: str) -> list[str]:
        """The room's forward extremities as stored."""
        return [e for (e,) in self.db.run("forward_extremities", lambda t: t.query(
            "SELECT event_id FROM room_forward_extremities WHERE room_id = ?"
            " ORDER BY event_id", (room_id,)))]

    def min_depth(self, room_id: str) -> int:
        """The lowest depth of the room's timeline events (0 when it has none)."""
        return int(self.db.run("min_depth", lambda t: t.query_value(
            "SELECT MIN(depth) FROM events WHERE room_id = ? AND outlier = 0",
            (room_id,))) or 0)

    def known_ids(self, event_ids: Iterable[str], *, outliers: bool = True) -> set[str]:
        """Which of ``event_ids`` are stored (any room; with ``outliers=False`` only those
        in a room's timeline)."""
        got = self.events.get_events(event_ids)
        return {eid for eid, se in got.items() if outliers or not se.outlier}

    def servers_in_room(self, room_id: str) -> set[str]:
        """Servers with at least one joined member in the room's current state."""
        rows = self.db.run("servers_in_room", lambda t: t.query(
            "SELECT state_key FROM current_state WHERE room_id = ? AND type = 'm.room.member'"
            " AND membership = 'join'", (room_id,)))
        return {server_of_user(uid) for (uid,) in rows}

    def server_in_room(self, room_id: str, server: str) -> bool:
        """Whether ``server`` has a joined member in the room now (``LIKE`` narrows the
        scan; the exact server part is compared in Python: ``_`` and ``%`` are wildcards)."""
        rows = self.db.run("server_in_room", lambda t: t.query(
            "SELECT state_key FROM current_state WHERE room_id = ? AND type = 'm.room.member'"
            " AND membership = 'join' AND state_key LIKE ?", (room_id, "%:" + server)))
        return any(server_of_user(uid) == server for (uid,) in rows)

    def current_state_content(self, room_id: str, key: StateKey) -> dict[str, Any] | None:
        """The content of the current state event at ``key``; None if there is none."""
        eid = self.db.run("state_content", lambda t: t.query_value(
            "SELECT event_id FROM current_state WHERE room_id = ? AND type = ?"
            " AND state_key = ?", (room_id, key[0], key[1])))
        if eid is None:
            return None
        se = self.events.get_event(eid)
        if se is None:
            return None
        rv = self.events.room_version(room_id)
        content = (self.events.visible_form(se, rv) if rv is not None else se.event).get(
            "content")
        return content if isinstance(content, dict) else {}

    def acl_content(self, room_id: str) -> dict[str, Any] | None:
        """The room's current ``m.room.server_acl`` content (None: no ACL)."""
        return self.current_state_content(room_id, ACL_KEY)

    def history_visibility(self, room_id: str) -> str:
        """The room's current history visibility (``shared`` when unset or unknown)."""
        content = self.current_state_content(room_id, HV_KEY) or {}
        return _visibility(content)

    # ------------------------------------------------------------------ visibility
    def server_can_see(self, server: str, se: StoredEvent) -> bool:
        """Whether ``server`` may see ``se`` unredacted: the history visibility in the state
        after the event is world_readable or shared (unset or unknown counts as shared);
        else one of the server's users is joined at the event (or invited, under
        ``invited``).  An event without known state (an outlier) is visible, as in
        Synapse."""
        if se.outlier or se.state_group is None:
            return True
        state = self.state_groups.get_state(se.state_group)
        vis = "shared"
        hv_id = state.get(HV_KEY)
        if hv_id is not None:
            hv = self.events.get_event(hv_id)
            if hv is not None:
                vis = _visibility(hv.event.get("content"))
        if vis in OPEN_VISIBILITY:
            return True
        suffix = ":" + server
        member_ids = [eid for (etype, skey), eid in state.items()
                      if etype == "m.room.member" and skey.endswith(suffix)
                      and server_of_user(skey) == server]
        allowed = ("join", "invite") if vis == "invited" else ("join",)
        for mse in self.events.get_events(member_ids).values():
            content = mse.event.get("content")
            if isinstance(content, dict) and content.get("membership") in allowed:
                return True
        return False

    def for_server(self, server: str, events: Iterable[StoredEvent]) -> list[dict[str, Any]]:
        """The events as ``server`` may receive them: as stored (pruned if redacted here),
        or redacted when it may not see them (Synapse's ``filter_events_for_server`` with
        ``redact=True``: the redacted form keeps the DAG walkable and the signatures
        checkable).  An erased sender's events always go redacted, as Synapse sends them
        (``filter_out_erased_senders``), whatever the server's members saw."""
        erased = erased_users(self.events.db)
        out: list[dict[str, Any]] = []
        for se in events:
            rv = self.events.room_version(se.room_id)
            if rv is None:
                continue
            ev = self.events.visible_form(se, rv)
            if se.redacted_by is None and (se.event.get("sender") in erased
                                           or not self.server_can_see(server, se)):
                ev = redact(ev, rv)
            out.append(ev)
        return out


def _visibility(content: Any) -> str:
    vis = content.get("history_visibility") if isinstance(content, Mapping) else None
    return vis if vis in KNOWN_VISIBILITY else "shared"
