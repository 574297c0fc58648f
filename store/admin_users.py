"""The queries of the users half of Synapse's admin API (web/synapse_admin_users.py):
listing users with filters and ordering, the full admin record of a user, the flags an admin
sets (admin, user type, shadow-ban, lock, erase), per-user rate-limit overrides, external
ids, "login as a user" tokens, the rooms a deactivated user still has to leave, and the
registration tokens' admin side (tables of ``schema/001_accounts.sql`` and
``079_admin_users.sql``).

:class:`UserPolicy` keeps the shadow-banned, locked and erased users and the rate-limit
overrides in memory (loaded at start, updated after each commit here), so the checks on every
send and every served event cost no query.  The erased set is also reachable from the
database handle alone (:func:`erased_users`), for the read paths that hold only a store
(web/visibility.py, store/room_federation_reads.py).  Scale-out seam: with several processes
these sets must follow the database (LISTEN / NOTIFY on PostgreSQL) instead of this process's
own writes.

Every method is one transaction.
"""
from __future__ import annotations

import random
import weakref
from dataclasses import dataclass, field
from typing import Any, Sequence

import gevent

from atrium.config import RateLimit
from store.accounts import hash_token, new_token, now_ms
from store.database import Database, Txn
from store.token_cache import TokenCache

#: order_by values of GET /_synapse/admin/v2/users → the column they sort on
ORDER_COLUMNS = {
    "name": "u.name", "displayname": "p.displayname", "is_guest": "u.is_guest",
    "admin": "u.admin", "deactivated": "u.deactivated", "user_type": "u.user_type",
    "avatar_url": "p.avatar_url", "shadow_banned": "u.shadow_banned",
    "creation_ts": "u.creation_ts", "last_seen_ts": "last_seen_ts", "locked": "u.locked",
}

_LIST_FROM = (" FROM users u LEFT JOIN profiles p ON p.user_id = u.name"
              " LEFT JOIN (SELECT user_id, MAX(last_seen_ts) AS seen FROM devices"
              " GROUP BY user_id) d ON d.user_id = u.name")
_LIST_COLUMNS = ("u.name, u.user_type, u.is_guest, u.admin, u.deactivated, u.shadow_banned,"
                 " p.displayname, p.avatar_url, u.creation_ts, u.erased, d.seen AS"
                 " last_seen_ts, u.locked")


@dataclass(frozen=True)
class UserFilter:
    """The filters of GET /_synapse/admin/v2/users (None = no filtering on that field)."""

    user_id: str | None = None      # substring of the user id
    name: str | None = None         # substring of the localpart or the display name
    guests: bool = True             # False: no guests
    deactivated: bool | None = None
    admins: bool | None = None
    locked: bool = False            # False: locked users left out
    not_user_types: Sequence[str] = field(default_factory=tuple)  # "" = users without one


