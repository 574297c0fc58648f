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


def insert_stream_rows(txn: Txn, user_id: str, ids: list[int]) -> None:
    """Rows of ``device_lists_stream`` for ids already allocated from its generator."""
    txn.executemany("INSERT INTO device_lists_stream (stream_id, user_id) VALUES (?, ?)",
                    [(i, user_id) for i in ids])


def latest_stream_id(db: Database, user_id: str) -> int:
    """The user's newest position in the device-list stream (0 if none): the ``stream_id``
    ``GET /_matrix/federation/v1/user/devices/{userId}`` answers for a local user, matching
    the stream_ids of the ``m.device_list_update`` EDUs federation/device_lists_out.py sends."""
    return int(db.run("device_lists_latest", lambda t: t.query_value(
        "SELECT MAX(stream_id) FROM device_lists_stream WHERE user_id = ?", (user_id,),
        default=0)))


class OutboundDeviceLists:
    """What other servers were last told about local users' devices (tables
    ``device_lists_outbound`` and ``device_lists_outbound_pos``, migration 062), and who
    must be told: federation/device_lists_out.py diffs a user's devices against this
    snapshot and sends the difference as ``m.device_list_update`` / ``m.signing_key_update``.
    """

    def __init__(self, db: Database, device_lists: DeviceListStore) -> None:
        self.db = db
        self.device_lists = device_lists

    def remote_servers(self, user_id: str, local_server: str) -> set[str]:
        """Servers of the users joined to a room the user is joined to, except ours."""
        rows = self.db.run("device_lists_destinations", lambda t: t.query(
            "SELECT DISTINCT b.state_key FROM current_state a JOIN current_state b"
            " ON b.room_id = a.room_id AND b.type = 'm.room.member' AND b.membership = 'join'"
            " WHERE a.type = 'm.room.member' AND a.state_key = ? AND a.membership = 'join'",
            (user_id,)))
        out: set[str] = set()
        for (member,) in rows:
            _, sep, server = member.partition(":")
            if sep and server and server != local_server:
                out.add(server)
        return out

    def snapshot(self, user_id: str) -> tuple[dict[str, str], int | None]:
        """({item: digest}, stream_id of the last update sent or None)."""
        def _q(txn: Txn) -> tuple[dict[str, str], int | None]:
            items = dict(txn.query("SELECT item, digest FROM device_lists_outbound"
                                   " WHERE user_id = ?", (user_id,)))
            pos = txn.query_value("SELECT stream_id FROM device_lists_outbound_pos"
                                  " WHERE user_id = ?", (user_id,))
            return items, (int(pos) if pos is not None else None)

        return self.db.run("device_lists_outbound_snapshot", _q)

    def record(self, user_id: str, digests: dict[str, str | None], reuse: list[int],
               fresh: int, write: Callable[[Txn, list[int]], None]) -> list[int]:
        """One write transaction: ``fresh`` new device-list stream ids for the user (after
        the ``reuse`` ids already in the stream), the snapshot updated (a None digest
        removes the item), the last sent id moved to the last id, and ``write(txn, ids)``
        (the caller's outbound enqueue).  Returns the ids."""
        def _t(txn: Txn, new_ids: list[int]) -> list[int]:
            ids = list(reuse) + new_ids
            insert_stream_rows(txn, user_id, new_ids)
            for item, digest in digests.items():
                if digest is None:
                    txn.execute("DELETE FROM device_lists_outbound WHERE user_id = ?"
                                " AND item = ?", (user_id, item))
                else:
                    txn.execute("INSERT INTO device_lists_outbound (user_id, item, digest)"
                                " VALUES (?, ?, ?) ON CONFLICT (user_id, item) DO UPDATE SET"
                                " digest = excluded.digest", (user_id, item, digest))
            if ids:
                txn.execute("INSERT INTO device_lists_outbound_pos (user_id, stream_id)"
                            " VALUES (?, ?) ON CONFLICT (user_id) DO UPDATE SET"
                            " stream_id = excluded.stream_id", (user_id, ids[-1]))
            write(txn, ids)
            return ids

        if fresh <= 0:
            return self.db.run("device_lists_outbound_record", _t, [], write=True)
        with self.device_lists.stream.allocate(fresh) as new_ids:
            return self.db.run("device_lists_outbound_record", _t, new_ids, write=True)
