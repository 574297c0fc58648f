"""The admin reads over media (Synapse's "Media Admin API" / "List media uploaded by a
user"): a user's local media a page at a time, and the ``mxc://`` URIs a room's events
reference.  Rows and files are written by the media actor only (store/media.py); deleting
goes through it too.
"""
from __future__ import annotations

import json
import re
from typing import Any

from store.database import Database, Txn

#: order_by values (Synapse's) → the column; Atrium keeps no access times and has no
#: "protected" media, so those two order by creation and the tie-break alone
ORDER_COLUMNS = {
    "media_id": "media_id", "upload_name": "upload_name", "created_ts": "created_ts",
    "last_access_ts": "created_ts", "media_length": "media_length",
    "media_type": "media_type", "quarantined_by": "quarantined_by",
    "safe_from_quarantine": "media_id",
}
_MXC = re.compile(r"^mxc://([^/]+)/([A-Za-z0-9_-]+)$")
#: events read per query when scanning a room
_BATCH = 200


def _user_media(r: tuple) -> dict[str, Any]:
    return {"media_id": r[0], "media_type": r[1], "media_length": r[2], "upload_name": r[3],
            "created_ts": int(r[4]), "last_access_ts": None, "quarantined_by": r[5],
            "safe_from_quarantine": False, "url_cache": None, "user_id": r[6],
            "authenticated": not bool(r[7]), "sha256": r[8]}


class AdminMediaStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def user_media(self, user_id: str, start: int, limit: int, order_by: str,
                   backwards: bool) -> tuple[list[dict[str, Any]], int]:
        """A page of the user's local media (pending ``/create`` ids too, with no length),
        and how many they hold in all."""
        col = ORDER_COLUMNS[order_by]
        order = "DESC" if backwards else "ASC"

        def _q(txn: Txn) -> tuple[list[dict[str, Any]], int]:
            total = int(txn.query_value("SELECT COUNT(*) FROM local_media WHERE user_id = ?",
                                        (user_id,), default=0))
            rows = txn.query(
                "SELECT media_id, media_type, media_length, upload_name, created_ts,"
                " quarantined_by, user_id, legacy_allowed, sha256 FROM local_media"
                f" WHERE user_id = ? ORDER BY {col} {order}, media_id ASC LIMIT ? OFFSET ?",
                (user_id, limit, start))
            return [_user_media(r) for r in rows], total

        return self.db.run("admin_user_media", _q)

    def room_mxcs(self, room_id: str, server_name: str) -> tuple[list[str], list[str]]:
        """The local and the remote ``mxc://`` URIs of the room's events (``content.url``
        and ``content.info.thumbnail_url``), newest event first, each URI once."""
        local: dict[str, None] = {}
        remote: dict[str, None] = {}
        before: int | None = None
        while True:
            rows = self.db.run("admin_room_media", _room_batch, room_id, before)
            for stream, raw in rows:
                before = stream
                for uri in _mxcs_of(raw):
                    m = _MXC.match(uri)
                    if m is not None:
                        (local if m.group(1) == server_name else remote)[uri] = None
            if len(rows) < _BATCH:
                return list(local), list(remote)


def _room_batch(txn: Txn, room_id: str, before: int | None) -> list[tuple]:
    # LIKE skips the events that cannot hold a URI without parsing them
    bound = "" if before is None else " AND stream_ordering < ?"
    args: tuple = (room_id,) if before is None else (room_id, before)
    return txn.query(
        "SELECT stream_ordering, json FROM events WHERE room_id = ? AND outlier = 0"
        f" AND rejection IS NULL{bound} AND json LIKE '%mxc://%'"
        f" ORDER BY stream_ordering DESC LIMIT {_BATCH}", args)


def _mxcs_of(raw: str) -> list[str]:
    try:
        ev = json.loads(raw)
    except ValueError:
        return []
    content = ev.get("content") if isinstance(ev, dict) else None
    if not isinstance(content, dict):
        return []
    info = content.get("info")
    urls = [content.get("url"), info.get("thumbnail_url") if isinstance(info, dict) else None]
    return [u for u in urls if isinstance(u, str)]
