"""The client API asking other servers (through fed.queries, with a fake federation client):
remote profiles, remote aliases, /publicRooms?server=, /keys/query and /keys/claim for
remote users, and sendToDevice to remote users as durable m.direct_to_device EDUs."""
from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.apps import app_factory
from tests.e2ee.conftest import user
from tests.federation.queries_helpers import (C3, V1, FakeClient, FakeSender, answers, fails,
                                              fed_of, hangs, slow, wire, within)
from web.app import runtime_of

BOB = "@bob:one.example"
CAROL = "@carol:two.example"


@pytest.fixture
def hs(tmp_path):
    yield from app_factory(tmp_path)


@pytest.fixture
def app(hs):
    return hs()


# ---------------------------------------------------------------------- profiles
def test_remote_profile(app):
    _, client = wire(app, FakeClient({
        "one.example": answers({"displayname": "Bob", "avatar_url": "mxc://one.example/b"}),
        "two.example": fails(404, "M_NOT_FOUND", "no such user")}))
    anon = app.test_client()
    r = anon.get(f"{C3}/profile/{BOB}")
    assert r.status_code == 200
    assert r.json == {"displayname": "Bob", "avatar_url": "mxc://one.example/b"}
    assert anon.get(f"{C3}/profile/{BOB}/displayname").json == {"displayname": "Bob"}
    assert anon.get(f"{C3}/profile/{BOB}/avatar_url").json == {
        "avatar_url": "mxc://one.example/b"}
    assert client.paths() == [f"{V1}/query/profile"]   # the rest came from the cache
    r = anon.get(f"{C3}/profile/{CAROL}")
    assert r.status_code == 404 and r.json["errcode"] == "M_NOT_FOUND"
    r = anon.get(f"{C3}/profile/@x:down.example/displayname")
    assert r.status_code == 502 and r.json["errcode"] == "M_UNKNOWN"
    # a remote field that is not set: 404
    fed_of(app).queries.invalidate_profile(BOB)
    client.handlers["one.example"] = answers({"displayname": "Bob"})
    r = anon.get(f"{C3}/profile/{BOB}/avatar_url")
    assert r.status_code == 404 and r.json["errcode"] == "M_NOT_FOUND"


# ---------------------------------------------------------------------- aliases
def test_remote_alias(app):
    alice = user(app, "alice")
    _, client = wire(app, FakeClient({
        "one.example": answers({"room_id": "!r:one.example", "servers": ["one.example"]}),
        "two.example": fails(404, "M_NOT_FOUND")}))
    got = alice.req("GET", f"{C3}/directory/room/{quote('#hall:one.example')}")
    assert got == {"room_id": "!r:one.example", "servers": ["one.example"]}
    assert client.calls[0][3] == {"room_alias": "#hall:one.example"}
    assert alice.req("GET", f"{C3}/directory/room/{quote('#x:two.example')}",
                     status=404)["errcode"] == "M_NOT_FOUND"
    assert alice.req("GET", f"{C3}/directory/room/{quote('#x:down.example')}",
                     status=502)["errcode"] == "M_UNKNOWN"
    # creating an alias of another server is still refused
    room_id = alice.create_room()
    assert alice.req("PUT", f"{C3}/directory/room/{quote('#hall:one.example')}",
                     {"room_id": room_id}, status=400)["errcode"] == "M_INVALID_PARAM"


