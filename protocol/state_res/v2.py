"""State resolution v2 (room versions 2–11) and v2.1 (room version 12).

Spec: rooms/v2.md "State resolution" (rooms/fragments/v2-state-res.md) and rooms/v12.md
"State resolution".  v2.1 differs from v2 in exactly three places, each marked ``v2.1``
below: the *conflicted state subgraph* is computed and added to the *full conflicted set*,
and the first iterative auth checks start from an empty state map instead of the
unconflicted state map.

Read literally where implementations differ: step 1 enlarges the power events by *all*
events of their auth chains that are in the full conflicted set (not only those reachable
through it), and the DAG sorted in step 1 has an edge wherever one selected event is in
another's auth chain, also through unselected events.  Both coincide with the plain
"direct auth edges inside the set" reading whenever no path leaves the set.

Event dicts follow docs/protocol-contract.md; ``get_event`` returning ``None`` means the event
is unknown, and unknown events are left out of every step.  Every walk over the auth DAG is
iterative (auth chains are as deep as the room is old) and calls ``pause`` regularly.
"""
from __future__ import annotations

import heapq
import math
from typing import Callable, Iterable, Mapping

from protocol.power_levels import get_user_level
from protocol.room_versions import RoomVersion, StateRes
from protocol.state_res._common import (
    POWER_LEVELS_KEY,
    AuthChecker,
    Event,
    EventCache,
    GetEvent,
    Pauser,
    StateKey,
    StateMap,
    auth_ids,
    content_of,
    find_create_event,
    split_conflicts,
    state_key_of,
)


def resolve(
    rv: RoomVersion,
    state_sets: list[StateMap],
    get_event: GetEvent,
    *,
    pause: Callable[[], None] | None = None,
) -> dict[StateKey, str]:
    """The resolution of ``state_sets`` (rooms/v2.md "Algorithm", rooms/v12.md for v2.1)."""
    v21 = rv.state_res == StateRes.V2_1
    ticker = Pauser(pause)
    events = EventCache(get_event)
    unconflicted, conflicted = split_conflicts(state_sets, absent_conflicts=True)
    if not conflicted:
        return dict(unconflicted)

    conflicted_ids: set[str] = set()
    for ids in conflicted.values():
        conflicted_ids.update(ids)
    full = set(conflicted_ids)
    full |= auth_difference(state_sets, unconflicted, conflicted, events, ticker)
    if v21:
        full |= conflicted_state_subgraph(conflicted_ids, events, ticker)
    full = {eid for eid in full if events(eid) is not None}

    create_ev = find_create_event(state_sets, events)
    checker = AuthChecker(rv, events, create_ev)

    # Step 1: power events of the full conflicted set, with their auth chains within it.
    power = [eid for eid in full if is_power_event(events(eid))]  # type: ignore[arg-type]
    selected = _with_auth_ancestors(power, full, events, ticker)
    ordered = reverse_topological_power_order(rv, selected, events, create_ev, ticker)

    # Step 2 (v2.1: from an empty state map).
    partial: dict[StateKey, str] = {} if v21 else dict(unconflicted)
    iterative_auth_checks(checker, partial, ordered, events, ticker)

    # Steps 3–4: everything else, in mainline order of the partially resolved power levels.
    rest = [eid for eid in full if eid not in selected]
    ordered_rest = mainline_order(rest, partial.get(POWER_LEVELS_KEY), events, ticker)
    iterative_auth_checks(checker, partial, ordered_rest, events, ticker)

    # Step 5.
    partial.update(unconflicted)
    return partial


# --- definitions ------------------------------------------------------------------------


def is_power_event(ev: Event) -> bool:
    """*Power events*: power levels, join rules, and kicks/bans (a leave or ban of someone
    other than the sender)."""
    key = state_key_of(ev)
    if key is None:
        return False
    typ, sk = key
    if typ in ("m.room.power_levels", "m.room.join_rules"):
        return sk == ""
    if typ == "m.room.member":
        membership = content_of(ev).get("membership")
        return membership in ("leave", "ban") and ev.get("sender") != sk
    return False


def _walk_auth(
    starts: Iterable[str],
    events: EventCache,
    ticker: Pauser,
    stop: set[str] | frozenset[str] = frozenset(),
) -> set[str]:
    """Every event reachable from the auth events of ``starts`` (not ``starts`` themselves,
    unless reached), without entering ``stop``."""
    seen: set[str] = set()
    stack: list[str] = []
    for eid in starts:
        ev = events(eid)
        if ev is not None:
            stack.extend(auth_ids(ev))
    while stack:
        eid = stack.pop()
        if eid in seen or eid in stop:
            continue
        seen.add(eid)
        ticker.tick()
        ev = events(eid)
        if ev is not None:
            for aid in auth_ids(ev):
                if aid not in seen and aid not in stop:
                    stack.append(aid)
    return seen


