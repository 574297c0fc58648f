"""Account data and tags (modules/account_data.md, tags.md):
``PUT/GET /user/{userId}/account_data/{type}``, ``PUT/GET /user/{userId}/rooms/{roomId}/
account_data/{type}``, ``GET /user/{userId}/rooms/{roomId}/tags`` and ``PUT/DELETE
.../tags/{tag}``.  Writes go through the user's actor; tags are room account data ``m.tag``.
``m.ignored_user_list`` is plain account data that /sync reads to hide ignored senders."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, jsonify

from atrium.errors import MatrixError
from protocol.ids import is_valid_room_id
from web.auth import require_auth
from web.http import json_body

from actors.user_messages import DeleteTag, PutAccountData, PutTag

P = "/_matrix/client/v3"
SERVER_MANAGED_GLOBAL = ("m.push_rules",)
SERVER_MANAGED_ROOM = ("m.fully_read",)


def register(app: Flask, runtime: Any) -> None:
    sync = runtime.parts["sync"]
    bp = Blueprint("account_data", __name__)

    def own(user_id: str) -> None:
        req = require_auth()
        if req.user_id != user_id:
            raise MatrixError(403, "M_FORBIDDEN", "Cannot access account data of other users")

    def room(room_id: str) -> None:
        if not is_valid_room_id(room_id):
            raise MatrixError(400, "M_INVALID_PARAM", f"Invalid room id {room_id!r}")

    def found(content: dict[str, Any] | None) -> Any:
        if content is None:
            raise MatrixError(404, "M_NOT_FOUND", "No account data of that type")
        return jsonify(content)

    @bp.put(f"{P}/user/<user_id>/account_data/<type_>")
    def put_global(user_id: str, type_: str) -> Any:
        """PUT /_matrix/client/v3/user/{userId}/account_data/{type}"""
        own(user_id)
        body = json_body()
        if type_ in SERVER_MANAGED_GLOBAL:
            raise MatrixError(405, "M_BAD_JSON", f"Cannot set {type_} through this API")
        if type_ == "m.ignored_user_list" and not isinstance(body.get("ignored_users", {}), dict):
            raise MatrixError(400, "M_BAD_JSON", "ignored_users must be an object")
        sync.ask_user(user_id, PutAccountData(None, type_, body))
        return jsonify({})

    @bp.get(f"{P}/user/<user_id>/account_data/<type_>")
    def get_global(user_id: str, type_: str) -> Any:
        """GET /_matrix/client/v3/user/{userId}/account_data/{type}"""
        own(user_id)
        return found(sync.account_data.get(user_id, None, type_))

    @bp.put(f"{P}/user/<user_id>/rooms/<room_id>/account_data/<type_>")
    def put_room(user_id: str, room_id: str, type_: str) -> Any:
        """PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}"""
        own(user_id)
        room(room_id)
        body = json_body()
        if type_ in SERVER_MANAGED_ROOM:
            raise MatrixError(405, "M_BAD_JSON", f"Cannot set {type_} through this API")
        sync.ask_user(user_id, PutAccountData(room_id, type_, body))
        return jsonify({})

    @bp.get(f"{P}/user/<user_id>/rooms/<room_id>/account_data/<type_>")
    def get_room(user_id: str, room_id: str, type_: str) -> Any:
        """GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}"""
        own(user_id)
        room(room_id)
        return found(sync.account_data.get(user_id, room_id, type_))

    @bp.get(f"{P}/user/<user_id>/rooms/<room_id>/tags")
    def get_tags(user_id: str, room_id: str) -> Any:
        """GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags"""
        own(user_id)
        room(room_id)
        content = sync.account_data.get(user_id, room_id, "m.tag") or {}
        tags = content.get("tags")
        return jsonify({"tags": tags if isinstance(tags, dict) else {}})

    @bp.put(f"{P}/user/<user_id>/rooms/<room_id>/tags/<tag>")
    def put_tag(user_id: str, room_id: str, tag: str) -> Any:
        """PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}"""
        own(user_id)
        room(room_id)
        body = json_body()
        order = body.get("order")
        if order is not None and (isinstance(order, bool) or not isinstance(order, (int, float))):
            raise MatrixError(400, "M_BAD_JSON", "order must be a number")
        if len(tag) > 255:
            raise MatrixError(400, "M_INVALID_PARAM", "tag is too long")
        sync.ask_user(user_id, PutTag(room_id, tag, body))
        return jsonify({})

    @bp.delete(f"{P}/user/<user_id>/rooms/<room_id>/tags/<tag>")
    def delete_tag(user_id: str, room_id: str, tag: str) -> Any:
        """DELETE /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}"""
        own(user_id)
        room(room_id)
        sync.ask_user(user_id, DeleteTag(room_id, tag))
        return jsonify({})

    app.register_blueprint(bp)
