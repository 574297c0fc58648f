"""Events and room DAG storage: the persist transaction a RoomActor runs, and the reads
everything else does (events by id, room state, extremities).

Events are stored as received (``json``); a redacted event is pruned on read by the room
version's redaction algorithm and carries ``unsigned.redacted_because``.  Stored events are
immutable except for ``redacted_by``, so they are cached (bounded LRU) and the cache entry is
dropped when a redaction lands.
"""
from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from protocol.events import auth_event_ids, prev_event_ids
from protocol.redaction import redact
from protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from store.database import Database, Txn
from store.recent_timeline import RecentTimeline
from store.state import StateGroupStore, StateKey
from store.streams import StreamIdGenerator


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class StoredEvent:
    event: dict[str, Any]          # as received (not pruned); treat as read-only
    room_id: str
    stream_ordering: int
    state_group: int | None
    outlier: bool
    rejection: str | None
    soft_failed: bool
    redacted_by: str | None
    txn_device: str | None
    txn_id: str | None

    @property
    def event_id(self) -> str:
        return self.event["event_id"]


@dataclass
class PersistItem:
    """One event to persist, with what the room actor decided about it."""

    event: dict[str, Any]
    stream_ordering: int
    state_group: int | None
    rejection: str | None = None
    soft_failed: bool = False
    outlier: bool = False
    txn_key: tuple[str, str, str] | None = None      # (user_id, device_id, txn_id)
    #: older history fetched over federation: kept out of /sync's memory of new events
    #: and of room_memberships (a user's membership history by position)
    backfilled: bool = False
    #: the event is stored as an outlier and now joins the timeline: that row goes first
    replaces_outlier: bool = False
    #: a redaction that may not be applied (a remote one without the power to redact)
    apply_redaction: bool = True

    @property
    def in_timeline(self) -> bool:
        """Served to clients: not an outlier, not rejected, not soft-failed."""
        return not (self.outlier or self.soft_failed or self.rejection is not None)


@dataclass
class RoomDelta:
    """How one persist call moves the room: new extremities, current-state changes."""

    room_id: str
    forward_extremities: list[str] | None = None      # the full new set, if it changed
    state_delta: dict[StateKey, str | None] = field(default_factory=dict)
    current_state_group: int | None = None
    new_room: tuple[str, str | None] | None = None    # (room_version, creator) on create


ROOM_VERSION_CACHE = 50_000   # room id → version (immutable), ~120 bytes an entry

_COLS = ("stream_ordering, event_id, room_id, json, outlier, rejection, soft_failed,"
         " redacted_by, state_group, txn_device, txn_id")


