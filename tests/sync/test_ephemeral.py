"""Typing (with timeout expiry), receipts (m.read, m.read.private, threaded, never
backwards), read markers, and presence through /sync and their endpoints."""
from urllib.parse import quote

import gevent

from tests.sync.conftest import V, user


def _ephemeral(resp, room, etype):
    room_data = resp["rooms"]["join"].get(room) or {}
    return [e["content"] for e in room_data.get("ephemeral", {}).get("events", [])
            if e["type"] == etype]


def test_typing_shows_and_expires(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room = alice.create_room(preset="public_chat")
    bob.join(room)
    since = bob.sync()["next_batch"]
    alice.typing(room, True, timeout=150)
    s = bob.sync(since=since)
    assert _ephemeral(s, room, "m.typing") == [{"user_ids": [alice.user_id]}]
    # the expiry wakes a waiting sync and reports nobody typing
    s2 = bob.sync(since=s["next_batch"], timeout=3000)
    assert _ephemeral(s2, room, "m.typing") == [{"user_ids": []}]


def test_typing_refresh_does_not_move_the_stream_and_stop_does(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room = alice.create_room(preset="public_chat")
    bob.join(room)
    alice.typing(room, True)
    since = bob.sync()["next_batch"]
    alice.typing(room, True)  # still typing: nothing new
    assert bob.sync(since=since)["rooms"]["join"] == {}
    alice.typing(room, False)
    assert _ephemeral(bob.sync(since=since), room, "m.typing") == [{"user_ids": []}]


def test_typing_only_for_yourself_and_only_when_joined(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room = alice.create_room()
    err = alice.req("PUT", f"{V}/rooms/{room}/typing/{quote(bob.user_id)}",
                    {"typing": True, "timeout": 1000}, status=403)
    assert err["errcode"] == "M_FORBIDDEN"
    assert bob.typing(room, True, status=403)["errcode"] == "M_FORBIDDEN"
    alice.req("PUT", f"{V}/rooms/{room}/typing/{quote(alice.user_id)}", {}, status=400)


def test_receipts_public_private_and_threaded(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room = alice.create_room(preset="public_chat")
    bob.join(room)
    e1 = alice.send(room, "one")["event_id"]
    e2 = alice.send(room, "two")["event_id"]
    a_since, b_since = alice.sync()["next_batch"], bob.sync()["next_batch"]
    bob.receipt(room, e1)
    bob.receipt(room, e2, "m.read.private")
    bob.receipt(room, e2, body={"thread_id": "main"})
    seen_by_alice = _ephemeral(alice.sync(since=a_since), room, "m.receipt")
    assert len(seen_by_alice) == 1
    content = seen_by_alice[0]
    assert content[e1]["m.read"][bob.user_id]["ts"] > 0
    assert content[e2]["m.read"][bob.user_id]["thread_id"] == "main"
    assert "m.read.private" not in content.get(e2, {})
    own = _ephemeral(bob.sync(since=b_since), room, "m.receipt")[0]
    assert bob.user_id in own[e2]["m.read.private"]


def test_receipt_never_moves_backwards_and_validates(app):
    alice = user(app, "alice")
    room = alice.create_room()
    e1 = alice.send(room, "one")["event_id"]
    e2 = alice.send(room, "two")["event_id"]
    alice.receipt(room, e2)
    since = alice.sync()["next_batch"]
    alice.receipt(room, e1)  # older: ignored
    assert alice.sync(since=since)["rooms"]["join"] == {}
    assert alice.receipt(room, e1, "m.bogus", status=400)["errcode"] == "M_INVALID_PARAM"
    assert alice.receipt(room, e1, body={"thread_id": ""}, status=400)["errcode"] == \
        "M_INVALID_PARAM"
    assert alice.receipt(room, "$nope", status=404)["errcode"] == "M_NOT_FOUND"
    other = user(app, "mallory")
    assert other.receipt(room, e1, status=403)["errcode"] == "M_FORBIDDEN"


def test_read_markers_set_fully_read_and_receipt(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room = alice.create_room(preset="public_chat")
    bob.join(room)
    eid = alice.send(room, "read me")["event_id"]
    since = bob.sync()["next_batch"]
    bob.req("POST", f"{V}/rooms/{room}/read_markers", {"m.fully_read": eid, "m.read": eid})
    s = bob.sync(since=since)
    joined = s["rooms"]["join"][room]
    assert {"type": "m.fully_read", "content": {"event_id": eid}} in \
        joined["account_data"]["events"]
    assert bob.user_id in _ephemeral(s, room, "m.receipt")[0][eid]["m.read"]
    got = bob.req("GET", f"{V}/user/{quote(bob.user_id)}/rooms/{room}/account_data/m.fully_read")
    assert got == {"event_id": eid}
    err = bob.req("PUT", f"{V}/user/{quote(bob.user_id)}/rooms/{room}/account_data/m.fully_read",
                  {"event_id": eid}, status=405)
    assert err["errcode"] == "M_BAD_JSON"


def test_presence_set_get_and_sync(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room = alice.create_room(preset="public_chat")
    bob.join(room)
    since = bob.sync(set_presence="offline")["next_batch"]
    alice.req("PUT", f"{V}/presence/{quote(alice.user_id)}/status",
              {"presence": "unavailable", "status_msg": "lunch"})
    got = bob.req("GET", f"{V}/presence/{quote(alice.user_id)}/status")
    assert got["presence"] == "unavailable" and got["status_msg"] == "lunch"
    s = bob.sync(since=since, set_presence="offline")
    events = [e for e in s["presence"]["events"] if e["sender"] == alice.user_id]
    assert events and events[-1]["content"]["presence"] == "unavailable"
    assert events[-1]["content"]["status_msg"] == "lunch"
    stranger = user(app, "stranger")
    assert stranger.req("GET", f"{V}/presence/{quote(alice.user_id)}/status",
                        status=403)["errcode"] == "M_FORBIDDEN"
    assert alice.req("PUT", f"{V}/presence/{quote(bob.user_id)}/status",
                     {"presence": "online"}, status=403)["errcode"] == "M_FORBIDDEN"
    assert alice.req("PUT", f"{V}/presence/{quote(alice.user_id)}/status",
                     {"presence": "dancing"}, status=400)["errcode"] == "M_INVALID_PARAM"


def test_presence_sync_marks_online_then_idle_then_offline(hs):
    from web.app import runtime_of

    app = hs()
    svc = runtime_of(app).parts["sync"]
    svc.user_deps.idle_after = 0.2
    svc.user_deps.offline_after = 0.4
    alice = user(app, "alice")
    alice.sync(set_presence="online")
    assert svc.presence.get(alice.user_id).state == "online"
    gevent.sleep(0.35)
    assert svc.presence.get(alice.user_id).state == "unavailable"
    gevent.sleep(0.4)
    assert svc.presence.get(alice.user_id).state == "offline"
