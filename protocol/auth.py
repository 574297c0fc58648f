"""Event authorization: the numbered rules of every room version (rooms/v1.md … v12.md).

Three entry points, used in this order by :mod:`protocol.pdu_checks`:

* :func:`check_state_independent` — the rules that need no room state: all of rule 1
  (``m.room.create``), the v12 room-id shape (rule 2), the shape of member/aliases events.
* :func:`check_auth_events` — rule 2 (v12: rule 3) about the event's own ``auth_events``
  list: duplicates, the auth-events selection, the create event, matching room ids.  Rule
  2.3 (rejected auth events) needs rejection status, which only the caller knows:
  :func:`protocol.pdu_checks.check_pdu` treats an unknown-or-rejected auth event as failing it.
* :func:`check_auth` — every rule against a state map ``(type, state_key) -> event``: the
  create rules, v12 rule 2, ``m.federate``, aliases (v1–v5), membership, sender-joined,
  third-party-invite, required power level, ``@`` state keys, power levels, redaction
  (v1–v2).  It runs the state-independent rules of the event too, so state resolution can
  call it alone.  The one rule it cannot decide is 4.2 (v8+; v12: 5.2), a *signature* by the
  ``join_authorised_via_users_server`` user's server: pdu_checks asks the signature
  verifier for it.

``check_auth`` only ever calls ``auth_state.get(key)``, so a lazy mapping works.
"""
from __future__ import annotations

from typing import Any, Sequence

from protocol.auth_common import (
    ALIASES,
    CREATE,
    CREATE_KEY,
    JAUVUS,
    JOIN_RULES_KEY,
    MEMBER,
    POWER_LEVELS,
    POWER_LEVELS_KEY,
    REDACTION,
    THIRD_PARTY_INVITE,
    AuthError,
    AuthState,
    Event,
    StateKey,
    content_of,
    domain_of,
    fail,
    is_state_event,
    membership_of,
    rule,
)
from protocol.auth_membership import check_member_shape, check_membership
from protocol.auth_power_levels import check_power_levels
from protocol.ids import is_valid_room_id, is_valid_user_id
from protocol.power_levels import get_event_level, get_named_level, get_user_level
from protocol.room_versions import KNOWN_ROOM_VERSIONS, EventFormat, RoomVersion

__all__ = ["AuthError", "check_state_independent", "check_auth_events", "check_auth",
           "allowed_auth_types", "may_redact", "rule"]


def check_state_independent(rv: RoomVersion, ev: Event) -> None:
    """Raise :class:`AuthError` if ``ev`` fails a rule that needs no room state."""
    if ev.get("type") == CREATE:
        _check_create(rv, ev)
        return
    if rv.room_id_is_create_event_hash and not is_valid_room_id(ev.get("room_id"), rv):
        # v12 rule 2 (shape half; "accepted create event" needs the event, see check_auth).
        raise fail(rv, ("room_id",), f"room_id {ev.get('room_id')!r} is not a create event id")
    if ev.get("type") == MEMBER:
        check_member_shape(rv, ev)  # v1 5.1 / v6 4.1 / v12 5.1
    if ev.get("type") == ALIASES and rv.special_case_aliases_auth and not is_state_event(ev):
        raise fail(rv, ("aliases", "no_state_key"), "m.room.aliases without a state_key")


def _check_create(rv: RoomVersion, ev: Event) -> None:
    """Rule 1: the ``m.room.create`` event (allows by returning)."""
    p = "create"
    # 1.1: no prev_events.
    if ev.get("prev_events"):
        raise fail(rv, (p, "prev_events"), "m.room.create has prev_events")
    if rv.room_id_is_create_event_hash:
        # v12 1.2: no room_id on the wire.  Inside Atrium the derived room id ("!" + the
        # event id's hash) is attached after hashing, so only that exact value is tolerated.
        room_id = ev.get("room_id")
        event_id = ev.get("event_id")
        if room_id is not None and not (
            isinstance(event_id, str) and room_id == "!" + event_id[1:]
        ):
            raise fail(rv, (p, "has_room_id"), "m.room.create carries a room_id")
    else:
        # 1.2: room_id and sender on the same server.
        if domain_of(ev.get("room_id")) != domain_of(ev.get("sender")) or \
                domain_of(ev.get("sender")) is None:
            raise fail(rv, (p, "room_id_domain"), "room_id and sender domains differ")
    content = content_of(ev)
    # 1.3: a room_version, if given, must be known.
    if "room_version" in content and content["room_version"] not in KNOWN_ROOM_VERSIONS:
        raise fail(rv, (p, "room_version"), f"unknown room_version {content['room_version']!r}")
    if not rv.implicit_room_creator and "creator" not in content:
        # v1–v10 1.4: content.creator required.
        raise fail(rv, (p, "creator"), "content has no 'creator'")
    if rv.privileged_creators and "additional_creators" in content:
        # v12 1.4: additional_creators is an array of valid user ids.
        extra = content["additional_creators"]
        if not isinstance(extra, list) or not all(
            isinstance(u, str) and is_valid_user_id(u) for u in extra
        ):
            raise fail(rv, (p, "additional_creators"),
                       "additional_creators is not an array of user ids")
    # 1.5 (v11: 1.4): allow.


