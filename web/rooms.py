"""Room creation and membership: ``/createRoom``, join (by id or alias), leave, invite, kick,
ban, unban, forget, knock (client-server-api "Room membership").

Rooms held elsewhere (server-server-api "Joining Rooms", "Knocking upon a room", "Inviting
to a room", "Leaving Rooms"): when no user of ours is joined to the room, a join or knock
goes through a resident server (``federation/join.py``: candidates from ``via`` /
``server_name``, the directory answer for a remote alias, the server that invited the user,
the room id's server), and leaving a room we only hold an invite or knock of rejects it
through the inviting server.  Invites to users of other servers are built by the room
(``BuildEvent``), countersigned by the invitee's server (``/invite`` v2) and then persisted
(``PersistBuilt``).  Kicks, bans and leaves of rooms we are in are local sends whoever the
target is."""
from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import unquote

from flask import Blueprint, Flask, g, jsonify

from atrium.errors import MatrixError
from protocol.ids import is_valid_room_alias, is_valid_room_id, is_valid_user_id, server_of
from store.admin_rooms import room_blocked
from web.auth import Requester, require_auth
from web.guest_access import guest_join_content
from web.http import check_type, json_body, require
from web.room_service import RoomService

from actors.room_create import plan_room
from actors.room_messages import BuildEvent, EventSpec, InitRoom, PersistBuilt, Send

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


def _domain(room_id: str) -> str | None:
    """The server part of a room id (rooms v12 have none)."""
    return room_id.split(":", 1)[1] if ":" in room_id else None


def _via() -> list[str]:
    from flask import request

    return [s for s in request.args.getlist("via") + request.args.getlist("server_name")
            if s]


