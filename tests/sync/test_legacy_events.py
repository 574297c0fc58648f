"""GET /events (old_sync.yaml, peeking_events.yaml) and GET /events/{eventId}: a long-poll
woken by a send, the backlog after a token cut at ``limit``, typing / receipts / account data
/ presence in the chunk, the user's own invites, peeking into world-readable rooms only
(with their visibility rules), and the single-event read."""
import time
from itertools import count
from urllib.parse import quote

import gevent
import pytest

from tests.apps import app_factory
from tests.sync.conftest import V, user
from web.app import runtime_of

R0 = "/_matrix/client/r0"
_n = count()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    gen = app_factory(tmp_path_factory.mktemp("legacy_events"))
    yield next(gen)()
    next(gen, None)  # shut the app down, drop its schema


def users(app, *names):
    i = next(_n)
    return [user(app, f"{name}{i}") for name in names]


def events(client, status=200, **query):
    q = {k: str(v) for k, v in query.items()}
    q.setdefault("timeout", "0")
    return client.req("GET", f"{V}/events", status=status, query=q)


def bodies(resp):
    return [e["content"]["body"] for e in resp["chunk"] if e.get("type") == "m.room.message"]


def in_background(fn, *args, **kwargs):
    out = {}

    def run():
        t0 = time.monotonic()
        out["resp"] = fn(*args, **kwargs)
        out["elapsed"] = time.monotonic() - t0

    return gevent.spawn(run), out


def settle(client):
    """A first /events: the user comes online (presence), so later long-polls start after it."""
    return events(client)["end"]


def test_long_poll_is_woken_by_a_send_in_a_joined_room(app):
    alice, bob = users(app, "alice", "bob")
    room = alice.create_room(preset="public_chat")
    bob.join(room)
    since = settle(bob)
    g, out = in_background(events, bob, **{"from": since, "timeout": 10_000})
    gevent.sleep(0.05)
    alice.send(room, "wake up")
    g.join(timeout=5)
    assert g.successful()
    resp = out["resp"]
    assert bodies(resp) == ["wake up"]
    ev = resp["chunk"][0]
    assert ev["room_id"] == room and ev["sender"] == alice.user_id and "event_id" in ev
    assert out["elapsed"] < 2
    assert resp["start"] == since and resp["end"] != since
    # the end token goes on from there: nothing new, an empty answer at the same place
    again = events(bob, **{"from": resp["end"]})
    assert again["chunk"] == [] and again["end"] == resp["end"]


def test_without_from_it_waits_from_now_and_times_out_empty(app):
    alice, = users(app, "alice")
    room = alice.create_room()
    alice.send(room, "old news")
    settle(alice)
    t0 = time.monotonic()
    resp = events(alice, timeout=200)
    assert time.monotonic() - t0 >= 0.15
    assert resp["chunk"] == [] and resp["start"] == resp["end"]


def test_backlog_is_cut_at_limit_and_end_goes_on(app):
    alice, = users(app, "alice")
    room = alice.create_room()
    since = settle(alice)
    for i in range(5):
        alice.send(room, f"m{i}")
    got, tok = [], since
    for _ in range(3):
        resp = events(alice, **{"from": tok, "limit": 2})
        assert len([e for e in resp["chunk"] if e["type"] == "m.room.message"]) <= 2
        got += bodies(resp)
        tok = resp["end"]
    assert got == ["m0", "m1", "m2", "m3", "m4"]


def test_a_send_elsewhere_does_not_answer_and_bad_parameters_are_400(app):
    alice, bob = users(app, "alice", "bob")
    alice.create_room()
    other = bob.create_room()
    since = settle(alice)
    g, out = in_background(events, alice, **{"from": since, "timeout": 300})
    gevent.sleep(0.05)
    bob.send(other, "not for alice")
    g.join(timeout=5)
    assert out["resp"]["chunk"] == [] and out["elapsed"] >= 0.25
    for q in ({"from": "garbage"}, {"timeout": "soon"}, {"limit": "x"}):
        assert events(alice, status=400, **q)["errcode"] == "M_INVALID_PARAM"


