"""Stream position allocation: monotonically increasing ids whose *current token* only moves
past an id once every smaller id has finished (committed or aborted).

Writers to different rooms persist concurrently, so id 11 may commit before id 10.  A reader
that asked for "everything up to 11" at that moment would miss 10 forever; so readers use
:meth:`StreamIdGenerator.current`, which stays at 9 until 10 is done.

One generator per process per stream.  With several processes (ARCHITECTURE "Scale-out")
this becomes a PostgreSQL sequence plus per-writer positions; the seam is this class.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from store.database import Database, Txn


class StreamIdGenerator:
    def __init__(self, db: Database, table: str, column: str) -> None:
        def _max(txn: Txn) -> int:
            return int(txn.query_value(f"SELECT MAX({column}) FROM {table}", default=0))

        self._last = db.run(f"max_{table}_{column}", _max)
        self._persisted = self._last
        self._in_flight: set[int] = set()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[int], None]] = []

    def current(self) -> int:
        """Every id <= this has finished; ids above it may still be in flight."""
        return self._persisted

    def add_listener(self, fn: Callable[[int], None]) -> None:
        """``fn(new_current)`` after the current token advances (e.g. wake /sync waiters)."""
        self._listeners.append(fn)

    @contextmanager
    def allocate(self, n: int = 1) -> Iterator[list[int]]:
        """Allocate ``n`` consecutive ids for one write; they finish when the block exits."""
        with self._lock:
            ids = list(range(self._last + 1, self._last + 1 + n))
            self._last += n
            self._in_flight.update(ids)
        try:
            yield ids
        finally:
            with self._lock:
                self._in_flight.difference_update(ids)
                new = (min(self._in_flight) - 1) if self._in_flight else self._last
                advanced = new > self._persisted
                if advanced:
                    self._persisted = new
            if advanced:
                for fn in self._listeners:
                    fn(new)
