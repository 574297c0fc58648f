"""Presence (modules/presence.md): ``PUT/GET /presence/{userId}/status``.  Setting goes
through the user's actor (which also runs the idle/offline timers); reading is a store read,
allowed for yourself and for users you share a room with."""
from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Flask, jsonify

from atrium.errors import MatrixError
from store.presence import STATES
from web.auth import require_auth
from web.http import json_body, require
from web.uia import storable_text

from actors.user_messages import SetPresence

P = "/_matrix/client/v3"
MAX_STATUS = 1024


def register(app: Flask, runtime: Any) -> None:
    sync = runtime.parts["sync"]
    accounts = runtime.parts["accounts"]
    bp = Blueprint("presence", __name__)

    @bp.put(f"{P}/presence/<user_id>/status")
    def put_presence(user_id: str) -> Any:
        """PUT /_matrix/client/v3/presence/{userId}/status"""
        req = require_auth()
        body = json_body()
        state = require(body, "presence", str)
        if req.user_id != user_id:
            raise MatrixError(403, "M_FORBIDDEN", "Cannot set presence of other users")
        if state not in STATES:
            raise MatrixError(400, "M_INVALID_PARAM", f"Invalid presence state {state!r}")
        status = body.get("status_msg")
        if status is not None and (not isinstance(status, str) or len(status) > MAX_STATUS):
            raise MatrixError(400, "M_BAD_JSON", "status_msg must be a short string")
        if status is not None:
            storable_text("status_msg", status)
        sync.ask_user(user_id, SetPresence(state, status, "status_msg" in body))
        return jsonify({})

    @bp.get(f"{P}/presence/<user_id>/status")
    def get_presence(user_id: str) -> Any:
        """GET /_matrix/client/v3/presence/{userId}/status"""
        req = require_auth()
        if req.user_id != user_id:
            if sync.is_local(user_id) and not accounts.user_exists(user_id):
                raise MatrixError(404, "M_NOT_FOUND", "Unknown user")
            mine = set(sync.store.joined_rooms(req.user_id))
            if not mine & set(sync.store.joined_rooms(user_id)):
                raise MatrixError(403, "M_FORBIDDEN", "You do not share a room with this user")
        row = sync.presence.get(user_id)
        if row is None:
            return jsonify({"presence": "offline"})
        out: dict[str, Any] = {"presence": row.state,
                               "last_active_ago": max(0, int(time.time() * 1000)
                                                      - row.last_active_ts)}
        if row.state == "online":
            out["currently_active"] = row.currently_active
        if row.status_msg is not None:
            out["status_msg"] = row.status_msg
        return jsonify(out)

    app.register_blueprint(bp)