def register(app: Flask, runtime: Any) -> None:
    svc: RoomService = runtime.parts["rooms"]
    config = runtime.config
    ratelimiter = runtime.ratelimiter
    bp = Blueprint("rooms", __name__)

    def check_room_id(room_id: str) -> None:
        if not is_valid_room_id(room_id):
            raise MatrixError(400, "M_INVALID_PARAM", f"Invalid room id {room_id!r}")

    def not_blocked(room_id: str) -> None:
        """Rooms an admin blocked (web/synapse_admin_rooms.py): no join, invite or knock."""
        if room_blocked(svc.db, room_id):
            raise MatrixError(403, "M_FORBIDDEN", "This room has been blocked on this server")

    @bp.post(f"{P}/createRoom")
    def create_room() -> Any:
        """POST /_matrix/client/v3/createRoom"""
        req = require_auth()
        body = json_body()
        rv = svc.resolve_room_version(body.get("room_version"))
        from web.third_party_invite import invite_3pid, parse_invite_3pid

        invites_3pid = parse_invite_3pid(body)
        if runtime.parts["user_policy"].is_shadow_banned(req.user_id):
            if body.get("invite") or invites_3pid:   # as Synapse: a wait, then no invites
                runtime.parts["user_policy"].shadow_ban_wait()
            body, invites_3pid = {**body, "invite": []}, []  # as Synapse: room, no invites
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
        for invitee in plan.remote_invites:
            content: dict[str, Any] = {"membership": "invite"}
            if body.get("is_direct") is True:
                content["is_direct"] = True
            try:
                invite_remote(req, room_id, invitee, content)
            except MatrixError as e:  # the room exists: a failed remote invite is logged
                log.info("createRoom %s: invite of %s failed: %s", room_id, invitee, e.error)
        for inv in invites_3pid:  # after the room is made, as Synapse (failures logged)
            try:
                bound = invite_3pid(runtime, req, room_id, inv)
                if bound is not None and svc.membership(room_id, bound)[0] is None:
                    membership(req, room_id, bound, "invite", {},
                               {"is_direct": True} if body.get("is_direct") is True else None)
            except MatrixError as e:
                log.info("createRoom %s: 3pid invite failed: %s", room_id, e.error)
        return jsonify({"room_id": room_id})

    # ------------------------------------------------------------------ other servers
    def joins() -> Any:
        """The joining side (federation/join.py), or None when federation is off."""
        fed = runtime.parts.get("federation")
        if fed is None or fed.client is None:
            return None
        from federation.join import remote_membership

        return remote_membership(fed, svc)

    def resident(room_id: str) -> bool:
        """Whether one of our users is joined to the room (we take part in it)."""
        suffix = ":" + config.server_name
        rows = svc.db.run("local_joined", lambda t: t.query(
            "SELECT state_key FROM current_state WHERE room_id = ? AND type = 'm.room.member'"
            " AND membership = 'join' AND state_key LIKE ?", (room_id, "%" + suffix)))
        return any(r[0].endswith(suffix) and server_of(r[0]) == config.server_name
                   for r in rows)

    def candidates(room_id: str, user_id: str, extra: list[str]) -> list[str]:
        """Servers to ask about a room we do not take part in, best first."""
        out: list[str] = []
        record = svc.remote_invites.latest_in(user_id, room_id)
        if record is not None and record.membership in ("invite", "knock"):
            out += [record.origin, server_of(record.sender)]
        out += _via() + extra
        domain = _domain(room_id)
        if domain:
            out.append(domain)
        return [s for s in dict.fromkeys(out) if s != config.server_name]

    def invite_remote(req: Requester, room_id: str, target: str,
                      content: dict[str, Any]) -> Any:
        """Invite a user of another server: build, countersign, persist."""
        rv = svc.require_room(room_id)
        j = joins()
        if j is None:
            raise MatrixError(403, "M_FORBIDDEN", "Federation is switched off on this server")
        spec = EventSpec(type="m.room.member", sender=req.user_id, content=content,
                         state_key=target)
        built = svc.ask(room_id, BuildEvent(spec=spec))
        signed = j.invite(room_id, rv, built)
        return svc.ask(room_id, PersistBuilt(event=signed))

    def wake_invitee(user_id: str, pos: int) -> None:
        sync = runtime.parts.get("sync")
        if sync is not None:
            sync.notifier.wake_users({user_id}, svc.events.stream, pos)

    svc.remote_invites.on_recorded.append(wake_invitee)

    def membership(req: Requester, room_id: str, target: str, membership: str,
                   body: dict[str, Any], extra: dict[str, Any] | None = None) -> Any:
        check_room_id(room_id)
        if not is_valid_user_id(target):
            raise MatrixError(400, "M_INVALID_PARAM", f"Invalid user id {target!r}")
        svc.require_room(room_id)
        if membership == "invite":
            not_blocked(room_id)
        content: dict[str, Any] = {"membership": membership}
        reason = _reason(body)
        if reason is not None:
            content["reason"] = reason
        if membership in ("join", "invite", "knock"):
            content.update(get_profile(svc, target))
        if extra:
            content.update(extra)
        if membership == "invite" and server_of(target) != config.server_name:
            return invite_remote(req, room_id, target, content)
        sent = svc.send(room_id, EventSpec(type="m.room.member", sender=req.user_id,
                                           content=content, state_key=target))
        return sent

    def resolve_target(target: str) -> tuple[str, list[str]]:
        """Room id (and servers to ask) of a room id or alias; remote aliases are asked
        of their server (``GET /query/directory``)."""
        if not target.startswith("#"):
            check_room_id(target)
            return target, []
        if not is_valid_room_alias(target):
            raise MatrixError(400, "M_INVALID_PARAM", "Invalid room alias")
        if server_of(target) == config.server_name:
            return resolve_alias(svc, target), []
        queries = getattr(runtime.parts.get("federation"), "queries", None)
        if queries is None:
            raise MatrixError(404, "M_NOT_FOUND", f"Room alias {target} not found")
        found = queries.directory(target)
        return found["room_id"], list(found.get("servers") or [])

    def membership_content(req: Requester, body: dict[str, Any], membership: str
                           ) -> dict[str, Any]:
        content: dict[str, Any] = {}
        reason = _reason(body)
        if reason is not None:
            content["reason"] = reason
        if membership != "leave":
            content.update(get_profile(svc, req.user_id))
        return content

    def third_party_signed(req: Requester, room_id: str, body: dict[str, Any]) -> None:
        """``third_party_signed`` (client-server-api ``/join``): the identity server's signed
        association turns the room's third-party invite into the user's invite first."""
        signed = body.get("third_party_signed")
        if signed is None:
            return
        if not isinstance(signed, dict) or not isinstance(signed.get("sender"), str):
            raise MatrixError(400, "M_BAD_JSON",
                              "'third_party_signed' must be an object with a sender")
        fed = runtime.parts.get("federation")
        tp = fed.extras.get("threepid") if fed is not None else None
        if tp is None:
            raise MatrixError(403, "M_FORBIDDEN", "Third-party invites are not available")
        from federation.threepid import check_signed

        tp.exchange(room_id, signed["sender"], req.user_id, check_signed(signed, req.user_id))

    def do_join(req: Requester, room_id_or_alias: str) -> Any:
        body = json_body(optional=True)
        room_id, servers = resolve_target(unquote(room_id_or_alias))
        not_blocked(room_id)
        extra = guest_join_content(svc, req, room_id)  # 403 for guests unless can_join
        if isinstance(body, dict) and svc.membership(room_id, req.user_id)[0] != "join":
            third_party_signed(req, room_id, body)
        rv = svc.room_version(room_id)
        j = joins()
        remote = candidates(room_id, req.user_id, servers) \
            if j is not None and not resident(room_id) else []
        if remote:
            ratelimiter.check("join_remote", req.user_id, config.rc_joins_remote)
            current = svc.membership(room_id, req.user_id)[0] if rv is not None else None
            if current == "join":
                return jsonify({"room_id": room_id})
            j.join(room_id, req.user_id, remote,
                   {**membership_content(req, body, "join"), **(extra or {})})
            return jsonify({"room_id": room_id})
        ratelimiter.check("join", req.user_id, config.rc_joins_local)
        if rv is None:
            raise MatrixError(404, "M_NOT_FOUND", "No known servers to join this room through")
        current, _ = svc.membership(room_id, req.user_id)
        if current == "join":
            return jsonify({"room_id": room_id})
        membership(req, room_id, req.user_id, "join", body, extra)
        return jsonify({"room_id": room_id})

    @bp.post(f"{P}/join/<path:room_id_or_alias>")
    def join_any(room_id_or_alias: str) -> Any:
        """POST /_matrix/client/v3/join/{roomIdOrAlias}"""
        return do_join(require_auth(allow_guest=True), room_id_or_alias)

    @bp.post(f"{P}/rooms/<room_id>/join")
    def join_room(room_id: str) -> Any:
        """POST /_matrix/client/v3/rooms/{roomId}/join"""
        return do_join(require_auth(allow_guest=True), room_id)

    @bp.post(f"{P}/knock/<path:room_id_or_alias>")
    def knock(room_id_or_alias: str) -> Any:
        """POST /_matrix/client/v3/knock/{roomIdOrAlias}"""
        req = require_auth()
        body = json_body(optional=True)
        room_id, servers = resolve_target(unquote(room_id_or_alias))
        not_blocked(room_id)
        j = joins()
        remote = candidates(room_id, req.user_id, servers) \
            if j is not None and not resident(room_id) else []
        if remote:
            j.knock(room_id, req.user_id, remote, membership_content(req, body, "knock"))
            return jsonify({"room_id": room_id})
        membership(req, room_id, req.user_id, "knock", body)
        return jsonify({"room_id": room_id})

    @bp.post(f"{P}/rooms/<room_id>/leave")
    def leave(room_id: str) -> Any:
        """POST /_matrix/client/v3/rooms/{roomId}/leave"""
        req = require_auth(allow_guest=True)
        body = json_body(optional=True)
        check_room_id(room_id)
        current, _ = svc.membership(room_id, req.user_id)
        record = svc.remote_invites.latest_in(req.user_id, room_id)
        j = joins()
        if record is not None and record.membership in ("invite", "knock") \
                and current != "join" and j is not None and not resident(room_id):
            # an invite / knock of a room we do not take part in: rejected through the
            # server it came from (server-server-api "Leaving Rooms (Rejecting Invites)")
            j.leave(room_id, req.user_id, candidates(room_id, req.user_id, []),
                    membership_content(req, body, "leave"))
            return jsonify({})
        if current is None and record is not None and record.membership == "leave":
            return jsonify({})  # a remote invite already rejected: idempotent
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
        if runtime.parts["user_policy"].is_shadow_banned(req.user_id):
            runtime.parts["user_policy"].shadow_ban_wait()   # as Synapse: 1–10 s first
            return jsonify({})  # as Synapse: the invite looks sent and is not
        if "medium" in body and "address" in body:  # by third-party identifier, as Synapse
            from web.third_party_invite import invite_3pid, parse_invite

            inv = parse_invite(body)
            check_room_id(room_id)
            ratelimiter.check("invite_room", room_id, config.rc_invites_per_room)
            bound = invite_3pid(runtime, req, room_id, inv)
            if bound is None:  # an m.room.third_party_invite is in the room
                return jsonify({})
            target = bound
        else:
            target = valid_target(require(body, "user_id", str))
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
