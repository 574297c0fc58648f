"""The cached device lists of other servers' users (server-server-api.md "Device
Management"; tables ``remote_device_lists``, ``remote_devices``, ``remote_cross_signing_keys``
of migration 062).

A remote user is *tracked* once a full list has been stored (``set_devices``: a resync with
``GET /_matrix/federation/v1/user/devices/{userId}``) and then kept current by
``m.device_list_update`` / ``m.signing_key_update`` EDUs (``apply_update``,
``set_cross_signing``).  When an update is missed the list is marked *stale*: readers then get
None and must ask the user's server, as for an untracked user.  The rules that decide when to
apply and when to resync are in ``federation/edus.py``; this module only stores.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Iterable

from store.database import Database, Txn

CROSS_SIGNING_TYPES = ("master", "self_signing")
_CHUNK = 200


@dataclass(frozen=True)
class ListState:
    """Where a tracked user's list stands: the last applied stream_id and staleness."""
    stream_id: str | None
    stale: bool


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _now() -> int:
    return int(time.time() * 1000)


class RemoteDeviceStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- reading --------------------------------------------------------------------------
    def state(self, user_id: str) -> ListState | None:
        """None when the user is not tracked."""
        row = self.db.run("remote_device_list_state", lambda t: t.query_one(
            "SELECT stream_id, stale FROM remote_device_lists WHERE user_id = ?", (user_id,)))
        return None if row is None else ListState(row[0], bool(row[1]))

    def is_tracked(self, user_id: str) -> bool:
        """Tracked and current (not stale): the cache can answer for this user."""
        st = self.state(user_id)
        return st is not None and not st.stale

    def get_devices(self, user_id: str) -> dict[str, dict[str, Any]] | None:
        """``{device_id: {"device_id", "device_display_name" (or None), "keys" (or None)}}``,
        or None when the user is not tracked or the list is stale."""
        def _q(txn: Txn) -> dict[str, dict[str, Any]] | None:
            st = txn.query_one("SELECT stale FROM remote_device_lists WHERE user_id = ?",
                               (user_id,))
            if st is None or st[0]:
                return None
            return {d: {"device_id": d, "device_display_name": name,
                        "keys": json.loads(k) if k is not None else None}
                    for d, name, k in txn.query(
                        "SELECT device_id, display_name, keys_json FROM remote_devices"
                        " WHERE user_id = ? ORDER BY device_id", (user_id,))}

        return self.db.run("remote_devices_of", _q)

    def cross_signing_keys(self, user_id: str) -> dict[str, dict[str, Any]]:
        """``{"master": obj, "self_signing": obj}`` (whichever are stored)."""
        return {kt: json.loads(j) for kt, j in self.db.run(
            "remote_cross_signing_of", lambda t: t.query(
                "SELECT key_type, key_json FROM remote_cross_signing_keys WHERE user_id = ?",
                (user_id,)))}

    def query_keys(self, wanted: dict[str, Iterable[str]]) -> dict[str, Any]:
        """The client API's ``POST /keys/query`` shapes for tracked remote users.

        ``wanted``: ``{user_id: [device_id, …]}`` (empty = all devices).  Returns
        ``{"device_keys": {user: {device: keys}}, "master_keys": {user: obj},
        "self_signing_keys": {user: obj}, "missing": [users to ask their server about]}``;
        a user not tracked or stale is only listed in ``missing``.  Device keys carry
        ``unsigned.device_display_name`` when the device has a name; devices without keys
        are left out (as for local users)."""
        users = sorted(wanted)

        def _q(txn: Txn) -> dict[str, Any]:
            out: dict[str, Any] = {"device_keys": {}, "master_keys": {},
                                   "self_signing_keys": {}, "missing": []}
            current: set[str] = set()
            for i in range(0, len(users), _CHUNK):
                chunk = users[i:i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                current.update(u for u, stale in txn.query(
                    "SELECT user_id, stale FROM remote_device_lists"
                    f" WHERE user_id IN ({marks})", chunk) if not stale)
            for u in users:
                if u not in current:
                    out["missing"].append(u)
                    continue
                only = set(wanted[u] or ())
                devices: dict[str, Any] = {}
                for d, name, k in txn.query(
                        "SELECT device_id, display_name, keys_json FROM remote_devices"
                        " WHERE user_id = ? AND keys_json IS NOT NULL", (u,)):
                    if only and d not in only:
                        continue
                    keys = json.loads(k)
                    if name is not None:
                        keys["unsigned"] = dict(keys.get("unsigned") or {},
                                                device_display_name=name)
                    devices[d] = keys
                out["device_keys"][u] = devices
                for kt, j in txn.query("SELECT key_type, key_json FROM"
                                       " remote_cross_signing_keys WHERE user_id = ?", (u,)):
                    if kt in CROSS_SIGNING_TYPES:
                        out[f"{kt}_keys"][u] = json.loads(j)
            return out

        return self.db.run("remote_keys_query", _q)

    # -- writing --------------------------------------------------------------------------
    def set_devices(self, user_id: str, stream_id: Any, devices: list[dict[str, Any]],
                    master_key: dict[str, Any] | None = None,
                    self_signing_key: dict[str, Any] | None = None) -> None:
        """Replace the user's whole list (a resync answer: ``devices`` in the
        ``/user/devices`` shape ``{"device_id", "keys"?, "device_display_name"?}``); the
        list becomes tracked and current at ``stream_id``.  Cross-signing keys given
        replace the stored ones; None leaves them."""
        rows = []
        for d in devices:
            keys = d.get("keys")
            name = d.get("device_display_name")
            rows.append((user_id, d["device_id"], name if isinstance(name, str) else None,
                         _dumps(keys) if isinstance(keys, dict) and keys else None))

        def _t(txn: Txn) -> None:
            txn.execute("DELETE FROM remote_devices WHERE user_id = ?", (user_id,))
            if rows:
                txn.executemany("INSERT INTO remote_devices (user_id, device_id, display_name,"
                                " keys_json) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING", rows)
            _put_cross_signing(txn, user_id, {"master": master_key,
                                              "self_signing": self_signing_key})
            _set_state(txn, user_id, None if stream_id is None else str(stream_id), False)

        self.db.run("remote_devices_set", _t, write=True)

    def apply_update(self, user_id: str, device_id: str, stream_id: Any, *,
                     deleted: bool = False, keys: dict[str, Any] | None = None,
                     display_name: str | None = None) -> None:
        """One ``m.device_list_update`` on a tracked list: the device entry is replaced (or
        removed when ``deleted``) and the list moves to ``stream_id``."""
        def _t(txn: Txn) -> None:
            txn.execute("DELETE FROM remote_devices WHERE user_id = ? AND device_id = ?",
                        (user_id, device_id))
            if not deleted:
                txn.execute("INSERT INTO remote_devices (user_id, device_id, display_name,"
                            " keys_json) VALUES (?, ?, ?, ?)",
                            (user_id, device_id, display_name,
                             _dumps(keys) if isinstance(keys, dict) and keys else None))
            _set_state(txn, user_id, str(stream_id), False)

        self.db.run("remote_devices_update", _t, write=True)

    def set_cross_signing(self, user_id: str, master_key: dict[str, Any] | None = None,
                          self_signing_key: dict[str, Any] | None = None) -> None:
        """``m.signing_key_update``: the keys given replace the stored ones."""
        self.db.run("remote_cross_signing_set", lambda t: _put_cross_signing(
            t, user_id, {"master": master_key, "self_signing": self_signing_key}), write=True)

    def mark_stale(self, user_id: str) -> None:
        """An update was missed: readers get None until the next ``set_devices``."""
        def _t(txn: Txn) -> None:
            if txn.execute("UPDATE remote_device_lists SET stale = 1, updated_ts = ?"
                           " WHERE user_id = ?", (_now(), user_id)) == 0:
                txn.execute("INSERT INTO remote_device_lists (user_id, stream_id, stale,"
                            " updated_ts) VALUES (?, NULL, 1, ?)", (user_id, _now()))

        self.db.run("remote_devices_stale", _t, write=True)

    def stale_users(self, limit: int = 100) -> list[str]:
        """Users waiting for a resync (oldest first)."""
        return [r[0] for r in self.db.run("remote_devices_stale_users", lambda t: t.query(
            "SELECT user_id FROM remote_device_lists WHERE stale = 1 ORDER BY updated_ts"
            " LIMIT ?", (limit,)))]

    def forget(self, user_id: str) -> None:
        """Stop tracking (no room shared any more)."""
        def _t(txn: Txn) -> None:
            for table in ("remote_devices", "remote_cross_signing_keys", "remote_device_lists"):
                txn.execute(f"DELETE FROM {table} WHERE user_id = ?", (user_id,))

        self.db.run("remote_devices_forget", _t, write=True)


def _set_state(txn: Txn, user_id: str, stream_id: str | None, stale: bool) -> None:
    txn.execute("INSERT INTO remote_device_lists (user_id, stream_id, stale, updated_ts)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET"
                " stream_id = excluded.stream_id, stale = excluded.stale,"
                " updated_ts = excluded.updated_ts",
                (user_id, stream_id, 1 if stale else 0, _now()))


def _put_cross_signing(txn: Txn, user_id: str, keys: dict[str, dict[str, Any] | None]) -> None:
    for key_type, obj in keys.items():
        if not isinstance(obj, dict):
            continue
        txn.execute("INSERT INTO remote_cross_signing_keys (user_id, key_type, key_json)"
                    " VALUES (?, ?, ?) ON CONFLICT (user_id, key_type) DO UPDATE SET"
                    " key_json = excluded.key_json", (user_id, key_type, _dumps(obj)))
