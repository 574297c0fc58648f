"""Accounts storage: users, devices, access/refresh tokens (sha256-hashed), profiles,
registration tokens and UIA sessions (tables in ``schema/001_accounts.sql`` and
``002_accounts_more.sql``; the last two in ``store/uia_sessions.py``, inherited).

Every method is one transaction.  Writes that finish a User-Interactive Auth session take
``uia_session`` and delete it in the same transaction, so an operation and the end of its
session commit together.  Other areas hook device deletion and deactivation through
``on_devices_deleted`` / ``on_user_deactivated`` (called inside the same transaction).
"""
from __future__ import annotations

import hashlib
import secrets
import string
from dataclasses import dataclass
from typing import Any, Callable

from store.database import Database, IntegrityError, Txn
from store.token_cache import TokenCache
# UIASession and now_ms are re-exported: callers import them from here
from store.uia_sessions import UIASession, UIASessions, _finish_uia, _mark_registered, now_ms  # noqa: F401



def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token(prefix: str = "atr") -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def new_device_id() -> str:
    return "".join(secrets.choice(string.ascii_uppercase) for _ in range(10))


class UserInUse(Exception):
    """The user id is already registered."""


class NotAGuest(Exception):
    """The account to upgrade is not (or no longer) a guest account."""


@dataclass(frozen=True)
class TokenInfo:
    user_id: str
    device_id: str | None
    is_admin: bool
    is_guest: bool
    deactivated: bool
    expires_ts: int | None
    token_hash: str


@dataclass(frozen=True)
class UserInfo:
    user_id: str
    password_hash: str | None
    creation_ts: int
    admin: bool
    deactivated: bool
    is_guest: bool
    user_type: str | None


@dataclass(frozen=True)
class LoginRequest:
    """What a login (or a registration that logs in) asks for."""

    device_id: str | None = None
    display_name: str | None = None
    refresh: bool = False
    lifetime_ms: int | None = None  # access-token lifetime when refresh is on
    ip: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True)
class Session:
    """The tokens handed to a client after login, registration or refresh."""

    user_id: str
    device_id: str
    access_token: str
    refresh_token: str | None
    expires_in_ms: int | None


DeviceHook = Callable[[Txn, str, list[str]], None]
UserHook = Callable[[Txn, str], None]


