"""Account data (client-server-api "Client Config", modules/account_data.md, tags.md):
global and per-room JSON objects per user, one stream (``stream``) for both.

Only the owning user's UserActor writes (single writer: no read-modify-write races on tags).
Global rows use ``room_id = ''``.  A row keeps only its latest content and stream id, so a
sync range sees each changed (room, type) once, with the newest content.
"""
from __future__ import annotations

import json
from typing import Any

from store.database import Database, Txn
from store.streams import StreamIdGenerator

GLOBAL = ""


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


class AccountDataStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.stream = StreamIdGenerator(db, "account_data", "stream_id")

    # -- writing (UserActor only) ------------------------------------------------------
    def put(self, user_id: str, room_id: str | None, type_: str, content: dict[str, Any]) -> int:
        """Store ``content``; return its stream id (the write has committed on return)."""
        raw = _dumps(content)

        def _t(txn: Txn, sid: int) -> None:
            txn.execute(
                "INSERT INTO account_data (user_id, room_id, type, content, stream_id)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, room_id, type) DO UPDATE"
                " SET content = excluded.content, stream_id = excluded.stream_id",
                (user_id, room_id or GLOBAL, type_, raw, sid))

        with self.stream.allocate() as (sid,):
            self.db.run("put_account_data", _t, sid, write=True)
        return sid

    # -- reading ------------------------------------------------------------------------
    def get(self, user_id: str, room_id: str | None, type_: str) -> dict[str, Any] | None:
        raw = self.db.run("get_account_data", lambda t: t.query_value(
            "SELECT content FROM account_data WHERE user_id = ? AND room_id = ? AND type = ?",
            (user_id, room_id or GLOBAL, type_)))
        return json.loads(raw) if raw is not None else None

    def changed(self, user_id: str, since: int | None, upto: int
                ) -> list[tuple[str, str, dict[str, Any]]]:
        """(room_id or '', type, content) changed in (since, upto]; all if since is None."""
        lo = -1 if since is None else since
        rows = self.db.run("account_data_changed", lambda t: t.query(
            "SELECT room_id, type, content FROM account_data WHERE user_id = ?"
            " AND stream_id > ? AND stream_id <= ? ORDER BY stream_id", (user_id, lo, upto)))
        return [(r, ty, json.loads(c)) for r, ty, c in rows]

    def ignored_users(self, user_id: str) -> frozenset[str]:
        """The users in ``m.ignored_user_list`` (modules/ignore_users.md)."""
        content = self.get(user_id, None, "m.ignored_user_list") or {}
        ignored = content.get("ignored_users")
        return frozenset(ignored) if isinstance(ignored, dict) else frozenset()
