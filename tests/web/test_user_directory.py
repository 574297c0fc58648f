"""POST /user_directory/search: who may be found (shared rooms, public rooms, join-rule and
history-visibility changes, leaving, remote users met in rooms, search_all_users,
deactivation), matching and ranking (prefix and word matches, accents, user ids,
prefer_local_users), limit / limited, profile changes, the config section, bad input, and
the first build over an existing database."""
from __future__ import annotations

import itertools

import pytest

from atrium.config import ConfigError, parse_config
from atrium.user_directory_config import UserDirectoryConfig, parse_user_directory_config
from store.testing import database_config, drop_schema
from tests.apps import app_factory
from tests.federation.room_pdus_helpers import RemoteServer, receive
from tests.rooms.conftest import Client, user
from web.app import create_app, runtime_of

U = "/_matrix/client/v3/user_directory/search"
P = "/_matrix/client/v3/profile"
_n = itertools.count()
REMOTE = RemoteServer("remote.test")


@pytest.fixture(scope="module")
def apps(tmp_path_factory):
    factory = app_factory(tmp_path_factory.mktemp("userdir"))
    make = next(factory)
    made = {}

    def get(**cfg):
        key = repr(sorted(cfg.items()))
        if key not in made:
            made[key] = make(**cfg)
        return made[key]

    yield get
    for _ in factory:
        pass


@pytest.fixture
def app(apps):
    return apps()


def users(app, *names, display=None):
    k = next(_n)
    out = [user(app, f"{n}{k}") for n in names]
    for c, dn in zip(out, display or ()):
        if dn is not None:
            c.req("PUT", f"{P}/{c.user_id}/displayname", {"displayname": dn})
    return out


def find(c, term, limit=None, status=200):
    body = {"search_term": term} if limit is None else {"search_term": term, "limit": limit}
    return c.req("POST", U, body, status=status)


def ids(c, term, **kw):
    return [r["user_id"] for r in find(c, term, **kw)["results"]]


def join(c, room):
    c.req("POST", f"/_matrix/client/v3/join/{room}")


def test_shared_private_rooms_and_public_rooms(app):
    alice, bob, carol = users(app, "alice", "bob", "carol",
                              display=["Alice Pangolin", "Bob Pangolin", None])
    room = alice.create_room(preset="private_chat", invite=[bob.user_id])
    join(bob, room)
    assert ids(alice, "pangolin") == [bob.user_id]        # never oneself via a private room
    assert ids(bob, "pangolin") == [alice.user_id]
    assert ids(carol, "pangolin") == []                   # shares nothing
    # bob also joins a public room: now everyone may find him
    pub = carol.create_room(preset="public_chat")
    join(bob, pub)
    assert ids(carol, "pangolin") == [bob.user_id]
    res = find(carol, "pangolin")["results"][0]
    assert res == {"user_id": bob.user_id, "display_name": "Bob Pangolin"}
    # leaving takes him out of what others see
    bob.req("POST", f"/_matrix/client/v3/rooms/{pub}/leave")
    assert ids(carol, "pangolin") == []
    bob.req("POST", f"/_matrix/client/v3/rooms/{room}/leave")
    assert ids(alice, "pangolin") == []


def test_join_rule_and_history_visibility_changes(app):
    alice, bob, eve = users(app, "alice", "bob", "eve", display=["Armadillo A", None, None])
    room = alice.create_room(preset="private_chat")
    assert ids(eve, "armadillo") == []
    alice.state(room, "m.room.join_rules", body={"join_rule": "public"})
    assert ids(eve, "armadillo") == [alice.user_id]
    alice.state(room, "m.room.join_rules", body={"join_rule": "invite"})
    assert ids(eve, "armadillo") == []
    alice.state(room, "m.room.history_visibility", body={"history_visibility": "world_readable"})
    assert ids(eve, "armadillo") == [alice.user_id]
    # the server leaving a room forgets who is in it
    alice.req("POST", f"/_matrix/client/v3/rooms/{room}/leave")
    assert ids(eve, "armadillo") == []


def test_prefix_word_accent_and_user_id_matching_and_rank(app):
    seeker, a, b, c, d = users(app, "seeker", "hedge", "hog", "x", "y",
                               display=[None, "Élodie Hedgehog", "Hedge", "Hedgerow Smith",
                                        "Mr Hedge"])
    pub = seeker.create_room(preset="public_chat")
    for u in (a, b, c, d):
        join(u, pub)
    got = ids(seeker, "hedge")
    # exact name first, then names starting with the term, then word matches
    assert got[0] == b.user_id
    assert set(got[1:3]) == {a.user_id, c.user_id} and got[3] == d.user_id
    assert ids(seeker, "elo") == [a.user_id]                 # accents and case folded
    assert ids(seeker, "ÉLODIE hedgeh") == [a.user_id]       # every word must match
    assert ids(seeker, "smi") == [c.user_id]                 # a later word of the name
    assert ids(seeker, a.user_id) == [a.user_id]             # a whole user id
    assert ids(seeker, a.user_id[:-3]) == [a.user_id]        # a user id prefix
    assert ids(seeker, "hog" + a.user_id[-1:]) == []
    assert ids(seeker, b.user_id[1:].split(":")[0]) == [b.user_id]   # localpart
    res = find(seeker, "hedge", limit=2)
    assert len(res["results"]) == 2 and res["limited"] is True
    assert find(seeker, "hedge", limit=0) == {"results": [], "limited": True}
    assert find(seeker, "elodie", limit=1)["limited"] is False
    for term in ("", "  ", "!!!", "@"):
        assert find(seeker, term)["results"] == [] or term == "@"


