"""UserActor: one per active local user, the single writer of that user's own streams —
account data (global, per room, tags, ``m.ignored_user_list``, ``m.fully_read``), receipts
and read markers, presence, stored filters, and the to-device messages the user sends.
Serialising them per user orders the writes without locks (read-modify-write of tags, the
"receipts never move backwards" check, filter ids).

Each write commits through the store, then wakes the /syncs concerned through the
``SyncWaker`` it was built with (web/notifier.py; actors don't import web).

Presence (modules/presence.md) is a small state machine kept in memory and written to the
store only when something visible changes: a /sync with ``set_presence=online`` makes an
offline user online; activity (sending events) bumps last active and makes an idle user
online again; ``idle_after`` without activity → unavailable; ``currently_active`` drops after
``active_granularity``; no /sync for ``offline_after`` after the last one ended → offline.
Timers are ``tell``s scheduled through the supervisor, so they outlive idle passivation: a
tick for a stopped actor starts a fresh one, which reloads its state from the store.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from atrium.errors import MatrixError
from store.account_data import AccountDataStore
from store.database import Database
from store.filters import FilterStore
from store.presence import OFFLINE, ONLINE, UNAVAILABLE, PresenceStore
from store.receipts import ReceiptStore
from store.to_device import ToDeviceStore
from supervision import SupervisedActor

from actors.user_push import PUSH_RULE_MESSAGES, handle_push_message

from actors.user_messages import (
    AckToDevice, Active, CreateFilter, DeleteTag, PresenceTick, PutAccountData, PutReceipt,
    PutTag, ReadMarkers, SendToDevice, SetPresence, SyncStarted, SyncWaker,
)

log = logging.getLogger(__name__)

PRIVATE_RECEIPT = "m.read.private"


@dataclass
class UserDeps:
    """What every UserActor is built with (wired once at start-up)."""

    db: Database
    account_data: AccountDataStore
    receipts: ReceiptStore
    presence: PresenceStore
    to_device: ToDeviceStore
    filters: FilterStore
    waker: SyncWaker
    presence_enabled: bool = True
    idle_after: float = 300.0
    offline_after: float = 30.0
    active_granularity: float = 60.0
    clock: Callable[[], float] = time.time
    # (delay_s, user_id, message) → a handle with .kill(); set by the wiring
    schedule: Callable[[float, str, Any], Any] | None = None
    local_suffix: str = field(default="")
    # (user_id, room_id or None, type) after an account-data commit (cache invalidation)
    on_account_data: Callable[[str, str | None, str], None] | None = None


class UserActor(SupervisedActor):
    domain_errors = (MatrixError,)
    handles_push_rules = True  # push-rule writes (actors/user_push.py) come through here

    def __init__(self, user_id: str, deps: UserDeps) -> None:
        super().__init__()
        self.user_id = user_id
        self.deps = deps
        self.state = OFFLINE
        self.status_msg: str | None = None
        self.last_active = 0.0
        self.currently_active = False
        self.sync_deadline = 0.0
        self._timer: Any = None

    # ------------------------------------------------------------------ loading
    def load(self) -> None:
        row = self.deps.presence.get(self.user_id)
        now = self.deps.clock()
        if row is not None:
            self.state, self.status_msg = row.state, row.status_msg
            self.last_active = row.last_active_ts / 1000.0
            self.currently_active = row.currently_active
        # after a restart, give a connected client one offline_after to sync again
        self.sync_deadline = now + self.deps.offline_after
        if self.state != OFFLINE and self.deps.presence_enabled:
            self._schedule_tick(now)

    def on_stop(self) -> None:
        pass  # the presence timer stays: it restarts the actor when it fires

    # ------------------------------------------------------------------ messages
    def handle(self, msg: Any) -> Any:
        if isinstance(msg, PUSH_RULE_MESSAGES):
            return handle_push_message(self, msg)
        d = self.deps
        if isinstance(msg, PutAccountData):
            return self._put_account_data(msg.room_id, msg.type, dict(msg.content))
        if isinstance(msg, PutTag):
            tags = self._tags(msg.room_id)
            tags[msg.tag] = dict(msg.content)
            return self._put_account_data(msg.room_id, "m.tag", {"tags": tags})
        if isinstance(msg, DeleteTag):
            tags = self._tags(msg.room_id)
            if tags.pop(msg.tag, None) is None:
                return None
            return self._put_account_data(msg.room_id, "m.tag", {"tags": tags})
        if isinstance(msg, PutReceipt):
            return self._receipt(msg.room_id, msg.receipt_type, msg.event_id,
                                 msg.event_stream_ordering, msg.thread_id)
        if isinstance(msg, ReadMarkers):
            return self._read_markers(msg)
        if isinstance(msg, CreateFilter):
            return d.filters.create(self.user_id, msg.definition)
        if isinstance(msg, SendToDevice):
            return self._send_to_device(msg)
        if isinstance(msg, AckToDevice):
            d.to_device.delete_acknowledged(self.user_id, msg.device_id, msg.upto)
            return None
        if isinstance(msg, SetPresence):
            return self._set_presence(msg)
        if isinstance(msg, SyncStarted):
            return self._sync_started(msg)
        if isinstance(msg, Active):
            return self._active()
        if isinstance(msg, PresenceTick):
            return self._tick()
        raise TypeError(f"UserActor: unknown message {type(msg).__name__}")

    # ------------------------------------------------------------------ account data
    def _put_account_data(self, room_id: str | None, type_: str, content: dict[str, Any]) -> int:
        ad = self.deps.account_data
        sid = ad.put(self.user_id, room_id, type_, content)
        if self.deps.on_account_data is not None:
            self.deps.on_account_data(self.user_id, room_id, type_)
        self.deps.waker.wake_users([self.user_id], ad.stream, sid)
        return sid

    def _tags(self, room_id: str) -> dict[str, Any]:
        current = self.deps.account_data.get(self.user_id, room_id, "m.tag") or {}
        tags = current.get("tags")
        return dict(tags) if isinstance(tags, dict) else {}

    # ------------------------------------------------------------------ receipts
    def _receipt(self, room_id: str, receipt_type: str, event_id: str, event_so: int,
                 thread_id: str | None) -> int | None:
        store = self.deps.receipts
        sid = store.put(room_id, receipt_type, self.user_id, thread_id or "", event_id,
                        event_so, int(self.deps.clock() * 1000))
        if sid is None:
            return None  # older than the receipt we have: nothing moves
        if receipt_type == PRIVATE_RECEIPT:
            self.deps.waker.wake_users([self.user_id], store.stream, sid)
        else:
            self.deps.waker.wake_room(room_id, store.stream, sid)
        return sid

    def _read_markers(self, msg: ReadMarkers) -> None:
        if msg.fully_read is not None:
            self._put_account_data(msg.room_id, "m.fully_read", {"event_id": msg.fully_read[0]})
        if msg.read is not None:
            self._receipt(msg.room_id, "m.read", msg.read[0], msg.read[1], None)
        if msg.read_private is not None:
            self._receipt(msg.room_id, PRIVATE_RECEIPT, msg.read_private[0],
                          msg.read_private[1], None)

    # ------------------------------------------------------------------ to-device
    def _send_to_device(self, msg: SendToDevice) -> bool:
        store = self.deps.to_device
        targets = [(u, dev, c) for u, dev, c in msg.targets]
        pos, fresh = store.send(self.user_id, msg.sender_device, msg.txn_id, msg.type, targets)
        if fresh and targets:
            self.deps.waker.wake_users({u for u, _, _ in targets}, store.stream, pos)
        return fresh

    # ------------------------------------------------------------------ presence
    def _set_presence(self, msg: SetPresence) -> None:
        now = self.deps.clock()
        status = msg.status_msg if msg.explicit_status else self.status_msg
        if msg.state == ONLINE:
            self.last_active = now
        self._write_presence(msg.state, status, msg.state == ONLINE, force=True)
        self._schedule_tick(now)

    def _sync_started(self, msg: SyncStarted) -> None:
        if not self.deps.presence_enabled:
            return
        now = self.deps.clock()
        if msg.set_presence == OFFLINE:
            return  # this client does not count as connected
        self.sync_deadline = max(self.sync_deadline,
                                 now + msg.timeout_ms / 1000.0 + self.deps.offline_after)
        if msg.set_presence == ONLINE and self.state == OFFLINE:
            self.last_active = now
            self._write_presence(ONLINE, self.status_msg, True)
        elif msg.set_presence == UNAVAILABLE and self.state != UNAVAILABLE:
            self._write_presence(UNAVAILABLE, self.status_msg, False)
        self._schedule_tick(now)

    def _active(self) -> None:
        if not self.deps.presence_enabled:
            return
        now = self.deps.clock()
        self.last_active = now
        if self.state != ONLINE or not self.currently_active:
            self._write_presence(ONLINE, self.status_msg, True)
        self._schedule_tick(now)

    def _tick(self) -> None:
        if not self.deps.presence_enabled:
            return
        now = self.deps.clock()
        state, active = self.state, self.currently_active
        if state == ONLINE and now - self.last_active >= self.deps.idle_after:
            state, active = UNAVAILABLE, False
        elif state == ONLINE and active and now - self.last_active >= self.deps.active_granularity:
            active = False
        if state != OFFLINE and now >= self.sync_deadline:
            state, active = OFFLINE, False
        self._write_presence(state, self.status_msg, active)
        self._schedule_tick(now)

    def _write_presence(self, state: str, status_msg: str | None, active: bool,
                        force: bool = False) -> None:
        if not force and (state, status_msg, active) == (
                self.state, self.status_msg, self.currently_active):
            return
        self.state, self.status_msg, self.currently_active = state, status_msg, active
        store = self.deps.presence
        sid = store.put(self.user_id, state, status_msg, int(self.last_active * 1000), active)
        waker = self.deps.waker
        waker.wake_users(waker.audience(self.user_id), store.stream, sid)

    def _schedule_tick(self, now: float) -> None:
        d = self.deps
        if d.schedule is None or not d.presence_enabled:
            return
        due: list[float] = []
        if self.state == ONLINE:
            due.append(self.last_active + d.idle_after)
            if self.currently_active:
                due.append(self.last_active + d.active_granularity)
        if self.state != OFFLINE:
            due.append(self.sync_deadline)
        if self._timer is not None:
            try:
                self._timer.kill(block=False)
            except Exception:  # noqa: BLE001 - a finished timer
                pass
            self._timer = None
        if due:
            self._timer = d.schedule(max(0.01, min(due) - now + 0.01), self.user_id,
                                     PresenceTick())
