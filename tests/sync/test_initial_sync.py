"""GET /initialSync and GET /rooms/{roomId}/initialSync (old_sync.yaml,
room_initial_sync.yaml): rooms with their recent messages, state, tags and account data,
invites, left rooms with ``archived``, receipts and presence, the ``end`` token /events goes
on from, and the one-room snapshot for members, departed members and world-readable rooms."""
import time
from itertools import count
from urllib.parse import quote

import gevent
import pytest

from tests.apps import app_factory
from tests.sync.conftest import V, user
from web.app import runtime_of

_n = count()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    gen = app_factory(tmp_path_factory.mktemp("initial_sync"))
    yield next(gen)()
    next(gen, None)  # shut the app down, drop its schema


def users(app, *names):
    i = next(_n)
    return [user(app, f"{name}{i}") for name in names]


def initial_sync(client, status=200, **query):
    return client.req("GET", f"{V}/initialSync", status=status,
                      query={k: str(v).lower() for k, v in query.items()})


def room_sync(client, room_id, status=200, **query):
    return client.req("GET", f"{V}/rooms/{room_id}/initialSync", status=status,
                      query={k: str(v) for k, v in query.items()})


def entry(resp, room_id):
    found = [r for r in resp["rooms"] if r["room_id"] == room_id]
    return found[0] if found else None


def bodies(chunk):
    return [e["content"]["body"] for e in chunk if e["type"] == "m.room.message"]


def state_of(events, etype, state_key=""):
    found = [e for e in events if e["type"] == etype and e["state_key"] == state_key]
    return found[0]["content"] if found else None


def test_initial_sync_gives_rooms_messages_state_tags_and_account_data(app):
    alice, bob = users(app, "alice", "bob")
    room = alice.create_room(preset="public_chat", name="Lobby")
    alice.req("PUT", f"{V}/directory/list/room/{room}", {"visibility": "public"})
    bob.join(room)
    for i in range(4):
        last = alice.send(room, f"m{i}")["event_id"]
    bob.receipt(room, last)
    base = f"{V}/user/{quote(bob.user_id)}"
    bob.req("PUT", f"{base}/rooms/{room}/account_data/org.example.room", {"b": 2})
    bob.req("PUT", f"{base}/rooms/{room}/tags/u.work", {"order": 1})
    bob.req("PUT", f"{base}/account_data/org.example.cfg", {"a": 1})
    resp = initial_sync(bob, limit=2)
    r = entry(resp, room)
    assert r["membership"] == "join" and r["visibility"] == "public"
    assert bodies(r["messages"]["chunk"]) == ["m2", "m3"]
    assert all(e["room_id"] == room for e in r["messages"]["chunk"])
    assert state_of(r["state"], "m.room.name") == {"name": "Lobby"}
    assert state_of(r["state"], "m.room.member", bob.user_id)["membership"] == "join"
    assert r["account_data"][0] == {"type": "m.tag", "content": {"tags": {"u.work": {"order": 1}}}}
    assert {"type": "org.example.room", "content": {"b": 2}} in r["account_data"]
    assert {"type": "org.example.cfg", "content": {"a": 1}} in resp["account_data"]
    receipts = [e for e in resp["receipts"] if e["room_id"] == room]
    assert bob.user_id in receipts[0]["content"][last]["m.read"]
    assert isinstance(resp["presence"], list)
    # start pages back with /messages to the older events
    older = bob.req("GET", f"{V}/rooms/{room}/messages",
                    query={"from": r["messages"]["start"], "dir": "b", "limit": "2"})
    assert bodies(older["chunk"]) == ["m1", "m0"]
    # end goes on forwards with /messages too
    later = bob.req("GET", f"{V}/rooms/{room}/messages",
                    query={"from": r["messages"]["end"], "dir": "f"})
    assert later["chunk"] == []


