"""RemoteQueries (federation/remote_queries.py) against a fake federation client: profiles
with their cache, aliases, public rooms, and the key queries' parallel fan-out with servers
that fail, hang past the timeout or answer garbage."""
from __future__ import annotations

import pytest

from atrium.errors import MatrixError
from federation.errors import NotRetrying
from federation.remote_queries import RemoteQueries
from tests.federation.queries_helpers import (V1, FakeClient, answers, fails, fake_fed, hangs,
                                              slow, within)

BOB = "@bob:one.example"
CAROL = "@carol:two.example"
DAVE = "@dave:three.example"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make(handlers=None, **kw):
    client = FakeClient(handlers)
    clock = Clock()
    rq = RemoteQueries(fake_fed(client, remote_devices=kw.pop("remote_devices", None)),
                       clock=clock, **kw)
    return rq, client, clock


def status_of(fn, *args, **kw):
    with pytest.raises(MatrixError) as e:
        fn(*args, **kw)
    return e.value.status, e.value.errcode


# ---------------------------------------------------------------------- profiles
def test_profile_is_asked_once_and_cached():
    rq, client, clock = make({"one.example": answers(
        {"displayname": "Bob", "avatar_url": "mxc://one.example/b", "m.tz": "UTC"})})
    assert rq.profile(BOB) == {"displayname": "Bob", "avatar_url": "mxc://one.example/b",
                               "m.tz": "UTC"}
    (call,) = client.calls
    assert call[:4] == ("GET", "one.example", f"{V1}/query/profile", {"user_id": BOB})
    assert rq.profile(BOB) == rq.profile(BOB)
    # a field is answered from the cached whole profile
    assert rq.profile(BOB, "displayname") == {"displayname": "Bob"}
    assert len(client.calls) == 1
    clock.now += 599
    rq.profile(BOB)
    assert len(client.calls) == 1
    clock.now += 2  # past the TTL
    rq.profile(BOB)
    assert len(client.calls) == 2


def test_profile_invalidation_asks_again():
    names = iter(["Bob", "Robert"])
    rq, client, _ = make({"one.example": lambda *a: {"displayname": next(names)}})
    assert rq.profile(BOB, "displayname") == {"displayname": "Bob"}
    assert rq.profile(BOB, "displayname") == {"displayname": "Bob"}
    rq.invalidate_profile(BOB)
    assert rq.profile(BOB, "displayname") == {"displayname": "Robert"}
    assert [c[3] for c in client.calls] == [{"user_id": BOB, "field": "displayname"}] * 2


def test_profile_cache_is_bounded():
    rq, client, _ = make({"one.example": answers({"displayname": "x"})},
                         profile_cache_size=3)
    for i in range(5):
        rq.profile(f"@u{i}:one.example")
    assert len(rq._profiles) == 3
    rq.profile("@u0:one.example")   # evicted: asked again
    assert len(client.calls) == 6


def test_profile_errors():
    rq, client, _ = make({"one.example": fails(404, "M_NOT_FOUND", "who?"),
                          "two.example": fails(403, "M_FORBIDDEN"),
                          "three.example": fails(500),
                          "four.example": answers(["not", "an", "object"])})
    assert status_of(rq.profile, BOB) == (404, "M_NOT_FOUND")
    assert status_of(rq.profile, CAROL) == (403, "M_FORBIDDEN")
    assert status_of(rq.profile, DAVE) == (502, "M_UNKNOWN")
    assert status_of(rq.profile, "@x:four.example") == (502, "M_UNKNOWN")
    assert status_of(rq.profile, "@x:nowhere.example") == (502, "M_UNKNOWN")
    # failures are not cached
    n = len(client.calls)
    assert status_of(rq.profile, BOB) == (404, "M_NOT_FOUND")
    assert len(client.calls) == n + 1


def test_profile_drops_values_of_the_wrong_type():
    rq, _, _ = make({"one.example": answers({"displayname": 5, "avatar_url": None,
                                             "m.tz": "UTC"})})
    assert rq.profile(BOB) == {"m.tz": "UTC"}
    assert rq.profile(BOB, "displayname") == {}


