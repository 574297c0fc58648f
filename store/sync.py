"""Store reads that /sync needs, all at a stream position (ARCHITECTURE invariant 2: reads
never go through actors): a user's memberships, which rooms moved in a range, a room's
timeline slice, the state at a position, member counts and heroes.

Positions are event stream orderings; "state at p" is the state after the room's last
timeline event with stream_ordering <= p (each event stores the state group after it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from store.database import Database, Txn
from store.state import StateGroupStore, StateKey

#: what /sync streams: timeline events, not backfilled history (backfilled events get new
#: stream positions but are old; /messages places them by depth, /sync never shows them as new)
_TIMELINE = "outlier = 0 AND rejection IS NULL AND soft_failed = 0 AND backfilled = 0"


@dataclass(frozen=True)
class Membership:
    room_id: str
    membership: str
    event_id: str
    stream_ordering: int


class SyncStore:
    def __init__(self, db: Database, state_groups: StateGroupStore) -> None:
        self.db = db
        self.state_groups = state_groups

    # -- memberships ----------------------------------------------------------------------
    def memberships(self, user_id: str, upto: int) -> dict[str, list[Membership]]:
        """room → the user's membership events with stream_ordering <= upto, oldest first."""
        rows = self.db.run("sync_memberships", lambda t: t.query(
            "SELECT m.room_id, m.membership, m.event_id, m.stream_ordering"
            " FROM room_memberships m JOIN events e ON e.event_id = m.event_id"
            " WHERE m.user_id = ? AND m.stream_ordering <= ? AND e.outlier = 0"
            " AND e.rejection IS NULL ORDER BY m.stream_ordering", (user_id, upto)))
        out: dict[str, list[Membership]] = {}
        for r in rows:
            out.setdefault(r[0], []).append(Membership(r[0], r[1], r[2], int(r[3])))
        return out

    def forgotten_rooms(self, user_id: str) -> set[str]:
        return set(self.db.run("forgotten", lambda t: [r[0] for r in t.query(
            "SELECT room_id FROM forgotten_rooms WHERE user_id = ?", (user_id,))]))

    def latest_positions(self, since: int, upto: int) -> list[tuple[str, int]]:
        """(room_id, latest position) of rooms with events in (since, upto]."""
        if upto <= since:
            return []
        return self.db.run("rooms_latest", lambda t: [(r[0], int(r[1])) for r in t.query(
            "SELECT room_id, MAX(stream_ordering) FROM events WHERE stream_ordering > ?"
            " AND stream_ordering <= ? AND backfilled = 0 GROUP BY room_id", (since, upto))])

    def rooms_with_events(self, since: int, upto: int) -> set[str]:
        if upto <= since:
            return set()
        return set(self.db.run("rooms_moved", lambda t: [r[0] for r in t.query(
            "SELECT DISTINCT room_id FROM events WHERE stream_ordering > ?"
            " AND stream_ordering <= ? AND backfilled = 0", (since, upto))]))

    # -- timeline -------------------------------------------------------------------------
    def timeline_ids(self, room_id: str, lo: int, hi: int, limit: int) -> list[tuple[str, int]]:
        """(event_id, stream_ordering) in (lo, hi], newest first, at most ``limit``."""
        return self.db.run("sync_timeline", lambda t: [(r[0], int(r[1])) for r in t.query(
            f"SELECT event_id, stream_ordering FROM events WHERE room_id = ? AND {_TIMELINE}"
            " AND stream_ordering > ? AND stream_ordering <= ? ORDER BY stream_ordering DESC"
            " LIMIT ?", (room_id, lo, hi, limit))])

    # -- state ----------------------------------------------------------------------------
    def state_group_at(self, room_id: str, pos: int) -> int | None:
        return self.db.run("state_group_at", lambda t: t.query_value(
            f"SELECT state_group FROM events WHERE room_id = ? AND {_TIMELINE}"
            " AND stream_ordering <= ? AND state_group IS NOT NULL"
            " ORDER BY stream_ordering DESC LIMIT 1", (room_id, pos)))

    def state_at(self, room_id: str, pos: int) -> dict[StateKey, str]:
        """The room state after its last event at or before ``pos`` ({} before the room)."""
        group = self.state_group_at(room_id, pos)
        return self.state_groups.get_state(group) if group is not None else {}

    # -- summary --------------------------------------------------------------------------
    def member_summary(self, room_id: str) -> list[tuple[str, str, int]]:
        """(user_id, membership, stream_ordering of the member event), current state."""
        return self.db.run("member_summary", lambda t: [(r[0], r[1], int(r[2])) for r in t.query(
            "SELECT cs.state_key, cs.membership, e.stream_ordering FROM current_state cs"
            " JOIN events e ON e.event_id = cs.event_id WHERE cs.room_id = ?"
            " AND cs.type = 'm.room.member' ORDER BY e.stream_ordering", (room_id,))])

    def name_event_ids(self, room_id: str) -> list[str]:
        """Current m.room.name / m.room.canonical_alias event ids (does the room have a name?)."""
        return self.db.run("name_events", lambda t: [r[0] for r in t.query(
            "SELECT event_id FROM current_state WHERE room_id = ? AND state_key = ''"
            " AND type IN ('m.room.name', 'm.room.canonical_alias')", (room_id,))])

    def joined_members(self, room_ids: Iterable[str]) -> set[str]:
        """Users joined to any of ``room_ids`` now (presence and device-list audiences)."""
        rooms = sorted(set(room_ids))

        def _q(txn: Txn) -> set[str]:
            out: set[str] = set()
            for i in range(0, len(rooms), 200):
                chunk = rooms[i:i + 200]
                marks = ",".join("?" * len(chunk))
                out.update(r[0] for r in txn.query(
                    "SELECT DISTINCT state_key FROM current_state WHERE type = 'm.room.member'"
                    f" AND membership = 'join' AND room_id IN ({marks})", chunk))
            return out

        return self.db.run("joined_members", _q) if rooms else set()

    def joined_rooms(self, user_id: str) -> list[str]:
        return self.db.run("joined_rooms", lambda t: [r[0] for r in t.query(
            "SELECT room_id FROM current_state WHERE type = 'm.room.member' AND state_key = ?"
            " AND membership = 'join'", (user_id,))])

    def local_members(self, room_id: str, server_suffix: str) -> set[str]:
        """Local users joined or invited to the room now (the notifier's room map)."""
        return set(self.db.run("local_members", lambda t: [r[0] for r in t.query(
            "SELECT state_key FROM current_state WHERE room_id = ? AND type = 'm.room.member'"
            " AND membership IN ('join', 'invite')", (room_id,))
            if r[0].endswith(server_suffix)]))

    def membership_changes(self, room_ids: Iterable[str], since: int, upto: int
                           ) -> list[tuple[str, str, str]]:
        """(room_id, user_id, membership) of member events in (since, upto] in those rooms,
        oldest first (device-list changed/left)."""
        rooms = set(room_ids)
        if upto <= since or not rooms:
            return []
        rows = self.db.run("membership_changes", lambda t: t.query(
            "SELECT room_id, user_id, membership FROM room_memberships"
            " WHERE stream_ordering > ? AND stream_ordering <= ? ORDER BY stream_ordering",
            (since, upto)))
        return [(r, u, m) for r, u, m in rows if r in rooms]

    def members_of(self, room_id: str) -> set[str]:
        return set(self.db.run("members_of", lambda t: [r[0] for r in t.query(
            "SELECT state_key FROM current_state WHERE room_id = ? AND type = 'm.room.member'"
            " AND membership = 'join'", (room_id,))]))
