"""Restricted joins (rooms v8+, client-server-api "Restricted rooms"): when a user joins a
``restricted`` / ``knock_restricted`` room without an invite, the resident server checks the
``allow`` conditions and names a local member who can invite as
``join_authorised_via_users_server``."""
from __future__ import annotations

from typing import Any, Mapping

from protocol.ids import server_of
from protocol.power_levels import get_named_level, get_user_level
from protocol.room_versions import RoomVersion
from store.events import EventStore


def _membership(state: Mapping[tuple[str, str], str], events: Mapping[str, dict[str, Any]],
                user: str) -> str | None:
    eid = state.get(("m.room.member", user))
    if eid is None or eid not in events:
        return None
    return events[eid].get("content", {}).get("membership")


def authorising_user(store: EventStore, rv: RoomVersion, room_id: str,
                     state: Mapping[tuple[str, str], str],
                     state_events: Mapping[str, dict[str, Any]], create: dict[str, Any],
                     user_id: str, server_name: str) -> str | None:
    jr_id = state.get(("m.room.join_rules", ""))
    if jr_id is None:
        return None
    jr = state_events[jr_id].get("content", {})
    rule = jr.get("join_rule")
    if rule != "restricted" and not (rule == "knock_restricted"
                                     and rv.knock_restricted_join_rule):
        return None
    if _membership(state, state_events, user_id) in ("join", "invite"):
        return None
    allow = jr.get("allow")
    if not isinstance(allow, list):
        return None
    allowed_rooms = [a.get("room_id") for a in allow if isinstance(a, dict)
                     and a.get("type") == "m.room_membership" and isinstance(a.get("room_id"), str)]
    if not allowed_rooms or not _joined_any(store, user_id, allowed_rooms):
        return None
    pl_id = state.get(("m.room.power_levels", ""))
    pl = state_events[pl_id].get("content") if pl_id else None
    invite_level = get_named_level(pl, "invite", None, rv=rv)
    candidates = []
    for (etype, skey), eid in state.items():
        if etype != "m.room.member" or server_of(skey) != server_name:
            continue
        if state_events.get(eid, {}).get("content", {}).get("membership") != "join":
            continue
        level = get_user_level(rv, create, pl, skey)
        if level >= invite_level:
            candidates.append((-level, skey))
    return min(candidates)[1] if candidates else None


def _joined_any(store: EventStore, user_id: str, room_ids: list[str]) -> bool:
    marks = ",".join("?" * len(room_ids))
    return bool(store.db.run("joined_any", lambda t: t.query_value(
        f"SELECT COUNT(*) FROM current_state WHERE type = 'm.room.member' AND state_key = ?"
        f" AND membership = 'join' AND room_id IN ({marks})", (user_id, *room_ids), default=0)))