def test_profile_changes_and_deactivation(app):
    alice, bob = users(app, "alice", "bob", display=[None, "Quetzal"])
    room = alice.create_room(preset="private_chat", invite=[bob.user_id])
    join(bob, room)
    assert ids(alice, "quetzal") == [bob.user_id]
    bob.req("PUT", f"{P}/{bob.user_id}/displayname", {"displayname": "Kiwi"})
    bob.req("PUT", f"{P}/{bob.user_id}/avatar_url", {"avatar_url": "mxc://test.local/k"})
    assert ids(alice, "quetzal") == []
    assert find(alice, "kiwi")["results"] == [
        {"user_id": bob.user_id, "display_name": "Kiwi", "avatar_url": "mxc://test.local/k"}]
    runtime_of(app).parts["accounts"].deactivate(bob.user_id)
    assert ids(alice, "kiwi") == [] and ids(alice, bob.user_id) == []


def test_remote_users_met_in_rooms(app):
    alice, eve = users(app, "alice", "eve")
    k = next(_n)
    room = alice.create_room(preset="private_chat",
                             power_level_content_override={"invite": 0})
    alice.state(room, "m.room.join_rules", body={"join_rule": "public"})
    dave = REMOTE.user(f"dave{k}")
    ev = REMOTE.event(app, room, dave, "m.room.member",
                      {"membership": "join", "displayname": "Dave Tapir"}, state_key=dave)
    assert receive(app, room, [ev]) == {ev["event_id"]: "accepted"}
    assert find(eve, "tapir")["results"] == [{"user_id": dave, "display_name": "Dave Tapir"}]
    # a per-room name in a private room does not replace the public room's
    priv = alice.create_room(preset="private_chat",
                             power_level_content_override={"invite": 0})
    alice.state(priv, "m.room.join_rules", body={"join_rule": "public"})
    ev2 = REMOTE.event(app, priv, dave, "m.room.member",
                       {"membership": "join", "displayname": "Dave Tapir"}, state_key=dave)
    receive(app, priv, [ev2])
    alice.state(priv, "m.room.join_rules", body={"join_rule": "invite"})
    assert ids(alice, "tapir") == [dave]          # (and the directory has seen all that)
    ev3 = REMOTE.event(app, priv, dave, "m.room.member",
                       {"membership": "join", "displayname": "Still Secret"}, state_key=dave)
    receive(app, priv, [ev3])
    assert ids(alice, "still") == [] and ids(alice, "tapir") == [dave]
    # a name no index could hold whole (one 5,000-letter word) does not stop the directory
    odd = REMOTE.user(f"odd{k}")
    ev4 = REMOTE.event(app, room, odd, "m.room.member",
                       {"membership": "join", "displayname": "q" * 5000 + " Ocelot"},
                       state_key=odd)
    receive(app, room, [ev4])
    assert ids(eve, "ocelot") == [odd] and ids(eve, "qqqq") == [odd]
    # leaving the public room: only those sharing a room still find dave
    leave = REMOTE.event(app, room, dave, "m.room.member", {"membership": "leave"},
                         state_key=dave)
    receive(app, room, [leave])
    assert ids(eve, "tapir") == [] and ids(alice, "tapir") == [dave]


def test_search_all_users_and_prefer_local(apps):
    app = apps(user_directory={"search_all_users": True, "prefer_local_users": True})
    alice, loner = users(app, "alice", "loner", display=[None, "Lonely Marmot"])
    assert ids(alice, "marmot") == [loner.user_id]             # shares no room at all
    assert ids(loner, "marmot") == []                          # never oneself
    k = next(_n)
    room = alice.create_room(preset="private_chat")
    alice.state(room, "m.room.join_rules", body={"join_rule": "public"})
    far = REMOTE.user(f"marmot{k}")
    ev = REMOTE.event(app, room, far, "m.room.member", {"membership": "join"}, state_key=far)
    receive(app, room, [ev])
    near = f"@marmotte{k}:test.local"     # registered: listed without any room
    runtime_of(app).parts["accounts"].register_user(near, None)
    # the remote user is an exact match, but local users come first
    got = ids(alice, f"marmot{k}")
    assert got == [far] and ids(alice, "marmot")[-1] == far
    # local first; among them the localpart starting with the term before a later word
    assert ids(alice, "marmot") == [near, loner.user_id, far]
    runtime_of(app).parts["accounts"].register_user(f"@walrus{k}:test.local", None,
                                                    displayname="Walrus Fresh")
    assert ids(alice, "walrus fresh") == [f"@walrus{k}:test.local"]
    accounts = runtime_of(app).parts["accounts"]
    accounts.register_user(f"@guest{k}:test.local", None, guest=True, displayname="Walrus G")
    accounts.register_user(f"@help{k}:test.local", None, user_type="support",
                           displayname="Walrus H")
    assert ids(alice, "walrus") == [f"@walrus{k}:test.local"]    # no guests, no support
    excl = apps(user_directory={"search_all_users": True, "exclude_remote_users": True})
    a2, = users(excl, "alice")
    room2 = a2.create_room(preset="public_chat")
    ev2 = REMOTE.event(excl, room2, far, "m.room.member", {"membership": "join"},
                       state_key=far)
    receive(excl, room2, [ev2])
    assert ids(a2, f"marmot{k}") == []


