"""Device keys, one-time keys and fallback keys (tables in ``schema/050_e2e.sql``), and the
read side of /keys/query (device keys plus cross-signing keys and their signatures).

Spec: client-server-api modules/end_to_end_encryption.md, "Uploading keys", "Claiming
one-time keys", "Querying keys".  Every method is one transaction.

Claiming is atomic on both engines without a lock of our own: each one-time key leaves the
table through ``DELETE … WHERE key_id = (SELECT … LIMIT 1) RETURNING``, and a key is only
handed out if that statement deleted it.  On SQLite write transactions are serialised.  On
PostgreSQL (READ COMMITTED) the sub-select takes ``FOR UPDATE SKIP LOCKED``, so concurrent
claimers pick different rows and never wait for each other's one-time keys (a claim of many
devices waiting on rows another claim holds, while holding rows that one wants, would
deadlock).  Rows another claim holds are being deleted, so a device whose remaining keys are
all held elsewhere has none to give and its fallback key is used.  The only row locks a
claim waits for are fallback keys, taken in one global (sorted) order.  A key is therefore
handed out at most once.

Module-level :func:`one_time_keys_count` and :func:`unused_fallback_key_types` are what
/sync reads (web/sync.py).
"""
from __future__ import annotations

import json
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable

from protocol.e2e_keys import USER_SIGNING, MASTER, same_signed_content, split_key_id
from store.database import POSTGRES, Database, Txn

_CHUNK = 200


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def now_ms() -> int:
    return int(time.time() * 1000)


class KeyConflict(Exception):
    """An upload tried to replace a key the device already published with a different one."""


@dataclass
class UploadResult:
    counts: dict[str, int]
    device_keys_changed: bool = False


@dataclass
class QueryResult:
    device_keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    master_keys: dict[str, Any] = field(default_factory=dict)
    self_signing_keys: dict[str, Any] = field(default_factory=dict)
    user_signing_keys: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- /sync readers

class _KeyCountCache:
    """(user, device) → (one-time key counts, unused fallback key types) of one database,
    so a /sync of an idle device reads no table.  Every write of these tables through this
    module drops the device's entry after its commit (``_forget``); a fill that raced such
    a drop (read before the commit, stored after it) is not kept (a version per device)."""

    MAX = 100_000

    def __init__(self) -> None:
        self.entries: OrderedDict[tuple[str, str], tuple[dict[str, int], list[str]]] = \
            OrderedDict()
        self.versions: dict[tuple[str, str], int] = {}

    def get(self, db: Database, user_id: str, device_id: str
            ) -> tuple[dict[str, int], list[str]]:
        key = (user_id, device_id)
        hit = self.entries.get(key)
        if hit is not None:
            self.entries.move_to_end(key)
            return hit
        version = self.versions.get(key, 0)
        got = db.run("otk_counts", _counts_and_fallbacks, user_id, device_id)
        if self.versions.get(key, 0) == version:
            self.entries[key] = got
            while len(self.entries) > self.MAX:
                self.entries.popitem(last=False)
        return got

    def forget(self, keys: Iterable[tuple[str, str]]) -> None:
        for key in keys:
            self.versions[key] = self.versions.get(key, 0) + 1
            self.entries.pop(key, None)
        if len(self.versions) > 4 * self.MAX:
            self.versions.clear()  # old versions only matter while a fill is in flight

    def forget_user(self, user_id: str) -> None:
        self.forget([k for k in list(self.entries) if k[0] == user_id])


_key_caches: "weakref.WeakKeyDictionary[Database, _KeyCountCache]" = \
    weakref.WeakKeyDictionary()


def _cache(db: Database) -> _KeyCountCache:
    cache = _key_caches.get(db)
    if cache is None:
        cache = _key_caches[db] = _KeyCountCache()
    return cache


def _forget(db: Database, keys: Iterable[tuple[str, str]]) -> None:
    cache = _key_caches.get(db)
    if cache is not None:
        cache.forget(keys)


