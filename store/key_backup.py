"""Server-side key backups (``schema/050_e2e.sql``): versions with their ``auth_data``,
and the backed-up Megolm sessions of each version.

Spec: client-server-api modules/end_to_end_encryption.md, "Server-side key backups";
data/api/client-server/key_backup.yaml.  Versions are numbered per user and never reused (a
deleted version keeps a tombstone row, so deleting it again succeeds).  Keys can only be
written to the newest version.  ``etag`` changes whenever the version's keys change and
``count`` is the number of stored sessions.  The server stores only the clients' ciphertext.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from protocol.e2e_keys import backup_replaces
from store.database import Database, Txn
from store.e2e_keys import dumps


class NoSuchVersion(Exception):
    """The backup version does not exist (or was deleted)."""


class WrongVersion(Exception):
    """Keys may only be written to the current version."""

    def __init__(self, current: str | None) -> None:
        super().__init__(current)
        self.current = current


@dataclass(frozen=True)
class BackupVersion:
    version: str
    algorithm: str
    auth_data: dict[str, Any]
    etag: str
    count: int

    def to_json(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm, "auth_data": self.auth_data, "count": self.count,
                "etag": self.etag, "version": self.version}


Sessions = dict[str, dict[str, dict[str, Any]]]  # room_id → session_id → KeyBackupData


def _parse_version(version: str | None) -> int | None:
    if version is None:
        return None
    try:
        n = int(version)
    except (TypeError, ValueError):
        raise NoSuchVersion(version) from None
    if n < 1 or n >= 2 ** 63 or str(n) != version:
        raise NoSuchVersion(version)
    return n


def _current(txn: Txn, user_id: str) -> int | None:
    return txn.query_value("SELECT MAX(version) FROM e2e_room_keys_versions WHERE user_id = ?"
                           " AND deleted = 0", (user_id,))


def _live(txn: Txn, user_id: str, n: int) -> tuple | None:
    return txn.query_one("SELECT algorithm, auth_data, etag FROM e2e_room_keys_versions"
                         " WHERE user_id = ? AND version = ? AND deleted = 0", (user_id, n))


def _count(txn: Txn, user_id: str, n: int) -> int:
    return int(txn.query_value("SELECT COUNT(*) FROM e2e_room_keys WHERE user_id = ? AND"
                               " version = ?", (user_id, n), default=0))


def _info(txn: Txn, user_id: str, n: int) -> tuple[str, int]:
    etag = txn.query_value("SELECT etag FROM e2e_room_keys_versions WHERE user_id = ? AND"
                           " version = ?", (user_id, n), default=0)
    return str(etag), _count(txn, user_id, n)


def _bump(txn: Txn, user_id: str, n: int) -> None:
    txn.execute("UPDATE e2e_room_keys_versions SET etag = etag + 1 WHERE user_id = ? AND"
                " version = ?", (user_id, n))


class KeyBackupStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- versions -------------------------------------------------------------------------
    def create_version(self, user_id: str, algorithm: str, auth_data: dict[str, Any]) -> str:
        def _t(txn: Txn) -> str:
            n = int(txn.query_value("SELECT MAX(version) FROM e2e_room_keys_versions"
                                    " WHERE user_id = ?", (user_id,), default=0)) + 1
            txn.execute("INSERT INTO e2e_room_keys_versions (user_id, version, algorithm,"
                        " auth_data, etag, deleted) VALUES (?, ?, ?, ?, 0, 0)",
                        (user_id, n, algorithm, dumps(auth_data)))
            return str(n)

        return self.db.run("backup_create_version", _t, write=True)

    def get_version(self, user_id: str, version: str | None = None) -> BackupVersion:
        """The given version, or the newest one; raises :class:`NoSuchVersion`."""
        wanted = _parse_version(version)

        def _q(txn: Txn) -> BackupVersion:
            n = wanted if wanted is not None else _current(txn, user_id)
            row = _live(txn, user_id, n) if n is not None else None
            if row is None:
                raise NoSuchVersion(version)
            return BackupVersion(str(n), row[0], json.loads(row[1]), str(row[2]),
                                 _count(txn, user_id, n))

        return self.db.run("backup_get_version", _q)

    def update_version(self, user_id: str, version: str, algorithm: str,
                       auth_data: dict[str, Any]) -> bool:
        """Replace ``auth_data``; False if ``algorithm`` differs from the version's."""
        n = _parse_version(version)

        def _t(txn: Txn) -> bool:
            row = _live(txn, user_id, n)
            if row is None:
                raise NoSuchVersion(version)
            if row[0] != algorithm:
                return False
            txn.execute("UPDATE e2e_room_keys_versions SET auth_data = ? WHERE user_id = ?"
                        " AND version = ?", (dumps(auth_data), user_id, n))
            return True

        return self.db.run("backup_update_version", _t, write=True)

    def delete_version(self, user_id: str, version: str | None) -> None:
        """Delete a version (default: the current one) and its keys; deleting a version
        deleted before succeeds, an unknown one raises :class:`NoSuchVersion`."""
        wanted = _parse_version(version)

        def _t(txn: Txn) -> None:
            n = wanted if wanted is not None else _current(txn, user_id)
            if n is None or txn.query_one("SELECT 1 FROM e2e_room_keys_versions WHERE"
                                          " user_id = ? AND version = ?", (user_id, n)) is None:
                raise NoSuchVersion(version)
            txn.execute("UPDATE e2e_room_keys_versions SET deleted = 1 WHERE user_id = ?"
                        " AND version = ?", (user_id, n))
            txn.execute("DELETE FROM e2e_room_keys WHERE user_id = ? AND version = ?",
                        (user_id, n))

        self.db.run("backup_delete_version", _t, write=True)

    # -- keys -----------------------------------------------------------------------------
    def put_keys(self, user_id: str, version: str, sessions: Sessions) -> tuple[str, int]:
        """Store session keys by the replacement rule; (etag, count).  Raises
        :class:`NoSuchVersion` or :class:`WrongVersion` (not the current version)."""
        n = _parse_version(version)

        def _t(txn: Txn) -> tuple[str, int]:
            if _live(txn, user_id, n) is None:
                raise NoSuchVersion(version)
            current = _current(txn, user_id)
            if current != n:
                raise WrongVersion(str(current) if current is not None else None)
            changed = False
            for room_id, by_session in sessions.items():
                for session_id, data in by_session.items():
                    changed |= _put_one(txn, user_id, n, room_id, session_id, data)
            if changed:
                _bump(txn, user_id, n)
            return _info(txn, user_id, n)

        return self.db.run("backup_put_keys", _t, write=True)

    def get_keys(self, user_id: str, version: str, room_id: str | None = None,
                 session_id: str | None = None) -> Sessions:
        n = _parse_version(version)

        def _q(txn: Txn) -> Sessions:
            if _live(txn, user_id, n) is None:
                raise NoSuchVersion(version)
            sql = ("SELECT room_id, session_id, first_message_index, forwarded_count,"
                   " is_verified, session_data FROM e2e_room_keys WHERE user_id = ?"
                   " AND version = ?")
            args: list[Any] = [user_id, n]
            if room_id is not None:
                sql += " AND room_id = ?"
                args.append(room_id)
            if session_id is not None:
                sql += " AND session_id = ?"
                args.append(session_id)
            out: Sessions = {}
            for r, s, fmi, fc, verified, data in txn.query(sql, args):
                out.setdefault(r, {})[s] = {
                    "first_message_index": int(fmi), "forwarded_count": int(fc),
                    "is_verified": bool(verified), "session_data": json.loads(data)}
            return out

        return self.db.run("backup_get_keys", _q)

    def delete_keys(self, user_id: str, version: str, room_id: str | None = None,
                    session_id: str | None = None) -> tuple[str, int]:
        n = _parse_version(version)

        def _t(txn: Txn) -> tuple[str, int]:
            if _live(txn, user_id, n) is None:
                raise NoSuchVersion(version)
            sql = "DELETE FROM e2e_room_keys WHERE user_id = ? AND version = ?"
            args: list[Any] = [user_id, n]
            if room_id is not None:
                sql += " AND room_id = ?"
                args.append(room_id)
            if session_id is not None:
                sql += " AND session_id = ?"
                args.append(session_id)
            if txn.execute(sql, args) > 0:
                _bump(txn, user_id, n)
            return _info(txn, user_id, n)

        return self.db.run("backup_delete_keys", _t, write=True)


def _put_one(txn: Txn, user_id: str, n: int, room_id: str, session_id: str,
             data: dict[str, Any]) -> bool:
    row = txn.query_one("SELECT first_message_index, forwarded_count, is_verified FROM"
                        " e2e_room_keys WHERE user_id = ? AND version = ? AND room_id = ?"
                        " AND session_id = ?", (user_id, n, room_id, session_id))
    old = None if row is None else {"first_message_index": row[0], "forwarded_count": row[1],
                                    "is_verified": bool(row[2])}
    if not backup_replaces(data, old):
        return False
    args = (int(data["first_message_index"]), int(data["forwarded_count"]),
            int(bool(data["is_verified"])), dumps(data["session_data"]))
    if old is None:
        txn.execute("INSERT INTO e2e_room_keys (user_id, version, room_id, session_id,"
                    " first_message_index, forwarded_count, is_verified, session_data)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (user_id, n, room_id, session_id, *args))
    else:
        txn.execute("UPDATE e2e_room_keys SET first_message_index = ?, forwarded_count = ?,"
                    " is_verified = ?, session_data = ? WHERE user_id = ? AND version = ?"
                    " AND room_id = ? AND session_id = ?",
                    (*args, user_id, n, room_id, session_id))
    return True