def test_disabled_directory_and_bad_input(apps):
    app = apps(user_directory={"enabled": False})
    alice, bob = users(app, "alice", "bob")
    room = alice.create_room(preset="public_chat")
    join(bob, room)
    assert find(alice, "bob") == {"results": [], "limited": False}
    for body, code in (({}, "M_MISSING_PARAM"), ({"search_term": 1}, "M_BAD_JSON"),
                       ({"search_term": "a", "limit": "5"}, "M_BAD_JSON"),
                       ({"search_term": "a", "limit": True}, "M_BAD_JSON"),
                       ({"search_term": "a" * 2000}, "M_INVALID_PARAM")):
        assert alice.req("POST", U, body, status=400)["errcode"] == code
    r = alice.c.post(U, data="nope", headers=alice.h)
    assert r.status_code == 400 and r.get_json()["errcode"] == "M_NOT_JSON"
    r = app.test_client().post(U, json={"search_term": "a"})
    assert r.status_code == 401


def test_guests_may_not_search(apps):
    app = apps(allow_guest_access=True)
    c = app.test_client()
    r = c.post("/_matrix/client/v3/register?kind=guest", json={})
    assert r.status_code == 200, r.get_json()
    h = {"Authorization": f"Bearer {r.get_json()['access_token']}"}
    r = c.post(U, json={"search_term": "a"}, headers=h)
    assert r.status_code == 403 and r.get_json()["errcode"] == "M_GUEST_ACCESS_FORBIDDEN"
    r = c.post("/_matrix/client/v3/search", headers=h,
               json={"search_categories": {"room_events": {"search_term": "a"}}})
    assert r.status_code == 403 and r.get_json()["errcode"] == "M_GUEST_ACCESS_FORBIDDEN"


def test_config_section():
    assert parse_user_directory_config({}) == UserDirectoryConfig()
    cfg = parse_user_directory_config({"user_directory": {"search_all_users": True,
                                                          "show_locked_users": True}})
    assert cfg.search_all_users and cfg.enabled and not cfg.prefer_local_users
    for section, key in (([], "'user_directory'"),
                         ({"enabled": "yes"}, "'user_directory.enabled'"),
                         ({"prefer_local_users": 1}, "'user_directory.prefer_local_users'")):
        with pytest.raises(ConfigError) as e:
            parse_user_directory_config({"user_directory": section})
        assert key in str(e.value) and "\n" not in str(e.value)
    import yaml
    from pathlib import Path
    example = yaml.safe_load((Path(__file__).resolve().parents[2]
                              / "config.example.yaml").read_text())
    assert "user_directory" in example
    assert parse_user_directory_config(example) == UserDirectoryConfig()


def test_first_build_over_an_existing_database(tmp_path):
    dbcfg, schema = database_config(str(tmp_path))
    raw = {"server_name": "test.local", "bcrypt_rounds": 4, "database": dbcfg,
           "signing_key_path": str(tmp_path / "signing.key"),
           "media_store_path": str(tmp_path / "media"),
           "rc_joins": {"local": {"per_second": 1000, "burst_count": 1000}}}
    try:
        first = create_app(parse_config(raw))
        alice, bob = user(first, "alice"), user(first, "bob")
        bob.req("PUT", f"{P}/{bob.user_id}/displayname", {"displayname": "Binturong"})
        room = alice.create_room(preset="public_chat")
        join(bob, room)
        # as if the directory had never existed
        runtime_of(first).db.run("reset", lambda t: [t.execute(s) for s in (
            "DELETE FROM user_directory", "DELETE FROM user_directory_rooms",
            "UPDATE user_directory_position SET stream_ordering = 0, built = 0")], write=True)
        if runtime_of(first).db.engine != "postgres":
            runtime_of(first).db.run("reset_fts", lambda t: t.execute(
                "DELETE FROM user_directory_search"), write=True)
        runtime_of(first).shutdown()
        second = create_app(parse_config(raw))
        carol = user(second, "carol")
        follower = runtime_of(second).parts["user_directory_follower"]
        assert follower.wait_for(runtime_of(second).parts["rooms"].events.stream.current(), 10)
        assert ids(carol, "binturong") == [bob.user_id]
        assert Client(second, alice.user_id, "tok_alice") and ids(carol, "alice") == [
            alice.user_id]
        runtime_of(second).shutdown()
    finally:
        drop_schema(schema)
