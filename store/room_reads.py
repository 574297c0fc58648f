"""Queries for the read side of rooms: timeline pages in topological order, stream positions
turned into timeline cuts, a few state keys at many state groups, relation children (with
recursion), thread roots and the rows behind bundled aggregations.

Everything here reads the store directly (ARCHITECTURE invariant 2) and serves only events
that are part of the timeline: never outliers, rejected or soft-failed events.  Keys are
``(depth, stream_ordering)``; a *cut* is such a key, meaning "just after that event" (see
web/pagination.py).  Filtering by visibility happens above this module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from store.database import Database, Txn
from store.state import StateKey

Key = tuple[int, int]

#: Conditions for an event that may be served (alias ``e``).
TIMELINE = "e.outlier = 0 AND e.rejection IS NULL AND e.soft_failed = 0"
_CHUNK = 500


@dataclass(frozen=True)
class Row:
    """One timeline event's position."""

    depth: int
    stream: int
    event_id: str

    @property
    def key(self) -> Key:
        return (self.depth, self.stream)


@dataclass(frozen=True)
class SqlFilter:
    """The part of a RoomEventFilter that SQL can apply (exact types and senders)."""

    types: tuple[str, ...] | None = None
    not_types: tuple[str, ...] = ()
    senders: tuple[str, ...] | None = None
    not_senders: tuple[str, ...] = ()

    def clause(self) -> tuple[str, list[object]]:
        parts: list[str] = []
        args: list[object] = []
        for col, values, neg in (("e.type", self.types, False), ("e.type", self.not_types, True),
                                 ("e.sender", self.senders, False),
                                 ("e.sender", self.not_senders, True)):
            if values is None or (neg and not values):
                continue
            if not values:                      # an empty include list matches nothing
                parts.append("1 = 0")
                continue
            parts.append(f"{col} {'NOT IN' if neg else 'IN'} ({','.join('?' * len(values))})")
            args.extend(values)
        return (" AND " + " AND ".join(parts)) if parts else "", args


def _range(lo: Key | None, hi: Key | None, d: str = "e.depth",
           s: str = "e.stream_ordering") -> tuple[str, list[object]]:
    """SQL for ``lo < key <= hi`` (either bound optional)."""
    sql, args = "", []
    if lo is not None:
        sql += f" AND ({d} > ? OR ({d} = ? AND {s} > ?))"
        args += [lo[0], lo[0], lo[1]]
    if hi is not None:
        sql += f" AND ({d} < ? OR ({d} = ? AND {s} <= ?))"
        args += [hi[0], hi[0], hi[1]]
    return sql, args


