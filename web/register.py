"""Account registration (spec: client-server-api, "Account registration and management"):
``POST /register``, ``GET /register/available``,
``GET /register/m.login.registration_token/validity``.

Open registration needs ``enable_registration`` and either
``enable_registration_without_verification`` (flow ``m.login.dummy``) or
``registration_requires_token`` (flow ``m.login.registration_token``); like Synapse, open
registration with neither is refused, since this server cannot verify e-mail or phone.
``enable_registration_captcha`` puts ``m.login.recaptcha`` in front of every flow (and, as
in Synapse, is enough verification on its own: ``[m.login.recaptcha, m.login.dummy]``).
With an ``email`` section each flow is also offered ending in ``m.login.email.identity``, or
only so with ``registrations_require_3pid: [email]`` (enough verification on its own); the
proven address is added to the new account (web/email_validation.py).

Guests (client-server-api "Guest Access"): ``kind=guest`` needs ``allow_guest_access``
(else 403 ``M_GUEST_ACCESS_FORBIDDEN``), runs no User-Interactive Auth and ignores every body
field but ``initial_device_display_name``; the guest gets a generated numeric user id, a
fresh device and an access token.  A guest becomes a full account through the ordinary
``kind=user`` flow with ``guest_access_token`` (its access token) in the body: the same user
id (``username``, if given, must be the guest's localpart), now with a password, keeping
its profile, devices and rooms — as Synapse does.
"""
from __future__ import annotations

import re
import secrets
from typing import Any

from flask import Blueprint, Flask, jsonify, request

from atrium.config import Config
from atrium.errors import MatrixError, forbidden, invalid_param, missing_param
from store.accounts import AccountStore, LoginRequest, NotAGuest, Session, UserInUse, now_ms
from web.captcha import with_captcha
from web.email_validation import add_registered, registration_threepid, with_email
from web.http import check_type, json_body
from web.uia import (DUMMY, REGISTRATION_TOKEN, AuthRequired, InteractiveAuth,
                     hash_password, storable_text, validate_password)

_LOCALPART = re.compile(r"^[a-z0-9._=\-/+]+$")
_TOKEN = re.compile(r"^[A-Za-z0-9._~-]{1,64}$")
MAX_USER_ID_BYTES = 255


def registration_flows(config: Config) -> list[list[str]] | None:
    """The flows open registration offers, or None when it is closed."""
    if not config.enable_registration:
        return None
    if config.registration_requires_token:
        return with_email(config, with_captcha(config, [[REGISTRATION_TOKEN]]))
    if config.enable_registration_without_verification or config.captcha.enabled \
            or config.threepid.require_email:  # e-mail: web/email_validation.py
        return with_email(config, with_captcha(config, [[DUMMY]]))  # CAPTCHA: [recaptcha, dummy]
    return None


def check_username(localpart: str, server_name: str) -> str:
    """A requested localpart → the user id it would get (400 ``M_INVALID_USERNAME``)."""
    localpart = localpart.lower()
    if not localpart:
        raise MatrixError(400, "M_INVALID_USERNAME", "User ID cannot be empty")
    if not _LOCALPART.fullmatch(localpart):
        raise MatrixError(400, "M_INVALID_USERNAME",
                          "User ID can only contain characters a-z, 0-9, or '=_-./+'")
    if localpart.startswith("_"):
        raise MatrixError(400, "M_INVALID_USERNAME", "User ID may not begin with _")
    if localpart.isdigit():
        raise MatrixError(400, "M_INVALID_USERNAME",
                          "Numeric user IDs are reserved for generated accounts")
    user_id = f"@{localpart}:{server_name}"
    if len(user_id.encode("utf-8")) > MAX_USER_ID_BYTES:
        raise MatrixError(400, "M_INVALID_USERNAME",
                          f"User ID may not be longer than {MAX_USER_ID_BYTES} bytes")
    return user_id


def _session_params(accounts: AccountStore, body: dict[str, Any]) -> dict[str, Any]:
    """What this registration's UIA session (``auth.session``) remembers: the user it
    already created (``registered_user_id``), the guest it upgrades (``guest_user_id``)."""
    auth = body.get("auth")
    sid = auth.get("session") if isinstance(auth, dict) else None
    if not isinstance(sid, str) or not sid or "\x00" in sid:
        return {}
    try:
        session = accounts.get_uia_session(sid)
    except UnicodeEncodeError:
        return {}
    if session is None or session.uri != request.path:
        return {}
    return session.params


def _str(params: dict[str, Any], key: str) -> str | None:
    v = params.get(key)
    return v if isinstance(v, str) else None


