"""federation/discovery.py: every step of the spec's "Resolving server names" and the
well-known cache rules, with injected http_get / srv_lookup and a fake clock."""
import json
import threading
import time

import pytest

from atrium.config import parse_config
from federation.discovery import (DEFAULT_TTL, ERROR_TTL_FIRST, INVALID_TTL, MAX_TTL, MIN_TTL,
                                  ResolvedServer, Resolver, _pick_srv, cache_ttl)
from federation.errors import RemoteUnreachable


class Clock:
    def __init__(self):
        self.t = 1_000_000.0

    def __call__(self):
        return self.t


class FakeWeb:
    """url -> (status, headers, body) or an exception to raise; records every fetch."""

    def __init__(self, routes=None):
        self.routes = dict(routes or {})
        self.fetched = []

    def __call__(self, url, *, timeout, max_size):
        assert timeout > 0 and max_size > 0
        self.fetched.append(url)
        r = self.routes.get(url)
        if r is None:
            return 404, {}, b"{}"
        if isinstance(r, Exception):
            raise r
        return r


class FakeSrv:
    def __init__(self, records=None):
        self.records = dict(records or {})
        self.asked = []

    def __call__(self, name):
        self.asked.append(name)
        return self.records.get(name, [])


def wk(server, headers=None, status=200):
    return status, headers or {}, json.dumps({"m.server": server}).encode()


WK = "https://example.org/.well-known/matrix/server"


@pytest.fixture
def config(tmp_path):
    return parse_config({"server_name": "me.test"}, str(tmp_path / "homeserver.yaml"))


@pytest.fixture
def make(config):
    def make(routes=None, srv=None):
        web, dns, clock = FakeWeb(routes), FakeSrv(srv), Clock()
        return Resolver(config, http_get=web, srv_lookup=dns, clock=clock), web, dns, clock
    return make


# -- steps 1 and 2: no lookups at all ---------------------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("1.2.3.4", ResolvedServer("1.2.3.4", 8448, "1.2.3.4", "1.2.3.4")),
    ("1.2.3.4:9000", ResolvedServer("1.2.3.4", 9000, "1.2.3.4:9000", "1.2.3.4")),
    ("[::1]", ResolvedServer("::1", 8448, "[::1]", "::1")),
    ("[2001:db8::1]:8449", ResolvedServer("2001:db8::1", 8449, "[2001:db8::1]:8449",
                                          "2001:db8::1")),
    ("example.org:8449", ResolvedServer("example.org", 8449, "example.org:8449", "example.org")),
])
def test_ip_literals_and_explicit_ports_skip_discovery(make, name, expected):
    r, web, dns, _ = make()
    assert r.resolve(name) == expected
    assert web.fetched == [] and dns.asked == []


@pytest.mark.parametrize("bad", ["", "exa mple.org", "example.org:99999", "[::1", "a:b:c",
                                 "example.org:"])
def test_invalid_server_names_are_unreachable(make, bad):
    r, web, _, _ = make()
    with pytest.raises(RemoteUnreachable):
        r.resolve(bad)
    assert web.fetched == []


# -- step 3: delegation -------------------------------------------------------------------------

def test_delegated_ip_literal(make):
    r, _, dns, _ = make({WK: wk("5.6.7.8:1234")})
    assert r.resolve("example.org") == ResolvedServer("5.6.7.8", 1234, "5.6.7.8:1234", "5.6.7.8")
    r2, _, _, _ = make({WK: wk("[2001:db8::2]")})
    assert r2.resolve("example.org") == ResolvedServer("2001:db8::2", 8448, "[2001:db8::2]",
                                                       "2001:db8::2")
    assert dns.asked == []


def test_delegated_host_with_port(make):
    r, web, dns, _ = make({WK: wk("matrix.example.org:443")})
    assert r.resolve("example.org") == ResolvedServer("matrix.example.org", 443,
                                                      "matrix.example.org:443",
                                                      "matrix.example.org")
    assert web.fetched == [WK] and dns.asked == []


def test_delegated_host_srv_matrix_fed(make):
    r, _, dns, _ = make({WK: wk("matrix.example.org")},
                        {"_matrix-fed._tcp.matrix.example.org": [(10, 1, 8000, "t1.example.net.")],
                         "_matrix._tcp.matrix.example.org": [(10, 1, 9000, "old.example.net.")],
                         "_matrix-fed._tcp.example.org": [(10, 1, 7000, "wrong.example.net.")]})
    # Host header and certificate: the delegated name, not the SRV target
    assert r.resolve("example.org") == ResolvedServer("t1.example.net", 8000,
                                                      "matrix.example.org", "matrix.example.org")
    assert dns.asked == ["_matrix-fed._tcp.matrix.example.org"]


