"""Pushers (modules/push.md "Pushers", pusher.yaml): where a user's notifications go.

Rows are keyed by (user, app_id, pushkey).  Besides the client-visible fields each row keeps
the push sender's durable progress — ``last_stream_ordering`` (notifications up to there
were delivered or given up on) and ``failing_since_ts`` — so the sender's memory is
disposable: after a restart or an outage it resumes from here (ARCHITECTURE practice 10).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from store.database import Database, Txn


@dataclass(frozen=True)
class Pusher:
    user_id: str
    app_id: str
    pushkey: str
    kind: str
    app_display_name: str
    device_display_name: str
    profile_tag: str | None
    lang: str
    data: dict[str, Any]
    device_id: str | None
    pushkey_ts: int
    last_stream_ordering: int
    failing_since_ts: int | None

    def for_client(self) -> dict[str, Any]:
        """The pusher as ``GET /pushers`` shows it."""
        out: dict[str, Any] = {
            "app_id": self.app_id, "pushkey": self.pushkey, "kind": self.kind,
            "app_display_name": self.app_display_name,
            "device_display_name": self.device_display_name, "lang": self.lang,
            "data": dict(self.data)}
        if self.profile_tag is not None:
            out["profile_tag"] = self.profile_tag
        return out


_COLS = ("user_id, app_id, pushkey, kind, app_display_name, device_display_name, profile_tag,"
         " lang, data, device_id, pushkey_ts, last_stream_ordering, failing_since_ts")


def _row(r: tuple) -> Pusher:
    return Pusher(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[8]), r[9],
                  int(r[10]), int(r[11]), None if r[12] is None else int(r[12]))


class PusherStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def for_user(self, user_id: str) -> list[Pusher]:
        return self.db.run("user_pushers", lambda t: [_row(r) for r in t.query(
            f"SELECT {_COLS} FROM pushers WHERE user_id = ? ORDER BY app_id, pushkey",
            (user_id,))])

    def users_with_pushers(self) -> set[str]:
        return {u for (u,) in self.db.run("pusher_users", lambda t: t.query(
            "SELECT DISTINCT user_id FROM pushers"))}

    def upsert(self, p: Pusher, *, append: bool) -> list[str]:
        """Create or update ``p`` (its progress fields only count on creation); without
        ``append``, other users' pushers with the same app_id and pushkey go.  Returns the
        users whose pushers were removed that way."""
        def _t(txn: Txn) -> list[str]:
            removed: list[str] = []
            if not append:
                removed = [u for (u,) in txn.query(
                    "SELECT user_id FROM pushers WHERE app_id = ? AND pushkey = ?"
                    " AND user_id <> ?", (p.app_id, p.pushkey, p.user_id))]
                txn.execute("DELETE FROM pushers WHERE app_id = ? AND pushkey = ?"
                            " AND user_id <> ?", (p.app_id, p.pushkey, p.user_id))
            txn.execute(
                f"INSERT INTO pushers ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET kind = excluded.kind,"
                " app_display_name = excluded.app_display_name, device_display_name ="
                " excluded.device_display_name, profile_tag = excluded.profile_tag,"
                " lang = excluded.lang, data = excluded.data, device_id = excluded.device_id,"
                " pushkey_ts = excluded.pushkey_ts",
                (p.user_id, p.app_id, p.pushkey, p.kind, p.app_display_name,
                 p.device_display_name, p.profile_tag, p.lang,
                 json.dumps(p.data, separators=(",", ":")), p.device_id, p.pushkey_ts,
                 p.last_stream_ordering, p.failing_since_ts))
            return removed

        return self.db.run("upsert_pusher", _t, write=True)

    def delete(self, user_id: str, app_id: str, pushkey: str) -> bool:
        return self.db.run("delete_pusher", lambda t: t.execute(
            "DELETE FROM pushers WHERE user_id = ? AND app_id = ? AND pushkey = ?",
            (user_id, app_id, pushkey)), write=True) > 0

    def delete_for_devices(self, txn: Txn, user_id: str, device_ids: list[str]) -> None:
        """Pushers set by deleted devices go with them (called in the deleting txn)."""
        for d in device_ids:
            txn.execute("DELETE FROM pushers WHERE user_id = ? AND device_id = ?", (user_id, d))

    def progress(self, user_id: str, app_id: str, pushkey: str, *, position: int | None,
                 success_ts: int | None, failing_since: int | None) -> None:
        """Record the sender's progress: delivered up to ``position`` (if given) and the
        failure state (``failing_since`` None = healthy)."""
        def _t(txn: Txn) -> None:
            if position is not None:
                txn.execute("UPDATE pushers SET last_stream_ordering = ? WHERE user_id = ?"
                            " AND app_id = ? AND pushkey = ? AND last_stream_ordering < ?",
                            (position, user_id, app_id, pushkey, position))
            txn.execute("UPDATE pushers SET failing_since_ts = ?,"
                        " last_success_ts = COALESCE(?, last_success_ts) WHERE user_id = ?"
                        " AND app_id = ? AND pushkey = ?",
                        (failing_since, success_ts, user_id, app_id, pushkey))

        self.db.run("pusher_progress", _t, write=True)
