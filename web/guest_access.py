"""Guest access in rooms (client-server-api modules/guest_access.md, "Server behaviour").

A guest may join a room only while its ``m.room.guest_access`` is ``can_join``
(:func:`guest_join_content`, called by every join path: 403 ``M_GUEST_ACCESS_FORBIDDEN``
otherwise).  When a room stops admitting guests the server "MUST set those users'
``m.room.member`` state to ``leave``": :class:`GuestEvictor` hangs off the rooms'
``on_persisted`` hooks and, after a ``m.room.guest_access`` event other than ``can_join``
(sent here or received over federation), makes each local guest joined to or invited into
the room leave it.  As in Synapse the leave is the guest's own (sender = the guest), so no
power level is needed and the decision stays with the guest's server.  A guest's join
persisted just after the change (it passed the check before) triggers the same check, so no
guest stays behind.

The hook runs inside the room actor's turn, so it only looks at the events it is given and
spawns a greenlet; the greenlet reads the current state and asks the room for the leaves
(an ask from inside the actor would deadlock).  The leaves therefore land shortly after the
change, not before the change's sender gets its answer.

Which accounts are guests is the accounts store's knowledge (``users.is_guest``), not the
``kind: guest`` that guest joins carry in their content: an upgraded guest is not evicted.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import gevent

from atrium.errors import MatrixError
from protocol.ids import IdError, server_of
from store.accounts import AccountStore
from supervision import current_trace
from web.auth import Requester
from web.room_service import RoomService

from actors.room_messages import EventSpec, Send

log = logging.getLogger(__name__)

GUEST_ACCESS = "m.room.guest_access"


def guest_can_join(svc: RoomService, room_id: str) -> bool:
    """Whether the room's current ``m.room.guest_access`` is ``can_join``."""
    se = svc.current_state_event(room_id, GUEST_ACCESS, "")
    return se is not None and (se.event.get("content") or {}).get("guest_access") == "can_join"


def guest_join_content(svc: RoomService, req: Requester, room_id: str) -> dict[str, Any] | None:
    """For a guest's join: the extra membership content (``kind: guest``, as Synapse marks
    guest joins), or 403 ``M_GUEST_ACCESS_FORBIDDEN`` when the room does not admit guests
    (a room this server does not hold admits none: its state is unknown here).  None for
    everyone else."""
    if not req.is_guest:
        return None
    if not guest_can_join(svc, room_id):
        raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guest access not allowed")
    return {"kind": "guest"}


def guest_member_state(svc: RoomService, req: Requester, room_id: str, state_key: str,
                       content: dict[str, Any]) -> dict[str, Any]:
    """A guest's ``PUT /state/m.room.member/{stateKey}``: only its own join (checked as a
    join) or leave, as the membership endpoints allow it (403
    ``M_GUEST_ACCESS_FORBIDDEN`` otherwise); the content to send."""
    membership = content.get("membership")
    if state_key != req.user_id or membership not in ("join", "leave"):
        raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN",
                          "Guests may only join or leave rooms themselves")
    if membership == "join":
        return {**content, **(guest_join_content(svc, req, room_id) or {})}
    return content


class GuestEvictor:
    """The ``on_persisted`` hook that takes local guests out of rooms that stop admitting
    them (see the module docstring)."""

    def __init__(self, svc: RoomService, accounts: AccountStore, server_name: str) -> None:
        self.svc = svc
        self.accounts = accounts
        self.server_name = server_name
        self._pending: set[str] = set()   # rooms with a check spawned and not yet started
        self.running: list[gevent.Greenlet] = []   # the checks in flight (tests wait on them)

    def on_persisted(self, room_id: str, events: Sequence[tuple[dict[str, Any], int]]) -> None:
        """RoomService hook (inside the actor's turn): no I/O, at most one spawn."""
        if room_id in self._pending or not any(self._concerns(ev) for ev, _ in events):
            return
        self._pending.add(room_id)
        ctx = current_trace()
        g = gevent.spawn(self.evict, room_id, ctx.trace_id if ctx is not None else None)
        self.running.append(g)
        g.link(lambda done: self.running.remove(done) if done in self.running else None)

    def _concerns(self, ev: dict[str, Any]) -> bool:
        content = ev.get("content")
        if not isinstance(content, dict):
            return False
        if ev.get("type") == GUEST_ACCESS and ev.get("state_key") == "":
            return content.get("guest_access") != "can_join"
        if ev.get("type") == "m.room.member" and content.get("kind") == "guest" \
                and content.get("membership") == "join":
            sk = ev.get("state_key")
            return isinstance(sk, str) and _is_local(sk, self.server_name)
        return False

    def evict(self, room_id: str, trace_id: str | None = None) -> list[str]:
        """Unless the room admits guests now, make each local guest member leave it; the
        guests that left."""
        self._pending.discard(room_id)
        try:
            if guest_can_join(self.svc, room_id):
                return []
            guests = self.accounts.guests_in_room(room_id)
        except Exception:
            log.exception("%s: could not read the room's guests", room_id)
            return []
        left = []
        for guest in guests:
            spec = EventSpec("m.room.member", guest, {"membership": "leave"}, guest)
            try:
                self.svc.supervisor.ask(room_id, Send(spec=spec), trace_id=trace_id,
                                        sender="guest_access")
                left.append(guest)
            except MatrixError as e:   # e.g. the guest left meanwhile
                log.info("%s: guest %s not taken out: %s", room_id, guest, e.error)
            except Exception:   # a parked room, shutdown: the next change tries again
                log.exception("%s: guest %s not taken out", room_id, guest)
        if left:
            log.info("%s: guests taken out (guest access revoked): %s", room_id, left)
        return left


def _is_local(user_id: str, server_name: str) -> bool:
    try:
        return server_of(user_id) == server_name
    except IdError:
        return False


def register(app: Any, runtime: Any) -> None:
    """Install the evictor on the rooms' persisted events (after rooms and accounts)."""
    evictor = GuestEvictor(runtime.parts["rooms"], runtime.parts["accounts"],
                           runtime.config.server_name)
    runtime.parts["guest_evictor"] = evictor
    runtime.parts["rooms"].on_persisted.append(evictor.on_persisted)