def test_delegated_host_deprecated_srv(make):
    r, _, dns, _ = make({WK: wk("matrix.example.org")},
                        {"_matrix._tcp.matrix.example.org": [(10, 1, 9000, "old.example.net")]})
    assert r.resolve("example.org") == ResolvedServer("old.example.net", 9000,
                                                      "matrix.example.org", "matrix.example.org")
    assert dns.asked == ["_matrix-fed._tcp.matrix.example.org", "_matrix._tcp.matrix.example.org"]


def test_delegated_host_no_srv_uses_8448(make):
    r, _, _, _ = make({WK: wk("matrix.example.org")})
    assert r.resolve("example.org") == ResolvedServer("matrix.example.org", 8448,
                                                      "matrix.example.org", "matrix.example.org")


# -- steps 4-6: no delegation -------------------------------------------------------------------

def test_no_well_known_srv_matrix_fed(make):
    r, _, dns, _ = make(srv={"_matrix-fed._tcp.example.org": [(0, 0, 8443, "fed.example.org.")]})
    assert r.resolve("example.org") == ResolvedServer("fed.example.org", 8443, "example.org",
                                                      "example.org")
    assert dns.asked == ["_matrix-fed._tcp.example.org"]


def test_no_well_known_deprecated_srv(make):
    r, _, _, _ = make(srv={"_matrix._tcp.example.org": [(0, 0, 8444, "old.example.org")]})
    assert r.resolve("example.org") == ResolvedServer("old.example.org", 8444, "example.org",
                                                      "example.org")


def test_no_well_known_no_srv(make):
    r, web, dns, _ = make()
    assert r.resolve("example.org") == ResolvedServer("example.org", 8448, "example.org",
                                                      "example.org")
    assert web.fetched == [WK]
    assert dns.asked == ["_matrix-fed._tcp.example.org", "_matrix._tcp.example.org"]


@pytest.mark.parametrize("answer", [
    (200, {}, b"not json"),
    (200, {}, b"[1, 2]"),
    (200, {}, b'{"m.server": 5}'),
    (200, {}, b'{"other": "x"}'),
    (200, {}, b'{"m.server": "bad name!"}'),
    (200, {}, b'{"m.server": "host:99999"}'),
    (403, {}, b'{"m.server": "matrix.example.org"}'),
    (500, {}, b'{"m.server": "matrix.example.org"}'),
    OSError("connection refused"),
    RemoteUnreachable("example.org", "blacklisted"),
])
def test_unusable_well_known_falls_back(make, answer):
    r, _, _, _ = make({WK: answer})
    assert r.resolve("example.org") == ResolvedServer("example.org", 8448, "example.org",
                                                      "example.org")


def test_srv_dot_target_means_no_service(make):
    r, _, _, _ = make(srv={"_matrix-fed._tcp.example.org": [(0, 0, 0, ".")]})
    with pytest.raises(RemoteUnreachable):
        r.resolve("example.org")


def test_broken_srv_lookup_counts_as_no_record(config):
    def srv(name):
        raise TimeoutError("dns timeout")
    r = Resolver(config, http_get=FakeWeb(), srv_lookup=srv, clock=Clock())
    assert r.resolve("example.org").port == 8448


def test_srv_priority_and_weight():
    assert _pick_srv([]) is None
    assert _pick_srv([(20, 0, 1, "b."), (10, 0, 2, "a.")]) == ("a", 2)
    picks = {_pick_srv([(10, 0, 1, "zero."), (10, 100, 2, "heavy.")]) for _ in range(50)}
    assert picks == {("heavy", 2)}
    picks = {_pick_srv([(10, 50, 1, "x."), (10, 50, 2, "y.")]) for _ in range(200)}
    assert picks == {("x", 1), ("y", 2)}


# -- redirects -------------------------------------------------------------------------------

def test_redirects_are_followed(make):
    r, web, _, _ = make({
        WK: (301, {"Location": "/elsewhere"}, b""),
        "https://example.org/elsewhere": (302, {"location": "https://www.example.org/wk"}, b""),
        "https://www.example.org/wk": wk("m.example.org:8443"),
    })
    assert r.resolve("example.org").host_header == "m.example.org:8443"
    assert web.fetched == [WK, "https://example.org/elsewhere", "https://www.example.org/wk"]


