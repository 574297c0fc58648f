"""Third-party invites: the membership-invite rule's ``third_party_invite`` branch.

Rule 4.3.1 (v6–v7; 5.3.1 in v1–v5, 4.4.1 in v8–v11, 5.4.1 in v12): an invite carrying
``content.third_party_invite`` is allowed, without the sender being a member-with-invite-power,
iff its ``signed`` block names the invited user, points (by ``token``) at an
``m.room.third_party_invite`` sent by the same sender, and carries an ed25519 signature that
verifies with one of that event's public keys.  The signature is checked here with PyNaCl
over the canonical JSON of ``signed`` without its ``signatures`` (the usual signed-JSON rule).
"""
from __future__ import annotations

import base64
import binascii
from typing import Any, Iterator, Mapping

import nacl.exceptions
import nacl.signing

from protocol.auth_common import THIRD_PARTY_INVITE, AuthState, Event, content_of, fail
from protocol.canonical import encode_canonical_json
from protocol.room_versions import RoomVersion

_P = ("member", "invite", "third_party")


def check_third_party_invite(rv: RoomVersion, ev: Event, state: AuthState,
                             target_membership: str | None) -> None:
    """Return (allow) or raise :class:`AuthError` for an invite with ``third_party_invite``."""
    tpi = content_of(ev).get("third_party_invite")
    # .1: target user is banned.
    if target_membership == "ban":
        raise fail(rv, _P + ("target_banned",), "the target user is banned")
    # .2: `signed` must be present.
    signed = tpi.get("signed") if isinstance(tpi, Mapping) else None
    if not isinstance(signed, Mapping):
        raise fail(rv, _P + ("signed",), "third_party_invite has no 'signed' object")
    # .3: `signed` must have `mxid` and `token`.
    mxid, token = signed.get("mxid"), signed.get("token")
    if not isinstance(mxid, str) or not isinstance(token, str):
        raise fail(rv, _P + ("mxid_token",), "'signed' lacks 'mxid' or 'token'")
    # .4: `mxid` must be the target.
    if mxid != ev.get("state_key"):
        raise fail(rv, _P + ("mxid",), "'signed.mxid' does not match the state_key")
    # .5: there must be an m.room.third_party_invite with state_key == token.
    invite_ev = state.get((THIRD_PARTY_INVITE, token))
    if invite_ev is None:
        raise fail(rv, _P + ("event",), f"no m.room.third_party_invite for token {token!r}")
    # .6: sent by the same sender.
    if invite_ev.get("sender") != ev.get("sender"):
        raise fail(rv, _P + ("sender",), "sender differs from the third-party invite's sender")
    # .7: any signature in `signed` matching any public key: allow.
    if verify_signed_with_any(signed, public_keys(invite_ev)):
        return
    # .8: otherwise reject.
    raise fail(rv, _P + ("reject",), "no signature in 'signed' matches the invite's keys")


def public_keys(invite_ev: Event) -> list[str]:
    """``content.public_key`` and each ``content.public_keys[].public_key`` (rule .7.1/.7.2)."""
    content = content_of(invite_ev)
    keys: list[str] = []
    if isinstance(content.get("public_key"), str):
        keys.append(content["public_key"])
    listed = content.get("public_keys")
    if isinstance(listed, list):
        for entry in listed:
            if isinstance(entry, Mapping) and isinstance(entry.get("public_key"), str):
                keys.append(entry["public_key"])
    return keys


def verify_signed_with_any(signed: Mapping[str, Any], keys: list[str]) -> bool:
    """Whether any ed25519 signature in ``signed["signatures"]`` verifies under any key."""
    verify_keys = [k for k in (_verify_key(b64) for b64 in keys) if k is not None]
    if not verify_keys:
        return False
    unsigned = {k: v for k, v in signed.items() if k not in ("signatures", "unsigned")}
    try:
        message = encode_canonical_json(unsigned)
    except (ValueError, TypeError):
        return False
    for signature in _signatures(signed.get("signatures")):
        for key in verify_keys:
            try:
                key.verify(message, signature)
                return True
            except nacl.exceptions.BadSignatureError:
                continue
    return False


def _signatures(block: Any) -> Iterator[bytes]:
    if not isinstance(block, Mapping):
        return
    for per_server in block.values():
        if not isinstance(per_server, Mapping):
            continue
        for key_id, sig in per_server.items():
            if isinstance(key_id, str) and key_id.startswith("ed25519:") and isinstance(sig, str):
                raw = _b64decode(sig)
                if raw is not None and len(raw) == 64:
                    yield raw


def _verify_key(b64: str) -> nacl.signing.VerifyKey | None:
    raw = _b64decode(b64)
    if raw is None or len(raw) != 32:
        return None
    return nacl.signing.VerifyKey(raw)


def _b64decode(s: str) -> bytes | None:
    """Unpadded (or padded) standard or URL-safe base64, as Matrix writes keys."""
    s = s.strip().rstrip("=").replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
