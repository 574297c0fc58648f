"""Room upgrades: ``POST /rooms/{roomId}/upgrade`` (client-server-api "Room Upgrades",
server behaviour steps 1–6).

The replacement room is created first, in one ``InitRoom`` (its create event names the
``predecessor``; the transferable state is copied), and only then is the old room
tombstoned, so a failure never leaves a tombstone pointing at nothing.  Then local aliases
move, the old room's canonical alias is cleared, its power levels are restricted, and its
directory listing moves to the new room.  ``plan_upgrade`` is pure; the handler does the I/O.
"""
from __future__ import annotations

import copy
import logging
import threading
from dataclasses import dataclass
from typing import Any, Mapping

from flask import Blueprint, Flask, jsonify

from atrium.errors import MatrixError, invalid_param
from protocol.ids import is_valid_room_id, is_valid_user_id
from protocol.power_levels import creators, get_event_level, parse_level
from protocol.room_versions import RoomVersion
from store.directory import DirectoryStore
from web.auth import require_auth
from web.directory import can_send_state
from web.http import check_type, json_body, require
from web.room_service import RoomService

from actors.room_messages import EventSpec, InitRoom

log = logging.getLogger(__name__)

P = "/_matrix/client/v3"

#: State copied to the replacement room (the spec's recommended list, plus the obsolete
#: m.room.related_groups); membership is never copied.
TRANSFERABLE = ("m.room.server_acl", "m.room.encryption", "m.room.name", "m.room.avatar",
                "m.room.topic", "m.room.guest_access", "m.room.history_visibility",
                "m.room.join_rules", "m.room.related_groups", "m.room.canonical_alias")

_NAMED = ("users_default", "events_default", "state_default", "ban", "kick", "redact",
          "invite")


@dataclass(frozen=True)
class UpgradePlan:
    create_content: dict[str, Any]
    initial: tuple[EventSpec, ...]


def _int_levels(rv: RoomVersion, pl: Mapping[str, Any]) -> dict[str, Any]:
    """Power levels with every level as an integer (a v1–v9 room may hold "50" or 50.0,
    which v10+ rejects); invalid levels are dropped."""
    out = copy.deepcopy(dict(pl))
    for k in _NAMED:
        if k in out:
            v = parse_level(rv, out[k])
            if v is None:
                out.pop(k)
            else:
                out[k] = v
    for k in ("users", "events", "notifications"):
        m = out.get(k)
        if isinstance(m, dict):
            out[k] = {name: v for name, v in ((n, parse_level(rv, x)) for n, x in m.items())
                      if v is not None}
        elif k in out:
            out.pop(k)
    return out


def plan_upgrade(old_rv: RoomVersion, new_rv: RoomVersion, user_id: str,
                 old_create: Mapping[str, Any], old_state: Mapping[str, dict[str, Any]],
                 old_room_id: str, predecessor_event_id: str | None,
                 additional_creators: list[str], member: dict[str, Any]) -> UpgradePlan:
    """The replacement room's create content and initial events (pure).

    ``old_state`` maps a transferable type (and ``m.room.power_levels``) to its content.
    v12 targets: the upgrader and ``additional_creators`` are the creators and are removed
    from ``users``.  From a v12 room to an older version: the old creators (infinite power)
    are written into ``users`` at the room's top level, so nobody loses power.
    """
    create_content: dict[str, Any] = {"room_version": new_rv.identifier}
    predecessor: dict[str, Any] = {"room_id": old_room_id}
    if predecessor_event_id is not None:
        predecessor["event_id"] = predecessor_event_id
    create_content["predecessor"] = predecessor
    old_cc = old_create.get("content") or {}
    if isinstance(old_cc.get("type"), str):
        create_content["type"] = old_cc["type"]
    if old_cc.get("m.federate") is False:
        create_content["m.federate"] = False
    if not new_rv.implicit_room_creator:
        create_content["creator"] = user_id
    new_creators = {user_id}
    if new_rv.privileged_creators and additional_creators:
        create_content["additional_creators"] = list(additional_creators)
        new_creators |= set(additional_creators)

    old_pl = old_state.get("m.room.power_levels")
    pl = _int_levels(old_rv, old_pl) if old_pl is not None else {}
    users = pl.get("users") if isinstance(pl.get("users"), dict) else {}
    pl["users"] = users
    levels = [v for m in (users, pl.get("events") or {}) for v in m.values()]
    levels += [pl[k] for k in _NAMED if k in pl]
    top = max([100, *levels])
    if new_rv.privileged_creators:
        for c in new_creators:
            users.pop(c, None)
    elif old_rv.privileged_creators or old_pl is None:
        for c in creators(old_rv, old_create) | ({user_id} if old_pl is None else set()):
            users.setdefault(c, top)

    specs: list[EventSpec] = [EventSpec("m.room.member", user_id, member, user_id)]
    copied = [(t, old_state[t]) for t in TRANSFERABLE if t in old_state]
    temp = None
    if not new_rv.privileged_creators:
        # The upgrader must be able to send the copied state and then the final power
        # levels: a temporary level that high comes first when their own is lower.
        need = max([get_event_level(pl, t, True, rv=new_rv) for t, _ in copied]
                   + [get_event_level(pl, "m.room.power_levels", True, rv=new_rv),
                      *users.values(), 0])
        own = users.get(user_id, pl.get("users_default", 0))
        if own < need:
            temp = copy.deepcopy(pl)
            temp["users"][user_id] = need
    specs.append(EventSpec("m.room.power_levels", user_id, temp or pl, ""))
    for t, content in copied:
        specs.append(EventSpec(t, user_id, copy.deepcopy(content), ""))
    if temp is not None:
        specs.append(EventSpec("m.room.power_levels", user_id, pl, ""))
    return UpgradePlan(create_content, tuple(specs))


