"""federation/client.py against a real HTTPS server on loopback (a test CA, certificates made
with ``cryptography``): TLS verification choices, SNI / Host / certificate name, the IP
blacklist before connecting, timeouts, bounded bodies, error mapping, fail-fast, the domain
whitelist, signed requests that the receiving RequestVerifier accepts, pooling."""
import threading
import time

import pytest
from flask import Flask, Response, jsonify, request

from atrium.errors import MatrixError
from federation.client import FederationClient, WellKnownFetcher
from federation.discovery import ResolvedServer
from federation.errors import (BadResponse, Forbidden, NotRetrying, RemoteHTTPError,
                               RemoteUnreachable)
from federation.request_auth import BODY_ENVIRON_KEY, RequestVerifier, federation_route
from tests.federation.client_helpers import (CA, FakeKeyring, Listener, StaticResolver,
                                             TlsServer, config_for, new_signing_key)

REMOTE = "remote.test"
ORIGIN = "origin.test"
SK = new_signing_key("k1")


def remote_app(tmp_path):
    keyring = FakeKeyring()
    keyring.add(ORIGIN, SK)
    verifier = RequestVerifier(config_for(tmp_path, REMOTE), keyring)
    fed = federation_route(verifier)
    app = Flask("remote")

    @app.errorhandler(MatrixError)
    def matrix_error(e):
        return jsonify(e.to_json()), e.status

    def info(**extra):
        return jsonify({"method": request.method, "uri": request.environ.get("RAW_URI"),
                        "host": request.headers.get("Host"),
                        "port": request.environ.get("REMOTE_PORT"), **extra})

    @app.route("/_matrix/federation/v1/echo/<path:rest>", methods=["GET", "PUT", "POST"])
    @fed
    def echo(origin, rest):
        return info(origin=origin, rest=rest, body=request.environ[BODY_ENVIRON_KEY])

    @app.route("/unsigned")
    def unsigned():
        return info(auth=request.headers.get("Authorization"))

    @app.route("/big")
    def big():
        return Response(b'"' + b"x" * int(request.args["n"]) + b'"',
                        content_type="application/json")

    @app.route("/stream")
    def stream():
        n = int(request.args["chunks"])

        def gen():
            for _ in range(n):
                yield b"x" * 1024
        return Response(gen(), content_type="application/json")

    @app.route("/slow")
    def slow():
        time.sleep(float(request.args["s"]))
        return {"slept": True}

    @app.route("/trickle")
    def trickle():
        def gen():
            for _ in range(40):
                yield b" "
                time.sleep(0.1)
            yield b"{}"
        return Response(gen(), content_type="application/json")

    @app.route("/err")
    def err():
        return {"errcode": "M_FORBIDDEN", "error": "no thanks"}, 403

    @app.route("/err500")
    def err500():
        return Response("oops", status=502, content_type="text/plain")

    @app.route("/notjson")
    def notjson():
        return Response("<html>", content_type="text/html")

    app.keyring = keyring
    return app


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    ca = CA(folder)
    cert, key = ca.issue(REMOTE, "localhost", "127.0.0.1")
    server = TlsServer(remote_app(folder), cert, key)
    yield ca, server
    server.stop()


@pytest.fixture
def make_client(env, tmp_path):
    ca, server = env
    made = []

    def make(tls_name=REMOTE, host_header=REMOTE, port=None, resolver="static", **raw):
        raw.setdefault("federation_ip_range_blacklist", [])
        raw.setdefault("federation_custom_ca_list", [str(ca.path)])
        cfg = config_for(tmp_path, ORIGIN, **raw)
        res = None
        if resolver == "static":
            res = StaticResolver(ResolvedServer("127.0.0.1", port or server.port, host_header,
                                                tls_name))
        c = FederationClient(cfg, SK, resolver=res)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


# -- TLS -------------------------------------------------------------------------------------

