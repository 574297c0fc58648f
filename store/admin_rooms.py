"""What the rooms half of the admin API reads and records (web/synapse_admin_rooms.py,
web/synapse_admin_room_delete.py): the room list and details computed from the room's
current state in one query, room blocks, and the durable record of background room tasks
(deletes and history purges).  The purges themselves are store/room_purge.py.

The room list aggregates ``current_state`` (joined with the few state events whose content
it shows) per room and sorts, filters and pages in SQL, so one statement answers for any
number of rooms.  JSON fields are read with the engine's JSON functions (SQLite
``json_extract``; PostgreSQL ``->>`` on ``json``, after turning the one escape PostgreSQL
refuses to convert to text, ``\\u0000``, into U+FFFD).
"""
from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Sequence

from store.database import POSTGRES, Database, Txn

#: order_by → (column of the listing row, ascending by default) — Synapse's RoomSortOrder
ORDERS: dict[str, tuple[str, bool]] = {
    "alphabetical": ("name", True), "size": ("joined_members", False),
    "name": ("name", True), "canonical_alias": ("canonical_alias", True),
    "joined_members": ("joined_members", False),
    "joined_local_members": ("joined_local_members", False),
    "version": ("version", False), "creator": ("creator", True),
    "encryption": ("encryption", True), "federatable": ("federatable", True),
    "public": ("public", True), "join_rules": ("join_rules", True),
    "guest_access": ("guest_access", True),
    "history_visibility": ("history_visibility", True),
    "state_events": ("state_events", False),
}

# (column, event type, JSON path under content) of the state shown per room
_FIELDS = (
    ("name", "m.room.name", "name"),
    ("canonical_alias", "m.room.canonical_alias", "alias"),
    ("encryption", "m.room.encryption", "algorithm"),
    ("join_rules", "m.room.join_rules", "join_rule"),
    ("guest_access", "m.room.guest_access", "guest_access"),
    ("history_visibility", "m.room.history_visibility", "history_visibility"),
    ("avatar", "m.room.avatar", "url"),
    ("topic", "m.room.topic", "topic"),
    ("room_type", "m.room.create", "type"),
    ("federate", "m.room.create", "m.federate"),
)
_TYPES = tuple(sorted({t for _, t, _ in _FIELDS}))

LIST_KEYS = ("room_id", "name", "canonical_alias", "joined_members", "joined_local_members",
             "version", "creator", "encryption", "federatable", "public", "join_rules",
             "guest_access", "history_visibility", "state_events", "room_type")


def _like_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _json_field(engine: str, key: str) -> str:
    if engine == POSTGRES:
        return (f"(replace(e.json, '\\u0000', '\\ufffd')::json -> 'content' ->> '{key}')")
    return f"json_extract(e.json, '$.content.\"{key}\"')"


