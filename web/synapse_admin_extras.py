"""More of Synapse's admin API — what synapse-admin (the web UI) calls beyond the users and
rooms lists — on Synapse's paths, with its parameters, answers and errors (docs: Synapse
"User Admin API", "Room Admin API", "Edit Room Membership API", "Statistics API"):

- ``GET /_synapse/admin/v1/users/{userId}/pushers`` → ``{pushers, total}``;
- ``GET /_synapse/admin/v1/username_available?username=`` → ``{"available": true}`` (the
  checks of registration, also when registration is closed);
- ``GET /_synapse/admin/v1/users/{userId}/accountdata`` → ``{account_data: {global, rooms}}``;
- ``POST /_synapse/admin/v1/join/{roomIdOrAlias}`` ``{user_id}``: the admin invites the user
  first when the room is not public (so the admin must be able to invite), then the user
  joins — both ordinary events sent through the room's actor; a room no local user is in is
  joined through another server (``server_name`` query parameters, as ``/join``);
- ``POST /_synapse/admin/v1/rooms/{roomIdOrAlias}/make_room_admin`` ``{user_id?}``: the
  local member with the highest power level sends the power-levels change giving the user
  (default: the admin) that member's level, then invites the user to a non-public room;
- ``DELETE /_synapse/admin/v1/rooms/{roomIdOrAlias}/forward_extremities`` → ``{deleted}``:
  only the extremities whose removal leaves the room's state as it is (:func:`droppable`),
  with the room's actor retired meanwhile, so it stays the only writer of the room;
- ``GET /_synapse/admin/v1/statistics/users/media`` and ``…/statistics/database/rooms``.

Redacting a user's events is web/synapse_admin_redact.py.  Every call that changes
something logs one INFO line naming the admin who asked (:func:`audit`).
"""
from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, jsonify, request

from actors.room_messages import BuildEvent, EventSpec, PersistBuilt
from atrium.errors import MatrixError, bad_json, forbidden, invalid_param, missing_param
from atrium.errors import not_found
from protocol.ids import is_valid_room_alias, is_valid_room_id, is_valid_user_id, server_of
from protocol.power_levels import get_event_level, get_user_level
from store.admin_extras import MEDIA_ORDERS, AdminExtrasStore
from store.admin_rooms import room_blocked
from web.auth import require_admin
from web.http import json_body, query_int
from web.synapse_admin_users import audit, existing_user, local_user, unknown
from web.uia import reject_nul_path_values

log = logging.getLogger(__name__)

A1 = "/_synapse/admin/v1"
NO_ADMIN = "No local admin user in room"
NO_POWER = "No local admin user in room with power to update power levels."


def droppable(store: AdminExtrasStore, state_groups: Any, room_id: str) -> list[str]:
    """The forward extremities that can go without changing the room's state.

    The room's current state is the resolution of its extremities' states.  If one
    extremity's state already is the current state, every other one can go (the next event
    names only it, and its state is what the room's actor holds).  Otherwise only
    extremities whose state equals a newer kept one's go: a state set given twice to state
    resolution counts once, so the resolution — the current state — stays the same.
    Synapse keeps only the newest extremity whatever the states, which can change the state
    the next event is built on."""
    exts = store.extremities(room_id)   # newest first
    if len(exts) < 2:
        return []
    states = {e: (state_groups.get_state(g) if g is not None else None) for e, _, g in exts}
    current = store.current_state_ids(room_id)
    for e, _, _ in exts:
        if states[e] == current:
            return [x for x, _, _ in exts if x != e]
    kept: list[dict[Any, str]] = []
    drop = []
    for e, _, _ in exts:
        s = states[e]
        if s is None:
            continue
        if s in kept:
            drop.append(e)
        else:
            kept.append(s)
    return drop