def test_backing_off_destination_fails_fast():
    def not_retrying(*a):
        raise NotRetrying("one.example", 123)
    rq, _, _ = make({"one.example": not_retrying})
    with within(0.5):
        assert status_of(rq.profile, BOB) == (502, "M_UNKNOWN")
        got = rq.keys_query({BOB: []}, 5.0)
    assert got["failures"] == {"one.example": {"status": 503, "message": "Not ready for retry"}}


# ---------------------------------------------------------------------- aliases
def test_directory():
    rq, client, _ = make({"one.example": answers(
        {"room_id": "!r:one.example", "servers": ["one.example", "two.example", 5, "one.example"]})})
    assert rq.directory("#hall:one.example") == {
        "room_id": "!r:one.example", "servers": ["one.example", "two.example"]}
    assert client.calls[0][:4] == ("GET", "one.example", f"{V1}/query/directory",
                                   {"room_alias": "#hall:one.example"})


def test_directory_errors():
    rq, _, _ = make({"one.example": fails(404, "M_NOT_FOUND"),
                     "two.example": answers({"room_id": 7, "servers": []}),
                     "three.example": fails(500)})
    assert status_of(rq.directory, "#a:one.example") == (404, "M_NOT_FOUND")
    assert status_of(rq.directory, "#a:two.example") == (502, "M_UNKNOWN")
    assert status_of(rq.directory, "#a:three.example") == (502, "M_UNKNOWN")
    assert status_of(rq.directory, "#a:nowhere.example") == (502, "M_UNKNOWN")


# ---------------------------------------------------------------------- public rooms
ROOMS = {"chunk": [{"room_id": "!a:one.example", "name": "Alpha", "num_joined_members": 2},
                   {"room_id": "!b:one.example", "name": "Beta", "num_joined_members": 1},
                   "garbage"],
         "next_batch": "n1", "total_room_count_estimate": 2}


def test_public_rooms_get_and_post():
    rq, client, _ = make({"one.example": answers(ROOMS)})
    got = rq.public_rooms("one.example", limit=2, since="s0")
    assert [r["room_id"] for r in got["chunk"]] == ["!a:one.example", "!b:one.example"]
    assert got["next_batch"] == "n1" and got["total_room_count_estimate"] == 2
    assert client.calls[-1][:4] == ("GET", "one.example", f"{V1}/publicRooms",
                                    {"limit": "2", "since": "s0"})
    rq.public_rooms("one.example", search_filter={"generic_search_term": "al"}, limit=5,
                    include_all_networks=True)
    method, _, path, _, body, _ = client.calls[-1]
    assert (method, path) == ("POST", f"{V1}/publicRooms")
    assert body == {"filter": {"generic_search_term": "al"}, "limit": 5,
                    "include_all_networks": True}


def test_public_rooms_filter_falls_back_to_get_when_post_is_unknown():
    calls = []

    def no_post(method, path, query, body):
        calls.append(method)
        if method == "POST":
            return fails(404, "M_UNRECOGNIZED")(method, path, query, body)
        return ROOMS
    rq, _, _ = make({"one.example": no_post})
    got = rq.public_rooms("one.example", search_filter={"generic_search_term": "bet"}, limit=1)
    assert calls == ["POST", "GET"]
    assert [r["name"] for r in got["chunk"]] == ["Beta"] and "next_batch" not in got


def test_public_rooms_errors():
    rq, _, _ = make({"one.example": answers({"rooms": []}),
                     "two.example": fails(403, "M_FORBIDDEN")})
    assert status_of(rq.public_rooms, "one.example") == (502, "M_UNKNOWN")
    assert status_of(rq.public_rooms, "two.example") == (502, "M_UNKNOWN")
    assert status_of(rq.public_rooms, "nowhere.example") == (502, "M_UNKNOWN")
    assert status_of(rq.public_rooms, "two.example",
                     search_filter={"generic_search_term": "x"}) == (502, "M_UNKNOWN")


