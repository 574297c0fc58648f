"""Room state at events, as state groups: immutable maps (type, state_key) → event_id stored
as a chain of deltas, with a full snapshot every ``SNAPSHOT_EVERY`` links so a lookup walks
a bounded chain.  Groups never change once written, so resolved maps are cached in memory
(LRU, bounded)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

from store.database import Database, Txn
from store.streams import StreamIdGenerator

StateKey = tuple[str, str]
StateMap = Mapping[StateKey, str]

SNAPSHOT_EVERY = 50


class StateGroupStore:
    def __init__(self, db: Database, cache_size: int = 1000) -> None:
        self.db = db
        self.ids = StreamIdGenerator(db, "state_groups", "id")
        self._cache: OrderedDict[int, dict[StateKey, str]] = OrderedDict()
        self._chain: dict[int, int] = {}
        self._cache_size = cache_size

    # -- writing (inside the room actor's persist transaction) ----------------------------
    def new_group_id(self) -> int:
        with self.ids.allocate() as (gid,):
            return gid

    def write_group(self, txn: Txn, group_id: int, room_id: str, prev_group: int | None,
                    delta: Mapping[StateKey, str | None], full: StateMap) -> None:
        """Store ``full`` (the whole state) as group ``group_id``, as a delta on ``prev_group``
        when the chain is short enough, else as a snapshot."""
        chain = 0
        if prev_group is not None:
            prev_chain = self._chain.get(prev_group)
            if prev_chain is None:
                prev_chain = int(txn.query_value(
                    "SELECT chain_length FROM state_groups WHERE id = ?", (prev_group,),
                    default=0))
            chain = prev_chain + 1
        if prev_group is None or chain >= SNAPSHOT_EVERY:
            prev_group, chain = None, 0
            rows = [(group_id, t, k, e) for (t, k), e in full.items()]
        else:
            rows = [(group_id, t, k, e) for (t, k), e in delta.items()]
        txn.execute("INSERT INTO state_groups (id, room_id, prev_group, chain_length)"
                    " VALUES (?, ?, ?, ?)", (group_id, room_id, prev_group, chain))
        txn.executemany("INSERT INTO state_group_entries (state_group, type, state_key, event_id)"
                        " VALUES (?, ?, ?, ?)", rows)
        txn.call_after_commit(lambda: self._remember(group_id, dict(full), chain))

    # -- reading ------------------------------------------------------------------------
    def _remember(self, gid: int, state: dict[StateKey, str], chain: int) -> None:
        self._chain[gid] = chain
        self._cache[gid] = state
        self._cache.move_to_end(gid)
        while len(self._cache) > self._cache_size:
            old, _ = self._cache.popitem(last=False)
            self._chain.pop(old, None)

    def get_state(self, group_id: int) -> dict[StateKey, str]:
        """The full state map of a group (a copy the caller may change)."""
        cached = self._cache.get(group_id)
        if cached is not None:
            self._cache.move_to_end(group_id)
            return dict(cached)
        state = self.db.run("get_state_group", self.read_group, group_id)
        self._remember(group_id, state, 0)
        return dict(state)

    def read_group(self, txn: Txn, group_id: int) -> dict[StateKey, str]:
        chain: list[int] = []
        gid: int | None = group_id
        base: dict[StateKey, str] | None = None
        while gid is not None:
            cached = self._cache.get(gid)
            if cached is not None:
                base = dict(cached)
                break
            chain.append(gid)
            gid = txn.query_value("SELECT prev_group FROM state_groups WHERE id = ?", (gid,))
        state: dict[StateKey, str] = base or {}
        for g in reversed(chain):
            for t, k, e in txn.query("SELECT type, state_key, event_id FROM state_group_entries"
                                     " WHERE state_group = ?", (g,)):
                if e is None:
                    state.pop((t, k), None)
                else:
                    state[(t, k)] = e
        return state
