"""Outbound PDUs: which other servers get each event of ours (server-server-api
"Transactions", "PDUs"; "Inviting to a room" and "Leaving Rooms (Rejecting Invites)" for
the target's server).

:class:`PduOut` is a ``RoomService.on_persisted`` hook (installed last: it runs after the
/sync caches, the push queue and the notifier).  For every persisted event whose sender is a
user of OUR server it tells ``fed.sender.send_pdus(destinations, room_id, stream_ordering)``;
other servers' events are never re-broadcast, except the joins, leaves and knocks
we relay as the resident server (**Relaying** below).  The RoomActor calls the hooks only with the
accepted timeline events of a commit (``actors/room.py`` ``_commit``: the events it built,
authorised and persisted — no rejected, soft-failed or outlier event is passed; the inbound
PDU path must keep it so).

The destinations of an event are the servers with a joined member in the room at the event
(after it), plus, for a member event, those joined before it (so a leaving, kicked or banned
server hears of it), plus the target user's server for a kick, ban, leave (a rescinded
invite) or knock — never ourselves.  An invite is not special here: it reaches the invitee's
server through ``/invite`` (by its builder), and the room's other servers like any event.

The hot path reads nothing: a bounded LRU keeps, per room, the joined users by server,
moved by the member events as they persist (ours and other servers', all pass through
here).  A room is loaded once from ``current_state`` when first needed — not at all when
the hook first sees it being created — and dropped when no user of ours is joined any more
(a later rejoin, e.g. through a remote ``send_join``, loads it again).  A room loaded in the
middle of a commit is loaded as it is after that commit, so an event earlier in the same
commit may reach a server whose user joined later in it; the leave side needs no history
(the target rule covers the leaving server).

**Relaying** (server-server-api "Joining Rooms", "Leaving Rooms (Rejecting Invites)",
"Knocking Upon a Room"): a join, leave or knock that another server sent us through
send_join / send_leave / send_knock reached only us, the resident server, and we must pass it
on.  ``relay(room_id, event_id, origin)`` is ``fed.extras["membership_received"]`` (called by
:mod:`federation.membership` once the event is accepted): it records the event in
``federation_relayed`` (so the RemoteServerActor's reads, live and catch-up, take it like
one of ours, in stream order with the room's other events) and tells the sender the servers
with joined members before and after it, minus ``origin`` and us.  Only the origin's own
user changes membership in such an event, so those are the cached joined servers (after it)
without the origin.

``forget(room_id)`` drops a room's entry: whoever changes a room's membership without
passing through the hooks (state resolution at a merge, a partial-state join completing)
calls it.  ``partial_state_servers(room_id, servers)``: after a partial-state join (the
spec's ``omit_members``) current state lacks most members; until ``forget``, our events there
also go to ``servers`` (the ``servers_in_room`` of the ``send_join`` answer), as Synapse does.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)

MAX_ROOMS = 4096
#: member events whose target's server hears of them even with nobody joined there
TARGET_MEMBERSHIPS = frozenset({"leave", "ban", "knock"})


def server_of(user_id: str) -> str:
    return user_id.partition(":")[2]


class _Members:
    """One room's joined users by server (ours included), and the other servers."""

    __slots__ = ("by_server", "remote", "ours")

    def __init__(self, ours: str) -> None:
        self.by_server: dict[str, set[str]] = {}
        self.remote: frozenset[str] = frozenset()
        self.ours = ours

    def set(self, user_id: str, joined: bool) -> bool:
        """Record ``user_id``'s membership; True if the set of servers changed."""
        server = server_of(user_id)
        users = self.by_server.get(server)
        if joined:
            if users is None:
                self.by_server[server] = {user_id}
                self._servers_moved()
                return True
            users.add(user_id)
            return False
        if users is None or user_id not in users:
            return False
        users.discard(user_id)
        if not users:
            del self.by_server[server]
            self._servers_moved()
            return True
        return False

    def _servers_moved(self) -> None:
        self.remote = frozenset(s for s in self.by_server if s != self.ours)

    @property
    def we_are_joined(self) -> bool:
        return self.ours in self.by_server


