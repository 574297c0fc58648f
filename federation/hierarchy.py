"""Served ``GET /_matrix/federation/v1/hierarchy/{roomId}?suggested_only=`` (server-server-api.md
"Spaces", space_hierarchy.yaml): a room's summary with its ``m.space.child`` events as
``children_state`` (stripped state plus ``origin_server_ts``), and one level of children.

Visibility for the requesting server (as Synapse decides "could peek or join"): a room is
accessible when its join rule is ``public``, ``knock`` or ``knock_restricted``, its history
is ``world_readable``, the requesting server has a user joined to it, or it is restricted
(``restricted`` / ``knock_restricted``) and the requesting server has a user joined to one of
the rooms its join rule allows.  The root room must be known and accessible (404
``M_NOT_FOUND`` otherwise); a child this server knows but the requester may not see is listed
in ``inaccessible_children``; a child this server does not know is left out.  A child entry
counts only with a non-empty ``via`` list (the spec's valid ``m.space.child``), and with
``suggested_only=true`` only when its content says ``suggested: true``.

Reads go straight to ``current_state`` and the events store (``runtime.parts["rooms"]``,
duck-typed); nothing here writes.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, jsonify, request

from atrium.errors import invalid_param, not_found
from protocol.ids import is_valid_room_id
from federation.request_auth import signed_route

V1 = "/_matrix/federation/v1"
MAX_CHILDREN = 50     # children summarised per answer (Synapse's limit is similar)
SUMMARY_TYPES = ("m.room.create", "m.room.name", "m.room.topic", "m.room.canonical_alias",
                 "m.room.avatar", "m.room.join_rules", "m.room.history_visibility",
                 "m.room.guest_access", "m.room.encryption")
OPEN_RULES = ("public", "knock", "knock_restricted")
RESTRICTED_RULES = ("restricted", "knock_restricted")


class RoomView:
    """What the hierarchy needs of one room's current state."""

    def __init__(self, room_id: str, version: str, state: dict[str, dict[str, Any]],
                 children: list[dict[str, Any]], joined_servers: set[str],
                 joined: int) -> None:
        self.room_id = room_id
        self.version = version
        self.state = state            # type -> event (state_key "")
        self.children = children      # m.space.child events, by state_key
        self.joined_servers = joined_servers
        self.joined = joined

    def content(self, etype: str) -> dict[str, Any]:
        c = (self.state.get(etype) or {}).get("content")
        return c if isinstance(c, dict) else {}

    @property
    def join_rule(self) -> str:
        jr = self.content("m.room.join_rules").get("join_rule")
        return jr if isinstance(jr, str) else "invite"

    @property
    def world_readable(self) -> bool:
        return self.content("m.room.history_visibility").get(
            "history_visibility") == "world_readable"

    def allowed_room_ids(self) -> list[str]:
        if self.join_rule not in RESTRICTED_RULES:
            return []
        allow = self.content("m.room.join_rules").get("allow")
        out = []
        for a in allow if isinstance(allow, list) else []:
            if isinstance(a, dict) and a.get("type") == "m.room_membership" \
                    and isinstance(a.get("room_id"), str) and a["room_id"] not in out:
                out.append(a["room_id"])
        return out