def auth_difference(
    state_sets: list[StateMap],
    unconflicted: Mapping[StateKey, str],
    conflicted: Mapping[StateKey, set[str]],
    events: EventCache,
    ticker: Pauser,
) -> set[str]:
    """∪ Cᵢ − ∩ Cᵢ where Cᵢ is the full auth chain of state set Sᵢ.

    Every Cᵢ contains the auth chain C₀ of the unconflicted entries, so C₀ is walked once
    and Cᵢ = C₀ ∪ Dᵢ with Dᵢ the part reached from Sᵢ's conflicted entries outside C₀;
    then ∪ Cᵢ − ∩ Cᵢ = ∪ Dᵢ − ∩ Dᵢ.
    """
    common = _walk_auth(unconflicted.values(), events, ticker)
    parts: list[set[str]] = []
    for state in state_sets:
        seeds = [state[key] for key in conflicted if key in state]
        parts.append(_walk_auth(seeds, events, ticker, stop=common))
    union: set[str] = set().union(*parts)
    inter: set[str] = set(parts[0]).intersection(*parts[1:])
    return union - inter


def conflicted_state_subgraph(
    conflicted_ids: set[str], events: EventCache, ticker: Pauser
) -> set[str]:
    """v2.1: the events on an ``auth_events`` path from one conflicted event to another.

    An event is on such a path iff it is in the auth chain of a conflicted event and has a
    conflicted event in its own auth chain (or is itself conflicted).  ``reaches[e]`` is
    computed by one post-order walk over the auth chains of the conflicted events.
    """
    reaches: dict[str, bool] = {}
    visiting: set[str] = set()  # guards against auth cycles (possible with v1/v2 event ids)
    result: set[str] = set()
    for start in conflicted_ids:
        if start in reaches:
            continue
        stack: list[tuple[str, bool]] = [(start, False)]
        while stack:
            eid, expanded = stack.pop()
            ev = events(eid)
            parents = auth_ids(ev) if ev is not None else []
            if expanded:
                hit = any(p in conflicted_ids or reaches.get(p, False) for p in parents)
                reaches[eid] = hit
                if hit:
                    result.add(eid)
                continue
            if eid in reaches or eid in visiting:
                continue
            visiting.add(eid)
            ticker.tick()
            stack.append((eid, True))
            for p in parents:
                if p not in reaches:
                    stack.append((p, False))
    # Only events below some conflicted event count; the walk started from conflicted
    # events, so every event in ``reaches`` is one of them or in their auth chains.
    return result | conflicted_ids


def _with_auth_ancestors(
    power: list[str], full: set[str], events: EventCache, ticker: Pauser
) -> set[str]:
    """Step 1's set X: the power events plus their auth chains' events in ``full``."""
    chain = _walk_auth(power, events, ticker)
    return set(power) | (chain & full)


def _nearest_selected_ancestors(
    selected: set[str], events: EventCache, ticker: Pauser
) -> dict[str, set[str]]:
    """For each event of ``selected``, the selected events that are its nearest auth
    ancestors (walking through unselected events): the edges of the auth DAG on ``selected``."""
    memo: dict[str, frozenset[str]] = {}
    visiting: set[str] = set()  # guards against auth cycles (possible with v1/v2 event ids)

    def via(parents: list[str]) -> set[str]:
        out: set[str] = set()
        for p in parents:
            if p in selected:
                out.add(p)
            else:
                out |= memo.get(p, frozenset())
        return out

    # Post-order over unselected ancestors so memo[p] exists before it is needed.
    for start in selected:
        ev = events(start)
        stack: list[tuple[str, bool]] = [
            (p, False) for p in (auth_ids(ev) if ev is not None else [])
            if p not in selected and p not in memo
        ]
        while stack:
            eid, expanded = stack.pop()
            pev = events(eid)
            parents = auth_ids(pev) if pev is not None else []
            if expanded:
                memo[eid] = frozenset(via(parents))
                continue
            if eid in memo or eid in visiting:
                continue
            visiting.add(eid)
            ticker.tick()
            stack.append((eid, True))
            for p in parents:
                if p not in selected and p not in memo:
                    stack.append((p, False))
    edges: dict[str, set[str]] = {}
    for eid in selected:
        ev = events(eid)
        edges[eid] = via(auth_ids(ev)) if ev is not None else set()
    return edges


