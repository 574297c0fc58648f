"""Behind a reverse proxy (``listeners: [{x_forwarded: true}]``): the client's address comes
from ``X-Forwarded-For`` — the first untrusted hop from the right — for rate limits, devices'
last-seen IP and whois; without ``x_forwarded``, or from a peer that is not a trusted proxy,
the header is ignored, so a client cannot choose the address it is limited by."""
from __future__ import annotations

import pytest

from atrium.listeners import ForwardedFor

PORT = "8008"
LOGIN = "/_matrix/client/v3/login"
PROXIED = [{"port": int(PORT), "type": "http", "x_forwarded": True,
            "bind_addresses": ["127.0.0.1"], "resources": [{"names": ["client"]}]}]
TIGHT = {"per_second": 0.001, "burst_count": 2}


def _layer(trusted=()):
    return ForwardedFor(lambda environ, start: environ, trusted)


@pytest.mark.parametrize("peer, header, client", [
    ("127.0.0.1", "203.0.113.7", "203.0.113.7"),
    ("10.0.0.1", "203.0.113.7", "203.0.113.7"),                  # a proxy on the LAN
    # a hop inside the header is a proxy only when trusted_proxies lists it: a LAN client
    # talking to the proxy could otherwise pick the address it is rate-limited by
    ("10.0.0.1", "203.0.113.7, 10.0.0.2", "10.0.0.2"),
    ("127.0.0.1", "203.0.113.7, 127.0.0.1", "127.0.0.1"),
    ("127.0.0.1", "198.51.100.1, 203.0.113.7", "203.0.113.7"),   # a forged left entry
    ("127.0.0.1", "10.1.1.1", "10.1.1.1"),                        # a client on the LAN
    ("127.0.0.1", "203.0.113.7:4711", "203.0.113.7"),             # with a port
    ("127.0.0.1", "[2001:db8::7]:443", "2001:db8::7"),
    ("::1", "2001:db8::7", "2001:db8::7"),
    ("127.0.0.1", "::ffff:203.0.113.7", "203.0.113.7"),
    ("127.0.0.1", "garbage, 203.0.113.7", "203.0.113.7"),
    ("127.0.0.1", "unknown", None),                               # nothing usable
    ("198.51.100.9", "203.0.113.7", None),                        # not from a proxy
    ("", "203.0.113.7", "203.0.113.7"),                           # a unix socket
])
def test_the_first_untrusted_hop_is_the_client(peer, header, client):
    assert _layer().client(peer, header) == client


def test_configured_proxies_are_skipped_too():
    layer = _layer(["198.51.100.0/24"])
    assert layer.client("198.51.100.9", "203.0.113.7, 198.51.100.10") == "203.0.113.7"
    assert _layer().client("198.51.100.9", "203.0.113.7") is None
    # chained proxies on a private network: listed, they are skipped
    assert _layer(["10.0.0.0/8"]).client("10.0.0.1", "203.0.113.7, 10.0.0.2") == "203.0.113.7"


def test_the_layer_rewrites_the_environ_and_keeps_the_proxy():
    layer = ForwardedFor(lambda environ, start: environ, (), frozenset({PORT}))
    env = layer({"REMOTE_ADDR": "127.0.0.1", "SERVER_PORT": PORT,
                 "HTTP_X_FORWARDED_FOR": "203.0.113.7", "HTTP_X_FORWARDED_PROTO": "https",
                 "wsgi.url_scheme": "http"}, None)
    assert env["REMOTE_ADDR"] == "203.0.113.7" and env["atrium.proxy_addr"] == "127.0.0.1"
    assert env["wsgi.url_scheme"] == "https"
    # another listener (no x_forwarded there): untouched
    env = layer({"REMOTE_ADDR": "127.0.0.1", "SERVER_PORT": "8448",
                 "HTTP_X_FORWARDED_FOR": "203.0.113.7"}, None)
    assert env["REMOTE_ADDR"] == "127.0.0.1" and "atrium.proxy_addr" not in env


def _login(client, user, forwarded_for=None, remote="127.0.0.1"):
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    return client.post(LOGIN, json={"type": "m.login.password", "password": "pw",
                                    "identifier": {"type": "m.id.user", "user": user}},
                       headers=headers,
                       environ_overrides={"REMOTE_ADDR": remote, "SERVER_PORT": PORT})


def _app(make_app, **overrides):
    from tests.web.conftest import register_via_dummy

    app = make_app(rc_login={"address": TIGHT, "account": {"per_second": 1000,
                                                           "burst_count": 1000},
                             "failed_attempts": {"per_second": 1000, "burst_count": 1000}},
                   **overrides)
    c = app.test_client()
    for name in ("alice", "bob", "carol"):
        assert register_via_dummy(c, name).status_code == 200
    return app, c


def test_each_client_behind_the_proxy_has_its_own_login_budget(make_app):
    app, c = _app(make_app, listeners=PROXIED)
    for _ in range(2):
        assert _login(c, "alice", "203.0.113.7").status_code == 200
    assert _login(c, "alice", "203.0.113.7").status_code == 429
    # another client through the same proxy is not held back by the first one
    assert _login(c, "bob", "203.0.113.8").status_code == 200
    # a forged entry on the left does not buy a fresh budget
    assert _login(c, "bob", "198.51.100.1, 203.0.113.7").status_code == 429
    # from a peer that is not a proxy the header is ignored: the peer's own budget
    for _ in range(2):
        assert _login(c, "carol", "203.0.113.99", remote="198.51.100.50").status_code == 200
    assert _login(c, "carol", "203.0.113.100", remote="198.51.100.50").status_code == 429


def test_without_x_forwarded_the_header_is_ignored(make_app):
    app, c = _app(make_app)
    for _ in range(2):
        assert _login(c, "alice", "203.0.113.7").status_code == 200
    # everyone behind the proxy shares its address: the header buys nothing
    assert _login(c, "bob", "203.0.113.8").status_code == 429


def test_devices_and_whois_see_the_client_address(make_app):
    app, c = _app(make_app, listeners=PROXIED)
    token = _login(c, "alice", "198.51.100.4, 203.0.113.7").json["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    devices = c.get("/_matrix/client/v3/devices", headers=auth).json["devices"]
    assert {d.get("last_seen_ip") for d in devices} >= {"203.0.113.7"}
    r = c.get("/_matrix/client/v3/admin/whois/@alice:test.local", headers=auth)
    assert r.status_code == 200, r.json
    ips = {conn["ip"] for dev in r.json["devices"].values()
           for sess in dev["sessions"] for conn in sess["connections"]}
    assert "203.0.113.7" in ips and "198.51.100.4" not in ips
