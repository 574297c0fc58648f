"""federation/request_auth.py and federation/ratelimit.py: inbound X-Matrix verification (every
error the spec names), the domain whitelist, the raw request target, several credentials,
``rc_federation`` (sleep, 429, concurrency, bounded state) and the ``federation_route``
decorator, on a small Flask app and on the real app (both databases)."""
import logging
import threading
import time

import pytest
from flask import Flask, jsonify

from atrium.errors import MatrixError
from atrium.federation_config import RcFederation
from federation.ratelimit import FederationRateLimiter
from federation.request_auth import (BODY_ENVIRON_KEY, RequestVerifier, federation_route,
                                     request_target)
from protocol.signing import sign_json
from protocol.xmatrix import format_header, request_json, sign_request
from tests.apps import app_factory
from tests.federation.client_helpers import FakeKeyring, config_for, new_signing_key

ME = "me.test"
ORIGIN = "origin.test"
SK = new_signing_key("k1")


def make_verifier(tmp_path, **raw):
    keyring = FakeKeyring()
    keyring.add(ORIGIN, SK)
    return RequestVerifier(config_for(tmp_path, ME, **raw), keyring), keyring


def flask_app(verifier):
    app = Flask("t")

    @app.errorhandler(MatrixError)
    def matrix_error(e):
        return jsonify(e.to_json()), e.status

    fed = federation_route(verifier)

    @app.route("/_matrix/federation/v1/<path:rest>", methods=["GET", "PUT", "POST"])
    @fed
    def view(origin, rest):
        from flask import request
        return {"origin": origin, "rest": rest, "body": request.environ[BODY_ENVIRON_KEY]}

    return app


@pytest.fixture
def setup(tmp_path):
    verifier, keyring = make_verifier(tmp_path)
    seen = []
    verifier.on_origin_seen = seen.append
    return verifier, keyring, flask_app(verifier).test_client(), seen


def signed(method, uri, body=None, *, sk=SK, origin=ORIGIN, dest=ME):
    return {"Authorization": sign_request(sk, method, uri, origin, dest, body)}


def send(client, method, uri, body=None, headers=None, raw=None):
    kw = {"headers": headers or {}}
    if raw is not None:
        kw["data"] = raw
        kw["content_type"] = "application/json"
    elif body is not None:
        kw["json"] = body
    return client.open(uri, method=method, **kw)


def err(resp, status, errcode):
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.get_json()["errcode"] == errcode
    assert isinstance(resp.get_json()["error"], str)


# -- success -------------------------------------------------------------------------------------

def test_signed_get_and_put(setup):
    _, _, c, seen = setup
    uri = "/_matrix/federation/v1/query/profile?user_id=%40a%3Aorigin.test&field=displayname"
    r = send(c, "GET", uri, headers=signed("GET", uri))
    assert r.status_code == 200 and r.get_json()["origin"] == ORIGIN
    assert r.get_json()["body"] is None
    body = {"pdus": [], "edus": [], "origin": ORIGIN, "n": 1.5}
    uri = "/_matrix/federation/v1/send/txn%2F1"
    r = send(c, "PUT", uri, body, headers=signed("PUT", uri, body))
    assert r.status_code == 200 and r.get_json()["body"] == body
    assert r.get_json()["rest"] == "send/txn/1"
    assert seen == [ORIGIN, ORIGIN]


def test_destination_may_be_absent(setup):
    _, _, c, _ = setup
    uri = "/_matrix/federation/v1/version"
    obj = sign_json(request_json("GET", uri, ORIGIN, ME), ORIGIN, SK)
    h = f'X-Matrix origin={ORIGIN},key="ed25519:k1",sig="{obj["signatures"][ORIGIN]["ed25519:k1"]}"'
    assert send(c, "GET", uri, headers={"Authorization": h}).status_code == 200