class AccountStore(UIASessions):
    def __init__(self, db: Database, *, token_cache_size: int = 10_000) -> None:
        self.db = db
        self.on_devices_deleted: list[DeviceHook] = []
        self.on_user_deactivated: list[UserHook] = []
        self.on_user_registered: list[UserHook] = []   # in the registration's transaction
        self.tokens = TokenCache(token_cache_size)

    def _forget_tokens_after_commit(self, txn: Txn, user_id: str) -> None:
        """Drop ``user_id``'s cached tokens once ``txn`` has committed.  A lookup that read
        the old row concurrently either stored it before this (dropped here) or sees the
        bumped generation and does not store it."""
        txn.call_after_commit(lambda: self.tokens.drop_user(user_id))

    # -- tokens --------------------------------------------------------------------------
    def get_token(self, token: str) -> TokenInfo | None:
        th = hash_token(token)
        cached = self.tokens.get(th)
        if cached is not None:
            return cached
        generation = self.tokens.generation

        def _q(txn: Txn) -> tuple[TokenInfo, bool] | None:
            r = txn.query_one(
                "SELECT t.user_id, t.device_id, u.admin, u.is_guest, u.deactivated, t.expires_ts,"
                " t.refresh_token_hash, t.used"
                " FROM access_tokens t JOIN users u ON u.name = t.user_id"
                " WHERE t.token_hash = ?", (th,))
            if r is None:
                return None
            info = TokenInfo(r[0], r[1], bool(r[2]), bool(r[3]), bool(r[4]), r[5], th)
            return info, bool(r[6] is not None and not r[7])

        found = self.db.run("get_token", _q, inline=True)  # one primary-key lookup
        if found is None:
            return None
        info, first_use_of_refreshed = found
        if first_use_of_refreshed:
            # the first use of a refreshed access token retires the refresh token before it
            # (and the access tokens issued with that one)
            def _t(txn: Txn) -> None:
                _mark_used(txn, th)
                self._forget_tokens_after_commit(txn, info.user_id)

            self.db.run("mark_token_used", _t, write=True)
            return info
        self.tokens.put(info, generation)
        return info

    def refresh(self, refresh_token: str, lifetime_ms: int | None) -> Session | None:
        """Rotate a refresh token (spec: "Refreshing access tokens"); None if not valid."""
        def _t(txn: Txn) -> Session | None:
            session = _refresh(txn, hash_token(refresh_token), lifetime_ms)
            if session is not None:
                self._forget_tokens_after_commit(txn, session.user_id)
            return session

        return self.db.run("refresh", _t, write=True)

    def logout(self, token_hash: str) -> None:
        """Invalidate one access token and delete its device (spec: POST /logout)."""
        def _t(txn: Txn) -> None:
            r = txn.query_one("SELECT user_id, device_id FROM access_tokens WHERE token_hash = ?",
                              (token_hash,))
            if r is None:
                return
            txn.execute("DELETE FROM access_tokens WHERE token_hash = ?", (token_hash,))
            self._forget_tokens_after_commit(txn, r[0])
            if r[1] is not None:
                self._delete_devices(txn, r[0], [r[1]])

        self.db.run("logout", _t, write=True)

    def logout_all(self, user_id: str) -> None:
        def _t(txn: Txn) -> None:
            self._delete_devices(txn, user_id, _device_ids(txn, user_id))
            txn.execute("DELETE FROM access_tokens WHERE user_id = ?", (user_id,))
            self._forget_tokens_after_commit(txn, user_id)

        self.db.run("logout_all", _t, write=True)

    # -- users ---------------------------------------------------------------------------
    def get_user(self, user_id: str) -> UserInfo | None:
        def _q(txn: Txn) -> UserInfo | None:
            r = txn.query_one("SELECT name, password_hash, creation_ts, admin, deactivated,"
                              " is_guest, user_type FROM users WHERE name = ?", (user_id,))
            if r is None:
                return None
            return UserInfo(r[0], r[1], r[2], bool(r[3]), bool(r[4]), bool(r[5]), r[6])

        return self.db.run("get_user", _q)

    def user_exists(self, user_id: str) -> bool:
        return self.db.run("user_exists", lambda t: t.query_one(
            "SELECT 1 FROM users WHERE name = ?", (user_id,)) is not None)

    def register_user(self, user_id: str, password_hash: str | None, *,
                      admin: bool = False, user_type: str | None = None,
                      displayname: str | None = None, login: LoginRequest | None = None,
                      uia_session: str | None = None, guest: bool = False) -> Session | None:
        """Create a user (and, with ``login``, its first device and tokens) in one
        transaction; a registration token reserved by ``uia_session`` counts as used.
        ``guest`` makes a guest account (client-server-api "Guest Access").
        Raises :class:`UserInUse`."""
        def _t(txn: Txn) -> Session | None:
            if txn.query_one("SELECT 1 FROM users WHERE name = ?", (user_id,)) is not None:
                raise UserInUse(user_id)
            txn.execute("INSERT INTO users (name, password_hash, creation_ts, admin, user_type,"
                        " is_guest) VALUES (?, ?, ?, ?, ?, ?)",
                        (user_id, password_hash, now_ms(), int(admin), user_type, int(guest)))
            txn.execute("INSERT INTO profiles (user_id, displayname) VALUES (?, ?)",
                        (user_id, displayname))
            for hook in self.on_user_registered:
                hook(txn, user_id)
            if uia_session is not None:
                _mark_registered(txn, uia_session, user_id)
            return _issue(txn, user_id, login) if login is not None else None

        try:
            return self.db.run("register_user", _t, write=True)
        except IntegrityError as e:  # a concurrent registration of the same name
            raise UserInUse(user_id) from e

    def upgrade_guest(self, user_id: str, password_hash: str, *,
                      login: LoginRequest | None = None,
                      uia_session: str | None = None) -> Session | None:
        """Turn a guest account into a full account with a password, keeping its user id,
        profile, devices and tokens (the tokens stop being guest tokens: cached lookups are
        dropped after commit); with ``login``, a new device and tokens as for a
        registration.  Raises :class:`NotAGuest` if the user is not a guest (any more)."""
        def _t(txn: Txn) -> Session | None:
            if txn.execute("UPDATE users SET is_guest = 0, password_hash = ?"
                           " WHERE name = ? AND is_guest = 1", (password_hash, user_id)) != 1:
                raise NotAGuest(user_id)
            self._forget_tokens_after_commit(txn, user_id)
            if uia_session is not None:
                _mark_registered(txn, uia_session, user_id)
            return _issue(txn, user_id, login) if login is not None else None

        return self.db.run("upgrade_guest", _t, write=True)

    def guests_in_room(self, room_id: str) -> list[str]:
        """The guest accounts of this server joined to or invited into ``room_id`` now (the
        members the server must take out when the room stops admitting guests)."""
        return self.db.run("guests_in_room", lambda t: [r[0] for r in t.query(
            "SELECT c.state_key FROM current_state c JOIN users u ON u.name = c.state_key"
            " WHERE c.room_id = ? AND c.type = 'm.room.member'"
            " AND c.membership IN ('join', 'invite') AND u.is_guest = 1"
            " ORDER BY c.state_key", (room_id,))])

    def login(self, user_id: str, login: LoginRequest) -> Session:
        """Create (or reuse) the device and issue tokens; old tokens of a reused device die."""
        def _t(txn: Txn) -> Session:
            session = _issue(txn, user_id, login)
            self._forget_tokens_after_commit(txn, user_id)  # a reused device's tokens died
            return session

        return self.db.run("login", _t, write=True)

    def set_password(self, user_id: str, password_hash: str, *, keep_device: str | None,
                     logout_devices: bool, uia_session: str | None = None) -> None:
        """Change the password; with ``logout_devices`` every other device is deleted."""
        def _t(txn: Txn) -> None:
            txn.execute("UPDATE users SET password_hash = ? WHERE name = ?",
                        (password_hash, user_id))
            if logout_devices:
                others = [d for d in _device_ids(txn, user_id) if d != keep_device]
                self._delete_devices(txn, user_id, others)
                if keep_device is None:
                    txn.execute("DELETE FROM access_tokens WHERE user_id = ?", (user_id,))
                self._forget_tokens_after_commit(txn, user_id)
            if uia_session is not None:
                _finish_uia(txn, uia_session)

        self.db.run("set_password", _t, write=True)

    def deactivate(self, user_id: str, *, uia_session: str | None = None) -> None:
        """Mark deactivated, forget the password, delete devices/tokens, clear the profile."""
        def _t(txn: Txn) -> None:
            txn.execute("UPDATE users SET deactivated = 1, password_hash = NULL WHERE name = ?",
                        (user_id,))
            self._delete_devices(txn, user_id, _device_ids(txn, user_id))
            txn.execute("DELETE FROM access_tokens WHERE user_id = ?", (user_id,))
            txn.execute("DELETE FROM refresh_tokens WHERE user_id = ?", (user_id,))
            self._forget_tokens_after_commit(txn, user_id)
            txn.execute("UPDATE profiles SET displayname = NULL, avatar_url = NULL"
                        " WHERE user_id = ?", (user_id,))
            for hook in self.on_user_deactivated:
                hook(txn, user_id)
            if uia_session is not None:
                _finish_uia(txn, uia_session)

        self.db.run("deactivate", _t, write=True)

    # -- devices -------------------------------------------------------------------------
    def list_devices(self, user_id: str) -> list[dict[str, Any]]:
        return self.db.run("list_devices", lambda t: t.query_dicts(
            "SELECT device_id, display_name, last_seen_ip, last_seen_ts FROM devices"
            " WHERE user_id = ? ORDER BY device_id", (user_id,)))

    def device_connections(self, user_id: str) -> list[dict[str, Any]]:
        """Each device's last connection (ip, time, user agent) for admin ``whois``."""
        return self.db.run("device_connections", lambda t: t.query_dicts(
            "SELECT device_id, last_seen_ip, last_seen_ts, last_seen_user_agent FROM devices"
            " WHERE user_id = ? ORDER BY device_id", (user_id,)))

    def get_device(self, user_id: str, device_id: str) -> dict[str, Any] | None:
        rows = self.db.run("get_device", lambda t: t.query_dicts(
            "SELECT device_id, display_name, last_seen_ip, last_seen_ts FROM devices"
            " WHERE user_id = ? AND device_id = ?", (user_id, device_id)))
        return rows[0] if rows else None

    def rename_device(self, user_id: str, device_id: str, display_name: str | None) -> bool:
        """Set a device's display name; False if the user has no such device."""
        def _t(txn: Txn) -> bool:
            if txn.query_one("SELECT 1 FROM devices WHERE user_id = ? AND device_id = ?",
                             (user_id, device_id)) is None:
                return False
            if display_name is not None:
                txn.execute("UPDATE devices SET display_name = ? WHERE user_id = ?"
                            " AND device_id = ?", (display_name, user_id, device_id))
            return True

        return self.db.run("rename_device", _t, write=True)

    def delete_devices(self, user_id: str, device_ids: list[str], *,
                       uia_session: str | None = None) -> None:
        """Delete devices with their access and refresh tokens (unknown ids are ignored)."""
        def _t(txn: Txn) -> None:
            self._delete_devices(txn, user_id, device_ids)
            if uia_session is not None:
                _finish_uia(txn, uia_session)

        self.db.run("delete_devices", _t, write=True)

    def _delete_devices(self, txn: Txn, user_id: str, device_ids: list[str]) -> None:
        if not device_ids:
            return
        for d in device_ids:
            txn.execute("DELETE FROM access_tokens WHERE user_id = ? AND device_id = ?",
                        (user_id, d))
            txn.execute("DELETE FROM refresh_tokens WHERE user_id = ? AND device_id = ?",
                        (user_id, d))
            txn.execute("DELETE FROM devices WHERE user_id = ? AND device_id = ?", (user_id, d))
        self._forget_tokens_after_commit(txn, user_id)
        for hook in self.on_devices_deleted:
            hook(txn, user_id, list(device_ids))

    # -- profiles ------------------------------------------------------------------------
    def get_profile(self, user_id: str) -> dict[str, Any] | None:
        """``{"displayname", "avatar_url"}`` (None values included), or None if no such
        user.  A deactivated user's profile is empty."""
        def _q(txn: Txn) -> dict[str, Any] | None:
            r = txn.query_one("SELECT p.displayname, p.avatar_url FROM users u"
                              " LEFT JOIN profiles p ON p.user_id = u.name WHERE u.name = ?",
                              (user_id,))
            return None if r is None else {"displayname": r[0], "avatar_url": r[1]}

        return self.db.run("get_profile", _q)

    def set_profile_field(self, user_id: str, field: str, value: str | None) -> None:
        if field not in ("displayname", "avatar_url"):
            raise ValueError(field)

        def _t(txn: Txn) -> None:
            if txn.execute(f"UPDATE profiles SET {field} = ? WHERE user_id = ?",
                           (value, user_id)) == 0:
                txn.execute(f"INSERT INTO profiles (user_id, {field}) VALUES (?, ?)",
                            (user_id, value))

        self.db.run("set_profile_field", _t, write=True)

    # -- registration tokens -------------------------------------------------------------


