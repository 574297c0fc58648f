"""OpenID tokens (table ``openid_tokens``, migration ``schema/063_openid.sql``).

Spec: client-server-api "OpenID" (``POST /user/{userId}/openid/request_token``) and
server-server-api "OpenID" (``GET /_matrix/federation/v1/openid/userinfo``).  A token proves
to a third party who the user is; it expires after its lifetime and is stored as its sha256
only.  Every method is one transaction.
"""
from __future__ import annotations

import secrets
import time
from typing import Callable

from store.accounts import hash_token
from store.database import Database, Txn

#: The lifetime of a token (the spec's example and Synapse's default ``expires_in``).
DEFAULT_LIFETIME_MS = 3600 * 1000


class OpenIdStore:
    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def create(self, user_id: str, lifetime_ms: int = DEFAULT_LIFETIME_MS) -> str:
        """A new token for ``user_id``, valid for ``lifetime_ms``; expired tokens of every
        user are pruned in the same transaction (so the table stays small)."""
        token = secrets.token_urlsafe(32)
        now = self._now_ms()

        def _t(txn: Txn) -> None:
            txn.execute("DELETE FROM openid_tokens WHERE expires_ts <= ?", (now,))
            txn.execute("INSERT INTO openid_tokens (token_hash, user_id, expires_ts)"
                        " VALUES (?, ?, ?)", (hash_token(token), user_id, now + lifetime_ms))

        self.db.run("openid_create", _t, write=True)
        return token

    def user_for(self, token: str) -> str | None:
        """The user a token was made for, or None when it is unknown or expired."""
        row = self.db.run("openid_user", lambda t: t.query_one(
            "SELECT user_id, expires_ts FROM openid_tokens WHERE token_hash = ?",
            (hash_token(token),)))
        if row is None or int(row[1]) <= self._now_ms():
            return None
        return str(row[0])

    @staticmethod
    def delete_for_user(txn: Txn, user_id: str) -> None:
        """AccountStore.on_user_deactivated: a deactivated user's tokens stop working."""
        txn.execute("DELETE FROM openid_tokens WHERE user_id = ?", (user_id,))
