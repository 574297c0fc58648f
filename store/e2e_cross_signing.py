"""Cross-signing keys and uploaded signatures (``schema/050_e2e.sql``): what
``POST /keys/device_signing/upload`` and ``POST /keys/signatures/upload`` store.

Spec: client-server-api modules/end_to_end_encryption.md, "Cross-signing".  Which signature
may be uploaded for which key, and by whom:

- a user's own device, signed by the user's self-signing key;
- a user's own master key, signed by one of the user's devices;
- another user's master key, signed by the uploader's user-signing key.

Each is verified against the stored public key before it is stored (the checks are the pure
functions of ``protocol/e2e_keys.py``); the rest is reported in ``failures``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from protocol.e2e_keys import (MASTER, SELF_SIGNING, USER_SIGNING, InvalidKey,
                               cross_signing_public_key, same_signed_content, verify_signature)
from store.database import Database, Txn
from store.e2e_keys import dumps, now_ms

Signature = tuple[str, str, str, str, str]  # target user, target key id, signer, key id, sig


@dataclass
class SignatureCheck:
    """The outcome of checking one /keys/signatures/upload body."""

    rows: list[Signature] = field(default_factory=list)
    failures: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    changed_users: set[str] = field(default_factory=set)

    def fail(self, user_id: str, key_id: str, e: InvalidKey) -> None:
        self.failures.setdefault(user_id, {})[key_id] = {"errcode": e.errcode, "error": e.error}


class CrossSigningStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def keys_of(self, user_id: str) -> dict[str, dict[str, Any]]:
        """``{key_type: key object}`` of a user's stored cross-signing keys."""
        rows = self.db.run("cross_signing_keys_of", lambda t: t.query(
            "SELECT key_type, key_json FROM e2e_cross_signing_keys WHERE user_id = ?",
            (user_id,)))
        return {k: json.loads(j) for k, j in rows}

    def upload(self, user_id: str, keys: dict[str, dict[str, Any]], *,
               uia_session: str | None = None) -> None:
        """Store validated cross-signing keys (one transaction, which also ends the UIA
        session that allowed it)."""
        def _t(txn: Txn) -> None:
            for key_type, obj in keys.items():
                pub = cross_signing_public_key(obj, user_id, key_type)
                j = dumps(obj)
                if txn.execute("UPDATE e2e_cross_signing_keys SET public_key = ?, key_json = ?,"
                               " ts = ? WHERE user_id = ? AND key_type = ?",
                               (pub, j, now_ms(), user_id, key_type)) == 0:
                    txn.execute("INSERT INTO e2e_cross_signing_keys (user_id, key_type,"
                                " public_key, key_json, ts) VALUES (?, ?, ?, ?, ?)",
                                (user_id, key_type, pub, j, now_ms()))
            if uia_session is not None:  # the operation and the end of its session commit together
                txn.execute("DELETE FROM uia_sessions WHERE session_id = ?", (uia_session,))

        self.db.run("cross_signing_upload", _t, write=True)

    def check_signatures(self, signer: str, body: dict[str, Any]) -> SignatureCheck:
        """Verify every signature in a /keys/signatures/upload body against stored keys."""
        users = sorted({signer, *body})

        def _q(txn: Txn) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
            marks = ",".join("?" * len(users))
            xs: dict[str, dict[str, Any]] = {}
            for u, kt, j in txn.query("SELECT user_id, key_type, key_json FROM"
                                      f" e2e_cross_signing_keys WHERE user_id IN ({marks})",
                                      users):
                xs.setdefault(u, {})[kt] = json.loads(j)
            devs = {d: json.loads(j) for d, j in txn.query(
                "SELECT device_id, key_json FROM e2e_device_keys WHERE user_id = ?", (signer,))}
            return xs, devs

        xs, my_devices = self.db.run("signatures_lookup", _q)
        mine = xs.get(signer, {})
        out = SignatureCheck()
        for target, objs in body.items():
            if not isinstance(objs, dict):
                out.fail(target, "", InvalidKey("M_BAD_JSON", "expected an object of keys"))
                continue
            for key_id, obj in objs.items():
                try:
                    if not isinstance(obj, dict):
                        raise InvalidKey("M_BAD_JSON", "a signed key must be an object")
                    if target == signer:
                        rows = _own_key(signer, key_id, obj, mine, my_devices)
                    else:
                        rows = _other_master(signer, target, key_id, obj, mine,
                                             xs.get(target, {}))
                except InvalidKey as e:
                    out.fail(target, key_id, e)
                    continue
                out.rows.extend(rows)
                out.changed_users.add(target)
        return out

    def store_signatures(self, rows: list[Signature]) -> None:
        def _t(txn: Txn) -> None:
            for r in rows:
                if txn.execute("UPDATE e2e_signatures SET signature = ? WHERE target_user_id = ?"
                               " AND target_key_id = ? AND signer_user_id = ? AND"
                               " signer_key_id = ?", (r[4], r[0], r[1], r[2], r[3])) == 0:
                    txn.execute("INSERT INTO e2e_signatures (target_user_id, target_key_id,"
                                " signer_user_id, signer_key_id, signature)"
                                " VALUES (?, ?, ?, ?, ?)", r)

        if rows:
            self.db.run("store_signatures", _t, write=True)


