"""The sync part of the wiring: the stores of the user's live streams, the notifier, the
typing tracker and the "users" supervisor over UserActors, built once at start-up
(web/areas.py ``_register_sync``) and passed to the sync area's handlers.

``ask_user`` / ``tell_user`` are how handlers write a user's own streams (through that user's
actor, with the request's trace id); everything else here is a read.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

import gevent
from flask import g, has_request_context, request

from atrium.config import Config
from atrium.logs import request_id_var
from store.account_data import AccountDataStore
from store.database import Database
from store.device_lists import DeviceListStore
from store.filters import FilterStore
from store.presence import PresenceStore
from store.receipts import ReceiptStore
from store.sync import SyncStore
from store.to_device import ToDeviceStore
from supervision import Supervisor, SupervisionError, Tracer
from web.notifier import Notifier
from web.sync_caches import LRU, Coalescer, MembershipCache, RoomPositions, SharedReads
from web.room_service import RoomService
from web.sync_token import SyncToken
from web.typing import TypingTracker

from actors.user import UserActor, UserDeps
from actors.user_messages import Active, PresenceTick

log = logging.getLogger(__name__)

LAZY_CACHE_DEVICES = 10_000
TIMELINE_SLICES = 4_096
HINT_REPEAT_S = 10.0


class SyncService:
    def __init__(self, config: Config, db: Database, rooms: RoomService, tracer: Tracer) -> None:
        self.config = config
        self.db = db
        self.rooms = rooms
        self.events = rooms.events
        self.state_groups = rooms.state_groups
        self.store = SyncStore(db, rooms.state_groups)
        self.account_data = AccountDataStore(db)
        self.receipts = ReceiptStore(db)
        self.presence = PresenceStore(db)
        self.to_device = ToDeviceStore(db)
        self.device_lists = DeviceListStore(db)
        self.filters = FilterStore(db)
        self.local_suffix = ":" + config.server_name
        self.notifier = Notifier(
            config.server_name,
            lambda room_id: self.store.local_members(room_id, self.local_suffix),
            self.store.joined_rooms)
        self.typing = TypingTracker(self.notifier)
        # new events are cached at commit only for rooms someone is waiting on: they are
        # read at once then; otherwise the cache would fill with events nobody reads
        self.events.cache_new = self.notifier.has_waiters
        for stream in (self.events.stream, self.account_data.stream, self.receipts.stream,
                       self.presence.stream, self.to_device.stream, self.device_lists.stream):
            self.notifier.watch(stream)
        self.device_lists.on_change.append(self._device_lists_changed)
        presence_cfg = config.raw.get("presence") if isinstance(config.raw, dict) else None
        self.presence_enabled = not (isinstance(presence_cfg, dict)
                                     and presence_cfg.get("enabled") is False)
        self.user_deps = UserDeps(
            db=db, account_data=self.account_data, receipts=self.receipts,
            presence=self.presence, to_device=self.to_device, filters=self.filters,
            waker=self.notifier, presence_enabled=self.presence_enabled,
            schedule=self._schedule, local_suffix=self.local_suffix,
            on_account_data=self._account_data_written)
        a = config.actors
        self.supervisor = Supervisor(
            "users", lambda user_id: UserActor(user_id, self.user_deps), tracer=tracer,
            max_mailbox=a.mailbox_size, ask_timeout=a.ask_timeout, idle_timeout=a.idle_timeout,
            restart_delay=a.restart_delay, max_restarts=a.max_restarts,
            restart_window=a.restart_window, park_duration=a.park_duration)
        self.positions = RoomPositions(self.events.stream.current(),
                                       self.store.latest_positions)
        self.memberships = MembershipCache(lambda u: self.store.memberships(u, 2 ** 62))
        # (room, lo, hi, n) → timeline ids: one read for every /sync the same event woke
        self.timeline_slices: SharedReads[tuple[str, int, int, int], list[tuple[str, int]]] = \
            SharedReads(TIMELINE_SLICES)
        self._event_reads: Coalescer[tuple[str, ...]] = Coalescer()
        self._ignored: LRU[str, frozenset[str]] = LRU(100_000)
        self.filter_cache: LRU[tuple[str, int], Any] = LRU(10_000)
        # to-device: (user, device) → (lowest, highest) id delivered and not yet acknowledged;
        # devices not in ``td_checked`` are looked up once (after a restart)
        self.td_unacked: dict[tuple[str, str], tuple[int, int]] = {}
        self.td_checked: LRU[tuple[str, str], bool] = LRU(100_000)
        self._hints: LRU[str, tuple[Any, float]] = LRU(100_000)
        # (user, device) → {(room, member): (member event id, event position when sent)}
        self.lazy_sent: OrderedDict[tuple[str, str], dict[tuple[str, str], tuple[str, int]]] = \
            OrderedDict()

    # ---------------------------------------------------------------- positions
    def current_token(self) -> SyncToken:
        return SyncToken(self.events.stream.current(), self.typing.current(),
                         self.receipts.stream.current(), self.account_data.stream.current(),
                         self.presence.stream.current(), self.to_device.stream.current(),
                         self.device_lists.stream.current())

    def is_local(self, user_id: str) -> bool:
        return user_id.endswith(self.local_suffix)

    def timeline_ids(self, room_id: str, lo: int, hi: int, limit: int
                     ) -> list[tuple[str, int]]:
        """store.timeline_ids, shared: ``hi`` is a committed position and events are never
        inserted below it, so the answer for (room, lo, hi, limit) never changes.  The
        newest events of active rooms are answered from memory (store/recent_timeline.py):
        that is what the /syncs one new event wakes ask for."""
        recent = self.events.recent.ids(room_id, lo, hi, limit)
        if recent is not None:
            return recent
        return self.timeline_slices.get(
            (room_id, lo, hi, limit), lambda: self.store.timeline_ids(room_id, lo, hi, limit))

    def get_events(self, event_ids: list[str]) -> dict[str, Any]:
        """EventStore.get_events, with concurrent reads of the same ids made once: the
        others wait for it, then find the events in the EventStore's cache."""
        self._event_reads.fill(tuple(event_ids), lambda: self.events.get_events(event_ids))
        return self.events.get_events(event_ids)

    # ---------------------------------------------------------------- talking to users
    def ask_user(self, user_id: str, msg: Any) -> Any:
        trace, sender = _origin()
        return self.supervisor.ask(user_id, msg, trace_id=trace, sender=sender)

    def tell_user(self, user_id: str, msg: Any) -> None:
        trace, sender = _origin()
        try:
            self.supervisor.tell(user_id, msg, trace_id=trace, sender=sender)
        except SupervisionError as e:  # full, parked or stopping: a hint, not a request
            log.debug("tell %s to %s refused: %s", type(msg).__name__, user_id, e)

    def hint_user(self, user_id: str, msg: Any, timeout: float = 1.0) -> None:
        """Ask, but a failure only logs: for presence hints a request must not fail on.
        The same hint again within HINT_REPEAT_S is skipped (a sync loop repeats itself)."""
        now = time.monotonic()
        last = self._hints.get(user_id)
        if last is not None and last[0] == msg and now - last[1] < HINT_REPEAT_S:
            return
        self._hints.put(user_id, (msg, now))
        trace, sender = _origin()
        try:
            self.supervisor.ask(user_id, msg, timeout=timeout, trace_id=trace, sender=sender)
        except Exception as e:  # noqa: BLE001 - the answer does not depend on it
            log.warning("presence hint %s for %s failed: %s", type(msg).__name__, user_id, e)

    def _schedule(self, delay: float, user_id: str, msg: Any) -> Any:
        return gevent.spawn_later(delay, self.tell_user, user_id, msg)

    # ---------------------------------------------------------------- hooks
    def on_persisted(self, room_id: str, events: Any) -> None:
        """RoomService hook (first in the list): update the read caches before anything can
        yield."""
        self.positions.note(room_id, [so for _, so in events],
                            [so for ev, so in events if ev.get("type") == "m.room.member"])
        for ev, _ in events:
            target = ev.get("state_key")
            if ev.get("type") == "m.room.member" and isinstance(target, str) \
                    and self.is_local(target):
                self.memberships.invalidate(target)

    def wake_persisted(self, room_id: str, events: Any) -> None:
        """RoomService hook (last in the list): wake the room's /syncs; local senders count
        as active.  Last, so that the push evaluator, woken by its own hook before, runs
        first: the woken /syncs then find the room evaluated instead of waiting for it."""
        self.notifier.on_persisted(room_id, events, self.events.stream)
        if self.presence_enabled:
            for sender in {ev.get("sender") for ev, _ in events}:
                if isinstance(sender, str) and self.is_local(sender):
                    self.tell_user(sender, Active())

    def _account_data_written(self, user_id: str, room_id: str | None, type_: str) -> None:
        if room_id is None and type_ == "m.ignored_user_list":
            self._ignored.pop(user_id)

    def ignored_users(self, user_id: str) -> frozenset[str]:
        cached = self._ignored.get(user_id)
        if cached is None:
            cached = self.account_data.ignored_users(user_id)
            self._ignored.put(user_id, cached)
        return cached

    def _device_lists_changed(self, user_ids: list[str], pos: int) -> None:
        audience: set[str] = set()
        for u in user_ids:
            audience |= self.notifier.audience(u)
        self.notifier.wake_users(audience, self.device_lists.stream, pos)

    def sweep_presence(self) -> None:
        """At start-up: users left online by a previous process get a tick (→ offline)."""
        if not self.presence_enabled:
            return
        for user_id in self.presence.not_offline():
            if self.is_local(user_id):
                self.tell_user(user_id, PresenceTick())

    def lazy_cache(self, user_id: str, device_id: str | None
                   ) -> dict[tuple[str, str], tuple[str, int]]:
        key = (user_id, device_id or "")
        cache = self.lazy_sent.get(key)
        if cache is None:
            cache = self.lazy_sent[key] = {}
            while len(self.lazy_sent) > LAZY_CACHE_DEVICES:
                self.lazy_sent.popitem(last=False)
        else:
            self.lazy_sent.move_to_end(key)
        return cache

    def shutdown(self) -> None:
        self.notifier.close()
        self.typing.close()
        self.supervisor.stop_all()


def _origin() -> tuple[str | None, str | None]:
    """The trace id and sender of actor messages caused by the current request: its request
    id (a Flask route's, or the one web/sync_endpoint.py set for /sync); none from a timer."""
    if has_request_context():
        return (getattr(g, "request_id", None),
                f"web {request.method} {request.path}"[:120])
    rid = request_id_var.get()
    return (rid, "web") if rid != "-" else (None, None)