class Hierarchy:
    """``rooms`` is the RoomService (``room_version``, ``events.get_events``), ``db`` the
    database."""

    def __init__(self, db: Any, rooms: Any) -> None:
        self.db = db
        self.rooms = rooms

    # -- reads ----------------------------------------------------------------------------
    def view(self, room_id: str) -> RoomView | None:
        rv = self.rooms.room_version(room_id)
        if rv is None:
            return None
        marks = ",".join("?" * len(SUMMARY_TYPES))

        def _q(t: Any) -> tuple[list[tuple], list[str]]:
            rows = t.query(
                "SELECT type, state_key, event_id FROM current_state WHERE room_id = ? AND"
                f" ((state_key = '' AND type IN ({marks})) OR type = 'm.space.child')",
                (room_id, *SUMMARY_TYPES))
            members = [r[0] for r in t.query(
                "SELECT state_key FROM current_state WHERE room_id = ?"
                " AND type = 'm.room.member' AND membership = 'join'", (room_id,))]
            return rows, members

        rows, members = self.db.run("hierarchy_room", _q)
        events = self.rooms.events.get_events([r[2] for r in rows])
        state: dict[str, dict[str, Any]] = {}
        children: list[tuple[str, dict[str, Any]]] = []
        for etype, skey, eid in rows:
            se = events.get(eid)
            if se is None:
                continue
            if etype == "m.space.child":
                children.append((skey, se.event))
            else:
                state[etype] = se.event
        children.sort(key=lambda c: c[0])
        servers = {m.partition(":")[2] for m in members}
        version = getattr(rv, "identifier", None) or getattr(rv, "version", None) or str(rv)
        return RoomView(room_id, str(version), state, [e for _, e in children], servers,
                        len(members))

    def accessible(self, view: RoomView, origin: str) -> bool:
        if view.join_rule in OPEN_RULES or view.world_readable \
                or origin in view.joined_servers:
            return True
        for allowed in view.allowed_room_ids():
            other = self.view(allowed) if allowed != view.room_id else None
            if other is not None and origin in other.joined_servers:
                return True
        return False

    # -- the answer -----------------------------------------------------------------------
    @staticmethod
    def children_state(view: RoomView, suggested_only: bool) -> list[dict[str, Any]]:
        out = []
        for ev in view.children:
            content = ev.get("content")
            if not isinstance(content, dict):
                continue
            via = content.get("via")
            if not isinstance(via, list) or not via \
                    or not is_valid_room_id(ev.get("state_key") or ""):
                continue  # the spec's invalid child: no via servers (a removed link)
            if suggested_only and content.get("suggested") is not True:
                continue
            out.append({"type": "m.space.child", "state_key": ev["state_key"],
                        "content": content, "sender": ev.get("sender"),
                        "origin_server_ts": ev.get("origin_server_ts", 0)})
        return out

    def summary(self, view: RoomView, suggested_only: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"room_id": view.room_id, "num_joined_members": view.joined,
                               "world_readable": view.world_readable,
                               "guest_can_join": view.content("m.room.guest_access").get(
                                   "guest_access") == "can_join",
                               "join_rule": view.join_rule,
                               "room_version": view.version}
        for key, etype, field in (("name", "m.room.name", "name"),
                                  ("topic", "m.room.topic", "topic"),
                                  ("canonical_alias", "m.room.canonical_alias", "alias"),
                                  ("avatar_url", "m.room.avatar", "url"),
                                  ("room_type", "m.room.create", "type"),
                                  ("encryption", "m.room.encryption", "algorithm")):
            v = view.content(etype).get(field)
            if isinstance(v, str) and v:
                out[key] = v
        allowed = view.allowed_room_ids()
        if allowed:
            out["allowed_room_ids"] = allowed
        # only spaces have children (Synapse's rule: a room's m.space.child links are not
        # followed unless the room is a space)
        out["children_state"] = self.children_state(view, suggested_only) \
            if out.get("room_type") == "m.space" else []
        return out

    def answer(self, room_id: str, origin: str, suggested_only: bool) -> dict[str, Any]:
        root = self.view(room_id)
        if root is None or not self.accessible(root, origin):
            raise not_found("Room does not exist or is not accessible")
        room = self.summary(root, suggested_only)
        children: list[dict[str, Any]] = []
        inaccessible: list[str] = []
        for child in room["children_state"][:MAX_CHILDREN]:
            child_id = child["state_key"]
            if child_id == room_id:
                continue
            view = self.view(child_id)
            if view is None:
                continue  # unknown here: left out, the requester may ask elsewhere
            if self.accessible(view, origin):
                children.append(self.summary(view, suggested_only))
            else:
                inaccessible.append(child_id)
        return {"room": room, "children": children, "inaccessible_children": inaccessible}


def install(app: Flask, fed: Any, parts: dict[str, Any]) -> Hierarchy | None:
    """Register the served hierarchy route (once)."""
    if "hierarchy" in fed.extras:
        return fed.extras["hierarchy"]
    rooms = parts.get("rooms")
    if rooms is None:
        return None
    hierarchy = Hierarchy(fed.db, rooms)
    fed.extras["hierarchy"] = hierarchy
    bp = Blueprint("federation_hierarchy", __name__)

    signed = signed_route(fed)

    @bp.get(f"{V1}/hierarchy/<room_id>")
    @signed
    def get_hierarchy(origin: str, room_id: str) -> Any:
        """GET /_matrix/federation/v1/hierarchy/{roomId}"""
        raw = request.args.get("suggested_only", "false")
        if raw not in ("true", "false"):
            raise invalid_param("'suggested_only' must be true or false")
        if not is_valid_room_id(room_id):
            raise not_found("Room does not exist")
        return jsonify(hierarchy.answer(room_id, origin, raw == "true"))

    app.register_blueprint(bp)
    return hierarchy