def allowed_auth_types(rv: RoomVersion, ev: Event) -> set[StateKey]:
    """The (type, state_key) pairs the auth-events selection may cite for ``ev``.

    Spec: server-server-api "Auth events selection"; v12 does not select the create event.
    """
    if ev.get("type") == CREATE:
        return set()
    sender = ev.get("sender")
    types: set[StateKey] = {POWER_LEVELS_KEY}
    if isinstance(sender, str):
        types.add((MEMBER, sender))
    if not rv.room_id_is_create_event_hash:
        types.add(CREATE_KEY)
    if ev.get("type") == MEMBER and isinstance(ev.get("state_key"), str):
        content = content_of(ev)
        membership = content.get("membership")
        types.add((MEMBER, ev["state_key"]))
        if membership in ("join", "invite", "knock"):
            types.add(JOIN_RULES_KEY)
        if membership == "invite":
            tpi = content.get("third_party_invite")
            signed = tpi.get("signed") if isinstance(tpi, dict) else None
            token = signed.get("token") if isinstance(signed, dict) else None
            if isinstance(token, str):
                types.add((THIRD_PARTY_INVITE, token))
        if membership == "join" and rv.restricted_join_rule \
                and isinstance(content.get(JAUVUS), str):
            types.add((MEMBER, content[JAUVUS]))
    return types


def check_auth_events(rv: RoomVersion, ev: Event, auth_events: Sequence[Event]) -> None:
    """Rule 2 (v12: rule 3) over the event's own, already fetched, ``auth_events``.

    2.3 (an auth event was rejected) is the caller's: pass only accepted events and fail
    the event yourself when one is missing or rejected.
    """
    p = "auth_events"
    if ev.get("type") == CREATE:
        return  # rule 1 decides the create event on its own
    allowed = allowed_auth_types(rv, ev)
    seen: set[StateKey] = set()
    for auth_ev in auth_events:
        key = (auth_ev.get("type"), auth_ev.get("state_key"))
        # 2.1: duplicate (type, state_key).
        if key in seen:
            raise fail(rv, (p, "duplicate"), f"duplicate auth event for {key}")
        seen.add(key)  # type: ignore[arg-type]
        # 2.2: not one the selection algorithm picks (v12: the create event never is).
        if key not in allowed:
            raise fail(rv, (p, "selection"), f"auth event {key} is not one the event may cite")
        # 2.5: auth events belong to the same room.
        if auth_ev.get("room_id") != ev.get("room_id"):
            raise fail(rv, (p, "room_id"), f"auth event {auth_ev.get('event_id')} is from "
                                           "another room")
    # 2.4 (not in v12): the create event must be among them.
    if not rv.room_id_is_create_event_hash and CREATE_KEY not in seen:
        raise fail(rv, (p, "no_create"), "no m.room.create among the auth events")


