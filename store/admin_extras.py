"""What the rest of Synapse's admin API reads and records (web/synapse_admin_extras.py,
web/synapse_admin_redact.py): a user's pushers and account data, per-user media usage and
the largest rooms (one query each), the room facts ``make_room_admin`` and the admin join
need, the forward extremities that may be dropped without changing a room's state, the
events a user redaction goes over, and the durable record of redaction tasks
(``admin_redact_tasks``, schema 083).

Rows of rooms are written only by their RoomActors; the one exception here,
:meth:`AdminExtrasStore.delete_extremities`, runs while the room's actor is retired
(``Supervisor.retire``), so it is still the only writer of the room at that moment.
"""
from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Sequence

from store.database import Database, Txn

#: order_by of the media statistics → the column (Synapse's UserSortOrder values)
MEDIA_ORDERS = {"user_id": "user_id", "displayname": "displayname",
                "media_length": "media_length", "media_count": "media_count"}
#: event types a user redaction goes over (as Synapse: messages, encrypted, joins)
REDACTED_TYPES = ("m.room.message", "m.room.encrypted", "m.room.member")
LARGEST_ROOMS = 10


def _like_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _now() -> int:
    return int(time.time() * 1000)


@dataclass
class RedactTask:
    redact_id: str
    user_id: str
    requester: str
    status: str              # scheduled | active | complete | failed
    params: dict[str, Any]
    result: dict[str, Any]   # {"failed_redactions": {event_id: why}}
    error: str | None


