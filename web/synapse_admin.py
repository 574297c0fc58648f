"""The slice of Synapse's admin API that tools expect (docs: Synapse "Shared-Secret
Registration", "Users", "Registration Tokens"):

- ``GET/POST /_synapse/admin/v1/register``: register a user with a nonce and
  HMAC-SHA1(registration_shared_secret, nonce NUL username NUL password NUL
  ``admin``|``notadmin`` [NUL user_type]) — what ``register_new_matrix_user`` and
  ``python -m atrium register`` speak.  A nonce is single-use and lives 60 seconds (in this
  process's memory: the server runs one worker).
- ``GET /_synapse/admin/v2/users/{userId}`` (admins only).
- ``GET /_synapse/admin/v1/registration_tokens`` and ``POST …/new`` (admins only).
"""
from __future__ import annotations

import hmac
import re
import secrets
import time
from typing import Any

from flask import Blueprint, Flask, jsonify

from atrium.cli import registration_mac
from atrium.config import Config
from atrium.errors import MatrixError, bad_json, forbidden, invalid_param, not_found
from store.accounts import AccountStore, LoginRequest, UserInUse
from store.database import IntegrityError
from web.auth import require_admin
from web.http import MAX_INT64, check_type, json_body
from web.register import check_username, session_response, user_in_use
from web.uia import hash_password, qualify_user, reject_nul_path_values, storable_text

NONCE_TIMEOUT = 60.0
USER_TYPES = ("support", "bot")
_TOKEN = re.compile(r"^[A-Za-z0-9._~-]{1,64}$")


def _bad(msg: str, errcode: str = "M_UNKNOWN") -> MatrixError:
    return MatrixError(400, errcode, msg)


def _plain_string(body: dict[str, Any], key: str) -> str:
    if key not in body:
        raise bad_json(f"{key} must be specified")
    v = body[key]
    if not isinstance(v, str) or len(v) > 512 or "\x00" in v:
        raise _bad(f"Invalid {key}")
    return storable_text(key, v)


def register(app: Flask, runtime: Any) -> None:
    config: Config = runtime.config
    accounts: AccountStore = runtime.parts["accounts"]
    nonces: dict[str, float] = {}
    bp = Blueprint("synapse_admin", __name__)
    bp.url_value_preprocessor(reject_nul_path_values)

    def _expire_nonces() -> None:
        now = time.monotonic()
        for n, t in list(nonces.items()):
            if now - t > NONCE_TIMEOUT:
                del nonces[n]

    @bp.get("/_synapse/admin/v1/register")
    def get_nonce() -> Any:
        """GET /_synapse/admin/v1/register"""
        _expire_nonces()
        nonce = secrets.token_hex(32)
        nonces[nonce] = time.monotonic()
        return jsonify({"nonce": nonce})

    @bp.post("/_synapse/admin/v1/register")
    def post_register() -> Any:
        """POST /_synapse/admin/v1/register"""
        _expire_nonces()
        secret = config.registration_shared_secret
        if not secret:
            raise _bad("Shared secret registration is not enabled")
        body = json_body()
        nonce = body.get("nonce")
        if nonce is None:
            raise bad_json("nonce must be specified")
        if not isinstance(nonce, str) or nonces.pop(nonce, None) is None:
            raise _bad("unrecognised nonce")  # a nonce dies on first use, valid or not
        username = _plain_string(body, "username")
        password = _plain_string(body, "password")
        admin = bool(body.get("admin"))
        user_type = body.get("user_type")
        if user_type is not None and user_type not in USER_TYPES:
            raise _bad("Invalid user type")
        displayname = check_type(body, "displayname", str)
        mac = body.get("mac")
        if mac is None:
            raise bad_json("mac must be specified")
        want = registration_mac(secret, nonce, username, password, admin, user_type)
        if not isinstance(mac, str) or not hmac.compare_digest(want.encode(), mac.encode()):
            raise forbidden("HMAC incorrect")
        user_id = check_username(username, config.server_name)
        try:
            session = accounts.register_user(
                user_id, hash_password(password, config.bcrypt_rounds), admin=admin,
                user_type=user_type, displayname=displayname or username.lower(),
                login=LoginRequest())
        except UserInUse:
            raise user_in_use() from None
        assert session is not None
        return jsonify(session_response(session, config.server_name))

    @bp.get("/_synapse/admin/v2/users/<user_id>")
    def get_user(user_id: str) -> Any:
        """GET /_synapse/admin/v2/users/{userId}"""
        require_admin()
        user_id = qualify_user(user_id, config.server_name)
        user = accounts.get_user(user_id)
        profile = accounts.get_profile(user_id)
        if user is None or profile is None:
            raise not_found("User not found")
        return jsonify({"name": user.user_id, "admin": user.admin, "deactivated":
                        user.deactivated, "is_guest": user.is_guest,
                        "user_type": user.user_type, "creation_ts": user.creation_ts,
                        "displayname": profile["displayname"],
                        "avatar_url": profile["avatar_url"], "threepids": []})

    @bp.get("/_synapse/admin/v1/registration_tokens")
    def list_tokens() -> Any:
        """GET /_synapse/admin/v1/registration_tokens"""
        require_admin()
        return jsonify({"registration_tokens": accounts.list_registration_tokens()})

    @bp.post("/_synapse/admin/v1/registration_tokens/new")
    def new_token() -> Any:
        """POST /_synapse/admin/v1/registration_tokens/new"""
        require_admin()
        body = json_body(optional=True)
        length = check_type(body, "length", int, default=16)
        token = check_type(body, "token", str) or secrets.token_urlsafe(48)[:length]
        uses = check_type(body, "uses_allowed", int)
        expiry = check_type(body, "expiry_time", int)
        if not _TOKEN.match(token) or not 0 < length <= 64:
            raise invalid_param("token must be 1-64 characters of [A-Za-z0-9._~-]")
        if (uses is not None and not 0 <= uses <= MAX_INT64) or (
                expiry is not None and not time.time() * 1000 <= expiry <= MAX_INT64):
            raise invalid_param("uses_allowed must be >= 0 and expiry_time in the future")
        try:
            accounts.add_registration_token(token, uses_allowed=uses, expiry_time=expiry)
        except IntegrityError:
            raise invalid_param(f"Token already exists: {token}") from None
        return jsonify({"token": token, "uses_allowed": uses, "pending": 0, "completed": 0,
                        "expiry_time": expiry})

    app.register_blueprint(bp)
