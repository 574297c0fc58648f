"""Each active room's newest timeline events in memory, so the /syncs that one new event
wakes read their timeline slice without a trip to the database.

Filled by :class:`store.events.EventStore` after each persist commits (before the room's
``on_persisted`` hooks wake anyone), with the events the timeline query would return
(``outlier = 0 AND rejection IS NULL AND soft_failed = 0``).  A room's tail is complete
above its ``floor``: every timeline event of the room with a position above it is in the
tail.  That holds because every event this process stores passes through
``EventStore.persist`` and a room's events commit in position order (one writer per room):

* a tail created when its room's first event since start-up commits gets the floor
  ``max(start position, horizon)``: the room had no event between start-up and now (else
  it would have a tail) — except before ``horizon``, the newest position of any tail
  evicted so far, past which the room may have had events in an evicted tail;
* dropping the oldest entry (past ``per_room``) raises the floor to its position;
* an event not kept (:meth:`skip`: the wiring keeps only rooms someone waits on, so that
  memory follows the rooms being watched) drops its room's tail and raises ``horizon``.

A query whose range reaches below the floor answers ``None``, and the caller reads the
store.  Scale-out seam: with several processes writing one room's events this no longer
holds; a process would keep tails only for the rooms it owns.
"""
from __future__ import annotations

from collections import OrderedDict, deque


class RecentTimeline:
    def __init__(self, start: int, *, rooms: int = 1_024, per_room: int = 24) -> None:
        self._start = start
        self._horizon = start
        self._rooms_max = rooms
        self._per_room = per_room
        # room → [floor, deque of (event_id, stream_ordering), oldest first]
        self._tails: OrderedDict[str, list] = OrderedDict()

    def add(self, room_id: str, event_id: str, stream_ordering: int) -> None:
        """A committed timeline event (called in position order for each room)."""
        tail = self._tails.get(room_id)
        if tail is None:
            tail = self._tails[room_id] = [max(self._start, self._horizon), deque()]
            while len(self._tails) > self._rooms_max:
                _, (floor, old) = self._tails.popitem(last=False)
                top = old[-1][1] if old else floor
                if top > self._horizon:
                    self._horizon = top
        else:
            self._tails.move_to_end(room_id)
        entries: deque = tail[1]
        if entries and stream_ordering <= entries[-1][1]:
            # out of order (never expected): nothing below this is known any more
            entries.clear()
            tail[0] = stream_ordering
            return
        entries.append((event_id, stream_ordering))
        if len(entries) > self._per_room:
            tail[0] = entries.popleft()[1]

    def skip(self, room_id: str, stream_ordering: int) -> None:
        """A committed timeline event not kept (nobody is waiting on its room): the room's
        tail goes, and no tail-less room answers for a range below this position."""
        self._tails.pop(room_id, None)
        if stream_ordering > self._horizon:
            self._horizon = stream_ordering

    def ids(self, room_id: str, lo: int, hi: int, limit: int
            ) -> list[tuple[str, int]] | None:
        """(event_id, stream_ordering) in (lo, hi], newest first, at most ``limit`` — as
        ``SyncStore.timeline_ids`` answers — or None when the tail cannot tell."""
        tail = self._tails.get(room_id)
        if tail is None:
            # no event of this room committed since start-up (or since the horizon)
            return [] if lo >= max(self._start, self._horizon) else None
        if lo < tail[0]:
            return None
        out: list[tuple[str, int]] = []
        for eid, so in reversed(tail[1]):
            if so <= lo or len(out) >= limit:
                break
            if so <= hi:
                out.append((eid, so))
        return out

    def __len__(self) -> int:
        return len(self._tails)
