"""Room versions 1–12 as data.

Each room version is one frozen :class:`RoomVersion`; the differences between versions that
the rest of ``protocol/`` cares about are flags on it, so code asks ``rv.knock_join_rule``
instead of comparing version strings.  Spec: rooms/v1.md … rooms/v12.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


class EventFormat:
    """How events and their ids look on the wire."""

    V1 = 1  # rooms v1, v2: event_id inside the event, "$opaque:server"; prev/auth as [id, {hashes}]
    V2 = 2  # room v3: event id = "$" + base64(reference hash); prev/auth as lists of ids
    V3 = 3  # rooms v4+: as V2 but URL-safe base64


class StateRes:
    V1 = "v1"
    V2 = "v2"
    V2_1 = "v2.1"  # room v12


@dataclass(frozen=True)
class RoomVersion:
    identifier: str
    stable: bool
    event_format: int
    state_res: str
    # v5+: a server key's valid_until_ts is enforced for event signatures
    enforce_key_validity: bool
    # v1–v5: m.room.aliases has its own auth rule (state_key must be the sender's domain)
    special_case_aliases_auth: bool
    # v6+: canonical JSON is strict (integers in [-(2**53)+1, 2**53-1], no floats)
    strict_canonicaljson: bool
    # v6+: the `notifications` key of m.room.power_levels is checked like `events`
    limit_notifications_power_levels: bool
    # v7+: join rule "knock" and membership "knock"
    knock_join_rule: bool
    # v8+: join rule "restricted" and join_authorised_via_users_server
    restricted_join_rule: bool
    # v9+: redaction keeps join_authorised_via_users_server on m.room.member
    restricted_join_rule_fix: bool
    # v10+: join rule "knock_restricted"
    knock_restricted_join_rule: bool
    # v10+: power level values must be integers (not strings holding integers)
    enforce_int_power_levels: bool
    # v11+: m.room.create has no `creator`; the sender of the create event is the creator
    implicit_room_creator: bool
    # v11+: the redaction algorithm of v11 (create keeps all content, redaction keeps
    # `redacts` in content, power_levels keeps `invite`, top-level origin/membership/
    # prev_state no longer kept)
    updated_redaction_rules: bool
    # v11+: `redacts` of m.room.redaction lives in content (top level kept for compatibility)
    redacts_in_content: bool
    # v12: room id is "!" + the create event's reference hash; the create event carries no
    # room_id and is not listed in auth_events
    room_id_is_create_event_hash: bool
    # v12: the create event's sender and content.additional_creators have infinite power
    privileged_creators: bool


def _v(identifier: str, **flags: object) -> RoomVersion:
    base = dict(
        stable=True,
        event_format=EventFormat.V3,
        state_res=StateRes.V2,
        enforce_key_validity=False,
        special_case_aliases_auth=False,
        strict_canonicaljson=False,
        limit_notifications_power_levels=False,
        knock_join_rule=False,
        restricted_join_rule=False,
        restricted_join_rule_fix=False,
        knock_restricted_join_rule=False,
        enforce_int_power_levels=False,
        implicit_room_creator=False,
        updated_redaction_rules=False,
        redacts_in_content=False,
        room_id_is_create_event_hash=False,
        privileged_creators=False,
    )
    base.update(flags)
    return RoomVersion(identifier=identifier, **base)  # type: ignore[arg-type]


_V6_UP = dict(
    enforce_key_validity=True,
    strict_canonicaljson=True,
    limit_notifications_power_levels=True,
)

V1 = _v("1", event_format=EventFormat.V1, state_res=StateRes.V1, special_case_aliases_auth=True)
V2 = _v("2", event_format=EventFormat.V1, special_case_aliases_auth=True)
V3 = _v("3", event_format=EventFormat.V2, special_case_aliases_auth=True)
V4 = _v("4", special_case_aliases_auth=True)
V5 = _v("5", special_case_aliases_auth=True, enforce_key_validity=True)
V6 = _v("6", **_V6_UP)
V7 = _v("7", **_V6_UP, knock_join_rule=True)
V8 = _v("8", **_V6_UP, knock_join_rule=True, restricted_join_rule=True)
V9 = _v("9", **_V6_UP, knock_join_rule=True, restricted_join_rule=True,
        restricted_join_rule_fix=True)
_V10_UP = dict(
    **_V6_UP,
    knock_join_rule=True,
    restricted_join_rule=True,
    restricted_join_rule_fix=True,
    knock_restricted_join_rule=True,
    enforce_int_power_levels=True,
)
V10 = _v("10", **_V10_UP)
_V11_UP = dict(**_V10_UP, implicit_room_creator=True, updated_redaction_rules=True,
               redacts_in_content=True)
V11 = _v("11", **_V11_UP)
V12 = _v("12", **_V11_UP, state_res=StateRes.V2_1, room_id_is_create_event_hash=True,
         privileged_creators=True)

KNOWN_ROOM_VERSIONS: Mapping[str, RoomVersion] = {
    rv.identifier: rv for rv in (V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12)
}

#: The version new rooms get unless the config says otherwise (as Synapse today).
DEFAULT_ROOM_VERSION = "12"


def get_room_version(identifier: str) -> RoomVersion | None:
    return KNOWN_ROOM_VERSIONS.get(identifier)
