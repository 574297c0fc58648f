"""Room creation and membership: ``/createRoom``, join (by id or alias), leave, invite, kick,
ban, unban, forget, knock (client-server-api "Room membership")."""
from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import unquote

from flask import Blueprint, Flask, g, jsonify

from atrium.errors import MatrixError
from protocol.ids import is_valid_room_alias, is_valid_room_id, is_valid_user_id, server_of
from web.auth import Requester, require_auth
from web.http import check_type, json_body, require
from web.room_service import RoomService

from actors.room_create import plan_room
from actors.room_messages import EventSpec, InitRoom, Send

log = logging.getLogger(__name__)

P = "/_matrix/client/v3"


def get_profile(svc: RoomService, user_id: str) -> dict[str, Any]:
    r = svc.db.run("profile", lambda t: t.query_one(
        "SELECT displayname, avatar_url FROM profiles WHERE user_id = ?", (user_id,)))
    out: dict[str, Any] = {}
    if r:
        if r[0] is not None:
            out["displayname"] = r[0]
        if r[1] is not None:
            out["avatar_url"] = r[1]
    return out


def resolve_alias(svc: RoomService, alias: str) -> str:
    room_id = svc.db.run("alias", lambda t: t.query_value(
        "SELECT room_id FROM room_aliases WHERE alias = ?", (alias,)))
    if room_id is None:
        raise MatrixError(404, "M_NOT_FOUND", f"Room alias {alias} not found")
    return room_id


def _reason(body: dict[str, Any]) -> str | None:
    return check_type(body, "reason", str)


