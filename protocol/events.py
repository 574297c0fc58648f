"""Event dicts: reference accessors, the wire form, building new events, auth selection.

Owns: reading ``prev_events``/``auth_events`` in every event format, stripping Atrium's
internal fields for the wire (docs/protocol-contract.md), building a hashed and signed
event with its event id, and the "auth events selection" for a new event.

Spec: server-server-api.md "PDUs", "Auth events selection", "Signing Events";
rooms/fragments/v1-event-ids.md, v4-event-ids.md, rooms/v3.md "Event IDs";
rooms/v11.md "Moving the redacts property"; rooms/v12.md (room id = create event hash,
create event not in auth_events).
"""
from __future__ import annotations

import copy
import hashlib
from typing import Any, Iterable, Mapping, Sequence

from protocol.canonical import CANONICALJSON_MAX_INT, check_strict_json, encode_canonical_json
from protocol.hashing import add_content_hash, compute_event_id, encode_base64, wire_form
from protocol.room_versions import EventFormat, RoomVersion
from protocol.signing import SigningKey, sign_event

__all__ = [
    "MAX_DEPTH",
    "prev_event_ids",
    "auth_event_ids",
    "pdu_for_wire",
    "room_id_for_create_event_id",
    "create_event_id_for_room_id",
    "redacts_id",
    "oversized_fields",
    "build_event",
    "auth_types_for_event",
]

#: rooms v6+ (depth_v6): depth must stay below 2**53; at the limit it stays at the limit.
MAX_DEPTH = CANONICALJSON_MAX_INT


def _ref_ids(refs: Any, field: str) -> list[str]:
    """Ids out of a prev/auth list: plain ids (v3+) or ``[id, {hashes}]`` pairs (v1/v2)."""
    if refs is None:
        return []
    if not isinstance(refs, (list, tuple)):
        raise ValueError(f"{field} must be a list")
    out: list[str] = []
    for r in refs:
        if isinstance(r, str):
            out.append(r)
        elif isinstance(r, (list, tuple)) and len(r) >= 1 and isinstance(r[0], str):
            out.append(r[0])
        else:
            raise ValueError(f"malformed entry in {field}: {r!r}")
    return out


def prev_event_ids(ev: Mapping[str, Any]) -> list[str]:
    """The ids in ``ev["prev_events"]`` in order; ``ValueError`` if malformed."""
    return _ref_ids(ev.get("prev_events"), "prev_events")


def auth_event_ids(ev: Mapping[str, Any]) -> list[str]:
    """The ids in ``ev["auth_events"]`` in order; ``ValueError`` if malformed.

    In v12 the create event is implied by the room id and is *not* listed here.
    """
    return _ref_ids(ev.get("auth_events"), "auth_events")


def pdu_for_wire(ev: Mapping[str, Any], rv: RoomVersion) -> dict[str, Any]:
    """A shallow copy of ``ev`` in wire (PDU) form.

    Drops ``event_id`` for room versions 3+ (it is derived from the reference hash) and
    ``room_id`` from v12 create events (the room id is derived from the create event).
    """
    return wire_form(ev, rv)


def room_id_for_create_event_id(create_event_id: str) -> str:
    """rooms/v12.md: the room id is the create event's id with ``!`` instead of ``$``."""
    if not create_event_id.startswith("$"):
        raise ValueError(f"not an event id: {create_event_id!r}")
    return "!" + create_event_id[1:]


def create_event_id_for_room_id(room_id: str) -> str:
    """The inverse of :func:`room_id_for_create_event_id` (v12 room ids only)."""
    if not room_id.startswith("!") or ":" in room_id:
        raise ValueError(f"not a v12 room id: {room_id!r}")
    return "$" + room_id[1:]


def redacts_id(ev: Mapping[str, Any], rv: RoomVersion) -> str | None:
    """The event id an ``m.room.redaction`` redacts: ``content.redacts`` in v11+
    (rooms/v11.md), the top-level ``redacts`` before; ``None`` if absent or not a string.
    """
    if rv.redacts_in_content:
        content = ev.get("content")
        value = content.get("redacts") if isinstance(content, Mapping) else None
    else:
        value = ev.get("redacts")
    return value if isinstance(value, str) else None


#: client-server-api "Size limits": these keys hold at most 255 bytes (UTF-8).
MAX_FIELD_BYTES = 255
SIZE_LIMITED_FIELDS = ("sender", "room_id", "event_id", "type", "state_key")


def oversized_fields(ev: Mapping[str, Any]) -> list[str]:
    """The keys of ``ev`` among ``sender``, ``room_id``, ``event_id``, ``type`` and
    ``state_key`` whose value is longer than 255 bytes (client-server-api "Size limits")."""
    return [k for k in SIZE_LIMITED_FIELDS
            if isinstance(ev.get(k), str) and len(ev[k].encode("utf-8", "surrogatepass"))
            > MAX_FIELD_BYTES]


def _is_create(type_: str, state_key: str | None) -> bool:
    return type_ == "m.room.create" and state_key == ""


def _v1_refs(refs: Iterable[Any]) -> list[list[Any]]:
    # v1/v2 reference other events as [event_id, {hashes}]; a bare id gets empty hashes.
    out: list[list[Any]] = []
    for r in refs:
        if isinstance(r, str):
            out.append([r, {}])
        else:
            eid, hashes = r
            out.append([eid, dict(hashes)])
    return out


