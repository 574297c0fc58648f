"""History visibility (client-server-api "History visibility") and what room state a user
may read, enforced on every read path."""
from __future__ import annotations

from typing import Any

from atrium.errors import MatrixError
from store.events import StoredEvent
from web.room_service import RoomService

StateKey = tuple[str, str]


def _content(svc: RoomService, eid: str | None) -> dict[str, Any]:
    if eid is None:
        return {}
    se = svc.events.get_event(eid)
    return se.event.get("content", {}) if se is not None else {}


def history_visibility(svc: RoomService, state: dict[StateKey, str]) -> str:
    v = _content(svc, state.get(("m.room.history_visibility", ""))).get("history_visibility")
    return v if v in ("world_readable", "shared", "invited", "joined") else "shared"


def state_at(svc: RoomService, se: StoredEvent) -> dict[StateKey, str]:
    """State after ``se`` (for visibility the event's own state change counts as before it,
    handled by the caller where it matters)."""
    if se.state_group is None:
        return {}
    return svc.state_groups.get_state(se.state_group)


def visible_state_ids(svc: RoomService, user_id: str, room_id: str,
                      at: str | None = None) -> dict[StateKey, str]:
    membership, member_eid = svc.membership(room_id, user_id)
    current = svc.events.get_current_state_ids(room_id)
    if membership == "join":
        return current
    if history_visibility(svc, current) == "world_readable":
        return current
    if membership in ("leave", "ban") and member_eid is not None:
        se = svc.events.get_event(member_eid)
        if se is not None:
            return state_at(svc, se)
    raise MatrixError(403, "M_FORBIDDEN", "You are not allowed to view this room's state")


def can_see_event(svc: RoomService, user_id: str, se: StoredEvent) -> bool:
    state = state_at(svc, se)
    vis = history_visibility(svc, state)
    if se.event.get("type") == "m.room.history_visibility" and "state_key" in se.event:
        # the visibility that applies to this event is the one before it
        prev = (se.event.get("unsigned") or {}).get("replaces_state")
        vis = _content(svc, prev).get("history_visibility", "shared") if prev else "shared"
    if vis == "world_readable":
        return True
    mid = state.get(("m.room.member", user_id))
    membership = _content(svc, mid).get("membership") if mid else None
    if se.event.get("type") == "m.room.member" and se.event.get("state_key") == user_id:
        # a user's own membership event is visible to them
        return True
    if membership == "join":
        return True
    if vis == "invited" and membership == "invite":
        return True
    if vis == "shared":
        joined_later = svc.db.run("joined_later", lambda t: t.query_value(
            "SELECT 1 FROM room_memberships WHERE room_id = ? AND user_id = ?"
            " AND membership = 'join' AND stream_ordering >= ? LIMIT 1",
            (se.room_id, user_id, se.stream_ordering)))
        return bool(joined_later)
    return False
