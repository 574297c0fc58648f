"""The checks on receipt of a PDU, in the spec's order, as one entry point: :func:`check_pdu`.

server-server-api.md "Checks performed on receipt of a PDU":

1. **format** — the event matches its room version's PDU format (required keys and
   types, at most 20 prev / 10 auth events, ids and sizes: 65536 bytes of canonical JSON
   for the whole PDU, 255 bytes for ``type``/``state_key`` and the ids, the depth bound,
   strict canonical JSON in v6+); otherwise it is **dropped**.
2. **signatures** — signed by every server :func:`protocol.signing.required_signers`
   names (the sender's, v1/v2 the event id's, v8+ the ``join_authorised_via_users_server``
   user's — that last one is auth rule 4.2.1); otherwise **dropped**.
3. **content hash** — on mismatch the event is *redacted* and processing goes on with the
   redacted copy (the verdict says ``redacted=True`` and carries that copy).
4. **auth against its own auth_events** — the state-independent rules, auth rule 2 (v12:
   rules 2 and 3) on the cited events, then every rule against them; otherwise **rejected**.
5. **auth against the state before the event**; otherwise **rejected**.
6. **auth against the current state of the room**; otherwise **soft-failed**.

(The spec's step 7, policy-server validation, is not done here.)  All lookups are plain
functions passed in; nothing here does I/O.
"""
from __future__ import annotations

from collections import ChainMap
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Collection, Mapping

from protocol.auth import check_auth, check_auth_events, check_state_independent
from protocol.auth_common import CREATE, CREATE_KEY, AuthError, AuthState, Event, fail
from protocol.canonical import (
    CANONICALJSON_MAX_INT,
    CanonicalJsonError,
    check_strict_json,
    encode_canonical_json,
)
from protocol.events import auth_event_ids, create_event_id_for_room_id, pdu_for_wire
from protocol.hashing import check_content_hash
from protocol.ids import IdError, is_valid_event_id, is_valid_room_id, is_valid_user_id
from protocol.redaction import redact
from protocol.room_versions import EventFormat, RoomVersion
from protocol.signing import required_signers

__all__ = ["Outcome", "PduVerdict", "check_pdu", "format_problem", "MAX_PDU_BYTES"]

MAX_PDU_BYTES = 65536
MAX_KEY_BYTES = 255
MAX_PREV_EVENTS = 20
MAX_AUTH_EVENTS = 10
_MAX_DEPTH_V1 = 2**63 - 1

#: ``verify_signatures(ev, servers)`` -> True iff ``ev`` carries a valid signature by every
#: server in ``servers`` (with keys valid at the event's time in v5+; the caller's job).
SignatureVerifier = Callable[[Event, Collection[str]], bool]
#: ``get_event(event_id)`` -> the event, or ``None`` if unknown *or rejected*.
EventLookup = Callable[[str], "Event | None"]
#: ``state(ev)`` -> a (possibly lazy) mapping (type, state_key) -> event dict.
StateLookup = Callable[[Event], "AuthState | None"]


class Outcome(str, Enum):
    ACCEPTED = "accepted"
    SOFT_FAILED = "soft_failed"  # passed 4–5, failed against the current state (step 6)
    REJECTED = "rejected"        # failed auth (steps 4–5): stored as rejected, not in state
    DROPPED = "dropped"          # bad format or signatures (steps 1–2): not stored at all


@dataclass(frozen=True)
class PduVerdict:
    """What to do with a received PDU.

    ``event`` is the event to persist and process further: the redacted copy when the
    content hash mismatched (``redacted``), else the event as received.  ``rule`` is the
    auth rule number for rejections and soft failures.
    """

    outcome: Outcome
    reason: str | None = None
    redacted: bool = False
    rule: str | None = None
    event: Mapping[str, Any] | None = field(default=None, compare=False, hash=False,
                                            repr=False)

    @property
    def accepted(self) -> bool:
        return self.outcome is Outcome.ACCEPTED

    @property
    def rejected(self) -> bool:
        return self.outcome is Outcome.REJECTED

    @property
    def soft_failed(self) -> bool:
        return self.outcome is Outcome.SOFT_FAILED

    @property
    def dropped(self) -> bool:
        return self.outcome is Outcome.DROPPED