def register(app: Flask, runtime: Any) -> None:
    config = runtime.config
    server = config.server_name
    svc = runtime.parts["rooms"]
    accounts = runtime.parts["accounts"]
    store = AdminExtrasStore(runtime.db, server)
    runtime.parts["admin_extras"] = store
    bp = Blueprint("synapse_admin_extras", __name__)
    bp.url_value_preprocessor(reject_nul_path_values)

    def existing(user_id: str) -> str:
        return existing_user(accounts, user_id, server)

    def resolve(ident: str) -> tuple[str, list[str]]:
        """A room id or alias → (room id, servers the directory names for it)."""
        if ident.startswith("#") and is_valid_room_alias(ident):
            if server_of(ident) == server:
                found = runtime.parts["directory"].get_alias(ident)
                if found is None:
                    raise not_found(f"Room alias {ident} not found")
                return found.room_id, []
            queries = getattr(runtime.parts.get("federation"), "queries", None)
            if queries is None:
                raise not_found(f"Room alias {ident} not found")
            answer = queries.directory(ident)
            return answer["room_id"], [s for s in answer.get("servers") or []
                                       if isinstance(s, str)]
        if not is_valid_room_id(ident):
            raise unknown(f"{ident[:255]} was not legal room ID or room alias")
        return ident, []

    def state_content(room_id: str, etype: str, key: str = "") -> dict[str, Any] | None:
        se = svc.current_state_event(room_id, etype, key)
        content = se.event.get("content") if se is not None else None
        return content if isinstance(content, dict) else None

    def invite(room_id: str, sender: str, target: str) -> None:
        """``sender`` invites ``target`` through the room's actor (an invite to another
        server's user is countersigned by that server first, as ``/invite``)."""
        if room_blocked(runtime.db, room_id):
            raise forbidden("This room has been blocked on this server")
        from web.rooms import get_profile

        content = {"membership": "invite", **get_profile(svc, target)}
        spec = EventSpec("m.room.member", sender, content, target)
        if server_of(target) == server:
            svc.send(room_id, spec)
            return
        fed = runtime.parts.get("federation")
        if fed is None or fed.client is None:
            raise forbidden("Federation is switched off on this server")
        from federation.join import remote_membership

        rv = svc.require_room(room_id)
        signed = remote_membership(fed, svc).invite(room_id, rv, svc.ask(
            room_id, BuildEvent(spec=spec)))
        svc.ask(room_id, PersistBuilt(event=signed))

    # ------------------------------------------------------------------ users
    @bp.get(f"{A1}/users/<user_id>/pushers")
    def pushers(user_id: str) -> Any:
        """GET /_synapse/admin/v1/users/{userId}/pushers"""
        require_admin()
        found = store.pushers(existing(user_id))
        return jsonify({"pushers": found, "total": len(found)})

    @bp.get(f"{A1}/username_available")
    def username_available() -> Any:
        """GET /_synapse/admin/v1/username_available?username= (registration's checks,
        whether registration is open or not)"""
        from web.register import check_username, user_in_use

        require_admin()
        username = request.args.get("username")
        if username is None:
            raise missing_param("Missing string query parameter 'username'")
        if username != username.lower():  # Synapse: upper case is not a localpart character
            raise MatrixError(400, "M_INVALID_USERNAME",
                              "User ID can only contain characters a-z, 0-9, or '=_-./+'")
        if accounts.user_exists(check_username(username, server)):
            raise user_in_use()
        return jsonify({"available": True})

    @bp.get(f"{A1}/users/<user_id>/accountdata")
    def account_data(user_id: str) -> Any:
        """GET /_synapse/admin/v1/users/{userId}/accountdata"""
        require_admin()
        glob, rooms = store.account_data(existing(user_id))
        return jsonify({"account_data": {"global": glob, "rooms": rooms}})

    # ------------------------------------------------------------------ rooms
    @bp.post(f"{A1}/join/<room_id_or_alias>")
    def join(room_id_or_alias: str) -> Any:
        """POST /_synapse/admin/v1/join/{roomIdOrAlias} {"user_id"}"""
        from web.rooms import get_profile

        req = require_admin()
        body = json_body()
        if "user_id" not in body:
            raise missing_param("Missing params: ['user_id']")
        target = body["user_id"]
        if not isinstance(target, str):
            raise bad_json("'user_id' must be a string")
        target = local_user(target, server, "This endpoint can only be used with local users")
        if not accounts.user_exists(target):
            raise not_found("User not found")
        room_id, servers = resolve(room_id_or_alias)
        if room_blocked(runtime.db, room_id):
            raise forbidden("This room has been blocked on this server")
        content = {"membership": "join", **get_profile(svc, target)}
        rv = svc.room_version(room_id)
        resident = rv is not None and bool(store.local_joined(room_id))
        if not resident:
            remote = _remote_join(runtime, svc, room_id, target, servers, content)
            if remote:
                audit(req, "joined", target, room_id=room_id, through="federation")
                return jsonify({"room_id": room_id})
            if rv is None:
                raise not_found("No known servers to join this room through")
        current = svc.membership(room_id, target)[0]
        if current == "join":
            return jsonify({"room_id": room_id})
        rules = state_content(room_id, "m.room.join_rules")
        if rules is not None and rules.get("join_rule") != "public" and current != "invite":
            invite(room_id, req.user_id, target)   # 403 when the admin may not invite
        svc.send(room_id, EventSpec("m.room.member", target, content, target))
        audit(req, "joined", target, room_id=room_id)
        return jsonify({"room_id": room_id})

    @bp.post(f"{A1}/rooms/<room_id_or_alias>/make_room_admin")
    def make_room_admin(room_id_or_alias: str) -> Any:
        """POST /_synapse/admin/v1/rooms/{roomIdOrAlias}/make_room_admin {"user_id"?}"""
        req = require_admin()
        body = json_body(optional=True)
        room_id, _ = resolve(room_id_or_alias)
        target = body.get("user_id", req.user_id)
        if not isinstance(target, str) or not is_valid_user_id(target):
            raise invalid_param("'user_id' must be a user id")
        rv = svc.room_version(room_id)
        create = svc.current_state_event(room_id, "m.room.create", "")
        if rv is None or create is None:
            raise unknown("Server not in room")
        pl = state_content(room_id, "m.room.power_levels")
        levels = {u: get_user_level(rv, create.event, pl, u) for u in store.local_joined(
            room_id)}
        if not levels:
            raise unknown(NO_ADMIN)
        admin = max(levels, key=lambda u: (levels[u], u == req.user_id))
        if levels[admin] < get_event_level(pl, "m.room.power_levels", True, rv=rv):
            raise unknown(NO_POWER)
        grant = levels[admin] if levels[admin] != float("inf") else 100
        member = state_content(room_id, "m.room.member", target) or {}
        rules = state_content(room_id, "m.room.join_rules") or {}
        invite_too = member.get("membership") not in ("join", "invite") and \
            rules.get("join_rule") != "public"
        if invite_too and room_blocked(runtime.db, room_id):  # refused before any change
            raise forbidden("This room has been blocked on this server")
        if get_user_level(rv, create.event, pl, target) < grant:
            new = dict(pl) if pl is not None else {}
            users = dict(new.get("users") or {})
            if pl is None and not rv.privileged_creators:  # the creator keeps its 100
                users[admin] = grant
            users[target] = grant
            new["users"] = users
            try:
                svc.send(room_id, EventSpec("m.room.power_levels", admin, new, ""))
            except MatrixError as e:
                if e.status != 403:
                    raise
                raise unknown(NO_POWER) from None
        if invite_too:
            invite(room_id, admin, target)
        audit(req, "made room admin in", room_id, user_id=target, sent_by=admin, level=grant)
        return jsonify({})

    @bp.delete(f"{A1}/rooms/<room_id>/forward_extremities")
    def delete_extremities(room_id: str) -> Any:
        """DELETE /_synapse/admin/v1/rooms/{roomIdOrAlias}/forward_extremities"""
        req = require_admin()
        room_id, _ = resolve(room_id)
        if svc.room_version(room_id) is None:
            raise not_found("Room not found")
        deleted = 0
        if droppable(store, svc.state_groups, room_id):
            sup = svc.supervisor
            try:
                if not sup.retire(room_id):
                    raise MatrixError(503, "M_UNKNOWN", "The room's actor did not stop in time")
                # again, now that nothing writes to the room
                deleted = store.delete_extremities(
                    room_id, droppable(store, svc.state_groups, room_id))
            finally:
                sup.reinstate(room_id)
        audit(req, "deleted forward extremities of", room_id, deleted=deleted)
        return jsonify({"deleted": deleted})

    # ------------------------------------------------------------------ statistics
    @bp.get(f"{A1}/statistics/users/media")
    def media_statistics() -> Any:
        """GET /_synapse/admin/v1/statistics/users/media"""
        require_admin()
        order_by = request.args.get("order_by", "user_id")
        if order_by not in MEDIA_ORDERS:
            raise invalid_param(f"Query parameter 'order_by' must be one of"
                                f" {sorted(MEDIA_ORDERS)}")
        start = query_int("from", 0, minimum=0) or 0
        limit = query_int("limit", 100, minimum=0) or 0
        from_ts = query_int("from_ts", 0, minimum=0) or 0
        until_ts = query_int("until_ts", None, minimum=0)
        if until_ts is not None and until_ts <= from_ts:
            raise invalid_param("Query parameter until_ts must be greater than from_ts.")
        term = request.args.get("search_term")
        if term == "":
            raise invalid_param("Query parameter search_term cannot be an empty string.")
        if term is not None and (len(term) > 1000 or "\x00" in term):
            raise invalid_param("Query parameter search_term is too long or not text")
        direction = request.args.get("dir", "f")
        if direction not in ("f", "b"):
            raise invalid_param("Query parameter 'dir' must be one of ['b', 'f']")
        users, total = store.media_usage(start, limit, order_by, direction == "b", from_ts,
                                         until_ts, term)
        out: dict[str, Any] = {"users": users, "total": total}
        if start + limit < total:
            out["next_token"] = start + len(users)
        return jsonify(out)

    @bp.get(f"{A1}/statistics/database/rooms")
    def largest_rooms() -> Any:
        """GET /_synapse/admin/v1/statistics/database/rooms (the ten largest rooms)"""
        require_admin()
        return jsonify({"rooms": store.largest_rooms()})

    app.register_blueprint(bp)
    from web.synapse_admin_redact import register as register_redact

    register_redact(app, runtime, store)


def _remote_join(runtime: Any, svc: Any, room_id: str, user_id: str, extra: list[str],
                 content: dict[str, Any]) -> bool:
    """Join a room no local user is in through another server, as ``/join`` does; False
    when there is no server to ask (federation off, or none named)."""
    fed = runtime.parts.get("federation")
    if fed is None or fed.client is None:
        return False
    server = runtime.config.server_name
    servers = [s for s in request.args.getlist("server_name") if s] + extra
    if ":" in room_id:
        servers.append(room_id.split(":", 1)[1])
    servers = [s for s in dict.fromkeys(servers) if s != server]
    if not servers:
        return False
    from federation.join import remote_membership

    remote_membership(fed, svc).join(room_id, user_id, servers, content)
    return True