class AdminExtrasStore:
    def __init__(self, db: Database, server_name: str) -> None:
        self.db = db
        self.server_name = server_name
        self._local = "%:" + _like_escape(server_name)

    # ------------------------------------------------------------------ users
    def pushers(self, user_id: str) -> list[dict[str, Any]]:
        """The user's pushers as Synapse's admin API shows them."""
        rows = self.db.run("admin_user_pushers", lambda t: t.query(
            "SELECT app_display_name, app_id, data, device_display_name, kind, lang,"
            " profile_tag, pushkey, device_id FROM pushers WHERE user_id = ?"
            " ORDER BY app_id, pushkey", (user_id,)))
        return [{"app_display_name": r[0], "app_id": r[1], "data": json.loads(r[2]),
                 "device_display_name": r[3], "kind": r[4], "lang": r[5],
                 "profile_tag": r[6] if r[6] is not None else "", "pushkey": r[7],
                 "enabled": True, "device_id": r[8]} for r in rows]

    def account_data(self, user_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(global, {room_id: {type: content}}) of the user's account data."""
        rows = self.db.run("admin_user_account_data", lambda t: t.query(
            "SELECT room_id, type, content FROM account_data WHERE user_id = ?"
            " ORDER BY room_id, type", (user_id,)))
        glob: dict[str, Any] = {}
        rooms: dict[str, dict[str, Any]] = {}
        for room_id, type_, content in rows:
            target = glob if room_id == "" else rooms.setdefault(room_id, {})
            target[type_] = json.loads(content)
        return glob, rooms

    # ------------------------------------------------------------------ statistics
    def media_usage(self, start: int, limit: int, order_by: str, backwards: bool,
                    from_ts: int | None, until_ts: int | None, search_term: str | None
                    ) -> tuple[list[dict[str, Any]], int]:
        """A page of (user, display name, media count, bytes) over local media, and how many
        users match: one statement (the count is a window over the grouped rows)."""
        where: list[str] = []
        args: list[Any] = []
        if search_term is not None:
            pat = "%" + _like_escape(search_term.lower()) + "%"
            where.append("(LOWER(m.user_id) LIKE ? ESCAPE '\\' OR"
                         " LOWER(p.displayname) LIKE ? ESCAPE '\\')")
            args += [pat, pat]
        if from_ts:
            where.append("m.created_ts >= ?")
            args.append(from_ts)
        if until_ts is not None:
            where.append("m.created_ts <= ?")
            args.append(until_ts)
        col = MEDIA_ORDERS[order_by]
        order = "DESC" if backwards else "ASC"
        nulls = "" if col != "displayname" else (  # no name: last forwards (as PostgreSQL)
            f"CASE WHEN displayname IS NULL THEN {0 if backwards else 1} ELSE"
            f" {1 if backwards else 0} END, ")
        grouped = (
            "SELECT m.user_id AS user_id, MAX(p.displayname) AS displayname,"
            " COUNT(*) AS media_count, COALESCE(SUM(m.media_length), 0) AS media_length"
            " FROM local_media m LEFT JOIN profiles p ON p.user_id = m.user_id"
            f" {'WHERE ' + ' AND '.join(where) if where else ''} GROUP BY m.user_id")

        def _q(t: Txn) -> tuple[list[tuple], int]:
            rows = t.query(
                "SELECT user_id, displayname, media_count, media_length, COUNT(*) OVER ()"
                f" FROM ({grouped}) u ORDER BY {nulls}{col} {order}, user_id {order}"
                " LIMIT ? OFFSET ?", (*args, limit, start))
            if rows:
                return rows, int(rows[0][4])
            # past the end (or nothing at all): the window saw no row, count on its own
            return rows, int(t.query_value(f"SELECT COUNT(*) FROM ({grouped}) c", args,
                                           default=0))

        rows, total = self.db.run("admin_media_statistics", _q)
        return [{"user_id": r[0], "displayname": r[1], "media_count": int(r[2]),
                 "media_length": int(r[3])} for r in rows], total

    def largest_rooms(self) -> list[dict[str, Any]]:
        """The rooms whose events take the most room in the database (bytes of their JSON:
        the bulk of a room's rows), largest first."""
        rows = self.db.run("admin_largest_rooms", lambda t: t.query(
            "SELECT room_id, SUM(LENGTH(json)) AS size FROM events GROUP BY room_id"
            f" ORDER BY size DESC, room_id LIMIT {LARGEST_ROOMS}"))
        return [{"room_id": r[0], "estimated_size": int(r[1] or 0)} for r in rows]

    # ------------------------------------------------------------------ rooms
    def local_joined(self, room_id: str) -> list[str]:
        """The users of this server joined to the room."""
        suffix = ":" + self.server_name
        rows = self.db.run("admin_local_joined", lambda t: t.query(
            "SELECT state_key FROM current_state WHERE room_id = ? AND type = 'm.room.member'"
            " AND membership = 'join' AND state_key LIKE ? ESCAPE '\\' ORDER BY state_key",
            (room_id, self._local)))
        return [r[0] for r in rows if r[0].endswith(suffix)
                and r[0].split(":", 1)[1] == self.server_name]

    def extremities(self, room_id: str) -> list[tuple[str, int, int | None]]:
        """(event id, stream ordering, state group) of the room's forward extremities,
        newest first."""
        return self.db.run("admin_extremities", lambda t: [
            (r[0], int(r[1] or 0), None if r[2] is None else int(r[2])) for r in t.query(
                "SELECT f.event_id, e.stream_ordering, e.state_group FROM"
                " room_forward_extremities f LEFT JOIN events e ON e.event_id = f.event_id"
                " WHERE f.room_id = ? ORDER BY e.stream_ordering DESC, f.event_id",
                (room_id,))])

    def current_state_ids(self, room_id: str) -> dict[tuple[str, str], str]:
        return {(r[0], r[1]): r[2] for r in self.db.run("admin_current_state", lambda t: t.query(
            "SELECT type, state_key, event_id FROM current_state WHERE room_id = ?",
            (room_id,)))}

    def delete_extremities(self, room_id: str, event_ids: Sequence[str]) -> int:
        """Drop these forward extremities (only while the room's actor is retired)."""
        if not event_ids:
            return 0

        def _t(txn: Txn) -> int:
            return sum(txn.execute("DELETE FROM room_forward_extremities WHERE room_id = ?"
                                   " AND event_id = ?", (room_id, e)) for e in event_ids)

        return self.db.run("admin_delete_extremities", _t, write=True)

    # ------------------------------------------------------------------ redaction
    def rooms_of(self, user_id: str) -> list[str]:
        """Rooms the user is joined to or banned from (a redaction without ``rooms``)."""
        return [r[0] for r in self.db.run("admin_redact_rooms", lambda t: t.query(
            "SELECT room_id FROM current_state WHERE type = 'm.room.member' AND"
            " state_key = ? AND membership IN ('join', 'ban') ORDER BY room_id", (user_id,)))]

    def redactable(self, user_id: str, room_id: str, limit: int, before_ts: int | None,
                   after_ts: int | None) -> list[str]:
        """The user's messages, encrypted events and joins in the room not yet redacted,
        newest first, at most ``limit`` of the user's events of those types."""
        where, args = "", [user_id, room_id]
        if before_ts is not None:
            where += " AND origin_server_ts <= ?"
            args.append(before_ts)
        if after_ts is not None:
            where += " AND origin_server_ts >= ?"
            args.append(after_ts)
        types = ", ".join(f"'{t}'" for t in REDACTED_TYPES)
        rows = self.db.run("admin_redactable", lambda t: t.query(
            "SELECT event_id, type, json, redacted_by FROM events WHERE sender = ? AND"
            f" room_id = ? AND type IN ({types}) AND outlier = 0 AND rejection IS NULL{where}"
            " ORDER BY stream_ordering DESC LIMIT ?", (*args, limit)))
        out = []
        for event_id, type_, raw, redacted_by in rows:
            if redacted_by is not None:
                continue
            if type_ == "m.room.member":
                content = (json.loads(raw).get("content") or {})
                if not isinstance(content, dict) or content.get("membership") != "join":
                    continue
            out.append(event_id)
        return out

    def new_redact_task(self, user_id: str, requester: str, params: dict[str, Any]
                        ) -> RedactTask:
        task = RedactTask(secrets.token_urlsafe(12), user_id, requester, "scheduled", params,
                          {"failed_redactions": {}}, None)
        now = _now()
        self.db.run("admin_redact_task_new", lambda t: t.execute(
            "INSERT INTO admin_redact_tasks (redact_id, user_id, requester, status, params,"
            " result, error, created_ts, updated_ts) VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?)",
            (task.redact_id, user_id, requester, task.status, json.dumps(params),
             json.dumps(task.result), now, now)), write=True)
        return task

    def update_redact_task(self, task: RedactTask) -> None:
        self.db.run("admin_redact_task_update", lambda t: t.execute(
            "UPDATE admin_redact_tasks SET status = ?, result = ?, error = ?, updated_ts = ?"
            " WHERE redact_id = ?", (task.status, json.dumps(task.result), task.error, _now(),
                                     task.redact_id)), write=True)

    def get_redact_task(self, redact_id: str) -> RedactTask | None:
        found = self._redact_tasks("redact_id = ?", (redact_id,))
        return found[0] if found else None

    def unfinished_redact_tasks(self, user_id: str | None = None) -> list[RedactTask]:
        if user_id is None:
            return self._redact_tasks("status IN ('scheduled', 'active')", ())
        return self._redact_tasks("user_id = ? AND status IN ('scheduled', 'active')",
                                  (user_id,))

    def _redact_tasks(self, where: str, args: Sequence[Any]) -> list[RedactTask]:
        rows = self.db.run("admin_redact_tasks", lambda t: t.query(
            "SELECT redact_id, user_id, requester, status, params, result, error FROM"
            f" admin_redact_tasks WHERE {where} ORDER BY created_ts, redact_id", args))
        return [RedactTask(r[0], r[1], r[2], r[3], json.loads(r[4]), json.loads(r[5]), r[6])
                for r in rows]
