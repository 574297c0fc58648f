"""Store reads for the legacy sync endpoints (``GET /events``, ``GET /initialSync``,
``GET /rooms/{roomId}/initialSync``; web/legacy_events.py, web/initial_sync.py) that no other
module has: the first events of several rooms after a stream position (``/events`` streams
forwards), one room's account data, and which of some rooms are published.

Timeline events only, as /sync streams them: never outliers, rejected, soft-failed or
backfilled events (backfilled history gets new stream positions but is old).
"""
from __future__ import annotations

import json
from typing import Any, Iterable

from store.database import Database, Txn

_TIMELINE = "outlier = 0 AND rejection IS NULL AND soft_failed = 0 AND backfilled = 0"
_CHUNK = 200


class LegacyReads:
    def __init__(self, db: Database) -> None:
        self.db = db

    def events_after(self, room_ids: Iterable[str], lo: int, hi: int, limit: int
                     ) -> list[tuple[str, int]]:
        """(event_id, stream_ordering) of the first ``limit`` timeline events of
        ``room_ids`` in (lo, hi], oldest first."""
        rooms = sorted(set(room_ids))
        if not rooms or hi <= lo or limit <= 0:
            return []

        def _q(txn: Txn) -> list[tuple[str, int]]:
            out: list[tuple[str, int]] = []
            for i in range(0, len(rooms), _CHUNK):
                chunk = rooms[i:i + _CHUNK]
                out.extend((r[0], int(r[1])) for r in txn.query(
                    f"SELECT event_id, stream_ordering FROM events WHERE {_TIMELINE}"
                    f" AND room_id IN ({','.join('?' * len(chunk))})"
                    " AND stream_ordering > ? AND stream_ordering <= ?"
                    " ORDER BY stream_ordering LIMIT ?", (*chunk, lo, hi, limit)))
            out.sort(key=lambda r: r[1])
            return out[:limit]

        return self.db.run("legacy_events_after", _q)

    def room_account_data(self, user_id: str, room_id: str) -> list[tuple[str, dict[str, Any]]]:
        """(type, content) of the user's account data for one room (tags are ``m.tag``)."""
        rows = self.db.run("legacy_room_account_data", lambda t: t.query(
            "SELECT type, content FROM account_data WHERE user_id = ? AND room_id = ?"
            " ORDER BY stream_id", (user_id, room_id)))
        return [(ty, json.loads(c)) for ty, c in rows]

    def public_rooms(self, room_ids: Iterable[str]) -> set[str]:
        """Those of ``room_ids`` published in the room directory."""
        rooms = sorted(set(room_ids))

        def _q(txn: Txn) -> set[str]:
            out: set[str] = set()
            for i in range(0, len(rooms), _CHUNK):
                chunk = rooms[i:i + _CHUNK]
                out.update(r[0] for r in txn.query(
                    f"SELECT room_id FROM rooms WHERE room_id IN ({','.join('?' * len(chunk))})"
                    " AND is_public = 1", chunk))
            return out

        return self.db.run("legacy_public_rooms", _q) if rooms else set()
