"""/sync conformance (issue "Client-Server conformance"): a newly joined room carries the
history the user may see; an accepted invite's join shows; a gapped sync carries every state
change of the gap (members too, with lazy-loading); joining and leaving in one batch still
gives full state; a displayname change is not a full-state sync; ``limited`` whenever the
timeline misses events since the token; a newly joined room brings its members' presence."""
from tests.sync.conftest import V, bodies, user

LIMIT = lambda n: {"room": {"timeline": {"limit": n}}}  # noqa: E731


def _types(room):
    return [(e["type"], e.get("state_key")) for e in room["state"]["events"]]


def test_joiner_sees_recent_history_in_first_incremental_sync(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room = alice.create_room(preset="public_chat")
    for i in range(5):
        alice.send(room, f"m{i}")
    since = bob.sync()["next_batch"]
    bob.join(room)
    s = bob.sync(since=since, filter=LIMIT(3))
    joined = s["rooms"]["join"][room]
    assert bodies(s, room) == ["m3", "m4"]
    last = joined["timeline"]["events"][-1]
    assert (last["type"], last["state_key"]) == ("m.room.member", bob.user_id)
    assert joined["timeline"]["limited"] is True
    assert ("m.room.create", "") in _types(joined)
    # room small enough for the limit: the whole history, not limited
    s2 = bob.sync(since=since, filter=LIMIT(50))
    tl = s2["rooms"]["join"][room]["timeline"]
    assert tl["limited"] is False and tl["events"][0]["type"] == "m.room.create"
    assert bodies(s2, room) == [f"m{i}" for i in range(5)]


def test_joiner_does_not_see_history_hidden_by_visibility(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room = alice.create_room(preset="public_chat")
    alice.req("PUT", f"{V}/rooms/{room}/state/m.room.history_visibility/",
              {"history_visibility": "joined"})
    alice.send(room, "secret")
    since = bob.sync()["next_batch"]
    bob.join(room)
    alice.send(room, "after")
    s = bob.sync(since=since)
    assert bodies(s, room) == ["after"]


def test_accepted_invite_join_event_is_in_next_sync(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room = alice.create_room()
    alice.invite(room, bob.user_id)
    since = bob.sync()["next_batch"]
    assert room in bob.sync()["rooms"]["invite"]
    bob.join(room)
    s = bob.sync(since=since)
    joined = s["rooms"]["join"][room]
    own = [e["content"]["membership"] for e in joined["timeline"]["events"]
           if e["type"] == "m.room.member" and e["state_key"] == bob.user_id]
    assert own[-1:] == ["join"]
    assert room not in s["rooms"]["invite"]
    # and the room's history before the invite (the client only had stripped state)
    assert joined["timeline"]["events"][0]["type"] == "m.room.create"


def test_gapped_sync_has_every_state_change_of_the_gap(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room = alice.create_room(preset="public_chat")
    bob.join(room)
    since = bob.sync(filter=LIMIT(2))["next_batch"]
    alice.req("PUT", f"{V}/rooms/{room}/state/m.room.topic/", {"topic": "gap topic"})
    alice.req("PUT", f"{V}/rooms/{room}/state/m.room.name/", {"name": "gap name"})
    for i in range(5):
        alice.send(room, f"m{i}")
    s = bob.sync(since=since, filter=LIMIT(2))
    joined = s["rooms"]["join"][room]
    assert joined["timeline"]["limited"] is True and bodies(s, room) == ["m3", "m4"]
    types = _types(joined)
    assert ("m.room.topic", "") in types and ("m.room.name", "") in types


def test_gapped_lazy_sync_has_member_changes_of_the_gap(app):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    room = alice.create_room(preset="public_chat")
    bob.join(room)
    lazy = {"room": {"timeline": {"limit": 2}, "state": {"lazy_load_members": True}}}
    since = bob.sync(filter=lazy)["next_batch"]
    carol.join(room)
    carol.send(room, "carol was here")
    for i in range(4):
        alice.send(room, f"m{i}")
    s = bob.sync(since=since, filter=lazy)
    joined = s["rooms"]["join"][room]
    assert joined["timeline"]["limited"] is True
    assert ("m.room.member", carol.user_id) in _types(joined)


def test_join_and_leave_in_one_batch_gives_full_state(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room = alice.create_room(preset="public_chat", name="Brief")
    since = bob.sync()["next_batch"]
    bob.join(room)
    bob.leave(room)
    s = bob.sync(since=since)
    left = s["rooms"]["leave"][room]
    types = _types(left) + [(e["type"], e.get("state_key"))
                            for e in left["timeline"]["events"]]
    assert ("m.room.create", "") in types and ("m.room.name", "") in types


def test_rejoin_in_one_batch_is_newly_joined(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room = alice.create_room(preset="public_chat", name="Again")
    bob.join(room)
    since = bob.sync()["next_batch"]
    bob.leave(room)
    alice.req("PUT", f"{V}/rooms/{room}/state/m.room.name/", {"name": "Renamed"})
    bob.join(room)
    joined = bob.sync(since=since)["rooms"]["join"][room]
    assert ("m.room.create", "") in _types(joined) + [
        (e["type"], e.get("state_key")) for e in joined["timeline"]["events"]]


def test_displayname_change_is_not_a_full_state_sync(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room = alice.create_room(preset="public_chat", name="Named")
    bob.join(room)
    since = bob.sync()["next_batch"]
    bob.req("PUT", f"{V}/profile/{bob.user_id}/displayname", {"displayname": "Bobby"})
    s = bob.sync(since=since)
    joined = s["rooms"]["join"][room]
    assert joined["state"]["events"] == []
    evs = joined["timeline"]["events"]
    assert [e["content"].get("displayname") for e in evs] == ["Bobby"]
    assert joined["timeline"]["limited"] is False


def test_limited_whenever_events_since_token_are_missing(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room = alice.create_room(preset="public_chat")
    bob.join(room)
    only_msgs = {"room": {"timeline": {"limit": 2, "types": ["m.room.message"]}}}
    since = bob.sync(filter=only_msgs)["next_batch"]
    for i in range(3):
        alice.send(room, f"m{i}")
    s = bob.sync(since=since, filter=only_msgs)
    assert bodies(s, room) == ["m1", "m2"]
    assert s["rooms"]["join"][room]["timeline"]["limited"] is True
    since = s["next_batch"]
    alice.send(room, "x")
    s = bob.sync(since=since, filter=only_msgs)
    assert s["rooms"]["join"][room]["timeline"]["limited"] is False


def test_newly_joined_room_carries_presence(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room = alice.create_room(preset="public_chat")
    alice.req("PUT", f"{V}/presence/{alice.user_id}/status",
              {"presence": "online", "status_msg": "here"})
    since = bob.sync()["next_batch"]
    bob.sync(since=since)   # alice's presence change is now behind bob's token
    since = bob.sync(since=since)["next_batch"]
    bob.join(room)
    s = bob.sync(since=since)
    senders = {e["sender"] for e in s["presence"]["events"]}
    assert alice.user_id in senders