# ------------------------------------------------------------------ transaction helpers

def _device_ids(txn: Txn, user_id: str) -> list[str]:
    return [r[0] for r in txn.query("SELECT device_id FROM devices WHERE user_id = ?",
                                    (user_id,))]


def _insert_tokens(txn: Txn, user_id: str, device_id: str,
                   login: LoginRequest) -> tuple[str, str | None, int | None]:
    ts = now_ms()
    access, refresh, rth, expires_ts = new_token("atr"), None, None, None
    if login.refresh and login.lifetime_ms is not None:
        refresh = new_token("atr_r")
        rth = hash_token(refresh)
        expires_ts = ts + login.lifetime_ms
        txn.execute("INSERT INTO refresh_tokens (token_hash, user_id, device_id, created_ts)"
                    " VALUES (?, ?, ?, ?)", (rth, user_id, device_id, ts))
    txn.execute("INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts,"
                " expires_ts, refresh_token_hash) VALUES (?, ?, ?, ?, ?, ?)",
                (hash_token(access), user_id, device_id, ts, expires_ts, rth))
    return access, refresh, (login.lifetime_ms if refresh else None)


def _issue(txn: Txn, user_id: str, login: LoginRequest) -> Session:
    device_id = login.device_id or new_device_id()
    ts = now_ms()
    exists = txn.query_one("SELECT 1 FROM devices WHERE user_id = ? AND device_id = ?",
                           (user_id, device_id)) is not None
    if exists:
        # spec (POST /login): reusing a device id invalidates the device's earlier tokens
        txn.execute("DELETE FROM access_tokens WHERE user_id = ? AND device_id = ?",
                    (user_id, device_id))
        txn.execute("DELETE FROM refresh_tokens WHERE user_id = ? AND device_id = ?",
                    (user_id, device_id))
        txn.execute("UPDATE devices SET last_seen_ts = ?, last_seen_ip = ?,"
                    " last_seen_user_agent = ? WHERE user_id = ? AND device_id = ?",
                    (ts, login.ip, login.user_agent, user_id, device_id))
    else:
        txn.execute("INSERT INTO devices (user_id, device_id, display_name, created_ts,"
                    " last_seen_ts, last_seen_ip, last_seen_user_agent)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (user_id, device_id, login.display_name, ts, ts, login.ip,
                     login.user_agent))
    access, refresh, expires_in = _insert_tokens(txn, user_id, device_id, login)
    return Session(user_id, device_id, access, refresh, expires_in)


