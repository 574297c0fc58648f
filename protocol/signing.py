"""ed25519 signing keys, JSON signatures and event signatures.

Owns: key generation/encoding (``signedjson.key`` keys, i.e. pynacl ``SigningKey`` objects
carrying ``alg`` and ``version``), key ids, signing and verifying JSON objects, and signing
and verifying events — which are signed over their *redacted wire form*, so a signature
stays valid when the event is later redacted.

Spec: appendices.md "Signing JSON" — "Signing Details", "Checking for a Signature";
server-server-api.md "Signing Events" — "Adding hashes and signatures to outgoing events",
"Validating hashes and signatures on received events".
"""
from __future__ import annotations

from typing import Any, Mapping, Union

import nacl.exceptions
import nacl.signing
import signedjson.key

from protocol.canonical import encode_canonical_json
from protocol.hashing import decode_base64, encode_base64, wire_form
from protocol.ids import IdError, server_of
from protocol.redaction import redact_shallow
from protocol.room_versions import EventFormat, RoomVersion

__all__ = [
    "SignatureError",
    "SigningKey",
    "VerifyKey",
    "ALGORITHM",
    "generate_signing_key",
    "encode_signing_key_base64",
    "decode_signing_key_base64",
    "get_verify_key",
    "encode_verify_key_base64",
    "decode_verify_key_base64",
    "key_id",
    "sign_json",
    "verify_signed_json",
    "sign_event",
    "verify_event_signature",
    "required_signers",
]

SigningKey = nacl.signing.SigningKey
VerifyKey = nacl.signing.VerifyKey
#: The only signing algorithm the spec defines ("Signing Details").
ALGORITHM = "ed25519"

#: A single verify key (with ``alg``/``version`` attributes, as ``get_verify_key`` makes)
#: or a mapping ``{"ed25519:ver": VerifyKey}`` of every known key of one server.
VerifyKeys = Union[VerifyKey, Mapping[str, VerifyKey]]


class SignatureError(Exception):
    """A required signature is missing, malformed, or does not verify."""


# --- keys ----------------------------------------------------------------------------------

def generate_signing_key(version: str) -> SigningKey:
    """A fresh ed25519 signing key with key id ``ed25519:<version>``."""
    return signedjson.key.generate_signing_key(version)


def encode_signing_key_base64(sk: SigningKey) -> str:
    """The key's 32-byte seed in unpadded base64."""
    return encode_base64(bytes(sk))


def decode_signing_key_base64(alg: str, version: str, b64: str) -> SigningKey:
    """Rebuild a signing key from its base64 seed; raises ``ValueError`` if malformed."""
    if alg != ALGORITHM:
        raise ValueError(f"unsupported signing algorithm: {alg!r}")
    seed = decode_base64(b64)
    if len(seed) != 32:
        raise ValueError("ed25519 seed must be 32 bytes")
    sk = nacl.signing.SigningKey(seed)
    sk.alg = alg  # type: ignore[attr-defined]
    sk.version = version  # type: ignore[attr-defined]
    return sk


def get_verify_key(sk: SigningKey) -> VerifyKey:
    """The verify key of ``sk``, carrying the same ``alg`` and ``version``."""
    return signedjson.key.get_verify_key(sk)


def encode_verify_key_base64(vk: VerifyKey) -> str:
    return encode_base64(bytes(vk))


def decode_verify_key_base64(alg: str, version: str, b64: str) -> VerifyKey:
    """A verify key from its base64 form (as published under ``verify_keys``)."""
    if alg != ALGORITHM:
        raise ValueError(f"unsupported signing algorithm: {alg!r}")
    raw = decode_base64(b64)
    if len(raw) != 32:
        raise ValueError("ed25519 verify key must be 32 bytes")
    vk = nacl.signing.VerifyKey(raw)
    vk.alg = alg  # type: ignore[attr-defined]
    vk.version = version  # type: ignore[attr-defined]
    return vk


def key_id(sk: SigningKey | VerifyKey) -> str:
    """The signing key identifier ``<algorithm>:<version>``, e.g. ``ed25519:a_bcde``."""
    return f"{sk.alg}:{sk.version}"  # type: ignore[union-attr]


# --- JSON ----------------------------------------------------------------------------------

def _signature_of(obj: Mapping[str, Any], sk: SigningKey) -> str:
    # "encoding the JSON object without signatures or keys grouped as unsigned"
    to_sign = {k: v for k, v in obj.items() if k != "signatures" and k != "unsigned"}
    return encode_base64(sk.sign(encode_canonical_json(to_sign)).signature)


def _add_signature(obj: dict[str, Any], server_name: str, kid: str, sig: str) -> None:
    sigs = obj.get("signatures")
    sigs = dict(sigs) if isinstance(sigs, Mapping) else {}
    mine = sigs.get(server_name)
    sigs[server_name] = {**mine, kid: sig} if isinstance(mine, Mapping) else {kid: sig}
    obj["signatures"] = sigs


