"""Account data (global, per room), tags, ignored users, and filters (stored and inline)."""
from urllib.parse import quote

from tests.sync.conftest import V, bodies, user


def _ad(client, path=""):
    return f"{V}/user/{quote(client.user_id)}{path}"


def test_global_and_room_account_data(app):
    alice = user(app, "alice")
    room = alice.create_room()
    since = alice.sync()["next_batch"]
    alice.req("PUT", _ad(alice, "/account_data/org.example.cfg"), {"a": 1})
    alice.req("PUT", _ad(alice, f"/rooms/{room}/account_data/org.example.room"), {"b": 2})
    assert alice.req("GET", _ad(alice, "/account_data/org.example.cfg")) == {"a": 1}
    s = alice.sync(since=since)
    assert {"type": "org.example.cfg", "content": {"a": 1}} in s["account_data"]["events"]
    assert s["rooms"]["join"][room]["account_data"]["events"] == [
        {"type": "org.example.room", "content": {"b": 2}}]
    initial = alice.sync()
    assert {"type": "org.example.cfg", "content": {"a": 1}} in initial["account_data"]["events"]
    # errors
    bob = user(app, "bob")
    assert bob.req("PUT", _ad(alice, "/account_data/x"), {}, status=403)["errcode"] == \
        "M_FORBIDDEN"
    assert alice.req("GET", _ad(alice, "/account_data/missing"), status=404)["errcode"] == \
        "M_NOT_FOUND"
    assert alice.req("PUT", _ad(alice, "/rooms/not-a-room/account_data/x"), {},
                     status=400)["errcode"] == "M_INVALID_PARAM"
    assert alice.req("PUT", _ad(alice, "/account_data/m.push_rules"), {},
                     status=405)["errcode"] == "M_BAD_JSON"


def test_tags_put_get_delete_and_sync(app):
    alice = user(app, "alice")
    room = alice.create_room()
    since = alice.sync()["next_batch"]
    alice.req("PUT", _ad(alice, f"/rooms/{room}/tags/m.favourite"), {"order": 0.5})
    alice.req("PUT", _ad(alice, f"/rooms/{room}/tags/u.work"), {})
    tags = alice.req("GET", _ad(alice, f"/rooms/{room}/tags"))["tags"]
    assert tags == {"m.favourite": {"order": 0.5}, "u.work": {}}
    s = alice.sync(since=since)
    assert s["rooms"]["join"][room]["account_data"]["events"] == [
        {"type": "m.tag", "content": {"tags": tags}}]
    alice.req("DELETE", _ad(alice, f"/rooms/{room}/tags/u.work"))
    assert alice.req("GET", _ad(alice, f"/rooms/{room}/tags"))["tags"] == {
        "m.favourite": {"order": 0.5}}
    assert alice.req("PUT", _ad(alice, f"/rooms/{room}/tags/x"), {"order": "high"},
                     status=400)["errcode"] == "M_BAD_JSON"


def test_ignored_users_events_are_hidden_but_state_is_not(app):
    alice, bob, eve = user(app, "alice"), user(app, "bob"), user(app, "eve")
    room = alice.create_room(preset="public_chat")
    bob.join(room)
    eve.join(room)
    bob.req("PUT", _ad(bob, "/account_data/m.ignored_user_list"),
            {"ignored_users": {eve.user_id: {}}})
    since = bob.sync()["next_batch"]
    eve.send(room, "spam")
    alice.send(room, "hello")
    eve.req("PUT", f"{V}/rooms/{room}/state/m.room.topic/", {"topic": "eve's topic"},
            status=403)
    s = bob.sync(since=since)
    assert bodies(s, room) == ["hello"]
    # invites from ignored users are dropped
    eves_room = eve.create_room()
    eve.invite(eves_room, bob.user_id)
    assert eves_room not in bob.sync(since=s["next_batch"])["rooms"]["invite"]


def test_stored_filter_roundtrip_and_errors(app):
    alice = user(app, "alice")
    f = {"room": {"timeline": {"limit": 2, "types": ["m.room.message"]}},
         "presence": {"types": []}}
    fid = alice.req("POST", _ad(alice, "/filter"), f)["filter_id"]
    assert alice.req("GET", _ad(alice, f"/filter/{fid}")) == f
    assert alice.req("GET", _ad(alice, "/filter/999"), status=404)["errcode"] == "M_NOT_FOUND"
    bob = user(app, "bob")
    assert bob.req("GET", _ad(alice, f"/filter/{fid}"), status=403)["errcode"] == "M_FORBIDDEN"
    for bad in ({"room": {"timeline": {"limit": "x"}}}, {"event_format": "weird"},
                {"room": {"rooms": "!a:b"}}, {"presence": {"types": [1]}}):
        assert alice.req("POST", _ad(alice, "/filter"), bad, status=400)["errcode"] == \
            "M_BAD_JSON"
    room = alice.create_room()
    for i in range(4):
        alice.send(room, f"m{i}")
    s = alice.sync(filter=fid)
    tl = s["rooms"]["join"][room]["timeline"]
    assert [e["content"]["body"] for e in tl["events"]] == ["m2", "m3"]
    assert tl["limited"] is True
    assert alice.sync(filter="12345", status=400)["errcode"] == "M_INVALID_PARAM"


def test_inline_filter_rooms_senders_and_event_fields(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    r1 = alice.create_room(preset="public_chat")
    r2 = alice.create_room(preset="public_chat")
    bob.join(r1)
    since = alice.sync()["next_batch"]
    alice.send(r1, "from alice")
    bob.send(r1, "from bob")
    alice.send(r2, "elsewhere")
    s = alice.sync(since=since, filter={
        "room": {"rooms": [r1], "timeline": {"senders": [bob.user_id]}},
        "event_fields": ["type", "content.body", "sender"]})
    assert set(s["rooms"]["join"]) == {r1}
    events = s["rooms"]["join"][r1]["timeline"]["events"]
    assert events == [{"type": "m.room.message", "content": {"body": "from bob"},
                       "sender": bob.user_id}]
    s2 = alice.sync(since=since, filter={"room": {"not_rooms": [r1],
                                                  "timeline": {"not_types": ["m.room.*"]}}})
    assert s2["rooms"]["join"] == {}
    s3 = alice.sync(since=since, filter={"event_format": "federation",
                                         "room": {"rooms": [r2]}})
    ev = s3["rooms"]["join"][r2]["timeline"]["events"][0]
    assert "hashes" in ev and "signatures" in ev
