"""Presence (modules/presence.md): one row per user with the current state, status message,
last active time and ``currently_active``; one stream.  Written only by the user's UserActor,
and only when something a client would see changes (not on every sync)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from store.database import Database, Txn
from store.streams import StreamIdGenerator

ONLINE, UNAVAILABLE, OFFLINE = "online", "unavailable", "offline"
STATES = (ONLINE, UNAVAILABLE, OFFLINE)


@dataclass(frozen=True)
class PresenceRow:
    user_id: str
    state: str
    status_msg: str | None
    last_active_ts: int
    currently_active: bool
    stream_id: int


_COLS = "user_id, state, status_msg, last_active_ts, currently_active, stream_id"


def _row(r: tuple) -> PresenceRow:
    return PresenceRow(r[0], r[1], r[2], int(r[3]), bool(r[4]), int(r[5]))


class PresenceStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.stream = StreamIdGenerator(db, "presence", "stream_id")

    def put(self, user_id: str, state: str, status_msg: str | None, last_active_ts: int,
            currently_active: bool) -> int:
        def _t(txn: Txn, sid: int) -> None:
            txn.execute(
                "INSERT INTO presence (user_id, state, status_msg, last_active_ts,"
                " currently_active, stream_id) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET state = excluded.state,"
                " status_msg = excluded.status_msg, last_active_ts = excluded.last_active_ts,"
                " currently_active = excluded.currently_active, stream_id = excluded.stream_id",
                (user_id, state, status_msg, last_active_ts, int(currently_active), sid))

        with self.stream.allocate() as (sid,):
            self.db.run("put_presence", _t, sid, write=True)
        return sid

    def get(self, user_id: str) -> PresenceRow | None:
        r = self.db.run("get_presence", lambda t: t.query_one(
            f"SELECT {_COLS} FROM presence WHERE user_id = ?", (user_id,)))
        return _row(r) if r else None

    def changed(self, user_ids: Iterable[str], since: int | None, upto: int
                ) -> list[PresenceRow]:
        """Rows of ``user_ids`` changed in (since, upto]; with since None, every row that is
        not offline."""
        users = set(user_ids)
        if not users:
            return []
        if since is not None:
            rows = self.db.run("presence_changed", lambda t: t.query(
                f"SELECT {_COLS} FROM presence WHERE stream_id > ? AND stream_id <= ?",
                (since, upto)))
            return [_row(r) for r in rows if r[0] in users]
        ordered = sorted(users)

        def _q(txn: Txn) -> list[tuple]:
            out: list[tuple] = []
            for i in range(0, len(ordered), 200):
                chunk = ordered[i:i + 200]
                marks = ",".join("?" * len(chunk))
                out.extend(txn.query(f"SELECT {_COLS} FROM presence WHERE user_id IN ({marks})"
                                     " AND stream_id <= ? AND state <> 'offline'",
                                     (*chunk, upto)))
            return out

        return [_row(r) for r in self.db.run("presence_all", _q)]

    def not_offline(self) -> list[str]:
        """Users whose stored state is not offline (start-up sweep)."""
        return self.db.run("presence_not_offline", lambda t: [r[0] for r in t.query(
            "SELECT user_id FROM presence WHERE state <> 'offline'")])