def guest_to_upgrade(accounts: AccountStore, token: Any) -> str:
    """The guest a ``guest_access_token`` proves to be (403 ``M_FORBIDDEN`` unless it is a
    live guest token)."""
    if not isinstance(token, str) or not token:
        raise invalid_param("'guest_access_token' must be a string")
    info = accounts.get_token(token) if "\x00" not in token else None
    if info is None or info.deactivated or not info.is_guest or (
            info.expires_ts is not None and info.expires_ts <= now_ms()):
        raise forbidden("guest_access_token is not the access token of a guest account")
    return info.user_id


def user_in_use() -> MatrixError:
    return MatrixError(400, "M_USER_IN_USE", "User ID already taken.")


def session_response(s: Session, server_name: str) -> dict[str, Any]:
    """The login-shaped body shared by /register, /login and the admin register API."""
    out: dict[str, Any] = {"user_id": s.user_id, "access_token": s.access_token,
                           "device_id": s.device_id, "home_server": server_name}
    if s.refresh_token is not None:
        out["refresh_token"] = s.refresh_token
        out["expires_in_ms"] = s.expires_in_ms
    return out


def login_request(body: dict[str, Any], config: Config, display_key: str) -> LoginRequest:
    """The device and refresh-token part of a /login or /register body."""
    device_id = check_type(body, "device_id", str)
    if device_id is not None and not (0 < len(device_id) <= 255):
        raise invalid_param("'device_id' must be 1 to 255 characters")
    display = check_type(body, display_key, str)
    if display is not None and len(display) > 100:
        raise invalid_param(f"'{display_key}' may be at most 100 characters")
    if display is not None:
        storable_text(display_key, display)
    if device_id is not None:
        storable_text("device_id", device_id)
    want_refresh = bool(check_type(body, "refresh_token", bool, default=False))
    lifetime = config.refreshable_access_token_lifetime
    return LoginRequest(device_id=device_id, display_name=display,
                        refresh=want_refresh and lifetime is not None,
                        lifetime_ms=int(lifetime * 1000) if lifetime is not None else None,
                        ip=request.remote_addr, user_agent=request.headers.get("User-Agent"))


