"""Room upgrades end to end: tombstone, predecessor, copied state, moved aliases and
directory entry, restricted old room."""
from urllib.parse import quote

import pytest

from protocol.room_versions import KNOWN_ROOM_VERSIONS
from tests.rooms.conftest import user
from web.room_upgrade import plan_upgrade, restricted_power_levels

V = "/_matrix/client/v3"


def upgrade(client, room_id, body, status=200):
    return client.req("POST", f"{V}/rooms/{room_id}/upgrade", body, status=status)


def state_types(client, room_id):
    return {(e["type"], e["state_key"]): e for e in
            client.req("GET", f"{V}/rooms/{room_id}/state")}


@pytest.mark.parametrize("old, new", [("1", "12"), ("5", "12"), ("9", "12"), ("10", "12"),
                                      ("11", "12"), ("12", "12"), ("1", "10"), ("6", "10"),
                                      ("12", "10")])
def test_upgrade_end_to_end(app, old, new):
    alice, bob = user(app, "alice"), user(app, "bob")
    users = {bob.user_id: 50} if old == "12" else {alice.user_id: 100, bob.user_id: 50}
    room_id = alice.create_room(room_version=old, preset="public_chat", visibility="public",
                                name="Old name", topic="Old topic", room_alias_name="hall",
                                power_level_content_override={"users": users})
    carol = user(app, "carol")
    bob.req("POST", f"{V}/join/{room_id}")
    carol.req("POST", f"{V}/join/{room_id}")
    alice.state(room_id, "m.room.avatar", body={"url": "mxc://test.local/av"})
    alice.state(room_id, "m.room.guest_access", body={"guest_access": "can_join"})
    alice.state(room_id, "m.room.server_acl", body={"allow": ["*"], "deny": ["bad.example"],
                                                    "allow_ip_literals": False})
    alice.state(room_id, "m.room.encryption", body={"algorithm": "m.megolm.v1.aes-sha2"})
    alice.req("PUT", f"{V}/directory/room/{quote('#side:test.local', safe='')}",
              {"room_id": room_id})
    alice.state(room_id, "m.room.canonical_alias", body={
        "alias": "#hall:test.local", "alt_aliases": ["#side:test.local"]})
    last = alice.send(room_id)["event_id"]

    new_id = upgrade(alice, room_id, {"new_version": new})["replacement_room"]
    assert new_id != room_id

    # the old room: tombstoned, canonical alias cleared, restricted, unpublished
    tomb = alice.state(room_id, "m.room.tombstone")
    assert tomb["replacement_room"] == new_id and tomb["body"]
    assert alice.state(room_id, "m.room.canonical_alias") == {}
    old_pl = alice.state(room_id, "m.room.power_levels")
    assert old_pl["events_default"] == 50 and old_pl["invite"] == 50
    assert carol.send(room_id, status=403)["errcode"] == "M_FORBIDDEN"   # power 0 < 50
    bob.send(room_id)                                                     # power 50
    assert alice.req("GET", f"{V}/directory/list/room/{room_id}") == {"visibility": "private"}

    # the new room: predecessor, version, copied state
    create = alice.state(new_id, "m.room.create")
    assert create["room_version"] == new
    assert create["predecessor"]["room_id"] == room_id
    assert create["predecessor"]["event_id"] == last
    st = state_types(alice, new_id)
    assert st[("m.room.name", "")]["content"] == {"name": "Old name"}
    assert st[("m.room.topic", "")]["content"]["topic"] == "Old topic"
    assert st[("m.room.avatar", "")]["content"] == {"url": "mxc://test.local/av"}
    assert st[("m.room.join_rules", "")]["content"] == {"join_rule": "public"}
    assert st[("m.room.guest_access", "")]["content"] == {"guest_access": "can_join"}
    assert st[("m.room.server_acl", "")]["content"]["deny"] == ["bad.example"]
    assert st[("m.room.encryption", "")]["content"]["algorithm"] == "m.megolm.v1.aes-sha2"
    assert st[("m.room.history_visibility", "")]["content"] == {"history_visibility": "shared"}
    assert st[("m.room.canonical_alias", "")]["content"] == {
        "alias": "#hall:test.local", "alt_aliases": ["#side:test.local"]}
    members = {k[1] for k in st if k[0] == "m.room.member"}
    assert members == {alice.user_id}
    pl = st[("m.room.power_levels", "")]["content"]
    assert pl["users"][bob.user_id] == 50
    if new == "12":
        assert alice.user_id not in pl["users"]
    else:
        assert pl["users"][alice.user_id] == 100
    # aliases and the directory entry moved
    for alias in ("#hall:test.local", "#side:test.local"):
        got = alice.req("GET", f"{V}/directory/room/{quote(alias, safe='')}")
        assert got["room_id"] == new_id
    assert alice.req("GET", f"{V}/rooms/{new_id}/aliases")["aliases"] == [
        "#hall:test.local", "#side:test.local"]
    assert alice.req("GET", f"{V}/directory/list/room/{new_id}") == {"visibility": "public"}
    listed = [c["room_id"] for c in alice.req("GET", f"{V}/publicRooms")["chunk"]]
    assert listed == [new_id]
    # the new room works: bob can join by alias and talk
    assert bob.req("POST", f"{V}/join/%23hall:test.local")["room_id"] == new_id
    bob.send(new_id)


