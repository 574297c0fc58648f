"""The outbound federation queue in the store (migration ``061_federation_queue.sql``):
``federation_destinations`` (per-destination back-off, last success, PDU position) and
``federation_outbox`` (durable EDUs not yet acknowledged).

The outbox IS the queue for durable EDUs (server-server-api "Send-to-device messaging",
"Device Management"): rows are added inside the caller's write transaction, read by the
destination's RemoteServerActor in stream order, a page at a time, and deleted only once the
destination acknowledged the transaction that carried them.

PDUs have no queue of their own (docs/federation.md "Outbound: the RemoteServerActor and
catch-up"): a destination's ``pdu_position`` is the events stream ordering it acknowledged, and
the reads at the end of this module replay OUR events after it from ``events`` (the rooms the
destination's users were ever members of, who was joined when, the newest
``catchup_max_per_room`` per room).  Our events are told apart by the sender's server name
(the suffix after the user id's first ``:``), compared with ``substr`` on both engines.
"Ours" also covers the events of other servers we relay as the resident server (a join,
leave or knock received through send_join / send_leave / send_knock): their ids are in
``federation_relayed`` (migration ``067_federation_relayed.sql``, :meth:`PduReads.relay`),
one primary-key probe per candidate event; :attr:`PduRow.relayed_from` names the server that
sent one to us, which never gets it back.

Stream ids are allocated by this process (a counter started from ``MAX(stream_id)``), so an
insert never takes a lock beyond its own row; on PostgreSQL two writers may commit their rows
out of id order, which only means the later-committed, lower id is sent in the next
transaction (the reader takes the lowest ids still present, never "after a position").  With
several processes this becomes a PostgreSQL sequence (ARCHITECTURE "Scale-out").
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any, Sequence

from store.database import Database, Txn

#: a catch-up episode names its rooms in an ``IN (...)`` list up to this many, else it asks
#: ``room_memberships`` again in a sub-query (SQLite's bound on host parameters is 32,766)
MAX_ROOMS_INLINE = 2000

ORDER_COLUMNS = ("destination", "retry_last_ts", "retry_interval", "failure_ts",
                 "last_successful_stream_ordering")
_ORDER_SQL = {"last_successful_stream_ordering": "pdu_position"}


@dataclass(frozen=True, slots=True)
class OutboxRow:
    stream_id: int
    edu_type: str
    content: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PduRow:
    """One of our events, as the outbound queue reads it."""

    stream_ordering: int
    room_id: str
    event: dict[str, Any]            # as stored (event_id and our unsigned included)
    room_version: str
    redacted: bool
    relayed_from: str | None = None  # another server's event we relay: the server it came from

    @property
    def membership_target(self) -> tuple[str, str] | None:
        """(membership, user id) of an ``m.room.member`` event, else None."""
        ev = self.event
        if ev.get("type") != "m.room.member" or not isinstance(ev.get("state_key"), str):
            return None
        content = ev.get("content")
        m = content.get("membership") if isinstance(content, dict) else None
        return (m if isinstance(m, str) else "", ev["state_key"])


@dataclass(frozen=True, slots=True)
class DestinationRow:
    destination: str
    failure_count: int
    failure_ts: int | None
    retry_last_ts: int
    retry_interval: int
    last_success_ts: int | None
    last_failure: str | None
    last_failure_at: int | None
    pdu_position: int | None

    @property
    def retry_at(self) -> int | None:
        """When the back-off ends (ms), or None when healthy."""
        return self.retry_last_ts + self.retry_interval if self.retry_interval > 0 else None


_COLS = ("destination, failure_count, failure_ts, retry_last_ts, retry_interval, "
         "last_success_ts, last_failure, last_failure_at, pdu_position")


def _dest(r: Sequence[Any]) -> DestinationRow:
    return DestinationRow(r[0], int(r[1]), r[2], int(r[3]), int(r[4]), r[5], r[6], r[7], r[8])


class FederationQueueStore:
    """Reads and writes of the two tables.  One instance per process (it owns the counter)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        top = db.run("federation_outbox_max", lambda t: t.query_value(
            "SELECT MAX(stream_id) FROM federation_outbox", default=0))
        self._ids = itertools.count(int(top) + 1)
        self._known: set[str] = set()  # destinations known to have a row (a bounded cache)

    # -- the outbox -----------------------------------------------------------------------

    def add_outbox(self, txn: Txn, destination: str, edu_type: str, content: dict[str, Any],
                   now_ms: int) -> int:
        """Insert one durable EDU inside ``txn`` (the caller's transaction); its stream id.
        Safe in a thread of the pool (the counter's ``next`` is atomic)."""
        stream_id = next(self._ids)
        if destination not in self._known:  # so the operator sees it from the first EDU on
            txn.execute("INSERT INTO federation_destinations (destination) VALUES (?)"
                        " ON CONFLICT (destination) DO NOTHING", (destination,))
            if len(self._known) >= 10_000:
                self._known.clear()
            self._known.add(destination)  # a rollback leaves it unset: the actor's load adds it
        txn.execute("INSERT INTO federation_outbox (stream_id, destination, edu_type, content,"
                    " created_ts) VALUES (?, ?, ?, ?, ?)",
                    (stream_id, destination, edu_type,
                     json.dumps(content, ensure_ascii=False, separators=(",", ":")), now_ms))
        return stream_id

    def outbox_page(self, destination: str, limit: int) -> list[OutboxRow]:
        """The ``limit`` oldest undelivered EDUs of ``destination``, in stream order."""
        rows = self.db.run("federation_outbox_page", lambda t: t.query(
            "SELECT stream_id, edu_type, content FROM federation_outbox WHERE destination = ?"
            " ORDER BY stream_id LIMIT ?", (destination, limit)))
        return [OutboxRow(int(r[0]), r[1], json.loads(r[2])) for r in rows]

    def acknowledge(self, destination: str, stream_ids: Sequence[int], now_ms: int, *,
                    pdu_position: int | None = None, refused: str | None = None,
                    touch: bool = True) -> None:
        """One write: the destination answered a transaction holding ``stream_ids``.

        The rows go, and the destination is healthy again (no back-off): either it
        acknowledged them (``last_success_ts`` moves, unless ``touch`` is false and nothing
        else changes) or it refused that transaction for good (``refused``: a 4xx, whose
        reason is kept for the operator)."""
        def _t(txn: Txn) -> None:
            if stream_ids:
                marks = ", ".join("?" for _ in stream_ids)
                txn.execute(f"DELETE FROM federation_outbox WHERE destination = ?"
                            f" AND stream_id IN ({marks})", (destination, *stream_ids))
            if refused is not None:
                txn.execute(
                    "UPDATE federation_destinations SET failure_count = 0, failure_ts = NULL,"
                    " retry_last_ts = 0, retry_interval = 0, last_failure = ?,"
                    " last_failure_at = ?, pdu_position = COALESCE(?, pdu_position)"
                    " WHERE destination = ?", (refused[:500], now_ms, pdu_position, destination))
            elif touch or pdu_position is not None:
                txn.execute(
                    "UPDATE federation_destinations SET failure_count = 0, failure_ts = NULL,"
                    " retry_last_ts = 0, retry_interval = 0, last_success_ts = ?,"
                    " pdu_position = COALESCE(?, pdu_position) WHERE destination = ?",
                    (now_ms, pdu_position, destination))
        self.db.run("federation_acknowledge", _t, write=True)

    def outbox_count(self, destination: str) -> int:
        return int(self.db.run("federation_outbox_count", lambda t: t.query_value(
            "SELECT COUNT(*) FROM federation_outbox WHERE destination = ?", (destination,),
            default=0)))

    def outbox_counts(self, destinations: Sequence[str]) -> dict[str, int]:
        if not destinations:
            return {}
        marks = ", ".join("?" for _ in destinations)
        rows = self.db.run("federation_outbox_counts", lambda t: t.query(
            f"SELECT destination, COUNT(*) FROM federation_outbox WHERE destination IN ({marks})"
            " GROUP BY destination", tuple(destinations)))
        return {r[0]: int(r[1]) for r in rows}

    def destinations_with_outbox(self) -> list[tuple[str, int | None]]:
        """(destination, retry_at or None) of every destination with undelivered rows."""
        rows = self.db.run("federation_outbox_destinations", lambda t: t.query(
            "SELECT o.destination, d.retry_last_ts, d.retry_interval FROM"
            " (SELECT DISTINCT destination FROM federation_outbox) o"
            " LEFT JOIN federation_destinations d ON d.destination = o.destination"))
        out: list[tuple[str, int | None]] = []
        for dest, last, interval in rows:
            out.append((dest, int(last) + int(interval) if interval else None))
        return out

    # -- destinations ---------------------------------------------------------------------

    def get(self, destination: str) -> DestinationRow | None:
        r = self.db.run("federation_destination", lambda t: t.query_one(
            f"SELECT {_COLS} FROM federation_destinations WHERE destination = ?",
            (destination,)))
        return _dest(r) if r is not None else None

    def ensure(self, destination: str) -> DestinationRow:
        """The destination's row, created (healthy) if it has none."""
        row = self.get(destination)
        if row is not None:
            return row

        def _t(txn: Txn) -> Sequence[Any]:
            txn.execute("INSERT INTO federation_destinations (destination) VALUES (?)"
                        " ON CONFLICT (destination) DO NOTHING", (destination,))
            r = txn.query_one(f"SELECT {_COLS} FROM federation_destinations"
                              " WHERE destination = ?", (destination,))
            assert r is not None
            return r
        return _dest(self.db.run("federation_destination_ensure", _t, write=True))

    def set_pdu_position(self, destination: str, position: int, *,
                         only_if_unset: bool = False) -> None:
        """Move ``pdu_position`` forward to ``position`` (never back); ``only_if_unset``: set
        it only if the destination has none yet (the first PDU ever noted for it).  Creates
        the row if needed."""
        def _t(txn: Txn) -> None:
            txn.execute("INSERT INTO federation_destinations (destination) VALUES (?)"
                        " ON CONFLICT (destination) DO NOTHING", (destination,))
            if only_if_unset:
                txn.execute("UPDATE federation_destinations SET pdu_position = ?"
                            " WHERE destination = ? AND pdu_position IS NULL",
                            (position, destination))
            else:
                txn.execute("UPDATE federation_destinations SET pdu_position = ?"
                            " WHERE destination = ? AND (pdu_position IS NULL"
                            " OR pdu_position < ?)", (position, destination, position))
        self.db.run("federation_pdu_position", _t, write=True)

    def record_failure(self, destination: str, now_ms: int, failure_count: int,
                       failure_ts: int, retry_interval_ms: int, reason: str) -> None:
        def _t(txn: Txn) -> None:
            txn.execute(
                "UPDATE federation_destinations SET failure_count = ?, failure_ts = ?,"
                " retry_last_ts = ?, retry_interval = ?, last_failure = ?, last_failure_at = ?"
                " WHERE destination = ?",
                (failure_count, failure_ts, now_ms, retry_interval_ms, reason[:500], now_ms,
                 destination))
        self.db.run("federation_destination_failure", _t, write=True)

    def reset_backoff(self, destination: str) -> None:
        def _t(txn: Txn) -> None:
            txn.execute("UPDATE federation_destinations SET failure_count = 0, failure_ts = NULL,"
                        " retry_last_ts = 0, retry_interval = 0 WHERE destination = ?",
                        (destination,))
        self.db.run("federation_destination_reset", _t, write=True)

    def backing_off(self) -> dict[str, int]:
        """destination -> retry_at (ms) of every destination with a back-off on record."""
        rows = self.db.run("federation_backing_off", lambda t: t.query(
            "SELECT destination, retry_last_ts + retry_interval FROM federation_destinations"
            " WHERE retry_interval > 0"))
        return {r[0]: int(r[1]) for r in rows}

    def page(self, start: int, limit: int, search: str | None = None,
             order_by: str = "destination", backwards: bool = False
             ) -> tuple[list[DestinationRow], int]:
        """Synapse's ``get_destinations_paginate``: a page and the total matching."""
        if order_by not in ORDER_COLUMNS:
            raise ValueError(f"order_by must be one of {ORDER_COLUMNS}")
        column = _ORDER_SQL.get(order_by, order_by)
        where, args = "", []
        if search:
            where = "WHERE LOWER(destination) LIKE ?"
            args.append("%" + search.lower() + "%")
        order = "DESC NULLS LAST" if backwards else "ASC NULLS FIRST"  # same on both engines

        def _t(txn: Txn) -> tuple[list[DestinationRow], int]:
            total = int(txn.query_value(f"SELECT COUNT(*) FROM federation_destinations {where}",
                                        tuple(args), default=0))
            rows = txn.query(f"SELECT {_COLS} FROM federation_destinations {where}"
                             f" ORDER BY {column} {order}, destination ASC LIMIT ? OFFSET ?",
                             (*args, limit, start))
            return [_dest(r) for r in rows], total
        return self.db.run("federation_destinations_page", _t)


