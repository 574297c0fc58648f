"""Login, logout and token refresh (spec: client-server-api, "Login", "Logout",
"Refreshing access tokens"): ``GET/POST /login``, ``POST /refresh``, ``POST /logout``,
``POST /logout/all``.

Rate limits follow Synapse's ``rc_login``: ``address`` per client IP and ``account`` per
user on every attempt, ``failed_attempts`` per user on wrong passwords.

A user may be named by a 3PID this server validated for the account ("Identifier types":
``identifier: {type: m.id.thirdparty, medium, address}``, or the deprecated top-level
``medium`` and ``address``); an unknown 3PID answers 403 as a wrong password does, and counts
as a failed attempt for that 3PID (Synapse's behaviour).
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, jsonify, request

from atrium.config import Config
from atrium.errors import MatrixError, forbidden, missing_param
from store.accounts import AccountStore
from web.auth import require_auth
from web.email_validation import canonical_email
from web.http import json_body, require
from web.register import login_request, session_response
from web.uia import (PASSWORD, check_password, storable_text, user_from_identifier,
                     validate_password)


def register(app: Flask, runtime: Any) -> None:
    config: Config = runtime.config
    accounts: AccountStore = runtime.parts["accounts"]
    limiter = runtime.ratelimiter
    bp = Blueprint("login", __name__)

    @bp.get("/_matrix/client/v3/login")
    def get_login() -> Any:
        """GET /_matrix/client/v3/login"""
        return jsonify({"flows": [{"type": PASSWORD}]})

    @bp.post("/_matrix/client/v3/login")
    def post_login() -> Any:
        """POST /_matrix/client/v3/login"""
        body = json_body()
        kind = require(body, "type", str)
        if kind != PASSWORD:
            raise MatrixError(400, "M_UNKNOWN", f"Unknown login type {kind!r}")
        limiter.check("login_address", request.remote_addr or "", config.rc_login_address)
        user_id = thirdparty_user(body) or user_from_identifier(body, config.server_name)
        if "password" not in body:
            raise missing_param("Missing 'password'")
        password = validate_password(body["password"])
        login = login_request(body, config, "initial_device_display_name")
        limiter.check("login_account", user_id, config.rc_login_account)
        limiter.check("login_failed", user_id, config.rc_login_failed_attempts, update=False)
        user = accounts.get_user(user_id)
        if user is not None and user.deactivated:
            raise MatrixError(403, "M_USER_DEACTIVATED", "This account has been deactivated")
        if user is None or not check_password(password, user.password_hash):
            limiter.check("login_failed", user_id, config.rc_login_failed_attempts)
            raise forbidden("Invalid username or password")
        policy = runtime.parts.get("user_policy")  # locked by an admin (Synapse's answer)
        if policy is not None and user_id in policy.locked:
            raise MatrixError(401, "M_USER_LOCKED", "This account has been locked",
                              soft_logout=True)
        return jsonify(session_response(accounts.login(user_id, login), config.server_name))

    def thirdparty_user(body: dict[str, Any]) -> str | None:
        """The account a 3PID identifier names (None if the body names no 3PID; 403 if no
        account has it)."""
        ident = body.get("identifier")
        if isinstance(ident, dict) and ident.get("type") == "m.id.thirdparty":
            medium, address = ident.get("medium"), ident.get("address")
        elif ident is None and "user" not in body and "medium" in body and "address" in body:
            medium, address = body["medium"], body["address"]
        else:
            return None
        if not isinstance(medium, str) or not isinstance(address, str) or not address:
            raise MatrixError(400, "M_INVALID_PARAM", "Invalid third-party identifier: needs"
                              " 'medium' and 'address' strings")
        address = storable_text("address", address)
        if medium == "email":
            address = canonical_email(address)
        key = f"{medium} {address}"
        limiter.check("login_failed", key, config.rc_login_failed_attempts, update=False)
        owner = runtime.parts["threepids"].owner(medium, address)
        if owner is None:
            limiter.check("login_failed", key, config.rc_login_failed_attempts)
            raise forbidden("Invalid username or password")
        return owner

    @bp.post("/_matrix/client/v3/refresh")
    def post_refresh() -> Any:
        """POST /_matrix/client/v3/refresh"""
        body = json_body()
        token = storable_text("refresh_token", require(body, "refresh_token", str))
        lifetime = config.refreshable_access_token_lifetime
        session = accounts.refresh(token, int(lifetime * 1000) if lifetime else None)
        if session is None:
            raise MatrixError(401, "M_UNKNOWN_TOKEN", "Unknown or expired refresh token",
                              soft_logout=False)
        return jsonify({"access_token": session.access_token,
                        "refresh_token": session.refresh_token,
                        "expires_in_ms": session.expires_in_ms})

    @bp.post("/_matrix/client/v3/logout")
    def post_logout() -> Any:
        """POST /_matrix/client/v3/logout"""
        requester = require_auth(allow_guest=True)
        accounts.logout(requester.token_hash)
        return jsonify({})

    @bp.post("/_matrix/client/v3/logout/all")
    def post_logout_all() -> Any:
        """POST /_matrix/client/v3/logout/all"""
        requester = require_auth(allow_guest=True)
        accounts.logout_all(requester.user_id)
        return jsonify({})

    app.register_blueprint(bp)