def test_invites_show_the_invite_and_the_inviter(app):
    alice, bob = users(app, "alice", "bob")
    room = alice.create_room()
    alice.send(room, "before bob")
    alice.invite(room, bob.user_id)
    r = entry(initial_sync(bob), room)
    assert r["membership"] == "invite" and r["inviter"] == alice.user_id
    assert r["invite"]["content"]["membership"] == "invite"
    assert r["invite"]["state_key"] == bob.user_id
    assert "messages" not in r


def test_left_rooms_need_archived_and_stop_at_the_leave(app):
    alice, bob = users(app, "alice", "bob")
    room = alice.create_room(preset="public_chat", name="Before")
    bob.join(room)
    alice.send(room, "while bob was here")
    bob.leave(room)
    alice.send(room, "after bob left")
    alice.req("PUT", f"{V}/rooms/{room}/state/m.room.name/", {"name": "After"})
    assert entry(initial_sync(bob), room) is None
    r = entry(initial_sync(bob, archived=True), room)
    assert r["membership"] == "leave"
    assert bodies(r["messages"]["chunk"]) == ["while bob was here"]
    assert r["messages"]["chunk"][-1]["content"]["membership"] == "leave"
    assert state_of(r["state"], "m.room.name") == {"name": "Before"}
    # a forgotten room is gone for good
    bob.req("POST", f"{V}/rooms/{room}/forget", {})
    assert entry(initial_sync(bob, archived=True), room) is None


def test_history_visibility_and_ignored_users_apply(app):
    alice, bob, eve = users(app, "alice", "bob", "eve")
    room = alice.create_room(preset="public_chat")
    alice.req("PUT", f"{V}/rooms/{room}/state/m.room.history_visibility/",
              {"history_visibility": "joined"})
    alice.send(room, "before bob joined")
    bob.join(room)
    eve.join(room)
    bob.req("PUT", f"{V}/user/{quote(bob.user_id)}/account_data/m.ignored_user_list",
            {"ignored_users": {eve.user_id: {}}})
    eve.send(room, "spam")
    alice.send(room, "after bob joined")
    chunk = entry(initial_sync(bob, limit=20), room)["messages"]["chunk"]
    assert bodies(chunk) == ["after bob joined"]
    # eve's state (her join) is still shown
    assert any(e["type"] == "m.room.member" and e["state_key"] == eve.user_id for e in chunk)


def test_end_token_feeds_events(app):
    alice, bob = users(app, "alice", "bob")
    room = alice.create_room(preset="public_chat")
    bob.join(room)
    end = initial_sync(bob)["end"]
    events = bob.req("GET", f"{V}/events", query={"from": end, "timeout": "0"})
    end = events["end"]   # past bob's own presence coming online
    out = {}

    def poll():
        t0 = time.monotonic()
        out["resp"] = bob.req("GET", f"{V}/events", query={"from": end, "timeout": "10000"})
        out["elapsed"] = time.monotonic() - t0

    g = gevent.spawn(poll)
    gevent.sleep(0.05)
    alice.send(room, "news")
    g.join(timeout=5)
    assert bodies(out["resp"]["chunk"]) == ["news"] and out["elapsed"] < 2


def test_limit_zero_and_bad_parameters(app):
    alice, = users(app, "alice")
    room = alice.create_room()
    alice.send(room, "x")
    r = entry(initial_sync(alice, limit=0), room)
    assert r["messages"]["chunk"] == [] and r["messages"]["end"]
    assert initial_sync(alice, status=400, limit="many")["errcode"] == "M_INVALID_PARAM"
    assert initial_sync(alice, status=400, archived="maybe")["errcode"] == "M_INVALID_PARAM"


