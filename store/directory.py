"""The room directory's storage: local room aliases (``room_aliases``) and the published
room list (``rooms.is_public``).

Neither is room state: an alias and a room's directory visibility are facts this server
keeps about a room, not events in its DAG, so they are written here and not by the room's
actor (the actor only sets ``is_public`` once, in the transaction that creates a public
room).  The public list is computed on read from ``current_state``; past a few thousand
published rooms the seam for a maintained summary table is :meth:`DirectoryStore.
published_rooms` (fed by an ``on_persisted`` hook).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from store.database import Database, IntegrityError, Txn

#: State types whose content the public room list shows or searches.
SUMMARY_TYPES = ("m.room.create", "m.room.name", "m.room.topic", "m.room.canonical_alias",
                 "m.room.avatar", "m.room.join_rules", "m.room.history_visibility",
                 "m.room.guest_access")


@dataclass(frozen=True)
class AliasRow:
    alias: str
    room_id: str
    creator: str


@dataclass(frozen=True)
class PublishedRoom:
    """A published room: its joined member count and the ids of its summary state."""

    room_id: str
    joined: int
    state: dict[str, str]          # event type -> event id (state_key "")


class DirectoryStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------------ aliases
    def get_alias(self, alias: str) -> AliasRow | None:
        r = self.db.run("get_alias", lambda t: t.query_one(
            "SELECT alias, room_id, creator FROM room_aliases WHERE alias = ?", (alias,)))
        return AliasRow(*r) if r else None

    def create_alias(self, alias: str, room_id: str, creator: str) -> bool:
        """Map ``alias`` to ``room_id``; False when the alias is taken."""
        try:
            self.db.run("create_alias", lambda t: t.execute(
                "INSERT INTO room_aliases (alias, room_id, creator, created_ts)"
                " VALUES (?, ?, ?, ?)", (alias, room_id, creator, int(time.time() * 1000))),
                write=True)
        except IntegrityError:
            return False
        return True

    def delete_alias(self, alias: str) -> bool:
        return bool(self.db.run("delete_alias", lambda t: t.execute(
            "DELETE FROM room_aliases WHERE alias = ?", (alias,)), write=True))

    def aliases_of_room(self, room_id: str) -> list[str]:
        return self.db.run("room_aliases", lambda t: [a for (a,) in t.query(
            "SELECT alias FROM room_aliases WHERE room_id = ? ORDER BY alias", (room_id,))])

    def move_aliases(self, old_room: str, new_room: str) -> list[str]:
        """Point every local alias of ``old_room`` at ``new_room`` (a room upgrade)."""
        def _move(t: Txn) -> list[str]:
            moved = [a for (a,) in t.query(
                "SELECT alias FROM room_aliases WHERE room_id = ? ORDER BY alias", (old_room,))]
            t.execute("UPDATE room_aliases SET room_id = ? WHERE room_id = ?",
                      (new_room, old_room))
            return moved

        return self.db.run("move_aliases", _move, write=True)

    # ------------------------------------------------------------------ published list
    def is_public(self, room_id: str) -> bool | None:
        """Whether the room is published; None for a room we do not know."""
        v = self.db.run("room_is_public", lambda t: t.query_value(
            "SELECT is_public FROM rooms WHERE room_id = ?", (room_id,)))
        return None if v is None else bool(v)

    def set_public(self, room_id: str, public: bool) -> None:
        self.db.run("set_public", lambda t: t.execute(
            "UPDATE rooms SET is_public = ? WHERE room_id = ?", (int(public), room_id)),
            write=True)

    def published_rooms(self) -> list[PublishedRoom]:
        """Every published room, most joined members first (room id breaks ties)."""
        marks = ",".join("?" * len(SUMMARY_TYPES))

        def _q(t: Txn) -> list[PublishedRoom]:
            counts = t.query(
                "SELECT r.room_id, (SELECT COUNT(*) FROM current_state m"
                " WHERE m.room_id = r.room_id AND m.type = 'm.room.member'"
                " AND m.membership = 'join') FROM rooms r WHERE r.is_public = 1")
            state: dict[str, dict[str, str]] = {}
            for room_id, etype, eid in t.query(
                    "SELECT c.room_id, c.type, c.event_id FROM current_state c"
                    " JOIN rooms r ON r.room_id = c.room_id WHERE r.is_public = 1"
                    f" AND c.state_key = '' AND c.type IN ({marks})", SUMMARY_TYPES):
                state.setdefault(room_id, {})[etype] = eid
            rooms = [PublishedRoom(rid, int(n), state.get(rid, {})) for rid, n in counts]
            rooms.sort(key=lambda p: (-p.joined, p.room_id))
            return rooms

        return self.db.run("published_rooms", _q)