class PduOut:
    """See the module docstring.  ``send_pdus`` is ``FederationSender.send_pdus``."""

    def __init__(self, server_name: str, db: Any,
                 send_pdus: Callable[[list[str], str, int], None], *,
                 max_rooms: int = MAX_ROOMS,
                 record_relay: Callable[[str, str, str, int], int | None] | None = None
                 ) -> None:
        self.server_name = server_name
        self.db = db
        self.send_pdus = send_pdus
        #: ``PduReads.relay``: records a relayed event, answers its stream ordering
        self.record_relay = record_relay
        self.max_rooms = max_rooms
        self._suffix = ":" + server_name
        self._rooms: OrderedDict[str, _Members] = OrderedDict()
        self._partial: dict[str, frozenset[str]] = {}
        self.loads = 0   # rooms read from current_state (tests: the hot path reads nothing)

    # -- the hook -----------------------------------------------------------------------
    def on_persisted(self, room_id: str, persisted: Sequence[tuple[dict[str, Any], int]]
                     ) -> None:
        suffix = self._suffix
        ours = members = False
        for ev, _ in persisted:
            if ev.get("type") == "m.room.member":
                members = True
            if str(ev.get("sender", "")).endswith(suffix):
                ours = True
        if not ours and not members:
            return  # another server's message: nothing to send, nothing moves
        room = self._rooms.get(room_id)
        applied = False
        if room is not None:
            self._rooms.move_to_end(room_id)
        else:
            first = persisted[0][0]
            if first.get("type") == "m.room.create" and first.get("state_key") == "" \
                    and not first.get("prev_events"):
                room = self._add(room_id, _Members(self.server_name))  # a new room
            elif not ours:
                return  # nothing of ours to send; the room is read when there is
            else:
                room = self._add(room_id, self._load(room_id))
                applied = True  # current_state already holds this commit's members
        for ev, stream_ordering in persisted:
            target = _member_target(ev)
            before = room.remote
            if target is not None and not applied:
                room.set(target[1], target[0] == "join")
            if not str(ev.get("sender", "")).endswith(suffix):
                continue
            dests = set(room.remote)
            if self._partial:
                dests |= self._partial.get(room_id, frozenset())
            if target is not None:
                dests |= before
                if target[0] in TARGET_MEMBERSHIPS:
                    dests.add(server_of(target[1]))
            dests.discard(self.server_name)
            if dests:
                self.send_pdus(sorted(dests), room_id, stream_ordering)
        if not room.we_are_joined:
            self._rooms.pop(room_id, None)  # not ours any more: a rejoin reloads it
            self._partial.pop(room_id, None)

    def relay(self, room_id: str, event_id: str, origin: str) -> list[str]:
        """Pass on another server's accepted join / leave / knock (see the module
        docstring); the destinations it went to."""
        if self.record_relay is None:
            return []
        stream_ordering = self.record_relay(room_id, event_id, origin,
                                            int(time.time() * 1000))
        if stream_ordering is None:
            log.warning("not relaying %s in %s: not an accepted event there", event_id,
                        room_id)
            return []
        room = self._rooms.get(room_id)
        if room is not None:
            self._rooms.move_to_end(room_id)
            dests = set(room.remote)
        else:
            room = self._load(room_id)
            dests = set(room.remote)
            if room.we_are_joined:
                self._add(room_id, room)
        dests |= self._partial.get(room_id, frozenset())
        dests.discard(origin)
        dests.discard(self.server_name)
        out = sorted(dests)
        if out:
            self.send_pdus(out, room_id, stream_ordering)
        return out

    def forget(self, room_id: str) -> None:
        """Drop what is known of ``room_id``'s members (read again when next needed)."""
        self._rooms.pop(room_id, None)
        self._partial.pop(room_id, None)

    def partial_state_servers(self, room_id: str, servers: Sequence[str]) -> None:
        """Until ``forget(room_id)``, our events in the room also go to ``servers``."""
        if len(self._partial) >= self.max_rooms and room_id not in self._partial:
            self._partial.pop(next(iter(self._partial)))
        self._partial[room_id] = frozenset(servers)

    def joined_servers(self, room_id: str) -> frozenset[str] | None:
        """The other servers with joined members, as cached (None if not cached)."""
        room = self._rooms.get(room_id)
        return room.remote if room is not None else None

    # -- the cache ----------------------------------------------------------------------
    def _add(self, room_id: str, room: _Members) -> _Members:
        self._rooms[room_id] = room
        while len(self._rooms) > self.max_rooms:
            self._rooms.popitem(last=False)
        return room

    def _load(self, room_id: str) -> _Members:
        self.loads += 1
        rows = self.db.run("pdu_out_members", lambda t: t.query(
            "SELECT state_key FROM current_state WHERE room_id = ? AND type = 'm.room.member'"
            " AND membership = 'join'", (room_id,)))
        room = _Members(self.server_name)
        for (user_id,) in rows:
            room.set(user_id, True)
        return room


def _member_target(ev: dict[str, Any]) -> tuple[str, str] | None:
    if ev.get("type") != "m.room.member" or not isinstance(ev.get("state_key"), str):
        return None
    content = ev.get("content")
    m = content.get("membership") if isinstance(content, dict) else None
    return (m if isinstance(m, str) else "", ev["state_key"])


def install(app: Any, fed: Any, parts: dict[str, Any]) -> PduOut | None:  # noqa: ARG001
    """Hang :class:`PduOut` on the rooms' ``on_persisted`` hooks (last), give the sender
    the events stream's position and set ``fed.extras["membership_received"]`` (relaying).
    Idempotent; nothing without a sender."""
    existing = fed.extras.get("pdu_out")
    if existing is not None:
        return existing
    if fed.sender is None:
        return None
    rooms = parts["rooms"]
    reads = getattr(fed.sender, "pdu_reads", None)
    out = PduOut(fed.server_name, fed.db, fed.sender.send_pdus,
                 record_relay=reads.relay if reads is not None else None)
    fed.sender.events_position = rooms.events.stream.current
    rooms.on_persisted.append(out.on_persisted)
    fed.extras["pdu_out"] = out
    fed.extras["membership_received"] = out.relay
    return out