def test_room_initial_sync_for_a_member(app):
    alice, bob = users(app, "alice", "bob")
    room = alice.create_room(preset="public_chat", name="Den")
    bob.join(room)
    last = alice.send(room, "hello")["event_id"]
    alice.receipt(room, last)
    bob.req("PUT", f"{V}/user/{quote(bob.user_id)}/rooms/{room}/tags/m.favourite", {})
    alice.req("PUT", f"{V}/presence/{quote(alice.user_id)}/status", {"presence": "online"})
    r = room_sync(bob, room, limit=5)
    assert r["room_id"] == room and r["membership"] == "join"
    assert r["visibility"] == "private"
    assert bodies(r["messages"]["chunk"]) == ["hello"]
    assert len(r["messages"]["chunk"]) <= 5
    assert state_of(r["state"], "m.room.name") == {"name": "Den"}
    assert r["account_data"] == [{"type": "m.tag", "content": {"tags": {"m.favourite": {}}}}]
    assert alice.user_id in r["receipts"][0]["content"][last]["m.read"]
    online = [p for p in r["presence"] if p["content"]["user_id"] == alice.user_id]
    assert online and online[0]["content"]["presence"] == "online"


def test_room_initial_sync_after_leaving_stops_at_the_leave(app):
    alice, bob = users(app, "alice", "bob")
    room = alice.create_room(preset="public_chat", name="Old name")
    bob.join(room)
    alice.send(room, "seen")
    bob.leave(room)
    alice.send(room, "unseen")
    alice.req("PUT", f"{V}/rooms/{room}/state/m.room.name/", {"name": "New name"})
    r = room_sync(bob, room)
    assert r["membership"] == "leave"
    assert bodies(r["messages"]["chunk"]) == ["seen"]
    assert state_of(r["state"], "m.room.name") == {"name": "Old name"}
    assert state_of(r["state"], "m.room.member", bob.user_id)["membership"] == "leave"
    assert r["presence"] == [] and r["receipts"] == []
    bob.req("POST", f"{V}/rooms/{room}/forget", {})
    assert room_sync(bob, room, status=403)["errcode"] == "M_FORBIDDEN"


def test_room_initial_sync_peeks_world_readable_rooms_only(app):
    alice, carol = users(app, "alice", "carol")
    room = alice.create_room(preset="public_chat")
    alice.send(room, "shared history")
    assert room_sync(carol, room, status=403)["errcode"] == "M_FORBIDDEN"
    alice.req("PUT", f"{V}/rooms/{room}/state/m.room.history_visibility/",
              {"history_visibility": "world_readable"})
    alice.send(room, "public history")
    r = room_sync(carol, room)
    assert "membership" not in r and r["room_id"] == room
    assert bodies(r["messages"]["chunk"]) == ["public history"]
    assert state_of(r["state"], "m.room.history_visibility") == \
        {"history_visibility": "world_readable"}
    assert room_sync(carol, "!unknown:test.local", status=403)["errcode"] == "M_FORBIDDEN"
    assert room_sync(carol, "not-a-room", status=400)["errcode"] == "M_INVALID_PARAM"


def test_an_invite_over_federation_shows_in_initial_sync_and_events(app):
    bob, = users(app, "bob")
    since = bob.req("GET", f"{V}/events", query={"timeout": "0"})["end"]
    room = f"!far{next(_n)}:remote.test"
    invite = {"event_id": f"$inv{next(_n)}", "sender": "@someone:remote.test",
              "type": "m.room.member", "state_key": bob.user_id, "room_id": room,
              "origin_server_ts": 1, "content": {"membership": "invite"}}
    runtime_of(app).parts["rooms"].remote_invites.record(
        bob.user_id, room, "invite", invite, room_version="10", stripped_state=[],
        origin="remote.test")
    r = entry(initial_sync(bob), room)
    assert r["membership"] == "invite" and r["inviter"] == "@someone:remote.test"
    assert r["invite"]["event_id"] == invite["event_id"]
    chunk = bob.req("GET", f"{V}/events", query={"from": since, "timeout": "0"})["chunk"]
    assert [(e["event_id"], e["room_id"]) for e in chunk if e["type"] == "m.room.member"] == \
        [(invite["event_id"], room)]
