"""``GET /notifications`` (notifications.yaml): the events the user was notified about,
newest first, from ``event_push_actions``; ``from`` is the ``next_token`` of the previous
page (a stream position), ``only=highlight`` keeps highlights only."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, jsonify, request

from atrium.errors import MatrixError
from store import push as push_store
from web.auth import require_auth
from web.client_events import client_event
from web.http import query_int

P = "/_matrix/client/v3"
DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def register(app: Flask, runtime: Any) -> None:
    push = runtime.parts["push"]
    events = push.rooms.events
    bp = Blueprint("notifications", __name__)

    @bp.get(f"{P}/notifications")
    def get_notifications() -> Any:
        """GET /_matrix/client/v3/notifications"""
        req = require_auth()
        raw_from = request.args.get("from")
        before = None
        if raw_from:
            if not (raw_from.isascii() and raw_from.isdigit()) or len(raw_from) > 18:
                raise MatrixError(400, "M_INVALID_PARAM", "Invalid 'from' token")
            before = int(raw_from)
        limit = query_int("limit", DEFAULT_LIMIT, minimum=1, maximum=MAX_LIMIT) or DEFAULT_LIMIT
        only = request.args.get("only")
        rows = push_store.notifications(push.db, req.user_id, before=before, limit=limit,
                                        only_highlight=only == "highlight")
        stored = events.get_events(r["event_id"] for r in rows)
        out = []
        for r in rows:
            se = stored.get(r["event_id"])
            rv = events.room_version(r["room_id"])
            if se is None or rv is None:
                continue
            out.append({"actions": r["actions"], "room_id": r["room_id"], "ts": r["ts"],
                        "read": r["read"],
                        "event": client_event(events, se, rv, user_id=req.user_id,
                                              device_id=req.device_id, bundle=False)})
        body: dict[str, Any] = {"notifications": out}
        if len(rows) == limit:
            body["next_token"] = str(rows[-1]["stream_ordering"])
        return jsonify(body)

    app.register_blueprint(bp)
