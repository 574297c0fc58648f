"""Removing a room's rows: the whole room (the admin API's delete with ``purge``) or its
history before a point (Synapse's "Purge History API").  Callers stop the room's actor first
and keep it stopped (``Supervisor.retire``), so the DAG the actor owns never changes under
it (ARCHITECTURE invariant 1).

Whole room, in transactions by table group, each idempotent so an interrupted purge is
finished by running it again (the task resumes at start-up):

1. the room itself: ``rooms`` first (from then on the room is unknown everywhere), its
   current state, forward extremities, aliases and user-directory entry;
2. its events, ``BATCH`` at a time: each batch's rows in every table keyed by event
   (edges, auth, relations, redactions, memberships, search index, push actions, sending
   transactions, relayed events) and the events themselves;
3. its state groups;
4. what users hold about it: room account data (tags), receipts, push bookkeeping, key
   backups of the room's sessions, forgotten marks, leftovers of step 2 keyed by room.

History: the timeline events with depth below the point (never a forward extremity) are
taken out of the timeline.  Non-state events of other servers' users go, and local users'
too with ``delete_local_events``; the rest (state events, which current state and auth
chains need, and kept local messages) stay as outliers, as Synapse keeps them, so
``/messages`` ends at the point.
"""
from __future__ import annotations

from typing import Any, Sequence

from store.database import POSTGRES, Database, Txn

BATCH = 500

# tables whose rows of an event are deleted with it (column naming the event)
_BY_EVENT = (("event_edges", "event_id"), ("event_auth", "event_id"),
             ("event_relations", "event_id"), ("redactions", "event_id"),
             ("room_memberships", "event_id"), ("event_push_actions", "event_id"),
             ("event_txns", "event_id"), ("federation_relayed", "event_id"))
# per-room rows users hold, and leftovers of events never stored here
_BY_ROOM = ("receipts", "event_push_actions", "event_push_own", "e2e_room_keys",
            "forgotten_rooms", "event_txns", "event_edges", "event_relations", "redactions",
            "room_memberships", "federation_relayed")


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _delete_events(txn: Txn, rows: Sequence[tuple[int, str]]) -> None:
    """Delete the events ``(stream_ordering, event_id)`` and their rows everywhere."""
    if not rows:
        return
    ids = [r[1] for r in rows]
    streams = [r[0] for r in rows]
    for table, col in _BY_EVENT:
        txn.execute(f"DELETE FROM {table} WHERE {col} IN ({_marks(len(ids))})", ids)
    search_col = "stream_ordering" if txn.engine == POSTGRES else "rowid"
    txn.execute(f"DELETE FROM event_search WHERE {search_col} IN ({_marks(len(streams))})",
                streams)
    txn.execute(f"DELETE FROM events WHERE stream_ordering IN ({_marks(len(streams))})",
                streams)


class RoomPurger:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------------ whole room
    def purge_room(self, room_id: str) -> dict[str, int]:
        """Delete every row of the room; how many events and state groups went."""
        def head(t: Txn) -> None:
            t.execute("DELETE FROM rooms WHERE room_id = ?", (room_id,))
            for table in ("current_state", "room_forward_extremities", "room_aliases",
                          "user_directory_rooms"):
                t.execute(f"DELETE FROM {table} WHERE room_id = ?", (room_id,))

        self.db.run("purge_room_head", head, write=True)
        events = 0
        while True:
            n = self.db.run("purge_room_events", self._event_batch, room_id, write=True)
            events += n
            if n < BATCH:
                break
        groups = 0
        while True:
            n = self.db.run("purge_room_state", self._group_batch, room_id, write=True)
            groups += n
            if n < BATCH:
                break

        def users(t: Txn) -> None:
            t.execute("DELETE FROM account_data WHERE room_id = ?", (room_id,))
            for table in _BY_ROOM:
                t.execute(f"DELETE FROM {table} WHERE room_id = ?", (room_id,))

        self.db.run("purge_room_users", users, write=True)
        return {"events": events, "state_groups": groups}

    @staticmethod
    def _event_batch(txn: Txn, room_id: str) -> int:
        rows = [(int(r[0]), r[1]) for r in txn.query(
            "SELECT stream_ordering, event_id FROM events WHERE room_id = ?"
            " ORDER BY stream_ordering LIMIT ?", (room_id, BATCH))]
        _delete_events(txn, rows)
        return len(rows)

    @staticmethod
    def _group_batch(txn: Txn, room_id: str) -> int:
        ids = [int(r[0]) for r in txn.query(
            "SELECT id FROM state_groups WHERE room_id = ? ORDER BY id LIMIT ?",
            (room_id, BATCH))]
        if ids:
            txn.execute(f"DELETE FROM state_group_entries WHERE state_group IN"
                        f" ({_marks(len(ids))})", ids)
            txn.execute(f"DELETE FROM state_groups WHERE id IN ({_marks(len(ids))})", ids)
        return len(ids)

    def room_event_ids(self, room_id: str) -> set[str]:
        return self.db.run("purge_room_event_ids", lambda t: {r[0] for r in t.query(
            "SELECT event_id FROM events WHERE room_id = ?", (room_id,))})

    # ------------------------------------------------------------------ history
    def purge_history(self, room_id: str, depth: int, *, delete_local_events: bool,
                      server_name: str) -> dict[str, Any]:
        """Take the room's timeline events of depth below ``depth`` out (see the module
        docstring); the ids deleted and how many were kept as outliers."""
        deleted: list[str] = []
        kept = 0
        after = -1
        while True:
            def batch(t: Txn, after: int) -> tuple[int, list[str], int]:
                rows = t.query(
                    "SELECT e.stream_ordering, e.event_id, e.state_key, e.sender FROM events e"
                    " WHERE e.room_id = ? AND e.depth < ? AND e.outlier = 0"
                    " AND e.stream_ordering > ? AND NOT EXISTS (SELECT 1 FROM"
                    " room_forward_extremities f WHERE f.room_id = e.room_id"
                    " AND f.event_id = e.event_id) ORDER BY e.stream_ordering LIMIT ?",
                    (room_id, depth, after, BATCH))
                gone = [(int(r[0]), r[1]) for r in rows if r[2] is None and (
                    delete_local_events or not _is_local(r[3], server_name))]
                stay = [int(r[0]) for r in rows if r[2] is not None or not (
                    delete_local_events or not _is_local(r[3], server_name))]
                _delete_events(t, gone)
                if stay:
                    t.execute(f"UPDATE events SET outlier = 1 WHERE stream_ordering IN"
                              f" ({_marks(len(stay))})", stay)
                last = int(rows[-1][0]) if rows else after
                return last, [g[1] for g in gone], len(stay) if rows else -1

            last, gone_ids, n_kept = self.db.run("purge_history_batch", batch, after,
                                                 write=True)
            if n_kept < 0:
                break
            deleted += gone_ids
            kept += n_kept
            after = last
        return {"deleted": deleted, "kept_as_outliers": kept}


def _is_local(user_id: str, server_name: str) -> bool:
    return isinstance(user_id, str) and ":" in user_id \
        and user_id.split(":", 1)[1] == server_name