def _forget_everywhere(user_id: str, device_ids: list[str] | None) -> None:
    """Txn hooks do not know their database: drop the device(s) from every cache."""
    for cache in list(_key_caches.values()):
        if device_ids is None:
            cache.forget_user(user_id)
        else:
            cache.forget((user_id, d) for d in device_ids)


def _counts(txn: Txn, user_id: str, device_id: str) -> dict[str, int]:
    counts = {"signed_curve25519": 0}  # always present, as clients expect
    for alg, n in txn.query("SELECT algorithm, COUNT(*) FROM e2e_one_time_keys WHERE"
                            " user_id = ? AND device_id = ? GROUP BY algorithm",
                            (user_id, device_id)):
        counts[alg] = int(n)
    return counts


def _counts_and_fallbacks(txn: Txn, user_id: str, device_id: str
                          ) -> tuple[dict[str, int], list[str]]:
    return _counts(txn, user_id, device_id), [r[0] for r in txn.query(
        "SELECT algorithm FROM e2e_fallback_keys WHERE user_id = ? AND device_id = ?"
        " AND used = 0 ORDER BY algorithm", (user_id, device_id))]


def one_time_keys_count(db: Database, user_id: str, device_id: str) -> dict[str, int]:
    """Unclaimed one-time keys of a device by algorithm (``device_one_time_keys_count``).
    Served from memory after the first read (see :class:`_KeyCountCache`)."""
    return dict(_cache(db).get(db, user_id, device_id)[0])


def unused_fallback_key_types(db: Database, user_id: str, device_id: str) -> list[str]:
    """Algorithms whose fallback key has not been claimed yet
    (``device_unused_fallback_key_types``); cached with the counts."""
    return list(_cache(db).get(db, user_id, device_id)[1])


# --------------------------------------------------------------------------- the store