def sign_json(obj: dict[str, Any], server_name: str, sk: SigningKey) -> dict[str, Any]:
    """Add ``server_name``'s signature to ``obj`` in place (others kept); returns ``obj``."""
    _add_signature(obj, server_name, key_id(sk), _signature_of(obj, sk))
    return obj


def _keys_to_check(
    server_sigs: Mapping[str, Any], verify_key: VerifyKeys
) -> list[tuple[str, VerifyKey]]:
    if isinstance(verify_key, Mapping):
        known = verify_key
    else:
        known = {key_id(verify_key): verify_key}
    # "Removes any signing key identifiers ... with algorithms it doesn't understand",
    # then keeps those whose verification key is known.
    return [
        (kid, known[kid]) for kid in server_sigs
        if isinstance(kid, str) and kid.startswith(ALGORITHM + ":") and kid in known
    ]


def verify_signed_json(obj: Mapping[str, Any], server_name: str,
                       verify_key: VerifyKeys) -> None:
    """Check ``server_name``'s signature on ``obj``; raise :class:`SignatureError` if bad.

    ``verify_key`` is one key or ``{key_id: key}``.  At least one signature by a known key
    must be present, and every such signature must verify ("Checking for a Signature").
    """
    sigs = obj.get("signatures")
    server_sigs = sigs.get(server_name) if isinstance(sigs, Mapping) else None
    if not isinstance(server_sigs, Mapping) or not server_sigs:
        raise SignatureError(f"no signature from {server_name}")
    to_check = _keys_to_check(server_sigs, verify_key)
    if not to_check:
        raise SignatureError(f"no signature from {server_name} by a known key")
    message = encode_canonical_json(
        {k: v for k, v in obj.items() if k != "signatures" and k != "unsigned"})
    for kid, vk in to_check:
        try:
            sig = decode_base64(server_sigs[kid])
        except ValueError as e:
            raise SignatureError(f"undecodable signature {server_name}/{kid}") from e
        try:
            vk.verify(message, sig)
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError) as e:
            raise SignatureError(f"bad signature {server_name}/{kid}") from e


# --- events --------------------------------------------------------------------------------

def _signable_event(ev: Mapping[str, Any], rv: RoomVersion) -> dict[str, Any]:
    # "The event object is then redacted ... Finally it is signed" — over the wire form.
    return redact_shallow(wire_form(ev, rv), rv)


def sign_event(ev: dict[str, Any], rv: RoomVersion, server_name: str,
               sk: SigningKey) -> dict[str, Any]:
    """Sign ``ev`` (which must already carry its content hash) in place; returns ``ev``.

    The signature covers the redacted wire form, including ``hashes``, and is copied back
    into ``ev["signatures"][server_name]``.
    """
    if not isinstance(ev.get("hashes"), Mapping):
        raise ValueError("add the content hash before signing an event")
    _add_signature(ev, server_name, key_id(sk), _signature_of(_signable_event(ev, rv), sk))
    return ev


def verify_event_signature(ev: Mapping[str, Any], rv: RoomVersion, server_name: str,
                           verify_key: VerifyKeys) -> None:
    """Check ``server_name``'s signature on the event; raise :class:`SignatureError`.

    Succeeds for the full event and for a redacted copy alike.  Does not check the
    content hash (see ``hashing.check_content_hash``) or key validity periods.
    """
    verify_signed_json(_signable_event(ev, rv), server_name, verify_key)


def required_signers(ev: Mapping[str, Any], rv: RoomVersion) -> set[str]:
    """The servers whose signatures an event must carry.

    server-server "Validating hashes and signatures on received events": the sender's
    server, except for an invite made via a third-party invite; v1/v2 also the server of
    the event id.  v8+ (rooms/fragments/v8-auth-rules.md rule 4.2.1): an m.room.member
    event whose content has ``join_authorised_via_users_server`` also needs that user's
    server.  Raises :class:`~protocol.ids.IdError` for malformed ids.
    """
    servers: set[str] = set()
    content = ev.get("content")
    content = content if isinstance(content, Mapping) else {}
    is_member = ev.get("type") == "m.room.member"
    tpi_invite = (is_member and content.get("membership") == "invite"
                  and "third_party_invite" in content)
    if not tpi_invite:
        servers.add(server_of(ev.get("sender")))  # type: ignore[arg-type]
    if rv.event_format == EventFormat.V1:
        servers.add(server_of(ev.get("event_id")))  # type: ignore[arg-type]
    authoriser = content.get("join_authorised_via_users_server")
    if rv.restricted_join_rule and is_member and "join_authorised_via_users_server" in content:
        if not isinstance(authoriser, str):
            raise IdError("join_authorised_via_users_server must be a user id")
        servers.add(server_of(authoriser))
    return servers