# ---------------------------------------------------------------------- keys
def dev(user_id, device_id):
    return {"user_id": user_id, "device_id": device_id, "algorithms": ["a"],
            "keys": {f"ed25519:{device_id}": "k"}}


def xkey(user_id, usage):
    return {"user_id": user_id, "usage": [usage], "keys": {"ed25519:x": "x"}}


def query_answer(user_id, *devices):
    return {"device_keys": {user_id: {d: dev(user_id, d) for d in devices}},
            "master_keys": {user_id: xkey(user_id, "master")},
            "self_signing_keys": {user_id: xkey(user_id, "self_signing")}}


def test_keys_query_fans_out_in_parallel_and_merges():
    rq, client, _ = make({"one.example": slow(0.3, query_answer(BOB, "B1")),
                          "two.example": slow(0.3, query_answer(CAROL, "C1", "C2"))})
    with within(0.55):  # both at once, not 0.6 s one after the other
        got = rq.keys_query({BOB: [], CAROL: ["C2"]}, 5.0)
    assert got["failures"] == {}
    assert got["device_keys"] == {BOB: {"B1": dev(BOB, "B1")}, CAROL: {"C2": dev(CAROL, "C2")}}
    assert set(got["master_keys"]) == {BOB, CAROL}
    assert set(got["self_signing_keys"]) == {BOB, CAROL}
    bodies = {c[1]: c[4] for c in client.calls}
    assert bodies == {"one.example": {"device_keys": {BOB: []}},
                      "two.example": {"device_keys": {CAROL: ["C2"]}}}
    assert all(c[2] == f"{V1}/user/keys/query" and 0 < c[5] <= 5.0 for c in client.calls)


def test_keys_query_lists_slow_and_failing_servers_and_answers_the_rest_in_time():
    rq, _, _ = make({"one.example": answers(query_answer(BOB, "B1")),
                     "two.example": hangs(30),
                     "three.example": fails(500, "M_UNKNOWN", "boom")})
    with within(1.0):
        got = rq.keys_query({BOB: [], CAROL: [], DAVE: [], "@x:nowhere.example": []}, 0.4)
    assert got["device_keys"] == {BOB: {"B1": dev(BOB, "B1")}}
    assert got["failures"] == {
        "two.example": {"status": 503, "message": "Timed out"},
        "three.example": {"status": 500, "message": "boom"},
        "nowhere.example": {"status": 503, "message": "connection refused"},
    }


def test_keys_query_keeps_only_what_was_asked_of_that_server():
    evil = query_answer(BOB, "B1", "B2")
    evil["device_keys"][BOB]["B3"] = dev(BOB, "OTHER")          # device id mismatch
    evil["device_keys"][BOB]["B4"] = dev("@eve:one.example", "B4")  # someone else's
    evil["device_keys"][CAROL] = {"C1": dev(CAROL, "C1")}        # another server's user
    evil["device_keys"]["@eve:one.example"] = {"E": dev("@eve:one.example", "E")}  # not asked
    evil["master_keys"][CAROL] = xkey(CAROL, "master")
    evil["self_signing_keys"][BOB] = xkey("@eve:one.example", "self_signing")
    rq, _, _ = make({"one.example": answers(evil), "two.example": answers({"device_keys": {}})})
    got = rq.keys_query({BOB: ["B1", "B3", "B4"], CAROL: []}, 2.0)
    assert got["device_keys"] == {BOB: {"B1": dev(BOB, "B1")}, CAROL: {}}
    assert set(got["master_keys"]) == {BOB}
    assert got["self_signing_keys"] == {}
    assert got["failures"] == {}


def test_keys_query_garbage_is_a_failure():
    rq, _, _ = make({"one.example": answers("nope"), "two.example": answers({"device_keys": 5})})
    got = rq.keys_query({BOB: [], CAROL: []}, 2.0)
    assert set(got["failures"]) == {"one.example", "two.example"}
    assert all(f["status"] == 503 for f in got["failures"].values())
    assert got["device_keys"] == {}


