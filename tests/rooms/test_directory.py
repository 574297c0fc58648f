"""Room aliases and the published room directory through the HTTP API."""
from urllib.parse import quote

import pytest

from federation.errors import RemoteHTTPError, RemoteUnreachable
from tests.rooms.conftest import user
from web.app import runtime_of
from web.directory import validate_canonical_alias

V = "/_matrix/client/v3"


def alias_path(alias):
    return f"{V}/directory/room/{quote(alias, safe='')}"


class _RemoteSays:
    """A stand-in for the federation client: every request raises ``error``."""

    def __init__(self, error):
        self.error = error

    def request(self, method, destination, path, **kw):
        raise self.error

    def get_json(self, destination, path, **kw):
        raise self.error

    def post_json(self, destination, path, body, **kw):
        raise self.error


def _federation_client(app, error):
    runtime_of(app).parts["federation"].client = _RemoteSays(error)


# ------------------------------------------------------------------------ aliases
def test_alias_crud(app):
    alice = user(app, "alice")
    room_id = alice.create_room()
    alias = "#crud:test.local"
    assert alice.req("PUT", alias_path(alias), {"room_id": room_id}) == {}
    got = alice.req("GET", alias_path(alias))
    assert got == {"room_id": room_id, "servers": ["test.local"]}
    assert alice.req("GET", f"{V}/rooms/{room_id}/aliases") == {"aliases": [alias]}
    alice.req("DELETE", alias_path(alias))
    assert alice.req("GET", alias_path(alias), status=404)["errcode"] == "M_NOT_FOUND"
    assert alice.req("DELETE", alias_path(alias), status=404)["errcode"] == "M_NOT_FOUND"
    assert alice.req("POST", f"{V}/join/{quote(alias, safe='')}",
                     status=404)["errcode"] == "M_NOT_FOUND"
    assert alice.req("GET", f"{V}/rooms/{room_id}/aliases") == {"aliases": []}


def test_alias_taken_is_409_room_in_use(app):
    alice = user(app, "alice")
    a, b = alice.create_room(), alice.create_room()
    alice.req("PUT", alias_path("#taken:test.local"), {"room_id": a})
    err = alice.req("PUT", alias_path("#taken:test.local"), {"room_id": b}, status=409)
    assert err["errcode"] == "M_ROOM_IN_USE"
    assert alice.req("GET", alias_path("#taken:test.local"))["room_id"] == a


def test_alias_bad_input(app):
    _federation_client(app, RemoteHTTPError("elsewhere.org", 404, "M_NOT_FOUND", "unknown"))
    alice = user(app, "alice")
    room_id = alice.create_room()
    for bad in ("#nocolon", "#other:elsewhere.org", "#has space:test.local", "#:test.local"):
        err = alice.req("PUT", alias_path(bad), {"room_id": room_id}, status=400)
        assert err["errcode"] == "M_INVALID_PARAM", bad
    err = alice.req("PUT", alias_path("#x:test.local"), {"room_id": "!nope:test.local"},
                    status=404)
    assert err["errcode"] == "M_NOT_FOUND"
    err = alice.req("PUT", alias_path("#x:test.local"), {"room_id": "nope"}, status=400)
    assert err["errcode"] == "M_INVALID_PARAM"
    assert alice.req("PUT", alias_path("#x:test.local"), {},
                     status=400)["errcode"] == "M_MISSING_PARAM"
    assert alice.req("GET", alias_path("#unknown:elsewhere.org"),
                     status=404)["errcode"] == "M_NOT_FOUND"
    assert alice.req("GET", alias_path("nohash"), status=400)["errcode"] == "M_INVALID_PARAM"


