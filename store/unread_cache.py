"""Unread counts kept in memory, so that the /syncs one event wakes read none from the
database (store/push.py :func:`~store.push.unread_counts` is the only reader).

An entry is one local user's counts in one room as store/push.py computes them — the read
position per thread (``''`` unthreaded, ``main`` or a thread root; receipts and the user's
own latest event) and thread → [notifications, highlights] after it — filled by a read of
the store and then moved forward by the push evaluator as it evaluates each event, before
the /syncs waiting on it pass its barrier:

- a notifying event of thread T counts when it comes after both the unthreaded read
  position and T's (the SQL's rule);
- the user's own event in T reads T up to it: T's count drops to zero (every earlier row of
  T is older; the evaluator hands over a room's events in stream order).

Whatever else moves a read position or rows — a read receipt, a deactivation, a batch the
evaluator re-evaluates while catching up from the store, a write of its that failed — drops
the entries concerned, and the next read fills them again.

A fill must not store counts older than an update it missed: each (user, room) being filled
is marked, an update or drop of it meanwhile makes the fill's result unusable, and the
result is then returned to its caller but not kept.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Sequence

Key = tuple[str, str]  # (user_id, room_id)
#: (read position by thread, thread → [notifications, highlights])
Raw = tuple[dict[str, int], dict[str, list[int]]]

UNTHREADED = ""
#: (user, room) entries kept; least recently used go first
DEFAULT_SIZE = 20_000


class UnreadCache:
    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[Key, Raw] = OrderedDict()
        self._filling: dict[Key, int] = {}   # key → fills in flight
        self._stale: set[Key] = set()        # touched while a fill of it was in flight
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------------ reading
    def get(self, key: Key) -> dict[str, list[int]] | None:
        """Thread → [notifications, highlights] (the entry's own: read, never change it),
        or None when not held."""
        raw = self._entries.get(key)
        if raw is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return raw[1]

    def begin_fill(self, keys: Iterable[Key]) -> list[Key]:
        """Mark ``keys`` as being read from the store; call before the read starts (and
        before it takes the evaluator's unwritten rows), and :meth:`end_fill` with the same
        keys (returned) after it."""
        keys = list(keys)
        for k in keys:
            self._filling[k] = self._filling.get(k, 0) + 1
        return keys

    def end_fill(self, keys: Sequence[Key], got: dict[Key, Raw] | None) -> None:
        """The read of ``keys`` is over (``got`` None: it failed); keep what no update
        overtook."""
        for k in keys:
            n = self._filling.get(k, 0) - 1
            if got is not None and k in got and k not in self._stale:
                reads, counts = got[k]
                self._put(k, (dict(reads), {t: list(v) for t, v in counts.items()}))
            if n > 0:
                self._filling[k] = n
            else:
                self._filling.pop(k, None)
                self._stale.discard(k)

    def _put(self, key: Key, raw: Raw) -> None:
        self._entries[key] = raw
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    # ------------------------------------------------------------------ updates
    def _touch(self, key: Key) -> None:
        if key in self._filling:
            self._stale.add(key)

    def evaluated(self, rows: Iterable[Sequence], own: Iterable[Sequence[object]]) -> None:
        """Move the entries forward by one evaluated batch: ``rows`` as the evaluator
        writes them (user, event, room, stream ordering, thread, actions, highlight, ts),
        ``own`` as (user, room, thread, stream ordering)."""
        changes: dict[Key, list[tuple[int, str, int]]] = {}
        for user_id, _, room_id, so, thread_id, _, highlight, _ in rows:
            changes.setdefault((user_id, room_id), []).append(
                (int(so), str(thread_id), 1 if highlight else 0))
        for user_id, room_id, thread_id, so in own:
            changes.setdefault((str(user_id), str(room_id)), []).append(
                (int(so), str(thread_id), -1))  # type: ignore[arg-type]
        for key, items in changes.items():
            self._touch(key)
            raw = self._entries.get(key)
            if raw is None:
                continue
            reads, counts = raw
            items.sort(key=lambda i: i[0])
            for so, thread_id, kind in items:
                if kind < 0:  # own event: the thread is read up to it
                    if so > reads.get(thread_id, -1):
                        reads[thread_id] = so
                        counts.pop(thread_id, None)
                elif so > max(reads.get(UNTHREADED, -1), reads.get(thread_id, -1)):
                    cell = counts.setdefault(thread_id, [0, 0])
                    cell[0] += 1
                    cell[1] += kind

    def drop(self, key: Key) -> None:
        """A read position of (user, room) moved outside the evaluator (a receipt)."""
        self._touch(key)
        self._entries.pop(key, None)

    def drop_keys(self, keys: Iterable[Key]) -> None:
        for k in keys:
            self.drop(k)

    def drop_user(self, user_id: str) -> None:
        for k in [k for k in self._entries if k[0] == user_id]:
            del self._entries[k]
        for k in self._filling:
            if k[0] == user_id:
                self._stale.add(k)

    def clear(self) -> None:
        self._entries.clear()
        self._stale.update(self._filling)