# --------------------------------------------------------------------------- checks

def _pub(key: dict[str, Any] | None) -> str | None:
    if not key:
        return None
    (kid,) = key["keys"]
    return kid.split(":", 1)[1]


def _new_signatures(obj: dict[str, Any], signer: str) -> dict[str, str]:
    sigs = obj.get("signatures")
    mine = sigs.get(signer) if isinstance(sigs, dict) else None
    if not isinstance(mine, dict):
        raise InvalidKey("M_INVALID_SIGNATURE", f"no signature by {signer}")
    return {k: v for k, v in mine.items() if isinstance(k, str) and isinstance(v, str)}


def _own_key(signer: str, key_id: str, obj: dict[str, Any], mine: dict[str, dict[str, Any]],
             devices: dict[str, dict[str, Any]]) -> list[Signature]:
    master = mine.get(MASTER)
    if master is not None and key_id == _pub(master):
        # my master key, signed by my devices
        if not same_signed_content(obj, master):
            raise InvalidKey("M_INVALID_SIGNATURE", "the signed key is not the stored master key")
        rows = []
        for sig_kid, sig in _new_signatures(obj, signer).items():
            device_id = sig_kid.split(":", 1)[1] if sig_kid.startswith("ed25519:") else None
            dev = devices.get(device_id) if device_id else None
            if dev is None:
                continue  # e.g. the master key's own signature: nothing new to store
            verify_signature(obj, signer, sig_kid, dev["keys"][sig_kid])
            rows.append((signer, key_id, signer, sig_kid, sig))
        if not rows:
            raise InvalidKey("M_INVALID_SIGNATURE", "no signature by one of your devices")
        return rows
    device = devices.get(key_id)
    if device is None:
        raise InvalidKey("M_NOT_FOUND", f"unknown key {key_id}")
    if not same_signed_content(obj, device):
        raise InvalidKey("M_INVALID_SIGNATURE", "the signed key is not the stored device key")
    ssk = _pub(mine.get(SELF_SIGNING))
    if ssk is None:
        raise InvalidKey("M_MISSING_PARAM", "you have no self-signing key")
    sig_kid = f"ed25519:{ssk}"
    verify_signature(obj, signer, sig_kid, ssk)
    return [(signer, key_id, signer, sig_kid, _new_signatures(obj, signer)[sig_kid])]


def _other_master(signer: str, target: str, key_id: str, obj: dict[str, Any],
                  mine: dict[str, dict[str, Any]],
                  theirs: dict[str, dict[str, Any]]) -> list[Signature]:
    master = theirs.get(MASTER)
    if master is None or key_id != _pub(master):
        raise InvalidKey("M_NOT_FOUND", f"{key_id} is not {target}'s master key")
    if not same_signed_content(obj, master):
        raise InvalidKey("M_INVALID_SIGNATURE", "the signed key is not the stored master key")
    usk = _pub(mine.get(USER_SIGNING))
    if usk is None:
        raise InvalidKey("M_MISSING_PARAM", "you have no user-signing key")
    sig_kid = f"ed25519:{usk}"
    verify_signature(obj, signer, sig_kid, usk)
    return [(target, key_id, signer, sig_kid, _new_signatures(obj, signer)[sig_kid])]


def check_cross_signing_upload(user_id: str, keys: dict[str, Any],
                               existing: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Validate a device_signing/upload body's keys: shapes, and the self-signing and
    user-signing keys signed by the (new or stored) master key.  ``{key_type: key}``."""
    out: dict[str, dict[str, Any]] = {}
    for key_type in (MASTER, SELF_SIGNING, USER_SIGNING):
        obj = keys.get(f"{key_type}_key")
        if obj is None:
            continue
        cross_signing_public_key(obj, user_id, key_type)
        out[key_type] = obj
    master = out.get(MASTER) or existing.get(MASTER)
    for key_type in (SELF_SIGNING, USER_SIGNING):
        if key_type in out:
            if master is None:
                raise InvalidKey("M_MISSING_PARAM", "upload a master key first")
            pub = _pub(master)
            assert pub is not None
            verify_signature(out[key_type], user_id, f"ed25519:{pub}", pub)
    return out


def differs(keys: dict[str, dict[str, Any]], existing: dict[str, dict[str, Any]]) -> bool:
    """Does the upload contain a key that is not exactly the stored one?"""
    return any(kt not in existing or dumps(obj) != dumps(existing[kt])
               for kt, obj in keys.items())


def needs_auth(keys: dict[str, dict[str, Any]], existing: dict[str, dict[str, Any]]) -> bool:
    """UIA is needed unless there is no master key yet, or every uploaded key exactly
    matches the stored one (a retried upload)."""
    return MASTER in existing and differs(keys, existing)
