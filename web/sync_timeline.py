"""One room's timeline slice and state section for /sync (client-server-api "Syncing").

* timeline: the newest ``limit`` visible events in (lo, hi]; ``limited`` when older matching
  events were left out; ``prev_batch`` is the /messages token just before the first one;
* state: for a full answer (initial sync, ``full_state``, a newly joined room) the whole state
  at the start of the timeline; for an incremental one, the entries of that state that differ
  from the state at ``since`` (so never an event already in the timeline);
* lazy-loading members: only member events of the timeline's senders (and heroes, and the
  syncing user on a full answer), minus those this device already has, unless
  ``include_redundant_members``.  What a device has is tracked per (user, device) with the
  event position of the response that carried it, so a retried request (same ``since``)
  gets the members again.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from protocol.room_versions import RoomVersion
from store.events import StoredEvent
from store.state import StateKey
from web.client_events import client_event
from web.filters import SyncFilter
from web.sync_token import SyncToken, room_position_token
from web.visibility import served_event

MAX_SCAN_PAGES = 20
MEMBER = "m.room.member"


@dataclass
class SyncContext:
    """Everything one /sync computation reads from; built per attempt."""

    svc: Any                                   # web.sync_service.SyncService
    user_id: str
    device_id: str | None
    since: SyncToken | None
    upto: SyncToken
    filter: SyncFilter
    full_state: bool
    ignored: frozenset[str]
    lazy_sent: dict[tuple[str, str], tuple[str, int]]
    now_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    cache: dict[str, Any] = field(default_factory=dict)   # reads shared by the sections

    @property
    def since_ev(self) -> int | None:
        return self.since.events if self.since is not None else None

    def format(self, se: StoredEvent, rv: RoomVersion) -> dict[str, Any]:
        if self.filter.event_format == "federation":
            ev = dict(se.event)
        else:
            ev = client_event(self.svc.events, se, rv, device_id=self.device_id,
                              user_id=self.user_id, now_ms=self.now_ms, with_room_id=False)
        return self.filter.project(ev)


@dataclass
class Timeline:
    events: list[StoredEvent]
    limited: bool
    prev_batch: str
    complete: bool = False       # every event in (lo, hi] is in ``events`` (none skipped)


def _visible(ctx: SyncContext, se: StoredEvent, visible_from: int | None
             ) -> StoredEvent | None:
    """``se`` as served to the user (pruned for an erased sender), or None."""
    ev = se.event
    if ev.get("sender") in ctx.ignored and "state_key" not in ev:
        return None  # modules/ignore_users.md: state events still go out
    if not ctx.filter.timeline.matches(ev):
        return None
    if visible_from is not None and se.stream_ordering >= visible_from:
        return se  # the user was joined from visible_from on
    return served_event(ctx.svc.rooms, ctx.user_id, se)


def timeline(ctx: SyncContext, room_id: str, lo: int, hi: int,
             visible_from: int | None) -> Timeline:
    """The newest ``limit`` visible events in (lo, hi], oldest first."""
    limit = ctx.filter.timeline_limit
    page = limit + 1
    out: list[StoredEvent] = []
    limited = False
    skipped = False
    floor = hi  # everything in (floor, hi] has been looked at
    svc = ctx.svc
    for _ in range(MAX_SCAN_PAGES):
        batch = svc.timeline_ids(room_id, lo, floor, page)
        if not batch:
            floor = lo
            break
        found = svc.get_events([eid for eid, _ in batch])
        for eid, so in batch:
            se = found.get(eid)
            se = _visible(ctx, se, visible_from) if se is not None else None
            if se is None:
                floor = so - 1
                skipped = True
                continue
            if len(out) == limit:
                limited = True
                break
            out.append(se)
            floor = so - 1
        if limited:
            break
        if len(batch) < page:
            floor = lo
            break
    else:
        limited = floor > lo  # scanned enough: leave the rest to /messages
    out.reverse()
    prev = out[0].stream_ordering - 1 if out else floor
    return Timeline(out, limited, room_position_token(prev),
                    complete=not limited and not skipped and floor <= lo)


def state_section(ctx: SyncContext, room_id: str, tl: Timeline, hi: int, full: bool,
                  heroes: Iterable[str] = ()) -> dict[StateKey, str]:
    """State ids for the ``state`` section (see the module docstring)."""
    store = ctx.svc.store
    incremental = not full and ctx.since_ev is not None
    if incremental and tl.complete and not ctx.filter.lazy_load_members:
        return {}  # nothing happened between since and the timeline's first event
    start = _state_at_start(ctx, room_id, tl, hi)
    if not incremental:
        picked = dict(start)
    elif tl.complete:
        picked = {}
    else:
        before = store.state_at(room_id, ctx.since_ev)  # type: ignore[arg-type]
        picked = {k: v for k, v in start.items() if before.get(k) != v}
    if not ctx.filter.lazy_load_members:
        return picked
    needed = {se.event.get("sender") for se in tl.events} | set(heroes)
    if full:
        needed.add(ctx.user_id)
    redundant_ok = ctx.filter.include_redundant_members
    if incremental and tl.limited:
        # a gapped sync keeps the gap's member changes too (as Synapse, which turns lazy
        # loading off for gaps): the client cannot learn of them otherwise
        out = dict(picked)
    else:
        out = {k: v for k, v in picked.items() if k[0] != MEMBER}
    since_ev = ctx.since_ev
    for user in needed:
        if not isinstance(user, str):
            continue
        eid = start.get((MEMBER, user))
        if eid is None:
            continue
        sent = ctx.lazy_sent.get((room_id, user))
        if (not redundant_ok and not full and sent is not None and sent[0] == eid
                and since_ev is not None and sent[1] <= since_ev):
            continue  # this device already has it
        out[(MEMBER, user)] = eid
    return out


def _state_at_start(ctx: SyncContext, room_id: str, tl: Timeline, hi: int
                    ) -> dict[StateKey, str]:
    """State just before the first timeline event (at ``hi`` for an empty timeline).  A
    non-state first event has the same state before and after it: use its own group."""
    if tl.events:
        first = tl.events[0]
        if "state_key" not in first.event and first.state_group is not None:
            return ctx.svc.state_groups.get_state(first.state_group)
        # a state event: the state after its prev events (after a remote join the state
        # before the join is outliers, with no earlier timeline event to read it from)
        before = ctx.svc.events.state_ids_before(first.event_id)
        if before is not None:
            return before
        return ctx.svc.store.state_at(room_id, first.stream_ordering - 1)
    return ctx.svc.store.state_at(room_id, hi)


def remember_members(ctx: SyncContext, room_id: str, state: dict[StateKey, str],
                     tl: Timeline) -> None:
    """Record the member events this response gives the device (lazy-loading)."""
    pos = ctx.upto.events
    for (etype, skey), eid in state.items():
        if etype == MEMBER:
            ctx.lazy_sent[(room_id, skey)] = (eid, pos)
    for se in tl.events:
        ev = se.event
        if ev.get("type") == MEMBER and isinstance(ev.get("state_key"), str):
            ctx.lazy_sent[(room_id, ev["state_key"])] = (se.event_id, pos)


def format_state(ctx: SyncContext, state: dict[StateKey, str], rv: RoomVersion
                 ) -> list[dict[str, Any]]:
    found = ctx.svc.events.get_events(state.values())
    f = ctx.filter.state
    out = []
    for key in sorted(state):
        se = found.get(state[key])
        if se is None or not f.matches(se.event):
            continue
        out.append(ctx.format(se, rv))
    if f.limit is not None:
        out = out[:f.limit]
    return out
