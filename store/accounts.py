"""Accounts storage: users, devices, access/refresh tokens (sha256-hashed), profiles,
registration tokens and UIA sessions (tables in ``schema/001_accounts.sql``)."""
from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from store.database import Database, Txn


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def now_ms() -> int:
    return int(time.time() * 1000)


def new_token(prefix: str = "atr") -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


@dataclass(frozen=True)
class TokenInfo:
    user_id: str
    device_id: str | None
    is_admin: bool
    is_guest: bool
    deactivated: bool
    expires_ts: int | None
    token_hash: str


class AccountStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- tokens --------------------------------------------------------------------------
    def get_token(self, token: str) -> TokenInfo | None:
        th = hash_token(token)

        def _q(txn: Txn) -> TokenInfo | None:
            r = txn.query_one(
                "SELECT t.user_id, t.device_id, u.admin, u.is_guest, u.deactivated, t.expires_ts"
                " FROM access_tokens t JOIN users u ON u.name = t.user_id"
                " WHERE t.token_hash = ?", (th,))
            if r is None:
                return None
            return TokenInfo(r[0], r[1], bool(r[2]), bool(r[3]), bool(r[4]), r[5], th)

        return self.db.run("get_token", _q)
