"""The ``m.room.power_levels`` authorization rule (v1–v5: rule 10, v6–v11: rule 9, v12: 10).

Validates the new content (integer-ness per room version, user-id keys, v12's ban on naming
creators) and then compares it with the current power levels: nobody may add, change or
remove a level above their own, nor change another user at or above their own level.
"""
from __future__ import annotations

from typing import Any, Mapping

from protocol.auth_common import (
    CREATE_KEY,
    POWER_LEVELS_KEY,
    AuthState,
    Event,
    content_of,
    fail,
)
from protocol.ids import is_valid_user_id
from protocol.power_levels import PowerLevel, creators, get_user_level, parse_level
from protocol.room_versions import RoomVersion

NAMED_KEYS = ("users_default", "events_default", "state_default", "ban", "redact", "kick",
              "invite")

_MISSING = object()
_INVALID = object()


def check_power_levels(rv: RoomVersion, ev: Event, state: AuthState) -> None:
    """Raise :class:`AuthError` unless the power-levels event ``ev`` is allowed."""
    new = content_of(ev)
    p = "power_levels"

    if rv.enforce_int_power_levels:
        # v10 9.1: the named levels, if present, must be integers.
        for key in NAMED_KEYS:
            if key in new and parse_level(rv, new[key]) is None:
                raise fail(rv, (p, "int_fields"), f"{key!r} is not an integer")
        # v10 9.2: `events` and `notifications`, if present, map to integers.
        for key in ("events", "notifications"):
            if key in new and not _is_int_map(rv, new[key]):
                raise fail(rv, (p, "int_maps"), f"{key!r} is not an object of integers")

    # v1 10.1 / v6 9.1 / v10 9.3: `users` maps valid user ids to integers (v1–v9: or strings
    # holding integers).
    users = new.get("users", {})
    if not isinstance(users, Mapping):
        raise fail(rv, (p, "users"), "'users' is not an object")
    for user_id, level in users.items():
        if not is_valid_user_id(user_id):
            raise fail(rv, (p, "users"), f"{user_id!r} in 'users' is not a user id")
        if parse_level(rv, level) is None:
            raise fail(rv, (p, "users"), f"level of {user_id!r} is not an integer")

    create = state.get(CREATE_KEY)
    if rv.privileged_creators and create is not None:
        # v12 10.4: creators cannot be listed in `users` (their power is infinite).
        listed = creators(rv, create) & set(users)
        if listed:
            raise fail(rv, (p, "creators_in_users"),
                       f"room creator(s) {sorted(listed)} listed in 'users'")

    current_ev = state.get(POWER_LEVELS_KEY)
    if current_ev is None:
        # v1 10.2 / v6 9.2 / v10 9.4 / v12 10.5: no previous power levels event: allow.
        return
    current = content_of(current_ev)
    assert create is not None  # check_auth guarantees the create event
    sender_level = get_user_level(rv, create, current, ev["sender"])

    # v1 10.3 / v6 9.3 / v10 9.5 / v12 10.6: the named levels.
    for key in NAMED_KEYS:
        old_v, new_v = _level(rv, current, key), _level(rv, new, key)
        _check_alteration(rv, (p, "named"), key, old_v, new_v, sender_level)

    # v1 10.4–10.5 / v6 9.4–9.5 / v10 9.6–9.7 / v12 10.7–10.8: `events`, and from v6 on
    # also `notifications`.
    maps = ("events", "notifications") if rv.limit_notifications_power_levels else ("events",)
    for map_key in maps:
        old_map, new_map = _as_map(current.get(map_key)), _as_map(new.get(map_key))
        for key in sorted(set(old_map) | set(new_map)):
            old_v, new_v = _level(rv, old_map, key), _level(rv, new_map, key)
            if old_v == new_v:
                continue
            if isinstance(old_v, int) and old_v > sender_level:
                raise fail(rv, (p, "events_removed", "1"),
                           f"{map_key}[{key!r}]: current level {old_v} is above the "
                           f"sender's {sender_level}")
            if new_v is _INVALID:
                raise fail(rv, (p, "events_added", "1"), f"{map_key}[{key!r}] is not a level")
            if isinstance(new_v, int) and new_v > sender_level:
                raise fail(rv, (p, "events_added", "1"),
                           f"{map_key}[{key!r}]: new level {new_v} is above the sender's "
                           f"{sender_level}")

    # v1 10.6–10.7 / v6 9.6–9.7 / v10 9.8–9.9 / v12 10.9–10.10: `users`.
    old_users, new_users = _as_map(current.get("users")), _as_map(users)
    for user_id in sorted(set(old_users) | set(new_users)):
        old_v, new_v = _level(rv, old_users, user_id), _level(rv, new_users, user_id)
        if old_v == new_v:
            continue
        if user_id != ev["sender"] and isinstance(old_v, int) and old_v >= sender_level:
            raise fail(rv, (p, "users_removed", "1"),
                       f"cannot change {user_id}'s level {old_v}: not below the sender's "
                       f"{sender_level}")
        if isinstance(new_v, int) and new_v > sender_level:
            raise fail(rv, (p, "users_added", "1"),
                       f"cannot give {user_id} level {new_v}: above the sender's "
                       f"{sender_level}")
    # v1 10.8 / v6 9.8 / v10 9.10 / v12 10.11 ("10." in the spec's text): allow.


def _check_alteration(rv: RoomVersion, path: tuple[str, ...], key: str, old_v: object,
                      new_v: object, sender_level: PowerLevel) -> None:
    if old_v == new_v:
        return
    if isinstance(old_v, int) and old_v > sender_level:
        raise fail(rv, path + ("1",),
                   f"{key!r}: current level {old_v} is above the sender's {sender_level}")
    if new_v is _INVALID:
        raise fail(rv, path + ("2",), f"{key!r} is not a level")
    if isinstance(new_v, int) and new_v > sender_level:
        raise fail(rv, path + ("2",),
                   f"{key!r}: new level {new_v} is above the sender's {sender_level}")


def _level(rv: RoomVersion, content: Mapping[str, Any], key: str) -> object:
    """The parsed level under ``key``: an int, ``_MISSING`` or ``_INVALID``.

    An invalid *current* value can only exist in rooms before v10 (the first power-levels
    event's non-``users`` values are not validated there); it compares as "changed" and
    imposes no bound of its own.
    """
    if key not in content:
        return _MISSING
    level = parse_level(rv, content[key])
    return _INVALID if level is None else level


def _as_map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _is_int_map(rv: RoomVersion, value: Any) -> bool:
    return isinstance(value, Mapping) and all(parse_level(rv, v) is not None
                                              for v in value.values())
