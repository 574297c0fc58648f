"""A TEST DOUBLE identity server (Identity Service API v2) on loopback, standing in for
vector.im / Sydent in the 3PID tests.

It serves over HTTPS with a throw-away certificate (``atrium.tls``), so the homeserver's
identity client runs exactly as in production (``https://{id_server}``), with
``use_insecure_ssl_client_just_for_testing_do_not_use: true`` and an empty
``federation_ip_range_blacklist`` in the app's config.  Implemented, as far as the flows need
them: ``/hash_details`` and ``/lookup`` (``sha256`` and ``none``), ``/store-invite``,
``/pubkey/isvalid``, ``/pubkey/ephemeral/isvalid``, ``/3pid/bind`` (validated sessions are
made by :meth:`IdentityServer.validated_session`, standing in for the e-mail round trip) and
``/3pid/unbind`` (X-Matrix signed by the user's homeserver, checked against the keys in
``hs_keys``, as Sydent does).

A bind with pending invites produces the ``/3pid/onbind`` notification the identity server
sends to the user's homeserver; it is queued and :meth:`deliver_onbind` hands it to a
callable (a Flask test client's PUT), so a test decides when it arrives.
"""
from __future__ import annotations

import secrets
import time
from typing import Any, Callable

from flask import Flask, jsonify, request
from gevent.pywsgi import WSGIServer

from atrium.identity_client import lookup_value
from atrium.tls import issue_cert, make_ca
from protocol.signing import (SignatureError, encode_verify_key_base64, generate_signing_key,
                              get_verify_key, sign_json, verify_signed_json)
from protocol.xmatrix import parse_x_matrix, split_credentials

V2 = "/_matrix/identity/v2"
TOKEN = "is-access-token"
ONBIND = "/_matrix/federation/v1/3pid/onbind"


def _err(status: int, errcode: str, error: str) -> Any:
    r = jsonify({"errcode": errcode, "error": error})
    r.status_code = status
    return r