def register(app: Flask, runtime: Any) -> None:
    config: Config = runtime.config
    accounts: AccountStore = runtime.parts["accounts"]
    uia: InteractiveAuth = runtime.parts["uia"]
    limiter = runtime.ratelimiter
    bp = Blueprint("register", __name__)

    def _ratelimit(update: bool) -> None:
        limiter.check("register", request.remote_addr or "", config.rc_registration,
                      update=update)

    def _generate_user_id() -> str:
        for _ in range(10):
            candidate = f"@{secrets.randbelow(9 * 10**7) + 10**7}:{config.server_name}"
            if not accounts.user_exists(candidate):
                return candidate
        raise MatrixError(500, "M_UNKNOWN", "Could not generate a user id")

    def register_guest() -> Any:
        """POST /register?kind=guest: only ``initial_device_display_name`` is read."""
        if not config.allow_guest_access:
            raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is disabled")
        _ratelimit(update=False)
        body = json_body(optional=True)
        display = body.get("initial_device_display_name")
        if not isinstance(display, str) or "\x00" in display:
            display = None
        login = LoginRequest(display_name=display[:100] if display else None,
                             ip=request.remote_addr,
                             user_agent=request.headers.get("User-Agent"))
        _ratelimit(update=True)
        for _ in range(3):  # a generated id taken between the check and the insert: retry
            user_id = _generate_user_id()
            try:
                session = accounts.register_user(user_id, None, guest=True, login=login,
                                                 displayname=user_id[1:].split(":", 1)[0])
            except UserInUse:
                continue
            assert session is not None
            return jsonify(session_response(session, config.server_name))
        raise MatrixError(500, "M_UNKNOWN", "Could not generate a user id")

    @bp.post("/_matrix/client/v3/register")
    def post_register() -> Any:
        """POST /_matrix/client/v3/register"""
        kind = request.args.get("kind", "user")
        if kind == "guest":
            return register_guest()
        if kind != "user":
            raise invalid_param(f"Unknown registration kind {kind!r}")
        _ratelimit(update=False)
        flows = registration_flows(config)
        if flows is None:
            raise forbidden("Registration has been disabled")
        body = json_body()
        remembered = _session_params(accounts, body)
        done, guest_id = _str(remembered, "registered_user_id"), _str(remembered, "guest_user_id")
        username = check_type(body, "username", str)
        # an upgrade proves itself with the guest's token once; the session remembers the
        # guest's id for later rounds (the token itself is never stored)
        guest_token = body.pop("guest_access_token", None)
        if guest_token is not None and done is None:
            proven = guest_to_upgrade(accounts, guest_token)
            if guest_id is not None and proven != guest_id:
                raise MatrixError(400, "M_UNKNOWN", "This session upgrades another guest")
            guest_id = proven
        if guest_id is not None:
            if username is not None and \
                    username.lower() != guest_id[1:].split(":", 1)[0]:
                raise forbidden("Cannot register taken user ID without valid guest"
                                " credentials for that user.")
            if done is not None and guest_id != done:
                raise MatrixError(400, "M_UNKNOWN", "A different user ID has already been"
                                  " registered for this session")
        elif username is not None:
            user_id = check_username(username, config.server_name)
            if done is not None and user_id != done:
                raise MatrixError(400, "M_UNKNOWN", "A different user ID has already been"
                                  " registered for this session")
            if user_id != done and accounts.user_exists(user_id):
                raise user_in_use()
        password = body.get("password")
        if password is not None:
            validate_password(password)
        login_request(body, config, "initial_device_display_name")   # fail early
        check_type(body, "inhibit_login", bool)

        try:
            result = uia.check(body, flows)
        except AuthRequired as e:
            # remember the password (hashed) with the session: later rounds may send only
            # ``auth`` (sytest "registration remembers parameters")
            sid = e.body.get("session")
            remember: dict[str, Any] = {}
            if isinstance(password, str):
                remember["password_hash"] = hash_password(password, config.bcrypt_rounds)
            if guest_id is not None:
                remember["guest_user_id"] = guest_id
            if remember and isinstance(sid, str):
                accounts.update_uia_params(sid, remember)
            raise
        # the parameters of the session's first request, overridden by this one's
        params = result.clientdict
        login = login_request(params, config, "initial_device_display_name")
        inhibit = bool(check_type(params, "inhibit_login", bool, default=False))
        done = result.params.get("registered_user_id")
        if isinstance(done, str):
            # this session registered a user already: the same answer again (as Synapse)
            session = None if inhibit else accounts.login(done, login)
            return _answer(done, session)
        guest_id = guest_id or _str(result.params, "guest_user_id")
        username = check_type(params, "username", str)
        if guest_id is not None:
            user_id = guest_id
        elif username is not None:
            user_id = check_username(username, config.server_name)
        else:
            user_id = _generate_user_id()
        if params.get("password") is not None:
            password_hash = hash_password(validate_password(params["password"]),
                                          config.bcrypt_rounds)
        elif isinstance(result.params.get("password_hash"), str):
            password_hash = result.params["password_hash"]
        else:
            raise missing_param("Missing params: password")
        threepid = registration_threepid(runtime, result.params)  # M_THREEPID_IN_USE
        _ratelimit(update=True)
        if guest_id is not None:
            try:
                session = accounts.upgrade_guest(guest_id, password_hash,
                                                 login=None if inhibit else login,
                                                 uia_session=result.session_id)
            except NotAGuest:
                raise forbidden("This account is not a guest account any more") from None
            add_registered(runtime, guest_id, threepid)
            return _answer(guest_id, session)
        try:
            session = accounts.register_user(user_id, password_hash,
                                             displayname=user_id[1:].split(":", 1)[0],
                                             login=None if inhibit else login,
                                             uia_session=result.session_id)
        except UserInUse:
            raise user_in_use() from None
        add_registered(runtime, user_id, threepid)
        return _answer(user_id, session)

    def _answer(user_id: str, session: Session | None) -> Any:
        if session is None:
            return jsonify({"user_id": user_id, "home_server": config.server_name})
        return jsonify(session_response(session, config.server_name))

    @bp.get("/_matrix/client/v3/register/available")
    def get_available() -> Any:
        """GET /_matrix/client/v3/register/available"""
        _ratelimit(update=True)
        if registration_flows(config) is None:
            raise forbidden("Registration has been disabled")
        username = request.args.get("username")
        if username is None:
            raise missing_param("Missing query parameter 'username'")
        if accounts.user_exists(check_username(username, config.server_name)):
            raise user_in_use()
        return jsonify({"available": True})

    @bp.get("/_matrix/client/v1/register/m.login.registration_token/validity")
    @bp.get("/_matrix/client/v3/register/m.login.registration_token/validity")
    def get_token_validity() -> Any:
        """GET /_matrix/client/v1/register/m.login.registration_token/validity"""
        limiter.check("register_token_validity", request.remote_addr or "",
                      config.rc_registration)
        if not any(REGISTRATION_TOKEN in f for f in registration_flows(config) or []):
            raise forbidden("Registration tokens are not enabled on this server")
        token = request.args.get("token")
        if token is None:
            raise missing_param("Missing query parameter 'token'")
        valid = bool(_TOKEN.match(token)) and accounts.registration_token_valid(token)
        return jsonify({"valid": valid})

    app.register_blueprint(bp)