class E2EKeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- upload ---------------------------------------------------------------------------
    def upload(self, user_id: str, device_id: str, device_keys: dict[str, Any] | None,
               one_time_keys: dict[str, Any], fallback_keys: dict[str, Any]) -> UploadResult:
        """Store already-validated keys of one device; raises :class:`KeyConflict` (and
        stores nothing) if a device key or one-time key id is re-used for other content."""
        def _t(txn: Txn) -> UploadResult:
            changed = False
            if device_keys is not None:
                changed = _put_device_keys(txn, user_id, device_id, device_keys)
            if one_time_keys:
                _put_one_time_keys(txn, user_id, device_id, one_time_keys)
            for kid, key in fallback_keys.items():
                _put_fallback_key(txn, user_id, device_id, kid, key)
            return UploadResult(_counts(txn, user_id, device_id), changed)

        try:
            return self.db.run("keys_upload", _t, write=True)
        finally:  # also on a conflict: the cache never outlives a write attempt
            _forget(self.db, [(user_id, device_id)])

    def device_keys_of(self, user_id: str, device_ids: Iterable[str] | None = None
                       ) -> dict[str, dict[str, Any]]:
        """The stored device key objects of a user (signatures as uploaded)."""
        rows = self.db.run("device_keys_of", lambda t: t.query(
            "SELECT device_id, key_json FROM e2e_device_keys WHERE user_id = ?", (user_id,)))
        wanted = set(device_ids) if device_ids is not None else None
        return {d: json.loads(j) for d, j in rows if wanted is None or d in wanted}

    # -- claim ----------------------------------------------------------------------------
    def claim(self, wanted: list[tuple[str, str, str]]
              ) -> dict[str, dict[str, dict[str, Any]]]:
        """Take one key per ``(user, device, algorithm)``: a one-time key (deleted), else the
        fallback key (marked used).  ``{user: {device: {"<alg>:<id>": key}}}``."""
        ordered = sorted(set(wanted))  # row locks (fallback keys) in one global order

        def _t(txn: Txn) -> dict[str, dict[str, dict[str, Any]]]:
            taken = _take_many(txn, ordered)
            out: dict[str, dict[str, dict[str, Any]]] = {}
            for user_id, device_id, alg in ordered:
                got = taken.get((user_id, device_id, alg)) \
                    or _take_one_time_key(txn, user_id, device_id, alg) \
                    or _use_fallback_key(txn, user_id, device_id, alg)
                if got is not None:
                    out.setdefault(user_id, {}).setdefault(device_id, {})[got[0]] = got[1]
            return out

        if not wanted:
            return {}
        try:
            return self.db.run("keys_claim", _t, write=True)
        finally:
            _forget(self.db, [(u, d) for u, d, _ in ordered])

    # -- query ----------------------------------------------------------------------------
    def query(self, requester: str, wanted: dict[str, list[str]]) -> QueryResult:
        """Device keys (with ``unsigned.device_display_name``) and cross-signing keys of
        local users, each merged with the signatures others uploaded for it.  A user's
        user-signing key is only for that user, and signatures made with a user-signing key
        are only shown to the user who made them."""
        users = sorted(wanted)

        def _q(txn: Txn) -> QueryResult:
            res = QueryResult()
            devices = _in_chunks(txn, users, (
                "SELECT k.user_id, k.device_id, k.key_json, d.display_name"
                " FROM e2e_device_keys k LEFT JOIN devices d"
                " ON d.user_id = k.user_id AND d.device_id = k.device_id"
                " WHERE k.user_id IN ({marks})"))
            xsign = _in_chunks(txn, users, (
                "SELECT user_id, key_type, public_key, key_json FROM e2e_cross_signing_keys"
                " WHERE user_id IN ({marks})"))
            sigs = _in_chunks(txn, users, (
                "SELECT target_user_id, target_key_id, signer_user_id, signer_key_id,"
                " signature FROM e2e_signatures WHERE target_user_id IN ({marks})"))
            by_target: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
            for tu, tk, su, sk, sig in sigs:
                by_target.setdefault((tu, tk), []).append((su, sk, sig))
            for u in users:
                res.device_keys[u] = {}
            for user_id, device_id, key_json, name in devices:
                only = wanted.get(user_id)
                if only and device_id not in only:
                    continue
                obj = json.loads(key_json)
                _merge(obj, by_target.get((user_id, device_id), ()), requester, user_id)
                unsigned = dict(obj.get("unsigned") or {})
                if name is not None:
                    unsigned["device_display_name"] = name
                obj["unsigned"] = unsigned
                res.device_keys[user_id][device_id] = obj
            for user_id, key_type, pub, key_json in xsign:
                if key_type == USER_SIGNING and user_id != requester:
                    continue
                obj = json.loads(key_json)
                _merge(obj, by_target.get((user_id, pub), ()), requester, user_id)
                getattr(res, f"{key_type}_keys")[user_id] = obj
            return res

        return self.db.run("keys_query", _q)

    # -- hooks (AccountStore, inside its transaction) -----------------------------------
    @staticmethod
    def delete_for_devices(txn: Txn, user_id: str, device_ids: list[str]) -> None:
        """AccountStore.on_devices_deleted: a deleted device's keys go with it."""
        txn.call_after_commit(lambda: _forget_everywhere(user_id, list(device_ids)))
        for d in device_ids:
            for table in ("e2e_device_keys", "e2e_one_time_keys", "e2e_fallback_keys"):
                txn.execute(f"DELETE FROM {table} WHERE user_id = ? AND device_id = ?",
                            (user_id, d))
            txn.execute("DELETE FROM e2e_signatures WHERE target_user_id = ?"
                        " AND target_key_id = ?", (user_id, d))

    @staticmethod
    def delete_for_user(txn: Txn, user_id: str) -> None:
        """AccountStore.on_user_deactivated: cross-signing keys, signatures and backups."""
        txn.call_after_commit(lambda: _forget_everywhere(user_id, None))
        txn.execute("DELETE FROM e2e_cross_signing_keys WHERE user_id = ?", (user_id,))
        txn.execute("DELETE FROM e2e_signatures WHERE target_user_id = ? OR"
                    " signer_user_id = ?", (user_id, user_id))
        txn.execute("DELETE FROM e2e_room_keys WHERE user_id = ?", (user_id,))
        txn.execute("UPDATE e2e_room_keys_versions SET deleted = 1 WHERE user_id = ?",
                    (user_id,))


