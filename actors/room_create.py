"""Planning ``POST /createRoom`` (client-server-api "Creation"): from the request body to the
create event's content and the ordered list of initial events.  Pure: no I/O, no actors."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

from atrium.errors import MatrixError
from protocol.ids import is_valid_user_id, server_of
from protocol.room_versions import RoomVersion

from actors.room_messages import EventSpec

PRESETS = {
    "public_chat": {"join_rule": "public", "history_visibility": "shared",
                    "guest_access": "forbidden", "invitees_are_admins": False},
    "private_chat": {"join_rule": "invite", "history_visibility": "shared",
                     "guest_access": "can_join", "invitees_are_admins": False},
    "trusted_private_chat": {"join_rule": "invite", "history_visibility": "shared",
                             "guest_access": "can_join", "invitees_are_admins": True},
}

#: State types that createRoom's dedicated parameters set; initial_state may not override
#: the ones the spec reserves (create, member, power levels are handled specially).
_RESERVED_INITIAL = {("m.room.create", ""), ("m.room.power_levels", "")}


@dataclass(frozen=True)
class RoomPlan:
    create_content: dict[str, Any]
    initial: tuple[EventSpec, ...]
    is_public: bool
    alias: str | None
    #: invitees of other servers: invited after the room exists, through the invite path
    #: that has their server countersign (server-server-api "Inviting to a room")
    remote_invites: tuple[str, ...] = ()


def _bad(msg: str, code: str = "M_BAD_JSON") -> MatrixError:
    return MatrixError(400, code, msg)


def plan_room(rv: RoomVersion, creator: str, server_name: str, body: Mapping[str, Any], *,
              creator_profile: Mapping[str, Any] | None = None) -> RoomPlan:
    visibility = body.get("visibility", "private")
    if visibility not in ("public", "private"):
        raise _bad("visibility must be 'public' or 'private'", "M_INVALID_PARAM")
    preset_name = body.get("preset")
    if preset_name is None:
        preset_name = "public_chat" if visibility == "public" else "private_chat"
    if not isinstance(preset_name, str) or preset_name not in PRESETS:
        raise _bad(f"Unknown preset {preset_name!r}", "M_INVALID_PARAM")
    preset = PRESETS[preset_name]

    creation = body.get("creation_content")
    if creation is None:
        creation = {}
    if not isinstance(creation, dict):
        raise _bad("creation_content must be an object")
    create_content = copy.deepcopy(creation)
    create_content["room_version"] = rv.identifier
    if rv.implicit_room_creator:
        create_content.pop("creator", None)
    else:
        create_content["creator"] = creator
    additional = create_content.get("additional_creators")
    if rv.privileged_creators and additional is not None:
        if not isinstance(additional, list) or not all(
                isinstance(u, str) and is_valid_user_id(u) for u in additional):
            raise _bad("additional_creators must be a list of user ids", "M_INVALID_PARAM")

    invites = body.get("invite", [])
    if not isinstance(invites, list) or not all(isinstance(u, str) for u in invites):
        raise _bad("invite must be a list of user ids")
    for u in invites:
        if not is_valid_user_id(u):
            raise _bad(f"Invalid user id in invite: {u!r}", "M_INVALID_PARAM")
    remote_invites = tuple(dict.fromkeys(u for u in invites if server_of(u) != server_name))
    if rv.privileged_creators and preset["invitees_are_admins"] and invites:
        # v12 (client-server-api createRoom, trusted_private_chat): the invitees get the
        # creator's power by being creators too
        extra = list(additional or [])
        extra += [u for u in dict.fromkeys(invites) if u != creator and u not in extra]
        if extra:
            create_content["additional_creators"] = extra
            additional = extra
    creators = {creator} | (set(additional) if rv.privileged_creators and additional else set())
    is_direct = body.get("is_direct", False)
    if not isinstance(is_direct, bool):
        raise _bad("is_direct must be a boolean")

    initial_state = body.get("initial_state", [])
    if not isinstance(initial_state, list):
        raise _bad("initial_state must be a list")
    for ev in initial_state:
        if not (isinstance(ev, dict) and isinstance(ev.get("type"), str)
                and isinstance(ev.get("content"), dict)
                and isinstance(ev.get("state_key", ""), str)):
            raise _bad("initial_state entries need type, content and a string state_key")
        if "\x00" in ev["type"] or "\x00" in ev.get("state_key", ""):
            raise _bad("initial_state type and state_key may not contain NUL",
                       "M_INVALID_PARAM")

    override = body.get("power_level_content_override")
    if override is not None and not isinstance(override, dict):
        raise _bad("power_level_content_override must be an object")

    alias = None
    alias_name = body.get("room_alias_name")
    if alias_name is not None:
        if not isinstance(alias_name, str) or not alias_name or any(
                c in alias_name for c in ":# \t\n\x00") or len(alias_name) > 200:
            raise _bad("room_alias_name is not a valid alias localpart", "M_INVALID_PARAM")
        alias = f"#{alias_name}:{server_name}"

    for key in ("name", "topic"):
        if key in body and not isinstance(body[key], str):
            raise _bad(f"{key} must be a string")

    specs: list[EventSpec] = []

    def state(etype: str, content: dict[str, Any], key: str = "") -> None:
        specs.append(EventSpec(type=etype, sender=creator, content=content, state_key=key))

    member = {"membership": "join"}
    for k in ("displayname", "avatar_url"):
        if creator_profile and isinstance(creator_profile.get(k), str):
            member[k] = creator_profile[k]
    state("m.room.member", member, creator)

    pl: dict[str, Any] = {
        "users": {} if rv.privileged_creators else {creator: 100},
        "users_default": 0,
        "events": {
            "m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": 100,
            "m.room.server_acl": 100, "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 50 if preset_name == "public_chat" else 0,
        "historical": 100,
        "notifications": {"room": 50},
    }
    if preset["invitees_are_admins"]:
        for u in invites:
            if u not in creators or not rv.privileged_creators:
                pl["users"][u] = 100
    if override:
        for k, v in override.items():
            pl[k] = copy.deepcopy(v)
    if rv.privileged_creators and isinstance(pl.get("users"), dict):
        for c in creators:
            pl["users"].pop(c, None)
    state("m.room.power_levels", pl)

    if alias is not None:
        state("m.room.canonical_alias", {"alias": alias})

    given = {(ev["type"], ev.get("state_key", "")) for ev in initial_state}
    if ("m.room.join_rules", "") not in given:
        state("m.room.join_rules", {"join_rule": preset["join_rule"]})
    if ("m.room.history_visibility", "") not in given:
        state("m.room.history_visibility", {"history_visibility": preset["history_visibility"]})
    if ("m.room.guest_access", "") not in given and preset["guest_access"] != "forbidden":
        state("m.room.guest_access", {"guest_access": preset["guest_access"]})

    for ev in initial_state:
        key = (ev["type"], ev.get("state_key", ""))
        if key in _RESERVED_INITIAL or ev["type"] == "m.room.member":
            raise _bad(f"initial_state may not contain {key[0]}", "M_INVALID_PARAM")
        state(ev["type"], copy.deepcopy(ev["content"]), key[1])

    if "name" in body:
        state("m.room.name", {"name": body["name"]})
    if "topic" in body:
        state("m.room.topic", {"topic": body["topic"],
                               "m.topic": [{"mimetype": "text/plain", "body": body["topic"]}]})

    for u in invites:
        if u in remote_invites:
            continue
        content: dict[str, Any] = {"membership": "invite"}
        if is_direct:
            content["is_direct"] = True
        specs.append(EventSpec(type="m.room.member", sender=creator, content=content,
                               state_key=u))

    return RoomPlan(create_content=create_content, initial=tuple(specs),
                    is_public=visibility == "public", alias=alias,
                    remote_invites=remote_invites)
