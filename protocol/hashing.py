"""Event hashes and hash-derived event ids.

Owns: unpadded base64, the wire form an event is hashed in, the content hash
(``hashes.sha256``), the reference hash, and event ids for event formats V2 (room v3,
standard base64) and V3 (rooms v4+, URL-safe base64).  V1 rooms (v1, v2) carry their
event id inside the event, so :func:`compute_event_id` just returns it there.

Spec: server-server-api.md "Signing Events" — "Calculating the content hash for an
event", "Calculating the reference hash for an event"; appendices.md "Unpadded Base64",
"URL-safe unpadded Base64"; rooms/v3.md "Event IDs", rooms/fragments/v4-event-ids.md.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any, Mapping

from protocol.canonical import encode_canonical_json
from protocol.redaction import redact_shallow
from protocol.room_versions import EventFormat, RoomVersion

__all__ = [
    "encode_base64",
    "decode_base64",
    "wire_form",
    "compute_content_hash",
    "add_content_hash",
    "check_content_hash",
    "compute_reference_hash",
    "compute_event_id",
]


def encode_base64(data: bytes, urlsafe: bool = False) -> str:
    """Unpadded base64 (standard alphabet, or URL-safe ``-_`` with ``urlsafe``)."""
    enc = base64.urlsafe_b64encode(data) if urlsafe else base64.b64encode(data)
    return enc.rstrip(b"=").decode("ascii")


def decode_base64(s: str, urlsafe: bool = False) -> bytes:
    """Decode base64 with or without ``=`` padding; raises ``ValueError`` on bad input.

    appendices "Unpadded Base64": implementations SHOULD accept input with or without
    padding characters.
    """
    if not isinstance(s, str):
        raise ValueError("base64 value must be a string")
    s = s.rstrip("=")
    if len(s) % 4 == 1:
        raise ValueError("invalid base64 length")
    raw = s + "=" * (-len(s) % 4)
    if urlsafe:
        raw = raw.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(raw.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise ValueError(f"invalid base64: {e}") from e


def _is_v12_create(ev: Mapping[str, Any]) -> bool:
    return ev.get("type") == "m.room.create" and ev.get("state_key") == ""


def wire_form(ev: Mapping[str, Any], rv: RoomVersion | None = None) -> dict[str, Any]:
    """A shallow copy of ``ev`` without the fields Atrium adds that the wire PDU lacks.

    docs/protocol-contract.md: for room versions 3+ ``event_id`` is not part of the PDU,
    and a v12 create event carries no ``room_id`` (rooms/v12.md: the room id *is* its
    event id).  Without ``rv`` this is inferred: hash-derived ids never contain ``:``,
    while v1/v2 event ids and pre-v12 room ids always do.
    """
    out = dict(ev)
    if rv is not None:
        if rv.event_format != EventFormat.V1:
            out.pop("event_id", None)
        if rv.room_id_is_create_event_hash and _is_v12_create(ev):
            out.pop("room_id", None)
        return out
    eid = out.get("event_id")
    if isinstance(eid, str) and ":" not in eid:
        del out["event_id"]
    rid = out.get("room_id")
    if isinstance(rid, str) and ":" not in rid and _is_v12_create(ev):
        del out["room_id"]
    return out


def _content_hash_bytes(ev: Mapping[str, Any], rv: RoomVersion | None) -> bytes:
    # "any existing unsigned, signatures, and hashes properties are removed"
    obj = wire_form(ev, rv)
    obj.pop("unsigned", None)
    obj.pop("signatures", None)
    obj.pop("hashes", None)
    return hashlib.sha256(encode_canonical_json(obj)).digest()


def compute_content_hash(ev: Mapping[str, Any], rv: RoomVersion | None = None) -> str:
    """The unpadded-base64 sha256 content hash of ``ev``'s wire form.

    ``rv`` is optional (see :func:`wire_form` for how its absence is handled).
    """
    return encode_base64(_content_hash_bytes(ev, rv))


def add_content_hash(ev: dict[str, Any], rv: RoomVersion | None = None) -> dict[str, Any]:
    """Set ``ev["hashes"]["sha256"]`` in place (keeping other algorithms); returns ``ev``."""
    digest = compute_content_hash(ev, rv)
    hashes = ev.get("hashes")
    ev["hashes"] = {**hashes, "sha256": digest} if isinstance(hashes, dict) else {
        "sha256": digest}
    return ev


def check_content_hash(ev: Mapping[str, Any], rv: RoomVersion | None = None) -> bool:
    """True if ``ev["hashes"]["sha256"]`` matches the event; False if missing/malformed.

    A mismatch means the event must be treated as redacted (server-server "Validating
    hashes and signatures on received events").
    """
    hashes = ev.get("hashes")
    if not isinstance(hashes, Mapping):
        return False
    claimed = hashes.get("sha256")
    try:
        claimed_bytes = decode_base64(claimed)  # type: ignore[arg-type]
    except ValueError:
        return False
    return claimed_bytes == _content_hash_bytes(ev, rv)


def compute_reference_hash(ev: Mapping[str, Any], rv: RoomVersion) -> bytes:
    """The raw sha256 reference hash: over the redacted wire form minus signatures/unsigned."""
    redacted = redact_shallow(wire_form(ev, rv), rv)
    redacted.pop("signatures", None)
    redacted.pop("unsigned", None)
    return hashlib.sha256(encode_canonical_json(redacted)).digest()


def compute_event_id(ev: Mapping[str, Any], rv: RoomVersion) -> str:
    """The event id of ``ev`` in room version ``rv``.

    V2 (room v3): ``$`` + unpadded base64 of the reference hash; V3 (v4+): the same,
    URL-safe.  V1 (v1, v2): the id is chosen by the origin and stored in the event, so it
    is returned from there (``ValueError`` if absent).
    """
    if rv.event_format == EventFormat.V1:
        eid = ev.get("event_id")
        if not isinstance(eid, str):
            raise ValueError("room v1/v2 event has no event_id")
        return eid
    urlsafe = rv.event_format == EventFormat.V3
    return "$" + encode_base64(compute_reference_hash(ev, rv), urlsafe=urlsafe)
