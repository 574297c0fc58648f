"""The rooms half of Synapse's admin API, reads and blocks: the room list (ordering,
direction, search, filters, paging), details, members, state, messages, forward
extremities, block / unblock and what a block refuses, and the admin-only guard."""
from __future__ import annotations

import logging
import time

import pytest

from tests.apps import app_factory
from tests.rooms.conftest import user
from web.app import runtime_of

V = "/_matrix/client/v3"
A1 = "/_synapse/admin/v1"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    factory = app_factory(tmp_path_factory.mktemp("admin_rooms"))
    app = next(factory)()
    root = user(app, "root", admin=True)
    alice, bob, carol = (user(app, n) for n in ("alice", "bob", "carol"))
    # a public named room with an alias, three members, encrypted
    big = alice.create_room(name="Zebra Crossing", preset="public_chat",
                            room_alias_name="zebra", visibility="public")
    bob.req("POST", f"{V}/rooms/{big}/join", {})
    carol.req("POST", f"{V}/rooms/{big}/join", {})
    alice.state(big, "m.room.encryption", body={"algorithm": "m.megolm.v1.aes-sha2"})
    alice.state(big, "m.room.topic", body={"topic": "stripes"})
    alice.send(big, {"msgtype": "m.text", "body": "first"})
    # a private named room of two, not federatable
    small = bob.create_room(name="apple pie", creation_content={"m.federate": False})
    bob.req("POST", f"{V}/rooms/{small}/invite", {"user_id": alice.user_id})
    alice.req("POST", f"{V}/rooms/{small}/join", {})
    # an unnamed room its only member left
    empty = carol.create_room()
    carol.req("POST", f"{V}/rooms/{empty}/leave", {})
    yield dict(app=app, root=root, alice=alice, bob=bob, carol=carol, big=big, small=small,
               empty=empty)
    for _ in factory:
        pass


def rooms(env, query="", status=200):
    return env["root"].req("GET", f"{A1}/rooms{query}", status=status)


def test_list_shapes_each_room_as_synapse_does(env):
    out = rooms(env)
    assert out["offset"] == 0 and out["total_rooms"] == 3
    assert "next_batch" not in out and "prev_batch" not in out
    by_id = {r["room_id"]: r for r in out["rooms"]}
    big = by_id[env["big"]]
    assert set(big) == {"room_id", "name", "canonical_alias", "joined_members",
                        "joined_local_members", "version", "creator", "encryption",
                        "federatable", "public", "join_rules", "guest_access",
                        "history_visibility", "state_events", "room_type"}
    assert big["name"] == "Zebra Crossing" and big["canonical_alias"] == "#zebra:test.local"
    assert big["joined_members"] == 3 and big["joined_local_members"] == 3
    assert big["creator"] == env["alice"].user_id and big["public"] is True
    assert big["encryption"] == "m.megolm.v1.aes-sha2" and big["join_rules"] == "public"
    assert big["federatable"] is True and big["history_visibility"] == "shared"
    assert big["state_events"] >= 9 and big["room_type"] is None
    small = by_id[env["small"]]
    assert small["federatable"] is False and small["public"] is False
    assert small["join_rules"] == "invite" and small["joined_members"] == 2
    empty = by_id[env["empty"]]
    assert empty["name"] is None and empty["joined_members"] == 0


def test_list_orders_and_directions(env):
    names = [r["name"] for r in rooms(env)["rooms"]]
    assert names == ["Zebra Crossing", "apple pie", None]   # by name; no name sorts last
    assert [r["name"] for r in rooms(env, "?dir=b")["rooms"]] == [None, "apple pie",
                                                                 "Zebra Crossing"]
    sizes = [r["joined_members"] for r in rooms(env, "?order_by=joined_members")["rooms"]]
    assert sizes == [3, 2, 0]
    assert [r["joined_members"] for r in rooms(env, "?order_by=size&dir=b")["rooms"]] == \
        [0, 2, 3]
    for order in ("alphabetical", "canonical_alias", "joined_local_members", "version",
                  "creator", "encryption", "federatable", "public", "join_rules",
                  "guest_access", "history_visibility", "state_events"):
        assert rooms(env, f"?order_by={order}")["total_rooms"] == 3
    fed = [r["federatable"] for r in rooms(env, "?order_by=federatable")["rooms"]]
    assert fed == [False, True, True]