def test_custom_ca_verifies_and_request_is_signed_and_accepted(make_client, env):
    _, server = env
    c = make_client()
    body = {"pdus": [], "edus": [{"edu_type": "m.typing", "content": {"é": [1, 2]}}]}
    got = c.put_json(REMOTE, "/_matrix/federation/v1/echo/send/txn%201", body,
                     query={"a": "x y&z", "list": ["1", "2"]})
    assert got["origin"] == ORIGIN
    assert got["body"] == body
    assert got["method"] == "PUT"
    assert got["uri"] == "/_matrix/federation/v1/echo/send/txn%201?a=x+y%26z&list=1&list=2"
    assert got["host"] == REMOTE
    assert server.sni[-1] == REMOTE       # SNI is the server (or delegated) name
    assert c.get_json(REMOTE, "/_matrix/federation/v1/echo/q")["body"] is None
    assert c.post_json(REMOTE, "/_matrix/federation/v1/echo/p", {})["body"] == {}


def test_unsigned_request_has_no_authorization(make_client):
    assert make_client().get_json(REMOTE, "/unsigned", signed=False)["auth"] is None


def test_verification_without_the_ca_fails(make_client):
    c = make_client(federation_custom_ca_list=[])
    with pytest.raises(RemoteUnreachable, match="TLS"):
        c.get_json(REMOTE, "/unsigned")


def test_certificate_must_match_the_tls_server_name(make_client):
    c = make_client(tls_name="other.test", host_header="other.test")
    with pytest.raises(RemoteUnreachable, match="TLS"):
        c.get_json(REMOTE, "/unsigned")


def test_ip_literal_certificate(make_client, env):
    _, server = env
    c = make_client(tls_name="127.0.0.1", host_header=f"127.0.0.1:{server.port}")
    assert c.get_json(REMOTE, "/unsigned")["host"] == f"127.0.0.1:{server.port}"


def test_verification_off(make_client):
    c = make_client(federation_custom_ca_list=[], federation_verify_certificates=False,
                    tls_name="other.test")
    assert c.get_json(REMOTE, "/unsigned")["host"] == REMOTE


def test_certificate_verification_whitelist(make_client):
    c = make_client(federation_custom_ca_list=[],
                    federation_certificate_verification_whitelist=["*.test"])
    assert c.get_json(REMOTE, "/unsigned")["host"] == REMOTE
    c2 = make_client(federation_custom_ca_list=[],
                     federation_certificate_verification_whitelist=["*.example"])
    with pytest.raises(RemoteUnreachable):
        c2.get_json(REMOTE, "/unsigned")


def test_real_discovery_for_a_name_with_port(make_client, env):
    """No injected resolver: "localhost:<port>" (step 2 of discovery), resolved with the
    system resolver; an address that refuses (::1) is skipped for the next one."""
    _, server = env
    c = make_client(resolver=None)
    dest = f"localhost:{server.port}"
    got = c.get_json(dest, "/unsigned")
    assert got["host"] == dest
    assert server.sni[-1] == "localhost"


# -- IP blacklist ------------------------------------------------------------------------------

def test_blacklisted_address_refused_before_connecting(make_client):
    listener = Listener()
    try:
        c = make_client(port=listener.port, federation_ip_range_blacklist=["127.0.0.0/8"])
        with pytest.raises(RemoteUnreachable, match="blacklisted"):
            c.get_json(REMOTE, "/unsigned")
        c2 = make_client(resolver=None, federation_ip_range_blacklist=["127.0.0.0/8", "::1/128"])
        with pytest.raises(RemoteUnreachable, match="blacklisted"):
            c2.get_json(f"localhost:{listener.port}", "/unsigned")
        time.sleep(0.1)
        assert listener.accepted == 0
    finally:
        listener.stop()


def test_whitelist_beats_blacklist(make_client):
    c = make_client(federation_ip_range_blacklist=["127.0.0.0/8"],
                    federation_ip_range_whitelist=["127.0.0.1/32"])
    assert c.get_json(REMOTE, "/unsigned")["host"] == REMOTE