# --------------------------------------------------------------------------- helpers

def _in_chunks(txn: Txn, values: list[str], sql: str) -> list[tuple]:
    out: list[tuple] = []
    for i in range(0, len(values), _CHUNK):
        chunk = values[i:i + _CHUNK]
        out.extend(txn.query(sql.format(marks=",".join("?" * len(chunk))), chunk))
    return out


def _merge(obj: dict[str, Any], extra: Iterable[tuple[str, str, str]], requester: str,
           owner: str) -> None:
    """Add uploaded signatures to a key object; signatures by another user (made with
    their user-signing key) are visible to that signer only."""
    sigs = {u: dict(v) for u, v in (obj.get("signatures") or {}).items()
            if isinstance(v, dict)}
    for signer, key_id, sig in extra:
        if signer != owner and signer != requester:
            continue
        sigs.setdefault(signer, {})[key_id] = sig
    obj["signatures"] = sigs


def _put_device_keys(txn: Txn, user_id: str, device_id: str, keys: dict[str, Any]) -> bool:
    """Insert or confirm a device's keys; True if what others see changed."""
    row = txn.query_one("SELECT key_json FROM e2e_device_keys WHERE user_id = ?"
                        " AND device_id = ?", (user_id, device_id))
    new = dumps(keys)
    if row is None:
        txn.execute("INSERT INTO e2e_device_keys (user_id, device_id, key_json, ts)"
                    " VALUES (?, ?, ?, ?)", (user_id, device_id, new, now_ms()))
        return True
    old = json.loads(row[0])
    if old.get("keys") != keys.get("keys"):
        raise KeyConflict(f"device {device_id} already has different identity keys")
    if row[0] == new:
        return False
    if not same_signed_content(old, keys):
        raise KeyConflict(f"device {device_id} already published different device keys")
    # the same keys with other signatures (e.g. added by the device itself): keep the newest
    txn.execute("UPDATE e2e_device_keys SET key_json = ?, ts = ? WHERE user_id = ?"
                " AND device_id = ?", (new, now_ms(), user_id, device_id))
    return True


def _put_one_time_keys(txn: Txn, user_id: str, device_id: str, keys: dict[str, Any]) -> None:
    rows = [(split_key_id(kid), dumps(v)) for kid, v in keys.items()]
    key_ids = [ident for (_, ident), _ in rows]
    existing: dict[tuple[str, str], str] = {}
    for i in range(0, len(key_ids), _CHUNK):
        chunk = key_ids[i:i + _CHUNK]
        for alg, kid, j in txn.query(
                "SELECT algorithm, key_id, key_json FROM e2e_one_time_keys WHERE user_id = ?"
                f" AND device_id = ? AND key_id IN ({','.join('?' * len(chunk))})",
                [user_id, device_id, *chunk]):
            existing[(alg, kid)] = j
    fresh = []
    ts = now_ms()
    for (alg, ident), j in rows:
        old = existing.get((alg, ident))
        if old is None:
            fresh.append((user_id, device_id, alg, ident, j, ts))
        elif old != j:
            raise KeyConflict(f"one-time key {alg}:{ident} already exists with other content")
    txn.executemany("INSERT INTO e2e_one_time_keys (user_id, device_id, algorithm, key_id,"
                    " key_json, ts) VALUES (?, ?, ?, ?, ?, ?)", fresh)


