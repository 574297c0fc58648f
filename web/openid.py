"""OpenID token requests (client-server-api "OpenID"):
``POST /_matrix/client/v3/user/{userId}/openid/request_token``.

A user asks for a token that a third party exchanges with this server for the user's id
(``GET /_matrix/federation/v1/openid/userinfo``, served by ``federation/queries.py``).  Only
for yourself; the token is kept in ``store/openid.py`` and lives an hour.  The store is put
in ``runtime.parts["openid"]`` for the federation side.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, jsonify

from atrium.errors import forbidden
from store.openid import DEFAULT_LIFETIME_MS, OpenIdStore
from web.auth import require_auth
from web.http import json_body
from web.uia import reject_nul_path_values


def register(app: Flask, runtime: Any) -> None:
    store = OpenIdStore(runtime.db)
    runtime.parts["openid"] = store
    runtime.parts["accounts"].on_user_deactivated.append(OpenIdStore.delete_for_user)
    server_name = runtime.config.server_name
    bp = Blueprint("openid", __name__)
    bp.url_value_preprocessor(reject_nul_path_values)

    @bp.post("/_matrix/client/v3/user/<user_id>/openid/request_token")
    def request_token(user_id: str) -> Any:
        """POST /_matrix/client/v3/user/{userId}/openid/request_token"""
        req = require_auth()
        json_body(optional=True)  # "an empty object, reserved": must still be an object
        if req.user_id != user_id:
            raise forbidden("You can only request OpenID tokens for yourself")
        token = store.create(user_id, DEFAULT_LIFETIME_MS)
        return jsonify({"access_token": token, "token_type": "Bearer",
                        "matrix_server_name": server_name,
                        "expires_in": DEFAULT_LIFETIME_MS // 1000})

    app.register_blueprint(bp)