def test_any_valid_credential_is_enough(setup):
    _, _, c, _ = setup
    uri = "/_matrix/federation/v1/version"
    bad = sign_request(new_signing_key("k1"), "GET", uri, ORIGIN, ME)     # known id, wrong key
    unknown = sign_request(new_signing_key("zz"), "GET", uri, ORIGIN, ME)  # unknown key id
    good = sign_request(SK, "GET", uri, ORIGIN, ME)
    # several Authorization headers reach WSGI joined by commas (gunicorn, RFC 9110)
    r = send(c, "GET", uri, headers={"Authorization": f"{bad},{unknown}, {good}"})
    assert r.status_code == 200
    r = send(c, "GET", uri, headers={"Authorization": f"Bearer abc, {good}"})
    assert r.status_code == 200


def test_raw_target_and_method_are_covered(setup):
    _, _, c, _ = setup
    uri = "/_matrix/federation/v1/x?b=2&a=1"
    assert send(c, "GET", uri, headers=signed("GET", uri)).status_code == 200
    err(send(c, "GET", uri, headers=signed("GET", "/_matrix/federation/v1/x?a=1&b=2")),
        401, "M_UNAUTHORIZED")
    # a decoded path is not the target that was signed
    enc = "/_matrix/federation/v1/user/devices/%40a%3Ab"
    assert send(c, "GET", enc, headers=signed("GET", enc)).status_code == 200
    err(send(c, "GET", enc, headers=signed("GET", "/_matrix/federation/v1/user/devices/@a:b")),
        401, "M_UNAUTHORIZED")
    err(send(c, "POST", uri, {}, headers=signed("GET", uri)), 401, "M_UNAUTHORIZED")


def test_request_target_fallbacks():
    assert request_target({"RAW_URI": "/a%20b?x=1"}) == "/a%20b?x=1"
    assert request_target({"REQUEST_URI": "/a?x=1"}) == "/a?x=1"
    assert request_target({"RAW_URI": "https://h.example/p?q=1"}) == "/p?q=1"
    assert request_target({"RAW_URI": "/p", "QUERY_STRING": "q=1"}) == "/p?q=1"
    assert request_target({"PATH_INFO": "/a b/@c:d", "QUERY_STRING": "x=%20"}) == \
        "/a%20b/@c:d?x=%20"


# -- errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("auth", [
    None,
    "Bearer sometoken",
    "X-Matrix",
    "X-Matrix origin=origin.test",
    'X-Matrix origin="origin.test,key=ed25519:k1,sig=abc',
    "X-Matrix origin=bad_name!,key=ed25519:k1,sig=abc",
])
def test_missing_or_malformed_header_is_401(setup, auth):
    _, keyring, c, seen = setup
    r = send(c, "GET", "/_matrix/federation/v1/version",
             headers={"Authorization": auth} if auth else {})
    err(r, 401, "M_UNAUTHORIZED")
    assert keyring.asked == [] and seen == []


def test_wrong_destination_is_401(setup):
    _, keyring, c, _ = setup
    uri = "/_matrix/federation/v1/version"
    r = send(c, "GET", uri, headers=signed("GET", uri, dest="someone-else.test"))
    err(r, 401, "M_UNAUTHORIZED")
    assert "Destination" in r.get_json()["error"]
    assert keyring.asked == []


def test_two_origins_are_refused(setup):
    _, _, c, _ = setup
    uri = "/_matrix/federation/v1/version"
    h = sign_request(SK, "GET", uri, ORIGIN, ME) + "," + \
        sign_request(SK, "GET", uri, "other.test", ME)
    err(send(c, "GET", uri, headers={"Authorization": h}), 401, "M_UNAUTHORIZED")


def test_unknown_key_and_failed_fetch_are_401(setup):
    _, keyring, c, seen = setup
    uri = "/_matrix/federation/v1/version"
    r = send(c, "GET", uri, headers=signed("GET", uri, sk=new_signing_key("other")))
    err(r, 401, "M_UNAUTHORIZED")
    assert "ed25519:other" in r.get_json()["error"]
    assert keyring.asked[-1] == (ORIGIN, ["ed25519:other"])
    keyring.fail = RuntimeError("notary down")
    r = send(c, "GET", uri, headers=signed("GET", uri))
    err(r, 401, "M_UNAUTHORIZED")
    assert "notary down" in r.get_json()["error"]
    assert seen == []


