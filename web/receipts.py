"""Receipts and read markers (modules/receipts.md, read_markers.md):
``POST /rooms/{roomId}/receipt/{receiptType}/{eventId}`` and ``POST /rooms/{roomId}/
read_markers``.  The write goes through the user's actor (receipts never move backwards);
/sync serves them as ``m.receipt`` ephemeral events, ``m.read.private`` to its owner only."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, jsonify

from atrium.errors import MatrixError
from protocol.ids import is_valid_room_id
from web.auth import require_auth
from web.http import json_body

from actors.user_messages import PutReceipt, ReadMarkers

P = "/_matrix/client/v3"
RECEIPT_TYPES = ("m.read", "m.read.private", "m.fully_read")


def register(app: Flask, runtime: Any) -> None:
    sync = runtime.parts["sync"]
    rooms = runtime.parts["rooms"]
    bp = Blueprint("receipts", __name__)

    def joined_event(user_id: str, room_id: str, event_id: Any) -> tuple[str, int]:
        """(event_id, stream_ordering) of an event of a room the user is joined to."""
        if not is_valid_room_id(room_id):
            raise MatrixError(400, "M_INVALID_PARAM", f"Invalid room id {room_id!r}")
        if not isinstance(event_id, str) or not event_id:
            raise MatrixError(400, "M_INVALID_PARAM", "event id must be a non-empty string")
        if "\x00" in event_id:  # names no event (and PostgreSQL text cannot hold it)
            raise MatrixError(404, "M_NOT_FOUND", "Unknown event")
        membership, _ = rooms.membership(room_id, user_id)
        if membership != "join":
            raise MatrixError(403, "M_FORBIDDEN", "You are not joined to this room")
        se = rooms.events.get_event(event_id)
        if se is None or se.room_id != room_id or se.outlier or se.rejection is not None:
            raise MatrixError(404, "M_NOT_FOUND", "Unknown event")
        return se.event_id, se.stream_ordering

    @bp.post(f"{P}/rooms/<room_id>/receipt/<receipt_type>/<event_id>")
    def post_receipt(room_id: str, receipt_type: str, event_id: str) -> Any:
        """POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}"""
        req = require_auth()
        body = json_body(optional=True)
        if receipt_type not in RECEIPT_TYPES:
            raise MatrixError(400, "M_INVALID_PARAM", f"Unknown receipt type {receipt_type}")
        thread_id = body.get("thread_id")
        if "thread_id" in body and (not isinstance(thread_id, str) or not thread_id
                                    or "\x00" in thread_id):
            raise MatrixError(400, "M_INVALID_PARAM", "thread_id must be a non-empty string")
        if thread_id is not None and receipt_type == "m.fully_read":
            raise MatrixError(400, "M_INVALID_PARAM", "m.fully_read cannot have a thread_id")
        target = joined_event(req.user_id, room_id, event_id)
        if receipt_type == "m.fully_read":
            sync.ask_user(req.user_id, ReadMarkers(room_id, target, None, None))
        else:
            sync.ask_user(req.user_id, PutReceipt(room_id, receipt_type, target[0], target[1],
                                                  thread_id))
        return jsonify({})

    @bp.post(f"{P}/rooms/<room_id>/read_markers")
    def post_read_markers(room_id: str) -> Any:
        """POST /_matrix/client/v3/rooms/{roomId}/read_markers"""
        req = require_auth()
        body = json_body()
        parts = [body.get(k) for k in ("m.fully_read", "m.read", "m.read.private")]
        marks = [joined_event(req.user_id, room_id, p) if p is not None else None
                 for p in parts]
        if any(m is not None for m in marks):
            sync.ask_user(req.user_id, ReadMarkers(room_id, *marks))
        return jsonify({})

    app.register_blueprint(bp)