def _rooms_sql(engine: str, one_room: bool) -> str:
    """One row per room (``rooms`` left-joined with its aggregated current state); the
    room's id is the only parameter when ``one_room``, else the local-user LIKE pattern."""
    picks = ",\n".join(
        f"MAX(CASE WHEN cs.type = '{t}' THEN {_json_field(engine, k)} END) AS {col}"
        for col, t, k in _FIELDS)
    types = ", ".join(f"'{t}'" for t in _TYPES)
    where = "WHERE cs.room_id = ?" if one_room else ""
    refused = "s.federate = 'false'" if engine == POSTGRES else "s.federate = 0"
    return f"""
        SELECT r.room_id AS room_id, r.room_version AS version, r.creator AS creator,
               r.is_public AS public, s.name, s.canonical_alias, s.encryption, s.join_rules,
               s.guest_access, s.history_visibility, s.avatar, s.topic, s.room_type,
               CASE WHEN {refused} THEN 0 ELSE 1 END AS federatable,
               COALESCE(s.joined_members, 0) AS joined_members,
               COALESCE(s.joined_local_members, 0) AS joined_local_members,
               COALESCE(s.state_events, 0) AS state_events
        FROM rooms r LEFT JOIN (
            SELECT cs.room_id, {picks},
                SUM(CASE WHEN cs.type = 'm.room.member' AND cs.membership = 'join'
                    THEN 1 ELSE 0 END) AS joined_members,
                SUM(CASE WHEN cs.type = 'm.room.member' AND cs.membership = 'join'
                    AND cs.state_key LIKE ? ESCAPE '\\' THEN 1 ELSE 0 END)
                    AS joined_local_members,
                COUNT(*) AS state_events
            FROM current_state cs LEFT JOIN events e ON e.event_id = cs.event_id
                AND cs.state_key = '' AND cs.type IN ({types})
            {where}
            GROUP BY cs.room_id
        ) s ON s.room_id = r.room_id"""


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _shape(row: dict[str, Any]) -> dict[str, Any]:
    """A listing row as Synapse shapes it (booleans, only string values for the texts)."""
    out = {k: _text(row.get(k)) for k in ("name", "canonical_alias", "encryption",
                                          "join_rules", "guest_access", "history_visibility",
                                          "room_type", "avatar", "topic", "creator",
                                          "version")}
    out.update(room_id=row["room_id"], joined_members=int(row["joined_members"] or 0),
               joined_local_members=int(row["joined_local_members"] or 0),
               state_events=int(row["state_events"] or 0), public=bool(row["public"]),
               federatable=bool(row["federatable"]))
    return out


@dataclass(frozen=True)
class RoomListQuery:
    start: int = 0
    limit: int = 100
    order_by: str = "name"
    backwards: bool = False
    search_term: str | None = None
    public_rooms: bool | None = None
    empty_rooms: bool | None = None


@dataclass
class RoomTask:
    task_id: str
    kind: str                 # delete | purge_history
    room_id: str
    status: str               # scheduled | active | complete | failed
    requester: str
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    created_ts: int


KINDS = ("delete", "purge_history")
UNFINISHED = ("scheduled", "active")


