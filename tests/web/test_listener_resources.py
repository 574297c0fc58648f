"""Synapse's listener ``resources`` honoured per listener (atrium/listener_resources.py): the
resource names map to Synapse's path prefixes, a ``type: metrics`` listener serves only
/_synapse/metrics and /health, and the listener a request came in on is found from the
accepted socket's own address (``environ["gunicorn.socket"]``) — never from the Host header.
A path outside that listener's resources answers exactly as an unknown path does."""
from __future__ import annotations

import logging
from typing import Any

import pytest

from atrium.config import ConfigError, parse_config
from atrium.listener_resources import (UNRECOGNIZED, ListenerResources,
                                       listener_resources_layer, refusal)
from atrium.listeners import Listener, parse_listeners
from tests.apps import app_factory

CLIENT_PORT, METRICS_PORT = 8008, 9000
LISTENERS = [
    {"port": CLIENT_PORT, "type": "http", "x_forwarded": True,
     "bind_addresses": ["127.0.0.1"], "resources": [{"names": ["client", "federation"]}]},
    {"port": METRICS_PORT, "type": "metrics", "bind_addresses": ["127.0.0.1"]},
]


class Sock:
    """What gunicorn puts in ``environ["gunicorn.socket"]``: only its local address is read."""

    def __init__(self, local: Any) -> None:
        self.local = local

    def getsockname(self) -> Any:
        if isinstance(self.local, Exception):
            raise self.local
        return self.local


def _parse(value: list, enable_metrics: bool | None = None, warnings: list | None = None,
           ) -> tuple[Listener, ...]:
    return parse_listeners(value, ConfigError, (warnings if warnings is not None else
                                                []).append, enable_metrics=enable_metrics)


def _layer(listeners: tuple[Listener, ...]) -> ListenerResources:
    wrap = listener_resources_layer(listeners, True, environ={})
    assert wrap is not None
    return wrap(lambda environ, start: ["served"])


def _answer(layer: ListenerResources, local: Any, path: str) -> Any:
    got: list = []
    body = layer({"gunicorn.socket": Sock(local), "PATH_INFO": path, "REQUEST_METHOD": "GET"},
                 lambda status, headers: got.append(status))
    return "served" if body == ["served"] else got[0]


# --------------------------------------------------------------------------- the mapping

def test_resource_names_map_to_synapses_paths():
    (cf, media, keys, openid, none, metrics) = _parse([
        {"port": 1, "type": "http", "resources": [{"names": ["client", "federation"]}]},
        {"port": 2, "type": "http", "resources": [{"names": ["media"]}]},
        {"port": 3, "type": "http", "resources": [{"names": ["keys"]}]},
        {"port": 4, "type": "http", "resources": [{"names": ["openid", "health"]}]},
        {"port": 5, "type": "http"},
        {"port": 6, "type": "metrics"},
    ])
    layer = _layer((cf, media, keys, openid, none, metrics))
    table = {
        "/_matrix/client/v3/sync": {1, 5},
        "/_matrix/client/r0/login": {1, 5},
        "/_matrix/client/v1/media/download/s/m": {1, 2, 5},
        "/_matrix/media/v3/upload": {1, 2, 5},
        "/_synapse/admin/v2/users": {1, 5},
        "/_synapse/client/oidc/callback": {1, 5},
        "/_atrium/console": {1, 5},
        "/.well-known/matrix/client": {1, 5},
        "/.well-known/matrix/server": {1, 5},
        "/_matrix/federation/v1/send/1": {1, 5},
        "/_matrix/federation/v1/media/download/m": {1, 2, 5},
        "/_matrix/federation/v1/openid/userinfo": {1, 4, 5},
        "/_matrix/key/v2/server": {1, 3, 5},
        "/_synapse/metrics": {5, 6},
        "/health": {1, 2, 3, 4, 5, 6},
        "/": {5},
    }
    for path, ports in table.items():
        served = {p for p in range(1, 7) if _answer(layer, ("127.0.0.1", p), path) == "served"}
        assert served == ports, path


def test_a_listener_naming_metrics_serves_them():
    (lst,) = _parse([{"port": 1, "type": "http", "resources": [{"names": ["metrics"]}]}])
    assert lst.paths() == ("/health", "/_synapse/metrics")


def test_metrics_listeners_follow_enable_metrics_as_synapse():
    warnings: list[str] = []
    ls = _parse(LISTENERS, enable_metrics=False, warnings=warnings)
    assert [lst.kind for lst in ls] == ["http"]
    assert warnings == ["config: listeners[1] (type metrics) is not bound: enable_metrics is "
                        "false (as Synapse)"]
    assert [lst.kind for lst in _parse(LISTENERS, enable_metrics=True)] == ["http", "metrics"]
    # the config's parse does not know enable_metrics: the app's layer warns instead
    warnings.clear()
    layer = listener_resources_layer(_parse(LISTENERS), False, warn=warnings.append,
                                     environ={})
    assert layer is not None and "127.0.0.1:9000 is not bound" in warnings[0]