# -- PDU catch-up reads ------------------------------------------------------------------------

#: the timeline events we send: accepted, in the room's DAG, sent by a user of
#: ``server_name`` or relayed by us (``federation_relayed``)
_OURS = ("e.outlier = 0 AND e.rejection IS NULL AND e.soft_failed = 0"
         " AND (substr(e.sender, length(e.sender) - CAST(? AS INTEGER)) = ?"
         " OR EXISTS (SELECT 1 FROM federation_relayed f WHERE f.event_id = e.event_id))")
_PDU_COLS = ("e.stream_ordering, e.room_id, e.json, r.room_version, e.redacted_by,"
             " (SELECT f.origin FROM federation_relayed f WHERE f.event_id = e.event_id)")


def _suffix(server_name: str) -> tuple[int, str]:
    """Parameters of a ``substr(x, length(x) - n) = ?`` test for ``x`` ending ``:server``."""
    return len(server_name), ":" + server_name


def _pdu(r: Sequence[Any]) -> PduRow:
    return PduRow(int(r[0]), r[1], json.loads(r[2]), r[3], r[4] is not None, r[5])


class PduReads:
    """The events-stream reads of the outbound PDU queue (all read-only)."""

    def __init__(self, db: Database, server_name: str) -> None:
        self.db = db
        self.server_name = server_name
        self._ours = _suffix(server_name)
        self.reads = 0  # queries run (tests: what a page costs)

    def _run(self, name: str, fn: Any) -> Any:
        self.reads += 1
        return self.db.run(name, fn)

    def relay(self, room_id: str, event_id: str, origin: str, now_ms: int) -> int | None:
        """Record that we relay ``event_id`` (another server's, accepted in ``room_id``) to
        the room's other servers; its stream ordering, or None if it is not an accepted
        timeline event of that room (nothing is recorded then).  One write."""
        def _t(txn: Txn) -> int | None:
            so = txn.query_value(
                "SELECT stream_ordering FROM events WHERE event_id = ? AND room_id = ?"
                " AND outlier = 0 AND rejection IS NULL AND soft_failed = 0",
                (event_id, room_id), default=None)
            if so is None:
                return None
            txn.execute("INSERT INTO federation_relayed (event_id, room_id, origin, created_ts)"
                        " VALUES (?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
                        (event_id, room_id, origin, now_ms))
            return int(so)
        self.reads += 1
        return self.db.run("federation_relay", _t, write=True)

    def head(self) -> int:
        """The newest stream ordering (used when no live stream position is wired)."""
        return int(self._run("federation_events_head", lambda t: t.query_value(
            "SELECT MAX(stream_ordering) FROM events", default=0)))

    def at(self, orderings: Sequence[int]) -> list[PduRow]:
        """Our events at ``orderings`` (the live window), in stream order."""
        if not orderings:
            return []
        marks = ", ".join("?" for _ in orderings)
        rows = self._run("federation_pdus_at", lambda t: t.query(
            f"SELECT {_PDU_COLS} FROM events e JOIN rooms r ON r.room_id = e.room_id"
            f" WHERE e.stream_ordering IN ({marks}) AND {_OURS} ORDER BY e.stream_ordering",
            (*orderings, *self._ours)))
        return [_pdu(r) for r in rows]

    def rooms_of(self, destination: str) -> list[str]:
        """Every room a user of ``destination`` was ever a member of (invited, joined, left,
        banned, knocked): the only rooms where it may be owed anything."""
        rows = self._run("federation_rooms_of", lambda t: t.query(
            "SELECT DISTINCT room_id FROM room_memberships"
            " WHERE substr(user_id, length(user_id) - CAST(? AS INTEGER)) = ?",
            _suffix(destination)))
        return sorted(r[0] for r in rows)

    def _rooms_sql(self, destination: str, rooms: Sequence[str]
                   ) -> tuple[str, tuple[Any, ...]]:
        if len(rooms) <= MAX_ROOMS_INLINE:
            return (f"e.room_id IN ({', '.join('?' for _ in rooms)})", tuple(rooms))
        return ("e.room_id IN (SELECT room_id FROM room_memberships"
                " WHERE substr(user_id, length(user_id) - CAST(? AS INTEGER)) = ?)",
                _suffix(destination))

    def cutoffs(self, destination: str, rooms: Sequence[str], after: int, upto: int,
                per_room: int) -> dict[str, int]:
        """room → the stream ordering of its ``per_room``-th newest event of ours in
        (after, upto], for the rooms that have more than that: older ones are not replayed."""
        if not rooms:
            return {}
        where, args = self._rooms_sql(destination, rooms)
        rows = self._run("federation_catchup_cutoffs", lambda t: t.query(
            "SELECT room_id, stream_ordering FROM (SELECT e.room_id, e.stream_ordering,"
            " ROW_NUMBER() OVER (PARTITION BY e.room_id ORDER BY e.stream_ordering DESC) AS n"
            f" FROM events e WHERE {where} AND e.stream_ordering > ?"
            f" AND e.stream_ordering <= ? AND {_OURS}) ranked WHERE n = ?",
            (*args, after, upto, *self._ours, per_room)))
        return {r[0]: int(r[1]) for r in rows}

    def page(self, destination: str, rooms: Sequence[str], after: int, upto: int,
             limit: int) -> list[PduRow]:
        """Up to ``limit`` of our events in ``rooms`` after ``after`` up to ``upto``, in
        stream order (who may see them is decided by the caller)."""
        if not rooms:
            return []
        where, args = self._rooms_sql(destination, rooms)
        rows = self._run("federation_catchup_page", lambda t: t.query(
            f"SELECT {_PDU_COLS} FROM events e JOIN rooms r ON r.room_id = e.room_id"
            f" WHERE {where} AND e.stream_ordering > ? AND e.stream_ordering <= ?"
            f" AND {_OURS} ORDER BY e.stream_ordering LIMIT ?",
            (*args, after, upto, *self._ours, limit)))
        return [_pdu(r) for r in rows]

    def memberships(self, destination: str, rooms: Sequence[str], upto: int
                    ) -> list[tuple[str, str, str, int]]:
        """(room, user, membership, stream ordering) of every membership event of a user of
        ``destination`` in ``rooms`` up to ``upto``, oldest first (soft-failed ones never
        changed the room's state; rejected ones have no row)."""
        if not rooms:
            return []
        marks = ", ".join("?" for _ in rooms)
        rows = self._run("federation_catchup_members", lambda t: t.query(
            "SELECT m.room_id, m.user_id, m.membership, m.stream_ordering"
            " FROM room_memberships m JOIN events e ON e.event_id = m.event_id"
            f" WHERE m.room_id IN ({marks}) AND m.stream_ordering <= ?"
            " AND substr(m.user_id, length(m.user_id) - CAST(? AS INTEGER)) = ?"
            " AND e.soft_failed = 0"
            " ORDER BY m.stream_ordering",
            (*rooms, upto, *_suffix(destination))))
        return [(r[0], r[1], r[2], int(r[3])) for r in rows]

    def destinations_behind(self, head: int) -> list[tuple[str, int | None]]:
        """(destination, retry_at or None) of every destination whose ``pdu_position`` is
        behind ``head`` with at least one event of ours after it in a room one of its users
        was a member of (the sweep wakes those; the actor decides what exactly goes)."""
        rows = self._run("federation_pdus_pending", lambda t: t.query(
            "SELECT d.destination, d.retry_last_ts, d.retry_interval"
            " FROM federation_destinations d WHERE d.pdu_position IS NOT NULL"
            " AND d.pdu_position < ? AND EXISTS (SELECT 1 FROM events e"
            " WHERE e.stream_ordering > d.pdu_position AND e.stream_ordering <= ?"
            f" AND {_OURS} AND e.room_id IN (SELECT m.room_id FROM room_memberships m"
            " WHERE substr(m.user_id, length(m.user_id) - length(d.destination))"
            " = ':' || d.destination))",
            (head, head, *self._ours)))
        return [(r[0], int(r[1]) + int(r[2]) if r[2] else None) for r in rows]