class EventStore:
    def __init__(self, db: Database, state_groups: StateGroupStore,
                 cache_size: int = 2000) -> None:
        self.db = db
        self.state_groups = state_groups
        self.stream = StreamIdGenerator(db, "events", "stream_ordering")
        self._cache: OrderedDict[str, StoredEvent] = OrderedDict()
        self._cache_size = cache_size
        self._room_versions: dict[str, RoomVersion] = {}
        #: the newest timeline events of active rooms (filled after each commit)
        self.recent = RecentTimeline(self.stream.current())
        #: room id → whether a new event of the room goes into the cache and
        #: :attr:`recent` at commit (the sync wiring: when someone waits on the room)
        self.cache_new: Callable[[str], bool] | None = None

    # ------------------------------------------------------------------ writing
    def persist(self, txn: Txn, items: Sequence[PersistItem], delta: RoomDelta) -> None:
        """Write events + edges + state + extremities for one room in the caller's txn."""
        now = int(time.time() * 1000)
        room_id = delta.room_id
        if delta.new_room is not None:
            version, creator = delta.new_room
            txn.execute("INSERT INTO rooms (room_id, room_version, creator, created_ts)"
                        " VALUES (?, ?, ?, ?)", (room_id, version, creator, now))
        ev_rows, edges, auths, members, relations, redactions, txns = [], [], [], [], [], [], []
        replaced = []
        for it in items:
            ev = it.event
            eid = ev["event_id"]
            if it.replaces_outlier:
                replaced.append((eid,))
            ev_rows.append((
                it.stream_ordering, eid, room_id, ev["type"], ev.get("state_key"),
                ev["sender"], int(ev.get("depth", 0)), int(ev.get("origin_server_ts", 0)), now,
                dumps(ev), int(it.outlier), it.rejection, int(it.soft_failed), it.state_group,
                it.txn_key[1] if it.txn_key else None, it.txn_key[2] if it.txn_key else None,
                int(it.backfilled)))
            edges.extend((eid, p, room_id) for p in prev_event_ids(ev))
            auths.extend((eid, a) for a in auth_event_ids(ev))
            if not it.in_timeline:
                continue   # outliers, rejected and soft-failed events feed no index
            if ev["type"] == "m.room.member" and isinstance(ev.get("state_key"), str) \
                    and not it.backfilled:
                members.append((eid, room_id, ev["state_key"], ev["sender"],
                                str(ev.get("content", {}).get("membership", "")),
                                it.stream_ordering))
            rel = ev.get("content", {}).get("m.relates_to")
            if isinstance(rel, dict) and isinstance(rel.get("event_id"), str) \
                    and isinstance(rel.get("rel_type"), str) and not any(
                        "\x00" in v for v in (rel["event_id"], rel["rel_type"],
                                              rel.get("key") or "")
                        if isinstance(v, str)):
                key = rel.get("key") if isinstance(rel.get("key"), str) else None
                relations.append((eid, rel["event_id"], rel["rel_type"], key, room_id,
                                  ev["sender"], ev["type"], it.stream_ordering))
            if ev["type"] == "m.room.redaction" and it.apply_redaction:
                target = ev.get("redacts") or ev.get("content", {}).get("redacts")
                if isinstance(target, str):
                    redactions.append((eid, target, room_id))
            if it.txn_key is not None:
                txns.append((*it.txn_key, room_id, eid, now))
        if replaced:
            txn.executemany("DELETE FROM events WHERE event_id = ? AND outlier = 1", replaced)
        txn.executemany(
            "INSERT INTO events (stream_ordering, event_id, room_id, type, state_key, sender,"
            " depth, origin_server_ts, received_ts, json, outlier, rejection, soft_failed,"
            " state_group, txn_device, txn_id, backfilled)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", ev_rows)
        # before the redactions' cache pops below: a target redacted in this very batch
        # must not stay cached unredacted
        stored_json = [row[9] for row in ev_rows]
        txn.call_after_commit(lambda: self._remember_persisted(room_id, items, stored_json))
        txn.executemany("INSERT INTO event_edges (event_id, prev_event_id, room_id)"
                        " VALUES (?, ?, ?) ON CONFLICT DO NOTHING", edges)
        txn.executemany("INSERT INTO event_auth (event_id, auth_id) VALUES (?, ?)"
                        " ON CONFLICT DO NOTHING", auths)
        txn.executemany("INSERT INTO room_memberships (event_id, room_id, user_id, sender,"
                        " membership, stream_ordering) VALUES (?, ?, ?, ?, ?, ?)", members)
        txn.executemany("INSERT INTO event_relations (event_id, relates_to_id, rel_type,"
                        " aggregation_key, room_id, sender, type, stream_ordering)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", relations)
        txn.executemany("INSERT INTO event_txns (user_id, device_id, txn_id, room_id, event_id,"
                        " created_ts) VALUES (?, ?, ?, ?, ?, ?)", txns)
        for red_id, target, _ in redactions:
            txn.execute("INSERT INTO redactions (event_id, redacts, room_id) VALUES (?, ?, ?)",
                        (red_id, target, room_id))
            # only a redaction of an event in the same room applies
            txn.execute("UPDATE events SET redacted_by = ? WHERE event_id = ? AND room_id = ?"
                        " AND redacted_by IS NULL", (red_id, target, room_id))
            txn.call_after_commit(lambda t=target: self._cache.pop(t, None))
        if delta.forward_extremities is not None:
            txn.execute("DELETE FROM room_forward_extremities WHERE room_id = ?", (room_id,))
            txn.executemany("INSERT INTO room_forward_extremities (room_id, event_id)"
                            " VALUES (?, ?)", [(room_id, e) for e in delta.forward_extremities])
        if delta.state_delta:
            self._apply_state_delta(txn, room_id, delta.state_delta, items)
        if delta.current_state_group is not None:
            txn.execute("UPDATE rooms SET current_state_group = ? WHERE room_id = ?",
                        (delta.current_state_group, room_id))

    def _remember_persisted(self, room_id: str, items: Sequence[PersistItem],
                            stored_json: list[str]) -> None:
        """After commit: the new events go into the cache as a read would return them
        (parsed from the stored JSON, so nothing shares the writer's dicts) when
        :attr:`cache_new` says someone will read them, and timeline events into
        :attr:`recent`.  The /syncs woken next then read neither from the store."""
        keep = self.cache_new is None or self.cache_new(room_id)
        for it, js in zip(items, stored_json):
            # backfilled history is old news: never part of the tail /sync serves as new
            if it.in_timeline and not it.backfilled:
                if keep:
                    self.recent.add(room_id, it.event["event_id"], it.stream_ordering)
                else:
                    self.recent.skip(room_id, it.stream_ordering)
            if not keep:
                self._cache.pop(it.event["event_id"], None)   # e.g. a former outlier
            else:
                txn_key = it.txn_key or (None, None, None)
                self._remember(StoredEvent(
                    event=json.loads(js), room_id=room_id, stream_ordering=it.stream_ordering,
                    state_group=it.state_group, outlier=it.outlier, rejection=it.rejection,
                    soft_failed=it.soft_failed, redacted_by=None, txn_device=txn_key[1],
                    txn_id=txn_key[2]))

    def _apply_state_delta(self, txn: Txn, room_id: str,
                           state_delta: Mapping[StateKey, str | None],
                           items: Sequence[PersistItem]) -> None:
        by_id = {it.event["event_id"]: it.event for it in items}
        for (etype, skey), eid in state_delta.items():
            if eid is None:
                txn.execute("DELETE FROM current_state WHERE room_id = ? AND type = ?"
                            " AND state_key = ?", (room_id, etype, skey))
                continue
            membership = None
            if etype == "m.room.member":
                ev = by_id.get(eid)
                if ev is None:
                    row = txn.query_one("SELECT json FROM events WHERE event_id = ?", (eid,))
                    ev = json.loads(row[0]) if row else {}
                membership = str(ev.get("content", {}).get("membership", "")) or None
            txn.execute(
                "INSERT INTO current_state (room_id, type, state_key, event_id, membership)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (room_id, type, state_key) DO UPDATE"
                " SET event_id = excluded.event_id, membership = excluded.membership",
                (room_id, etype, skey, eid, membership))

    def forget_purged(self, room_id: str, event_ids: Any, *, whole_room: bool) -> None:
        """Drop cached copies of rows an admin purge removed or changed: the events named,
        every cached event of the room (kept ones may have become outliers), and with
        ``whole_room`` its room version too."""
        for eid in list(event_ids):
            self._cache.pop(eid, None)
        for eid, se in list(self._cache.items()):
            if se.room_id == room_id:
                self._cache.pop(eid, None)
        if whole_room:
            self._room_versions.pop(room_id, None)

    # ------------------------------------------------------------------ reading
    def room_version(self, room_id: str) -> RoomVersion | None:
        rv = self._room_versions.get(room_id)
        if rv is None:
            v = self.db.run("room_version", lambda t: t.query_value(
                "SELECT room_version FROM rooms WHERE room_id = ?", (room_id,)), inline=True)
            if v is None:
                return None
            rv = KNOWN_ROOM_VERSIONS[v]
            self._room_versions[room_id] = rv
            if len(self._room_versions) > ROOM_VERSION_CACHE:  # drop the oldest entry
                del self._room_versions[next(iter(self._room_versions))]
        return rv

    def _row_to_stored(self, r: tuple) -> StoredEvent:
        return StoredEvent(event=json.loads(r[3]), room_id=r[2], stream_ordering=r[0],
                           state_group=r[8], outlier=bool(r[4]), rejection=r[5],
                           soft_failed=bool(r[6]), redacted_by=r[7], txn_device=r[9],
                           txn_id=r[10])

    def get_events(self, event_ids: Iterable[str]) -> dict[str, StoredEvent]:
        """Events by id (those we have), from the cache or the store."""
        ids = list(dict.fromkeys(event_ids))
        out: dict[str, StoredEvent] = {}
        missing = []
        cache = self._cache
        for eid in ids:
            se = cache.get(eid)
            if se is not None:
                out[eid] = se
                cache.move_to_end(eid)
            else:
                missing.append(eid)
        if missing:
            rows = self.db.run("get_events", self.fetch_events_txn, missing)
            for se in rows:
                out[se.event_id] = se
                self._remember(se)
        return out

    def get_event(self, event_id: str) -> StoredEvent | None:
        return self.get_events([event_id]).get(event_id)

    def has_annotation(self, room_id: str, target: str, sender: str, event_type: str,
                       key: str) -> bool:
        """Whether ``sender`` already has a live (not redacted, not rejected) ``m.annotation``
        of ``event_type`` with ``key`` on ``target``."""
        if any("\x00" in v for v in (target, key, sender, event_type)):
            return False  # no stored row holds a NUL (PostgreSQL text cannot)
        return bool(self.db.run("has_annotation", lambda t: t.query_value(
            "SELECT 1 FROM event_relations r JOIN events e ON e.event_id = r.event_id"
            " WHERE r.relates_to_id = ? AND r.rel_type = 'm.annotation'"
            " AND r.aggregation_key = ? AND r.sender = ? AND r.type = ? AND r.room_id = ?"
            " AND e.redacted_by IS NULL AND e.rejection IS NULL AND e.soft_failed = 0"
            " LIMIT 1", (target, key, sender, event_type, room_id))))

    def fetch_events_txn(self, txn: Txn, event_ids: Sequence[str]) -> list[StoredEvent]:
        out = []
        for i in range(0, len(event_ids), 200):
            chunk = event_ids[i:i + 200]
            marks = ",".join("?" * len(chunk))
            out.extend(self._row_to_stored(r) for r in txn.query(
                f"SELECT {_COLS} FROM events WHERE event_id IN ({marks})", chunk))
        return out

    def _remember(self, se: StoredEvent) -> None:
        self._cache[se.event_id] = se
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def visible_form(self, se: StoredEvent, rv: RoomVersion) -> dict[str, Any]:
        """The event as it should be served: pruned if redacted."""
        if se.redacted_by is None:
            return se.event
        pruned = redact(se.event, rv)
        pruned["event_id"] = se.event_id
        if "room_id" not in pruned:
            pruned["room_id"] = se.room_id
        return pruned

    # room-level reads used by the room actor at load time
    def load_room(self, room_id: str) -> dict[str, Any] | None:
        def _q(txn: Txn) -> dict[str, Any] | None:
            r = txn.query_one("SELECT room_version, creator, current_state_group, is_public"
                              " FROM rooms WHERE room_id = ?", (room_id,))
            if r is None:
                return None
            # oldest first, so the newest ten are the last ten (a new event's prev_events)
            ext = txn.query(
                "SELECT f.event_id, e.depth FROM room_forward_extremities f"
                " LEFT JOIN events e ON e.event_id = f.event_id WHERE f.room_id = ?"
                " ORDER BY e.depth, e.stream_ordering", (room_id,))
            extremities = [e for e, _ in ext]
            state = {(t, k): e for t, k, e in txn.query(
                "SELECT type, state_key, event_id FROM current_state WHERE room_id = ?",
                (room_id,))}
            # a new event's depth is one more than its deepest prev event
            max_depth = max((int(d or 0) for _, d in ext), default=0)
            return {"room_version": r[0], "creator": r[1], "current_state_group": r[2],
                    "is_public": bool(r[3]), "extremities": extremities, "state": state,
                    "max_depth": int(max_depth)}

        return self.db.run("load_room", _q)

    def get_current_state_ids(self, room_id: str) -> dict[StateKey, str]:
        return self.db.run("current_state", lambda t: {(ty, k): e for ty, k, e in t.query(
            "SELECT type, state_key, event_id FROM current_state WHERE room_id = ?",
            (room_id,))})

    @staticmethod
    def find_txns_txn(txn: Txn, room_id: str, keys: Sequence[tuple[str, str, str]]
                      ) -> dict[tuple[str, str, str], tuple[str, int]]:
        """Inside a transaction: which of ``keys`` ((user_id, device_id, txn_id)) already
        produced an event in ``room_id`` → (event_id, stream_ordering); one query a chunk."""
        out: dict[tuple[str, str, str], tuple[str, int]] = {}
        for i in range(0, len(keys), 100):
            chunk = keys[i:i + 100]
            where = " OR ".join(["(t.user_id = ? AND t.device_id = ? AND t.txn_id = ?)"]
                                * len(chunk))
            params: list[Any] = [room_id]
            for k in chunk:
                params.extend(k)
            for u, d, x, eid, so in txn.query(
                    "SELECT t.user_id, t.device_id, t.txn_id, t.event_id, e.stream_ordering"
                    " FROM event_txns t LEFT JOIN events e ON e.event_id = t.event_id"
                    f" WHERE t.room_id = ? AND ({where})", params):
                out[(u, d, x)] = (eid, int(so or 0))
        return out

    def get_txn_event(self, user_id: str, device_id: str, room_id: str,
                      txn_id: str) -> str | None:
        """The event id of an earlier send with this transaction id, in this room."""
        return self.db.run("get_txn", lambda t: t.query_value(
            "SELECT event_id FROM event_txns WHERE user_id = ? AND device_id = ?"
            " AND room_id = ? AND txn_id = ?", (user_id, device_id, room_id, txn_id)))

    # ------------------------------------------------------------------ DAG reads
    # (Federation II: the state at events and auth chains, for the RoomActor's PDU checks
    # and the federation endpoints that serve them.)
    def state_ids_after(self, event_id: str) -> dict[StateKey, str] | None:
        """The room state after ``event_id`` (its state group), or ``None`` when the event
        is unknown or has no state here (an outlier)."""
        se = self.get_event(event_id)
        if se is None or se.outlier or se.state_group is None:
            return None
        return self.state_groups.get_state(se.state_group)

    def state_ids_before(self, event_id: str) -> dict[StateKey, str] | None:
        """The room state before ``event_id``: its state after, with its own key put back
        to what it replaced (``unsigned.replaces_state``, set when it was persisted); a
        rejected event changed nothing.  ``None`` when unknown or an outlier."""
        se = self.get_event(event_id)
        if se is None or se.outlier or se.state_group is None:
            return None
        state = self.state_groups.get_state(se.state_group)
        ev = se.event
        if se.rejection is None and isinstance(ev.get("state_key"), str):
            key = (ev["type"], ev["state_key"])
            if state.get(key) == event_id:
                replaced = (ev.get("unsigned") or {}).get("replaces_state")
                if isinstance(replaced, str):
                    state[key] = replaced
                else:
                    del state[key]
        return state

    def auth_chain_ids(self, event_ids: Iterable[str]) -> set[str]:
        """Every event reachable from ``event_ids`` through auth_events (not the events
        themselves unless one is in another's chain); one recursive query."""
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return set()

        def _q(txn: Txn) -> set[str]:
            out: set[str] = set()
            for i in range(0, len(ids), 200):
                chunk = ids[i:i + 200]
                out.update(r[0] for r in txn.query(
                    "WITH RECURSIVE chain(id) AS ("
                    f" SELECT auth_id FROM event_auth WHERE event_id IN ({','.join('?' * len(chunk))})"
                    " UNION SELECT a.auth_id FROM event_auth a JOIN chain c ON a.event_id = c.id)"
                    " SELECT id FROM chain", chunk))
            return out

        return self.db.run("auth_chain_ids", _q)

    def with_children(self, event_ids: Iterable[str]) -> set[str]:
        """Those of ``event_ids`` that an accepted timeline event names as a prev_event
        (such an event is no forward extremity)."""
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return set()

        def _q(txn: Txn) -> set[str]:
            out: set[str] = set()
            for i in range(0, len(ids), 200):
                chunk = ids[i:i + 200]
                out.update(r[0] for r in txn.query(
                    "SELECT DISTINCT g.prev_event_id FROM event_edges g"
                    " JOIN events e ON e.event_id = g.event_id"
                    f" WHERE g.prev_event_id IN ({','.join('?' * len(chunk))})"
                    " AND e.outlier = 0 AND e.rejection IS NULL AND e.soft_failed = 0", chunk))
            return out

        return self.db.run("event_children", _q)