@pytest.mark.parametrize("routes", [
    {WK: (301, {"Location": "https://b.example/"}, b""),
     "https://b.example/": (308, {"Location": WK}, b"")},                  # a loop
    {WK: (302, {"Location": "http://example.org/plain"}, b""),
     "http://example.org/plain": wk("m.example.org:1")},                   # not https
    {WK: (302, {}, b"")},                                                  # no Location
    {**{f"https://example.org/{i}": (302, {"Location": f"/{i + 1}"}, b"") for i in range(10)},
     WK: (302, {"Location": "/0"}, b"")},                                  # too many
])
def test_bad_redirects_mean_no_delegation(make, routes):
    r, web, _, _ = make(routes)
    assert r.resolve("example.org").host == "example.org"
    assert len(web.fetched) <= 7
    assert not any(u.startswith("http://") for u in web.fetched)


# -- the cache -------------------------------------------------------------------------------

def _fetches_at(r, web, clock, offsets):
    out = []
    for off in offsets:
        clock.t = 1_000_000.0 + off
        r.resolve("example.org")
        out.append(len(web.fetched))
    return out


@pytest.mark.parametrize("headers, ttl", [
    ({}, DEFAULT_TTL),                                          # default 24 h
    ({"Cache-Control": "public, max-age=3600"}, 3600),          # honoured
    ({"cache-control": "max-age=864000"}, MAX_TTL),             # capped at 48 h
    ({"Cache-Control": "max-age=0"}, MIN_TTL),                  # floor
    ({"Cache-Control": "no-store"}, MIN_TTL),
    ({"Expires": "(two hours after the fake clock's start)"}, 7200),
])
def test_valid_answer_cache_period(make, headers, ttl):
    r, web, _, clock = make({WK: wk("m.example.org:1", headers)})
    if "Expires" in headers:
        headers["Expires"] = time.strftime("%a, %d %b %Y %H:%M:%S GMT",
                                           time.gmtime(1_000_000 + 7200))
    assert _fetches_at(r, web, clock, [0, ttl - 1, ttl + 1]) == [1, 1, 2]


def test_cache_ttl_parsing():
    assert cache_ttl({}, 0) is None
    assert cache_ttl({"Cache-Control": "max-age=60"}, 0) == 60
    assert cache_ttl({"Cache-Control": "private, max-age=\"90\""}, 0) == 90
    assert cache_ttl({"Cache-Control": "max-age=junk"}, 0) is None
    assert cache_ttl({"Expires": "0"}, 0) == 0


def test_invalid_answer_cached_an_hour(make):
    r, web, _, clock = make()   # 404
    assert _fetches_at(r, web, clock, [0, INVALID_TTL - 1, INVALID_TTL + 1]) == [1, 1, 2]


def test_errors_back_off_exponentially_and_keep_a_known_delegation(make):
    r, web, _, clock = make({WK: wk("m.example.org:1", {"Cache-Control": "max-age=600"})})
    assert r.resolve("example.org").host == "m.example.org"
    web.routes[WK] = OSError("down")
    clock.t += 601
    # the failed refresh keeps the last good delegation
    assert r.resolve("example.org").host == "m.example.org"
    assert len(web.fetched) == 2
    clock.t += ERROR_TTL_FIRST - 1
    r.resolve("example.org")
    assert len(web.fetched) == 2                 # still backing off
    clock.t += 2
    assert r.resolve("example.org").host == "m.example.org"
    assert len(web.fetched) == 3                 # 2nd failure: back-off doubles
    clock.t += 2 * ERROR_TTL_FIRST - 1
    r.resolve("example.org")
    assert len(web.fetched) == 3
    clock.t += 2
    web.routes[WK] = wk("n.example.org:2")
    assert r.resolve("example.org").host == "n.example.org"
    assert len(web.fetched) == 4


def test_errors_without_history_fall_back_and_back_off(make):
    r, web, _, clock = make({WK: (503, {}, b"")})
    assert r.resolve("example.org").host == "example.org"
    clock.t += ERROR_TTL_FIRST - 1
    r.resolve("example.org")
    assert len(web.fetched) == 1
    for _ in range(12):                          # capped at an hour
        clock.t += 3601
        r.resolve("example.org")
    assert len(web.fetched) == 13


def test_forget_drops_the_cached_answer(make):
    r, web, _, _ = make({WK: wk("m.example.org:1")})
    r.resolve("example.org")
    r.forget("example.org")
    r.resolve("example.org")
    assert len(web.fetched) == 2


def test_concurrent_resolutions_share_one_fetch(config):
    gate = threading.Event()
    calls = []

    def slow_get(url, *, timeout, max_size):
        calls.append(url)
        gate.wait(5)
        return wk("m.example.org:1")

    r = Resolver(config, http_get=slow_get, srv_lookup=FakeSrv(), clock=Clock())
    results = []
    threads = [threading.Thread(target=lambda: results.append(r.resolve("example.org")))
               for _ in range(5)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    gate.set()
    for t in threads:
        t.join(5)
    assert len(calls) == 1
    assert [x.host for x in results] == ["m.example.org"] * 5
