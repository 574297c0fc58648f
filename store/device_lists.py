"""Device-list change tracking (end_to_end_encryption.md, "Tracking the device list for a
user"): one stream row per change of a user's devices or device keys.  /sync turns these
into ``device_lists.changed`` for users who share a room with the syncer.

The E2EE keys endpoints and device deletion call :func:`mark_devices_changed`; listeners
(``DeviceListStore.on_change``, wired to the notifier) wake the /syncs concerned.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable

from store.database import Database, Txn
from store.streams import StreamIdGenerator

log = logging.getLogger(__name__)

_BY_DB: dict[int, "DeviceListStore"] = {}


class DeviceListStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.stream = StreamIdGenerator(db, "device_lists_stream", "stream_id")
        self.on_change: list[Callable[[list[str], int], None]] = []
        _BY_DB[id(db)] = self  # so mark_devices_changed(db, …) finds the process's store

    def mark_changed(self, user_ids: Iterable[str]) -> int:
        users = sorted(set(user_ids))
        if not users:
            return self.stream.current()
        with self.stream.allocate(len(users)) as ids:
            self.db.run("mark_devices_changed", lambda t: t.executemany(
                "INSERT INTO device_lists_stream (stream_id, user_id) VALUES (?, ?)",
                list(zip(ids, users))), write=True)
        for fn in self.on_change:
            try:
                fn(users, ids[-1])
            except Exception:  # a failed wake-up must not fail the committed write
                log.exception("device list listener failed")
        return ids[-1]

    def changed_users(self, since: int, upto: int) -> set[str]:
        """Users whose device list changed in (since, upto]."""
        return set(self.db.run("device_lists_changed", lambda t: [r[0] for r in t.query(
            "SELECT DISTINCT user_id FROM device_lists_stream WHERE stream_id > ?"
            " AND stream_id <= ?", (since, upto))]))

    def devices_deleted_hook(self, txn: Txn, user_id: str, device_ids: list[str]) -> None:
        """AccountStore.on_devices_deleted: record the change once the deletion commits."""
        txn.call_after_commit(lambda: self.mark_changed([user_id]))


def mark_devices_changed(db: Database, user_id: str) -> int:
    """Record that ``user_id``'s devices or device keys changed; returns the stream id.

    For the keys endpoints and device management: call it after the change has committed.
    """
    store = _BY_DB.get(id(db))
    if store is None:
        store = DeviceListStore(db)
    return store.mark_changed([user_id])