def check_pdu(
    rv: RoomVersion,
    ev: Event,
    *,
    verify_signatures: SignatureVerifier,
    get_event: EventLookup,
    state_before: StateLookup,
    current_state: StateLookup,
) -> PduVerdict:
    """Run the receipt checks on ``ev`` (an Atrium event dict, with ``event_id``).

    ``get_event`` must return ``None`` for events that are unknown or were rejected; the
    caller fetches missing auth events *before* calling (a missing one rejects, auth rule
    2.3).  ``state_before(ev)`` / ``current_state(ev)`` return the room state before the
    event / the current resolved state; ``current_state`` may return ``None`` to skip the
    soft-fail check (e.g. for backfilled or outlier events).  In v12 the create event is
    added to both states if they lack it.
    """
    # 1. Format: dropped if invalid.
    problem = format_problem(rv, ev)
    if problem is not None:
        return PduVerdict(Outcome.DROPPED, f"format: {problem}", event=ev)

    # 2. Signatures: dropped if invalid.
    try:
        servers = required_signers(ev, rv)
    except IdError as e:
        return PduVerdict(Outcome.DROPPED, f"signatures: {e}", event=ev)
    if not verify_signatures(ev, frozenset(servers)):
        return PduVerdict(Outcome.DROPPED,
                          f"signatures: not validly signed by {sorted(servers)}", event=ev)

    # 3. Content hash: redact (not reject) on mismatch.
    redacted = not check_content_hash(ev, rv)
    if redacted:
        ev = redact(ev, rv)

    def verdict(outcome: Outcome, err: AuthError | None = None) -> PduVerdict:
        return PduVerdict(outcome, str(err) if err else None, redacted,
                          err.rule if err else None, ev)

    # 4. Auth against the event's own auth events: rejected if it fails.
    try:
        check_state_independent(rv, ev)
        auth_state = _auth_state_from_auth_events(rv, ev, get_event)
        check_auth(rv, ev, auth_state)
    except AuthError as e:
        return verdict(Outcome.REJECTED, e)
    if ev.get("type") == CREATE:
        return verdict(Outcome.ACCEPTED)  # nothing precedes the create event
    create = auth_state[CREATE_KEY]

    # 5. Auth against the state before the event: rejected if it fails.
    try:
        check_auth(rv, ev, _with_create(state_before(ev) or {}, create))
    except AuthError as e:
        return verdict(Outcome.REJECTED, e)

    # 6. Auth against the current state: soft-failed if it fails.
    current = current_state(ev)
    if current is not None:
        try:
            check_auth(rv, ev, _with_create(current, create))
        except AuthError as e:
            return verdict(Outcome.SOFT_FAILED, e)
    return verdict(Outcome.ACCEPTED)


def _auth_state_from_auth_events(rv: RoomVersion, ev: Event,
                                 get_event: EventLookup) -> dict[tuple[str, str], Event]:
    """Fetch the cited auth events and check auth rule 2 (v12: 2 and 3) on them."""
    auth_events = []
    for event_id in auth_event_ids(ev):
        auth_ev = get_event(event_id)
        if auth_ev is None:
            # 2.3 (v12: 3.3): an auth event that was rejected (or is unknown).
            raise fail(rv, ("auth_events", "rejected"),
                       f"auth event {event_id} is unknown or was rejected")
        auth_events.append(auth_ev)
    check_auth_events(rv, ev, auth_events)
    state: dict[tuple[str, str], Event] = {
        (a["type"], a["state_key"]): a for a in auth_events
    }
    if rv.room_id_is_create_event_hash and ev.get("type") != CREATE:
        # v12 rule 2: the room id names an accepted create event.
        create = None
        try:
            create = get_event(create_event_id_for_room_id(ev["room_id"]))
        except ValueError:
            pass
        if create is None or create.get("type") != CREATE:
            raise fail(rv, ("room_id",), "room_id is not the id of an accepted create event")
        state[CREATE_KEY] = create
    return state