class AdminRoomStore:
    def __init__(self, db: Database, server_name: str) -> None:
        self.db = db
        self.server_name = server_name
        self._local = "%:" + _like_escape(server_name)

    # ------------------------------------------------------------------ listing
    def list_rooms(self, q: RoomListQuery) -> tuple[list[dict[str, Any]], int]:
        """A page of rooms in Synapse's list shape, and how many rooms match."""
        col, asc = ORDERS[q.order_by]
        if q.backwards:
            asc = not asc
        where, args = [], [self._local]
        if q.search_term:
            term = _like_escape(q.search_term.lower())
            where.append("(LOWER(x.name) LIKE ? ESCAPE '\\' OR LOWER(x.canonical_alias)"
                         " LIKE ? ESCAPE '\\' OR x.room_id = ?)")
            args += [f"%{term}%", f"#%{term}%:%", q.search_term]
        if q.public_rooms is not None:
            where.append("x.public = ?")
            args.append(int(q.public_rooms))
        if q.empty_rooms is not None:
            where.append("x.joined_members = 0" if q.empty_rooms else "x.joined_members <> 0")
        direction = "ASC" if asc else "DESC"
        # as PostgreSQL sorts NULLs (last going up, first going down), on both engines
        nulls = "ASC" if asc else "DESC"
        sort = f"x.{col}"
        sql = (f"SELECT x.*, COUNT(*) OVER () AS total FROM ({_rooms_sql(self.db.engine, False)})"
               f" x {'WHERE ' + ' AND '.join(where) if where else ''}"
               f" ORDER BY ({sort} IS NULL) {nulls}, {sort} {direction}, x.room_id {direction}"
               f" LIMIT ? OFFSET ?")

        def _q(t: Txn) -> tuple[list[dict[str, Any]], int]:
            rows = t.query_dicts(sql, args + [q.limit, q.start])
            if rows:
                total = int(rows[0]["total"])
            else:
                total = int(t.query_value(
                    f"SELECT COUNT(*) FROM ({_rooms_sql(self.db.engine, False)}) x"
                    f" {'WHERE ' + ' AND '.join(where) if where else ''}", args, default=0))
            out = []
            for r in rows:
                shaped = _shape(r)
                out.append({k: shaped[k] for k in LIST_KEYS})
            return out, total

        return self.db.run("admin_list_rooms", _q)

    def room_details(self, room_id: str) -> dict[str, Any] | None:
        """Synapse's room details: the listing row plus avatar, topic, joined local devices,
        forgotten (no local user holds the room unforgotten) and the tombstone."""
        sql = _rooms_sql(self.db.engine, True) + " WHERE r.room_id = ?"
        local = self._local

        def _q(t: Txn) -> dict[str, Any] | None:
            rows = t.query_dicts(sql, (local, room_id, room_id))
            if not rows:
                return None
            out = _shape(rows[0])
            out["joined_local_devices"] = int(t.query_value(
                "SELECT COUNT(*) FROM devices d JOIN current_state cs ON cs.state_key ="
                " d.user_id WHERE cs.room_id = ? AND cs.type = 'm.room.member'"
                " AND cs.membership = 'join' AND cs.state_key LIKE ? ESCAPE '\\'",
                (room_id, local), default=0))
            out["forgotten"] = t.query_value(
                "SELECT 1 FROM current_state cs WHERE cs.room_id = ? AND"
                " cs.type = 'm.room.member' AND cs.state_key LIKE ? ESCAPE '\\' AND NOT"
                " EXISTS (SELECT 1 FROM forgotten_rooms f WHERE f.user_id = cs.state_key"
                " AND f.room_id = cs.room_id)", (room_id, local)) is None
            tomb = t.query_value(
                "SELECT e.json FROM current_state cs JOIN events e ON e.event_id ="
                " cs.event_id WHERE cs.room_id = ? AND cs.type = 'm.room.tombstone'"
                " AND cs.state_key = ''", (room_id,))
            content = (json.loads(tomb).get("content") or {}) if tomb else None
            out["tombstoned"] = tomb is not None
            out["replacement_room"] = _text(content.get("replacement_room")) \
                if isinstance(content, dict) else None
            return out

        return self.db.run("admin_room_details", _q)

    def room_exists(self, room_id: str) -> bool:
        return self.db.run("admin_room_exists", lambda t: t.query_value(
            "SELECT 1 FROM rooms WHERE room_id = ?", (room_id,)) is not None, inline=True)

    def joined_members(self, room_id: str) -> list[str]:
        return self.db.run("admin_room_members", lambda t: [r[0] for r in t.query(
            "SELECT state_key FROM current_state WHERE room_id = ? AND type = 'm.room.member'"
            " AND membership = 'join' ORDER BY state_key", (room_id,))])

    def local_members(self, room_id: str) -> list[tuple[str, str]]:
        """(user, membership) of every local user with a membership in the room."""
        return self.db.run("admin_room_local_members", lambda t: [(r[0], r[1]) for r in t.query(
            "SELECT state_key, membership FROM current_state WHERE room_id = ? AND"
            " type = 'm.room.member' AND state_key LIKE ? ESCAPE '\\' ORDER BY state_key",
            (room_id, self._local))])

    def forward_extremities(self, room_id: str) -> list[dict[str, Any]]:
        return self.db.run("admin_room_extremities", lambda t: [
            {"event_id": r[0], "state_group": r[1], "depth": r[2], "received_ts": r[3]}
            for r in t.query(
                "SELECT f.event_id, e.state_group, e.depth, e.received_ts FROM"
                " room_forward_extremities f LEFT JOIN events e ON e.event_id = f.event_id"
                " WHERE f.room_id = ? ORDER BY e.depth, f.event_id", (room_id,))])

    def depth_before_ts(self, room_id: str, ts: int) -> int | None:
        """The depth of the room's latest timeline event received before ``ts`` (ms)."""
        return self.db.run("admin_depth_before_ts", lambda t: t.query_value(
            "SELECT depth FROM events WHERE room_id = ? AND received_ts < ? AND outlier = 0"
            " ORDER BY stream_ordering DESC LIMIT 1", (room_id, ts)))

    def forget(self, user_id: str, room_id: str) -> None:
        self.db.run("admin_forget_room", lambda t: t.execute(
            "INSERT INTO forgotten_rooms (user_id, room_id) VALUES (?, ?)"
            " ON CONFLICT DO NOTHING", (user_id, room_id)), write=True)

    # ------------------------------------------------------------------ blocks
    def blocked_by(self, room_id: str) -> str | None:
        """The admin who blocked the room, or None when it is not blocked."""
        return self.db.run("room_blocked", lambda t: t.query_value(
            "SELECT user_id FROM blocked_rooms WHERE room_id = ?", (room_id,)), inline=True)

    def block(self, room_id: str, user_id: str) -> None:
        self.db.run("block_room", lambda t: t.execute(
            "INSERT INTO blocked_rooms (room_id, user_id, blocked_ts) VALUES (?, ?, ?)"
            " ON CONFLICT (room_id) DO NOTHING", (room_id, user_id, _now())), write=True)

    def unblock(self, room_id: str) -> None:
        self.db.run("unblock_room", lambda t: t.execute(
            "DELETE FROM blocked_rooms WHERE room_id = ?", (room_id,)), write=True)

    # ------------------------------------------------------------------ tasks
    def new_task(self, kind: str, room_id: str, requester: str, params: dict[str, Any],
                 result: dict[str, Any] | None = None) -> RoomTask:
        assert kind in KINDS
        task = RoomTask(secrets.token_urlsafe(12), kind, room_id, "scheduled", requester,
                        params, result, None, _now())
        self.db.run("admin_room_task_new", lambda t: t.execute(
            "INSERT INTO admin_room_tasks (task_id, kind, room_id, status, requester, params,"
            " result, error, created_ts, updated_ts) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)",
            (task.task_id, kind, room_id, task.status, requester, json.dumps(params),
             json.dumps(result) if result is not None else None, task.created_ts,
             task.created_ts)), write=True)
        return task

    def update_task(self, task: RoomTask) -> None:
        self.db.run("admin_room_task_update", lambda t: t.execute(
            "UPDATE admin_room_tasks SET status = ?, result = ?, error = ?, updated_ts = ?"
            " WHERE task_id = ?", (task.status, json.dumps(task.result)
                                   if task.result is not None else None, task.error, _now(),
                                   task.task_id)), write=True)

    def get_task(self, task_id: str) -> RoomTask | None:
        rows = self._tasks("task_id = ?", (task_id,))
        return rows[0] if rows else None

    def tasks_of_room(self, room_id: str, kind: str | None = None,
                      unfinished: bool = False) -> list[RoomTask]:
        where, args = "room_id = ?", [room_id]
        if kind is not None:
            where += " AND kind = ?"
            args.append(kind)
        if unfinished:
            where += " AND status IN ('scheduled', 'active')"
        return self._tasks(where, args)

    def unfinished_tasks(self) -> list[RoomTask]:
        return self._tasks("status IN ('scheduled', 'active')", ())

    def _tasks(self, where: str, args: Sequence[Any]) -> list[RoomTask]:
        rows = self.db.run("admin_room_tasks", lambda t: t.query(
            "SELECT task_id, kind, room_id, status, requester, params, result, error,"
            f" created_ts FROM admin_room_tasks WHERE {where} ORDER BY created_ts, task_id",
            args))
        return [RoomTask(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]),
                         json.loads(r[6]) if r[6] is not None else None, r[7], int(r[8]))
                for r in rows]


def room_blocked(db: Database, room_id: str) -> bool:
    """Whether an admin blocked the room (web/rooms.py refuses joins, invites, knocks)."""
    return db.run("room_blocked", lambda t: t.query_value(
        "SELECT 1 FROM blocked_rooms WHERE room_id = ?", (room_id,)), inline=True) is not None


def _now() -> int:
    return int(time.time() * 1000)
