"""Reading a room's history: ``/messages``, ``/context/{eventId}``, ``/relations`` and
``/threads`` (client-server-api "Getting events for a room", modules/event_context.md,
"Relationships", modules/threading.md).

Reads go straight to the store at a position (ARCHITECTURE invariant 2); history visibility
applies to every event served; tokens are described in web/pagination.py.

A backward ``/messages`` page that reaches the start of what this server holds while the
room's start is not held asks another server for older history (federation/backfill.py,
at most ``BACKFILL_ROUNDS`` times per request) and is read again, so the same request
returns the backfilled events; with federation off, or no server answering, it answers
what there is.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, jsonify, request

from atrium.errors import MatrixError, invalid_param
from federation.backfill import backfiller
from protocol.ids import is_valid_room_id
from web.auth import Requester, require_auth
from web.event_filter import parse_filter_param
from web.http import query_bool, query_int
from web.pagination import before_token, parse_token
from web.room_service import RoomService
from web.timeline import Reader, context, messages, relations, threads
from web.visibility import require_readable

V3 = "/_matrix/client/v3"
V1 = "/_matrix/client/v1"
MAX_LIMIT = 1000
BACKFILL_ROUNDS = 3


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

        def page(rd: Reader) -> dict[str, Any]:
            return messages(rd, room_id, from_tok=from_tok, from_raw=from_raw,
                            to_tok=to_tok, backwards=backwards, limit=limit or 0, flt=flt)

        out = page(rd)
        if backwards and to_tok is None and limit and "end" not in out \
                and flt.allows_room(room_id):
            out = with_backfill(rd, room_id, out, page)
        return jsonify(out)

    def with_backfill(rd: Reader, room_id: str, out: dict[str, Any],
                      page: Any) -> dict[str, Any]:
        """``out`` reached the start of what is held: backfill and read the page again."""
        bf = backfiller(runtime.parts.get("federation"), runtime.parts)
        if bf is None or not bf.wanted(room_id):
            return out
        for _ in range(BACKFILL_ROUNDS):
            if not bf.backfill(room_id):
                return out
            out = page(Reader(rd.svc, rd.user_id, rd.device_id))
            if "end" in out:
                return out
        if out["chunk"] and bf.wanted(room_id):
            # more history is out there: hand out the cut before the oldest event served
            oldest = rd.svc.events.get_event(out["chunk"][-1]["event_id"])
            if oldest is not None:
                out["end"] = before_token((int(oldest.event.get("depth", 0)),
                                           oldest.stream_ordering))
        return out

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
