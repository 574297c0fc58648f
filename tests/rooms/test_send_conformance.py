"""Sending events (issue "Client-Server conformance"): the spec's 255-byte limits on
client-built events, setting unchanged state is a no-op, one annotation per (sender, key,
target), createRoom's room_version type, and v12 trusted_private_chat's creators."""
from urllib.parse import quote

import pytest

from tests.rooms.conftest import user

V = "/_matrix/client/v3"
V1 = "/_matrix/client/v1"


def q(eid):
    return quote(eid, safe="")


def test_type_and_state_key_over_255_bytes_are_refused(app):
    alice = user(app, "alice")
    room_id = alice.create_room()
    err = alice.send(room_id, etype="m." + "x" * 254, status=400)
    assert err["errcode"] == "M_BAD_JSON" and "type" in err["error"]
    alice.send(room_id, etype="m." + "x" * 253)                     # exactly 255: fine
    err = alice.state(room_id, "m.room.topic", key="é" * 128, body={"topic": "t"}, status=400)
    assert err["errcode"] == "M_BAD_JSON" and "state_key" in err["error"]   # 256 bytes
    err = alice.req("POST", f"{V}/createRoom",
                    {"initial_state": [{"type": "t" * 256, "content": {}}]}, status=400)
    assert err["errcode"] == "M_BAD_JSON"


def test_same_state_twice_returns_the_existing_event(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = alice.create_room(preset="public_chat")
    first = alice.state(room_id, "m.room.topic", body={"topic": "same"})["event_id"]
    again = alice.state(room_id, "m.room.topic", body={"topic": "same"})["event_id"]
    assert again == first
    msgs = alice.req("GET", f"{V}/rooms/{room_id}/messages?dir=b&limit=50")["chunk"]
    assert sum(e["type"] == "m.room.topic" for e in msgs) == 1
    changed = alice.state(room_id, "m.room.topic", body={"topic": "other"})["event_id"]
    assert changed != first
    # another sender setting the same content is a new event
    pl = alice.state(room_id, "m.room.power_levels")
    pl["users"][bob.user_id] = 100
    alice.state(room_id, "m.room.power_levels", body=pl)
    bob.req("POST", f"{V}/join/{room_id}")
    assert bob.state(room_id, "m.room.topic", body={"topic": "other"})["event_id"] != changed
    # joining again with the same content: the existing join
    join = alice.req("GET", f"{V}/rooms/{room_id}/state/m.room.member/{alice.user_id}"
                     "?format=event")["event_id"]
    assert alice.req("POST", f"{V}/join/{room_id}")["room_id"] == room_id
    assert alice.req("GET", f"{V}/rooms/{room_id}/state/m.room.member/{alice.user_id}"
                     "?format=event")["event_id"] == join


def _react(client, room_id, target, key="👍", status=200):
    return client.send(room_id, {"m.relates_to": {"rel_type": "m.annotation",
                                                  "event_id": target, "key": key}},
                       etype="m.reaction", status=status)


def test_duplicate_annotation_is_refused(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = alice.create_room(preset="public_chat")
    bob.req("POST", f"{V}/join/{room_id}")
    target = alice.send(room_id)["event_id"]
    first = _react(alice, room_id, target)["event_id"]
    err = _react(alice, room_id, target, status=400)
    assert err["errcode"] == "M_DUPLICATE_ANNOTATION"
    _react(alice, room_id, target, key="🎉")    # another key
    _react(bob, room_id, target)                # another sender
    chunk = alice.req("GET", f"{V1}/rooms/{room_id}/relations/{q(target)}/m.annotation")["chunk"]
    assert len(chunk) == 3
    # after redacting it, the same reaction may be sent again
    alice.req("PUT", f"{V}/rooms/{room_id}/redact/{q(first)}/r1", {})
    _react(alice, room_id, target)


def test_create_room_version_must_be_a_string(app):
    alice = user(app, "alice")
    for bad in (10, ["10"], {"v": 1}, True):
        err = alice.req("POST", f"{V}/createRoom", {"room_version": bad}, status=400)
        assert err["errcode"] == "M_BAD_JSON", bad
    err = alice.req("POST", f"{V}/createRoom", {"room_version": "99"}, status=400)
    assert err["errcode"] == "M_UNSUPPORTED_ROOM_VERSION"


@pytest.mark.parametrize("version,extra", [("12", True), ("11", False)])
def test_trusted_private_chat_invitees_are_creators_in_v12(app, version, extra):
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = alice.create_room(room_version=version, preset="trusted_private_chat",
                                invite=[bob.user_id], is_direct=True)
    create = alice.state(room_id, "m.room.create")
    pl = alice.state(room_id, "m.room.power_levels")
    if extra:
        assert create["additional_creators"] == [bob.user_id]
        assert bob.user_id not in pl["users"]
    else:
        assert "additional_creators" not in create
        assert pl["users"][bob.user_id] == 100
