"""The admin reads over media (Synapse's "Media Admin API" / "List media uploaded by a
user"): a user's local media a page at a time, the ``mxc://`` URIs a room's events
reference, what deleting by date and purging the remote cache would remove, and the
protection from quarantine.  Rows and files are written by the media actor
(store/media.py); deleting and quarantining go through it too.  The two flags it writes
itself are one statement each and name no file: ``safe_from_quarantine`` here and
``last_access_ts`` in store/media_access.py.
"""
from __future__ import annotations

import json
import re
from typing import Any

from store.database import Database, Txn

#: order_by values (Synapse's) → the column
ORDER_COLUMNS = {
    "media_id": "media_id", "upload_name": "upload_name", "created_ts": "created_ts",
    "last_access_ts": "last_access_ts", "media_length": "media_length",
    "media_type": "media_type", "quarantined_by": "quarantined_by",
    "safe_from_quarantine": "safe_from_quarantine",
}
_MXC = re.compile(r"^mxc://([^/]+)/([A-Za-z0-9_-]+)$")
#: events read per query when scanning a room
_BATCH = 200


def _user_media(r: tuple) -> dict[str, Any]:
    return {"media_id": r[0], "media_type": r[1], "media_length": r[2], "upload_name": r[3],
            "created_ts": int(r[4]), "last_access_ts": r[9], "quarantined_by": r[5],
            "safe_from_quarantine": bool(r[10]), "url_cache": None, "user_id": r[6],
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
            # NULL sorts first forwards and last backwards on both engines (as SQLite does)
            rows = txn.query(
                "SELECT media_id, media_type, media_length, upload_name, created_ts,"
                " quarantined_by, user_id, legacy_allowed, sha256, last_access_ts,"
                " safe_from_quarantine FROM local_media WHERE user_id = ?"
                f" ORDER BY CASE WHEN {col} IS NULL THEN 0 ELSE 1 END {order}, {col} {order},"
                " media_id ASC LIMIT ? OFFSET ?", (user_id, limit, start))
            return [_user_media(r) for r in rows], total

        return self.db.run("admin_user_media", _q)

    def access_and_protection(self, media_id: str) -> tuple[int | None, bool]:
        """``last_access_ts`` and ``safe_from_quarantine`` of local media."""
        r = self.db.run("media_access_protection", lambda txn: txn.query_one(
            "SELECT last_access_ts, safe_from_quarantine FROM local_media WHERE media_id = ?",
            (media_id,)))
        return (None, False) if r is None else (r[0], bool(r[1]))

    def remote_last_access(self, origin: str, media_id: str) -> int | None:
        return self.db.run("remote_media_access", lambda txn: txn.query_value(
            "SELECT last_access_ts FROM remote_media_cache WHERE media_origin = ?"
            " AND media_id = ?", (origin, media_id)))

    def set_protected(self, media_id: str, safe: bool) -> bool:
        """Protect local media from quarantine (or stop); False if there is no such media."""
        return self.db.run("protect_media", lambda txn: txn.execute(
            "UPDATE local_media SET safe_from_quarantine = ? WHERE media_id = ?",
            (int(safe), media_id)) == 1, write=True)

    def unquarantined_of_user(self, user_id: str) -> list[str]:
        """The user's local media not quarantined yet, oldest first."""
        return [r[0] for r in self.db.run("unquarantined_user_media", lambda txn: txn.query(
            "SELECT media_id FROM local_media WHERE user_id = ? AND quarantined_by IS NULL"
            " ORDER BY created_ts, media_id", (user_id,)))]

    def old_local_media(self, before_ts: int, size_gt: int, keep_profiles: bool,
                        server_name: str) -> list[str]:
        """Uploaded local media last accessed (or, never accessed, created) before
        ``before_ts``, larger than ``size_gt`` bytes, neither quarantined nor protected,
        and with ``keep_profiles`` not an avatar in use; oldest first."""
        ids = [r[0] for r in self.db.run("old_local_media", lambda txn: txn.query(
            "SELECT media_id FROM local_media WHERE uploaded_ts IS NOT NULL"
            " AND (last_access_ts < ? OR (last_access_ts IS NULL AND created_ts < ?))"
            " AND media_length > ? AND quarantined_by IS NULL AND safe_from_quarantine = 0"
            " ORDER BY created_ts, media_id", (before_ts, before_ts, size_gt)))]
        if keep_profiles and ids:
            in_use = self.avatars_in_use(server_name)
            ids = [i for i in ids if i not in in_use]
        return ids

    def avatars_in_use(self, server_name: str) -> set[str]:
        """Ids of local media that is a user's avatar (profile, user directory, a room
        membership of the current state) or a room's avatar."""
        prefix = f"mxc://{server_name}/"
        return self.db.run("avatars_in_use", _avatars_in_use, prefix)

    def old_remote_media(self, before_ts: int) -> list[tuple[str, str]]:
        """(origin, media id) of cached remote media not quarantined and last accessed (or,
        never accessed, fetched) before ``before_ts``."""
        return self.db.run("old_remote_media", lambda txn: txn.query(
            "SELECT media_origin, media_id FROM remote_media_cache WHERE quarantined_by IS NULL"
            " AND (last_access_ts < ? OR (last_access_ts IS NULL AND created_ts < ?))"
            " ORDER BY created_ts, media_origin, media_id", (before_ts, before_ts)))

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


def _avatars_in_use(txn: Txn, prefix: str) -> set[str]:
    n = len(prefix)
    found: set[str] = set()
    for table in ("profiles", "user_directory"):
        for (url,) in txn.query(f"SELECT avatar_url FROM {table} WHERE avatar_url LIKE ?",
                                (prefix + "%",)):
            found.add(url[n:])
    # room avatars and per-room member avatars of the current state (LIKE skips the rest)
    for (raw,) in txn.query(
            "SELECT e.json FROM current_state cs JOIN events e ON e.event_id = cs.event_id"
            " WHERE cs.type IN ('m.room.avatar', 'm.room.member') AND e.json LIKE ?",
            ("%" + prefix + "%",)):
        try:
            content = json.loads(raw).get("content")
        except (ValueError, AttributeError):
            continue
        if isinstance(content, dict):
            for key in ("url", "avatar_url"):
                url = content.get(key)
                if isinstance(url, str) and url.startswith(prefix):
                    found.add(url[n:])
    return found