class RoomReads:
    """The store port of room reads; one instance over the shared :class:`Database`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # ---------------------------------------------------------------- positions
    def topological_cut(self, room_id: str, stream: int) -> Key:
        """The cut in ``room_id``'s timeline equal to global stream position ``stream``."""
        r = self.db.run("topological_cut", lambda t: t.query_one(
            f"SELECT e.depth FROM events e WHERE e.room_id = ? AND e.stream_ordering <= ?"
            f" AND {TIMELINE} ORDER BY e.stream_ordering DESC LIMIT 1", (room_id, stream)))
        return (int(r[0]), stream) if r else (0, stream)

    def room_end(self, room_id: str) -> Key:
        """The cut after the last event of the room's timeline."""
        r = self.db.run("room_end", lambda t: t.query_one(
            f"SELECT e.depth, e.stream_ordering FROM events e WHERE e.room_id = ? AND {TIMELINE}"
            " ORDER BY e.depth DESC, e.stream_ordering DESC LIMIT 1", (room_id,)))
        return (int(r[0]), int(r[1])) if r else (0, 0)

    def event_key(self, event_id: str) -> Key | None:
        r = self.db.run("event_key", lambda t: t.query_one(
            "SELECT depth, stream_ordering FROM events WHERE event_id = ?", (event_id,)))
        return (int(r[0]), int(r[1])) if r else None

    # ---------------------------------------------------------------- timeline
    def timeline(self, room_id: str, lo: Key | None, hi: Key | None, backwards: bool,
                 limit: int, flt: SqlFilter | None = None) -> list[Row]:
        """Up to ``limit`` events of the room with ``lo < key <= hi``, nearest the start
        of the walk first (descending keys when ``backwards``)."""
        rng, args = _range(lo, hi)
        fsql, fargs = (flt or SqlFilter()).clause()
        order = "DESC" if backwards else "ASC"
        sql = (f"SELECT e.depth, e.stream_ordering, e.event_id FROM events e"
               f" WHERE e.room_id = ? AND {TIMELINE}{rng}{fsql}"
               f" ORDER BY e.depth {order}, e.stream_ordering {order} LIMIT ?")
        rows = self.db.run("room_timeline", lambda t: t.query(
            sql, [room_id, *args, *fargs, limit]))
        return [Row(int(d), int(s), e) for d, s, e in rows]

    # ---------------------------------------------------------------- state
    def state_group_at(self, room_id: str, stream: int) -> int | None:
        """The state group after the room's last timeline event at or before ``stream``."""
        return self.db.run("state_group_at", lambda t: t.query_value(
            f"SELECT e.state_group FROM events e WHERE e.room_id = ? AND e.stream_ordering <= ?"
            f" AND {TIMELINE} AND e.state_group IS NOT NULL"
            " ORDER BY e.stream_ordering DESC LIMIT 1", (room_id, stream)))

    def state_keys_at(self, groups: Iterable[int],
                      keys: Sequence[StateKey]) -> dict[int, dict[StateKey, str]]:
        """For each state group, the event ids of just ``keys`` (absent keys left out).

        Two batched queries (the delta chains of all groups, by a recursive query; then the
        matching entries of every group on them) and a walk in memory, so a page of events
        costs two queries however many groups it spans."""
        wanted = list(dict.fromkeys(groups))
        if not wanted or not keys:
            return {g: {} for g in wanted}
        return self.db.run("state_keys_at", self._state_keys_txn, wanted, list(keys))

    @staticmethod
    def _state_keys_txn(txn: Txn, groups: list[int],
                        keys: list[StateKey]) -> dict[int, dict[StateKey, str]]:
        prev: dict[int, int | None] = {}
        for i in range(0, len(groups), _CHUNK):
            chunk = [g for g in groups[i:i + _CHUNK] if g not in prev]
            if not chunk:
                continue
            # the whole delta chain of every group, in one recursive query
            for gid, pg in txn.query(
                    "WITH RECURSIVE chain(id, prev) AS ("
                    " SELECT id, prev_group FROM state_groups"
                    f" WHERE id IN ({','.join('?' * len(chunk))})"
                    " UNION SELECT s.id, s.prev_group FROM state_groups s"
                    " JOIN chain c ON s.id = c.prev)"
                    " SELECT id, prev FROM chain", chunk):
                prev[int(gid)] = int(pg) if pg is not None else None
        entries: dict[int, dict[StateKey, str | None]] = {}
        types = sorted({t for t, _ in keys})
        skeys = sorted({k for _, k in keys})
        keyset = set(keys)
        seen = list(prev)
        for i in range(0, len(seen), _CHUNK):
            chunk = seen[i:i + _CHUNK]
            for gid, t, k, e in txn.query(
                    "SELECT state_group, type, state_key, event_id FROM state_group_entries"
                    f" WHERE state_group IN ({','.join('?' * len(chunk))})"
                    f" AND type IN ({','.join('?' * len(types))})"
                    f" AND state_key IN ({','.join('?' * len(skeys))})",
                    [*chunk, *types, *skeys]):
                if (t, k) in keyset:
                    entries.setdefault(int(gid), {})[(t, k)] = e
        out: dict[int, dict[StateKey, str]] = {}
        for g in groups:
            found: dict[StateKey, str] = {}
            pending = set(keyset)
            cur: int | None = g
            while cur is not None and pending:
                for key, eid in entries.get(cur, {}).items():
                    if key in pending:
                        pending.discard(key)
                        if eid is not None:
                            found[key] = eid
                cur = prev.get(cur)
            out[g] = found
        return out

    def join_positions(self, room_id: str, user_id: str) -> list[tuple[int, int]]:
        """(stream position, DAG depth) of the user's joins to the room, by stream position."""
        return self.db.run("join_positions", lambda t: [(int(r[0]), int(r[1])) for r in t.query(
            "SELECT m.stream_ordering, e.depth FROM room_memberships m"
            " JOIN events e ON e.event_id = m.event_id WHERE m.room_id = ? AND m.user_id = ?"
            " AND m.membership = 'join' ORDER BY m.stream_ordering", (room_id, user_id))])

    # ---------------------------------------------------------------- history edge
    def backward_edge(self, room_id: str, n: int = 20) -> tuple[list[str], list[str]]:
        """Where the history held here starts: (the ``n`` lowest events of the room's DAG
        held as non-outliers, lowest first; the prev events they name that are not held as
        non-outliers).  The second list empty means the start of the room is held (or
        the missing prevs are outliers the caller may judge)."""
        def q(t: Txn) -> tuple[list[str], list[str]]:
            low = [r[0] for r in t.query(
                "SELECT event_id FROM events WHERE room_id = ? AND outlier = 0"
                " ORDER BY depth ASC, stream_ordering ASC LIMIT ?", (room_id, n))]
            if not low:
                return [], []
            marks = ",".join("?" * len(low))
            missing = [r[0] for r in t.query(
                f"SELECT DISTINCT g.prev_event_id FROM event_edges g WHERE g.event_id IN"
                f" ({marks}) AND NOT EXISTS (SELECT 1 FROM events p WHERE"
                f" p.event_id = g.prev_event_id AND p.outlier = 0)"
                f" ORDER BY g.prev_event_id", low)]
            return low, missing
        return self.db.run("backward_edge", q)

    # ---------------------------------------------------------------- relations
    def relation_children(self, room_id: str, parent_id: str, *, rel_type: str | None,
                          event_type: str | None, max_level: int, lo: Key | None,
                          hi: Key | None, backwards: bool, limit: int) -> list[Row]:
        """Events relating to ``parent_id`` directly (level 1) or through up to
        ``max_level`` relations, ``lo < key <= hi``; redacted children (their relation is
        gone) are left out."""
        rng, args = _range(lo, hi)
        where, wargs = "", []
        if rel_type is not None:
            where += " AND r.rel_type = ?"
            wargs.append(rel_type)
        if event_type is not None:
            where += " AND e.type = ?"
            wargs.append(event_type)
        order = "DESC" if backwards else "ASC"
        sql = ("WITH RECURSIVE rel(event_id, lvl) AS ("
               " SELECT event_id, 1 FROM event_relations WHERE relates_to_id = ? AND room_id = ?"
               " UNION SELECT c.event_id, rel.lvl + 1 FROM event_relations c"
               " JOIN rel ON c.relates_to_id = rel.event_id WHERE rel.lvl < ?)"
               " SELECT e.depth, e.stream_ordering, e.event_id FROM rel"
               " JOIN event_relations r ON r.event_id = rel.event_id"
               " JOIN events e ON e.event_id = rel.event_id"
               f" WHERE e.room_id = ? AND {TIMELINE} AND e.redacted_by IS NULL{where}{rng}"
               f" ORDER BY e.depth {order}, e.stream_ordering {order} LIMIT ?")
        rows = self.db.run("relation_children", lambda t: t.query(
            sql, [parent_id, room_id, max_level, room_id, *wargs, *args, limit]))
        return [Row(int(d), int(s), e) for d, s, e in rows]

    # ---------------------------------------------------------------- threads
    def thread_roots(self, room_id: str, *, before: int | None, limit: int,
                     participant: str | None) -> list[tuple[str, int]]:
        """(root event id, stream position of its latest reply) of the room's threads,
        latest activity first, only those with latest reply ``<= before``;
        ``participant`` keeps threads that user started or replied in."""
        having, args = "", []
        if before is not None:
            having += " AND MAX(r.stream_ordering) <= ?"
            args.append(before)
        if participant is not None:
            having += " AND (root.sender = ? OR SUM(CASE WHEN r.sender = ? THEN 1 ELSE 0 END) > 0)"
            args += [participant, participant]
        sql = ("SELECT r.relates_to_id, MAX(r.stream_ordering) FROM event_relations r"
               " JOIN events e ON e.event_id = r.event_id"
               " JOIN events root ON root.event_id = r.relates_to_id"
               f" WHERE r.room_id = ? AND r.rel_type = 'm.thread' AND {TIMELINE}"
               " AND e.redacted_by IS NULL AND root.room_id = r.room_id AND root.outlier = 0"
               " AND root.rejection IS NULL AND root.soft_failed = 0"
               f" GROUP BY r.relates_to_id, root.sender HAVING 1 = 1{having}"
               " ORDER BY MAX(r.stream_ordering) DESC LIMIT ?")
        rows = self.db.run("thread_roots", lambda t: t.query(sql, [room_id, *args, limit]))
        return [(e, int(s)) for e, s in rows]

    # ---------------------------------------------------------------- aggregations
    def children_by_parent(self, parent_ids: Sequence[str], rel_type: str,
                           per_parent: int | None = None) -> "ChildRows":
        """Live (served, unredacted) children of each parent with ``rel_type``, latest
        first, with counts; at most ``per_parent`` ids kept per parent."""
        out = ChildRows()
        if not parent_ids:
            return out
        ids = list(dict.fromkeys(parent_ids))

        def _q(txn: Txn) -> None:
            for i in range(0, len(ids), _CHUNK):
                chunk = ids[i:i + _CHUNK]
                for parent, eid, sender in txn.query(
                        "SELECT r.relates_to_id, r.event_id, r.sender FROM event_relations r"
                        " JOIN events e ON e.event_id = r.event_id"
                        f" WHERE r.relates_to_id IN ({','.join('?' * len(chunk))})"
                        f" AND r.rel_type = ? AND {TIMELINE} AND e.redacted_by IS NULL"
                        " AND e.room_id = r.room_id"
                        " ORDER BY e.depth DESC, e.stream_ordering DESC", [*chunk, rel_type]):
                    out.count[parent] = out.count.get(parent, 0) + 1
                    out.senders.setdefault(parent, set()).add(sender)
                    kept = out.ids.setdefault(parent, [])
                    if per_parent is None or len(kept) < per_parent:
                        kept.append(eid)

        self.db.run("relation_aggregates", _q)
        return out

    def thread_summaries(self, root_ids: Sequence[str], user_id: str,
                         latest: int = 5) -> dict[str, tuple[int, bool, list[str]]]:
        """root → (reply count, whether ``user_id`` replied, up to ``latest`` reply ids
        latest first), for the roots that have live replies."""
        ids = list(dict.fromkeys(root_ids))
        if not ids:
            return {}

        def _q(txn: Txn) -> dict[str, tuple[int, bool, list[str]]]:
            out: dict[str, tuple[int, bool, list[str]]] = {}
            base = (" FROM event_relations r JOIN events e ON e.event_id = r.event_id"
                    f" WHERE r.rel_type = 'm.thread' AND {TIMELINE} AND e.redacted_by IS NULL"
                    " AND e.room_id = r.room_id")
            for i in range(0, len(ids), _CHUNK):
                chunk = ids[i:i + _CHUNK]
                for root, n, mine in txn.query(
                        "SELECT r.relates_to_id, COUNT(*),"
                        " SUM(CASE WHEN r.sender = ? THEN 1 ELSE 0 END)" + base +
                        f" AND r.relates_to_id IN ({','.join('?' * len(chunk))})"
                        " GROUP BY r.relates_to_id", [user_id, *chunk]):
                    out[root] = (int(n), bool(mine), [])
            for root in out:
                out[root][2].extend(e for (e,) in txn.query(
                    "SELECT e.event_id" + base + " AND r.relates_to_id = ?"
                    " ORDER BY e.depth DESC, e.stream_ordering DESC LIMIT ?", (root, latest)))
            return out

        return self.db.run("thread_summaries", _q)


@dataclass
class ChildRows:
    """Children of several parents for one rel_type: ids (latest first), counts, senders."""

    ids: dict[str, list[str]] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)
    senders: dict[str, set[str]] = field(default_factory=dict)