def test_typing_receipts_account_data_and_presence_are_in_the_chunk(app):
    alice, bob = users(app, "alice", "bob")
    room = alice.create_room(preset="public_chat")
    bob.join(room)
    eid = alice.send(room, "read me")["event_id"]
    settle(alice)
    since = settle(bob)
    alice.typing(room)
    alice.receipt(room, eid)
    base = f"{V}/user/{quote(bob.user_id)}"
    bob.req("PUT", f"{base}/rooms/{room}/tags/u.work", {"order": 0.5})
    bob.req("PUT", f"{base}/account_data/org.example.cfg", {"a": 1})
    alice.req("PUT", f"{V}/presence/{quote(alice.user_id)}/status",
              {"presence": "online", "status_msg": "here"})
    chunk = events(bob, **{"from": since})["chunk"]
    by_type = {}
    for ev in chunk:
        by_type.setdefault(ev["type"], []).append(ev)
    assert by_type["m.typing"] == [{"type": "m.typing", "room_id": room,
                                    "content": {"user_ids": [alice.user_id]}}]
    receipt = by_type["m.receipt"][0]
    assert receipt["room_id"] == room
    assert alice.user_id in receipt["content"][eid]["m.read"]
    assert by_type["m.tag"] == [{"type": "m.tag", "room_id": room,
                                 "content": {"tags": {"u.work": {"order": 0.5}}}}]
    assert by_type["org.example.cfg"] == [{"type": "org.example.cfg", "content": {"a": 1}}]
    mine = [e for e in by_type["m.presence"] if e["content"]["user_id"] == alice.user_id]
    assert mine and mine[-1]["content"]["presence"] == "online"
    assert mine[-1]["content"]["status_msg"] == "here"


def test_private_receipts_reach_only_their_owner(app):
    alice, bob = users(app, "alice", "bob")
    room = alice.create_room(preset="public_chat")
    bob.join(room)
    eid = alice.send(room, "x")["event_id"]
    since_a, since_b = settle(alice), settle(bob)
    alice.receipt(room, eid, rtype="m.read.private")
    assert [e for e in events(bob, **{"from": since_b})["chunk"] if e["type"] == "m.receipt"] == []
    mine = [e for e in events(alice, **{"from": since_a})["chunk"] if e["type"] == "m.receipt"]
    assert alice.user_id in mine[0]["content"][eid]["m.read.private"]


def test_an_invite_wakes_the_invitee_with_the_invite_event(app):
    alice, bob = users(app, "alice", "bob")
    room = alice.create_room()
    alice.send(room, "before the invite")
    since = settle(bob)
    g, out = in_background(events, bob, **{"from": since, "timeout": 10_000})
    gevent.sleep(0.05)
    alice.invite(room, bob.user_id)
    g.join(timeout=5)
    chunk = out["resp"]["chunk"]
    invites = [e for e in chunk if e["type"] == "m.room.member"]
    assert invites and invites[0]["state_key"] == bob.user_id
    assert invites[0]["content"]["membership"] == "invite" and invites[0]["room_id"] == room
    assert bodies(out["resp"]) == []  # the room's history is not the invitee's


def test_ignored_users_messages_are_left_out(app):
    alice, bob, eve = users(app, "alice", "bob", "eve")
    room = alice.create_room(preset="public_chat")
    bob.join(room)
    eve.join(room)
    bob.req("PUT", f"{V}/user/{quote(bob.user_id)}/account_data/m.ignored_user_list",
            {"ignored_users": {eve.user_id: {}}})
    since = settle(bob)
    eve.send(room, "spam")
    alice.send(room, "hello")
    assert bodies(events(bob, **{"from": since})) == ["hello"]


def _world_readable(client, room):
    client.req("PUT", f"{V}/rooms/{room}/state/m.room.history_visibility/",
               {"history_visibility": "world_readable"})


