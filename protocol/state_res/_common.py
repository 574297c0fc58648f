"""Pieces shared by the state-resolution algorithms (v1, v2, v2.1).

Owns: reading the ids out of an event's ``auth_events`` in both wire formats, a memoising
event lookup, the ``pause`` throttle, the split into unconflicted and conflicted state, and
the auth check of one event against a partial state (rooms/v2.md "Iterative auth checks":
the keys of the auth events selection, server-server-api "Auth events selection", taken
from the state, else from the event's own auth events) via ``protocol.auth.check_auth``.  Pure: no I/O, no clock, no gevent.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from protocol.auth import AuthError, check_auth
from protocol.events import auth_types_for_event
from protocol.room_versions import RoomVersion

Event = Mapping[str, Any]
StateKey = tuple[str, str]
StateMap = Mapping[StateKey, str]
GetEvent = Callable[[str], Event | None]

CREATE_KEY: StateKey = ("m.room.create", "")
POWER_LEVELS_KEY: StateKey = ("m.room.power_levels", "")
JOIN_RULES_KEY: StateKey = ("m.room.join_rules", "")

#: How many loop iterations may run between two calls of ``pause``.
PAUSE_EVERY = 200


class Pauser:
    """Calls ``pause`` once every :data:`PAUSE_EVERY` ticks (never, if ``pause`` is None)."""

    __slots__ = ("_pause", "_left")

    def __init__(self, pause: Callable[[], None] | None) -> None:
        self._pause = pause
        self._left = PAUSE_EVERY

    def tick(self) -> None:
        if self._pause is None:
            return
        self._left -= 1
        if self._left <= 0:
            self._left = PAUSE_EVERY
            self._pause()


class EventCache:
    """Memoises ``get_event`` for one resolution (events are looked up many times)."""

    __slots__ = ("_get", "_seen")

    def __init__(self, get_event: GetEvent) -> None:
        self._get = get_event
        self._seen: dict[str, Event | None] = {}

    def __call__(self, event_id: str) -> Event | None:
        try:
            return self._seen[event_id]
        except KeyError:
            ev = self._get(event_id)
            self._seen[event_id] = ev
            return ev


def ids_of(refs: Any) -> list[str]:
    """Event ids of a ``prev_events`` / ``auth_events`` list.

    Rooms v1–v2 (event format 1) list ``[event_id, {hashes}]`` pairs, later versions plain ids.
    """
    if not isinstance(refs, list):
        return []
    out: list[str] = []
    for ref in refs:
        if isinstance(ref, str):
            out.append(ref)
        elif isinstance(ref, (list, tuple)) and ref and isinstance(ref[0], str):
            out.append(ref[0])
    return out


def auth_ids(ev: Event) -> list[str]:
    return ids_of(ev.get("auth_events"))


def state_key_of(ev: Event) -> StateKey | None:
    sk = ev.get("state_key")
    typ = ev.get("type")
    if not isinstance(sk, str) or not isinstance(typ, str):
        return None
    return (typ, sk)


def content_of(ev: Event) -> Mapping[str, Any]:
    content = ev.get("content")
    return content if isinstance(content, Mapping) else {}


class AuthChecker:
    """Runs ``protocol.auth.check_auth`` for an event against a state of event ids.

    The state an event is checked against is, per key the auth rules may consult: the entry
    of ``state`` if present, else the event's own auth event for that key (rooms/v2.md,
    "Iterative auth checks"), and the room's create event for the create key.
    """

    def __init__(self, rv: RoomVersion, events: EventCache, create_ev: Event | None) -> None:
        self._rv = rv
        self._events = events
        self._create = create_ev

    def allowed(self, ev: Event, state: Mapping[StateKey, str]) -> bool:
        events = self._events
        own: dict[StateKey, Event] = {}
        for aid in auth_ids(ev):
            aev = events(aid)
            if aev is not None:
                key = state_key_of(aev)
                if key is not None:
                    own[key] = aev
        auth_state: dict[StateKey, Event] = {}
        keys = auth_types_for_event(self._rv, ev.get("type", ""), ev.get("sender", ""),
                                    ev.get("state_key"), content_of(ev))
        # The contract gives check_auth the create event always (also in v12).
        keys.add(CREATE_KEY)
        for key in keys:
            eid = state.get(key)
            found = events(eid) if eid is not None else None
            if found is None:
                found = own.get(key)
            if found is None and key == CREATE_KEY:
                found = self._create
            if found is not None:
                auth_state[key] = found
        try:
            check_auth(self._rv, ev, auth_state)
        except AuthError:
            return False
        return True


def find_create_event(
    state_sets: Iterable[StateMap], events: EventCache
) -> Event | None:
    """The room's create event: the create entry of the state sets, else (v12) the event
    whose id is the room id with sigil ``$``."""
    sets = list(state_sets)
    for state in sets:
        eid = state.get(CREATE_KEY)
        if eid is not None:
            ev = events(eid)
            if ev is not None:
                return ev
    for state in sets:
        for eid in state.values():
            ev = events(eid)
            room_id = ev.get("room_id") if ev is not None else None
            if isinstance(room_id, str) and room_id.startswith("!") and ":" not in room_id:
                create = events("$" + room_id[1:])
                if create is not None:
                    return create
            break
    return None


def split_conflicts(
    state_sets: list[StateMap], *, absent_conflicts: bool
) -> tuple[dict[StateKey, str], dict[StateKey, set[str]]]:
    """Split the state sets into the unconflicted state map and, per conflicted key, the set
    of its event ids.  ``absent_conflicts``: a key missing from some set is conflicted (v2);
    otherwise only differing ids conflict (v1)."""
    if not state_sets:
        return {}, {}
    all_keys: set[StateKey] = set()
    for state in state_sets:
        all_keys.update(state.keys())
    unconflicted: dict[StateKey, str] = {}
    conflicted: dict[StateKey, set[str]] = {}
    n = len(state_sets)
    for key in all_keys:
        ids = set()
        present = 0
        for state in state_sets:
            eid = state.get(key)
            if eid is not None:
                ids.add(eid)
                present += 1
        if len(ids) == 1 and (present == n or not absent_conflicts):
            unconflicted[key] = next(iter(ids))
        else:
            conflicted[key] = ids
    return unconflicted, conflicted
