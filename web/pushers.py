"""Pushers API (modules/push.md "Pushers", pusher.yaml): ``GET /pushers`` and
``POST /pushers/set`` (``kind: null`` deletes; ``append`` keeps other users' pushers with the
same app_id and pushkey).  Only ``http`` pushers are supported; their ``data.url`` must be a
gateway's ``/_matrix/push/v1/notify`` over https (http too when the config allows it)."""
from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Flask, jsonify

from atrium.errors import MatrixError
from store.pushers import Pusher
from web.auth import require_auth
from web.http import json_body

P = "/_matrix/client/v3"
NOTIFY_PATH = "/_matrix/push/v1/notify"
REQUIRED = ("app_display_name", "device_display_name", "lang", "data")


def check_gateway_url(url: Any, *, allow_http: bool) -> str:
    """``data.url`` of an http pusher: an absolute URL whose path is the notify endpoint."""
    if not isinstance(url, str) or not url:
        raise MatrixError(400, "M_MISSING_PARAM", "http pushers need data.url")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise MatrixError(400, "M_INVALID_PARAM", "data.url is not a URL") from None
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes or not parts.hostname:
        raise MatrixError(400, "M_INVALID_PARAM", "data.url must be an https URL")
    if parts.path != NOTIFY_PATH:
        raise MatrixError(400, "M_INVALID_PARAM", f"data.url must end in {NOTIFY_PATH}")
    return url


def parse_pusher(body: dict[str, Any], user_id: str, device_id: str | None,
                 position: int, *, allow_http: bool) -> Pusher:
    kind = body["kind"]
    if kind != "http":
        raise MatrixError(400, "M_INVALID_PARAM", f"Unsupported pusher kind {kind!r}")
    missing = [k for k in REQUIRED if k not in body]
    if missing:
        raise MatrixError(400, "M_MISSING_PARAM", f"Missing parameters: {', '.join(missing)}")
    for k in ("app_display_name", "device_display_name", "lang"):
        if not isinstance(body[k], str):
            raise MatrixError(400, "M_BAD_JSON", f"'{k}' must be a string")
    if not isinstance(body["data"], dict):
        raise MatrixError(400, "M_BAD_JSON", "'data' must be an object")
    profile_tag = body.get("profile_tag")
    if profile_tag is not None and not isinstance(profile_tag, str):
        raise MatrixError(400, "M_BAD_JSON", "'profile_tag' must be a string")
    check_gateway_url(body["data"].get("url"), allow_http=allow_http)
    return Pusher(user_id=user_id, app_id=body["app_id"], pushkey=body["pushkey"], kind=kind,
                  app_display_name=body["app_display_name"],
                  device_display_name=body["device_display_name"], profile_tag=profile_tag,
                  lang=body["lang"], data=dict(body["data"]), device_id=device_id,
                  pushkey_ts=int(time.time() * 1000), last_stream_ordering=position,
                  failing_since_ts=None)


def register(app: Flask, runtime: Any) -> None:
    push = runtime.parts["push"]
    bp = Blueprint("pushers", __name__)

    @bp.get(f"{P}/pushers")
    def get_pushers() -> Any:
        """GET /_matrix/client/v3/pushers"""
        req = require_auth()
        return jsonify({"pushers": [p.for_client() for p in push.pushers.for_user(req.user_id)]})

    @bp.post(f"{P}/pushers/set")
    def set_pusher() -> Any:
        """POST /_matrix/client/v3/pushers/set"""
        req = require_auth()
        body = json_body()
        missing = [k for k in ("kind", "app_id", "pushkey") if k not in body]
        if missing:
            raise MatrixError(400, "M_MISSING_PARAM", f"Missing parameters: {', '.join(missing)}")
        app_id, pushkey = body["app_id"], body["pushkey"]
        if not isinstance(app_id, str) or not app_id or len(app_id) > 64:
            raise MatrixError(400, "M_INVALID_PARAM", "app_id must be a string of 1-64 chars")
        if not isinstance(pushkey, str) or not pushkey or len(pushkey.encode()) > 512:
            raise MatrixError(400, "M_INVALID_PARAM", "pushkey must be a string of 1-512 bytes")
        append = body.get("append", False)
        if not isinstance(append, bool):
            raise MatrixError(400, "M_BAD_JSON", "'append' must be a boolean")
        if body["kind"] is None:
            push.pushers.delete(req.user_id, app_id, pushkey)
        else:
            p = parse_pusher(body, req.user_id, req.device_id,
                             push.rooms.events.stream.current(), allow_http=push.allow_http)
            for other in push.pushers.upsert(p, append=append):
                push.sender.pushers_changed(other)
        push.sender.pushers_changed(req.user_id)
        return jsonify({})

    app.register_blueprint(bp)
