"""``rc_federation``: the per-origin limit on inbound federation requests (Synapse's
semantics and key names; ``atrium.federation_config.RcFederation``).

Per origin server, over the last ``window_size`` seconds:

- a request beyond the ``sleep_limit``-th first sleeps ``sleep_delay`` (each such request,
  not cumulative — Synapse's behaviour);
- a request beyond the ``reject_limit``-th is refused with 429 ``M_LIMIT_EXCEEDED`` and a
  ``retry_after_ms`` saying when the window will have room again (refused requests count
  too, so a flood stays refused until it stops);
- at most ``concurrent`` requests of one origin run at once; the rest wait their turn.

State is bounded: an origin's record is at most ``reject_limit + 1`` timestamps, and idle
origins are forgotten past :data:`MAX_ORIGINS` (least recently seen first).

Works under gevent (after monkey-patching ``threading`` is cooperative) and plain threads.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from contextlib import contextmanager
from typing import Callable, Iterator

from atrium.errors import limit_exceeded
from atrium.federation_config import RcFederation

MAX_ORIGINS = 10_000


class _Origin:
    __slots__ = ("times", "slots", "active")

    def __init__(self, rc: RcFederation) -> None:
        self.times: deque[float] = deque(maxlen=rc.reject_limit + 1)
        self.slots = threading.BoundedSemaphore(rc.concurrent)
        self.active = 0   # requests admitted (sleeping, waiting for a slot, or running)


class FederationRateLimiter:
    def __init__(self, rc: RcFederation, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 max_origins: int = MAX_ORIGINS) -> None:
        self.rc = rc
        self.clock = clock
        self.sleep = sleep
        self.max_origins = max_origins
        self._origins: OrderedDict[str, _Origin] = OrderedDict()
        self._lock = threading.Lock()

    def _admit(self, origin: str) -> tuple[_Origin, bool]:
        """Record a request; (state, whether it must sleep first); raises 429."""
        rc = self.rc
        now = self.clock()
        with self._lock:
            st = self._origins.get(origin)
            if st is None:
                st = self._origins[origin] = _Origin(rc)
                self._trim()
            self._origins.move_to_end(origin)
            while st.times and st.times[0] <= now - rc.window_size:
                st.times.popleft()
            st.times.append(now)
            n = len(st.times)
            if n > rc.reject_limit:
                # room for one more once the two oldest have left the window
                retry = st.times[min(1, n - 1)] + rc.window_size - now
                raise limit_exceeded(max(1, int(retry * 1000 + 0.999)))
            st.active += 1
            return st, n > rc.sleep_limit

    def _trim(self) -> None:
        if len(self._origins) <= self.max_origins:
            return
        for name in list(self._origins):
            if len(self._origins) <= self.max_origins:
                break
            if self._origins[name].active == 0:
                del self._origins[name]

    @contextmanager
    def limited(self, origin: str) -> Iterator[None]:
        st, must_sleep = self._admit(origin)
        try:
            if must_sleep and self.rc.sleep_delay > 0:
                self.sleep(self.rc.sleep_delay)
            with st.slots:
                yield
        finally:
            with self._lock:
                st.active -= 1

    def tracked_origins(self) -> int:
        with self._lock:
            return len(self._origins)