def _mark_used(txn: Txn, token_hash: str) -> None:
    rth = txn.query_value("SELECT refresh_token_hash FROM access_tokens WHERE token_hash = ?",
                          (token_hash,))
    txn.execute("UPDATE access_tokens SET used = 1 WHERE token_hash = ?", (token_hash,))
    if rth is not None:
        _retire_predecessors(txn, rth)


def _retire_predecessors(txn: Txn, refresh_hash: str) -> None:
    """The refresh token(s) that ``refresh_hash`` replaced are no longer valid: delete them
    and the access tokens issued with them."""
    for (old,) in txn.query("SELECT token_hash FROM refresh_tokens WHERE next_token_hash = ?",
                            (refresh_hash,)):
        txn.execute("DELETE FROM access_tokens WHERE refresh_token_hash = ?", (old,))
        txn.execute("DELETE FROM refresh_tokens WHERE token_hash = ?", (old,))


def _refresh(txn: Txn, rth: str, lifetime_ms: int | None) -> Session | None:
    r = txn.query_one("SELECT r.user_id, r.device_id, r.next_token_hash, u.deactivated"
                      " FROM refresh_tokens r JOIN users u ON u.name = r.user_id"
                      " WHERE r.token_hash = ?", (rth,))
    if r is None or r[3]:
        return None
    user_id, device_id, next_hash = r[0], r[1], r[2]
    if next_hash is not None:
        # a retry: allowed only while its successor is untouched, which it then replaces
        nxt = txn.query_one("SELECT next_token_hash FROM refresh_tokens WHERE token_hash = ?",
                            (next_hash,))
        used = txn.query_value("SELECT MAX(used) FROM access_tokens"
                               " WHERE refresh_token_hash = ?", (next_hash,), default=0)
        if nxt is None or nxt[0] is not None or used:
            return None
        txn.execute("DELETE FROM access_tokens WHERE refresh_token_hash = ?", (next_hash,))
        txn.execute("DELETE FROM refresh_tokens WHERE token_hash = ?", (next_hash,))
    _retire_predecessors(txn, rth)
    login = LoginRequest(device_id=device_id, refresh=True,
                         lifetime_ms=lifetime_ms if lifetime_ms is not None else 300_000)
    access, refresh, expires_in = _insert_tokens(txn, user_id, device_id, login)
    assert refresh is not None
    txn.execute("UPDATE refresh_tokens SET next_token_hash = ? WHERE token_hash = ?",
                (hash_token(refresh), rth))
    return Session(user_id, device_id, access, refresh, expires_in)
