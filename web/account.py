"""The logged-in user's account (spec: client-server-api, "Account registration and
management", "Current account information", "Server administration"):
``GET /account/whoami``, ``POST /account/password``, ``POST /account/deactivate`` (the
rooms are left after it by web/synapse_admin_users.py's ``Parter``; that module also serves
``GET /admin/whois/{userId}``).

Password change and deactivation need UIA ``m.login.password``.

Third-party identifiers ("Adding Account Administrative Contact Information"): with an
``email`` section in the config, Atrium validates e-mail addresses itself
(web/email_validation.py): the e-mail ``requestToken`` endpoints send the mail, ``/add`` (and
the deprecated ``POST /account/3pid``) adds the address of a validated session
(``M_THREEPID_IN_USE`` if another account has it), and ``POST /account/password`` without an
access token is the password reset (UIA ``m.login.email.identity``; the other devices are
logged out unless ``logout_devices`` is false).  Without it, and for phone numbers always,
``requestToken`` is refused with the spec's error and ``/add`` answers 400
``M_THREEPID_AUTH_FAILED``.  The identity server's side works either way:
``/account/3pid/bind`` asks the identity server named by the client to bind the 3PID it
validated (its errors are passed on) and records the bind (``store/threepids.py``);
``GET /account/3pid`` lists the recorded 3PIDs; ``/unbind``, ``/delete`` and deactivation
ask the identity server to unbind (a request signed by this server, as Synapse does) and
forget the record.  ``/delete`` never fails because of the identity server (the spec: it
"might not cause an unbind"); ``/unbind`` passes its errors on.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from flask import Blueprint, Flask, jsonify, request

from atrium.config import Config
from atrium.errors import MatrixError, invalid_param, missing_param
from atrium.identity_client import IdentityClient
from store.accounts import AccountStore
from store.threepids import ThreepidInUse, ThreepidStore
from web.auth import Requester, extract_token, require_auth
from web.email_validation import (ADD_THREEPID, EMAIL_IDENTITY, PASSWORD_RESET, REGISTER,
                                  EmailValidation, check_client_secret, proven_email)
from web.http import check_type, json_body, require
from web.uia import (PASSWORD, AuthRequired, InteractiveAuth, UIAResult, hash_password,
                     storable_text, validate_password)

log = logging.getLogger(__name__)

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

    # GET /admin/whois/{userId}: web/synapse_admin_users.py (with Synapse's admin path)

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
        if extract_token() is None and runtime.parts.get("email_validation") is not None:
            return reset_password()
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

    def reset_password() -> Any:
        """POST /account/password without an access token: the password reset, UIA
        ``m.login.email.identity`` with a session of /account/password/email/requestToken"""
        body = json_body()
        if body.get("new_password") is not None:
            validate_password(body["new_password"], "new_password")
        check_type(body, "logout_devices", bool)
        try:
            result = uia.check(body, [[EMAIL_IDENTITY]])
        except AuthRequired as e:  # later rounds may send only ``auth``: keep the hash
            sid = e.body.get("session")
            if isinstance(body.get("new_password"), str) and isinstance(sid, str):
                accounts.update_uia_params(sid, {"password_hash": hash_password(
                    body["new_password"], config.bcrypt_rounds)})
            raise
        proven = proven_email(result.params)
        owner = runtime.parts["threepids"].owner("email", proven["address"]) if proven else None
        if owner is None:
            raise MatrixError(404, "M_NOT_FOUND", "Email address not found")
        if body.get("new_password") is not None:
            new_hash = hash_password(body["new_password"], config.bcrypt_rounds)
        elif isinstance(result.params.get("password_hash"), str):
            new_hash = result.params["password_hash"]
        else:
            raise missing_param("Missing 'new_password'")
        logout = result.clientdict.get("logout_devices", True) is not False
        accounts.set_password(owner, new_hash, keep_device=None, logout_devices=logout,
                              uia_session=result.session_id)
        log.info("password of %s reset by e-mail", owner)
        return jsonify({})

    @bp.post("/_matrix/client/v3/account/deactivate")
    def deactivate() -> Any:
        """POST /_matrix/client/v3/account/deactivate"""
        requester = require_auth()
        body = json_body(optional=True)
        erase = check_type(body, "erase", bool, default=False)
        id_server = check_type(body, "id_server", str)
        sid = password_uia(uia, accounts, requester, body).session_id
        result = unbind_all(runtime, requester.user_id, id_server)
        accounts.deactivate(requester.user_id, uia_session=sid)
        if erase:   # what they wrote is then pruned for those who were not there (visibility)
            runtime.parts["admin_users"].set_flags(requester.user_id, erased=True)
        return jsonify({"id_server_unbind_result": result})

    _threepid_routes(bp, runtime)
    app.register_blueprint(bp)


# ---------------------------------------------------------------------------- 3PIDs
MEDIA = ("email", "msisdn")


def identity_client(runtime: Any) -> IdentityClient:
    """The server's identity-server client (``runtime.parts["identity_client"]``, shared
    with the 3PID invites and federation/threepid.py), made on first use: addresses are
    filtered by the federation IP ranges, as Synapse filters identity servers."""
    client = runtime.parts.get("identity_client")
    if client is None:
        from federation.ipfilter import IpFilter

        fc = runtime.config.federation
        client = IdentityClient.from_config(
            runtime.config, runtime.signing_key,
            ip_allowed=IpFilter(fc.ip_range_blacklist, fc.ip_range_whitelist).allowed)
        runtime.parts["identity_client"] = client
    return client


def _threepid(body: dict[str, Any]) -> tuple[str, str, str | None]:
    """(medium, address, id_server or None) of an /unbind or /delete body."""
    medium = require(body, "medium", str)
    address = storable_text("address", require(body, "address", str))
    id_server = check_type(body, "id_server", str)
    if medium not in MEDIA:
        raise invalid_param(f"'medium' must be one of {', '.join(MEDIA)}")
    return medium, address, id_server or None


def unbind_all(runtime: Any, user_id: str, id_server: str | None) -> str:
    """Deactivation: unbind each recorded 3PID from ``id_server`` (or the server it was bound
    on); ``success`` only if there was something to unbind and every unbind worked."""
    store: ThreepidStore = runtime.parts["threepids"]
    binds = store.all_binds(user_id)
    ok = bool(binds)
    for medium, address, bound_on in binds:
        try:
            ok = identity_client(runtime).unbind(id_server or bound_on, user_id, medium,
                                                 address) and ok
        except MatrixError as e:
            ok = False
            log.info("deactivation of %s: unbind of %s from %s failed: %s", user_id, medium,
                     id_server or bound_on, e.error)
    return "success" if ok else "no-support"


def _threepid_routes(bp: Blueprint, runtime: Any) -> None:
    accounts: AccountStore = runtime.parts["accounts"]
    uia: InteractiveAuth = runtime.parts["uia"]
    store = runtime.parts["threepids"] = ThreepidStore(runtime.db)
    accounts.on_user_deactivated.append(ThreepidStore.delete_for_user)
    identity_client(runtime)
    P = "/_matrix/client/v3/account"

    @bp.get(f"{P}/3pid")
    def get_3pids() -> Any:
        """GET /_matrix/client/v3/account/3pid"""
        req = require_auth()
        return jsonify({"threepids": [t.to_json() for t in store.list(req.user_id)]})

    @bp.post(f"{P}/3pid")
    def post_3pids() -> Any:
        """POST /_matrix/client/v3/account/3pid (deprecated): adds the address of a session
        this server validated; an identity server's word alone does not add one."""
        req = require_auth()
        body = json_body()
        creds = body.get("three_pid_creds", body.get("threePidCreds"))
        if creds is None:
            raise missing_param("Missing 'three_pid_creds'")
        if not isinstance(creds, dict):
            raise MatrixError(400, "M_BAD_JSON", "'three_pid_creds' must be an object")
        for key in ("client_secret", "sid"):
            require(creds, key, str)
        if emails() is None:
            raise MatrixError(403, "M_THREEPID_AUTH_FAILED", "The third-party credentials"
                              " could not be verified: this server validates no third-party"
                              " identifiers")
        add_validated(req, creds["sid"], creds["client_secret"])
        return jsonify({})

    @bp.post(f"{P}/3pid/add")
    def add_3pid() -> Any:
        """POST /_matrix/client/v3/account/3pid/add: UIA, then the address of a session
        this server validated"""
        req = require_auth()
        body = json_body()
        secret = require(body, "client_secret", str)
        sid = require(body, "sid", str)
        password_uia(uia, accounts, req, body)
        if emails() is None:
            raise MatrixError(400, "M_THREEPID_AUTH_FAILED", "No validated 3pid session"
                              " found: this server sends no validation e-mail or SMS")
        add_validated(req, sid, secret)
        return jsonify({})

    def emails() -> EmailValidation | None:
        return runtime.parts.get("email_validation")

    def add_validated(req: Requester, sid: str, client_secret: str) -> None:
        """Spend the validated add_threepid session and add its address to the account."""
        svc = emails()
        assert svc is not None
        proof = svc.spend(ADD_THREEPID, storable_text("sid", sid),
                          check_client_secret(client_secret))
        if proof is None:
            raise MatrixError(400, "M_THREEPID_AUTH_FAILED", "No validated 3pid session found")
        try:
            store.add_validated(req.user_id, proof.medium, proof.address, proof.validated_at,
                                int(time.time() * 1000))
        except ThreepidInUse:
            raise MatrixError(400, "M_THREEPID_IN_USE", "This address is already in use by"
                              " another account") from None

    @bp.post(f"{P}/3pid/bind")
    def bind_3pid() -> Any:
        """POST /_matrix/client/v3/account/3pid/bind"""
        req = require_auth()
        body = json_body()
        fields = {k: require(body, k, str)
                  for k in ("client_secret", "id_server", "id_access_token", "sid")}
        answer = identity_client(runtime).bind(fields["id_server"], fields["id_access_token"],
                                               fields["sid"], fields["client_secret"],
                                               req.user_id)
        now = int(time.time() * 1000)
        ts = answer.get("ts")
        validated_at = ts if isinstance(ts, int) and not isinstance(ts, bool) else now
        store.record_bind(req.user_id, storable_text("medium", answer["medium"]),
                          storable_text("address", answer["address"]), fields["id_server"],
                          validated_at, now)
        return jsonify({})

    @bp.post(f"{P}/3pid/unbind")
    def unbind_3pid() -> Any:
        """POST /_matrix/client/v3/account/3pid/unbind"""
        req = require_auth()
        medium, address, id_server = _threepid(json_body())
        servers = [id_server] if id_server else store.id_servers(req.user_id, medium, address)
        ok = bool(servers)
        for server in servers:
            ok = identity_client(runtime).unbind(server, req.user_id, medium, address) and ok
            store.forget(req.user_id, medium, address, server)
        return jsonify({"id_server_unbind_result": "success" if ok else "no-support"})

    @bp.post(f"{P}/3pid/delete")
    def delete_3pid() -> Any:
        """POST /_matrix/client/v3/account/3pid/delete"""
        req = require_auth()
        medium, address, id_server = _threepid(json_body())
        servers = [id_server] if id_server else store.id_servers(req.user_id, medium, address)
        ok = bool(servers)
        for server in servers:
            try:
                ok = identity_client(runtime).unbind(server, req.user_id, medium,
                                                     address) and ok
            except MatrixError as e:  # IdentityServerError, or a refused address
                ok = False
                log.info("3pid delete of %s: unbind from %s failed: %s", req.user_id, server,
                         e.error)
        store.forget(req.user_id, medium, address)
        return jsonify({"id_server_unbind_result": "success" if ok else "no-support"})

    @bp.post(f"{P}/3pid/email/requestToken")
    @bp.post(f"{P}/3pid/msisdn/requestToken")
    @bp.post(f"{P}/password/email/requestToken")
    @bp.post(f"{P}/password/msisdn/requestToken")
    @bp.post("/_matrix/client/v3/register/email/requestToken")
    @bp.post("/_matrix/client/v3/register/msisdn/requestToken")
    def request_3pid_token() -> Any:
        """POST /_matrix/client/v3/…/requestToken: e-mail, when configured, is validated by
        this server (web/email_validation.py).  Otherwise, and for phone numbers: adding to
        an account: 400 M_THREEPID_MEDIUM_NOT_SUPPORTED; registration and password reset:
        403 M_THREEPID_DENIED (each the spec's error for that endpoint)"""
        svc = emails()
        if svc is not None and "/email/" in request.path:
            purpose = (ADD_THREEPID if request.path.startswith(f"{P}/3pid/") else
                       PASSWORD_RESET if request.path.startswith(f"{P}/password/") else
                       REGISTER)
            return jsonify(svc.request_token(purpose))
        if request.path.startswith(f"{P}/3pid/"):
            raise MatrixError(400, "M_THREEPID_MEDIUM_NOT_SUPPORTED", "This server does not"
                              " add third-party identifiers to accounts: it sends no e-mail"
                              " or SMS")
        raise MatrixError(403, "M_THREEPID_DENIED", "Third-party identifiers are not"
                          " supported on this server: it sends no e-mail or SMS")
