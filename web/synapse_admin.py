"""The slice of Synapse's admin API that tools expect (docs: Synapse "Shared-Secret
Registration", "Users", "Registration Tokens"):

- ``GET/POST /_synapse/admin/v1/register``: register a user with a nonce and
  HMAC-SHA1(registration_shared_secret, nonce NUL username NUL password NUL
  ``admin``|``notadmin`` [NUL user_type]) — what ``register_new_matrix_user`` and
  ``python -m atrium register`` speak.  A nonce is single-use and lives 60 seconds (in this
  process's memory: the server runs one worker).
- ``GET /_synapse/admin/v1/registration_tokens`` (``valid`` filter), ``POST …/new``,
  ``GET/PUT/DELETE …/registration_tokens/{token}`` (admins only).

It also makes the admin users store (``runtime.parts["admin_users"]``, store/admin_users.py)
and its in-memory ``user_policy`` early, with the accounts, so the room areas can consult it;
the user routes themselves are in web/synapse_admin_users.py, registered after the rooms.
"""
from __future__ import annotations

import hmac
import logging
import re
import secrets
import string
import time
from typing import Any

from flask import Blueprint, Flask, jsonify, request

from atrium.cli import registration_mac
from atrium.config import Config
from atrium.errors import MatrixError, bad_json, forbidden, invalid_param, not_found
from store.accounts import AccountStore, LoginRequest, UserInUse
from store.admin_users import AdminUserStore
from store.database import IntegrityError
from web.auth import require_admin
from web.http import MAX_INT64, check_type, json_body, parse_bool
from web.register import check_username, session_response, user_in_use
from web.uia import hash_password, reject_nul_path_values, storable_text

NONCE_TIMEOUT = 60.0
USER_TYPES = ("support", "bot")
_TOKEN = re.compile(r"^[A-Za-z0-9._~-]{1,64}$")
_TOKEN_CHARS = string.ascii_letters + string.digits + "._~-"
log = logging.getLogger(__name__)


def _uses(v: Any) -> int | None:
    if v is not None and (type(v) is not int or not 0 <= v <= MAX_INT64):
        raise invalid_param("uses_allowed must be a non-negative integer or null")
    return v


def _expiry(v: Any) -> int | None:
    if v is not None and (type(v) is not int or v > MAX_INT64):
        raise invalid_param("expiry_time must be an integer or null")
    if v is not None and v < time.time() * 1000:
        raise invalid_param("expiry_time must not be in the past")
    return v


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
    admin_users = runtime.parts["admin_users"] = AdminUserStore(runtime.db, accounts.tokens)
    runtime.parts["user_policy"] = admin_users.policy
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

    @bp.get("/_synapse/admin/v1/registration_tokens")
    def list_tokens() -> Any:
        """GET /_synapse/admin/v1/registration_tokens (``valid``: only usable ones, or
        only used-up / expired ones)"""
        require_admin()
        valid = request.args.get("valid")
        return jsonify({"registration_tokens": admin_users.registration_tokens(
            None if valid is None else parse_bool("valid", valid))})

    @bp.get("/_synapse/admin/v1/registration_tokens/<token>")
    def get_token(token: str) -> Any:
        """GET /_synapse/admin/v1/registration_tokens/{token}"""
        require_admin()
        found = admin_users.registration_token(storable_text("token", token))
        if found is None:
            raise not_found(f"No such registration token: {token}")
        return jsonify(found)

    @bp.put("/_synapse/admin/v1/registration_tokens/<token>")
    def put_token(token: str) -> Any:
        """PUT /_synapse/admin/v1/registration_tokens/{token} (``uses_allowed``,
        ``expiry_time``)"""
        require_admin()
        body = json_body()
        changes: dict[str, int | None] = {}
        if "uses_allowed" in body:
            changes["uses_allowed"] = _uses(body["uses_allowed"])
        if "expiry_time" in body:
            changes["expiry_time"] = _expiry(body["expiry_time"])
        found = admin_users.update_registration_token(storable_text("token", token), changes)
        if found is None:
            raise not_found(f"No such registration token: {token}")
        return jsonify(found)

    @bp.delete("/_synapse/admin/v1/registration_tokens/<token>")
    def delete_token(token: str) -> Any:
        """DELETE /_synapse/admin/v1/registration_tokens/{token}"""
        req = require_admin()
        if not admin_users.delete_registration_token(storable_text("token", token)):
            raise not_found(f"No such registration token: {token}")
        log.info("admin %s: deleted a registration token", req.user_id)
        return jsonify({})

    @bp.post("/_synapse/admin/v1/registration_tokens/new")
    def new_token() -> Any:
        """POST /_synapse/admin/v1/registration_tokens/new"""
        require_admin()
        body = json_body(optional=True)
        if "token" in body:
            token = body["token"]
            if not isinstance(token, str) or not _TOKEN.match(token):
                raise invalid_param("token must be 1-64 characters of [A-Za-z0-9._~-]")
        else:
            length = body.get("length", 16)
            if type(length) is not int or not 0 < length <= 64:
                raise invalid_param("length must be an integer greater than zero and not"
                                    " greater than 64")
            token = "".join(secrets.choice(_TOKEN_CHARS) for _ in range(length))
        uses = _uses(body.get("uses_allowed"))
        expiry = _expiry(body.get("expiry_time"))
        try:
            accounts.add_registration_token(token, uses_allowed=uses, expiry_time=expiry)
        except IntegrityError:
            raise invalid_param(f"Token already exists: {token}") from None
        return jsonify({"token": token, "uses_allowed": uses, "pending": 0, "completed": 0,
                        "expiry_time": expiry})

    app.register_blueprint(bp)