def test_alias_permissions(app):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    admin = user(app, "root", admin=True)
    room_id = alice.create_room(preset="public_chat")
    # not joined: may not create an alias
    err = bob.req("PUT", alias_path("#bob:test.local"), {"room_id": room_id}, status=403)
    assert err["errcode"] == "M_FORBIDDEN"
    bob.req("POST", f"{V}/join/{room_id}")
    carol.req("POST", f"{V}/join/{room_id}")
    bob.req("PUT", alias_path("#bob:test.local"), {"room_id": room_id})
    # carol is neither the creator of the alias nor a room admin
    assert carol.req("DELETE", alias_path("#bob:test.local"),
                     status=403)["errcode"] == "M_FORBIDDEN"
    # the alias creator may delete it
    bob.req("DELETE", alias_path("#bob:test.local"))
    # a room admin may delete someone else's alias
    bob.req("PUT", alias_path("#bob2:test.local"), {"room_id": room_id})
    alice.req("DELETE", alias_path("#bob2:test.local"))
    # a server admin may delete any alias
    bob.req("PUT", alias_path("#bob3:test.local"), {"room_id": room_id})
    admin.req("DELETE", alias_path("#bob3:test.local"))
    assert alice.req("GET", f"{V}/rooms/{room_id}/aliases") == {"aliases": []}


