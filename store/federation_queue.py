"""The outbound federation queue in the store (migration ``061_federation_queue.sql``):
``federation_destinations`` (per-destination back-off, last success, PDU position) and
``federation_outbox`` (durable EDUs not yet acknowledged).

The outbox IS the queue for durable EDUs (server-server-api "Send-to-device messaging",
"Device Management"): rows are added inside the caller's write transaction, read by the
destination's RemoteServerActor in stream order, a page at a time, and deleted only once the
destination acknowledged the transaction that carried them.

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

ORDER_COLUMNS = ("destination", "retry_last_ts", "retry_interval", "failure_ts",
                 "last_successful_stream_ordering")
_ORDER_SQL = {"last_successful_stream_ordering": "pdu_position"}


@dataclass(frozen=True, slots=True)
class OutboxRow:
    stream_id: int
    edu_type: str
    content: dict[str, Any]


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
