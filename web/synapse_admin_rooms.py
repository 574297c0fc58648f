"""The rooms half of Synapse's admin API (docs: Synapse "Room Admin API"), admins only, with
Synapse's paths, parameters and answers:

- ``GET /_synapse/admin/v1/rooms`` (``from``, ``limit``, ``order_by``, ``dir``,
  ``search_term``, ``public_rooms``, ``empty_rooms``) → ``{rooms, offset, total_rooms,
  next_batch?, prev_batch?}`` — one query over the rooms' current state
  (store/admin_rooms.py);
- ``GET /_synapse/admin/v1/rooms/{roomId}`` (details), ``…/members``, ``…/state``
  (``?type=``), ``…/messages`` (as ``/messages``, history visibility not applied),
  ``…/forward_extremities`` (room id or local alias);
- ``GET/PUT /_synapse/admin/v1/rooms/{roomId}/block``: a blocked room answers joins,
  invites and knocks of local users with 403 ``M_FORBIDDEN`` (web/rooms.py asks
  :func:`store.admin_rooms` through ``room_blocked``), and invites from other servers too;
- the deletes and history purges: web/synapse_admin_room_delete.py.

Blocking, unblocking, deleting and purging log one INFO line naming the admin who asked.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable

from flask import Blueprint, Flask, jsonify, request

from atrium.errors import MatrixError, bad_json, invalid_param, missing_param, not_found
from protocol.ids import is_valid_room_alias, is_valid_room_id
from store.admin_rooms import ORDERS, AdminRoomStore, RoomListQuery
from web.auth import require_admin
from web.client_events import client_event
from web.http import json_body, parse_bool, query_int
from web.synapse_admin_room_delete import RoomDeleter, check_delete_body
from web.uia import reject_nul_path_values

log = logging.getLogger(__name__)

A1 = "/_synapse/admin/v1"
A2 = "/_synapse/admin/v2"
MAX_LIST = 10_000   # rooms per page at most (Synapse has no bound)
BLOCKED = "This room has been blocked on this server"


def _legal_room(room_id: str) -> None:
    if not is_valid_room_id(room_id):
        raise MatrixError(400, "M_UNKNOWN", f"{room_id[:255]} is not a legal room ID")


def _opt_bool(name: str) -> bool | None:
    return parse_bool(name, request.args[name]) if name in request.args else None


def _legacy(ev: dict[str, Any]) -> dict[str, Any]:
    """Synapse's admin API serialises events with the old top-level ``age`` and
    ``user_id`` beside the client format."""
    age = (ev.get("unsigned") or {}).get("age")
    if age is not None:
        ev["age"] = age
    if "sender" in ev:
        ev["user_id"] = ev["sender"]
    return ev


class _SeesAll:
    """Visibility for an admin reading a room's messages: every event (Synapse's
    ``use_admin_priviledge``)."""

    def filter(self, ses: Iterable[Any]) -> list[Any]:
        return list(ses)

    def can_see(self, se: Any) -> bool:  # noqa: ARG002
        return True

    def readable_at(self, *args: Any) -> bool:  # noqa: ARG002
        return True


def register(app: Flask, runtime: Any) -> None:
    config = runtime.config
    svc = runtime.parts["rooms"]
    store = AdminRoomStore(runtime.db, config.server_name)
    deleter = RoomDeleter(runtime, store)
    runtime.parts["admin_rooms"] = store
    runtime.parts["room_deleter"] = deleter
    deleter.install(runtime)
    bp = Blueprint("synapse_admin_rooms", __name__)
    bp.url_value_preprocessor(reject_nul_path_values)

    def known_room(room_id: str) -> None:
        if not store.room_exists(room_id):
            raise not_found("Room not found")

    # ------------------------------------------------------------------ reads
    @bp.get(f"{A1}/rooms")
    def list_rooms() -> Any:
        """GET /_synapse/admin/v1/rooms"""
        require_admin()
        start = query_int("from", 0, minimum=0) or 0
        limit = query_int("limit", 100, minimum=0) or 0
        order_by = request.args.get("order_by", "name")
        if order_by not in ORDERS:
            raise invalid_param(f"Query parameter 'order_by' must be one of {sorted(ORDERS)}")
        direction = request.args.get("dir", "f")
        if direction not in ("f", "b"):
            raise invalid_param("Query parameter 'dir' must be 'f' or 'b'")
        term = request.args.get("search_term")
        if term == "":
            raise invalid_param("search_term cannot be an empty string")
        if term is not None and (len(term) > 1000 or "\x00" in term):
            raise invalid_param("search_term is too long or not text")
        limit = min(limit, MAX_LIST)
        rooms, total = store.list_rooms(RoomListQuery(
            start=start, limit=limit, order_by=order_by, backwards=direction == "b",
            search_term=term, public_rooms=_opt_bool("public_rooms"),
            empty_rooms=_opt_bool("empty_rooms")))
        out: dict[str, Any] = {"rooms": rooms, "offset": start, "total_rooms": total}
        if start + limit < total:
            out["next_batch"] = start + limit
        if start > 0:
            out["prev_batch"] = start - limit if start > limit else 0
        return jsonify(out)

    @bp.get(f"{A1}/rooms/<room_id>")
    def room_details(room_id: str) -> Any:
        """GET /_synapse/admin/v1/rooms/{roomId}"""
        require_admin()
        details = store.room_details(room_id)
        if details is None:
            raise not_found("Room not found")
        return jsonify(details)

    @bp.get(f"{A1}/rooms/<room_id>/members")
    def room_members(room_id: str) -> Any:
        """GET /_synapse/admin/v1/rooms/{roomId}/members"""
        require_admin()
        known_room(room_id)
        members = store.joined_members(room_id)
        return jsonify({"members": members, "total": len(members)})

    @bp.get(f"{A1}/rooms/<room_id>/state")
    def room_state(room_id: str) -> Any:
        """GET /_synapse/admin/v1/rooms/{roomId}/state"""
        require_admin()
        rv = svc.room_version(room_id) if store.room_exists(room_id) else None
        if rv is None:
            raise not_found("Room not found")
        only = request.args.get("type") or None
        ids = [e for (t, _k), e in svc.events.get_current_state_ids(room_id).items()
               if only is None or t == only]
        evs = svc.events.get_events(ids)
        return jsonify({"state": [_legacy(client_event(svc.events, evs[e], rv)) for e in ids
                                  if e in evs]})

    @bp.get(f"{A1}/rooms/<room_id>/messages")
    def room_messages(room_id: str) -> Any:
        """GET /_synapse/admin/v1/rooms/{roomId}/messages"""
        from web.event_filter import parse_filter_param
        from web.pagination import parse_token
        from web.timeline import Reader, messages

        req = require_admin()
        direction = request.args.get("dir", "f")
        if direction not in ("f", "b"):
            raise invalid_param("Query parameter 'dir' must be 'b' or 'f'")
        limit = query_int("limit", 10, minimum=0, maximum=1000) or 0
        from_raw = request.args.get("from") or None
        from_tok, to_tok = parse_token(from_raw), parse_token(request.args.get("to"), "to")
        flt = parse_filter_param(request.args.get("filter"))
        known_room(room_id)
        rd = Reader(svc, req.user_id, req.device_id)
        rd.vis = _SeesAll()  # type: ignore[assignment]
        out = messages(rd, room_id, from_tok=from_tok, from_raw=from_raw, to_tok=to_tok,
                       backwards=direction == "b", limit=limit, flt=flt)
        out["chunk"] = [_legacy(ev) for ev in out["chunk"]]
        return jsonify(out)

    @bp.get(f"{A1}/rooms/<room_id>/forward_extremities")
    def forward_extremities(room_id: str) -> Any:
        """GET /_synapse/admin/v1/rooms/{roomIdOrAlias}/forward_extremities"""
        require_admin()
        if room_id.startswith("#") and is_valid_room_alias(room_id):
            found = runtime.parts["directory"].get_alias(room_id)
            if found is None:
                raise not_found(f"Room alias {room_id} not found")
            room_id = found.room_id
        elif not is_valid_room_id(room_id):
            raise MatrixError(400, "M_UNKNOWN",
                              f"{room_id[:255]} was not legal room ID or room alias")
        rows = store.forward_extremities(room_id)
        return jsonify({"count": len(rows), "results": rows})

    # ------------------------------------------------------------------ block
    @bp.get(f"{A1}/rooms/<room_id>/block")
    def get_block(room_id: str) -> Any:
        """GET /_synapse/admin/v1/rooms/{roomId}/block"""
        require_admin()
        _legal_room(room_id)
        by = store.blocked_by(room_id)
        return jsonify({"block": True, "user_id": by} if by is not None else {"block": False})

    @bp.put(f"{A1}/rooms/<room_id>/block")
    def put_block(room_id: str) -> Any:
        """PUT /_synapse/admin/v1/rooms/{roomId}/block"""
        req = require_admin()
        body = json_body()
        _legal_room(room_id)
        if "block" not in body:
            raise missing_param("Missing params: ['block']")
        block = body["block"]
        if not isinstance(block, bool):
            raise bad_json("Param 'block' must be a boolean.")
        if block:
            store.block(room_id, req.user_id)
        else:
            store.unblock(room_id)
        log.info("admin %s: %s room %s", req.user_id, "blocked" if block else "unblocked",
                 room_id)
        return jsonify({"block": block})

    # ------------------------------------------------------------------ deletes
    def delete_params(room_id: str) -> tuple[Any, dict[str, Any]]:
        req = require_admin()
        body = json_body()
        params = check_delete_body(body, config.server_name, runtime.parts["accounts"])
        _legal_room(room_id)
        return req, params

    def log_delete(req: Any, room_id: str, params: dict[str, Any], task_id: str) -> None:
        log.info("admin %s: delete room %s (block=%s, purge=%s, force_purge=%s,"
                 " new_room_user_id=%s) delete_id=%s", req.user_id, room_id, params["block"],
                 params["purge"], params["force_purge"], params["new_room_user_id"], task_id)

    @bp.delete(f"{A2}/rooms/<room_id>")
    def delete_room_v2(room_id: str) -> Any:
        """DELETE /_synapse/admin/v2/rooms/{roomId}"""
        req, params = delete_params(room_id)
        task = deleter.start("delete", room_id, req.user_id, params)
        log_delete(req, room_id, params, task.task_id)
        return jsonify({"delete_id": task.task_id})

    @bp.delete(f"{A1}/rooms/<room_id>")
    @bp.post(f"{A1}/rooms/<room_id>/delete")
    def delete_room_v1(room_id: str) -> Any:
        """DELETE /_synapse/admin/v1/rooms/{roomId} (also POST …/rooms/{roomId}/delete)"""
        req, params = delete_params(room_id)
        log_delete(req, room_id, params, "(v1, synchronous)")
        task = deleter.run_now(room_id, req.user_id, params)
        if task.status == "failed":
            raise MatrixError(400, "M_UNKNOWN", task.error or "The delete failed")
        return jsonify(task.result)

    def task_answer(task: Any) -> dict[str, Any]:
        out = {"delete_id": task.task_id, "room_id": task.room_id, "status": task.status,
               "shutdown_room": task.result}
        if task.error:
            out["error"] = task.error
        return out

    @bp.get(f"{A2}/rooms/<room_id>/delete_status")
    def delete_status_of_room(room_id: str) -> Any:
        """GET /_synapse/admin/v2/rooms/{roomId}/delete_status"""
        require_admin()
        _legal_room(room_id)
        tasks = store.tasks_of_room(room_id, "delete")
        if not tasks:
            raise not_found(f"No delete task for room_id '{room_id}' found")
        return jsonify({"results": [task_answer(t) for t in tasks]})

    @bp.get(f"{A2}/rooms/delete_status/<delete_id>")
    def delete_status(delete_id: str) -> Any:
        """GET /_synapse/admin/v2/rooms/delete_status/{deleteId}"""
        require_admin()
        task = store.get_task(delete_id)
        if task is None or task.kind != "delete":
            raise not_found(f"delete id '{delete_id}' not found")
        return jsonify(task_answer(task))

    from web.synapse_admin_purge_history import add_routes

    add_routes(bp, runtime, store, deleter)
    app.register_blueprint(bp)

    @app.before_request
    def _blocked_rooms_refuse_members() -> None:
        """Invites from other servers to a blocked room, and joins / invites / knocks put
        as ``m.room.member`` state (the membership endpoints: web/rooms.py)."""
        endpoint, args = request.endpoint, request.view_args or {}
        if endpoint == "room_events.put_state":
            if args.get("event_type") != "m.room.member":
                return
        elif endpoint not in ("federation_membership.invite_v1",
                              "federation_membership.invite_v2"):
            return
        room_id = args.get("room_id")
        if not isinstance(room_id, str) or store.blocked_by(room_id) is None:
            return
        if endpoint == "room_events.put_state" and json_body(optional=True).get(
                "membership") not in ("join", "invite", "knock"):
            return
        raise MatrixError(403, "M_FORBIDDEN", BLOCKED)