def restricted_power_levels(rv: RoomVersion, pl: Mapping[str, Any] | None
                            ) -> dict[str, Any] | None:
    """The old room's power levels after an upgrade: ``events_default`` and ``invite`` at
    least max(50, users_default + 1); None when nothing changes."""
    if pl is None:
        return None
    users_default = parse_level(rv, pl.get("users_default", 0)) or 0
    floor = max(50, users_default + 1)
    new = copy.deepcopy(dict(pl))
    changed = False
    for k, default in (("events_default", 0), ("invite", 0)):
        cur = parse_level(rv, new.get(k, default))
        if cur is None or cur < floor:
            new[k] = floor
            changed = True
    return new if changed else None


# ----------------------------------------------------------------------------- handler
class _InFlight:
    """Rooms being upgraded by this process.  One process owns the upgrade of a room; with
    rooms sharded across workers this guard moves to the room's owner."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rooms: set[str] = set()

    def claim(self, room_id: str) -> bool:
        with self._lock:
            if room_id in self._rooms:
                return False
            self._rooms.add(room_id)
            return True

    def release(self, room_id: str) -> None:
        with self._lock:
            self._rooms.discard(room_id)


def register(app: Flask, runtime: Any) -> None:
    svc: RoomService = runtime.parts["rooms"]
    directory: DirectoryStore = runtime.parts["directory"]
    in_flight = _InFlight()
    bp = Blueprint("room_upgrade", __name__)

    @bp.post(f"{P}/rooms/<room_id>/upgrade")
    def upgrade(room_id: str) -> Any:
        """POST /_matrix/client/v3/rooms/{roomId}/upgrade"""
        req = require_auth()
        body = json_body()
        version = require(body, "new_version", str)
        extra = check_type(body, "additional_creators", list, default=[])
        if not all(isinstance(u, str) and is_valid_user_id(u) for u in extra):
            raise invalid_param("additional_creators must be a list of user ids")
        if not is_valid_room_id(room_id):
            raise invalid_param(f"Invalid room id {room_id!r}")
        new_rv = svc.resolve_room_version(version)
        old_rv = svc.require_room(room_id)
        if svc.membership(room_id, req.user_id)[0] != "join":
            raise MatrixError(403, "M_FORBIDDEN", "You are not joined to this room")
        if not can_send_state(svc, room_id, req.user_id, "m.room.tombstone"):
            raise MatrixError(403, "M_FORBIDDEN", "You cannot upgrade this room")
        if not in_flight.claim(room_id):
            raise MatrixError(400, "M_UNKNOWN", "This room is already being upgraded")
        try:
            extra = [u for u in dict.fromkeys(extra) if u != req.user_id]
            new_room = _upgrade(svc, directory, room_id, old_rv, new_rv, req.user_id, extra)
        finally:
            in_flight.release(room_id)
        return jsonify({"replacement_room": new_room})

    app.register_blueprint(bp)


def _upgrade(svc: RoomService, directory: DirectoryStore, old_room: str, old_rv: RoomVersion,
             new_rv: RoomVersion, user_id: str, additional_creators: list[str]) -> str:
    from web.rooms import get_profile

    state_ids = svc.events.get_current_state_ids(old_room)
    wanted = {(t, ""): t for t in (*TRANSFERABLE, "m.room.power_levels", "m.room.create")}
    evs = svc.events.get_events(state_ids[k] for k in wanted if k in state_ids)
    contents: dict[str, dict[str, Any]] = {}
    for key, etype in wanted.items():
        se = evs.get(state_ids.get(key, ""))
        if se is not None:
            contents[etype] = dict(svc.events.visible_form(se, old_rv).get("content") or {})
    old_create = evs[state_ids[("m.room.create", "")]].event
    last = svc.db.run("last_event", lambda t: t.query_value(
        "SELECT event_id FROM events WHERE room_id = ? AND outlier = 0 AND rejection IS NULL"
        " ORDER BY stream_ordering DESC LIMIT 1", (old_room,)))
    member = {"membership": "join", **get_profile(svc, user_id)}
    plan = plan_upgrade(old_rv, new_rv, user_id, old_create, contents, old_room, last,
                        additional_creators, member)

    was_public = bool(directory.is_public(old_room))
    create = svc.build_create_event(new_rv, user_id, plan.create_content)
    new_room = create["room_id"]
    svc.ask(new_room, InitRoom(create_event=create, initial=plan.initial,
                               is_public=was_public))

    svc.send(old_room, EventSpec("m.room.tombstone", user_id, {
        "body": "This room has been replaced", "replacement_room": new_room}, ""))
    directory.move_aliases(old_room, new_room)
    if was_public:
        directory.set_public(old_room, False)
    canonical = contents.get("m.room.canonical_alias")
    if canonical and (canonical.get("alias") or canonical.get("alt_aliases")):
        _best_effort(svc, old_room, EventSpec("m.room.canonical_alias", user_id, {}, ""))
    restricted = restricted_power_levels(old_rv, contents.get("m.room.power_levels"))
    if restricted is not None:
        _best_effort(svc, old_room, EventSpec("m.room.power_levels", user_id, restricted, ""))
    return new_room


def _best_effort(svc: RoomService, room_id: str, spec: EventSpec) -> None:
    """Old-room clean-up the upgrader may lack the power for: the upgrade stands anyway."""
    try:
        svc.send(room_id, spec)
    except MatrixError as e:
        log.info("%s: upgrade clean-up %s not sent: %s", room_id, spec.type, e.error)
