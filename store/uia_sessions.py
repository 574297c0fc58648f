"""UIA sessions and registration tokens (tables ``uia_sessions`` and
``registration_tokens`` in ``schema/001_accounts.sql`` / ``002_accounts_more.sql``): the
part of the accounts store that User-Interactive Auth uses.  ``AccountStore`` inherits these
methods; the transaction helpers ``_finish_uia`` / ``_mark_registered`` let an account
write end its session in the same transaction."""
from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from store.database import Database, Txn

#: UIA sessions older than this are purged (and their registration-token reservations freed).
UIA_SESSION_LIFETIME_MS = 24 * 3600 * 1000


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class UIASession:
    session_id: str
    uri: str
    method: str
    clientdict: dict[str, Any]
    completed: list[str]
    params: dict[str, Any]
    user_id: str | None


class UIASessions:
    """Registration tokens and UIA sessions; mixed into ``AccountStore`` (needs ``db``)."""

    db: Database

    def add_registration_token(self, token: str, *, uses_allowed: int | None = None,
                               expiry_time: int | None = None) -> None:
        self.db.run("add_registration_token", lambda t: t.execute(
            "INSERT INTO registration_tokens (token, uses_allowed, expiry_time) VALUES (?, ?, ?)",
            (token, uses_allowed, expiry_time)), write=True)

    def list_registration_tokens(self) -> list[dict[str, Any]]:
        return self.db.run("list_registration_tokens", lambda t: t.query_dicts(
            "SELECT token, uses_allowed, pending, completed, expiry_time"
            " FROM registration_tokens ORDER BY token"))

    def registration_token_valid(self, token: str) -> bool:
        return self.db.run("registration_token_valid", _token_valid, token)

    # -- UIA sessions --------------------------------------------------------------------
    def create_uia_session(self, uri: str, method: str, clientdict: dict[str, Any],
                           user_id: str | None) -> str:
        """Start a session (and purge sessions past their lifetime)."""
        sid = secrets.token_urlsafe(24)

        def _t(txn: Txn) -> None:
            cutoff = now_ms() - UIA_SESSION_LIFETIME_MS
            for (old,) in txn.query("SELECT session_id FROM uia_sessions WHERE created_ts < ?",
                                    (cutoff,)):
                _finish_uia(txn, old)
            txn.execute("INSERT INTO uia_sessions (session_id, created_ts, uri, method,"
                        " clientdict, completed, params, user_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (sid, now_ms(), uri, method, json.dumps(clientdict), "[]", "{}", user_id))

        self.db.run("create_uia_session", _t, write=True)
        return sid

    def get_uia_session(self, session_id: str) -> UIASession | None:
        def _q(txn: Txn) -> UIASession | None:
            r = txn.query_one("SELECT session_id, uri, method, clientdict, completed, params,"
                              " user_id, created_ts FROM uia_sessions WHERE session_id = ?",
                              (session_id,))
            if r is None or r[7] < now_ms() - UIA_SESSION_LIFETIME_MS:
                return None
            return UIASession(r[0], r[1], r[2], json.loads(r[3]), json.loads(r[4]),
                              json.loads(r[5]), r[6])

        return self.db.run("get_uia_session", _q)

    def update_uia_params(self, session_id: str, updates: dict[str, Any]) -> None:
        """Merge ``updates`` into a session's ``params`` (e.g. the registration's password
        hash, so later rounds need not send the password again)."""
        def _t(txn: Txn) -> None:
            raw = txn.query_value("SELECT params FROM uia_sessions WHERE session_id = ?",
                                  (session_id,))
            if raw is None:
                return
            txn.execute("UPDATE uia_sessions SET params = ? WHERE session_id = ?",
                        (json.dumps({**json.loads(raw), **updates}), session_id))

        self.db.run("update_uia_params", _t, write=True)

    def update_uia_clientdict(self, session_id: str, clientdict: dict[str, Any]) -> None:
        self.db.run("update_uia_clientdict", lambda t: t.execute(
            "UPDATE uia_sessions SET clientdict = ? WHERE session_id = ?",
            (json.dumps(clientdict), session_id)), write=True)

    def complete_uia_stage(self, session_id: str, stage: str,
                           reserve_token: str | None = None) -> bool:
        """Record a completed stage.  With ``reserve_token`` the registration token is
        checked and one use reserved (``pending``) in the same transaction; False if the
        token is not valid."""
        def _t(txn: Txn) -> bool:
            r = txn.query_one("SELECT completed, params FROM uia_sessions WHERE session_id = ?",
                              (session_id,))
            if r is None:
                return False
            completed, params = json.loads(r[0]), json.loads(r[1])
            if stage in completed:
                return True
            if reserve_token is not None:
                if not _token_valid(txn, reserve_token):
                    return False
                txn.execute("UPDATE registration_tokens SET pending = pending + 1"
                            " WHERE token = ?", (reserve_token,))
                params["registration_token"] = reserve_token
            completed.append(stage)
            txn.execute("UPDATE uia_sessions SET completed = ?, params = ? WHERE session_id = ?",
                        (json.dumps(completed), json.dumps(params), session_id))
            return True

        return self.db.run("complete_uia_stage", _t, write=True)


# ------------------------------------------------------------------ transaction helpers

def _token_valid(txn: Txn, token: str) -> bool:
    r = txn.query_one("SELECT uses_allowed, pending, completed, expiry_time"
                      " FROM registration_tokens WHERE token = ?", (token,))
    if r is None:
        return False
    uses_allowed, pending, completed, expiry = r
    if expiry is not None and expiry <= now_ms():
        return False
    return uses_allowed is None or pending + completed < uses_allowed


def _mark_registered(txn: Txn, session_id: str, user_id: str) -> None:
    """A registration's UIA session ends by remembering the user it created (so the same
    session completed again answers with that user, as Synapse) instead of being deleted;
    its reserved registration token becomes a completed use, and the stored password hash
    is dropped.  The session goes when its lifetime ends."""
    raw = txn.query_value("SELECT params FROM uia_sessions WHERE session_id = ?",
                          (session_id,))
    if raw is None:
        return
    params = json.loads(raw)
    token = params.pop("registration_token", None)
    if token is not None:
        txn.execute("UPDATE registration_tokens SET pending = pending - 1,"
                    " completed = completed + 1 WHERE token = ?", (token,))
    params.pop("password_hash", None)
    params["registered_user_id"] = user_id
    txn.execute("UPDATE uia_sessions SET params = ? WHERE session_id = ?",
                (json.dumps(params), session_id))


def _finish_uia(txn: Txn, session_id: str, *, consume_token: bool = False) -> None:
    """Delete a UIA session; its reserved registration token becomes a completed use
    (``consume_token``) or is released."""
    params = txn.query_value("SELECT params FROM uia_sessions WHERE session_id = ?",
                             (session_id,))
    if params is None:
        return
    token = json.loads(params).get("registration_token")
    if token is not None:
        if consume_token:
            txn.execute("UPDATE registration_tokens SET pending = pending - 1,"
                        " completed = completed + 1 WHERE token = ?", (token,))
        else:
            txn.execute("UPDATE registration_tokens SET pending = pending - 1"
                        " WHERE token = ? AND pending > 0", (token,))
    txn.execute("DELETE FROM uia_sessions WHERE session_id = ?", (session_id,))
