"""``GET /_matrix/client/v3/voip/turnServer`` (client-server-api "Voice over IP", Server
behaviour): the TURN servers a client may relay a call through, and its credentials for
them (atrium/voip_config.py, Synapse's keys).

With ``turn_shared_secret`` the credentials are those of the TURN REST API, which coturn
checks with ``use-auth-secret``: the username is ``{expiry}:{user_id}`` (expiry in Unix
seconds, ``turn_user_lifetime`` from now) and the password the base64 of
HMAC-SHA1(secret, username), so the TURN server needs no list of users and a credential
stops working when it expires.  With ``turn_username`` / ``turn_password`` those are handed
out as they are.  With no TURN server configured the answer is ``{}``.  Guests get
credentials unless ``turn_allow_guests`` is false (403 ``M_GUEST_ACCESS_FORBIDDEN``).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

from flask import Blueprint, Flask, jsonify

from atrium.voip_config import VoipConfig
from web.auth import require_auth


def rest_api_credentials(secret: str, user_id: str, lifetime: float,
                         now: float | None = None) -> tuple[str, str]:
    """(username, password) of the TURN REST API for ``user_id``, valid for ``lifetime``
    seconds from ``now``."""
    expiry = int((time.time() if now is None else now) + lifetime)
    username = f"{expiry}:{user_id}"
    mac = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1)
    return username, base64.b64encode(mac.digest()).decode("ascii")


def turn_server_answer(voip: VoipConfig, user_id: str) -> dict[str, Any]:
    """The body of /voip/turnServer for ``user_id``."""
    if not voip.configured:
        return {}
    if voip.turn_shared_secret is not None:
        username, password = rest_api_credentials(voip.turn_shared_secret, user_id,
                                                  voip.turn_user_lifetime)
    else:
        assert voip.turn_username is not None and voip.turn_password is not None
        username, password = voip.turn_username, voip.turn_password
    return {"username": username, "password": password, "uris": list(voip.turn_uris),
            "ttl": int(voip.turn_user_lifetime)}


def register(app: Flask, runtime: Any) -> None:
    voip: VoipConfig = runtime.config.voip
    bp = Blueprint("voip", __name__)

    @bp.get("/_matrix/client/v3/voip/turnServer")
    def get_turn_server() -> Any:
        """GET /_matrix/client/v3/voip/turnServer"""
        requester = require_auth(allow_guest=voip.turn_allow_guests)
        return jsonify(turn_server_answer(voip, requester.user_id))

    app.register_blueprint(bp)
