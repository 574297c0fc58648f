"""Presence across servers over time (server-server-api.md "Presence"; Synapse's timings): a
server only tells others about changes, so each side needs a clock.

* Keep-alive: every ``PING_INTERVAL`` the presence of each local user who is not offline is
  sent again to the servers sharing a room with them, so that the other side's timeout does
  not take them offline while nothing changes.
* Timeout: a remote user not offline whose server said nothing about them for
  ``REMOTE_TIMEOUT`` (Synapse's 30 minutes; longer than its 25-minute keep-alive) is marked
  offline here, and the local users who share a room with them see it in /sync.  After a
  restart every remote user gets a whole ``REMOTE_TIMEOUT`` from the start.

``PresenceTimers.tick()`` does one round of both (due work only); ``start()`` runs it every
``TICK`` seconds in a greenlet until ``stop()``.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

import gevent

log = logging.getLogger(__name__)

PING_INTERVAL = 25 * 60.0      # s between keep-alives of one local user's presence
REMOTE_TIMEOUT = 30 * 60.0     # s of silence after which a remote user is offline
TICK = 60.0                    # s between rounds
OFFLINE = "offline"


class PresenceTimers:
    """``presence`` the PresenceStore (``get``, ``put``, ``not_offline``, ``stream``),
    ``room_edus`` the inbound side (``heard(user) -> clock value | None``, ``forget``),
    ``out`` the RoomEduSender (``send_presence``), ``notifier`` (``audience``,
    ``wake_users``)."""

    def __init__(self, server_name: str, presence: Any, room_edus: Any, out: Any,
                 notifier: Any, *, clock: Callable[[], float] = time.monotonic,
                 ping_interval: float = PING_INTERVAL, remote_timeout: float = REMOTE_TIMEOUT
                 ) -> None:
        self.suffix = ":" + server_name
        self.presence = presence
        self.room_edus = room_edus
        self.out = out
        self.notifier = notifier
        self.clock = clock
        self.ping_interval = ping_interval
        self.remote_timeout = remote_timeout
        self.started = clock()
        self._pinged: dict[str, float] = {}
        self._worker: Any = None

    def _local(self, user_id: str) -> bool:
        return user_id.endswith(self.suffix)

    def tick(self) -> tuple[int, int]:
        """(local users pinged, remote users timed out) in this round."""
        now = self.clock()
        pinged = expired = 0
        users = self.presence.not_offline()
        live = set(users)
        for user_id in users:
            try:
                if self._local(user_id):
                    pinged += self._ping(user_id, now)
                else:
                    expired += self._expire(user_id, now)
            except Exception:  # noqa: BLE001 - one user's failure does not stop the round
                log.exception("presence timer for %s failed", user_id)
        for user_id in [u for u in self._pinged if u not in live]:
            del self._pinged[user_id]
        return pinged, expired

    def _ping(self, user_id: str, now: float) -> int:
        last = self._pinged.get(user_id)
        if last is None:
            # the change itself went out when it happened: the first keep-alive is due one
            # interval after we first see the user online
            self._pinged[user_id] = now
            return 0
        if now - last < self.ping_interval:
            return 0
        row = self.presence.get(user_id)
        self._pinged[user_id] = now
        if row is None or row.state == OFFLINE:
            return 0
        self.out.send_presence(user_id, row.state, row.status_msg, row.last_active_ts,
                               row.currently_active)
        return 1

    def _expire(self, user_id: str, now: float) -> int:
        heard = self.room_edus.heard(user_id)
        if now - (self.started if heard is None else heard) < self.remote_timeout:
            return 0
        row = self.presence.get(user_id)
        if row is None or row.state == OFFLINE:
            return 0
        sid = self.presence.put(user_id, OFFLINE, row.status_msg, row.last_active_ts, False)
        self.room_edus.forget(user_id)
        self.notifier.wake_users(self.notifier.audience(user_id), self.presence.stream, sid)
        log.info("presence of %s timed out (nothing from its server for %.0f s)", user_id,
                 self.remote_timeout)
        return 1

    # -- the loop ---------------------------------------------------------------------------
    def start(self, every: float = TICK) -> None:
        if self._worker is None:
            self._worker = gevent.spawn(self._run, every)

    def _run(self, every: float) -> None:
        while True:
            gevent.sleep(every)
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - housekeeping; next round
                log.exception("presence timers failed")

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.kill(block=False)
            self._worker = None