def test_local_aliases_members_only_unless_world_readable(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = alice.create_room(room_alias_name="secret")
    err = bob.req("GET", f"{V}/rooms/{room_id}/aliases", status=403)
    assert err["errcode"] == "M_FORBIDDEN"
    alice.state(room_id, "m.room.history_visibility", body={
        "history_visibility": "world_readable"})
    assert bob.req("GET", f"{V}/rooms/{room_id}/aliases") == {"aliases": ["#secret:test.local"]}


def test_delete_alias_removes_it_from_canonical_alias(app):
    alice = user(app, "alice")
    room_id = alice.create_room(room_alias_name="main")
    alice.req("PUT", alias_path("#alt:test.local"), {"room_id": room_id})
    alice.state(room_id, "m.room.canonical_alias", body={
        "alias": "#main:test.local", "alt_aliases": ["#alt:test.local"]})
    alice.req("DELETE", alias_path("#alt:test.local"))
    assert alice.state(room_id, "m.room.canonical_alias") == {"alias": "#main:test.local"}


def test_alias_creation_rules(hs):
    app = hs(alias_creation_rules=[
        {"user_id": "@bob:*", "action": "deny"},
        {"alias": "#official_*", "action": "deny"},
        {"user_id": "*", "alias": "*", "action": "allow"}])
    alice, bob = user(app, "alice"), user(app, "bob")
    admin = user(app, "root", admin=True)
    room_id = alice.create_room(preset="public_chat")
    bob.req("POST", f"{V}/join/{room_id}")
    assert bob.req("PUT", alias_path("#b:test.local"), {"room_id": room_id},
                   status=403)["errcode"] == "M_FORBIDDEN"
    alice.req("PUT", alias_path("#a:test.local"), {"room_id": room_id})
    alice.req("PUT", alias_path("#official_x:test.local"), {"room_id": room_id}, status=403)
    admin.req("PUT", alias_path("#official_x:test.local"), {"room_id": room_id})


def test_validate_canonical_alias(app):
    from atrium.errors import MatrixError
    from web.app import runtime_of

    svc = runtime_of(app).parts["rooms"]
    alice = user(app, "alice")
    room_id = alice.create_room(room_alias_name="mine")
    other = alice.create_room(room_alias_name="theirs")
    validate_canonical_alias(svc, room_id, {"alias": "#mine:test.local"})
    validate_canonical_alias(svc, room_id, {})
    validate_canonical_alias(svc, room_id, {"alt_aliases": ["#remote:elsewhere.org"]})
    for content, code in (({"alias": "#theirs:test.local"}, "M_BAD_ALIAS"),
                          ({"alt_aliases": ["#missing:test.local"]}, "M_BAD_ALIAS"),
                          ({"alias": "not-an-alias"}, "M_INVALID_PARAM"),
                          ({"alt_aliases": "#mine:test.local"}, "M_INVALID_PARAM")):
        with pytest.raises(MatrixError) as e:
            validate_canonical_alias(svc, room_id, content)
        assert (e.value.status, e.value.errcode) == (400, code), content
    assert other


# ------------------------------------------------------------------------ visibility
def test_directory_visibility_get_put(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = alice.create_room(preset="public_chat")
    path = f"{V}/directory/list/room/{room_id}"
    assert alice.req("GET", path) == {"visibility": "private"}
    alice.req("PUT", path, {"visibility": "public"})
    assert alice.req("GET", path) == {"visibility": "public"}
    bob.req("POST", f"{V}/join/{room_id}")
    # bob lacks power to send m.room.canonical_alias: may neither publish nor unpublish
    assert bob.req("PUT", path, {"visibility": "private"}, status=403)["errcode"] == "M_FORBIDDEN"
    alice.req("PUT", path, {"visibility": "private"})
    assert alice.req("GET", path) == {"visibility": "private"}
    assert alice.req("PUT", path, {"visibility": "hidden"},
                     status=400)["errcode"] == "M_INVALID_PARAM"
    assert alice.req("GET", f"{V}/directory/list/room/!nope:test.local",
                     status=404)["errcode"] == "M_NOT_FOUND"
    assert alice.req("PUT", f"{V}/directory/list/room/!nope:test.local", {},
                     status=404)["errcode"] == "M_NOT_FOUND"


def test_create_room_public_is_listed(app):
    alice = user(app, "alice")
    room_id = alice.create_room(visibility="public", name="Lobby")
    assert alice.req("GET", f"{V}/directory/list/room/{room_id}") == {"visibility": "public"}


@pytest.mark.parametrize("rules, allowed", [
    (None, True),
    ([], False),
    ([{"user_id": "@alice:*", "action": "allow"}], True),
    ([{"user_id": "@alice:*", "action": "deny"}, {"action": "allow"}], False),
    ([{"alias": "#pub*", "action": "allow"}], True),
    ([{"alias": "#other*", "action": "allow"}], False),
    ([{"room_id": "!nomatch*", "action": "allow"}], False),
])
def test_publication_rules(hs, rules, allowed):
    app = hs(**({} if rules is None else {"room_list_publication_rules": rules}))
    alice = user(app, "alice")
    admin = user(app, "root", admin=True)
    room_id = alice.create_room(preset="public_chat", room_alias_name="pubroom")
    path = f"{V}/directory/list/room/{room_id}"
    alice.req("PUT", path, {"visibility": "public"}, status=200 if allowed else 403)
    assert alice.req("GET", path)["visibility"] == ("public" if allowed else "private")
    admin.req("PUT", path, {"visibility": "public"})       # server admins always may
    assert alice.req("GET", path)["visibility"] == "public"


# ------------------------------------------------------------------------ public rooms
def _room_with_members(owner, joiners, **body):
    room_id = owner.create_room(preset="public_chat", visibility="public", **body)
    for u in joiners:
        u.req("POST", f"{V}/join/{room_id}")
    return room_id


def test_public_rooms_order_fields_and_pagination(app):
    users = [user(app, f"u{i}") for i in range(4)]
    big = _room_with_members(users[0], users[1:], name="Big", topic="Lots of people",
                             room_alias_name="big")
    mid = _room_with_members(users[1], users[2:3], name="Middle")
    small = _room_with_members(users[2], [], name="Small")
    hidden = users[0].create_room(preset="public_chat", name="Not published")
    users[0].state(big, "m.room.avatar", body={"url": "mxc://test.local/abc"})
    users[0].state(big, "m.room.history_visibility", body={"history_visibility": "world_readable"})
    users[0].state(big, "m.room.guest_access", body={"guest_access": "can_join"})

    anon = app.test_client()
    r = anon.get(f"{V}/publicRooms")
    assert r.status_code == 200
    full = r.get_json()
    assert [c["room_id"] for c in full["chunk"]] == [big, mid, small]
    assert hidden not in [c["room_id"] for c in full["chunk"]]
    assert full["total_room_count_estimate"] == 3
    assert "next_batch" not in full and "prev_batch" not in full
    entry = full["chunk"][0]
    assert entry == {"room_id": big, "num_joined_members": 4, "name": "Big",
                     "topic": "Lots of people", "canonical_alias": "#big:test.local",
                     "avatar_url": "mxc://test.local/abc", "world_readable": True,
                     "guest_can_join": True, "join_rule": "public"}

    p1 = users[0].req("GET", f"{V}/publicRooms?limit=2")
    assert [c["room_id"] for c in p1["chunk"]] == [big, mid] and "prev_batch" not in p1
    p2 = users[0].req("GET", f"{V}/publicRooms?limit=2&since={p1['next_batch']}")
    assert [c["room_id"] for c in p2["chunk"]] == [small] and "next_batch" not in p2
    back = users[0].req("GET", f"{V}/publicRooms?limit=2&since={p2['prev_batch']}")
    assert [c["room_id"] for c in back["chunk"]] == [big, mid]
    assert "prev_batch" not in back and "next_batch" in back
    p = users[0].req("POST", f"{V}/publicRooms", {"limit": 1, "since": p1["next_batch"]})
    assert [c["room_id"] for c in p["chunk"]] == [small]
    err = users[0].req("GET", f"{V}/publicRooms?since=garbage", status=400)
    assert err["errcode"] == "M_INVALID_PARAM"


def test_public_rooms_filters(app):
    alice = user(app, "alice")
    cats = alice.create_room(visibility="public", name="Cats", topic="meow")
    dogs = alice.create_room(visibility="public", name="Dogs", room_alias_name="woof")
    space = alice.create_room(visibility="public", name="Space",
                              creation_content={"type": "m.space"})
    invite_only = alice.create_room(visibility="public", preset="private_chat", name="Cats 2")

    def search(flt):
        return [c["room_id"] for c in alice.req("POST", f"{V}/publicRooms",
                                                 {"filter": flt})["chunk"]]

    assert set(search({})) == {cats, dogs, space}            # invite-only is not listed
    assert invite_only not in search({"generic_search_term": "cats"})
    assert search({"generic_search_term": "MEOW"}) == [cats]
    assert search({"generic_search_term": "woof"}) == [dogs]
    assert search({"room_types": ["m.space"]}) == [space]
    assert set(search({"room_types": [None]})) == {cats, dogs}
    chunk = alice.req("POST", f"{V}/publicRooms", {"filter": {"room_types": ["m.space"]}})
    assert chunk["chunk"][0]["room_type"] == "m.space"
    assert alice.req("POST", f"{V}/publicRooms", {"third_party_instance_id": "irc"}) == {
        "chunk": [], "total_room_count_estimate": 0}
    assert alice.req("POST", f"{V}/publicRooms", {"include_all_networks": True,
                                                  "third_party_instance_id": "irc"},
                     status=400)["errcode"] == "M_INVALID_PARAM"
    assert alice.req("POST", f"{V}/publicRooms", {"filter": {"room_types": [1]}},
                     status=400)["errcode"] == "M_INVALID_PARAM"
    assert alice.req("POST", f"{V}/publicRooms", {"limit": "x"},
                     status=400)["errcode"] == "M_BAD_JSON"


def test_public_rooms_server_param(app):
    # another server's list is asked over federation: unreachable -> 502 (as Synapse)
    _federation_client(app, RemoteUnreachable("elsewhere.org", "no route"))
    alice = user(app, "alice")
    alice.create_room(visibility="public")
    assert len(alice.req("GET", f"{V}/publicRooms?server=test.local")["chunk"]) == 1
    assert alice.req("GET", f"{V}/publicRooms?server=elsewhere.org",
                     status=502)["errcode"] == "M_UNKNOWN"
    assert alice.req("GET", f"{V}/publicRooms?server=bad%20name",
                     status=400)["errcode"] == "M_INVALID_PARAM"
    assert alice.req("POST", f"{V}/publicRooms?server=elsewhere.org", {},
                     status=502)["errcode"] == "M_UNKNOWN"
    anon = app.test_client()
    assert anon.post(f"{V}/publicRooms", json={}).status_code == 401
    r = anon.get(f"{V}/publicRooms", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401


def test_rule_config_parsing():
    from atrium.config import ConfigError, DirectoryRule, parse_config

    base = {"server_name": "test.local"}
    cfg = parse_config(base)
    assert cfg.room_list_publication_rules is None and cfg.alias_creation_rules is None
    cfg = parse_config({**base, "room_list_publication_rules": [],
                        "alias_creation_rules": [{"alias": "#a*", "action": "deny"}]})
    assert cfg.room_list_publication_rules == ()
    assert cfg.alias_creation_rules == (DirectoryRule(alias="#a*", action="deny"),)
    for bad in ({"action": "maybe"}, {"user_id": 3}, {"colour": "red"}, "allow"):
        with pytest.raises(ConfigError) as e:
            parse_config({**base, "alias_creation_rules": [bad]})
        assert "alias_creation_rules" in str(e.value)