def test_list_search_term_matches_name_alias_or_id(env):
    assert [r["room_id"] for r in rooms(env, "?search_term=APPLE")["rooms"]] == [env["small"]]
    assert [r["room_id"] for r in rooms(env, "?search_term=zeb")["rooms"]] == [env["big"]]
    out = rooms(env, f"?search_term={env['empty']}")
    assert [r["room_id"] for r in out["rooms"]] == [env["empty"]] and out["total_rooms"] == 1
    assert rooms(env, "?search_term=%25")["total_rooms"] == 0   # '%' is not a wildcard
    r = env["root"].req("GET", f"{A1}/rooms?search_term=", status=400)
    assert r["errcode"] == "M_INVALID_PARAM"


def test_list_filters_and_paging(env):
    assert [r["room_id"] for r in rooms(env, "?public_rooms=true")["rooms"]] == [env["big"]]
    assert rooms(env, "?public_rooms=false")["total_rooms"] == 2
    assert [r["room_id"] for r in rooms(env, "?empty_rooms=true")["rooms"]] == [env["empty"]]
    assert rooms(env, "?empty_rooms=false")["total_rooms"] == 2
    page = rooms(env, "?limit=1")
    assert len(page["rooms"]) == 1 and page["next_batch"] == 1 and page["total_rooms"] == 3
    page2 = rooms(env, "?limit=1&from=2")
    assert page2["rooms"][0]["room_id"] == env["empty"] and page2["prev_batch"] == 1
    assert "next_batch" not in page2
    past = rooms(env, "?from=10")
    assert past["rooms"] == [] and past["total_rooms"] == 3 and past["prev_batch"] == 0


@pytest.mark.parametrize("query", ["?order_by=colour", "?dir=x", "?limit=-1", "?from=x",
                                   "?public_rooms=maybe"])
def test_list_rejects_bad_parameters(env, query):
    assert rooms(env, query, status=400)["errcode"] == "M_INVALID_PARAM"


def test_details_members_and_state(env):
    root, big = env["root"], env["big"]
    d = root.req("GET", f"{A1}/rooms/{big}")
    assert d["topic"] == "stripes" and d["avatar"] is None
    assert d["joined_local_devices"] == 3 and d["forgotten"] is False
    assert d["tombstoned"] is False and d["replacement_room"] is None
    assert {"room_id", "name", "joined_members", "version", "public"} <= set(d)
    m = root.req("GET", f"{A1}/rooms/{big}/members")
    assert m["total"] == 3 and sorted(m["members"]) == sorted(
        env[n].user_id for n in ("alice", "bob", "carol"))
    state = root.req("GET", f"{A1}/rooms/{big}/state")["state"]
    types = {e["type"] for e in state}
    assert {"m.room.create", "m.room.member", "m.room.name", "m.room.topic"} <= types
    assert all("event_id" in e and "content" in e for e in state)
    only = root.req("GET", f"{A1}/rooms/{big}/state?type=m.room.member")["state"]
    assert len(only) == 3 and {e["type"] for e in only} == {"m.room.member"}
    # the room all its members left (and forgot): forgotten
    empty = env["empty"]
    env["carol"].req("POST", f"{V}/rooms/{empty}/forget", {})
    assert root.req("GET", f"{A1}/rooms/{empty}")["forgotten"] is True
    for path in ("", "/members", "/state", "/messages"):
        r = root.req("GET", f"{A1}/rooms/!nope:test.local{path}", status=404)
        assert r["errcode"] == "M_NOT_FOUND"