# ---------------------------------------------------------------------- public rooms
def test_public_rooms_of_another_server(app):
    alice = user(app, "alice")
    rooms = {"chunk": [{"room_id": "!a:one.example", "name": "Alpha",
                        "num_joined_members": 3, "world_readable": True,
                        "guest_can_join": False}], "next_batch": "nb",
             "total_room_count_estimate": 1}
    _, client = wire(app, FakeClient({"one.example": answers(rooms)}))
    got = alice.req("GET", f"{C3}/publicRooms", query={"server": "one.example", "limit": "5",
                                                       "since": "tok"})
    assert got == rooms
    assert client.calls[-1][:4] == ("GET", "one.example", f"{V1}/publicRooms",
                                    {"limit": "5", "since": "tok"})
    got = alice.req("POST", f"{C3}/publicRooms?server=one.example",
                    {"limit": 2, "filter": {"generic_search_term": "alp"}})
    assert got["chunk"] == rooms["chunk"]
    method, _, _, _, body, _ = client.calls[-1]
    assert method == "POST" and body["filter"] == {"generic_search_term": "alp"}
    assert body["limit"] == 2
    # without a filter the POST is asked as a GET
    alice.req("POST", f"{C3}/publicRooms?server=one.example", {"limit": 1})
    assert client.calls[-1][0] == "GET" and client.calls[-1][3] == {"limit": "1"}
    assert alice.req("GET", f"{C3}/publicRooms", query={"server": "down.example"},
                     status=502)["errcode"] == "M_UNKNOWN"
    # our own name is still the local list
    assert alice.req("GET", f"{C3}/publicRooms", query={"server": "test.local"})["chunk"] == []


def test_without_federation_remote_lookups_are_404(hs):
    app = hs(federation={"enabled": False})
    alice = user(app, "alice")
    assert fed_of(app).queries is None
    assert alice.req("GET", f"{C3}/publicRooms", query={"server": "one.example"},
                     status=404)["errcode"] == "M_NOT_FOUND"
    assert alice.req("GET", f"{C3}/directory/room/{quote('#x:one.example')}",
                     status=404)["errcode"] == "M_NOT_FOUND"
    got = alice.query([BOB])
    assert got["failures"] == {"one.example": {"status": 503, "message": got["failures"][
        "one.example"]["message"]}}


# ---------------------------------------------------------------------- keys
def _dev(user_id, device_id):
    return {"user_id": user_id, "device_id": device_id, "algorithms": ["a"],
            "keys": {f"ed25519:{device_id}": "k"}, "signatures": {}}


def test_keys_query_local_and_remote(app):
    alice = user(app, "alice")
    alice.upload(device_keys=alice.device_keys())
    wire(app, FakeClient({
        "one.example": slow(0.1, {"device_keys": {BOB: {"B1": _dev(BOB, "B1")}},
                                  "master_keys": {BOB: {"user_id": BOB, "usage": ["master"],
                                                        "keys": {"ed25519:m": "m"}}}}),
        "two.example": hangs(30)}))
    with within(1.5):
        got = alice.req("POST", f"{C3}/keys/query",
                        {"device_keys": {alice.user_id: [], BOB: [], CAROL: []},
                         "timeout": 500})
    assert set(got["device_keys"]) == {alice.user_id, BOB}
    assert got["device_keys"][BOB] == {"B1": _dev(BOB, "B1")}
    assert alice.device_id in got["device_keys"][alice.user_id]
    assert set(got["master_keys"]) == {BOB}
    assert got["failures"] == {"two.example": {"status": 503, "message": "Timed out"}}
    assert alice.req("POST", f"{C3}/keys/query", {"device_keys": {BOB: []}, "timeout": "x"},
                     status=400)["errcode"] == "M_BAD_JSON"


def test_keys_claim_local_and_remote(app):
    alice, bob_local = user(app, "alice"), user(app, "bob")
    alice.upload(device_keys=alice.device_keys(), one_time_keys=alice.otks(1))
    _, client = wire(app, FakeClient({"one.example": answers({"one_time_keys": {
        BOB: {"B1": {"signed_curve25519:R1": {"key": "remote"}}}}})}))
    got = bob_local.claim({alice.user_id: {alice.device_id: "signed_curve25519"},
                           BOB: {"B1": "signed_curve25519"},
                           CAROL: {"C1": "signed_curve25519"}})
    assert list(got["one_time_keys"][alice.user_id][alice.device_id]) == [
        f"signed_curve25519:{alice.device_id}00000"]
    assert got["one_time_keys"][BOB] == {"B1": {"signed_curve25519:R1": {"key": "remote"}}}
    assert got["failures"] == {"two.example": {"status": 503,
                                               "message": "connection refused"}}
    assert {c[1] for c in client.calls} == {"one.example", "two.example"}
    assert all(c[2] == f"{V1}/user/keys/claim" for c in client.calls)