def test_default_blacklist_covers_loopback(make_client):
    c = make_client(federation_ip_range_blacklist=None)  # unset: Synapse's default list
    with pytest.raises(RemoteUnreachable, match="blacklisted"):
        c.get_json(REMOTE, "/unsigned")


def test_well_known_fetch_respects_the_blacklist(env, tmp_path):
    _, server = env
    listener = Listener()
    try:
        fetch = WellKnownFetcher(config_for(tmp_path))   # default blacklist
        with pytest.raises(RemoteUnreachable):
            fetch(f"https://localhost:{listener.port}/.well-known/matrix/server",
                  timeout=2, max_size=1000)
        assert listener.accepted == 0
    finally:
        listener.stop()


def test_well_known_fetch_over_tls(env, tmp_path):
    ca, server = env
    fetch = WellKnownFetcher(config_for(tmp_path, federation_ip_range_blacklist=[],
                                        federation_custom_ca_list=[str(ca.path)]))
    status, headers, body = fetch(f"https://localhost:{server.port}/err", timeout=2,
                                  max_size=1000)
    assert status == 403 and b"M_FORBIDDEN" in body
    assert headers["content-type"] == "application/json"
    with pytest.raises(BadResponse):
        fetch(f"https://localhost:{server.port}/big?n=5000", timeout=2, max_size=1000)


# -- timeouts and sizes ------------------------------------------------------------------------

def test_slow_answer_times_out(make_client):
    c = make_client()
    t0 = time.monotonic()
    with pytest.raises(RemoteUnreachable):
        c.get_json(REMOTE, "/slow", query={"s": "3"}, timeout=0.4)
    assert time.monotonic() - t0 < 1.5


def test_trickling_body_is_bounded_by_the_whole_request_timeout(make_client):
    c = make_client()
    t0 = time.monotonic()
    with pytest.raises(RemoteUnreachable):
        c.get_json(REMOTE, "/trickle", timeout=0.6)   # each byte within 0.1 s, total 4 s
    assert time.monotonic() - t0 < 2.0


def test_config_request_timeout_is_the_default(make_client):
    c = make_client(federation={"connect_timeout": "1s", "request_timeout": "300ms"})
    t0 = time.monotonic()
    with pytest.raises(RemoteUnreachable):
        c.get_json(REMOTE, "/slow", query={"s": "3"})
    assert time.monotonic() - t0 < 1.5


def test_connection_refused_is_unreachable(make_client):
    listener = Listener()
    port = listener.port
    listener.stop()
    with pytest.raises(RemoteUnreachable, match="connection"):
        make_client(port=port).get_json(REMOTE, "/unsigned")


def test_oversize_bodies(make_client):
    c = make_client()
    assert len(c.get_json(REMOTE, "/big", query={"n": "900"}, max_size=1000)) == 900
    with pytest.raises(BadResponse):
        c.get_json(REMOTE, "/big", query={"n": "5000"}, max_size=1000)    # Content-Length
    with pytest.raises(BadResponse):
        c.get_json(REMOTE, "/stream", query={"chunks": "50"}, max_size=10_000)  # chunked
    c2 = make_client(federation={"max_response_size": "2K"})
    with pytest.raises(BadResponse):
        c2.get_json(REMOTE, "/big", query={"n": "5000"})
    # the client still works afterwards (the aborted connection is not reused)
    assert c.get_json(REMOTE, "/unsigned")["host"] == REMOTE


# -- answers ----------------------------------------------------------------------------------