def _with_create(state: AuthState, create: Event) -> AuthState:
    if state.get(CREATE_KEY) is not None:
        return state
    return ChainMap({CREATE_KEY: create}, state)  # type: ignore[arg-type]


def format_problem(rv: RoomVersion, ev: Any) -> str | None:
    """Why ``ev`` is not a valid PDU of room version ``rv``, or ``None`` if it is.

    Spec: the room version's event format (pdu_v1/v3/v4/v6/v11/v12 schemas) and
    client-server "Size limits".
    """
    if not isinstance(ev, Mapping):
        return "not an object"
    is_create = ev.get("type") == CREATE and ev.get("state_key") == ""
    required = ["type", "sender", "content", "origin_server_ts", "depth", "hashes",
                "signatures", "auth_events", "prev_events", "event_id"]
    if not (rv.room_id_is_create_event_hash and is_create):
        required.append("room_id")
    for key in required:
        if key not in ev:
            return f"missing {key!r}"
    for key in ("type", "sender", "event_id"):
        if not isinstance(ev[key], str):
            return f"{key!r} is not a string"
    if not isinstance(ev["content"], Mapping):
        return "'content' is not an object"
    if "state_key" in ev and not isinstance(ev["state_key"], str):
        return "'state_key' is not a string"
    for key in ("type", "state_key"):
        if key in ev and len(ev[key].encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
            return f"{key!r} longer than {MAX_KEY_BYTES} bytes"
    if not is_valid_user_id(ev["sender"]):
        return "'sender' is not a user id"
    if not is_valid_event_id(ev["event_id"], rv):
        return "'event_id' is not an event id of this room version"
    if "room_id" in ev and not is_valid_room_id(ev["room_id"], rv):
        return "'room_id' is not a room id of this room version"
    if not _is_int(ev["origin_server_ts"]):
        return "'origin_server_ts' is not an integer"
    max_depth = CANONICALJSON_MAX_INT if rv.strict_canonicaljson else _MAX_DEPTH_V1
    if not _is_int(ev["depth"]) or not 0 <= ev["depth"] <= max_depth:
        return "'depth' is not an integer in range"
    hashes = ev["hashes"]
    if not isinstance(hashes, Mapping) or not isinstance(hashes.get("sha256"), str):
        return "'hashes' has no sha256"
    if not isinstance(ev["signatures"], Mapping):
        return "'signatures' is not an object"
    for key, limit in (("prev_events", MAX_PREV_EVENTS), ("auth_events", MAX_AUTH_EVENTS)):
        refs = ev[key]
        if not isinstance(refs, list) or len(refs) > limit:
            return f"{key!r} is not a list of at most {limit}"
        if not all(_is_ref(rv, r) for r in refs):
            return f"{key!r} has a malformed entry"
    if "unsigned" in ev and not isinstance(ev["unsigned"], Mapping):
        return "'unsigned' is not an object"
    wire = pdu_for_wire(ev, rv)
    if rv.strict_canonicaljson:
        try:
            check_strict_json(wire)
        except CanonicalJsonError as e:
            return f"not strict canonical JSON: {e}"
    try:
        size = len(encode_canonical_json(wire))
    except (ValueError, TypeError) as e:
        return f"not encodable as canonical JSON: {e}"
    if size > MAX_PDU_BYTES:
        return f"PDU is {size} bytes, more than {MAX_PDU_BYTES}"
    return None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_ref(rv: RoomVersion, ref: Any) -> bool:
    if rv.event_format == EventFormat.V1:
        return (isinstance(ref, list) and len(ref) == 2 and isinstance(ref[0], str)
                and isinstance(ref[1], Mapping))
    return isinstance(ref, str)