def test_keys_query_skips_local_and_invalid_users():
    rq, client, _ = make()
    got = rq.keys_query({"@me:test.local": [], "nosigil": []}, 2.0)
    assert client.calls == [] and got["failures"] == {} and got["device_keys"] == {}


class Tracked:
    """A remote-device cache (store/remote_devices.py's query_keys) that tracks BOB."""

    def __init__(self):
        self.asked = []

    def query_keys(self, wanted):
        self.asked.append(dict(wanted))
        out = {"device_keys": {}, "master_keys": {}, "self_signing_keys": {}, "missing": []}
        for u in wanted:
            if u == BOB:
                out["device_keys"][u] = {"B9": dev(BOB, "B9")}
                out["master_keys"][u] = xkey(BOB, "master")
            else:
                out["missing"].append(u)
        return out


def test_keys_query_answers_tracked_users_from_the_device_cache():
    cache = Tracked()
    rq, client, _ = make({"two.example": answers(query_answer(CAROL, "C1"))},
                         remote_devices=cache)
    got = rq.keys_query({BOB: [], CAROL: []}, 2.0)
    assert cache.asked == [{BOB: [], CAROL: []}]
    assert [c[1] for c in client.calls] == ["two.example"]
    assert got["device_keys"] == {BOB: {"B9": dev(BOB, "B9")}, CAROL: {"C1": dev(CAROL, "C1")}}
    assert set(got["master_keys"]) == {BOB, CAROL}


def test_keys_query_asks_the_server_when_the_cache_breaks():
    class Broken:
        def query_keys(self, wanted):
            raise RuntimeError("db gone")
    rq, client, _ = make({"one.example": answers(query_answer(BOB, "B1"))},
                         remote_devices=Broken())
    assert rq.keys_query({BOB: []}, 2.0)["device_keys"] == {BOB: {"B1": dev(BOB, "B1")}}


def test_keys_claim_fans_out_filters_and_lists_failures():
    def claim_answer(method, path, query, body):
        assert path == f"{V1}/user/keys/claim"
        return {"one_time_keys": {
            BOB: {"B1": {"signed_curve25519:AAA": {"key": "k"}},
                  "B2": {"curve25519:XXX": "wrong algorithm"},
                  "B3": {"signed_curve25519:ZZZ": {"key": "not asked"}}},
            "@eve:one.example": {"E": {"signed_curve25519:E": {"key": "e"}}}}}
    rq, client, _ = make({"one.example": claim_answer, "two.example": hangs(30)})
    with within(1.0):
        got = rq.keys_claim({BOB: {"B1": "signed_curve25519", "B2": "signed_curve25519"},
                             CAROL: {"C1": "signed_curve25519"}}, 0.3)
    assert got["one_time_keys"] == {BOB: {"B1": {"signed_curve25519:AAA": {"key": "k"}}}}
    assert got["failures"] == {"two.example": {"status": 503, "message": "Timed out"}}
    body = next(c[4] for c in client.calls if c[1] == "one.example")
    assert body == {"one_time_keys": {BOB: {"B1": "signed_curve25519",
                                            "B2": "signed_curve25519"}}}


def test_keys_claim_garbage_is_a_failure():
    rq, _, _ = make({"one.example": answers({"one_time_keys": []})})
    got = rq.keys_claim({BOB: {"B1": "signed_curve25519"}}, 1.0)
    assert got == {"one_time_keys": {}, "failures": {
        "one.example": {"status": 503, "message": got["failures"]["one.example"]["message"]}}}


def test_fan_out_is_bounded_but_all_servers_are_asked():
    servers = {f"s{i}.example": slow(0.1, {"device_keys": {}}) for i in range(6)}
    client = FakeClient(servers)
    rq = RemoteQueries(fake_fed(client), max_parallel=3)
    with within(0.6):
        got = rq.keys_query({f"@u:s{i}.example": [] for i in range(6)}, 2.0)
    assert got["failures"] == {} and len(client.calls) == 6
