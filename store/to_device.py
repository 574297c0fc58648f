"""Send-to-device inboxes (modules/send_to_device.md): one row per message per target device.

A message is delivered by every /sync of its device until a later request's ``since`` shows
the client received it; then it is deleted — exactly once, even if a response is lost.
Rows are deleted, so the stream's high-water mark is kept in ``device_inbox_position``
(a restart must never hand out an id a client has already acknowledged).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable

from store.database import Database, Txn
from store.streams import StreamIdGenerator

MAX_PER_SYNC = 100


@dataclass(frozen=True)
class ToDevice:
    stream_id: int
    sender: str
    type: str
    content: dict[str, Any]


class ToDeviceStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.stream = StreamIdGenerator(db, "device_inbox_position", "pos")

    def send(self, sender: str, sender_device: str, txn_id: str, type_: str,
             targets: list[tuple[str, str, dict[str, Any]]]) -> tuple[int, bool]:
        """Queue ``(user, device, content)`` messages once per (sender, device, txn id).

        Returns (last stream id, whether it was queued now — False for a repeated txn)."""
        rows = [(u, d, json.dumps(c, ensure_ascii=False, separators=(",", ":")))
                for u, d, c in targets]

        def _t(txn: Txn, ids: list[int]) -> bool:
            # the mark moves even for a repeated txn: the ids were handed out either way
            txn.execute("UPDATE device_inbox_position SET pos = ? WHERE pos < ?",
                        (ids[-1], ids[-1]))
            if txn.query_one("SELECT 1 FROM device_inbox_txns WHERE user_id = ? AND"
                             " device_id = ? AND txn_id = ?",
                             (sender, sender_device, txn_id)) is not None:
                return False
            txn.execute("INSERT INTO device_inbox_txns (user_id, device_id, txn_id, created_ts)"
                        " VALUES (?, ?, ?, ?)",
                        (sender, sender_device, txn_id, int(time.time() * 1000)))
            txn.executemany("INSERT INTO device_inbox (stream_id, user_id, device_id, sender,"
                            " type, content) VALUES (?, ?, ?, ?, ?, ?)",
                            [(sid, u, d, sender, type_, c) for sid, (u, d, c) in zip(ids, rows)])
            return True

        with self.stream.allocate(max(1, len(rows))) as ids:
            fresh = self.db.run("send_to_device", _t, ids, write=True)
        return ids[-1], fresh

    def send_claimed(self, sender: str, type_: str,
                     targets: list[tuple[str, str, dict[str, Any]]],
                     claim: Callable[[Txn], bool]) -> tuple[int, bool]:
        """Queue ``(user, device, content)`` messages in one write transaction if
        ``claim(txn)``, run first inside it, answers True (federation: the message id not
        seen before).  Returns (last stream id, whether they were queued)."""
        rows = [(u, d, json.dumps(c, ensure_ascii=False, separators=(",", ":")))
                for u, d, c in targets]

        def _t(txn: Txn, ids: list[int]) -> bool:
            txn.execute("UPDATE device_inbox_position SET pos = ? WHERE pos < ?",
                        (ids[-1], ids[-1]))
            if not claim(txn):
                return False
            txn.executemany("INSERT INTO device_inbox (stream_id, user_id, device_id, sender,"
                            " type, content) VALUES (?, ?, ?, ?, ?, ?)",
                            [(sid, u, d, sender, type_, c) for sid, (u, d, c) in zip(ids, rows)])
            return True

        with self.stream.allocate(max(1, len(rows))) as ids:
            fresh = self.db.run("send_to_device_remote", _t, ids, write=True)
        return ids[-1], fresh

    def fetch(self, user_id: str, device_id: str, since: int | None, upto: int
              ) -> tuple[list[ToDevice], bool]:
        """Messages in (since, upto] (at most MAX_PER_SYNC) and whether older, acknowledged
        ones remain to delete."""
        lo = since or 0

        def _q(txn: Txn) -> tuple[list[ToDevice], bool]:
            acked = since is not None and txn.query_one(
                "SELECT 1 FROM device_inbox WHERE user_id = ? AND device_id = ?"
                " AND stream_id <= ? LIMIT 1", (user_id, device_id, since)) is not None
            rows = txn.query(
                "SELECT stream_id, sender, type, content FROM device_inbox WHERE user_id = ?"
                " AND device_id = ? AND stream_id > ? AND stream_id <= ? ORDER BY stream_id"
                " LIMIT ?", (user_id, device_id, lo, upto, MAX_PER_SYNC))
            return [ToDevice(int(s), snd, ty, json.loads(c)) for s, snd, ty, c in rows], acked

        return self.db.run("fetch_to_device", _q)

    def delete_acknowledged(self, user_id: str, device_id: str, upto: int) -> None:
        self.db.run("ack_to_device", lambda t: t.execute(
            "DELETE FROM device_inbox WHERE user_id = ? AND device_id = ? AND stream_id <= ?",
            (user_id, device_id, upto)), write=True)

    @staticmethod
    def delete_for_devices(txn: Txn, user_id: str, device_ids: list[str]) -> None:
        """AccountStore.on_devices_deleted hook: a deleted device's inbox goes with it."""
        for d in device_ids:
            txn.execute("DELETE FROM device_inbox WHERE user_id = ? AND device_id = ?",
                        (user_id, d))
