"""In-memory read caches that keep an idle or incremental /sync off the database.

All are filled from the store and kept current by the writers' after-commit hooks, which run
in the writer's greenlet before it yields (RoomService.on_persisted, with the sync hook
first in the list; the UserActor's account-data hook), so a /sync never sees a position its
cache does not cover:

* :class:`RoomPositions` — each room's latest event position, so "did anything happen in my
  rooms since the token" needs no query.  Hooks advance a contiguous high-water mark; a gap
  (an allocated id whose write failed) is healed by one range query;
* :class:`MembershipCache` — a user's membership history (invalidated by their member
  events; a fill that raced an invalidation is not kept);
* :class:`SharedReads` — reads whose answer can never change (a room's timeline ids in a
  range of committed positions), read once for all the /syncs one event woke and kept in a
  small LRU; :class:`Coalescer` — concurrent identical reads whose answer may change later
  (events by id: a redaction), where the followers wait for the leader and then read the
  leader's freshly filled cache;
* small LRUs: ignored users, parsed stored filters.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Generic, Hashable, Iterable, TypeVar

import gevent.event

from store.sync import Membership

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

MAX_PENDING = 10_000


class LRU(Generic[K, V]):
    def __init__(self, size: int) -> None:
        self._d: OrderedDict[K, V] = OrderedDict()
        self._size = size

    def get(self, key: K) -> V | None:
        v = self._d.get(key)
        if v is not None:
            self._d.move_to_end(key)
        return v

    def put(self, key: K, value: V) -> None:
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self._size:
            self._d.popitem(last=False)

    def pop(self, key: K) -> None:
        self._d.pop(key, None)


class SharedReads(Generic[K, V]):
    """key → an immutable answer: computed once (concurrent askers wait for the one read in
    flight), then served from a bounded LRU."""

    def __init__(self, size: int) -> None:
        self._done: LRU[K, V] = LRU(size)
        self._flying: dict[K, gevent.event.AsyncResult] = {}
        self.reads = 0   # reads that went to the store (tests, stats)

    def get(self, key: K, read: Callable[[], V]) -> V:
        hit = self._done.get(key)
        if hit is not None:
            return hit
        flight = self._flying.get(key)
        if flight is not None:
            return flight.get()
        flight = self._flying[key] = gevent.event.AsyncResult()
        self.reads += 1
        try:
            value = read()
        except BaseException as e:
            self._flying.pop(key, None)
            flight.set_exception(e)
            raise
        self._flying.pop(key, None)
        self._done.put(key, value)
        flight.set(value)
        return value


class Coalescer(Generic[K]):
    """At most one ``fill`` per key at a time: whoever comes while one is running waits for
    it to end (however it ends) and returns; the caller then reads what it filled."""

    def __init__(self) -> None:
        self._flying: dict[K, gevent.event.Event] = {}

    def fill(self, key: K, fill: Callable[[], object]) -> None:
        flight = self._flying.get(key)
        if flight is not None:
            flight.wait()
            return
        flight = self._flying[key] = gevent.event.Event()
        try:
            fill()
        finally:
            del self._flying[key]
            flight.set()


#: rooms whose latest positions RoomPositions keeps (the most recently active ones)
POSITION_ROOMS = 4_096


class RoomPositions:
    """room → latest event position, complete for every position up to ``hwm`` and from
    ``floor`` on.  Only the ``max_rooms`` most recently active rooms are kept: dropping a
    room raises ``floor`` to its latest position, so "not in the map" still means "no event
    after ``floor``", and a reader with an older token is told the map cannot answer."""

    def __init__(self, start: int, heal: Callable[[int, int], Iterable[tuple[str, int]]],
                 max_rooms: int = POSITION_ROOMS) -> None:
        # below the floor the map knows nothing (events before boot, or of dropped rooms)
        self.floor = start
        self.hwm = start
        self._heal = heal            # (lo, hi] → (room_id, max position) rows from the store
        self._last: OrderedDict[str, int] = OrderedDict()
        self.last_member: dict[str, int] = {}   # room → latest m.room.member position
        self._pending: set[int] = set()
        self.max_rooms = max_rooms

    def note(self, room_id: str, positions: Iterable[int], member_positions: Iterable[int] = ()
             ) -> None:
        for p in member_positions:
            if p > self.last_member.get(room_id, 0):
                self.last_member[room_id] = p
        last = self._last.get(room_id, 0)
        for p in positions:
            if p > last:
                last = p
            if p > self.hwm:
                self._pending.add(p)
        self._set(room_id, last)
        pending = self._pending
        while self.hwm + 1 in pending:
            pending.discard(self.hwm + 1)
            self.hwm += 1
        if len(pending) > MAX_PENDING:
            pending.clear()  # a long-stuck gap: the next reader heals with one query

    def _set(self, room_id: str, last: int) -> None:
        self._last[room_id] = last
        self._last.move_to_end(room_id)
        while len(self._last) > self.max_rooms:
            dropped, pos = self._last.popitem(last=False)
            self.last_member.pop(dropped, None)
            if pos > self.floor:
                self.floor = pos

    def moved_since(self, since: int, upto: int) -> Callable[[str], bool] | None:
        """A test "did room r get an event in (since, upto]?" (it may say yes for an event
        after upto: the caller's range query then finds nothing); None if ``since`` is older
        than what the map covers."""
        if since < self.floor:
            return None
        if upto > self.hwm:
            for room_id, pos in self._heal(self.hwm, upto):
                if pos > self._last.get(room_id, 0):
                    self._set(room_id, pos)
            self.hwm = upto
            self._pending = {p for p in self._pending if p > upto}
            if since < self.floor:  # the healed rooms pushed out one newer than the token
                return None
        last = self._last
        # should rooms be dropped while the caller still asks (a burst of other rooms), the
        # test answers yes for every room it no longer knows: the range query decides
        return lambda room_id: last.get(room_id, 0) > since or self.floor > since

    def members_moved(self, rooms: Iterable[str], since: int) -> bool | None:
        """Did any of ``rooms`` get a member event after ``since``?  (None: unknown.)"""
        if since < self.floor:
            return None
        return any(self.last_member.get(r, 0) > since for r in rooms)


class MembershipCache:
    """user → their membership events (all positions), oldest first."""

    def __init__(self, load: Callable[[str], dict[str, list[Membership]]],
                 size: int = 50_000) -> None:
        self._load = load
        self._lru: LRU[str, dict[str, list[Membership]]] = LRU(size)
        self._version: dict[str, int] = {}

    def invalidate(self, user_id: str) -> None:
        self._version[user_id] = self._version.get(user_id, 0) + 1
        self._lru.pop(user_id)
        if len(self._version) > 200_000:
            self._version.clear()  # old versions only matter while a fill is in flight

    def get(self, user_id: str, upto: int) -> dict[str, list[Membership]]:
        rows = self._lru.get(user_id)
        if rows is None:
            version = self._version.get(user_id, 0)
            rows = self._load(user_id)
            if self._version.get(user_id, 0) == version:
                self._lru.put(user_id, rows)
        out: dict[str, list[Membership]] = {}
        for room_id, ms in rows.items():
            kept = [m for m in ms if m.stream_ordering <= upto]
            if kept:
                out[room_id] = kept
        return out
