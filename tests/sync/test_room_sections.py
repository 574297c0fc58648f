"""rooms.invite (stripped state), rooms.leave (timeline up to the leave), rooms.knock,
include_leave, and lazy-loading members (exactly the needed ones, no redundant resend)."""
from tests.sync.conftest import V, bodies, user


def test_invite_section_has_stripped_state(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room = alice.create_room(name="Secret", topic="not stripped")
    since = bob.sync()["next_batch"]
    alice.invite(room, bob.user_id)
    s = bob.sync(since=since)
    events = s["rooms"]["invite"][room]["invite_state"]["events"]
    kinds = {(e["type"], e["state_key"]) for e in events}
    assert ("m.room.create", "") in kinds and ("m.room.name", "") in kinds
    assert ("m.room.join_rules", "") in kinds
    assert ("m.room.member", alice.user_id) in kinds and ("m.room.member", bob.user_id) in kinds
    assert ("m.room.topic", "") not in kinds
    assert all(set(e) == {"type", "state_key", "content", "sender"} for e in events)
    # initial sync shows the pending invite too; after joining it moves to join
    assert room in bob.sync()["rooms"]["invite"]
    bob.join(room)
    s2 = bob.sync(since=s["next_batch"])
    assert room in s2["rooms"]["join"] and room not in s2["rooms"]["invite"]


def test_leave_section_has_timeline_up_to_the_leave(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room = alice.create_room(preset="public_chat")
    bob.join(room)
    since = bob.sync()["next_batch"]
    alice.send(room, "before")
    bob.leave(room)
    alice.send(room, "after")
    s = bob.sync(since=since)
    assert room not in s["rooms"]["join"]
    left = s["rooms"]["leave"][room]
    assert bodies(s, room, "leave") == ["before"]
    last = left["timeline"]["events"][-1]
    assert last["type"] == "m.room.member" and last["content"]["membership"] == "leave"
    # not repeated, and not in an initial sync unless include_leave
    assert room not in bob.sync(since=s["next_batch"])["rooms"]["leave"]
    assert room not in bob.sync()["rooms"]["leave"]
    with_leave = bob.sync(filter={"room": {"include_leave": True}})
    assert room in with_leave["rooms"]["leave"]
    bob.req("POST", f"{V}/rooms/{room}/forget", {})
    assert room not in bob.sync(filter={"room": {"include_leave": True}})["rooms"]["leave"]


def test_kick_and_rejected_invite_land_in_leave(app):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    room = alice.create_room(preset="public_chat")
    bob.join(room)
    since_b = bob.sync()["next_batch"]
    alice.req("POST", f"{V}/rooms/{room}/kick", {"user_id": bob.user_id})
    assert room in bob.sync(since=since_b)["rooms"]["leave"]
    private = alice.create_room()
    alice.invite(private, carol.user_id)
    since_c = carol.sync()["next_batch"]
    carol.leave(private)
    s = carol.sync(since=since_c)
    assert private in s["rooms"]["leave"]
    assert bodies(s, private, "leave") == []


def test_knock_section(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room = alice.create_room(room_version="10")
    alice.req("PUT", f"{V}/rooms/{room}/state/m.room.join_rules/", {"join_rule": "knock"})
    since = bob.sync()["next_batch"]
    bob.req("POST", f"{V}/knock/{room}", {})
    s = bob.sync(since=since)
    events = s["rooms"]["knock"][room]["knock_state"]["events"]
    assert any(e["type"] == "m.room.member" and e["content"]["membership"] == "knock"
               for e in events)


LAZY = {"room": {"state": {"lazy_load_members": True}, "timeline": {"limit": 3}}}


def _members(resp, room):
    return sorted(e["state_key"] for e in resp["rooms"]["join"][room]["state"]["events"]
                  if e["type"] == "m.room.member")


def test_lazy_loading_returns_exactly_the_needed_members(app):
    alice = user(app, "alice")
    room = alice.create_room(preset="public_chat", name="Named room")
    others = [user(app, f"u{i}") for i in range(6)]
    for o in others:
        o.join(room)
    for o in others[:2]:
        o.send(room, f"from {o.user_id}")
    others[2].send(room, "third")
    s = alice.sync(filter=LAZY)
    senders = {e["sender"] for e in s["rooms"]["join"][room]["timeline"]["events"]}
    assert senders == {others[0].user_id, others[1].user_id, others[2].user_id}
    assert "m.heroes" not in s["rooms"]["join"][room]["summary"]  # the room has a name
    assert _members(s, room) == sorted(senders | {alice.user_id})
    # without lazy loading every member is there
    assert len(_members(alice.sync(filter={"room": {"timeline": {"limit": 3}}}), room)) == 7


def test_lazy_loading_does_not_resend_redundant_members(app):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    room = alice.create_room(preset="public_chat", name="Named")
    bob.join(room)
    carol.join(room)
    for i in range(4):
        bob.send(room, f"b{i}")
    first = alice.sync(filter=LAZY)
    assert bob.user_id in _members(first, room)
    since = first["next_batch"]
    bob.send(room, "again")
    carol.send(room, "new sender")
    second = alice.sync(since=since, filter=LAZY)
    assert _members(second, room) == [carol.user_id]  # bob's member event is redundant
    # a retry of the same request (lost response) gets them again
    retry = alice.sync(since=since, filter=LAZY)
    assert _members(retry, room) == [carol.user_id]
    bob.send(room, "once more")
    third = alice.sync(since=second["next_batch"], filter={
        "room": {"state": {"lazy_load_members": True, "include_redundant_members": True}}})
    assert _members(third, room) == [bob.user_id]


def test_lazy_loading_includes_heroes_of_an_unnamed_room(app):
    alice = user(app, "alice")
    room = alice.create_room(preset="public_chat")
    others = [user(app, f"u{i}") for i in range(7)]
    for o in others:
        o.join(room)
    others[6].send(room, "last joiner speaks")
    s = alice.sync(filter=LAZY)
    heroes = s["rooms"]["join"][room]["summary"]["m.heroes"]
    assert heroes == [o.user_id for o in others[:5]]
    in_timeline = {e["state_key"] for e in s["rooms"]["join"][room]["timeline"]["events"]
                   if e["type"] == "m.room.member"}
    assert in_timeline == {others[5].user_id, others[6].user_id}
    # the timeline's member events are not repeated in state
    assert _members(s, room) == sorted(set(heroes) | {alice.user_id})
