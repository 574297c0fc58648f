"""Receipts (modules/receipts.md): the latest receipt per (room, receipt type, user, thread)
with one stream for all rooms.  ``thread_id`` '' is an unthreaded receipt.

Written only by the receipt owner's UserActor.  A receipt that would move backwards (to an
event earlier in the stream than the one already stored for the same key) is ignored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from store.database import Database, Txn
from store.streams import StreamIdGenerator


@dataclass(frozen=True)
class Receipt:
    room_id: str
    receipt_type: str
    user_id: str
    thread_id: str
    event_id: str
    ts: int
    stream_id: int


_COLS = "room_id, receipt_type, user_id, thread_id, event_id, ts, stream_id"
READ_RECEIPTS = ("m.read", "m.read.private")


class ReceiptStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.stream = StreamIdGenerator(db, "receipts", "stream_id")
        #: called with (user_id, room_id) after a read receipt (m.read, m.read.private)
        #: has moved and committed
        self.on_read_moved: list[Callable[[str, str], None]] = []

    def put(self, room_id: str, receipt_type: str, user_id: str, thread_id: str,
            event_id: str, event_stream_ordering: int, ts: int) -> int | None:
        """Store a receipt; its stream id, or None if it would move the receipt backwards.

        The check runs before an id is allocated (an allocated id that is never written could
        be handed out again after a restart); it is race-free because only the receipt
        owner's actor writes its rows."""
        key = (room_id, receipt_type, user_id, thread_id)
        old = self.db.run("receipt_position", lambda t: t.query_value(
            "SELECT event_stream_ordering FROM receipts WHERE room_id = ? AND"
            " receipt_type = ? AND user_id = ? AND thread_id = ?", key))
        if old is not None and int(old) >= event_stream_ordering:
            return None

        def _t(txn: Txn, sid: int) -> None:
            txn.execute(
                "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id,"
                " event_stream_ordering, ts, stream_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (room_id, receipt_type, user_id, thread_id) DO UPDATE SET"
                " event_id = excluded.event_id, event_stream_ordering ="
                " excluded.event_stream_ordering, ts = excluded.ts, stream_id = excluded.stream_id",
                (*key, event_id, event_stream_ordering, ts, sid))

        with self.stream.allocate() as (sid,):
            self.db.run("put_receipt", _t, sid, write=True)
        if receipt_type in READ_RECEIPTS:
            for hook in self.on_read_moved:
                hook(user_id, room_id)
        return sid

    def changed(self, room_ids: Iterable[str], since: int | None, upto: int) -> list[Receipt]:
        """Receipts in ``room_ids`` written in (since, upto]; every receipt if since is None."""
        rooms = list(room_ids)
        if not rooms:
            return []
        lo = -1 if since is None else since

        def _q(txn: Txn) -> list[Receipt]:
            out: list[Receipt] = []
            if since is not None:
                wanted = set(rooms)
                for r in txn.query(f"SELECT {_COLS} FROM receipts WHERE stream_id > ?"
                                   " AND stream_id <= ? ORDER BY stream_id", (lo, upto)):
                    if r[0] in wanted:
                        out.append(Receipt(*r))
                return out
            for i in range(0, len(rooms), 200):
                chunk = rooms[i:i + 200]
                marks = ",".join("?" * len(chunk))
                out.extend(Receipt(*r) for r in txn.query(
                    f"SELECT {_COLS} FROM receipts WHERE room_id IN ({marks})"
                    " AND stream_id <= ? ORDER BY stream_id", (*chunk, upto)))
            return out

        return self.db.run("receipts_changed", _q)

    def for_user(self, user_id: str, room_id: str) -> list[Receipt]:
        return self.db.run("user_receipts", lambda t: [Receipt(*r) for r in t.query(
            f"SELECT {_COLS} FROM receipts WHERE user_id = ? AND room_id = ?",
            (user_id, room_id))])
