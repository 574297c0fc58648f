"""The RoomActor's side of "Checks performed on receipt of a PDU" (server-server-api.md):
auth against the event's auth events, against the state before it, and against the
room's current state (soft fail), then the persist plan for each outcome.

Federation (``federation/pdus.py``) has already checked format, signatures and the content
hash; this module runs on the actor's turn, over its tentative copy of the room, and never
talks to another server.  One :class:`PduBatch` handles one :class:`ReceivePdus` (or one
``PersistBuilt`` / re-join): outliers first, then each event in order, each staged against
the batch's overlay (events and state groups not yet committed), then one commit.

The state before an event is the state after its prev events: one prev → its state group;
several → state resolution for the room version (``protocol.state_res``); prevs not all
known (or outliers) → the ``state_before`` the caller fetched, else the outcome is
``missing``.  What each outcome stores:

* accepted: a timeline event with its state group (state before + itself if state), its
  prevs leave the forward extremities and it joins them (unless a stored event already
  names it as a prev), current state = resolution over the extremities' states;
* soft-failed: stored with its state group, ``soft_failed``, never an extremity, no hooks;
* rejected: stored with ``rejection`` and the state group of the state before it;
* backfilled (older history): checked the same way, stored ``backfilled``, never moves the
  extremities or current state, no hooks.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import gevent

from atrium.errors import MatrixError
from protocol import auth as protocol_auth
from protocol.events import auth_event_ids, prev_event_ids, redacts_id
from protocol.ids import IdError, server_of
from protocol.pdu_checks import Outcome, PduVerdict, check_pdu
from protocol.state_res import resolve_state
from store.events import PersistItem
from store.state import StateKey

from actors.room_messages import PduResult

if TYPE_CHECKING:
    from actors.room import RoomActor, _Pending, _Room

log = logging.getLogger(__name__)

CREATE_KEY = ("m.room.create", "")
StateMap = dict[StateKey, str]
GroupWrite = tuple[int, "int | None", dict, dict]


@dataclass
class _Known:
    """An event the batch can see: stored, or staged in this batch."""

    event: dict[str, Any]
    rejected: bool
    outlier: bool
    soft_failed: bool
    group: int | None            # state group = the state after it


class _LazyState(Mapping[StateKey, dict[str, Any]]):
    """(type, state_key) → event dict over a state map, events looked up on access (auth
    reads only the few keys it needs)."""

    def __init__(self, ids: Mapping[StateKey, str],
                 lookup: Callable[[str], dict[str, Any] | None]) -> None:
        self._ids, self._lookup = ids, lookup

    def __getitem__(self, key: StateKey) -> dict[str, Any]:
        ev = self._lookup(self._ids[key])
        if ev is None:
            raise KeyError(key)
        return ev

    def __iter__(self) -> Iterator[StateKey]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


class Refused(Exception):
    """A strict batch (PersistBuilt, a join) met an event it would not accept."""

    def __init__(self, result: PduResult) -> None:
        super().__init__(result.reason or result.outcome)
        self.result = result


class PduBatch:
    """Stages received events against a tentative copy of the room; see the module doc."""

    def __init__(self, actor: "RoomActor", tentative: "_Room", *, backfilled: bool = False,
                 strict: bool = False, replace_extremities: bool = False) -> None:
        self.actor = actor
        self.room = tentative
        self.rv = tentative.rv
        self.room_id = actor.room_id
        self.deps = actor.deps
        self.backfilled = backfilled
        self.strict = strict                       # refuse instead of storing a failure
        self.replace_extremities = replace_extremities   # a re-join: the join is the head
        self.pendings: list[_Pending] = []
        self.hooked: list[_Pending] = []           # accepted timeline events: hooks run
        self.group_writes: list[GroupWrite] = []   # state groups not tied to one event
        self._known: dict[str, _Known] = {}        # staged in this batch
        self._stored: dict[str, _Known | None] = {}
        self._groups: dict[int, StateMap] = {}     # staged state groups
        self._has_children: set[str] = set()

    # ------------------------------------------------------------------ lookups
    def prefetch(self, events: Any) -> None:
        """One store read for the events of the batch, their prevs and auth events, and
        one for which of them already have children."""
        ids: list[str] = []
        for ev in events:
            if not isinstance(ev, Mapping) or not isinstance(ev.get("event_id"), str):
                continue
            ids.append(ev["event_id"])
            try:
                ids.extend(prev_event_ids(ev))
                ids.extend(auth_event_ids(ev))
            except ValueError:
                pass
        self._fetch(ids)
        if not self.backfilled:
            self._has_children = self.deps.events.with_children(
                ev["event_id"] for ev in events
                if isinstance(ev, Mapping) and isinstance(ev.get("event_id"), str))

    def _fetch(self, ids: Any) -> None:
        wanted = [i for i in dict.fromkeys(ids) if i not in self._stored and i not in self._known]
        if not wanted:
            return
        found = self.deps.events.get_events(wanted)
        for eid in wanted:
            se = found.get(eid)
            self._stored[eid] = None if se is None or se.room_id != self.room_id else _Known(
                se.event, se.rejection is not None, se.outlier, se.soft_failed, se.state_group)

    def lookup(self, eid: str) -> _Known | None:
        k = self._known.get(eid)
        if k is not None:
            return k
        if eid not in self._stored:
            self._fetch([eid])
        return self._stored.get(eid)

    def usable_event(self, eid: str) -> dict[str, Any] | None:
        """The event if known here and not rejected (check_pdu's and state res's view)."""
        k = self.lookup(eid)
        return None if k is None or k.rejected else k.event

    def group_state(self, gid: int) -> StateMap:
        staged = self._groups.get(gid)
        return dict(staged) if staged is not None else self.deps.state_groups.get_state(gid)

    def state_after(self, eid: str) -> tuple[StateMap, int] | None:
        k = self.lookup(eid)
        if k is None or k.outlier or k.group is None:
            return None
        return self.group_state(k.group), k.group

    def resolve(self, maps: list[StateMap]) -> StateMap:
        # the events of the conflicted keys and their auth chains in two reads, not one
        # read per event as state resolution walks them
        conflicted: set[str] = set()
        keys = set().union(*maps)
        for key in keys:
            values = {m.get(key) for m in maps}
            if len(values) > 1:
                conflicted.update(v for v in values if v is not None)
        if conflicted:
            self._fetch(list(conflicted) + list(self.deps.events.auth_chain_ids(conflicted)))
        return resolve_state(self.rv, maps, self.usable_event, pause=lambda: gevent.sleep(0))

    # ------------------------------------------------------------------ state groups
    def new_group(self, state: StateMap, base: int | None) -> int:
        """Stage a state group equal to ``state`` (a delta on ``base`` when given)."""
        gid = self.deps.state_groups.new_group_id()
        if base is None:
            delta: dict[StateKey, str | None] = dict(state)
        else:
            old = self.group_state(base)
            delta = {k: v for k, v in state.items() if old.get(k) != v}
            delta.update({k: None for k in old if k not in state})
        self._groups[gid] = dict(state)
        self.group_writes.append((gid, base, delta, dict(state)))
        return gid

    # ------------------------------------------------------------------ outliers
    def stage_outliers(self, outliers: Any, *, check: bool = True) -> None:
        """Store fetched auth-chain / state events as outliers (those not stored yet), in
        auth order; with ``check``, one failing auth against its own auth events is stored
        rejected (so nothing that cites it passes)."""
        todo = {}
        for ev in outliers:
            if isinstance(ev, Mapping) and isinstance(ev.get("event_id"), str) \
                    and ev.get("room_id", self.room_id) == self.room_id:
                todo.setdefault(ev["event_id"], ev)
        self._fetch(todo)
        for ev in _auth_order(todo):
            eid = ev["event_id"]
            if self.lookup(eid) is not None:
                continue
            try:
                if _unstorable(ev):
                    continue
                rejection = None
                if check and any(self.lookup(a) is None for a in auth_event_ids(ev)):
                    # as Synapse: an outlier whose auth events are unknown is not stored
                    # (the caller fetches auth chains first); rejecting it would stick
                    log.info("%s: outlier %s has unknown auth events", self.room_id, eid)
                    continue
                if check:
                    verdict = self._check(ev, auth_state_only=True)
                    if verdict.outcome is Outcome.DROPPED:
                        continue
                    ev = dict(verdict.event)
                    if verdict.rejected:
                        rejection = verdict.reason or "rejected"
                ev = _own_copy(ev)
                self._stage(PersistItem(event=ev, stream_ordering=0, state_group=None,
                                        rejection=rejection, outlier=True))
            except Exception:   # one bad outlier must not poison the batch
                log.exception("%s: outlier %s not stored", self.room_id, eid)

    # ------------------------------------------------------------------ events
    def process(self, ev: Any, state_before: Any = None) -> PduResult:
        """Check one event and stage what its outcome stores; never raises except
        :class:`Refused` in a strict batch (an internal error is outcome ``error``)."""
        eid = ev.get("event_id") if isinstance(ev, Mapping) else None
        if not isinstance(eid, str):
            return self._result("", "error", "not an event with an event_id")
        try:
            return self._process(ev, eid, state_before)
        except Refused:
            raise
        except Exception as e:   # noqa: BLE001 - this event only; the batch goes on
            log.exception("%s: processing %s failed", self.room_id, eid)
            return self._result(eid, "error", f"internal error: {type(e).__name__}")

    def _result(self, eid: str, outcome: str, reason: str | None = None) -> PduResult:
        result = PduResult(eid, outcome, reason)
        if self.strict and outcome not in ("accepted", "duplicate"):
            raise Refused(result)
        return result

    def _process(self, ev: Mapping[str, Any], eid: str, given_before: Any) -> PduResult:
        known = self.lookup(eid)
        if known is not None and not known.outlier:
            return PduResult(eid, "duplicate")
        promote = known is not None and eid not in self._known   # a stored outlier
        if ev.get("room_id") != self.room_id:
            return self._result(eid, "error", "not an event of this room")
        problem = _unstorable(ev)
        if problem:
            return self._result(eid, "error", problem)
        if ev.get("type") == "m.room.create" and ev.get("state_key") == "":
            create = self.room.create if self.room is not None else None
            if self.backfilled and promote and create is not None \
                    and create.get("event_id") == eid:
                # the start of the room's history, held as an outlier since a remote join,
                # now reached by backfill: it becomes a (backfilled) timeline event
                gid = self.new_group({CREATE_KEY: eid}, None)
                self._stage(PersistItem(event=_own_copy(known.event), stream_ordering=0,
                                        state_group=gid, backfilled=True,
                                        replaces_outlier=True))
                return PduResult(eid, "accepted")
            return self._result(eid, "rejected", "the room already has its create event")
        prevs = prev_event_ids(ev)
        before = self._state_before(prevs, eid, given_before)
        if before is None:
            return self._result(eid, "missing", "prev_events unknown and no state given")
        before_ids, before_group = before
        verdict = self._check(ev, before_ids=before_ids)
        if verdict.outcome is Outcome.DROPPED:
            return self._result(eid, "error", verdict.reason)
        event = _own_copy(verdict.event)
        key = (event["type"], event["state_key"]) if isinstance(event.get("state_key"),
                                                                str) else None
        if verdict.rejected:
            self._result(eid, "rejected", verdict.reason)   # raises when strict
            gid = before_group if before_group is not None else self.new_group(before_ids,
                                                                                None)
            self._stage(PersistItem(event=event, stream_ordering=0, state_group=gid,
                                    rejection=verdict.reason or "rejected",
                                    backfilled=self.backfilled,
                                    replaces_outlier=promote))
            return PduResult(eid, "rejected", verdict.reason)
        if verdict.soft_failed:
            self._result(eid, "soft_failed", verdict.reason)
        # state after: the state before plus the event itself if it is state
        if key is not None:
            if key in before_ids:
                event.setdefault("unsigned", {})["replaces_state"] = before_ids[key]
            after = dict(before_ids)
            after[key] = eid
            gid = self.new_group(after, before_group)
        else:
            after = before_ids
            gid = before_group if before_group is not None else self.new_group(before_ids,
                                                                                None)
        item = PersistItem(event=event, stream_ordering=0, state_group=gid,
                           soft_failed=verdict.soft_failed, backfilled=self.backfilled,
                           replaces_outlier=promote)
        if event["type"] == "m.room.redaction":
            item.apply_redaction = self._may_apply_redaction(event, before_ids)
        if verdict.soft_failed:
            self._stage(item)
            return PduResult(eid, "soft_failed", verdict.reason)
        pending = self._stage(item)
        if not self.backfilled:
            self.hooked.append(pending)
            self._advance(event, prevs)
        return PduResult(eid, "accepted")

    def _state_before(self, prevs: list[str], eid: str,
                      given: Any) -> tuple[StateMap, int | None] | None:
        afters = [self.state_after(p) for p in prevs]
        if prevs and all(a is not None for a in afters):
            if len(afters) == 1:
                return afters[0]  # type: ignore[return-value]
            maps = [a[0] for a in afters if a is not None]
            groups = {a[1] for a in afters if a is not None}
            if len(groups) == 1:
                return maps[0], groups.pop()
            return self.resolve(maps), None
        if isinstance(given, Mapping):
            state = _state_map(given)
            if state is not None:
                return state, None
        return None

    def _check(self, ev: Mapping[str, Any], *, before_ids: StateMap | None = None,
               auth_state_only: bool = False) -> PduVerdict:
        room = self.room

        def state_before(e: Any) -> Any:
            if auth_state_only:   # outliers: the state their own auth events describe
                return {(a["type"], a["state_key"]): a
                        for a in (self.usable_event(i) for i in auth_event_ids(e))
                        if a is not None and isinstance(a.get("state_key"), str)}
            return _LazyState(before_ids or {}, self.usable_event)

        def current(e: Any) -> Any:
            if auth_state_only or self.backfilled:
                return None
            from actors.room import _StateView

            return _StateView(room.state, room.state_events, room.create)

        return check_pdu(self.rv, ev, verify_signatures=lambda _e, _s: True,
                         get_event=self.usable_event, state_before=state_before,
                         current_state=current)

    def _may_apply_redaction(self, ev: dict[str, Any], before_ids: StateMap) -> bool:
        """A received redaction applies when its sender may redact the target in the state
        before it, or (v3+) the target was sent from the same server."""
        target_id = redacts_id(ev, self.rv)
        target = self.lookup(target_id) if target_id else None
        if target is None:
            return False
        target_sender = target.event.get("sender")
        try:
            if isinstance(target_sender, str) and \
                    server_of(target_sender) == server_of(ev["sender"]):
                return True
        except IdError:
            return False
        view = _LazyState(before_ids, self.usable_event)
        return protocol_auth.may_redact(self.rv, ev["sender"], target_sender, view)

    # ------------------------------------------------------------------ staging
    def _stage(self, item: PersistItem) -> "_Pending":
        from actors.room import _Pending

        eid = item.event["event_id"]
        if eid in self._known:   # an outlier of this batch joins the timeline: one row
            self.pendings = [p for p in self.pendings if p.item.event["event_id"] != eid]
        self._known[eid] = _Known(item.event, item.rejection is not None, item.outlier,
                                  item.soft_failed, item.state_group)
        pending = _Pending(item, None)
        self.pendings.append(pending)
        return pending

    def _advance(self, event: dict[str, Any], prevs: list[str]) -> None:
        """An accepted new event: move the forward extremities and current state."""
        room = self.room
        eid = event["event_id"]
        if self.replace_extremities:
            ext = [eid]
        else:
            ext = [x for x in room.extremities if x not in prevs]
            if eid not in self._has_children and not any(
                    eid in prev_event_ids(k.event) for k in self._known.values()
                    if not (k.outlier or k.rejected or k.soft_failed)
                    and k.event is not event):
                ext.append(eid)
            if not ext:
                return
        ext.sort(key=self._depth_of)
        if ext == room.extremities:
            return
        states = [s for s in (self.state_after(x) for x in ext) if s is not None]
        if not states:
            return
        if len(states) == 1:
            current, gid = states[0]
        else:
            current = self.resolve([s[0] for s in states])
            gid = self.new_group(current, room.group) if current != room.state else room.group
        self._set_current(current, gid)
        room.extremities = ext
        room.depth = max(self._depth_of(x) for x in ext)

    def _depth_of(self, eid: str) -> int:
        k = self.lookup(eid)
        try:
            return int(k.event.get("depth", 0)) if k is not None else 0
        except (TypeError, ValueError):
            return 0

    def _set_current(self, state: StateMap, gid: int | None) -> None:
        room = self.room
        missing = [e for e in state.values() if e not in room.state_events]
        self._fetch(missing)
        events: dict[str, dict[str, Any]] = {}
        for e in state.values():
            ev = room.state_events.get(e)
            if ev is None:
                k = self.lookup(e)
                if k is None:
                    raise RuntimeError(f"{self.room_id}: state event {e} is not stored")
                ev = k.event
            events[e] = ev
        room.state = dict(state)
        room.state_events = events
        room.group = gid
        create_id = state.get(CREATE_KEY)
        if create_id is not None:
            room.create = events[create_id]


def _own_copy(ev: Mapping[str, Any]) -> dict[str, Any]:
    """The event as we store it: a copy, without the sender's ``unsigned`` (not signed,
    not trusted; ours is added when persisting)."""
    out = dict(ev)
    out.pop("unsigned", None)
    return out


def _unstorable(ev: Mapping[str, Any]) -> str | None:
    """Strings the store copies into indexed columns must be storable on both engines."""
    content = ev.get("content")
    membership = content.get("membership") if isinstance(content, Mapping) else None
    for v in (ev.get("type"), ev.get("state_key"), ev.get("sender"), membership,
              ev.get("redacts")):
        if isinstance(v, str) and ("\x00" in v or not _utf8(v)):
            return "a string the store cannot hold (NUL or a lone surrogate)"
    return None


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _state_map(given: Mapping[Any, Any]) -> StateMap | None:
    """``{(type, state_key): event_id}`` (tuples or two-item lists as keys)."""
    out: StateMap = {}
    for k, v in given.items():
        if isinstance(k, (tuple, list)) and len(k) == 2 and all(isinstance(x, str) for x in k) \
                and isinstance(v, str):
            out[(k[0], k[1])] = v
        else:
            return None
    return out


def _auth_order(events: Mapping[str, Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``events`` with each after the ones among them it cites as auth events (input order
    otherwise; a cycle is broken by input order)."""
    out: list[Mapping[str, Any]] = []
    done: set[str] = set()
    visiting: set[str] = set()
    for root in events:
        stack: list[tuple[str, bool]] = [(root, False)]
        while stack:
            eid, expanded = stack.pop()
            if eid in done:
                continue
            if expanded:
                visiting.discard(eid)
                done.add(eid)
                out.append(events[eid])
                continue
            if eid in visiting:
                continue
            visiting.add(eid)
            stack.append((eid, True))
            try:
                deps = auth_event_ids(events[eid])
            except ValueError:
                deps = []
            stack.extend((d, False) for d in reversed(deps) if d in events and d not in done)
    return out


def refusal_error(result: PduResult) -> MatrixError:
    """How a strict batch's refusal reaches the caller."""
    if result.outcome in ("missing", "error"):
        return MatrixError(400, "M_BAD_JSON", result.reason or result.outcome)
    return MatrixError(403, "M_FORBIDDEN", result.reason or result.outcome)