def test_matrix_error_is_remote_http_error(make_client):
    c = make_client()
    with pytest.raises(RemoteHTTPError) as ei:
        c.get_json(REMOTE, "/err")
    e = ei.value
    assert (e.status, e.errcode, e.error) == (403, "M_FORBIDDEN", "no thanks")
    assert e.body == {"errcode": "M_FORBIDDEN", "error": "no thanks"}
    with pytest.raises(RemoteHTTPError) as ei:
        c.get_json(REMOTE, "/err500")
    assert (ei.value.status, ei.value.errcode) == (502, None)
    with pytest.raises(RemoteHTTPError) as ei:
        c.get_json(REMOTE, "/nowhere")
    assert ei.value.status == 404


def test_signature_refused_by_the_remote(make_client, env):
    # the receiving side checks our signature: with a different key it answers 401
    c = make_client()
    c.signing_key = new_signing_key("k1")
    with pytest.raises(RemoteHTTPError) as ei:
        c.get_json(REMOTE, "/_matrix/federation/v1/echo/x")
    assert (ei.value.status, ei.value.errcode) == (401, "M_UNAUTHORIZED")


def test_non_json_answer_is_bad_response(make_client):
    with pytest.raises(BadResponse):
        make_client().get_json(REMOTE, "/notjson")


def test_get_raw_returns_any_status(make_client):
    status, headers, body = make_client().get_raw(REMOTE, "/err")
    assert status == 403 and body.startswith(b"{") and "content-type" in headers
    with pytest.raises(BadResponse):
        make_client().get_raw(REMOTE, "/big", query={"n": "5000"}, max_size=100)


# -- policy before any connection ----------------------------------------------------------------

def test_domain_whitelist(make_client):
    c = make_client(federation_domain_whitelist=["other.test"])
    with pytest.raises(Forbidden):
        c.get_json(REMOTE, "/unsigned")
    assert c.resolver.calls == 0
    ok = make_client(federation_domain_whitelist=[REMOTE])
    assert ok.get_json(REMOTE, "/unsigned")["host"] == REMOTE


def test_fail_fast_while_backing_off(make_client):
    c = make_client()
    future = int(time.time() * 1000) + 60_000
    c.backing_off = lambda d: future if d == REMOTE else None
    with pytest.raises(NotRetrying) as ei:
        c.get_json(REMOTE, "/unsigned")
    assert ei.value.retry_at_ms == future
    assert isinstance(ei.value, RemoteUnreachable)
    assert c.resolver.calls == 0
    assert c.get_json(REMOTE, "/unsigned", fail_fast=False)["host"] == REMOTE
    c.backing_off = lambda d: int(time.time() * 1000) - 1   # in the past: go ahead
    assert c.get_json(REMOTE, "/unsigned")["host"] == REMOTE


def test_unresolvable_name_is_unreachable(make_client):
    c = make_client(resolver=None)
    with pytest.raises(RemoteUnreachable):
        c.get_json("no-such-host.invalid:8448", "/unsigned", timeout=3)
    with pytest.raises(RemoteUnreachable):
        c.get_json("bad name", "/unsigned")


# -- pooling and concurrency ---------------------------------------------------------------------

def test_connections_are_reused(make_client, env, tmp_path):
    ca, _ = env
    cert, key = ca.issue(REMOTE, tag="keepalive")
    server = TlsServer(remote_app(tmp_path), cert, key, kind="gevent")
    try:
        c = make_client(port=server.port)
        ports = {c.get_json(REMOTE, "/unsigned")["port"] for _ in range(4)}
        assert len(ports) == 1
        assert len(server.sni) == 1        # one TLS handshake for four requests
        assert c.resolver.calls == 1       # resolution is reused too
    finally:
        server.stop()


def test_many_concurrent_requests(make_client):
    c = make_client()
    results, errors = [], []

    def one(i):
        try:
            results.append(c.get_json(REMOTE, f"/_matrix/federation/v1/echo/{i}")["rest"])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
    assert sorted(results, key=int) == [str(i) for i in range(20)]


def test_closed_client_refuses(make_client):
    c = make_client()
    c.close()
    with pytest.raises(RemoteUnreachable):
        c.get_json(REMOTE, "/unsigned")
