"""The push evaluator: after each room commit, the push actions of every new event for
every local member of the room (modules/push.md "Server behaviour"), written to
``event_push_actions`` for the counts, /notifications and the push sender.

It is a ``RoomService.on_persisted`` hook that only queues: the room actor never waits for
push rules, and nothing here can fail a room write.  One worker greenlet drains the queue in
batches: per room it loads (and caches by current state group) the members, display names,
power levels and create event; per recipient it takes the merged ruleset (cached, checked
against ``push_rules.version`` with one query per batch) and calls the pure
``protocol.push_rules.evaluate`` (compiled once per ruleset version:
``protocol.push_rules_compiled``); the rows of a batch are written in one transaction.

Bounded: past ``max_pending`` queued events the queue is dropped and the worker catches up
from the store from its durable position (``push_evaluator_position``), as it does at
start-up.  Writes are idempotent, so events evaluated twice count once.  A batch that raises
is logged and skipped (a poisoned event must not stop notifications for everyone else).

Consistency with /sync: :meth:`barrier` lets ``store.push.unread_counts`` wait until the
events queued for a room so far are evaluated (registered with ``store.push.set_barrier``);
rows evaluated but not yet committed are served from :meth:`unwritten`, so a woken /sync
never waits for the write's fsync.  One write is in flight at a time, in order, while the
worker evaluates the next batch.  A crash before a write commits loses nothing: the
catch-up re-evaluates from the durable position.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import gevent
import gevent.event

from protocol.power_levels import get_user_level
from protocol.push_rules import notification_effect
from protocol.push_rules_compiled import CompiledRuleset, compile_ruleset
from protocol.room_versions import RoomVersion
from store import push as push_store
from store.database import Database
from store.events import EventStore
from store.push_rules import PushRuleStore

log = logging.getLogger(__name__)

MAX_THREAD_HOPS = 3
INLINE_VERSION_READ = 32   # recipients whose rule versions are read without a thread
NotifyHook = Callable[[str, int], None]


@dataclass
class _RoomContext:
    group: int | None
    rv: RoomVersion
    create: dict[str, Any]
    power_levels: dict[str, Any] | None
    joined: dict[str, str | None]          # joined user → display name
    local_joined: list[str]


class _Unwritten:
    """One evaluated batch until its write commits, indexed by (user, room)."""

    __slots__ = ("rows", "own")

    def __init__(self, rows: Sequence[tuple], own: Sequence[tuple[str, str, str, int]]) -> None:
        self.rows: dict[tuple[str, str], list[tuple[str, int, str, bool]]] = {}
        for user_id, event_id, room_id, so, thread_id, _, highlight, _ in rows:
            self.rows.setdefault((user_id, room_id), []).append(
                (event_id, so, thread_id, bool(highlight)))
        self.own: dict[tuple[str, str], list[tuple[str, int]]] = {}
        for user_id, room_id, thread_id, so in own:
            self.own.setdefault((user_id, room_id), []).append((thread_id, so))


class PushEvaluator:
    def __init__(self, db: Database, events: EventStore, rules: PushRuleStore,
                 server_name: str, *, on_notify: NotifyHook | None = None,
                 max_pending: int = 10_000, batch_size: int = 200,
                 cache_rooms: int = 500, cache_users: int = 2_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.db, self.events, self.rules = db, events, rules
        self.suffix = ":" + server_name
        self.on_notify = on_notify
        self.max_pending, self.batch_size = max_pending, batch_size
        self.clock = clock
        self._queue: deque[tuple[str, Sequence[tuple[dict[str, Any], int]]]] = deque()
        self._queued = 0
        self._catch_up = True                 # start-up: from the durable position
        # the highest position a catch-up read from the store: an event at or below it may
        # reach us twice (read by the catch-up, then queued by a hook that ran late), which
        # the rows' uniqueness absorbs but the in-memory counts must not add twice
        self._replayed_upto = -1
        self._wake = gevent.event.Event()
        self._progress = gevent.event.Event()
        self._pending: dict[str, int] = {}    # room → highest position handed to us
        self._done: dict[str, int] = {}       # room → highest position evaluated
        self._unwritten: list[_Unwritten] = []  # evaluated, write not committed yet
        self._writing: gevent.Greenlet | None = None  # the write in flight
        self._rooms: OrderedDict[str, _RoomContext] = OrderedDict()
        self._rulesets: OrderedDict[str, tuple[int, CompiledRuleset]] = OrderedDict()
        self._cache_rooms, self._cache_users = cache_rooms, cache_users
        self._stopping = False
        self._worker: gevent.Greenlet | None = None
        self._side: set[gevent.Greenlet] = set()   # remote invites being evaluated
        self.evaluated = 0                    # events evaluated (stats, tests)
        self.overflows = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._worker is None:
            self._worker = gevent.spawn(self._run)
            self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout)
            self._worker.kill(block=False)
        if self._writing is not None:
            self._writing.join(timeout)
        gevent.joinall(list(self._side), timeout=timeout)
        self._progress.set()

    # ------------------------------------------------------------------ the hook
    def on_persisted(self, room_id: str, events: Sequence[tuple[dict[str, Any], int]]) -> None:
        """RoomService hook (runs in the room actor after commit): queue, never block."""
        if self._stopping or not events:
            return
        top = max(so for _, so in events)
        if top > self._pending.get(room_id, -1):
            self._pending[room_id] = top
        if self._queued + len(events) > self.max_pending:
            if not self._catch_up:
                log.warning("push evaluator: queue full, catching up from the store")
                self.overflows += 1
            self._queue.clear()
            self._queued = 0
            self._catch_up = True
            self._counts_unsure()
        elif not self._catch_up:
            self._queue.append((room_id, events))
            self._queued += len(events)
        self._wake.set()

    def on_remote_membership(self, remote_invites: Any, user_id: str, position: int) -> None:
        """store/remote_invites.py hook: an invite from another server to a room this server
        does not hold was recorded.  No room actor persists it, so it is evaluated here, on
        its own (no room state: no member count, no power levels), in a greenlet of its own
        so the /invite request does not wait for it."""
        if self._stopping:
            return
        g = gevent.spawn(self._remote_invite, remote_invites, user_id, position)
        self._side.add(g)
        g.link(self._side.discard)

    def _remote_invite(self, remote_invites: Any, user_id: str, position: int) -> None:
        try:
            row = next((r for r in remote_invites.rows(user_id)
                        if r.stream_ordering == position), None)
            if row is None or row.membership != "invite":
                return
            ev = dict(row.event, room_id=row.room_id)
            ruleset = self._rulesets_for({user_id})[user_id]
            actions = ruleset.evaluate(ev, user_id=user_id, display_name=None,
                                       room_member_count=None, sender_power_level=None,
                                       power_levels=None)
            notify, highlight, _ = notification_effect(actions or [])
            if not notify:
                return
            push_store.write_actions(self.db, [(
                user_id, row.event_id, row.room_id, position, push_store.MAIN, actions,
                highlight, int(self.clock() * 1000))], [], None)
            if self.on_notify is not None:
                self.on_notify(user_id, position)
        except Exception:  # noqa: BLE001 - the invite itself is stored; pushing is best effort
            log.exception("push evaluator: remote invite for %s failed", user_id)

    def unwritten(self, user_id: str, room_id: str
                  ) -> tuple[list[tuple[str, int, str, bool]], list[tuple[str, int]]]:
        """What evaluated batches hold for (user, room) that may not be committed yet:
        notifying rows as (event_id, stream_ordering, thread_id, highlight) and the user's
        own events as (thread_id, stream_ordering) — ``store.push.unread_counts`` adds
        those its read does not find."""
        rows: list[tuple[str, int, str, bool]] = []
        own: list[tuple[str, int]] = []
        for batch in self._unwritten:
            got = batch.rows.get((user_id, room_id))
            if got:
                rows.extend(got)
            mine = batch.own.get((user_id, room_id))
            if mine:
                own.extend(mine)
        return rows, own

    def barrier(self, room_id: str, timeout: float, *, written: bool = False) -> None:
        """Return once every event of ``room_id`` queued so far is evaluated (or timeout);
        what is not written yet by then is in :meth:`unwritten`.  ``written``: also wait
        until no evaluated batch is still being written."""
        deadline = time.monotonic() + timeout
        while not self._stopping and self._worker is not None:
            want = self._pending.get(room_id)
            if (want is None or self._done.get(room_id, -1) >= want) and \
                    not (written and self._unwritten):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("push evaluator: %s not evaluated in %.1fs", room_id, timeout)
                return
            self._progress.wait(left)

    # ------------------------------------------------------------------ the worker
    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait()
            self._wake.clear()
            while not self._stopping and (self._catch_up or self._queue):
                try:
                    if self._catch_up:
                        self._catch_up_batch()
                    else:
                        self._queue_batch()
                except Exception:  # noqa: BLE001 - a bad batch must not stop the others
                    log.exception("push evaluator: batch failed")
                self._signal_progress()
                gevent.sleep(0)  # let room actors and /syncs run between batches

    def _queue_batch(self) -> None:
        items: list[tuple[str, dict[str, Any], int]] = []
        while self._queue and len(items) < self.batch_size:
            room_id, evs = self._queue.popleft()
            self._queued -= len(evs)
            items.extend((room_id, ev, so) for ev, so in evs)
        position = None
        if not self._queue and not self._catch_up:
            # Everything handed to us is done.  Scale-out/crash window: an event committed
            # whose hook has not run yet may sit below this; see docs in store/push.py.
            position = min(max(so for _, _, so in items), self.events.stream.current())
        self._process(items, position)

    def _catch_up_batch(self) -> None:
        self._join_write()  # the stored position must include what was evaluated before
        start = push_store.evaluator_position(self.db)
        items = push_store.events_after(self.db, start, self.batch_size)
        if not items:
            self._catch_up = False
            return
        self._replayed_upto = max(self._replayed_upto, max(so for _, _, so in items))
        self._process(items, max(so for _, _, so in items))
        for room_id, _, so in items:  # wake barriers of rooms only the store told us about
            if so > self._pending.get(room_id, -1):
                self._pending[room_id] = so

    def _signal_progress(self) -> None:
        for room_id in [r for r, p in self._pending.items() if self._done.get(r, -1) >= p]:
            self._pending.pop(room_id, None)
            self._done.pop(room_id, None)
        old, self._progress = self._progress, gevent.event.Event()
        old.set()

    # ------------------------------------------------------------------ evaluating
    def _process(self, items: list[tuple[str, dict[str, Any], int]],
                 position: int | None) -> None:
        rows: list[tuple[str, str, str, int, str, list[Any], bool, int]] = []
        own: list[tuple[str, str, str, int]] = []
        by_room: OrderedDict[str, list[tuple[dict[str, Any], int]]] = OrderedDict()
        for room_id, ev, so in items:
            by_room.setdefault(room_id, []).append((ev, so))
        now = int(self.clock() * 1000)
        for room_id, evs in by_room.items():
            try:
                self._evaluate_room(room_id, evs, now, rows, own)
            except Exception:  # noqa: BLE001 - one broken room must not block the others
                log.exception("push evaluator: room %s failed", room_id)
        # Evaluated: the barrier lets /syncs of these rooms go on now, reading the rows
        # not written yet from ``unwritten`` — they need not wait for the write's commit
        # (a crash before it loses nothing: the catch-up re-evaluates from the position).
        self._move_counts(rows, own)
        batch = _Unwritten(rows, own)
        self._unwritten.append(batch)
        for room_id, evs in by_room.items():
            top = max(so for _, so in evs)
            if top > self._done.get(room_id, -1):
                self._done[room_id] = top
        self._signal_progress()
        # One write in flight at a time, in order (positions only grow), while the worker
        # evaluates the next batch: events that arrive during a write are not held up by it.
        self._join_write()
        self._writing = gevent.spawn(self._write, batch, rows, own, position, len(items))

    def _move_counts(self, rows: list, own: list) -> None:
        """Bring the in-memory unread counts (store/unread_cache.py) up to this batch, before
        the barrier lets the /syncs waiting on it read them; what a catch-up may have seen
        already drops its entries instead."""
        cache = push_store.unread_cache(self.db)
        if cache is None:
            return
        upto = self._replayed_upto
        if upto < 0:
            cache.evaluated(rows, own)
            return
        cache.evaluated([r for r in rows if r[3] > upto], [o for o in own if o[3] > upto])
        cache.drop_keys({(r[0], r[2]) for r in rows if r[3] <= upto}
                        | {(o[0], o[1]) for o in own if o[3] <= upto})

    def _counts_unsure(self) -> None:
        cache = push_store.unread_cache(self.db)
        if cache is not None:
            cache.clear()

    def _join_write(self) -> None:
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.join()

    def _write(self, batch: _Unwritten, rows: list, own: list, position: int | None,
               n: int) -> None:
        try:
            push_store.write_actions(self.db, rows, own, position)
        except Exception:  # noqa: BLE001 - a bad batch must not stop the others
            log.exception("push evaluator: batch failed")
            self._counts_unsure()  # the counts held in memory went past the store's
            return
        finally:
            self._unwritten.remove(batch)
            self._signal_progress()
        self.evaluated += n
        if self.on_notify is not None:
            for user_id, _, _, so, *_ in rows:
                try:
                    self.on_notify(user_id, so)
                except Exception:  # noqa: BLE001 - the sender is best effort
                    log.exception("push evaluator: notify hook failed")

    def _evaluate_room(self, room_id: str, evs: list[tuple[dict[str, Any], int]], now: int,
                       rows: list, own: list) -> None:
        if any("state_key" in ev for ev, _ in evs):
            self._rooms.pop(room_id, None)  # the room's state moved: reload it below
        ctx = self._room_context(room_id)
        if ctx is None:
            return
        recipients = set(ctx.local_joined)
        recipients.update(u for u in (self._local_invitee(ev) for ev, _ in evs) if u)
        rulesets = self._rulesets_for(recipients)
        count = len(ctx.joined)
        for ev, so in evs:
            sender = ev.get("sender")
            thread_id = self._thread_of(ev)
            if isinstance(sender, str) and sender.endswith(self.suffix):
                own.append((sender, room_id, thread_id, so))
            sender_level = get_user_level(ctx.rv, ctx.create, ctx.power_levels, sender) \
                if isinstance(sender, str) else None
            targets = list(ctx.local_joined)
            invitee = self._local_invitee(ev)
            if invitee is not None and invitee not in ctx.joined:
                targets.append(invitee)
            for user_id in targets:
                actions = rulesets[user_id].evaluate(
                    ev, user_id=user_id, display_name=ctx.joined.get(user_id),
                    room_member_count=count, sender_power_level=sender_level,
                    power_levels=ctx.power_levels)
                if not actions:
                    continue
                notify, highlight, _ = notification_effect(actions)
                if notify:
                    rows.append((user_id, ev["event_id"], room_id, so, thread_id, actions,
                                 highlight, now))

    def _local_invitee(self, ev: Mapping[str, Any]) -> str | None:
        """The local user an invite is for (invites notify before the user joins)."""
        if ev.get("type") != "m.room.member" or \
                (ev.get("content") or {}).get("membership") != "invite":
            return None
        target = ev.get("state_key")
        return target if isinstance(target, str) and target.endswith(self.suffix) else None

    def _thread_of(self, ev: Mapping[str, Any]) -> str:
        """The thread root an event belongs to, or 'main' (push.md: follow relations up to a
        few hops until an ``m.thread`` relation)."""
        node: Mapping[str, Any] | None = ev
        for _ in range(MAX_THREAD_HOPS):
            rel = node.get("content", {}).get("m.relates_to") if node else None
            if not isinstance(rel, Mapping) or not isinstance(rel.get("event_id"), str):
                return push_store.MAIN
            if rel.get("rel_type") == "m.thread":
                return rel["event_id"]
            parent = self.events.get_event(rel["event_id"])
            node = parent.event if parent is not None else None
        return push_store.MAIN

    def _versions(self, users: set[str]) -> dict[str, int]:
        """``PushRuleStore.versions``; for a few users (a primary-key lookup each) run inline
        in this greenlet, which costs less than handing the read to a thread."""
        if not users or len(users) > INLINE_VERSION_READ:
            return self.rules.versions(users)
        ids = list(users)
        marks = ",".join("?" * len(ids))
        return self.db.run("push_rules_versions", lambda t: {u: int(v) for u, v in t.query(
            f"SELECT user_id, version FROM push_rules WHERE user_id IN ({marks})", ids)},
            inline=True)

    def _room_context(self, room_id: str) -> _RoomContext | None:
        """The room's members, names, power levels and create event, read from current
        state.  Cached until an event of the room with a ``state_key`` passes through here:
        every state change is such an event, and each one reaches :meth:`_process` (from the
        hook, or from the store after an overflow or a restart) after it has committed."""
        cached = self._rooms.get(room_id)
        if cached is not None:
            self._rooms.move_to_end(room_id)
            return cached
        group = push_store.room_state_group(self.db, room_id)
        rv = self.events.room_version(room_id)
        if rv is None:
            return None
        state = self.events.get_current_state_ids(room_id)
        stored = self.events.get_events(state.values())

        def content(key: tuple[str, str]) -> dict[str, Any] | None:
            eid = state.get(key)
            se = stored.get(eid) if eid else None
            return dict(se.event.get("content") or {}) if se is not None else None

        create_id = state.get(("m.room.create", ""))
        create = stored[create_id].event if create_id in stored else {}
        joined: dict[str, str | None] = {}
        for (etype, skey), eid in state.items():
            if etype != "m.room.member" or eid not in stored:
                continue
            c = stored[eid].event.get("content") or {}
            if c.get("membership") == "join":
                name = c.get("displayname")
                joined[skey] = name if isinstance(name, str) else None
        ctx = _RoomContext(group, rv, create,
                           content(("m.room.power_levels", "")), joined,
                           [u for u in joined if u.endswith(self.suffix)])
        self._rooms[room_id] = ctx
        while len(self._rooms) > self._cache_rooms:
            self._rooms.popitem(last=False)
        return ctx

    def _rulesets_for(self, users: set[str]) -> dict[str, CompiledRuleset]:
        """Each user's ruleset, compiled once per version of their stored rules."""
        versions = self._versions(users)
        out: dict[str, CompiledRuleset] = {}
        stale = []
        for u in users:
            cached = self._rulesets.get(u)
            if cached is not None and cached[0] == versions.get(u, 0):
                out[u] = cached[1]
                self._rulesets.move_to_end(u)
            else:
                stale.append(u)
        for u, stored in self.rules.get_many(stale).items():
            compiled = compile_ruleset(stored.merged(u))
            self._rulesets[u] = (stored.version, compiled)
            out[u] = compiled
        while len(self._rulesets) > self._cache_users:
            self._rulesets.popitem(last=False)
        return out