def sender_power_level(
    rv: RoomVersion, ev: Event, events: EventCache, create_ev: Event | None
) -> float:
    """The sender's power level "when looking at their auth_events": the power-levels event
    among them (none: creator defaults); v12 creators are infinitely powerful."""
    pl_content = None
    for aid in auth_ids(ev):
        aev = events(aid)
        if aev is not None and state_key_of(aev) == POWER_LEVELS_KEY:
            pl_content = content_of(aev)
            break
    if create_ev is None:
        return 0
    sender = ev.get("sender")
    if not isinstance(sender, str):
        return 0
    return get_user_level(rv, create_ev, pl_content, sender)


def reverse_topological_power_order(
    rv: RoomVersion,
    selected: set[str],
    events: EventCache,
    create_ev: Event | None,
    ticker: Pauser,
) -> list[str]:
    """Kahn's algorithm over the auth DAG on ``selected``, earliest first, always taking
    the smallest candidate by (greater sender power, smaller origin_server_ts, smaller
    event_id)."""
    parents = _nearest_selected_ancestors(selected, events, ticker)
    children: dict[str, list[str]] = {eid: [] for eid in selected}
    indegree: dict[str, int] = {}
    for eid, ps in parents.items():
        indegree[eid] = len(ps)
        for p in ps:
            children[p].append(eid)

    def sort_key(eid: str) -> tuple[float, int, str]:
        ev = events(eid)
        assert ev is not None
        level = sender_power_level(rv, ev, events, create_ev)
        ts = ev.get("origin_server_ts")
        return (-level, ts if isinstance(ts, int) else 0, eid)

    heap = [(sort_key(eid), eid) for eid, d in indegree.items() if d == 0]
    heapq.heapify(heap)
    out: list[str] = []
    while heap:
        _, eid = heapq.heappop(heap)
        out.append(eid)
        ticker.tick()
        for child in children[eid]:
            indegree[child] -= 1
            if indegree[child] == 0:
                heapq.heappush(heap, (sort_key(child), child))
    return out


def _power_levels_parent(eid: str, events: EventCache, cache: dict[str, str | None]) -> str | None:
    """The ``m.room.power_levels`` event among the auth events of ``eid``."""
    if eid in cache:
        return cache[eid]
    found = None
    ev = events(eid)
    if ev is not None:
        for aid in auth_ids(ev):
            aev = events(aid)
            if aev is not None and state_key_of(aev) == POWER_LEVELS_KEY:
                found = aid
                break
    cache[eid] = found
    return found


def mainline_order(
    event_ids: list[str], power_levels_id: str | None, events: EventCache, ticker: Pauser
) -> list[str]:
    """The *mainline ordering* based on ``power_levels_id``: events whose power-levels
    ancestry meets the mainline earlier (greater position) first, then origin_server_ts,
    then event_id.  Position ∞ when it never meets it."""
    parent_cache: dict[str, str | None] = {}
    position: dict[str, float] = {}
    pl = power_levels_id
    mainline: list[str] = []
    while pl is not None and pl not in position:
        position[pl] = len(mainline)
        mainline.append(pl)
        ticker.tick()
        pl = _power_levels_parent(pl, events, parent_cache)

    # Mainline positions of non-mainline power-levels events, memoised along each walk.
    found_cache: dict[str, float] = {}

    def mainline_position(eid: str) -> float:
        path: list[str] = []
        path_seen: set[str] = set()
        cur = _power_levels_parent(eid, events, parent_cache)
        result = math.inf
        while cur is not None and cur not in path_seen:
            path_seen.add(cur)
            if cur in position:
                result = position[cur]
                break
            if cur in found_cache:
                result = found_cache[cur]
                break
            path.append(cur)
            ticker.tick()
            cur = _power_levels_parent(cur, events, parent_cache)
        # A power-levels event off the mainline has the position of its first ancestor on it.
        for p in path:
            found_cache[p] = result
        return result

    def sort_key(eid: str) -> tuple[float, int, str]:
        ev = events(eid)
        assert ev is not None
        ts = ev.get("origin_server_ts")
        return (-mainline_position(eid), ts if isinstance(ts, int) else 0, eid)

    keyed = []
    for eid in event_ids:
        ticker.tick()
        keyed.append((sort_key(eid), eid))
    keyed.sort()
    return [eid for _, eid in keyed]


def iterative_auth_checks(
    checker: AuthChecker,
    state: dict[StateKey, str],
    ordered: list[str],
    events: EventCache,
    ticker: Pauser,
) -> None:
    """Apply each event of ``ordered`` to ``state`` (in place) if the auth rules allow it
    against ``state``, falling back to the event's own auth events for missing keys."""
    for eid in ordered:
        ticker.tick()
        ev = events(eid)
        if ev is None:
            continue
        key = state_key_of(ev)
        if key is None:
            continue
        if checker.allowed(ev, state):
            state[key] = eid
