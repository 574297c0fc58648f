"""Reports of content (schema ``082_event_reports.sql``): what users report with
``POST /rooms/{roomId}/report[/{eventId}]`` and ``/users/{userId}/report`` (client-server-api
"Reporting content"), and the pages, look-ups and deletions of Synapse's admin API ("Event
Reports", "User Reports"; room reports the same way).

A page is ``(start, limit)`` over the reports matching the filters, newest first unless
``backwards`` is false; ``user_id`` / ``room_id`` / ``target_user_id`` filters match a part
of the id (as Synapse's), ``event_sender`` the whole sender.  Each call is one transaction:
an ``add_*`` returns once the row is committed.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

from store.database import Database, Txn

#: the simple report tables: name → (columns served, the column its ``target`` filter reads)
_TABLES = {
    "room_reports": (("id", "received_ts", "room_id", "user_id", "reason"), "room_id"),
    "user_reports": (("id", "received_ts", "target_user_id", "user_id", "reason"),
                     "target_user_id"),
}


def _like(part: str) -> str:
    """A LIKE pattern matching ``part`` anywhere, its own ``%`` and ``_`` taken literally."""
    esc = part.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{esc}%"


def _content_of(raw: str | None) -> dict[str, Any]:
    try:
        v = json.loads(raw) if raw else None
    except ValueError:
        return {}
    return v if isinstance(v, dict) else {}


def _where(filters: Sequence[tuple[str, Any]]) -> tuple[str, list[Any]]:
    clauses = [c for c, _ in filters]
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), [a for _, a in filters]


class ReportStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- filing (client API) ---------------------------------------------------------------
    def add_event_report(self, room_id: str, event_id: str, user_id: str,
                         reason: str | None, score: int | None, ts: int) -> int:
        return self._insert("event_reports", ("received_ts", "room_id", "event_id", "user_id",
                                              "reason", "score"),
                            (ts, room_id, event_id, user_id, reason, score))

    def add_room_report(self, room_id: str, user_id: str, reason: str, ts: int) -> int:
        return self._insert("room_reports", ("received_ts", "room_id", "user_id", "reason"),
                            (ts, room_id, user_id, reason))

    def add_user_report(self, target_user_id: str, user_id: str, reason: str, ts: int) -> int:
        return self._insert("user_reports", ("received_ts", "target_user_id", "user_id",
                                             "reason"), (ts, target_user_id, user_id, reason))

    def _insert(self, table: str, cols: Sequence[str], values: Sequence[Any]) -> int:
        sql = (f"INSERT INTO {table} ({', '.join(cols)}) VALUES"
               f" ({', '.join('?' * len(cols))}) RETURNING id")
        return int(self.db.run(f"add_{table[:-1]}", lambda t: t.query_value(sql, values),
                               write=True))

    # -- event reports (admin API) ---------------------------------------------------------
    def event_reports(self, start: int, limit: int, *, backwards: bool = True,
                      user_id: str | None = None, room_id: str | None = None,
                      event_sender: str | None = None) -> tuple[list[dict[str, Any]], int]:
        """A page of event reports and how many match in all."""
        filters: list[tuple[str, Any]] = []
        if user_id:
            filters.append(("er.user_id LIKE ? ESCAPE '\\'", _like(user_id)))
        if room_id:
            filters.append(("er.room_id LIKE ? ESCAPE '\\'", _like(room_id)))
        if event_sender:
            filters.append(("e.sender = ?", event_sender))
        where, args = _where(filters)
        order = "DESC" if backwards else "ASC"

        def _q(txn: Txn) -> tuple[list[dict[str, Any]], int]:
            total = int(txn.query_value(
                "SELECT COUNT(*) FROM event_reports er LEFT JOIN events e"
                f" ON e.event_id = er.event_id{where}", args, default=0))
            rows = txn.query(
                "SELECT er.id, er.received_ts, er.room_id, er.event_id, er.user_id,"
                " er.reason, er.score, e.sender FROM event_reports er LEFT JOIN events e"
                f" ON e.event_id = er.event_id{where}"
                f" ORDER BY er.received_ts {order}, er.id {order} LIMIT ? OFFSET ?",
                [*args, limit, start])
            names = _room_names(txn, {r[2] for r in rows})
            return [_event_report(r, names) for r in rows], total

        return self.db.run("event_reports", _q)

    def event_report(self, report_id: int) -> dict[str, Any] | None:
        """One event report with the reported event as stored (``event_json``; null when
        the event is no longer held)."""
        def _q(txn: Txn) -> dict[str, Any] | None:
            r = txn.query_one(
                "SELECT er.id, er.received_ts, er.room_id, er.event_id, er.user_id,"
                " er.reason, er.score, e.sender, e.json FROM event_reports er"
                " LEFT JOIN events e ON e.event_id = er.event_id WHERE er.id = ?",
                (report_id,))
            if r is None:
                return None
            out = _event_report(r, _room_names(txn, {r[2]}))
            ev = _content_of(r[8]) if r[8] is not None else None
            if ev is not None and ":" not in r[3]:
                ev.pop("event_id", None)   # not part of the PDU from room version 3 on
            out["event_json"] = ev
            return out

        return self.db.run("event_report", _q)

    def delete_event_report(self, report_id: int) -> bool:
        return self.delete("event_reports", report_id)

    # -- room and user reports (admin API) ----------------------------------------------
    def reports(self, table: str, start: int, limit: int, *, backwards: bool = True,
                user_id: str | None = None, target: str | None = None
                ) -> tuple[list[dict[str, Any]], int]:
        """A page of ``room_reports`` or ``user_reports``; ``target`` filters on the
        reported room / user."""
        cols, target_col = _TABLES[table]
        filters: list[tuple[str, Any]] = []
        if user_id:
            filters.append(("user_id LIKE ? ESCAPE '\\'", _like(user_id)))
        if target:
            filters.append((f"{target_col} LIKE ? ESCAPE '\\'", _like(target)))
        where, args = _where(filters)
        order = "DESC" if backwards else "ASC"

        def _q(txn: Txn) -> tuple[list[dict[str, Any]], int]:
            total = int(txn.query_value(f"SELECT COUNT(*) FROM {table}{where}", args,
                                        default=0))
            rows = txn.query(f"SELECT {', '.join(cols)} FROM {table}{where} ORDER BY"
                             f" received_ts {order}, id {order} LIMIT ? OFFSET ?",
                             [*args, limit, start])
            return [dict(zip(cols, r)) for r in rows], total

        return self.db.run(table, _q)

    def report(self, table: str, report_id: int) -> dict[str, Any] | None:
        cols, _ = _TABLES[table]
        r = self.db.run(f"get_{table[:-1]}", lambda t: t.query_one(
            f"SELECT {', '.join(cols)} FROM {table} WHERE id = ?", (report_id,)))
        return dict(zip(cols, r)) if r is not None else None

    def delete(self, table: str, report_id: int) -> bool:
        """Delete one report of ``table``; False when there was none."""
        if table != "event_reports" and table not in _TABLES:
            raise ValueError(f"not a report table: {table}")
        return self.db.run(f"delete_{table[:-1]}", lambda t: t.execute(
            f"DELETE FROM {table} WHERE id = ?", (report_id,)) == 1, write=True)


def _event_report(r: tuple, names: dict[str, tuple[str | None, str | None]]
                  ) -> dict[str, Any]:
    name, alias = names.get(r[2], (None, None))
    return {"id": int(r[0]), "received_ts": int(r[1]), "room_id": r[2], "name": name,
            "event_id": r[3], "user_id": r[4], "reason": r[5],
            "score": int(r[6]) if r[6] is not None else None, "sender": r[7],
            "canonical_alias": alias}


def _room_names(txn: Txn, room_ids: set[str]) -> dict[str, tuple[str | None, str | None]]:
    """(name, canonical alias) of each room, from its current state."""
    out: dict[str, tuple[str | None, str | None]] = {}
    for room_id in room_ids:
        rows = txn.query(
            "SELECT cs.type, e.json FROM current_state cs JOIN events e"
            " ON e.event_id = cs.event_id WHERE cs.room_id = ? AND cs.state_key = ''"
            " AND cs.type IN ('m.room.name', 'm.room.canonical_alias')", (room_id,))
        got = {t: _content_of(j).get("content") for t, j in rows}
        name = got.get("m.room.name")
        alias = got.get("m.room.canonical_alias")
        name = name.get("name") if isinstance(name, dict) else None
        alias = alias.get("alias") if isinstance(alias, dict) else None
        out[room_id] = (name if isinstance(name, str) else None,
                        alias if isinstance(alias, str) else None)
    return out