class IdentityServer:
    def __init__(self, directory: str, *, algorithms: tuple[str, ...] = ("sha256", "none"),
                 pepper: str = "matrixrocks") -> None:
        import ssl

        ca = make_ca(directory)
        leaf = issue_cert(ca, directory, ["127.0.0.1"])
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(leaf.cert_path, leaf.key_path)
        self.sk = generate_signing_key("0")
        self.public_key = encode_verify_key_base64(get_verify_key(self.sk))
        self.algorithms = list(algorithms)
        self.pepper = pepper
        self.tokens = {TOKEN}
        self.bindings: dict[tuple[str, str], str] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.invites: list[dict[str, Any]] = []
        self.ephemeral: dict[str, Any] = {}
        self.revoked: set[str] = set()
        self.hs_keys: dict[str, Any] = {}        # server name -> its signing key's verify key
        self.unbind_supported = True
        self.calls: list[tuple[str, str, Any]] = []
        self.onbind_queue: list[dict[str, Any]] = []
        self.server = WSGIServer(("127.0.0.1", 0), self._app(), ssl_context=ctx, log=None,
                                 error_log=None)
        self.server.start()
        self.name = f"127.0.0.1:{self.server.server_port}"

    def stop(self) -> None:
        self.server.stop(timeout=2)

    # -- what a test does by hand ---------------------------------------------------------

    def trust(self, server_name: str, signing_key: Any) -> None:
        """Let ``server_name`` sign unbind requests (Sydent fetches the key; we are told)."""
        self.hs_keys[server_name] = get_verify_key(signing_key)

    def validated_session(self, medium: str, address: str) -> tuple[str, str]:
        """A validation session whose e-mail round trip is done: (sid, client_secret)."""
        sid, secret = secrets.token_hex(4), secrets.token_urlsafe(8)
        self.sessions[sid] = {"client_secret": secret, "medium": medium, "address": address,
                              "validated_at": int(time.time() * 1000)}
        return sid, secret

    def unvalidated_session(self, medium: str, address: str) -> tuple[str, str]:
        sid, secret = self.validated_session(medium, address)
        self.sessions[sid]["validated_at"] = None
        return sid, secret

    def bind_directly(self, medium: str, address: str, mxid: str) -> dict[str, Any]:
        """A client binding with the identity server itself (not through a homeserver)."""
        return self._bind(medium, address, mxid)

    def deliver_onbind(self, put: Callable[[str, dict[str, Any]], Any]) -> list[Any]:
        """Send the queued ``/3pid/onbind`` notifications: ``put(path, body)`` each."""
        queued, self.onbind_queue = self.onbind_queue, []
        return [put(ONBIND, body) for body in queued]

    # -- the protocol ---------------------------------------------------------------------

    def _bind(self, medium: str, address: str, mxid: str) -> dict[str, Any]:
        self.bindings[(medium, address)] = mxid
        now = int(time.time() * 1000)
        assoc = sign_json({"address": address, "medium": medium, "mxid": mxid,
                           "not_before": now, "not_after": now + 10 ** 10, "ts": now},
                          self.name, self.sk)
        pending = [i for i in self.invites if (i["medium"], i["address"]) == (medium, address)]
        if pending:
            self.invites = [i for i in self.invites if i not in pending]
            invites = []
            for inv in pending:
                signed = sign_json({"mxid": mxid, "token": inv["token"]}, self.name, self.sk)
                invites.append({"medium": medium, "address": address, "mxid": mxid,
                                "room_id": inv["room_id"], "sender": inv["sender"],
                                "signed": signed})
            self.onbind_queue.append({**assoc, "invites": invites})
        return assoc

    def _app(self) -> Flask:
        app = Flask("test_identity_server")
        srv = self

        def authed() -> Any:
            auth = request.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in srv.tokens:
                return _err(401, "M_UNAUTHORIZED", "Unrecognised access token")
            return None

        @app.before_request
        def record() -> None:
            srv.calls.append((request.method, request.path, request.get_json(silent=True)))

        @app.get(f"{V2}/hash_details")
        def hash_details() -> Any:
            return authed() or jsonify({"algorithms": srv.algorithms,
                                        "lookup_pepper": srv.pepper})

        @app.post(f"{V2}/lookup")
        def lookup() -> Any:
            denied = authed()
            if denied:
                return denied
            body = request.get_json()
            if body.get("pepper") != srv.pepper:
                return _err(400, "M_INVALID_PEPPER", "Wrong pepper")
            alg = body.get("algorithm")
            if alg not in srv.algorithms:
                return _err(400, "M_INVALID_PARAM", "Unsupported algorithm")
            mine = {lookup_value(m, a, srv.pepper, alg): mxid
                    for (m, a), mxid in srv.bindings.items()}
            return jsonify({"mappings": {v: mine[v] for v in body.get("addresses", [])
                                         if v in mine}})

        @app.post(f"{V2}/store-invite")
        def store_invite() -> Any:
            denied = authed()
            if denied:
                return denied
            body = request.get_json()
            if body.get("medium") != "email":
                return _err(400, "M_UNRECOGNIZED", "Only e-mail invites")
            if (body["medium"], body["address"]) in srv.bindings:
                return _err(400, "M_THREEPID_IN_USE", "Binding already known")
            token = secrets.token_urlsafe(12)
            eph = generate_signing_key("eph")
            eph_pub = encode_verify_key_base64(get_verify_key(eph))
            srv.ephemeral[eph_pub] = eph
            srv.invites.append({**body, "token": token})
            local, _, domain = body["address"].partition("@")
            return jsonify({
                "token": token, "display_name": f"{local[:1]}...@{domain[:1]}...",
                "public_keys": [
                    {"public_key": srv.public_key,
                     "key_validity_url": f"https://{srv.name}{V2}/pubkey/isvalid"},
                    {"public_key": eph_pub,
                     "key_validity_url": f"https://{srv.name}{V2}/pubkey/ephemeral/isvalid"}]})

        @app.get(f"{V2}/pubkey/isvalid")
        def isvalid() -> Any:
            key = request.args.get("public_key")
            return jsonify({"valid": key == srv.public_key and key not in srv.revoked})

        @app.get(f"{V2}/pubkey/ephemeral/isvalid")
        def eph_isvalid() -> Any:
            key = request.args.get("public_key")
            return jsonify({"valid": key in srv.ephemeral and key not in srv.revoked})

        @app.post(f"{V2}/3pid/bind")
        def bind() -> Any:
            denied = authed()
            if denied:
                return denied
            body = request.get_json()
            s = srv.sessions.get(body.get("sid"))
            if s is None or s["client_secret"] != body.get("client_secret"):
                return _err(404, "M_NO_VALID_SESSION", "No valid session was found")
            if s["validated_at"] is None:
                return _err(400, "M_SESSION_NOT_VALIDATED", "This validation session has not"
                            " yet been completed")
            return jsonify(srv._bind(s["medium"], s["address"], body["mxid"]))

        @app.post(f"{V2}/3pid/unbind")
        def unbind() -> Any:
            if not srv.unbind_supported:
                return "not here", 404
            body = request.get_json()
            creds = [c for v in request.headers.getlist("Authorization")
                     for c in split_credentials(v)]
            if not creds:
                return _err(401, "M_UNAUTHORIZED", "No signature")
            xm = parse_x_matrix(creds[0])
            vk = srv.hs_keys.get(xm.origin)
            signed = {"method": request.method, "uri": request.full_path.rstrip("?"),
                      "origin": xm.origin, "destination_is": srv.name, "content": body,
                      "signatures": {xm.origin: {xm.key: xm.sig}}}
            try:
                if vk is None:
                    raise SignatureError("unknown server")
                verify_signed_json(signed, xm.origin, {xm.key: vk})
            except SignatureError:
                return _err(401, "M_UNAUTHORIZED", "Bad signature")
            if body["mxid"].split(":", 1)[1] != xm.origin:
                return _err(403, "M_FORBIDDEN", "Not your user")
            key = (body["threepid"]["medium"], body["threepid"]["address"])
            if srv.bindings.get(key) == body["mxid"]:
                del srv.bindings[key]
            return jsonify({})

        return app