def test_bad_signature_is_401(setup):
    _, _, c, _ = setup
    uri = "/_matrix/federation/v1/send/1"
    body = {"pdus": []}
    r = send(c, "PUT", uri, {"pdus": [{}]}, headers=signed("PUT", uri, body))
    err(r, 401, "M_UNAUTHORIZED")
    assert "signature" in r.get_json()["error"].lower()
    r = send(c, "PUT", uri, body, headers=signed("PUT", uri, body, sk=new_signing_key("k1")))
    err(r, 401, "M_UNAUTHORIZED")
    h = format_header(ORIGIN, ME, "ed25519:k1", "not*base64")
    err(send(c, "PUT", uri, body, headers={"Authorization": h}), 401, "M_UNAUTHORIZED")


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe", b'{"a": NaN}', b"[" * 100000])
def test_body_not_json_is_400(setup, raw):
    _, _, c, _ = setup
    uri = "/_matrix/federation/v1/send/1"
    r = send(c, "PUT", uri, raw=raw, headers=signed("PUT", uri, {}))
    err(r, 400, "M_NOT_JSON")


def test_domain_whitelist_is_403_before_any_key_fetch(tmp_path):
    verifier, keyring = make_verifier(tmp_path, federation_domain_whitelist=["friend.test"])
    c = flask_app(verifier).test_client()
    uri = "/_matrix/federation/v1/version"
    err(send(c, "GET", uri, headers=signed("GET", uri)), 403, "M_FORBIDDEN")
    assert keyring.asked == []
    ok, _ = make_verifier(tmp_path, federation_domain_whitelist=[ORIGIN])
    assert send(flask_app(ok).test_client(), "GET", uri,
                headers=signed("GET", uri)).status_code == 200


def test_a_failing_hook_does_not_fail_the_request(setup):
    verifier, _, c, _ = setup

    def boom(origin):
        raise RuntimeError("hook")
    verifier.on_origin_seen = boom
    uri = "/_matrix/federation/v1/version"
    assert send(c, "GET", uri, headers=signed("GET", uri)).status_code == 200


def test_no_keyring_is_401(tmp_path):
    v = RequestVerifier(config_for(tmp_path, ME), None)
    uri = "/_matrix/federation/v1/version"
    err(send(flask_app(v).test_client(), "GET", uri, headers=signed("GET", uri)),
        401, "M_UNAUTHORIZED")


# -- rc_federation ---------------------------------------------------------------------------------

class FakeTime:
    def __init__(self):
        self.t = 100.0
        self.slept = []

    def clock(self):
        return self.t

    def sleep(self, s):
        self.slept.append(s)


def test_sleep_then_reject_within_a_window():
    ft = FakeTime()
    rl = FederationRateLimiter(RcFederation(window_size=1.0, sleep_limit=2, sleep_delay=0.25,
                                            reject_limit=4, concurrent=3),
                               clock=ft.clock, sleep=ft.sleep)
    for _ in range(4):
        with rl.limited("a"):
            pass
    assert ft.slept == [0.25, 0.25]           # the 3rd and 4th each sleep sleep_delay
    with pytest.raises(MatrixError) as ei:
        with rl.limited("a"):
            pass
    e = ei.value
    assert (e.status, e.errcode) == (429, "M_LIMIT_EXCEEDED")
    assert 0 < e.extra["retry_after_ms"] <= 1000
    with rl.limited("b"):                     # other origins are not affected
        pass
    ft.t += 1.01                              # the window has passed
    ft.slept.clear()
    with rl.limited("a"):
        pass
    assert ft.slept == []


def test_retry_after_is_when_there_is_room_again():
    ft = FakeTime()
    rl = FederationRateLimiter(RcFederation(window_size=10.0, sleep_limit=100, sleep_delay=0,
                                            reject_limit=2, concurrent=3),
                               clock=ft.clock, sleep=ft.sleep)
    with rl.limited("a"):
        pass
    ft.t += 4
    with rl.limited("a"):
        pass
    with pytest.raises(MatrixError) as ei:
        with rl.limited("a"):
            pass
    retry = ei.value.extra["retry_after_ms"] / 1000
    ft.t += retry + 0.001
    with rl.limited("a"):                      # admitted exactly when it said
        pass


def test_concurrency_per_origin():
    rl = FederationRateLimiter(RcFederation(window_size=1.0, sleep_limit=100, sleep_delay=0,
                                            reject_limit=100, concurrent=2))
    gate = threading.Event()
    lock = threading.Lock()
    running = [0]
    peak = [0]
    other_ran = threading.Event()

    def work(origin):
        with rl.limited(origin):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            if origin == "b":
                other_ran.set()
            else:
                gate.wait(5)
            with lock:
                running[0] -= 1

    threads = [threading.Thread(target=work, args=("a",)) for _ in range(5)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    tb = threading.Thread(target=work, args=("b",))
    tb.start()
    assert other_ran.wait(2)                  # another origin is not queued behind "a"
    assert peak[0] <= 3                       # 2 of "a" + the one of "b"
    gate.set()
    for t in threads + [tb]:
        t.join(5)
    assert running[0] == 0


def test_origin_state_is_bounded():
    rl = FederationRateLimiter(RcFederation(), max_origins=10)
    for i in range(50):
        with rl.limited(f"s{i}.test"):
            pass
    assert rl.tracked_origins() <= 10


def test_route_answers_429_when_over_the_limit(tmp_path):
    verifier, _ = make_verifier(tmp_path, rc_federation={
        "window_size": "60s", "sleep_limit": 5, "sleep_delay": 0, "reject_limit": 3,
        "concurrent": 1})
    c = flask_app(verifier).test_client()
    uri = "/_matrix/federation/v1/version"
    codes = [send(c, "GET", uri, headers=signed("GET", uri)).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    r = send(c, "GET", uri, headers=signed("GET", uri))
    err(r, 429, "M_LIMIT_EXCEEDED")
    assert r.get_json()["retry_after_ms"] > 0


# -- the real app (both databases) ------------------------------------------------------------

@pytest.fixture
def make_app(tmp_path):
    yield from app_factory(tmp_path)


def test_verifier_in_the_real_app(make_app):
    from web.app import runtime_of
    app = make_app(server_name=ME)
    fed = runtime_of(app).parts["federation"]
    assert isinstance(fed.verifier, RequestVerifier)
    keyring = FakeKeyring()
    keyring.add(ORIGIN, SK)
    fed.verifier.keyring = keyring

    @federation_route(fed.verifier)
    def probe(origin):
        return {"origin": origin}

    app.add_url_rule("/_matrix/federation/unstable/h2_probe", "h2_probe", probe,
                     methods=["GET", "POST"])
    c = app.test_client()
    uri = "/_matrix/federation/unstable/h2_probe?x=1"
    r = c.get(uri, headers=signed("GET", uri))
    assert r.status_code == 200 and r.get_json() == {"origin": ORIGIN}
    r = c.get(uri)
    err(r, 401, "M_UNAUTHORIZED")
    r = c.post(uri, data=b"{oops", headers={**signed("POST", uri, {}),
                                             "Content-Type": "application/json"})
    err(r, 400, "M_NOT_JSON")


def test_the_access_line_names_the_origin_server(make_app, caplog):
    from web.app import runtime_of
    app = make_app(server_name=ME)
    fed = runtime_of(app).parts["federation"]
    keyring = FakeKeyring()
    keyring.add(ORIGIN, SK)
    fed.verifier.keyring = keyring
    uri = f"/_matrix/federation/v1/query/profile?user_id=%40nobody%3A{ME}"
    with caplog.at_level(logging.INFO, logger="atrium.access"):
        r = app.test_client().get(uri, headers=signed("GET", uri))
    assert r.status_code == 404
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "atrium.access"]
    assert len(lines) == 1 and f" - {ORIGIN} \"GET /_matrix/federation/v1/query" in lines[0]
