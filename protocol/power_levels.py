"""Power levels: who may do what in a room.

Owns reading an ``m.room.power_levels`` content (a user's level, the level an event type
needs, the named levels ``ban``/``kick``/``redact``/``invite``/``*_default`` and the
``notifications`` levels), the defaults when a room has no power-levels event, the room
creators, and parsing a power-level value the way each room version allows.

Spec: client-server-api ``m.room.power_levels``; rooms/fragments/v1-stringy-power-levels.md and
v1-floaty-power-levels.md (v1–v5 accept ``"50"`` and ``50.7``; v6–v9 accept ``"50"``);
rooms/v10.md (integers only); rooms/v12.md (creators have infinite power).

Functions take the power-levels *content* (or ``None`` when the room has none), never the
event.  A value that is not valid for the room version is treated as absent when *reading*
levels (the auth rules reject such values when the power-levels event itself is checked).
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

from protocol.room_versions import RoomVersion

#: The power level of a room creator in room versions with ``privileged_creators`` (v12).
CREATOR_POWER_LEVEL: float = math.inf

#: Spec defaults of the named levels when the key (or the whole event) is absent.
NAMED_LEVEL_DEFAULTS: Mapping[str, int] = {
    "ban": 50,
    "kick": 50,
    "redact": 50,
    "invite": 0,
    "state_default": 50,
    "events_default": 0,
    "users_default": 0,
}

#: Default level of a ``notifications`` key (only ``room`` is specified; 50).
NOTIFICATION_LEVEL_DEFAULT = 50

#: Level of the creator(s) in rooms without a power-levels event (v1–v11).
DEFAULT_CREATOR_LEVEL = 100

_MAX_SAFE = 2**53 - 1
# v1–v9 "stringy" integers: optional surrounding whitespace, one optional sign, base-10 digits.
_INT_STRING = re.compile(r"\s*[+-]?[0-9]+\s*")

PowerLevel = int | float  # float only ever as CREATOR_POWER_LEVEL (infinity)


def parse_level(rv: RoomVersion | None, value: Any) -> int | None:
    """Parse one power-level value as ``rv`` allows it; ``None`` when it is not valid.

    v10+ (``enforce_int_power_levels``): JSON integers only.  v6–v9: integers or strings
    holding an integer.  v1–v5 (no strict canonical JSON): additionally finite floats,
    truncated toward zero.  ``rv=None`` means "lenient": integers or integer strings.
    Booleans are never levels (JSON ``true`` is not an integer).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if rv is not None and rv.enforce_int_power_levels:
        return None
    if isinstance(value, str):
        if not _INT_STRING.fullmatch(value):
            return None
        return int(value.strip())
    if isinstance(value, float) and rv is not None and not rv.strict_canonicaljson:
        if math.isfinite(value):
            return int(value)
    return None


def is_safe_int(value: int) -> bool:
    """Whether ``value`` lies in canonical JSON's integer range."""
    return -_MAX_SAFE <= value <= _MAX_SAFE


def creators(rv: RoomVersion, create_ev: Mapping[str, Any]) -> set[str]:
    """The room creators named by the create event.

    v1–v10: ``content.creator``.  v11 (``implicit_room_creator``): the create event's
    ``sender``.  v12 (``privileged_creators``): the sender plus ``content.additional_creators``.
    """
    content = create_ev.get("content")
    if not isinstance(content, Mapping):
        content = {}
    if not rv.implicit_room_creator:
        creator = content.get("creator")
        return {creator} if isinstance(creator, str) else set()
    found: set[str] = set()
    sender = create_ev.get("sender")
    if isinstance(sender, str):
        found.add(sender)
    if rv.privileged_creators:
        extra = content.get("additional_creators")
        if isinstance(extra, list):
            found.update(u for u in extra if isinstance(u, str))
    return found


def get_user_level(
    rv: RoomVersion,
    create_ev: Mapping[str, Any],
    pl_content_or_none: Mapping[str, Any] | None,
    user_id: str,
) -> PowerLevel:
    """The power level of ``user_id``.

    v12 creators: infinite, whatever the power levels say.  No power-levels event: the
    creator(s) get 100, everyone else 0.  Otherwise ``users[user_id]``, else
    ``users_default``, else 0.
    """
    room_creators = creators(rv, create_ev)
    if rv.privileged_creators and user_id in room_creators:
        return CREATOR_POWER_LEVEL
    if pl_content_or_none is None:
        return DEFAULT_CREATOR_LEVEL if user_id in room_creators else 0
    users = pl_content_or_none.get("users")
    if isinstance(users, Mapping) and user_id in users:
        level = parse_level(rv, users[user_id])
        if level is not None:
            return level
    return get_named_level(pl_content_or_none, "users_default", 0, rv=rv)


def get_event_level(
    pl: Mapping[str, Any] | None,
    type: str,
    is_state: bool,
    *,
    rv: RoomVersion | None = None,
) -> int:
    """The *required power level* for an event of ``type``.

    ``events[type]`` if set, else ``state_default`` (50) for state events or
    ``events_default`` (0) for others — the same defaults apply when ``pl`` is ``None``.
    """
    if pl is not None:
        events = pl.get("events")
        if isinstance(events, Mapping) and type in events:
            level = parse_level(rv, events[type])
            if level is not None:
                return level
    name = "state_default" if is_state else "events_default"
    return get_named_level(pl, name, None, rv=rv)


def get_named_level(
    pl: Mapping[str, Any] | None,
    name: str,
    default: int | None = None,
    *,
    rv: RoomVersion | None = None,
) -> int:
    """A top-level level (``ban``, ``kick``, ``redact``, ``invite``, ``state_default``,
    ``events_default``, ``users_default``); ``default=None`` means the spec default."""
    if default is None:
        default = NAMED_LEVEL_DEFAULTS.get(name, 0)
    if pl is None or name not in pl:
        return default
    level = parse_level(rv, pl[name])
    return default if level is None else level


def get_notification_level(
    pl: Mapping[str, Any] | None,
    key: str = "room",
    default: int = NOTIFICATION_LEVEL_DEFAULT,
    *,
    rv: RoomVersion | None = None,
) -> int:
    """The level needed to trigger the notification ``key`` (``room`` = ``@room``)."""
    if pl is None:
        return default
    notifications = pl.get("notifications")
    if not isinstance(notifications, Mapping) or key not in notifications:
        return default
    level = parse_level(rv, notifications[key])
    return default if level is None else level
