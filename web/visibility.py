"""History visibility (client-server-api "History visibility", modules/history_visibility.md)
and what room state a user may read, enforced on every read path.

Rules, applied with the state of the room *at the event* (the state before it; for a
``m.room.history_visibility`` event and for the user's own membership events the state before
*or* after it, whichever allows):

1. ``world_readable``: anyone may see it;
2. the user's membership was ``join``: allowed;
3. ``shared``, and the user joined the room at some point after the event: allowed;
4. ``invited``, and the user's membership was ``invite``: allowed;
5. otherwise denied.

A page of events is checked with one :class:`Visibility` per request: each state group of the
page is resolved once (only the two keys that matter), membership contents are fetched in one
batch, and the results are cached for the rest of the request.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

from atrium.errors import MatrixError
from store.events import EventStore, StoredEvent
from store.room_reads import RoomReads
from web.pagination import parse_token
from web.room_service import RoomService

StateKey = tuple[str, str]
HV = ("m.room.history_visibility", "")
_VALUES = ("world_readable", "shared", "invited", "joined")


class Visibility:
    """Which events one user may see; caches per request (any number of rooms)."""

    def __init__(self, events: EventStore, user_id: str) -> None:
        self.events = events
        self.user_id = user_id
        self.reads = RoomReads(events.db)
        self._keys = [HV, ("m.room.member", user_id)]
        self._groups: dict[int, dict[StateKey, str]] = {}
        #: the user's last join to each room: (stream position, DAG depth)
        self._last_join: dict[str, tuple[int, int] | None] = {}
        self._content: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ public
    def filter(self, ses: Iterable[StoredEvent]) -> list[StoredEvent]:
        """The events (in the given order) the user may see."""
        ses = list(ses)
        self._prepare(ses)
        return [se for se in ses if self._allowed(se)]

    def can_see(self, se: StoredEvent) -> bool:
        return bool(self.filter([se]))

    # ------------------------------------------------------------------ internals
    def _prepare(self, ses: Sequence[StoredEvent]) -> None:
        missing = {se.state_group for se in ses
                   if se.state_group is not None and se.state_group not in self._groups}
        if missing:
            self._groups.update(self.reads.state_keys_at(missing, self._keys))
        ids: set[str] = set()
        for se in ses:
            if se.state_group is not None:
                ids.update(self._groups.get(se.state_group, {}).values())
            replaced = (se.event.get("unsigned") or {}).get("replaces_state")
            if isinstance(replaced, str) and self._state_key(se) in self._keys:
                ids.add(replaced)
            if se.room_id not in self._last_join:
                joins = self.reads.join_positions(se.room_id, self.user_id)
                self._last_join[se.room_id] = joins[-1] if joins else None
        todo = [e for e in ids if e not in self._content]
        if todo:
            got = self.events.get_events(todo)
            for eid in todo:
                se = got.get(eid)
                self._content[eid] = se.event.get("content", {}) if se is not None else {}

    @staticmethod
    def _state_key(se: StoredEvent) -> StateKey | None:
        sk = se.event.get("state_key")
        return (se.event.get("type", ""), sk) if isinstance(sk, str) else None

    def _allowed(self, se: StoredEvent) -> bool:
        after = self._groups.get(se.state_group, {}) if se.state_group is not None else {}
        key = self._state_key(se)
        if key not in self._keys:
            return self._rule(se, after)
        before = dict(after)
        replaced = (se.event.get("unsigned") or {}).get("replaces_state")
        if isinstance(replaced, str):
            before[key] = replaced
        else:
            before.pop(key, None)
        # history_visibility changes and the user's own membership: before *or* after
        return self._rule(se, before) or self._rule(se, after)

    def _rule(self, se: StoredEvent, state: dict[StateKey, str]) -> bool:
        hv_id = state.get(HV)
        vis = self._content.get(hv_id, {}).get("history_visibility") if hv_id else None
        if vis not in _VALUES:
            vis = "shared"
        if vis == "world_readable":
            return True
        mid = state.get(self._keys[1])
        membership = self._content.get(mid, {}).get("membership") if mid else None
        if membership == "join":
            return True
        if vis == "shared":
            last_join = self._last_join.get(se.room_id)
            if last_join is None:
                return False
            # "joined at some point after the event": by stream position for what arrived
            # in order, by DAG depth for history backfilled from other servers after the
            # join (it gets later stream positions but comes before the join in the DAG)
            return last_join[0] >= se.stream_ordering or \
                int(se.event.get("depth", 0)) < last_join[1]
        return vis == "invited" and membership == "invite"


def history_visibility(svc: RoomService, state: dict[StateKey, str]) -> str:
    eid = state.get(HV)
    se = svc.events.get_event(eid) if eid else None
    v = se.event.get("content", {}).get("history_visibility") if se is not None else None
    return v if v in _VALUES else "shared"


def state_at(svc: RoomService, se: StoredEvent) -> dict[StateKey, str]:
    """The room state after ``se``."""
    if se.state_group is None:
        return {}
    return svc.state_groups.get_state(se.state_group)


def can_see_event(svc: RoomService, user_id: str, se: StoredEvent) -> bool:
    """Whether ``se`` may be served to the user (never a rejected, soft-failed or outlier
    event, whoever asks)."""
    if se.rejection is not None or se.soft_failed or se.outlier:
        return False
    return Visibility(svc.events, user_id).can_see(se)


def require_readable(svc: RoomService, user_id: str, room_id: str, *,
                     status: int = 403) -> str | None:
    """Gate for timeline reads: the user is or was in the room (any membership), or the room
    is world-readable now (peeking).  Returns the user's current membership."""
    membership, _ = svc.membership(room_id, user_id)
    if membership is not None:
        return membership
    if history_visibility(svc, svc.events.get_current_state_ids(room_id)) == "world_readable":
        return None
    if status == 404:
        raise MatrixError(404, "M_NOT_FOUND", "Event not found")
    raise MatrixError(403, "M_FORBIDDEN", "You are not allowed to view this room")


def stream_of_token(raw: str) -> int:
    """The stream position a pagination/sync token stands for (``at`` of /members)."""
    tok = parse_token(raw, "at")
    assert tok is not None
    return tok.stream


def state_ids_at_stream(svc: RoomService, room_id: str, stream: int) -> dict[StateKey, str]:
    group = RoomReads(svc.db).state_group_at(room_id, stream)
    return svc.state_groups.get_state(group) if group is not None else {}


def visible_state_ids(svc: RoomService, user_id: str, room_id: str,
                      at: str | None = None) -> dict[StateKey, str]:
    """The room state the user may read (client-server-api "Room state", /members ``at``):
    current state (or state at ``at``) while joined or for a world-readable room; for a user
    who left or was banned, the state at their leave (or at ``at`` if earlier)."""
    at_stream = stream_of_token(at) if at is not None else None
    membership, member_eid = svc.membership(room_id, user_id)
    current = svc.events.get_current_state_ids(room_id)
    if membership == "join" or history_visibility(svc, current) == "world_readable":
        return current if at_stream is None else state_ids_at_stream(svc, room_id, at_stream)
    if membership in ("leave", "ban") and member_eid is not None:
        se = svc.events.get_event(member_eid)
        if se is not None:
            if at_stream is not None and at_stream < se.stream_ordering:
                return state_ids_at_stream(svc, room_id, at_stream)
            return state_at(svc, se)
    raise MatrixError(403, "M_FORBIDDEN", "You are not allowed to view this room's state")
