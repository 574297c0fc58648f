"""Stored filters (client-server-api "Filtering", POST/GET /user/{userId}/filter): per-user
ids allocated 0, 1, 2, …  Only the user's UserActor creates filters (ids never collide)."""
from __future__ import annotations

import json
from typing import Any

from store.database import Database, Txn


class FilterStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, user_id: str, definition: dict[str, Any]) -> int:
        raw = json.dumps(definition, ensure_ascii=False, separators=(",", ":"))

        def _t(txn: Txn) -> int:
            fid = int(txn.query_value("SELECT MAX(filter_id) FROM user_filters WHERE"
                                      " user_id = ?", (user_id,), default=-1)) + 1
            txn.execute("INSERT INTO user_filters (user_id, filter_id, filter_json)"
                        " VALUES (?, ?, ?)", (user_id, fid, raw))
            return fid

        return self.db.run("create_filter", _t, write=True)

    def get(self, user_id: str, filter_id: int) -> dict[str, Any] | None:
        if not 0 <= filter_id < 2 ** 63:  # no such id can exist (nor be bound as BIGINT)
            return None
        raw = self.db.run("get_filter", lambda t: t.query_value(
            "SELECT filter_json FROM user_filters WHERE user_id = ? AND filter_id = ?",
            (user_id, filter_id)))
        return json.loads(raw) if raw is not None else None