def test_messages_ignore_history_visibility(env):
    root, alice = env["root"], env["alice"]
    room = alice.create_room(preset="private_chat")
    alice.state(room, "m.room.history_visibility", body={"history_visibility": "joined"})
    alice.send(room, {"msgtype": "m.text", "body": "secret"})
    out = root.req("GET", f"{A1}/rooms/{room}/messages?dir=b&limit=50")
    assert "secret" in [e["content"].get("body") for e in out["chunk"]]
    # the admin, not a member, cannot read it through the client API
    root.req("GET", f"{V}/rooms/{room}/messages?dir=b", status=403)


def test_forward_extremities_by_id_and_alias(env):
    root, big = env["root"], env["big"]
    out = root.req("GET", f"{A1}/rooms/{big}/forward_extremities")
    assert out["count"] == 1 and set(out["results"][0]) == {"event_id", "state_group",
                                                           "depth", "received_ts"}
    by_alias = root.req("GET", f"{A1}/rooms/%23zebra:test.local/forward_extremities")
    assert by_alias == out
    root.req("GET", f"{A1}/rooms/%23nope:test.local/forward_extremities", status=404)
    root.req("GET", f"{A1}/rooms/bogus/forward_extremities", status=400)


def test_admin_token_required(env):
    c = env["app"].test_client()
    assert c.get(f"{A1}/rooms").status_code == 401
    for path in ("/rooms", f"/rooms/{env['big']}", f"/rooms/{env['big']}/members",
                 f"/rooms/{env['big']}/state", f"/rooms/{env['big']}/block"):
        r = env["alice"].req("GET", f"{A1}{path}", status=403)
        assert r["errcode"] == "M_FORBIDDEN"
    env["alice"].req("PUT", f"{A1}/rooms/{env['big']}/block", {"block": True}, status=403)


def test_block_refuses_joins_invites_and_knocks(env, caplog):
    root, alice, bob, carol = env["root"], env["alice"], env["bob"], env["carol"]
    room = alice.create_room(preset="public_chat")
    assert root.req("GET", f"{A1}/rooms/{room}/block") == {"block": False}
    with caplog.at_level(logging.INFO, logger="web.synapse_admin_rooms"):
        assert root.req("PUT", f"{A1}/rooms/{room}/block", {"block": True}) == {"block": True}
    lines = [r.getMessage() for r in caplog.records if "blocked room" in r.getMessage()]
    assert lines == [f"admin {root.user_id}: blocked room {room}"]
    assert root.req("GET", f"{A1}/rooms/{room}/block") == {"block": True,
                                                          "user_id": root.user_id}
    for path in (f"{V}/rooms/{room}/join", f"{V}/join/{room}", f"{V}/knock/{room}"):
        r = bob.req("POST", path, {}, status=403)
        assert r["errcode"] == "M_FORBIDDEN" and "blocked" in r["error"]
    r = alice.req("POST", f"{V}/rooms/{room}/invite", {"user_id": carol.user_id}, status=403)
    assert r["errcode"] == "M_FORBIDDEN"
    for who, target, membership in ((alice, carol, "invite"), (bob, bob, "join")):
        r = who.state(room, "m.room.member", target.user_id, {"membership": membership},
                      status=403)
        assert r["errcode"] == "M_FORBIDDEN"
    # members may still talk and leave
    alice.send(room, {"msgtype": "m.text", "body": "still here"})
    alice.state(room, "m.room.member", carol.user_id, {"membership": "ban"})
    # unblocked: joins work again
    root.req("PUT", f"{A1}/rooms/{room}/block", {"block": False})
    assert root.req("GET", f"{A1}/rooms/{room}/block") == {"block": False}
    bob.req("POST", f"{V}/rooms/{room}/join", {})


