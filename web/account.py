"""The logged-in user's account (spec: client-server-api, "Account registration and
management", "Current account information", "Server administration"):
``GET /account/whoami``, ``POST /account/password``, ``POST /account/deactivate``,
``GET /admin/whois/{userId}``.

Password change and deactivation need UIA ``m.login.password``.  Third-party identifiers
are not supported: ``/account/3pid*`` answer as the spec allows a server without them
(an empty list; 403 ``M_THREEPID_DENIED`` / ``M_THREEPID_AUTH_FAILED`` for changes).
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, jsonify

from atrium.config import Config
from atrium.errors import MatrixError, missing_param
from store.accounts import AccountStore
from web.auth import Requester, require_auth
from web.http import check_type, json_body
from web.uia import PASSWORD, InteractiveAuth, UIAResult, hash_password, validate_password

PASSWORD_FLOWS = [[PASSWORD]]


def password_uia(uia: InteractiveAuth, accounts: AccountStore, requester: Requester,
                 body: dict[str, Any]) -> UIAResult:
    """Run UIA ``m.login.password`` for the requester (raises the 401 until it is done)."""
    user = accounts.get_user(requester.user_id)
    return uia.check(body, PASSWORD_FLOWS, user_id=requester.user_id,
                     password_hash=user.password_hash if user else None)


def register(app: Flask, runtime: Any) -> None:
    config: Config = runtime.config
    accounts: AccountStore = runtime.parts["accounts"]
    uia: InteractiveAuth = runtime.parts["uia"]
    bp = Blueprint("account", __name__)

    @bp.get("/_matrix/client/v3/admin/whois/<user_id>")
    def whois(user_id: str) -> Any:
        """GET /_matrix/client/v3/admin/whois/{userId}"""
        requester = require_auth()
        if not requester.is_admin and requester.user_id != user_id:
            raise MatrixError(403, "M_FORBIDDEN", "You may only look up yourself")
        devices: dict[str, Any] = {}
        for d in accounts.device_connections(user_id):
            conn = {"ip": d["last_seen_ip"], "last_seen": d["last_seen_ts"],
                    "user_agent": d["last_seen_user_agent"]}
            seen = d["last_seen_ts"] is not None
            devices[d["device_id"]] = {"sessions": [{"connections": [conn] if seen else []}]}
        return jsonify({"user_id": user_id, "devices": devices})

    @bp.get("/_matrix/client/v3/account/whoami")
    def whoami() -> Any:
        """GET /_matrix/client/v3/account/whoami"""
        requester = require_auth(allow_guest=True)
        out: dict[str, Any] = {"user_id": requester.user_id, "is_guest": requester.is_guest}
        if requester.device_id is not None:
            out["device_id"] = requester.device_id
        return jsonify(out)

    @bp.post("/_matrix/client/v3/account/password")
    def change_password() -> Any:
        """POST /_matrix/client/v3/account/password"""
        requester = require_auth()
        body = json_body()
        if body.get("new_password") is not None:
            validate_password(body["new_password"], "new_password")
        logout_devices = check_type(body, "logout_devices", bool, default=True)
        sid = password_uia(uia, accounts, requester, body).session_id
        if body.get("new_password") is None:
            raise missing_param("Missing 'new_password'")
        new_hash = hash_password(body["new_password"], config.bcrypt_rounds)
        accounts.set_password(requester.user_id, new_hash, keep_device=requester.device_id,
                              logout_devices=logout_devices, uia_session=sid)
        return jsonify({})

    @bp.post("/_matrix/client/v3/account/deactivate")
    def deactivate() -> Any:
        """POST /_matrix/client/v3/account/deactivate"""
        requester = require_auth()
        body = json_body(optional=True)
        check_type(body, "erase", bool)
        check_type(body, "id_server", str)
        sid = password_uia(uia, accounts, requester, body).session_id
        accounts.deactivate(requester.user_id, uia_session=sid)
        return jsonify({"id_server_unbind_result": "no-support"})

    @bp.get("/_matrix/client/v3/account/3pid")
    def get_3pids() -> Any:
        """GET /_matrix/client/v3/account/3pid"""
        require_auth()
        return jsonify({"threepids": []})

    @bp.post("/_matrix/client/v3/account/3pid/add")
    @bp.post("/_matrix/client/v3/account/3pid/bind")
    def add_3pid() -> Any:
        """POST /_matrix/client/v3/account/3pid/add (and /bind): not supported here"""
        require_auth()
        raise MatrixError(403, "M_THREEPID_DENIED",
                          "Third-party identifiers are not supported on this server")

    @bp.post("/_matrix/client/v3/account/3pid/delete")
    @bp.post("/_matrix/client/v3/account/3pid/unbind")
    def delete_3pid() -> Any:
        """POST /_matrix/client/v3/account/3pid/delete (and /unbind): nothing to remove"""
        require_auth()
        body = json_body()
        for key in ("medium", "address"):
            if key not in body:
                raise missing_param(f"Missing '{key}'")
        return jsonify({"id_server_unbind_result": "no-support"})

    @bp.post("/_matrix/client/v3/account/password/email/requestToken")
    @bp.post("/_matrix/client/v3/account/password/msisdn/requestToken")
    @bp.post("/_matrix/client/v3/account/3pid/email/requestToken")
    @bp.post("/_matrix/client/v3/account/3pid/msisdn/requestToken")
    @bp.post("/_matrix/client/v3/register/email/requestToken")
    @bp.post("/_matrix/client/v3/register/msisdn/requestToken")
    def request_3pid_token() -> Any:
        """POST /_matrix/client/v3/…/requestToken: this server sends no e-mail or SMS"""
        raise MatrixError(400, "M_THREEPID_DENIED",
                          "Third-party identifiers are not supported on this server")

    app.register_blueprint(bp)