def check_auth(rv: RoomVersion, ev: Event, auth_state: AuthState) -> None:
    """Raise :class:`AuthError` unless ``ev`` is allowed in ``auth_state``.

    ``auth_state`` maps ``(type, state_key)`` to event dicts and holds the create event
    (also in v12).  Returns ``None`` when the event is allowed.
    """
    check_state_independent(rv, ev)
    if ev.get("type") == CREATE:
        return  # rule 1 allowed it
    create = auth_state.get(CREATE_KEY)
    if create is None:
        path = ("room_id",) if rv.room_id_is_create_event_hash else ("auth_events", "no_create")
        raise fail(rv, path, "no m.room.create event in the auth state")
    if rv.room_id_is_create_event_hash:
        # v12 rule 2: the room id is the create event's id with "!" for "$".
        create_id = create.get("event_id")
        if not isinstance(create_id, str) or ev.get("room_id") != "!" + create_id[1:]:
            raise fail(rv, ("room_id",), "room_id is not the create event's id")

    sender = ev.get("sender")
    # 3 (v12: 4): m.federate = false keeps other servers out.
    if content_of(create).get("m.federate") is False and \
            domain_of(sender) != domain_of(create.get("sender")):
        raise fail(rv, ("federate",), "room is not federated and sender is from another server")

    ev_type = ev.get("type")
    if ev_type == ALIASES and rv.special_case_aliases_auth:
        _check_aliases(rv, ev)
        return
    if ev_type == MEMBER:
        check_membership(rv, ev, auth_state)
        return

    # 5 (v1–v5: 6, v12: 6): the sender must be joined.
    if membership_of(auth_state, sender) != "join":
        raise fail(rv, ("sender_joined",), "sender is not joined to the room")

    pl_ev = auth_state.get(POWER_LEVELS_KEY)
    pl = content_of(pl_ev) if pl_ev is not None else None
    sender_level = get_user_level(rv, create, pl, sender)  # type: ignore[arg-type]

    if ev_type == THIRD_PARTY_INVITE:
        # 6 (v1–v5: 7, v12: 7): m.room.third_party_invite needs the invite level.
        if sender_level >= get_named_level(pl, "invite", None, rv=rv):
            return
        raise fail(rv, ("third_party_invite",), "sender's level is below the invite level")

    # 7 (v1–v5: 8, v12: 8): the event type's required power level.
    required = get_event_level(pl, ev_type, is_state_event(ev), rv=rv)  # type: ignore[arg-type]
    if required > sender_level:
        raise fail(rv, ("required_level",),
                   f"{ev_type} needs level {required}, sender has {sender_level}")

    # 8 (v1–v5: 9, v12: 9): state keys starting with "@" belong to that user.
    state_key = ev.get("state_key")
    if isinstance(state_key, str) and state_key.startswith("@") and state_key != sender:
        raise fail(rv, ("state_key",), "state_key names another user")

    if ev_type == POWER_LEVELS:
        # 9 (v1–v5: 10, v12: 10).
        check_power_levels(rv, ev, auth_state)
        return

    if ev_type == REDACTION and rv.event_format == EventFormat.V1:
        _check_redaction_v1(rv, ev, sender_level, pl)
        return
    # 10 (v1–v2: 12, v3–v5: 11, v12: 11): allow.


def _check_aliases(rv: RoomVersion, ev: Event) -> None:
    """v1–v5 rule 4: ``m.room.aliases`` is keyed by the sender's server."""
    # 4.1: needs a state_key.
    if not is_state_event(ev):
        raise fail(rv, ("aliases", "no_state_key"), "m.room.aliases without a state_key")
    # 4.2: the state_key is the sender's domain.
    if ev["state_key"] != domain_of(ev.get("sender")):
        raise fail(rv, ("aliases", "domain"), "state_key is not the sender's domain")
    # 4.3: allow.


def _check_redaction_v1(rv: RoomVersion, ev: Event, sender_level: float,
                        pl: Any) -> None:
    """v1–v2 rule 11: redact level, or redacting an event from one's own server."""
    # 11.1: redact level.
    if sender_level >= get_named_level(pl, "redact", None, rv=rv):
        return
    # 11.2: the redacted event's id has the redaction's domain.
    own = domain_of(ev.get("event_id"))
    if own is not None and own == domain_of(ev.get("redacts")):
        return
    # 11.3: otherwise reject.
    raise fail(rv, ("redaction", "reject"), "sender may not redact that event")


def may_redact(rv: RoomVersion, sender: str, target_sender: str | None,
               auth_state: AuthState) -> bool:
    """Whether ``sender`` may redact an event sent by ``target_sender`` (``None``: an event
    the server does not have): its own events always, anyone's with the ``redact`` level.

    Spec: client-server-api "Redactions" (a user needs the ``redact`` level to redact other
    users' events) and the v3+ note of the auth rules ("the server must check ... before
    applying the redaction").  The auth rules alone let any joined user send a redaction in
    v3+ (and a same-server one in v1–v2), so the sending server applies this on top.
    """
    if target_sender is not None and target_sender == sender:
        return True
    create = auth_state.get(CREATE_KEY)
    if create is None:
        return False
    pl_ev = auth_state.get(POWER_LEVELS_KEY)
    pl = content_of(pl_ev) if pl_ev is not None else None
    return get_user_level(rv, create, pl, sender) >= get_named_level(pl, "redact", None, rv=rv)