def _like(s: str) -> str:
    """A LIKE pattern's literal part (``%``, ``_`` and the escape matched as themselves)."""
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _where(f: UserFilter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if f.name:
        clauses.append("(LOWER(u.name) LIKE ? ESCAPE '\\' OR LOWER(p.displayname) LIKE ?"
                       " ESCAPE '\\')")
        args += [f"@%{_like(f.name.lower())}%:%", f"%{_like(f.name.lower())}%"]
    elif f.user_id:
        clauses.append("LOWER(u.name) LIKE ? ESCAPE '\\'")
        args.append(f"%{_like(f.user_id.lower())}%")
    if not f.guests:
        clauses.append("u.is_guest = 0")
    if f.deactivated is not None:
        clauses.append("u.deactivated = ?")
        args.append(int(f.deactivated))
    if not f.locked:
        clauses.append("u.locked = 0")
    if f.admins is not None:
        clauses.append("u.admin = ?")
        args.append(int(f.admins))
    named = [t for t in f.not_user_types if t != ""]
    if named:
        marks = ", ".join("?" for _ in named)
        clauses.append(f"(u.user_type IS NULL OR u.user_type NOT IN ({marks}))"
                       if "" not in f.not_user_types else f"u.user_type NOT IN ({marks})")
        args += named
    elif "" in f.not_user_types:
        clauses.append("u.user_type IS NOT NULL")
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def _user_row(r: dict[str, Any]) -> dict[str, Any]:
    for k in ("is_guest", "admin", "deactivated", "shadow_banned", "erased", "locked"):
        r[k] = bool(r[k])
    if r.get("creation_ts") is not None:   # stored in ms; Synapse's admin API answers seconds
        r["creation_ts"] = int(r["creation_ts"]) // 1000
    return r


#: the live erased set of each server's UserPolicy, by its database handle
_ERASED: "weakref.WeakKeyDictionary[Database, set[str]]" = weakref.WeakKeyDictionary()


def erased_users(db: Database) -> set[str]:
    """The users of the server over ``db`` deactivated with ``erase`` (the live set its
    :class:`UserPolicy` keeps; empty until an :class:`AdminUserStore` loads it).  Read paths
    test an event's sender against it: no query, and nothing to do while it is empty."""
    got = _ERASED.get(db)
    if got is None:
        got = _ERASED[db] = set()
    return got


class UserPolicy:
    """Who is shadow-banned, locked or erased, and the message rate-limit overrides, in
    memory."""

    #: Synapse's wait before answering a shadow-banned request (seconds, drawn uniformly)
    SHADOW_BAN_DELAY = (1.0, 10.0)

    def __init__(self) -> None:
        self.shadow_banned: set[str] = set()
        self.locked: set[str] = set()
        self.erased: set[str] = set()
        self.overrides: dict[str, RateLimit] = {}
        #: tests set it to ~0 (``(0, 0)`` answers at once)
        self.shadow_ban_delay: tuple[float, float] = self.SHADOW_BAN_DELAY

    def is_shadow_banned(self, user_id: str) -> bool:
        return user_id in self.shadow_banned

    def shadow_ban_wait(self) -> None:
        """Wait as Synapse does before answering a shadow-banned send, invite, typing or
        createRoom with invites (1–10 s at random), so a spammer cannot tell from the
        timing that nothing happened.  A gevent sleep: only this request's greenlet waits."""
        lo, hi = self.shadow_ban_delay
        if hi > 0:
            gevent.sleep(random.uniform(lo, hi))

    def message_limit(self, user_id: str, default: RateLimit) -> RateLimit:
        """The rc_message limit for the user: its override or ``default``.  As in Synapse, an
        override of 0 messages per second means no limit at all (whatever the burst)."""
        got = self.overrides.get(user_id)
        if got is None:
            return default
        return got if got.per_second > 0 else RateLimit(0.0, 0.0)


class AdminUserStore:
    def __init__(self, db: Database, tokens: TokenCache) -> None:
        self.db = db
        self.tokens = tokens
        self.policy = UserPolicy()
        self.policy.erased = erased_users(db)   # one set, shared with the read paths
        self.load_policy()

    def load_policy(self) -> None:
        def _q(txn: Txn) -> tuple[list[tuple], list[tuple]]:
            return (txn.query("SELECT name, shadow_banned, locked, erased FROM users"
                              " WHERE shadow_banned = 1 OR locked = 1 OR erased = 1"),
                    txn.query("SELECT user_id, messages_per_second, burst_count"
                              " FROM ratelimit_override"))

        flags, overrides = self.db.run("load_user_policy", _q)
        p = self.policy
        p.shadow_banned = {r[0] for r in flags if r[1]}
        p.locked = {r[0] for r in flags if r[2]}
        p.erased.clear()
        p.erased.update(r[0] for r in flags if r[3])
        p.overrides = {r[0]: RateLimit(float(r[1]), float(r[2])) for r in overrides}

    # -- listing and records -------------------------------------------------------------
    def list_users(self, start: int, limit: int, f: UserFilter, order_by: str = "name",
                   backwards: bool = False) -> tuple[list[dict[str, Any]], int]:
        """One page of users (``start`` rows skipped) and the number matching ``f``."""
        where, args = _where(f)
        col, way = ORDER_COLUMNS[order_by], "DESC" if backwards else "ASC"
        # NULLs after values going up, before them going down, on both engines
        order = f"({col} IS NULL) {way}, {col} {way}, u.name ASC"

        def _q(txn: Txn) -> tuple[list[dict[str, Any]], int]:
            total = txn.query_value("SELECT COUNT(*)" + _LIST_FROM + where, args, default=0)
            rows = txn.query_dicts(f"SELECT {_LIST_COLUMNS}{_LIST_FROM}{where} ORDER BY"
                                   f" {order} LIMIT ? OFFSET ?", [*args, limit, start])
            return [_user_row(r) for r in rows], int(total)

        return self.db.run("admin_list_users", _q)

    def user_record(self, user_id: str) -> dict[str, Any] | None:
        """The user's row as the admin API shows it, plus ``external_ids``; None if unknown."""
        def _q(txn: Txn) -> dict[str, Any] | None:
            rows = txn.query_dicts(f"SELECT {_LIST_COLUMNS}{_LIST_FROM} WHERE u.name = ?",
                                   (user_id,))
            if not rows:
                return None
            out = _user_row(rows[0])
            out["external_ids"] = [{"auth_provider": a, "external_id": e} for a, e in txn.query(
                "SELECT auth_provider, external_id FROM user_external_ids WHERE user_id = ?"
                " ORDER BY auth_provider, external_id", (user_id,))]
            return out

        return self.db.run("admin_user_record", _q)

    def joined_rooms(self, user_id: str) -> list[str]:
        return self.db.run("admin_joined_rooms", lambda t: [r[0] for r in t.query(
            "SELECT room_id FROM current_state WHERE type = 'm.room.member'"
            " AND state_key = ? AND membership = 'join' ORDER BY room_id", (user_id,))])

    def rooms_to_leave(self, user_id: str) -> list[str]:
        """Rooms held here where the user is joined, invited or knocking."""
        return self.db.run("admin_rooms_to_leave", lambda t: [r[0] for r in t.query(
            "SELECT room_id FROM current_state WHERE type = 'm.room.member'"
            " AND state_key = ? AND membership IN ('join', 'invite', 'knock')"
            " ORDER BY room_id", (user_id,))])

    # -- devices -------------------------------------------------------------------------
    def devices(self, user_id: str, device_id: str | None = None) -> list[dict[str, Any]]:
        """The user's devices (or the one) as the admin API shows them."""
        sql = ("SELECT device_id, display_name, last_seen_ip, last_seen_ts,"
               " last_seen_user_agent, user_id FROM devices WHERE user_id = ?")
        args: tuple[Any, ...] = (user_id,)
        if device_id is not None:
            sql, args = sql + " AND device_id = ?", (user_id, device_id)
        return self.db.run("admin_devices", lambda t: t.query_dicts(
            sql + " ORDER BY device_id", args))

    def add_device(self, user_id: str, device_id: str) -> None:
        """Create the device (no token) unless the user has it."""
        self.db.run("admin_add_device", lambda t: t.execute(
            "INSERT INTO devices (user_id, device_id, created_ts) VALUES (?, ?, ?)"
            " ON CONFLICT (user_id, device_id) DO NOTHING", (user_id, device_id, now_ms())),
            write=True)

    # -- flags ---------------------------------------------------------------------------
    def set_flags(self, user_id: str, **flags: Any) -> None:
        """Set any of ``admin``, ``user_type``, ``shadow_banned``, ``locked``, ``erased``,
        ``deactivated`` on the user (cached tokens and the policy follow after commit)."""
        allowed = ("admin", "user_type", "shadow_banned", "locked", "erased", "deactivated")
        cols = [k for k in flags if k in allowed]
        if not cols:
            return
        values = [v if k == "user_type" else int(bool(v)) for k, v in
                  ((k, flags[k]) for k in cols)]

        def _t(txn: Txn) -> None:
            txn.execute(f"UPDATE users SET {', '.join(f'{c} = ?' for c in cols)}"
                        " WHERE name = ?", (*values, user_id))
            txn.call_after_commit(lambda: self._after_flags(user_id, flags))

        self.db.run("admin_set_flags", _t, write=True)

    def _after_flags(self, user_id: str, flags: dict[str, Any]) -> None:
        self.tokens.drop_user(user_id)   # TokenInfo holds admin / deactivated
        for name, members in (("shadow_banned", self.policy.shadow_banned),
                              ("locked", self.policy.locked), ("erased", self.policy.erased)):
            if name in flags:
                (members.add if flags[name] else members.discard)(user_id)

    # -- rate-limit overrides ------------------------------------------------------------
    def get_override(self, user_id: str) -> tuple[int, int] | None:
        r = self.db.run("get_ratelimit_override", lambda t: t.query_one(
            "SELECT messages_per_second, burst_count FROM ratelimit_override"
            " WHERE user_id = ?", (user_id,)))
        return (int(r[0]), int(r[1])) if r else None

    def set_override(self, user_id: str, per_second: int, burst: int) -> None:
        def _t(txn: Txn) -> None:
            txn.execute("INSERT INTO ratelimit_override (user_id, messages_per_second,"
                        " burst_count) VALUES (?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET"
                        " messages_per_second = excluded.messages_per_second,"
                        " burst_count = excluded.burst_count", (user_id, per_second, burst))
            txn.call_after_commit(lambda: self.policy.overrides.__setitem__(
                user_id, RateLimit(float(per_second), float(burst))))

        self.db.run("set_ratelimit_override", _t, write=True)

    def delete_override(self, user_id: str) -> None:
        def _t(txn: Txn) -> None:
            txn.execute("DELETE FROM ratelimit_override WHERE user_id = ?", (user_id,))
            txn.call_after_commit(lambda: self.policy.overrides.pop(user_id, None))

        self.db.run("delete_ratelimit_override", _t, write=True)

    # -- external ids --------------------------------------------------------------------
    def external_id_owner(self, provider: str, external_id: str) -> str | None:
        return self.db.run("external_id_owner", lambda t: t.query_value(
            "SELECT user_id FROM user_external_ids WHERE auth_provider = ?"
            " AND external_id = ?", (provider, external_id)))

    def replace_external_ids(self, user_id: str, ids: Sequence[tuple[str, str]]) -> bool:
        """Make ``ids`` the user's external ids; False (nothing changed) if another user
        has one of them."""
        def _t(txn: Txn) -> bool:
            for provider, ext in ids:
                owner = txn.query_value("SELECT user_id FROM user_external_ids WHERE"
                                        " auth_provider = ? AND external_id = ?",
                                        (provider, ext))
                if owner is not None and owner != user_id:
                    return False
            txn.execute("DELETE FROM user_external_ids WHERE user_id = ?", (user_id,))
            for provider, ext in dict.fromkeys(ids):
                txn.execute("INSERT INTO user_external_ids (auth_provider, external_id,"
                            " user_id) VALUES (?, ?, ?)", (provider, ext, user_id))
            return True

        return self.db.run("replace_external_ids", _t, write=True)

    # -- login as a user -----------------------------------------------------------------
    def puppet_token(self, user_id: str, admin: str, valid_until_ms: int | None) -> str:
        """An access token of ``user_id`` with no device (it shows in no device list),
        made by ``admin``; it stops working at ``valid_until_ms`` (never if None)."""
        token = new_token("atr")
        self.db.run("puppet_token", lambda t: t.execute(
            "INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts, expires_ts,"
            " puppeted_by) VALUES (?, ?, NULL, ?, ?, ?)",
            (hash_token(token), user_id, now_ms(), valid_until_ms, admin)), write=True)
        return token

    # -- leaving rooms after deactivation ------------------------------------------------
    @staticmethod
    def queue_parting(txn: Txn, user_id: str) -> None:
        """AccountStore.on_user_deactivated: the user's rooms are to be left."""
        txn.execute("INSERT INTO users_pending_parting (user_id, queued_ts) VALUES (?, ?)"
                    " ON CONFLICT (user_id) DO NOTHING", (user_id, now_ms()))

    def pending_parting(self) -> list[str]:
        return self.db.run("pending_parting", lambda t: [r[0] for r in t.query(
            "SELECT user_id FROM users_pending_parting ORDER BY queued_ts, user_id")])

    def parting_done(self, user_id: str) -> None:
        self.db.run("parting_done", lambda t: t.execute(
            "DELETE FROM users_pending_parting WHERE user_id = ?", (user_id,)), write=True)

    # -- registration tokens -------------------------------------------------------------
    def registration_tokens(self, valid: bool | None) -> list[dict[str, Any]]:
        """All tokens, or only the usable (``valid``) or used-up / expired ones."""
        usable = ("(uses_allowed IS NULL OR pending + completed < uses_allowed)"
                  " AND (expiry_time IS NULL OR expiry_time > ?)")
        where, args = "", []
        if valid is not None:
            where, args = (f" WHERE {usable}" if valid else f" WHERE NOT ({usable})"), [now_ms()]
        return self.db.run("admin_registration_tokens", lambda t: t.query_dicts(
            "SELECT token, uses_allowed, pending, completed, expiry_time"
            f" FROM registration_tokens{where} ORDER BY token", args))

    def registration_token(self, token: str) -> dict[str, Any] | None:
        rows = self.db.run("admin_registration_token", lambda t: t.query_dicts(
            "SELECT token, uses_allowed, pending, completed, expiry_time"
            " FROM registration_tokens WHERE token = ?", (token,)))
        return rows[0] if rows else None

    def update_registration_token(self, token: str,
                                  changes: dict[str, int | None]) -> dict[str, Any] | None:
        """Set ``uses_allowed`` and/or ``expiry_time``; the token after, None if unknown."""
        cols = [k for k in ("uses_allowed", "expiry_time") if k in changes]

        def _t(txn: Txn) -> dict[str, Any] | None:
            if cols:
                txn.execute(f"UPDATE registration_tokens SET"
                            f" {', '.join(f'{c} = ?' for c in cols)} WHERE token = ?",
                            (*(changes[c] for c in cols), token))
            rows = txn.query_dicts("SELECT token, uses_allowed, pending, completed,"
                                   " expiry_time FROM registration_tokens WHERE token = ?",
                                   (token,))
            return rows[0] if rows else None

        return self.db.run("update_registration_token", _t, write=True)

    def delete_registration_token(self, token: str) -> bool:
        return self.db.run("delete_registration_token", lambda t: t.execute(
            "DELETE FROM registration_tokens WHERE token = ?", (token,)), write=True) > 0
