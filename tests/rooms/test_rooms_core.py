"""Rooms through the HTTP API: creation, sending, state, membership and their errors."""
from urllib.parse import quote

import pytest

from tests.rooms.conftest import user

V = "/_matrix/client/v3"


@pytest.mark.parametrize("version", [str(v) for v in range(1, 13)])
def test_create_room_every_version_and_send(app, version):
    alice = user(app, "alice")
    room_id = alice.create_room(room_version=version, name="Room", topic="Topic")
    assert alice.state(room_id, "m.room.name") == {"name": "Room"}
    assert alice.state(room_id, "m.room.create")["room_version"] == version
    eid = alice.send(room_id)["event_id"]
    ev = alice.req("GET", f"{V}/rooms/{room_id}/event/{quote(eid, safe='')}")
    assert ev["content"]["body"] == "hi" and ev["sender"] == alice.user_id
    assert ev["room_id"] == room_id
    assert alice.req("GET", f"{V}/joined_rooms")["joined_rooms"] == [room_id]


def test_send_is_idempotent_per_txn(app):
    alice = user(app, "alice")
    room_id = alice.create_room()
    a = alice.send(room_id, txn="same")["event_id"]
    b = alice.send(room_id, {"msgtype": "m.text", "body": "different"}, txn="same")["event_id"]
    assert a == b
    c = alice.send(room_id, txn="other")["event_id"]
    assert c != a


def test_membership_flow_and_power(app):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    room_id = alice.create_room(preset="public_chat")
    bob.req("POST", f"{V}/join/{room_id}")
    bob.send(room_id)
    # bob (power 0) may not kick
    err = bob.req("POST", f"{V}/rooms/{room_id}/kick", {"user_id": alice.user_id}, status=403)
    assert err["errcode"] == "M_FORBIDDEN"
    alice.req("POST", f"{V}/rooms/{room_id}/kick", {"user_id": bob.user_id, "reason": "x"})
    bob.send(room_id, status=403)
    alice.req("POST", f"{V}/rooms/{room_id}/ban", {"user_id": carol.user_id})
    assert carol.req("POST", f"{V}/join/{room_id}", status=403)["errcode"] == "M_FORBIDDEN"
    alice.req("POST", f"{V}/rooms/{room_id}/unban", {"user_id": carol.user_id})
    carol.req("POST", f"{V}/join/{room_id}")
    members = alice.req("GET", f"{V}/rooms/{room_id}/joined_members")["joined"]
    assert set(members) == {alice.user_id, carol.user_id}
    carol.req("POST", f"{V}/rooms/{room_id}/leave")
    carol.req("POST", f"{V}/rooms/{room_id}/forget")


def test_private_room_needs_invite(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = alice.create_room()
    assert bob.req("POST", f"{V}/rooms/{room_id}/join", status=403)["errcode"] == "M_FORBIDDEN"
    alice.req("POST", f"{V}/rooms/{room_id}/invite", {"user_id": bob.user_id})
    bob.req("POST", f"{V}/rooms/{room_id}/join")
    bob.send(room_id)


def test_unknown_room_and_bad_ids(app):
    alice = user(app, "alice")
    assert alice.send("!nope:test.local", status=404)["errcode"] == "M_NOT_FOUND"
    assert alice.req("POST", f"{V}/join/!nope:test.local", status=404)["errcode"] == "M_NOT_FOUND"
    assert alice.send("not-a-room", status=400)["errcode"] == "M_INVALID_PARAM"
    assert alice.req("POST", f"{V}/createRoom", {"room_version": "99"},
                     status=400)["errcode"] == "M_UNSUPPORTED_ROOM_VERSION"


def test_state_put_get_and_redaction(app):
    alice = user(app, "alice")
    room_id = alice.create_room()
    alice.state(room_id, "m.room.topic", body={"topic": "new"})
    assert alice.state(room_id, "m.room.topic")["topic"] == "new"
    eid = alice.send(room_id)["event_id"]
    alice.req("PUT", f"{V}/rooms/{room_id}/redact/{quote(eid, safe='')}/r1", {"reason": "oops"})
    ev = alice.req("GET", f"{V}/rooms/{room_id}/event/{quote(eid, safe='')}")
    assert ev["content"] == {}
    assert ev["unsigned"]["redacted_because"]["content"]["reason"] == "oops"
    state = alice.req("GET", f"{V}/rooms/{room_id}/state")
    assert {e["type"] for e in state} >= {"m.room.create", "m.room.member", "m.room.topic"}


def test_event_too_large_and_non_canonical(app):
    alice = user(app, "alice")
    room_id = alice.create_room()
    err = alice.send(room_id, {"body": "x" * 70000}, status=413)
    assert err["errcode"] == "M_TOO_LARGE"
    err = alice.send(room_id, {"body": 1.5}, status=400)
    assert err["errcode"] == "M_BAD_JSON"


def test_alias_on_create_and_join_by_alias(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = alice.create_room(preset="public_chat", room_alias_name="lobby")
    assert bob.req("POST", f"{V}/join/%23lobby:test.local")["room_id"] == room_id
    err = alice.req("POST", f"{V}/createRoom", {"room_alias_name": "lobby"}, status=400)
    assert err["errcode"] == "M_ROOM_IN_USE"


def test_profile_change_is_resent_into_joined_rooms(app):
    alice = user(app, "alice")
    room_id = alice.create_room()
    alice.req("PUT", f"{V}/profile/{alice.user_id}/displayname", {"displayname": "Alice A."})
    member = alice.state(room_id, "m.room.member", alice.user_id)
    assert member["displayname"] == "Alice A." and member["membership"] == "join"


def test_canonical_alias_must_point_at_this_room(app):
    alice = user(app, "alice")
    room_a = alice.create_room(room_alias_name="aaa")
    room_b = alice.create_room()
    err = alice.state(room_b, "m.room.canonical_alias", body={"alias": "#aaa:test.local"},
                      status=400)
    assert err["errcode"] == "M_BAD_ALIAS"
    alice.state(room_a, "m.room.canonical_alias", body={"alias": "#aaa:test.local"})


def test_identical_v12_creates_at_once_get_distinct_rooms(app):
    import gevent

    alice = user(app, "alice")
    jobs = [gevent.spawn(alice.create_room, room_version="12") for _ in range(6)]
    gevent.joinall(jobs, raise_error=True)
    assert len({j.value for j in jobs}) == 6