def _v1_event_id(ev: Mapping[str, Any], server_name: str) -> str:
    # v1-event-ids: "$opaque_id:domain" with a locally-unique opaque id.  Deriving it from
    # the event's own bytes keeps this module free of randomness and clocks.
    digest = hashlib.sha256(encode_canonical_json(ev)).digest()
    return "$" + encode_base64(digest[:18], urlsafe=True) + ":" + server_name


def build_event(
    rv: RoomVersion,
    *,
    room_id: str | None,
    sender: str,
    type: str,
    content: Mapping[str, Any],
    state_key: str | None = None,
    prev_events: Sequence[Any],
    auth_events: Sequence[Any],
    depth: int,
    origin_server_ts: int,
    server_name: str,
    signing_key: SigningKey,
    redacts: str | None = None,
    unsigned: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a new event: content hash, then signature, then event id.

    Returns an Atrium event dict (wire PDU plus ``event_id``, and ``room_id`` for a v12
    create event).  ``prev_events``/``auth_events`` are event ids (v1/v2 also accept
    ``(id, hashes)`` pairs; bare ids become ``[id, {}]``).  v12: a create event takes
    ``room_id=None`` and no prev/auth events; other events drop the create event from
    ``auth_events`` if the caller listed it.  ``redacts`` goes to ``content`` in v11+ and
    to the top level before.  Rooms v6+ raise ``CanonicalJsonError`` for floats or
    out-of-range integers.  ``content`` and ``unsigned`` are deep-copied.
    """
    is_create = _is_create(type, state_key)
    auth = list(auth_events)
    prev = list(prev_events)
    if rv.room_id_is_create_event_hash:
        if is_create:
            if room_id is not None:
                raise ValueError("a v12 create event has no room_id; it is derived")
            if auth or prev:
                raise ValueError("a v12 create event has no prev_events or auth_events")
        else:
            if room_id is None:
                raise ValueError("room_id is required")
            create_id = create_event_id_for_room_id(room_id)
            auth = [a for a in auth if a != create_id]
    elif room_id is None:
        raise ValueError("room_id is required")

    ev_content = copy.deepcopy(dict(content))
    ev: dict[str, Any] = {
        "type": type,
        "sender": sender,
        "content": ev_content,
        "depth": min(depth, MAX_DEPTH),
        "origin_server_ts": origin_server_ts,
        "prev_events": _v1_refs(prev) if rv.event_format == EventFormat.V1 else prev,
        "auth_events": _v1_refs(auth) if rv.event_format == EventFormat.V1 else auth,
    }
    if room_id is not None:
        ev["room_id"] = room_id
    if state_key is not None:
        ev["state_key"] = state_key
    if redacts is not None:
        if rv.redacts_in_content:
            ev_content.setdefault("redacts", redacts)
        else:
            ev["redacts"] = redacts
    if rv.strict_canonicaljson:
        check_strict_json(ev)
    if unsigned is not None:
        ev["unsigned"] = copy.deepcopy(dict(unsigned))
    if rv.event_format == EventFormat.V1:
        # v1/v2: the event id is part of the event, hence of the hashes and signature.
        ev["event_id"] = _v1_event_id(ev, server_name)

    add_content_hash(ev, rv)
    sign_event(ev, rv, server_name, signing_key)
    if rv.event_format != EventFormat.V1:
        ev["event_id"] = compute_event_id(ev, rv)
        if rv.room_id_is_create_event_hash and is_create:
            ev["room_id"] = room_id_for_create_event_id(ev["event_id"])
    return ev


def auth_types_for_event(
    rv: RoomVersion,
    type: str,
    sender: str,
    state_key: str | None,
    content: Mapping[str, Any],
) -> set[tuple[str, str]]:
    """The (type, state_key) pairs of the state a new event's ``auth_events`` are from.

    server-server-api.md "Auth events selection": nothing for the create event; else the
    create event (not in v12: rooms/v12.md), the power levels, the sender's membership,
    and for m.room.member the target's membership, the join rules (join/invite/knock),
    the m.room.third_party_invite named by ``third_party_invite.signed.token`` (invite),
    and in rooms with restricted joins (v8+) the membership of
    ``join_authorised_via_users_server`` (join).
    """
    if _is_create(type, state_key):
        return set()
    wanted: set[tuple[str, str]] = {("m.room.power_levels", ""), ("m.room.member", sender)}
    if not rv.room_id_is_create_event_hash:
        wanted.add(("m.room.create", ""))
    if type != "m.room.member":
        return wanted
    if isinstance(state_key, str):
        wanted.add(("m.room.member", state_key))
    membership = content.get("membership")
    if membership in ("join", "invite", "knock"):
        wanted.add(("m.room.join_rules", ""))
    if membership == "invite":
        tpi = content.get("third_party_invite")
        signed = tpi.get("signed") if isinstance(tpi, Mapping) else None
        token = signed.get("token") if isinstance(signed, Mapping) else None
        if isinstance(token, str):
            wanted.add(("m.room.third_party_invite", token))
    if membership == "join" and rv.restricted_join_rule:
        authoriser = content.get("join_authorised_via_users_server")
        if isinstance(authoriser, str):
            wanted.add(("m.room.member", authoriser))
    return wanted
