"""Token-bucket rate limiting for the ``rc_*`` config keys (Synapse's semantics: a bucket
of ``burst_count`` actions refilling at ``per_second``).  Over the limit → 429
``M_LIMIT_EXCEEDED`` with ``retry_after_ms``.

Buckets live in memory of the one process that serves the server (see ARCHITECTURE,
"Scale-out": with several processes they move to Redis or PostgreSQL).  Idle buckets are
pruned, so memory follows active keys.
"""
from __future__ import annotations

import time
from typing import Callable

from atrium.config import RateLimit
from atrium.errors import limit_exceeded


class Ratelimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        self._clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # key → (tokens, t)
        self._max_keys = max_keys

    def check(self, action: str, key: str, limit: RateLimit, *, cost: float = 1.0,
              update: bool = True) -> None:
        """Take ``cost`` from the bucket or raise 429 with the time until it would succeed."""
        if limit.per_second <= 0 and limit.burst_count <= 0:
            return
        now = self._clock()
        k = (action, key)
        tokens, t = self._buckets.get(k, (limit.burst_count, now))
        tokens = min(limit.burst_count, tokens + (now - t) * limit.per_second)
        if tokens < cost:
            need = cost - tokens
            wait = need / limit.per_second if limit.per_second > 0 else 3600.0
            self._buckets[k] = (tokens, now)
            raise limit_exceeded(int(wait * 1000) + 1)
        if update:
            self._buckets[k] = (tokens - cost, now)
            if len(self._buckets) > self._max_keys:
                self._prune(now)

    def _prune(self, now: float) -> None:
        # drop the oldest half: a bucket untouched for long is full again anyway
        items = sorted(self._buckets.items(), key=lambda kv: kv[1][1])
        for k, _ in items[: len(items) // 2]:
            del self._buckets[k]