def test_upgrade_room_type_and_additional_creators(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = alice.create_room(room_version="11", creation_content={"type": "m.space"},
                                power_level_content_override={
                                    "users": {alice.user_id: 100, bob.user_id: 100}})
    new_id = upgrade(alice, room_id, {"new_version": "12",
                                      "additional_creators": [bob.user_id]})["replacement_room"]
    create = alice.state(new_id, "m.room.create")
    assert create["type"] == "m.space"
    assert create["additional_creators"] == [bob.user_id]
    assert "event_id" in create["predecessor"]
    pl = alice.state(new_id, "m.room.power_levels")
    assert bob.user_id not in pl["users"] and alice.user_id not in pl["users"]
    # additional_creators are ignored for versions without them
    other = alice.create_room(room_version="10")
    new10 = upgrade(alice, other, {"new_version": "10",
                                   "additional_creators": [bob.user_id]})["replacement_room"]
    assert "additional_creators" not in alice.state(new10, "m.room.create")


def test_upgrade_moderator_with_tombstone_power_gets_a_temporary_level(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = alice.create_room(room_version="10", preset="public_chat",
                                power_level_content_override={
                                    "users": {alice.user_id: 100, bob.user_id: 60},
                                    "events": {"m.room.tombstone": 60,
                                               "m.room.history_visibility": 100,
                                               "m.room.power_levels": 100}})
    bob.req("POST", f"{V}/join/{room_id}")
    new_id = upgrade(bob, room_id, {"new_version": "10"})["replacement_room"]
    pl = bob.state(new_id, "m.room.power_levels")
    assert pl["users"][bob.user_id] == 60 and pl["users"][alice.user_id] == 100
    assert bob.state(new_id, "m.room.history_visibility") == {"history_visibility": "shared"}
    # bob (60) could not restrict the old room's power levels (needs 100): upgrade stands
    assert bob.state(room_id, "m.room.tombstone")["replacement_room"] == new_id


def test_upgrade_errors(app):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    room_id = alice.create_room(preset="public_chat")
    bob.req("POST", f"{V}/join/{room_id}")
    assert upgrade(alice, room_id, {"new_version": "99"},
                   status=400)["errcode"] == "M_UNSUPPORTED_ROOM_VERSION"
    assert upgrade(alice, room_id, {}, status=400)["errcode"] == "M_MISSING_PARAM"
    assert upgrade(alice, room_id, {"new_version": 10}, status=400)["errcode"] == "M_BAD_JSON"
    assert upgrade(alice, room_id, {"new_version": "12", "additional_creators": ["x"]},
                   status=400)["errcode"] == "M_INVALID_PARAM"
    assert upgrade(bob, room_id, {"new_version": "12"}, status=403)["errcode"] == "M_FORBIDDEN"
    assert upgrade(carol, room_id, {"new_version": "12"}, status=403)["errcode"] == "M_FORBIDDEN"
    assert upgrade(alice, "!nope:test.local", {"new_version": "12"},
                   status=404)["errcode"] == "M_NOT_FOUND"
    assert upgrade(alice, "nope", {"new_version": "12"}, status=400)["errcode"] == "M_INVALID_PARAM"
    # nothing happened to the room
    alice.state(room_id, "m.room.tombstone", status=404)


def test_plan_from_v12_to_v10_keeps_creators_powerful():
    v12, v10 = KNOWN_ROOM_VERSIONS["12"], KNOWN_ROOM_VERSIONS["10"]
    create = {"sender": "@a:x", "content": {"room_version": "12",
                                            "additional_creators": ["@c:x"]}}
    plan = plan_upgrade(v12, v10, "@a:x", create,
                        {"m.room.power_levels": {"users": {"@b:x": 50}}}, "!old", "$e",
                        [], {"membership": "join"})
    pls = [s for s in plan.initial if s.type == "m.room.power_levels"]
    assert pls[-1].content["users"] == {"@b:x": 50, "@a:x": 100, "@c:x": 100}
    assert plan.create_content["creator"] == "@a:x"


def test_plan_normalises_stringy_levels_for_v10():
    v1, v10 = KNOWN_ROOM_VERSIONS["1"], KNOWN_ROOM_VERSIONS["10"]
    create = {"sender": "@a:x", "content": {"room_version": "1", "creator": "@a:x"}}
    plan = plan_upgrade(v1, v10, "@a:x", create, {"m.room.power_levels": {
        "users": {"@a:x": "100", "@b:x": 50.0, "@c:x": "lots"}, "ban": " 40 ", "events": {"m.x": "bad"}}},
        "!old", None, [], {"membership": "join"})
    pl = [s for s in plan.initial if s.type == "m.room.power_levels"][-1].content
    assert pl["users"] == {"@a:x": 100, "@b:x": 50} and pl["ban"] == 40 and pl["events"] == {}
    assert "event_id" not in plan.create_content["predecessor"]


def test_restricted_power_levels():
    v10 = KNOWN_ROOM_VERSIONS["10"]
    assert restricted_power_levels(v10, {"users_default": 60}) == {
        "users_default": 60, "events_default": 61, "invite": 61}
    assert restricted_power_levels(v10, {"events_default": 70, "invite": 50}) is None
    assert restricted_power_levels(v10, None) is None