def test_block_a_room_not_known_and_bad_bodies(env):
    root = env["root"]
    unknown = "!notyet:elsewhere.example"
    root.req("PUT", f"{A1}/rooms/{unknown}/block", {"block": True})
    assert root.req("GET", f"{A1}/rooms/{unknown}/block")["block"] is True
    assert root.req("PUT", f"{A1}/rooms/{unknown}/block", {}, status=400)["errcode"] == \
        "M_MISSING_PARAM"
    assert root.req("PUT", f"{A1}/rooms/{unknown}/block", {"block": "yes"},
                    status=400)["errcode"] == "M_BAD_JSON"
    assert root.req("GET", f"{A1}/rooms/not-a-room/block", status=400)["errcode"] == \
        "M_UNKNOWN"
    r = root.c.put(f"{A1}/rooms/{unknown}/block", data=b"{nope", headers=root.h)
    assert r.status_code == 400 and r.get_json()["errcode"] == "M_NOT_JSON"


def test_list_is_one_query_fast_for_many_rooms(tmp_path):
    """10,000 rooms (rows written straight into the tables the list reads): one page in
    well under a second."""
    factory = app_factory(tmp_path)
    app = next(factory)()
    try:
        root = user(app, "root", admin=True)
        db = runtime_of(app).db
        n = 10_000

        def fill(t):
            rooms, state, events = [], [], []
            for i in range(n):
                rid = f"!r{i:05d}:test.local"
                rooms.append((rid, "10", "@u:test.local", 0, i % 2))
                for j, (etype, content) in enumerate((
                        ("m.room.create", '{"creator": "@u:test.local"}'),
                        ("m.room.name", f'{{"name": "room {i:05d}"}}'),
                        ("m.room.join_rules", '{"join_rule": "public"}'))):
                    eid = f"$e{i}_{j}"
                    state.append((rid, etype, "", eid, None))
                    events.append((i * 4 + j + 1, eid, rid, etype, "", "@u:test.local",
                                   j + 1, 0, 0, f'{{"content": {content}}}'))
                state.append((rid, "m.room.member", "@u:test.local", f"$m{i}", "join"))
            t.executemany("INSERT INTO rooms (room_id, room_version, creator, created_ts,"
                          " is_public) VALUES (?, ?, ?, ?, ?)", rooms)
            t.executemany("INSERT INTO current_state (room_id, type, state_key, event_id,"
                          " membership) VALUES (?, ?, ?, ?, ?)", state)
            t.executemany("INSERT INTO events (stream_ordering, event_id, room_id, type,"
                          " state_key, sender, depth, origin_server_ts, received_ts, json)"
                          " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", events)

        db.run("fill", fill, write=True)
        root.req("GET", f"{A1}/rooms?limit=1")   # warm up
        started = time.perf_counter()
        out = root.req("GET", f"{A1}/rooms?order_by=name&dir=b&limit=100&from=200")
        took = time.perf_counter() - started
        assert out["total_rooms"] == n and len(out["rooms"]) == 100
        assert out["rooms"][0]["name"] == f"room {n - 201:05d}"
        assert out["rooms"][0]["joined_local_members"] == 1
        started = time.perf_counter()
        hit = root.req("GET", f"{A1}/rooms?search_term=room%2009999")
        took = max(took, time.perf_counter() - started)
        assert [r["name"] for r in hit["rooms"]] == ["room 09999"]
        print(f"list of {n} rooms: {took * 1000:.0f} ms")
        assert took < 3.0
    finally:
        for _ in factory:
            pass


def test_block_refuses_invites_from_other_servers(env):
    root = env["root"]
    blocked, other = "!blockedfed:remote.example", "!openfed:remote.example"
    root.req("PUT", f"{A1}/rooms/{blocked}/block", {"block": True})
    c = env["app"].test_client()
    body = {"event": {}, "room_version": "10", "invite_room_state": []}
    r = c.put(f"/_matrix/federation/v2/invite/{blocked}/$ev", json=body)
    assert r.status_code == 403 and r.get_json()["errcode"] == "M_FORBIDDEN"
    r = c.put(f"/_matrix/federation/v1/invite/{blocked}/$ev", json={})
    assert r.status_code == 403
    # a room not blocked gets the usual answer (here: the request is not signed)
    assert c.put(f"/_matrix/federation/v2/invite/{other}/$ev", json=body).status_code == 401