def test_peeking_a_world_readable_room_long_polls_its_events_only(app):
    alice, carol = users(app, "alice", "carol")
    room = alice.create_room(preset="public_chat")
    other = alice.create_room(preset="public_chat")
    _world_readable(alice, room)
    _world_readable(alice, other)
    since = events(carol, room_id=room)["end"]
    peeks = runtime_of(app).parts["legacy_peeks"]
    g, out = in_background(events, carol, **{"from": since, "timeout": 10_000,
                                             "room_id": room})
    gevent.sleep(0.05)
    assert peeks.peeking() == 1
    alice.send(other, "not this room")
    alice.send(room, "visible to peekers")
    g.join(timeout=5)
    assert g.successful()
    assert bodies(out["resp"]) == ["visible to peekers"]
    assert all(e["room_id"] == room for e in out["resp"]["chunk"] if "room_id" in e)
    assert out["elapsed"] < 2
    assert peeks.peeking() == 0
    # typing in the peeked room wakes the peek too
    g, out = in_background(events, carol, **{"from": out["resp"]["end"], "timeout": 10_000,
                                             "room_id": room})
    gevent.sleep(0.05)
    alice.typing(room)
    g.join(timeout=5)
    assert [e["content"] for e in out["resp"]["chunk"] if e["type"] == "m.typing"] == \
        [{"user_ids": [alice.user_id]}]


def test_peeking_shows_only_world_readable_history(app):
    alice, carol = users(app, "alice", "carol")
    room = alice.create_room(preset="public_chat")
    _world_readable(alice, room)
    since = events(carol, room_id=room)["end"]
    alice.req("PUT", f"{V}/rooms/{room}/state/m.room.history_visibility/",
              {"history_visibility": "shared"})
    mid = events(alice)["end"]
    alice.send(room, "members only")
    alice.send(room, "members only too")
    _world_readable(alice, room)
    alice.send(room, "for everyone")
    assert bodies(events(carol, **{"from": since, "room_id": room})) == ["for everyone"]
    # one event at a time: the hidden ones make empty rounds, the long-poll goes on through
    # them at once to the next visible event (the change back to world-readable)
    t0 = time.monotonic()
    resp = events(carol, **{"from": mid, "room_id": room, "limit": 1, "timeout": 5000})
    assert time.monotonic() - t0 < 2
    assert [e["type"] for e in resp["chunk"]] == ["m.room.history_visibility"]
    assert bodies(events(carol, **{"from": resp["end"], "room_id": room})) == ["for everyone"]


def test_peeking_is_refused_unless_world_readable(app):
    alice, carol = users(app, "alice", "carol")
    room = alice.create_room(preset="public_chat")   # history "shared"
    err = events(carol, status=403, room_id=room)
    assert err["errcode"] == "M_FORBIDDEN"
    assert events(carol, status=403, room_id="!nowhere:test.local")["errcode"] == "M_FORBIDDEN"
    assert events(carol, status=400, room_id="not-a-room")["errcode"] == "M_INVALID_PARAM"
    # a member may name the room: the stream is that room's only
    alice_room2 = alice.create_room()
    since = settle(alice)
    alice.send(alice_room2, "elsewhere")
    alice.send(room, "here")
    assert bodies(events(alice, **{"from": since, "room_id": room})) == ["here"]


def test_guests_must_name_a_room(app):
    guest, = users(app, "guest")
    runtime_of(app).db.run("make_guest", lambda t: t.execute(
        "UPDATE users SET is_guest = 1 WHERE name = ?", (guest.user_id,)), write=True)
    assert events(guest, status=400)["errcode"] == "M_MISSING_PARAM"


def test_get_one_event_respects_visibility(app):
    alice, bob, carol = users(app, "alice", "bob", "carol")
    room = alice.create_room(preset="public_chat")
    bob.join(room)
    eid = alice.send(room, "secret-ish")["event_id"]
    path = f"{V}/events/{quote(eid, safe='')}"
    got = bob.req("GET", path)
    assert got["event_id"] == eid and got["room_id"] == room
    assert got["content"]["body"] == "secret-ish"
    assert carol.req("GET", path, status=404)["errcode"] == "M_NOT_FOUND"
    assert carol.req("GET", f"{V}/events/%24nope%3Atest.local", status=404)["errcode"] == \
        "M_NOT_FOUND"
    _world_readable(alice, room)
    public = alice.send(room, "for all")["event_id"]
    assert carol.req("GET", f"{V}/events/{quote(public, safe='')}")["content"]["body"] == \
        "for all"


def test_r0_paths_are_served(app):
    alice, = users(app, "alice")
    room = alice.create_room()
    eid = alice.send(room, "old client")["event_id"]
    assert "chunk" in alice.req("GET", f"{R0}/events", query={"timeout": "0"})
    assert alice.req("GET", f"{R0}/events/{quote(eid, safe='')}")["event_id"] == eid