def test_enable_metrics_without_a_listener_serving_them_is_named():
    client_only = [{"port": 8008, "type": "http",
                    "resources": [{"names": ["client", "federation"]}]}]
    warnings: list[str] = []
    _parse(client_only, enable_metrics=True, warnings=warnings)
    assert warnings == ["config: enable_metrics is true but no listener serves metrics: add "
                        "metrics to a listener's resources, or a listener of type metrics "
                        "(docs/metrics.md)"]
    warnings.clear()
    _parse(client_only, enable_metrics=False, warnings=warnings)
    _parse(LISTENERS, enable_metrics=True, warnings=warnings)
    assert warnings == []
    # the config passes enable_metrics: a disabled metrics listener is gone at parse time
    cfg = parse_config({"server_name": "a.test", "listeners": LISTENERS})
    assert [lst.kind for lst in cfg.listeners] == ["http"]


def test_what_atrium_does_not_serve_is_named():
    warnings: list[str] = []
    _parse([{"port": 1, "type": "http", "resources": [{"names": ["client", "static"]},
                                                      {"names": ["consent"]}]},
            {"port": 2, "type": "http", "resources": []},
            {"port": 3, "type": "metrics", "resources": [{"names": ["client"]}]},
            {"port": 4, "type": "http", "resources": [{"names": ["metrics"]}]}],
           enable_metrics=False, warnings=warnings)
    text = " | ".join(warnings)
    assert "listeners[0].resources: Atrium serves nothing for consent, static" in text
    assert "listeners[1].resources names nothing: only /health" in text
    assert "listeners[2] (type metrics) is not bound" in text
    assert "listeners[3].resources names metrics but enable_metrics is false" in text


@pytest.mark.parametrize("value, key", [
    ([{"port": 8008, "type": "http"}, {"port": 8008, "type": "metrics"}], "listeners[1]"),
    ([{"port": 8008, "type": "http", "bind_addresses": ["127.0.0.1"]},
      {"port": 8008, "type": "http", "bind_addresses": ["::1", "127.0.0.1"]}], "listeners[1]"),
    ([{"port": 9000, "type": "metrics", "bind_addresses": ["127.0.0.1"]}], "listeners"),
])
def test_bad_listener_combinations_name_the_key(value, key):
    with pytest.raises(ConfigError) as e:
        parse_config({"server_name": "x", "listeners": value, "enable_metrics": True},
                     warn=False)
    assert f"'{key}'" in str(e.value) and "\n" not in str(e.value)


# --------------------------------------------------------------------------- the layer

def test_the_listener_is_the_sockets_not_the_host_headers():
    layer = _layer(_parse(LISTENERS))
    assert _answer(layer, ("127.0.0.1", CLIENT_PORT), "/_matrix/client/versions") == "served"
    assert _answer(layer, ("127.0.0.1", METRICS_PORT), "/_matrix/client/versions") == (
        "404 NOT FOUND")
    # a Host header naming the other listener changes nothing
    got: list = []
    env = {"gunicorn.socket": Sock(("127.0.0.1", METRICS_PORT)), "PATH_INFO": "/_atrium/x",
           "HTTP_HOST": f"127.0.0.1:{CLIENT_PORT}", "SERVER_PORT": str(CLIENT_PORT)}
    layer(env, lambda status, headers: got.append(status))
    assert got == ["404 NOT FOUND"]


def test_ipv6_and_ipv4_mapped_sockets_and_unix_sockets():
    layer = _layer(_parse([
        {"port": 8008, "type": "http", "resources": [{"names": ["federation"]}]},
        {"path": "/run/atrium-metrics.sock", "type": "metrics"},
    ]))
    for local in (("::ffff:10.0.0.2", 8008, 0, 0), ("2001:db8::1", 8008, 0, 0)):
        assert _answer(layer, local, "/_matrix/key/v2/server") == "served"
        assert _answer(layer, local, "/_matrix/client/versions") == "404 NOT FOUND"
    for local in ("/run/atrium-metrics.sock", b"/run/atrium-metrics.sock"):
        assert _answer(layer, local, "/_synapse/metrics") == "served"
        assert _answer(layer, local, "/_matrix/key/v2/server") == "404 NOT FOUND"


def test_listeners_sharing_a_port_are_told_apart_by_address():
    layer = _layer(_parse([
        {"port": 8008, "type": "http", "bind_addresses": ["127.0.0.1"],
         "resources": [{"names": ["client", "federation"]}]},
        {"port": 8008, "type": "http", "bind_addresses": ["10.0.0.2"],
         "resources": [{"names": ["federation"]}]},
    ]))
    path = "/_matrix/client/versions"
    assert _answer(layer, ("127.0.0.1", 8008), path) == "served"
    assert _answer(layer, ("::ffff:10.0.0.2", 8008, 0, 0), path) == "404 NOT FOUND"
    # an address neither names: what both serve
    assert _answer(layer, ("10.9.9.9", 8008), path) == "404 NOT FOUND"
    assert _answer(layer, ("10.9.9.9", 8008), "/_matrix/key/v2/server") == "served"