def register(app: Flask, runtime: Any) -> None:
    svc: RoomService = runtime.parts["rooms"]
    config = runtime.config
    ratelimiter = runtime.ratelimiter
    bp = Blueprint("rooms", __name__)

    def check_room_id(room_id: str) -> None:
        if not is_valid_room_id(room_id):
            raise MatrixError(400, "M_INVALID_PARAM", f"Invalid room id {room_id!r}")

    @bp.post(f"{P}/createRoom")
    def create_room() -> Any:
        """POST /_matrix/client/v3/createRoom"""
        req = require_auth()
        body = json_body()
        rv = svc.resolve_room_version(body.get("room_version"))
        plan = plan_room(rv, req.user_id, config.server_name, body,
                         creator_profile=get_profile(svc, req.user_id))
        if plan.alias is not None and svc.db.run("alias_taken", lambda t: t.query_value(
                "SELECT 1 FROM room_aliases WHERE alias = ?", (plan.alias,))):
            raise MatrixError(400, "M_ROOM_IN_USE", "Room alias already taken")
        from web.directory import alias_creation_allowed, publication_allowed

        create = svc.build_create_event(rv, req.user_id, plan.create_content)
        room_id = create["room_id"]
        if plan.alias is not None and not alias_creation_allowed(
                config, req.user_id, room_id, plan.alias, req.is_admin):
            raise MatrixError(403, "M_FORBIDDEN", "Not allowed to create this alias")
        # as in Synapse: a room refused by room_list_publication_rules is created unpublished
        is_public = plan.is_public and publication_allowed(
            config, req.user_id, room_id, [plan.alias] if plan.alias else [], req.is_admin)
        svc.ask(room_id, InitRoom(create_event=create, initial=plan.initial,
                                  is_public=is_public))
        if plan.alias is not None:
            _add_alias(svc, plan.alias, room_id, req.user_id)
        return jsonify({"room_id": room_id})

    def membership(req: Requester, room_id: str, target: str, membership: str,
                   body: dict[str, Any], extra: dict[str, Any] | None = None) -> Any:
        check_room_id(room_id)
        if not is_valid_user_id(target):
            raise MatrixError(400, "M_INVALID_PARAM", f"Invalid user id {target!r}")
        if membership == "invite" and server_of(target) != config.server_name:
            raise MatrixError(400, "M_INVALID_PARAM",
                              "Cannot invite remote users: federation is not available yet")
        svc.require_room(room_id)
        content: dict[str, Any] = {"membership": membership}
        reason = _reason(body)
        if reason is not None:
            content["reason"] = reason
        if membership in ("join", "invite", "knock"):
            content.update(get_profile(svc, target))
        if extra:
            content.update(extra)
        sent = svc.send(room_id, EventSpec(type="m.room.member", sender=req.user_id,
                                           content=content, state_key=target))
        return sent

    def do_join(req: Requester, room_id_or_alias: str) -> Any:
        body = json_body(optional=True)
        ratelimiter.check("join", req.user_id, config.rc_joins_local)
        target = unquote(room_id_or_alias)
        if target.startswith("#"):
            if not is_valid_room_alias(target):
                raise MatrixError(400, "M_INVALID_PARAM", "Invalid room alias")
            room_id = resolve_alias(svc, target)
        else:
            room_id = target
        check_room_id(room_id)
        rv = svc.room_version(room_id)
        if rv is None:
            raise MatrixError(404, "M_NOT_FOUND", "No known servers to join this room through")
        current, _ = svc.membership(room_id, req.user_id)
        extra = None
        if current == "join":
            return jsonify({"room_id": room_id})
        membership(req, room_id, req.user_id, "join", body, extra)
        return jsonify({"room_id": room_id})

    @bp.post(f"{P}/join/<path:room_id_or_alias>")
    def join_any(room_id_or_alias: str) -> Any:
        """POST /_matrix/client/v3/join/{roomIdOrAlias}"""
        return do_join(require_auth(), room_id_or_alias)

    @bp.post(f"{P}/rooms/<room_id>/join")
    def join_room(room_id: str) -> Any:
        """POST /_matrix/client/v3/rooms/{roomId}/join"""
        return do_join(require_auth(), room_id)

    @bp.post(f"{P}/knock/<path:room_id_or_alias>")
    def knock(room_id_or_alias: str) -> Any:
        """POST /_matrix/client/v3/knock/{roomIdOrAlias}"""
        req = require_auth()
        body = json_body(optional=True)
        target = unquote(room_id_or_alias)
        room_id = resolve_alias(svc, target) if target.startswith("#") else target
        membership(req, room_id, req.user_id, "knock", body)
        return jsonify({"room_id": room_id})

    @bp.post(f"{P}/rooms/<room_id>/leave")
    def leave(room_id: str) -> Any:
        """POST /_matrix/client/v3/rooms/{roomId}/leave"""
        req = require_auth()
        body = json_body(optional=True)
        check_room_id(room_id)
        current, _ = svc.membership(room_id, req.user_id)
        if current in (None, "leave", "ban"):
            if current is None and svc.room_version(room_id) is None:
                raise MatrixError(404, "M_NOT_FOUND", "Unknown room")
            if current is None:
                raise MatrixError(403, "M_FORBIDDEN", "You are not a member of this room")
            return jsonify({})  # already left: idempotent
        membership(req, room_id, req.user_id, "leave", body)
        return jsonify({})

    @bp.post(f"{P}/rooms/<room_id>/invite")
    def invite(room_id: str) -> Any:
        """POST /_matrix/client/v3/rooms/{roomId}/invite"""
        req = require_auth()
        body = json_body()
        target = valid_target(require(body, "user_id", str))
        if "id_server" in body or "medium" in body:
            raise MatrixError(400, "M_INVALID_PARAM", "Third-party invites are not supported")
        ratelimiter.check("invite_room", room_id, config.rc_invites_per_room)
        ratelimiter.check("invite_user", target, config.rc_invites_per_user)
        current, _ = svc.membership(room_id, target) if is_valid_room_id(room_id) else (None, 0)
        if current == "invite":
            return jsonify({})
        if current == "join":
            raise MatrixError(403, "M_FORBIDDEN", f"{target} is already in the room")
        if current == "ban":
            raise MatrixError(403, "M_FORBIDDEN", f"{target} is banned from the room")
        membership(req, room_id, target, "invite", body)
        return jsonify({})

    def valid_target(user_id: str) -> str:
        if not is_valid_user_id(user_id):
            raise MatrixError(400, "M_INVALID_PARAM", f"Invalid user id {user_id[:255]!r}")
        return user_id

    def moderation(room_id: str, new_membership: str, expect: tuple[str, ...] | None) -> Any:
        req = require_auth()
        body = json_body()
        target = valid_target(require(body, "user_id", str))
        check_room_id(room_id)
        current, _ = svc.membership(room_id, target)
        if expect is not None and current not in expect:
            if new_membership == "leave" and expect == ("ban",):
                raise MatrixError(403, "M_FORBIDDEN", f"{target} is not banned")
            svc.require_room(room_id)
            raise MatrixError(403, "M_FORBIDDEN",
                              f"{target} cannot be kicked: membership is {current}")
        membership(req, room_id, target, new_membership, body)
        return jsonify({})

    @bp.post(f"{P}/rooms/<room_id>/kick")
    def kick(room_id: str) -> Any:
        """POST /_matrix/client/v3/rooms/{roomId}/kick"""
        return moderation(room_id, "leave", ("join", "invite", "knock"))

    @bp.post(f"{P}/rooms/<room_id>/ban")
    def ban(room_id: str) -> Any:
        """POST /_matrix/client/v3/rooms/{roomId}/ban"""
        return moderation(room_id, "ban", None)

    @bp.post(f"{P}/rooms/<room_id>/unban")
    def unban(room_id: str) -> Any:
        """POST /_matrix/client/v3/rooms/{roomId}/unban"""
        return moderation(room_id, "leave", ("ban",))

    @bp.post(f"{P}/rooms/<room_id>/forget")
    def forget(room_id: str) -> Any:
        """POST /_matrix/client/v3/rooms/{roomId}/forget"""
        req = require_auth()
        json_body(optional=True)
        check_room_id(room_id)
        current, _ = svc.membership(room_id, req.user_id)
        if current in ("join", "invite", "knock"):
            raise MatrixError(400, "M_UNKNOWN", "You must leave the room before forgetting it")
        if current is None:
            svc.require_room(room_id)
            raise MatrixError(404, "M_NOT_FOUND", "You were never a member of this room")
        svc.db.run("forget", lambda t: t.execute(
            "INSERT INTO forgotten_rooms (user_id, room_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (req.user_id, room_id)), write=True)
        return jsonify({})

    @bp.get(f"{P}/joined_rooms")
    def joined_rooms() -> Any:
        """GET /_matrix/client/v3/joined_rooms"""
        req = require_auth()
        rooms = svc.db.run("joined_rooms", lambda t: [r[0] for r in t.query(
            "SELECT room_id FROM current_state WHERE type = 'm.room.member'"
            " AND state_key = ? AND membership = 'join' ORDER BY room_id", (req.user_id,))])
        return jsonify({"joined_rooms": rooms})

    def on_profile_changed(user_id: str, field: str, value: str | None) -> None:
        """Re-send the user's membership into every room they are joined to, with the new
        displayname / avatar_url (as Synapse does), so other members see the change."""
        rows = svc.db.run("joined_member_events", lambda t: t.query(
            "SELECT room_id, event_id FROM current_state WHERE type = 'm.room.member'"
            " AND state_key = ? AND membership = 'join'", (user_id,)))
        for room_id, eid in rows:
            se = svc.events.get_event(eid)
            content = dict(se.event.get("content", {})) if se else {"membership": "join"}
            if value is None:
                content.pop(field, None)
            else:
                content[field] = value
            try:
                svc.supervisor.ask(room_id, Send(EventSpec("m.room.member", user_id, content,
                                                           user_id)),
                                   trace_id=getattr(g, "request_id", None), sender="profile")
            except MatrixError as e:  # e.g. no longer allowed: skip that room
                log.info("profile update not sent to %s: %s", room_id, e.error)

    runtime.parts.setdefault("profile_listeners", []).append(on_profile_changed)
    app.register_blueprint(bp)


def _add_alias(svc: RoomService, alias: str, room_id: str, creator: str) -> None:
    from store.database import IntegrityError

    try:
        svc.db.run("add_alias", lambda t: t.execute(
            "INSERT INTO room_aliases (alias, room_id, creator, created_ts) VALUES (?, ?, ?, ?)",
            (alias, room_id, creator, int(time.time() * 1000))), write=True)
    except IntegrityError:
        raise MatrixError(409, "M_ROOM_IN_USE", "Room alias already taken") from None
