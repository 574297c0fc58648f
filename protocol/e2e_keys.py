"""Pure rules for end-to-end encryption keys: the shape of device keys, one-time and
fallback keys and cross-signing keys, the ed25519 signatures on them, and the key-backup
replacement rule.  No I/O: the store and the web layer call these.

Spec: client-server-api modules/end_to_end_encryption.md — "Device keys", "One-time and
fallback keys", "Cross-signing", "Server-side key backups"; appendices "Signing JSON".
"""
from __future__ import annotations

from typing import Any, Mapping

from protocol.canonical import encode_canonical_json
from protocol.signing import SignatureError, decode_verify_key_base64, verify_signed_json

MASTER = "master"
SELF_SIGNING = "self_signing"
USER_SIGNING = "user_signing"
CROSS_SIGNING_TYPES = (MASTER, SELF_SIGNING, USER_SIGNING)


class InvalidKey(Exception):
    """A key object is malformed or a signature on it does not verify.  ``errcode`` is the
    Matrix error the web layer answers with (400)."""

    def __init__(self, errcode: str, error: str) -> None:
        super().__init__(error)
        self.errcode = errcode
        self.error = error


def without_signatures(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The signed part of a key object (what a signature covers)."""
    return {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}


def same_signed_content(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """True if two key objects carry the same signed content (signatures may differ)."""
    return encode_canonical_json(without_signatures(a)) == \
        encode_canonical_json(without_signatures(b))


def verify_signature(obj: Mapping[str, Any], signer: str, key_id: str, public_key: str) -> None:
    """Check ``signer``'s signature by the ed25519 key ``key_id`` (``ed25519:<version>``,
    base64 ``public_key``) on ``obj``; raise :class:`InvalidKey` (M_INVALID_SIGNATURE)."""
    alg, _, version = key_id.partition(":")
    try:
        vk = decode_verify_key_base64(alg, version, public_key)
    except (ValueError, TypeError) as e:
        raise InvalidKey("M_INVALID_SIGNATURE", f"unusable signing key {key_id}") from e
    sigs = obj.get("signatures")
    mine = sigs.get(signer) if isinstance(sigs, Mapping) else None
    if not isinstance(mine, Mapping) or key_id not in mine:
        raise InvalidKey("M_INVALID_SIGNATURE", f"missing signature {signer}/{key_id}")
    try:
        verify_signed_json({**obj, "signatures": {signer: {key_id: mine[key_id]}}}, signer,
                           {key_id: vk})
    except SignatureError as e:
        raise InvalidKey("M_INVALID_SIGNATURE", f"invalid signature {signer}/{key_id}") from e


def check_device_keys(keys: Any, user_id: str, device_id: str) -> dict[str, Any]:
    """Validate an uploaded ``device_keys`` object: it names this user and device, lists
    algorithms and keys, and is self-signed by the device's own ed25519 key."""
    if not isinstance(keys, dict):
        raise InvalidKey("M_BAD_JSON", "'device_keys' must be an object")
    if keys.get("user_id") != user_id or keys.get("device_id") != device_id:
        raise InvalidKey("M_INVALID_PARAM",
                        "'device_keys' must name the user and device of the access token")
    algorithms = keys.get("algorithms")
    if not isinstance(algorithms, list) or not all(isinstance(a, str) for a in algorithms):
        raise InvalidKey("M_BAD_JSON", "'device_keys.algorithms' must be a list of strings")
    kmap = keys.get("keys")
    if not isinstance(kmap, dict) or not all(isinstance(v, str) for v in kmap.values()):
        raise InvalidKey("M_BAD_JSON", "'device_keys.keys' must map key ids to strings")
    ed_id = f"ed25519:{device_id}"
    if ed_id not in kmap:
        raise InvalidKey("M_INVALID_PARAM", f"'device_keys.keys' has no {ed_id}")
    verify_signature(keys, user_id, ed_id, kmap[ed_id])
    return keys


def split_key_id(key_id: Any) -> tuple[str, str]:
    """``"signed_curve25519:AAAAHg"`` → ``("signed_curve25519", "AAAAHg")``."""
    if not isinstance(key_id, str):
        raise InvalidKey("M_BAD_JSON", "key ids must be strings")
    alg, sep, ident = key_id.partition(":")
    if not sep or not alg or not ident:
        raise InvalidKey("M_INVALID_PARAM", f"key id {key_id!r} is not <algorithm>:<id>")
    return alg, ident


def check_one_time_keys(keys: Any, what: str = "one_time_keys") -> dict[str, Any]:
    """``{"<alg>:<id>": key}`` where a key is a string or a (signed) object."""
    if keys is None:
        return {}
    if not isinstance(keys, dict):
        raise InvalidKey("M_BAD_JSON", f"'{what}' must be an object")
    for kid, value in keys.items():
        split_key_id(kid)
        if not isinstance(value, (str, dict)):
            raise InvalidKey("M_BAD_JSON", f"'{what}.{kid}' must be a string or an object")
    return keys


def cross_signing_public_key(key: Any, user_id: str, usage: str) -> str:
    """Validate a cross-signing key object for ``usage``; its unpadded-base64 public key."""
    if not isinstance(key, dict):
        raise InvalidKey("M_BAD_JSON", f"the {usage} key must be an object")
    if key.get("user_id") != user_id:
        raise InvalidKey("M_INVALID_PARAM", f"the {usage} key must belong to {user_id}")
    usages = key.get("usage")
    if not isinstance(usages, list) or usage not in usages:
        raise InvalidKey("M_INVALID_PARAM", f"the {usage} key must have usage {usage!r}")
    kmap = key.get("keys")
    if not isinstance(kmap, dict) or len(kmap) != 1:
        raise InvalidKey("M_INVALID_PARAM", f"the {usage} key must contain exactly one key")
    (kid, pub), = kmap.items()
    if not isinstance(kid, str) or not kid.startswith("ed25519:") or not isinstance(pub, str) \
            or kid != f"ed25519:{pub}":
        raise InvalidKey("M_INVALID_PARAM", f"the {usage} key must be ed25519:<public key>")
    try:
        decode_verify_key_base64("ed25519", pub, pub)
    except (ValueError, TypeError) as e:
        raise InvalidKey("M_INVALID_PARAM", f"the {usage} key is not an ed25519 key") from e
    return pub


def backup_replaces(new: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    """Key backup ("Server-side key backups"): does an uploaded session key replace the
    stored one?  Verified beats unverified, then lower first_message_index, then lower
    forwarded_count; on a full tie the upload wins (a client may re-encrypt a session)."""
    if old is None:
        return True
    if bool(new["is_verified"]) != bool(old["is_verified"]):
        return bool(new["is_verified"])
    if new["first_message_index"] != old["first_message_index"]:
        return new["first_message_index"] < old["first_message_index"]
    return new["forwarded_count"] <= old["forwarded_count"]