def test_sockets_no_listener_describes_and_requests_without_one_are_served():
    layer = _layer(_parse(LISTENERS))
    assert _answer(layer, ("127.0.0.1", 8710), "/_matrix/client/versions") == "served"
    assert layer({"PATH_INFO": "/_synapse/metrics"}, None) == ["served"]
    # a socket that cannot say where it is (closed under us): nothing is served
    assert _answer(layer, OSError(9, "Bad file descriptor"), "/health") == "404 NOT FOUND"


def test_no_layer_when_every_listener_serves_everything_or_atrium_bind_rules():
    assert listener_resources_layer(_parse([{"port": 8008, "type": "http"}]), True,
                                    environ={}) is None
    assert listener_resources_layer((), True, environ={}) is None
    assert listener_resources_layer(_parse(LISTENERS), True,
                                    environ={"ATRIUM_BIND": "127.0.0.1:8710"}) is None


def test_the_refusal_answers_head_without_a_body_and_logs_once():
    lines: list = []
    refuse = refusal([("Cache-Control", "no-cache")], lambda env: "rid1",
                     lambda *args: lines.append(args))
    got: list = []
    body = refuse({"REQUEST_METHOD": "HEAD"}, lambda s, h: got.append((s, dict(h))))
    assert body == [] and got[0][0] == "404 NOT FOUND"
    assert got[0][1]["Content-Length"] == str(len(UNRECOGNIZED))
    assert got[0][1]["X-Request-Id"] == "rid1" and got[0][1]["Cache-Control"] == "no-cache"
    assert len(lines) == 1 and lines[0][1] == 404


def test_per_request_cost_is_small():
    import time

    layer = _layer(_parse(LISTENERS))
    env = {"gunicorn.socket": Sock(("127.0.0.1", CLIENT_PORT)),
           "PATH_INFO": "/_matrix/client/v3/sync"}
    n = 20000
    start = time.perf_counter()
    for _ in range(n):
        layer(env, None)
    per_call = (time.perf_counter() - start) / n
    assert per_call < 20e-6, per_call  # ~1 µs here; generous for a loaded machine


# --------------------------------------------------------------------------- in the app

@pytest.fixture(scope="module")
def app(tmp_path_factory: Any) -> Any:
    factory = app_factory(tmp_path_factory.mktemp("listener_resources"))
    yield next(factory)(enable_metrics=True, listeners=LISTENERS)
    next(factory, None)


def _get(client: Any, port: int | None, path: str, **kw: Any) -> Any:
    env = {} if port is None else {"gunicorn.socket": Sock(("127.0.0.1", port)),
                                   "SERVER_PORT": str(port)}  # as gunicorn sets both
    return client.get(path, environ_overrides=env, **kw)


def test_the_client_listener_serves_the_apis_and_not_the_metrics(app):
    client = app.test_client()
    assert _get(client, CLIENT_PORT, "/_matrix/client/versions").status_code == 200
    assert _get(client, CLIENT_PORT, "/_matrix/key/v2/server").status_code == 200
    assert _get(client, CLIENT_PORT, "/health").data == b"OK"
    r = _get(client, CLIENT_PORT, "/_synapse/metrics")
    unknown = _get(client, CLIENT_PORT, "/_matrix/client/v3/no_such_endpoint")
    assert r.status_code == unknown.status_code == 404
    assert r.json == {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"}
    # the same answer as any unknown path: body and headers (but the request id)
    assert r.data == unknown.data
    names = {k.lower() for k in r.headers.keys()}
    assert names == {k.lower() for k in unknown.headers.keys()}
    assert r.headers["Access-Control-Allow-Origin"] == "*"


def test_the_metrics_listener_serves_only_the_metrics_and_health(app):
    client = app.test_client()
    r = _get(client, METRICS_PORT, "/_synapse/metrics")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    assert b"process_cpu_seconds_total" in r.data
    assert _get(client, METRICS_PORT, "/health").data == b"OK"
    for path in ("/_matrix/client/versions", "/_synapse/admin/v1/server_version",
                 "/_atrium/console", "/.well-known/matrix/client", "/_matrix/key/v2/server"):
        r = _get(client, METRICS_PORT, path)
        assert r.status_code == 404 and r.json["errcode"] == "M_UNRECOGNIZED", path


def test_without_a_socket_every_path_is_served(app):
    client = app.test_client()
    assert _get(client, None, "/_synapse/metrics").status_code == 200
    assert _get(client, None, "/_matrix/client/versions").status_code == 200


def test_a_refused_request_has_its_access_line_with_the_forwarded_client(app, caplog):
    client = app.test_client()
    with caplog.at_level(logging.INFO, logger="atrium.access"):
        r = _get(client, CLIENT_PORT, "/_synapse/metrics?access_token=secret",
                 headers={"X-Forwarded-For": "203.0.113.7"})
    assert r.status_code == 404
    lines = [rec.getMessage() for rec in caplog.records if "/_synapse/metrics" in
             rec.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("203.0.113.7 ") and " 404 " in lines[0]
    assert "secret" not in lines[0]
