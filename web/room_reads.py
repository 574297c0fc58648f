"""Reading a room's history: ``/messages``, ``/context/{eventId}``, ``/relations`` and
``/threads`` (client-server-api "Getting events for a room", modules/event_context.md,
"Relationships", modules/threading.md).

Reads go straight to the store at a position (ARCHITECTURE invariant 2); history visibility
applies to every event served; tokens are described in web/pagination.py.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, jsonify, request

from atrium.errors import MatrixError, invalid_param
from protocol.ids import is_valid_room_id
from web.auth import Requester, require_auth
from web.event_filter import parse_filter_param
from web.http import query_bool, query_int
from web.pagination import parse_token
from web.room_service import RoomService
from web.timeline import Reader, context, messages, relations, threads
from web.visibility import require_readable

V3 = "/_matrix/client/v3"
V1 = "/_matrix/client/v1"
MAX_LIMIT = 1000


def _direction(default: str) -> bool:
    """True for backwards; 400 M_INVALID_PARAM unless ``dir`` is b or f."""
    d = request.args.get("dir", default)
    if d not in ("b", "f"):
        raise invalid_param("Query parameter 'dir' must be 'b' or 'f'")
    return d == "b"


def register(app: Flask, runtime: Any) -> None:
    svc: RoomService = runtime.parts["rooms"]
    bp = Blueprint("room_reads", __name__)

    def reader(req: Requester, room_id: str, *, status: int = 403) -> Reader:
        if not is_valid_room_id(room_id):
            raise MatrixError(400, "M_INVALID_PARAM", f"Invalid room id {room_id!r}")
        svc.require_room(room_id)
        require_readable(svc, req.user_id, room_id, status=status)
        return Reader(svc, req.user_id, req.device_id)

    @bp.get(f"{V3}/rooms/<room_id>/messages")
    def get_messages(room_id: str) -> Any:
        """GET /_matrix/client/v3/rooms/{roomId}/messages"""
        req = require_auth(allow_guest=True)
        backwards = _direction("f")
        limit = query_int("limit", 10, minimum=0, maximum=MAX_LIMIT)
        from_raw = request.args.get("from") or None
        from_tok, to_tok = parse_token(from_raw), parse_token(request.args.get("to"), "to")
        flt = parse_filter_param(request.args.get("filter"))
        rd = reader(req, room_id)
        return jsonify(messages(rd, room_id, from_tok=from_tok, from_raw=from_raw,
                                to_tok=to_tok, backwards=backwards, limit=limit or 0,
                                flt=flt))

    @bp.get(f"{V3}/rooms/<room_id>/context/<event_id>")
    def get_context(room_id: str, event_id: str) -> Any:
        """GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}"""
        req = require_auth(allow_guest=True)
        limit = query_int("limit", 10, minimum=0, maximum=MAX_LIMIT)
        flt = parse_filter_param(request.args.get("filter"))
        rd = reader(req, room_id)
        return jsonify(context(rd, room_id, event_id, limit=limit or 0, flt=flt))

    @bp.get(f"{V1}/rooms/<room_id>/relations/<event_id>")
    @bp.get(f"{V1}/rooms/<room_id>/relations/<event_id>/<rel_type>")
    @bp.get(f"{V1}/rooms/<room_id>/relations/<event_id>/<rel_type>/<event_type>")
    def get_relations(room_id: str, event_id: str, rel_type: str | None = None,
                      event_type: str | None = None) -> Any:
        """GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]"""
        req = require_auth(allow_guest=True)
        backwards = _direction("b")
        limit = query_int("limit", 50, minimum=0, maximum=MAX_LIMIT)
        from_raw = request.args.get("from") or None
        from_tok, to_tok = parse_token(from_raw), parse_token(request.args.get("to"), "to")
        recurse: bool | None = None
        for name in ("recurse", "org.matrix.msc3981.recurse"):
            if name in request.args:
                recurse = query_bool(name)
        rd = reader(req, room_id, status=404)
        return jsonify(relations(rd, room_id, event_id, rel_type=rel_type,
                                 event_type=event_type, from_tok=from_tok, from_raw=from_raw,
                                 to_tok=to_tok, backwards=backwards, limit=limit or 0,
                                 recurse=recurse))

    @bp.get(f"{V1}/rooms/<room_id>/threads")
    def get_threads(room_id: str) -> Any:
        """GET /_matrix/client/v1/rooms/{roomId}/threads"""
        req = require_auth(allow_guest=True)
        include = request.args.get("include", "all")
        if include not in ("all", "participated"):
            raise invalid_param("Query parameter 'include' must be 'all' or 'participated'")
        limit = query_int("limit", 10, minimum=1, maximum=100)
        from_tok = parse_token(request.args.get("from") or None)
        rd = reader(req, room_id)
        return jsonify(threads(rd, room_id, participated=include == "participated",
                               from_tok=from_tok, limit=limit or 10))

    app.register_blueprint(bp)