# ---------------------------------------------------------------------- to-device
def _to_device(sender, messages, txn, status=200):
    return sender.req("PUT", f"{C3}/sendToDevice/m.test/{txn}", {"messages": messages},
                      status=status)


def test_send_to_device_to_remote_users_queues_one_edu_per_destination(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    fake = FakeSender()
    wire(app, sender=fake)
    since = bob.sync()["next_batch"]
    _to_device(alice, {bob.user_id: {bob.device_id: {"n": 0}},
                       BOB: {"B1": {"n": 1}, "B2": {"n": 2}},
                       "@bob2:one.example": {"*": {"n": 3}},
                       CAROL: {"C1": {"n": 4}}}, "t1")
    assert fake.committed == fake.queued and len(fake.queued) == 2
    by_dest = {d: (t, c) for d, t, c in fake.queued}
    assert set(by_dest) == {"one.example", "two.example"}
    edu_type, one = by_dest["one.example"]
    assert edu_type == "m.direct_to_device"
    assert one["sender"] == alice.user_id and one["type"] == "m.test"
    assert one["messages"] == {BOB: {"B1": {"n": 1}, "B2": {"n": 2}},
                               "@bob2:one.example": {"*": {"n": 3}}}
    assert by_dest["two.example"][1]["messages"] == {CAROL: {"C1": {"n": 4}}}
    ids = {c["message_id"] for _, _, c in fake.queued}
    assert len(ids) == 2 and all(isinstance(i, str) and i for i in ids)
    # local delivery unchanged
    td = bob.sync(since=since)["to_device"]["events"]
    assert [(e["sender"], e["content"]) for e in td] == [(alice.user_id, {"n": 0})]
    # the same txn again queues nothing; a new txn gets new message ids
    _to_device(alice, {BOB: {"B1": {"n": 1}}}, "t1")
    assert len(fake.queued) == 2
    _to_device(alice, {BOB: {"B1": {"n": 5}}}, "t2")
    assert len(fake.queued) == 3 and fake.queued[-1][2]["message_id"] not in ids


def test_send_to_device_remote_rows_are_in_the_federation_outbox(app):
    fed = fed_of(app)
    if fed.sender is None or type(fed.sender).__name__ != "FederationSender":
        pytest.skip("the real FederationSender is not built in this tree")
    alice = user(app, "alice")
    _to_device(alice, {BOB: {"B1": {"n": 1}}}, "t1")
    rows = runtime_of(app).db.run("outbox", lambda t: t.query(
        "SELECT destination, edu_type, content FROM federation_outbox"))
    assert [(d, e) for d, e, _ in rows] == [("one.example", "m.direct_to_device")]


def test_send_to_device_without_federation_drops_remote_targets(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    fed_of(app).sender = None
    since = bob.sync()["next_batch"]
    _to_device(alice, {BOB: {"B1": {"n": 1}}, bob.user_id: {"*": {"n": 2}}}, "t1")
    td = bob.sync(since=since)["to_device"]["events"]
    assert [e["content"] for e in td] == [{"n": 2}]
    assert runtime_of(app).db.run("n", lambda t: t.query_value(
        "SELECT COUNT(*) FROM federation_to_device_txns")) == 0


def test_send_to_device_bad_remote_content_is_rejected_and_queues_nothing(app):
    alice = user(app, "alice")
    fake = FakeSender()
    wire(app, sender=fake)
    assert _to_device(alice, {BOB: {"B1": "not an object"}}, "t1",
                      status=400)["errcode"] == "M_BAD_JSON"
    assert _to_device(alice, {BOB: ["x"]}, "t2", status=400)["errcode"] == "M_BAD_JSON"
    assert fake.queued == []
