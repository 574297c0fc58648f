"""Shared pieces of the authorization rules: the error, rule numbering, small accessors.

The spec numbers the rules differently per room version (v1–v2 have an ``m.room.aliases``
rule 4 and a redaction rule 11; v6 dropped the aliases rule; v7 inserted a ``knock``
membership; v8 inserted ``join_authorised_via_users_server`` as 4.2; v10 inserted two
power-levels rules; v12 inserted the room-id rule 2 and power-levels rule 10.4).  Code names
rules symbolically and :func:`rule` turns the path into the number the spec uses for that
version, so every :class:`AuthError` cites the right number.
"""
from __future__ import annotations

from typing import Any, Mapping

from protocol.ids import IdError, server_of
from protocol.room_versions import EventFormat, RoomVersion

Event = Mapping[str, Any]
StateKey = tuple[str, str]
AuthState = Mapping[StateKey, Event]

CREATE = "m.room.create"
MEMBER = "m.room.member"
JOIN_RULES = "m.room.join_rules"
POWER_LEVELS = "m.room.power_levels"
THIRD_PARTY_INVITE = "m.room.third_party_invite"
ALIASES = "m.room.aliases"
REDACTION = "m.room.redaction"

CREATE_KEY: StateKey = (CREATE, "")
POWER_LEVELS_KEY: StateKey = (POWER_LEVELS, "")
JOIN_RULES_KEY: StateKey = (JOIN_RULES, "")

#: content key of restricted joins (rooms v8+)
JAUVUS = "join_authorised_via_users_server"


class AuthError(Exception):
    """An event fails the authorization rules; ``rule`` is the spec's number (e.g. "5.2.3")."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"auth rule {rule}: {message}")
        self.rule = rule
        self.reason = message


# --- rule numbering --------------------------------------------------------------------


def _top(rv: RoomVersion) -> list[str]:
    names = ["create"]
    if rv.room_id_is_create_event_hash:
        names.append("room_id")
    names += ["auth_events", "federate"]
    if rv.special_case_aliases_auth:
        names.append("aliases")
    names += ["member", "sender_joined", "third_party_invite", "required_level", "state_key",
              "power_levels"]
    if rv.event_format == EventFormat.V1:
        names.append("redaction")
    names.append("allow")
    return names


def _create(rv: RoomVersion) -> list[str]:
    if rv.room_id_is_create_event_hash:
        return ["prev_events", "has_room_id", "room_version", "additional_creators", "allow"]
    names = ["prev_events", "room_id_domain", "room_version"]
    if not rv.implicit_room_creator:
        names.append("creator")
    return names + ["allow"]


def _member(rv: RoomVersion) -> list[str]:
    names = ["shape"]
    if rv.restricted_join_rule:
        names.append("authorised_via")
    names += ["join", "invite", "leave", "ban"]
    if rv.knock_join_rule:
        names.append("knock")
    return names + ["unknown"]


def _join(rv: RoomVersion) -> list[str]:
    names = ["creator", "sender_is_target", "banned", "invite_rule"]
    if rv.restricted_join_rule:
        names.append("restricted")
    return names + ["public", "reject"]


def _power_levels(rv: RoomVersion) -> list[str]:
    names = []
    if rv.enforce_int_power_levels:
        names += ["int_fields", "int_maps"]
    names.append("users")
    if rv.privileged_creators:
        names.append("creators_in_users")
    return names + ["no_previous", "named", "events_removed", "events_added", "users_removed",
                    "users_added", "allow"]


# The spec's v12 rule 3 skips "4" (3.3 is followed by 3.5); the numbers below follow it.
_AUTH_EVENTS = {"duplicate": "1", "selection": "2", "rejected": "3", "no_create": "4",
                "room_id": "5"}
_THIRD_PARTY = ["target_banned", "signed", "mxid_token", "mxid", "event", "sender",
                "signature", "reject"]
_INVITE = ["third_party", "sender_joined", "target", "level", "reject"]
_LEAVE = ["self", "sender_joined", "unban", "kick", "reject"]
_BAN = ["sender_joined", "level", "reject"]
_KNOCK = ["join_rule", "sender_is_target", "membership", "reject"]
_RESTRICTED = ["member", "authoriser", "allow"]


def rule(rv: RoomVersion, *path: str) -> str:
    """The spec's number for a rule path, e.g. ``rule(V1, "member", "join", "banned")``
    is ``"5.2.3"`` while for V12 it is ``"5.3.3"``."""
    top = path[0]
    parts = [str(_top(rv).index(top) + 1)]
    rest = path[1:]
    if not rest:
        return parts[0]
    if top == "create":
        parts.append(str(_create(rv).index(rest[0]) + 1))
    elif top == "auth_events":
        parts.append(_AUTH_EVENTS[rest[0]])
    elif top == "aliases":
        parts.append(str(["no_state_key", "domain", "allow"].index(rest[0]) + 1))
    elif top == "power_levels":
        parts.append(str(_power_levels(rv).index(rest[0]) + 1))
        if len(rest) > 1:
            parts.append(rest[1])  # "1"/"2" of 9.3, current/new value
    elif top == "redaction":
        parts.append(str(["level", "domain", "reject"].index(rest[0]) + 1))
    elif top == "member":
        parts.append(str(_member(rv).index(rest[0]) + 1))
        sub = {"join": _join(rv), "invite": _INVITE, "leave": _LEAVE, "ban": _BAN,
               "knock": _KNOCK}.get(rest[0])
        if len(rest) > 1 and sub is not None:
            parts.append(str(sub.index(rest[1]) + 1))
            if len(rest) > 2:
                third = _RESTRICTED if rest[1] == "restricted" else _THIRD_PARTY
                parts.append(str(third.index(rest[2]) + 1))
        elif len(rest) > 1:
            parts.append(rest[1])
    return ".".join(parts)


def fail(rv: RoomVersion, path: tuple[str, ...], message: str) -> AuthError:
    """An :class:`AuthError` citing ``path``'s number in ``rv``'s rules."""
    return AuthError(rule(rv, *path), f"{message} (room v{rv.identifier})")


# --- accessors ---------------------------------------------------------------------------


def domain_of(id_: Any) -> str | None:
    """The server part of a sigil id, ``None`` if it has none (or is not a string)."""
    if not isinstance(id_, str):
        return None
    try:
        return server_of(id_)
    except IdError:
        # Tolerant fallback for ids whose server part the strict grammar refuses: the
        # rules only ever compare domains, so take everything after the first colon.
        _, sep, domain = id_.partition(":")
        return domain if sep else None


def content_of(ev: Event | None) -> Mapping[str, Any]:
    content = ev.get("content") if ev is not None else None
    return content if isinstance(content, Mapping) else {}


def membership_of(state: AuthState, user_id: Any) -> str | None:
    """``user_id``'s current membership in ``state`` (``None`` when it has no member event)."""
    if not isinstance(user_id, str):
        return None
    ev = state.get((MEMBER, user_id))
    membership = content_of(ev).get("membership")
    return membership if isinstance(membership, str) else None


def event_ids(refs: Any) -> list[str]:
    """Event ids of a ``prev_events``/``auth_events`` list, in either wire format
    (v1/v2 ``[id, {hashes}]`` pairs or plain ids); malformed entries are skipped."""
    if not isinstance(refs, list):
        return []
    out: list[str] = []
    for ref in refs:
        if isinstance(ref, str):
            out.append(ref)
        elif isinstance(ref, (list, tuple)) and ref and isinstance(ref[0], str):
            out.append(ref[0])
    return out


def is_state_event(ev: Event) -> bool:
    return isinstance(ev.get("state_key"), str)
