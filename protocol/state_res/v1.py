"""State resolution v1 (room version 1).

Spec: rooms/v1.md "State resolution".  R starts as the union of the states without the
conflicting entries; conflicts are then resolved type by type — ``m.room.power_levels``,
``m.room.join_rules``, ``m.room.member`` (each key separately, keys in sorted order for
determinism), then everything else — each against the R built so far.

Two points the spec leaves open, decided here:

* "allowed by the authorisation rules for a room in state R": keys the rules need that R
  lacks (e.g. a sender whose own membership is still conflicted) are taken from the event's
  own auth events, as the v2 iterative auth checks do.
* A non-auth conflict where no candidate passes: the last candidate (lowest depth, highest
  sha1) is kept rather than dropping the key, as deployed v1 servers do, so we converge.
"""
from __future__ import annotations

import hashlib
from typing import Callable

from protocol.room_versions import RoomVersion
from protocol.state_res._common import (
    AuthChecker,
    Event,
    EventCache,
    GetEvent,
    Pauser,
    StateKey,
    StateMap,
    find_create_event,
    split_conflicts,
)

#: The auth-relevant types, in the order the spec resolves their conflicts.
_AUTH_TYPES = ("m.room.power_levels", "m.room.join_rules", "m.room.member")


def _depth(ev: Event) -> int:
    depth = ev.get("depth")
    return depth if isinstance(depth, int) else 0


def _sha1(event_id: str) -> str:
    return hashlib.sha1(event_id.encode("utf-8")).hexdigest()


def resolve(
    rv: RoomVersion,
    state_sets: list[StateMap],
    get_event: GetEvent,
    *,
    pause: Callable[[], None] | None = None,
) -> dict[StateKey, str]:
    """The resolution of ``state_sets`` by the room-v1 algorithm."""
    ticker = Pauser(pause)
    events = EventCache(get_event)
    unconflicted, conflicted = split_conflicts(state_sets, absent_conflicts=False)
    resolved: dict[StateKey, str] = dict(unconflicted)
    if not conflicted:
        return resolved
    checker = AuthChecker(rv, events, find_create_event(state_sets, events))

    def known(ids: set[str]) -> list[tuple[str, Event]]:
        out = []
        for eid in ids:
            ev = events(eid)
            if ev is not None:
                out.append((eid, ev))
        return out

    for typ in _AUTH_TYPES:
        for key in sorted(k for k in conflicted if k[0] == typ):
            # Ascending depth, then descending sha1(event_id).
            candidates = sorted(known(conflicted[key]), key=lambda c: _sha1(c[0]), reverse=True)
            candidates.sort(key=lambda c: _depth(c[1]))
            if not candidates:
                continue
            resolved[key] = candidates[0][0]
            for eid, ev in candidates[1:]:
                ticker.tick()
                if not checker.allowed(ev, resolved):
                    break
                resolved[key] = eid

    for key in sorted(k for k in conflicted if k[0] not in _AUTH_TYPES):
        # Descending depth, then ascending sha1(event_id).
        candidates = sorted(known(conflicted[key]), key=lambda c: _sha1(c[0]))
        candidates.sort(key=lambda c: _depth(c[1]), reverse=True)
        if not candidates:
            continue
        chosen = candidates[-1][0]
        for eid, ev in candidates:
            ticker.tick()
            if checker.allowed(ev, resolved):
                chosen = eid
                break
        resolved[key] = chosen
    return resolved