def _put_fallback_key(txn: Txn, user_id: str, device_id: str, kid: str, key: Any) -> None:
    """A new fallback key replaces the algorithm's old one and is unused; re-uploading the
    same key keeps its used flag."""
    alg, ident = split_key_id(kid)
    j = dumps(key)
    row = txn.query_one("SELECT key_id, key_json FROM e2e_fallback_keys WHERE user_id = ?"
                        " AND device_id = ? AND algorithm = ?", (user_id, device_id, alg))
    if row is not None and row[0] == ident and row[1] == j:
        return
    if row is not None:
        txn.execute("UPDATE e2e_fallback_keys SET key_id = ?, key_json = ?, used = 0"
                    " WHERE user_id = ? AND device_id = ? AND algorithm = ?",
                    (ident, j, user_id, device_id, alg))
    else:
        txn.execute("INSERT INTO e2e_fallback_keys (user_id, device_id, algorithm, key_id,"
                    " key_json, used) VALUES (?, ?, ?, ?, ?, 0)",
                    (user_id, device_id, alg, ident, j))


def _take_many(txn: Txn, wanted: list[tuple[str, str, str]]
               ) -> dict[tuple[str, str, str], tuple[str, Any]]:
    """The fast path: one statement deletes the first free key of every wanted device.  A
    device whose key a concurrent claim took meanwhile is simply missing from the answer
    (the statement deleted nothing for it) and goes through :func:`_take_one_time_key`."""
    out: dict[tuple[str, str, str], tuple[str, Any]] = {}
    for i in range(0, len(wanted), _CHUNK):
        chunk = wanted[i:i + _CHUNK]
        values = ",".join(["(?, ?, ?)"] * len(chunk))
        rows = txn.query(
            "DELETE FROM e2e_one_time_keys WHERE (user_id, device_id, algorithm, key_id) IN"
            " (SELECT v.column1, v.column2, v.column3, (SELECT k.key_id FROM e2e_one_time_keys k"
            " WHERE k.user_id = v.column1 AND k.device_id = v.column2 AND k.algorithm ="
            f" v.column3 ORDER BY k.key_id LIMIT 1{_skip_locked(txn)}) FROM (VALUES {values}) AS v)"
            " RETURNING user_id, device_id, algorithm, key_id, key_json",
            [v for t in chunk for v in t])
        for u, d, a, kid, j in rows:
            out[(u, d, a)] = (f"{a}:{kid}", json.loads(j))
    return out


def _take_one_time_key(txn: Txn, user_id: str, device_id: str, alg: str
                       ) -> tuple[str, Any] | None:
    """One device's first free one-time key.  On PostgreSQL rows that concurrent claims
    hold are skipped: they are being deleted, so when only those are left the device has
    no key to give (the caller then uses the fallback key)."""
    where = "user_id = ? AND device_id = ? AND algorithm = ?"
    row = txn.query_one(
        f"DELETE FROM e2e_one_time_keys WHERE {where} AND key_id = (SELECT key_id FROM"
        f" e2e_one_time_keys WHERE {where} ORDER BY key_id LIMIT 1{_skip_locked(txn)})"
        " RETURNING key_id, key_json", (user_id, device_id, alg) * 2)
    return (f"{alg}:{row[0]}", json.loads(row[1])) if row is not None else None


def _skip_locked(txn: Txn) -> str:
    # PostgreSQL: concurrent claimers pick different rows instead of queueing behind one
    return " FOR UPDATE SKIP LOCKED" if txn.engine == POSTGRES else ""


def _use_fallback_key(txn: Txn, user_id: str, device_id: str, alg: str
                      ) -> tuple[str, Any] | None:
    row = txn.query_one("SELECT key_id, key_json, used FROM e2e_fallback_keys WHERE"
                        " user_id = ? AND device_id = ? AND algorithm = ?",
                        (user_id, device_id, alg))
    if row is None:
        return None
    if not row[2]:
        txn.execute("UPDATE e2e_fallback_keys SET used = 1 WHERE user_id = ? AND"
                    " device_id = ? AND algorithm = ?", (user_id, device_id, alg))
    return f"{alg}:{row[0]}", json.loads(row[1])


__all__ = ["E2EKeyStore", "KeyConflict", "UploadResult", "QueryResult", "MASTER",
           "one_time_keys_count", "unused_fallback_key_types"]
