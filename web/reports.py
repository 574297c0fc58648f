"""Reporting content (client-server-api "Reporting content", report_content.yaml):

- ``POST /_matrix/client/v3/rooms/{roomId}/report/{eventId}`` (``reason``, ``score``): the
  reporter must be joined to the room (spec v1.8) and able to see the event under the
  history-visibility rules; an unknown, unseen or redacted event is 404 ``M_NOT_FOUND``.
- ``POST /_matrix/client/v3/rooms/{roomId}/report`` (``reason``): any room this server
  knows, joined or not (spec v1.13); an unknown room is 404.
- ``POST /_matrix/client/v3/users/{userId}/report`` (``reason``, v1.14): a report about a
  user of another server, or a local user that does not exist, is answered 200 and not kept
  (as Synapse: the spec allows hiding who exists).

Each is rate limited per reporter (Synapse's ``rc_reports`` defaults: 1/s, burst 5) and
stored before the 200.  Reports are read and deleted with the admin API
(web/synapse_admin_reports.py).
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, jsonify

from atrium.config import RateLimit
from atrium.errors import MatrixError, bad_json, missing_param, not_found
from protocol.ids import is_valid_room_id, is_valid_user_id, server_of
from store.media import now_ms
from store.reports import ReportStore
from web.auth import Requester, require_auth
from web.http import MAX_INT64, json_body
from web.room_service import RoomService
from web.uia import reject_nul_path_values, storable_text
from web.visibility import can_see_event

P = "/_matrix/client/v3"
#: Synapse's defaults for ``rc_reports``
REPORT_LIMIT = RateLimit(per_second=1, burst_count=5)
#: the longest reason of a user report (Synapse's bound)
MAX_USER_REASON = 1000


def _reason(body: dict[str, Any], *, required: bool) -> str | None:
    v = body.get("reason")
    if v is None and not required:
        return None
    if "reason" not in body:
        raise missing_param("Missing 'reason'")
    if not isinstance(v, str):
        raise bad_json("Param 'reason' must be a string")
    return storable_text("reason", v)


def register(app: Flask, runtime: Any) -> None:
    svc: RoomService = runtime.parts["rooms"]
    accounts = runtime.parts["accounts"]
    server_name = runtime.config.server_name
    ratelimiter = runtime.ratelimiter
    store = ReportStore(runtime.db)
    bp = Blueprint("reports", __name__)
    bp.url_value_preprocessor(reject_nul_path_values)

    def limit(req: Requester) -> None:
        ratelimiter.check("report", req.user_id, REPORT_LIMIT)

    @bp.post(f"{P}/rooms/<room_id>/report/<event_id>")
    def report_event(room_id: str, event_id: str) -> Any:
        """POST /_matrix/client/v3/rooms/{roomId}/report/{eventId}"""
        req = require_auth()
        body = json_body()
        reason = _reason(body, required=False)
        score = body.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, int)):
            raise bad_json("Param 'score' must be an integer")
        if score is not None and not -MAX_INT64 <= score <= MAX_INT64:
            raise MatrixError(400, "M_INVALID_PARAM", "Param 'score' is out of range")
        limit(req)
        unseen = not_found("Unable to report event: it does not exist or you aren't able"
                           " to see it.")
        if not is_valid_room_id(room_id) or svc.room_version(room_id) is None:
            raise unseen
        if svc.membership(room_id, req.user_id)[0] != "join":
            raise unseen
        se = svc.events.get_event(event_id)
        if se is None or se.room_id != room_id or se.redacted_by is not None \
                or not can_see_event(svc, req.user_id, se):
            raise unseen
        store.add_event_report(room_id, event_id, req.user_id, reason, score, now_ms())
        return jsonify({})

    @bp.post(f"{P}/rooms/<room_id>/report")
    def report_room(room_id: str) -> Any:
        """POST /_matrix/client/v3/rooms/{roomId}/report"""
        req = require_auth()
        reason = _reason(json_body(), required=True)
        assert reason is not None
        limit(req)
        if not is_valid_room_id(room_id) or svc.room_version(room_id) is None:
            raise not_found("The room was not found.")
        store.add_room_report(room_id, req.user_id, reason, now_ms())
        return jsonify({})

    @bp.post(f"{P}/users/<user_id>/report")
    def report_user(user_id: str) -> Any:
        """POST /_matrix/client/v3/users/{userId}/report"""
        req = require_auth()
        reason = _reason(json_body(), required=True)
        assert reason is not None
        if len(reason) > MAX_USER_REASON:
            raise bad_json(f"Reason must be less than {MAX_USER_REASON} characters")
        if not is_valid_user_id(user_id):
            raise MatrixError(400, "M_INVALID_PARAM", "Not a valid user id")
        limit(req)
        if server_of(user_id) == server_name and accounts.get_user(user_id) is not None:
            store.add_user_report(user_id, req.user_id, reason, now_ms())
        return jsonify({})

    app.register_blueprint(bp)
