"""Other servers' signing keys and the key responses they were published in (tables in
``schema/060_server_keys.sql``).

Spec: server-server-api.md "Retrieving server keys"; rooms v5+ "signing key validity period".
The keyring (``federation/keyring.py``) writes what it fetched and verified; the notary
(``federation/key_server.py``) serves the stored responses again.  Every method is one
transaction.

Merging a newly fetched key into what is known (:func:`merge_key`): the same verify key keeps
the greatest validity seen and the earliest ``expired_ts`` (a key once listed as expired stays
expired, so an old cached response from a notary cannot revive it); a different verify key
under the same key id replaces the row.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Iterable

from store.database import Database, Txn


@dataclass(frozen=True)
class StoredKey:
    key_id: str
    verify_key: str            # unpadded base64
    valid_until_ts: int        # effective (capped) validity of a current key
    expired_ts: int | None     # set for a key listed under old_verify_keys
    fetched_ts: int

    def usable_at(self, ts: int) -> bool:
        """Whether this key may verify a signature made at ``ts`` (ms)."""
        if self.expired_ts is not None:
            return ts < self.expired_ts
        return ts <= self.valid_until_ts


@dataclass(frozen=True)
class StoredResponse:
    server_name: str
    from_server: str
    valid_until_ts: int        # the response's own valid_until_ts
    response: dict[str, Any]   # the self-signed key response
    fetched_ts: int


def merge_key(old: StoredKey | None, new: StoredKey) -> StoredKey:
    """What to keep when ``new`` is learned about a key already known as ``old``."""
    if old is None or old.verify_key != new.verify_key:
        return new
    if old.expired_ts is None:
        expired = new.expired_ts
    elif new.expired_ts is None:
        expired = old.expired_ts
    else:
        expired = min(old.expired_ts, new.expired_ts)
    return replace(new, valid_until_ts=max(old.valid_until_ts, new.valid_until_ts),
                   expired_ts=expired)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _keys_of(txn: Txn, server_name: str) -> dict[str, StoredKey]:
    rows = txn.query("SELECT key_id, verify_key, valid_until_ts, expired_ts, fetched_ts"
                     " FROM server_keys WHERE server_name = ?", (server_name,))
    return {r[0]: StoredKey(r[0], r[1], int(r[2]), None if r[3] is None else int(r[3]),
                            int(r[4])) for r in rows}


class ServerKeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get_keys(self, server_name: str) -> dict[str, StoredKey]:
        """Every key known of ``server_name``, by key id."""
        return self.db.run("server_keys_get", _keys_of, server_name)

    def store_response(self, server_name: str, from_server: str, response: dict[str, Any],
                       valid_until_ts: int, keys: Iterable[StoredKey],
                       fetched_ts: int) -> dict[str, StoredKey]:
        """Record a verified key response of ``server_name`` obtained from ``from_server``
        and merge its keys; returns every key of the server as now stored."""
        keys = list(keys)
        text = _dumps(response)

        def _store(txn: Txn) -> dict[str, StoredKey]:
            known = _keys_of(txn, server_name)
            for k in keys:
                m = merge_key(known.get(k.key_id), k)
                if m == known.get(k.key_id):
                    continue
                txn.execute(
                    "INSERT INTO server_keys (server_name, key_id, verify_key, valid_until_ts,"
                    " expired_ts, fetched_ts) VALUES (?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (server_name, key_id) DO UPDATE SET"
                    " verify_key = excluded.verify_key,"
                    " valid_until_ts = excluded.valid_until_ts,"
                    " expired_ts = excluded.expired_ts, fetched_ts = excluded.fetched_ts",
                    (server_name, m.key_id, m.verify_key, m.valid_until_ts, m.expired_ts,
                     m.fetched_ts))
                known[m.key_id] = m
            txn.execute(
                "INSERT INTO server_key_responses (server_name, from_server, valid_until_ts,"
                " response_json, fetched_ts) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (server_name, from_server) DO UPDATE SET"
                " valid_until_ts = excluded.valid_until_ts,"
                " response_json = excluded.response_json, fetched_ts = excluded.fetched_ts",
                (server_name, from_server, valid_until_ts, text, fetched_ts))
            return known

        return self.db.run("server_keys_store", _store, write=True)

    def get_responses(self, server_name: str,
                      from_server: str | None = None) -> list[StoredResponse]:
        """The stored responses of ``server_name`` (only those from ``from_server`` if
        given), newest validity first."""

        def _get(txn: Txn) -> list[tuple]:
            sql = ("SELECT from_server, valid_until_ts, response_json, fetched_ts"
                   " FROM server_key_responses WHERE server_name = ?")
            args: tuple = (server_name,)
            if from_server is not None:
                sql += " AND from_server = ?"
                args += (from_server,)
            return txn.query(sql + " ORDER BY valid_until_ts DESC", args)

        return [StoredResponse(server_name, r[0], int(r[1]), json.loads(r[2]), int(r[3]))
                for r in self.db.run("server_key_responses_get", _get)]
