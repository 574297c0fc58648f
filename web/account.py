"""The logged-in user's account (spec: client-server-api, "Account registration and
management", "Current account information", "Server administration"):
``GET /account/whoami``, ``POST /account/password``, ``POST /account/deactivate``,
``GET /admin/whois/{userId}``.

Password change and deactivation need UIA ``m.login.password``.

Third-party identifiers ("Adding Account Administrative Contact Information"): this server
sends no e-mail or SMS, so every ``requestToken`` is refused with the spec's error and a 3PID
can never be *added* by the homeserver's own validation (``/account/3pid``, ``/add``: 403 /
400 ``M_THREEPID_AUTH_FAILED``).  What works is the identity server's side:
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
from store.threepids import ThreepidStore
from web.auth import Requester, require_auth
from web.http import check_type, json_body, require
from web.uia import (PASSWORD, InteractiveAuth, UIAResult, hash_password, storable_text,
                     validate_password)

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
        id_server = check_type(body, "id_server", str)
        sid = password_uia(uia, accounts, requester, body).session_id
        result = unbind_all(runtime, requester.user_id, id_server)
        accounts.deactivate(requester.user_id, uia_session=sid)
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
        """POST /_matrix/client/v3/account/3pid (deprecated): the homeserver validated no
        3PID, and an identity server's word alone does not add one to an account."""
        require_auth()
        body = json_body()
        creds = body.get("three_pid_creds", body.get("threePidCreds"))
        if creds is None:
            raise missing_param("Missing 'three_pid_creds'")
        if not isinstance(creds, dict):
            raise MatrixError(400, "M_BAD_JSON", "'three_pid_creds' must be an object")
        for key in ("client_secret", "sid"):
            require(creds, key, str)
        raise MatrixError(403, "M_THREEPID_AUTH_FAILED", "The third-party credentials could"
                          " not be verified: this server validates no third-party identifiers")

    @bp.post(f"{P}/3pid/add")
    def add_3pid() -> Any:
        """POST /_matrix/client/v3/account/3pid/add: UIA, then no session of ours to add"""
        req = require_auth()
        body = json_body()
        require(body, "client_secret", str)
        require(body, "sid", str)
        password_uia(uia, accounts, req, body)
        raise MatrixError(400, "M_THREEPID_AUTH_FAILED", "No validated 3pid session found:"
                          " this server sends no validation e-mail or SMS")

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
        """POST /_matrix/client/v3/…/requestToken: this server sends no e-mail or SMS.
        Adding to an account: 400 M_THREEPID_MEDIUM_NOT_SUPPORTED; registration and password
        reset: 403 M_THREEPID_DENIED (each the spec's error for that endpoint)"""
        if request.path.startswith(f"{P}/3pid/"):
            raise MatrixError(400, "M_THREEPID_MEDIUM_NOT_SUPPORTED", "This server does not"
                              " add third-party identifiers to accounts: it sends no e-mail"
                              " or SMS")
        raise MatrixError(403, "M_THREEPID_DENIED", "Third-party identifiers are not"
                          " supported on this server: it sends no e-mail or SMS")
