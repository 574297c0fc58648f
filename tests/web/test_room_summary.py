"""``GET /_matrix/client/v1/room_summary/{roomIdOrAlias}`` (room_summary.yaml, MSC3266):
the summary fields, who may preview what (a room the requester may not see is 404 exactly
like an unknown one), unauthenticated and guest access, aliases, bad input, and rooms this
server is not in, summarised from a via server's federation /hierarchy answer (a stand-in
federation client) or from a pending invite's stripped state."""
from __future__ import annotations

from urllib.parse import quote

import pytest

from store.accounts import hash_token
from tests.apps import app_factory
from tests.rooms.conftest import Client, user
from web.app import runtime_of

V = "/_matrix/client/v3"
S = "/_matrix/client/v1/room_summary/"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    factory = app_factory(tmp_path_factory.mktemp("summary"))
    app = next(factory)(allow_guest_access=True)
    users = {name: user(app, name) for name in ("alice", "bob", "carol")}
    yield dict(app=app, **users)
    for _ in factory:
        pass


def summary(c, target, status=200, **query):
    path = S + quote(target, safe="!:")
    qs = "&".join(f"{k}={v}" for k, vs in query.items()
                  for v in (vs if isinstance(vs, list) else [vs]))
    return c.req("GET", path + (f"?{qs}" if qs else ""), status=status)


def anonymous(app, target, status=200, query=""):
    r = app.test_client().get(S + quote(target, safe="!:") + query)
    assert r.status_code == status, r.get_data(as_text=True)
    return r.get_json()


def test_a_public_room_by_id_and_by_alias(env):
    alice, bob = env["alice"], env["bob"]
    room = alice.create_room(preset="public_chat", name="Cheese", topic="Tasty",
                             room_alias_name="cheese", room_version="11")
    alice.state(room, "m.room.avatar", body={"url": "mxc://test.local/cheddar"})
    got = summary(bob, room)
    assert got == {
        "room_id": room, "name": "Cheese", "topic": "Tasty",
        "canonical_alias": "#cheese:test.local", "avatar_url": "mxc://test.local/cheddar",
        "num_joined_members": 1, "join_rule": "public", "world_readable": False,
        "guest_can_join": False, "room_version": "11", "membership": "leave"}
    assert summary(bob, "#cheese:test.local") == got
    assert summary(alice, room)["membership"] == "join"
    # the unstable MSC3266 path answers the same
    assert bob.req("GET", "/_matrix/client/unstable/im.nheko.summary/summary/" + room) == got


def test_a_room_the_user_may_not_see_is_404_like_an_unknown_room(env):
    alice, bob = env["alice"], env["bob"]
    room = alice.create_room(preset="private_chat", name="Secret", room_alias_name="secret")
    unknown = summary(bob, "!nosuchroom:test.local", status=404)
    assert unknown["errcode"] == "M_NOT_FOUND"
    assert summary(bob, room, status=404) == unknown
    assert summary(bob, "#secret:test.local", status=404) == unknown
    assert anonymous(env["app"], room, status=404) == unknown
    assert summary(alice, room)["membership"] == "join"
    # invited: may preview, and is told so
    alice.req("POST", f"{V}/rooms/{room}/invite", {"user_id": bob.user_id})
    got = summary(bob, room)
    assert got["membership"] == "invite" and got["name"] == "Secret"
    assert got["join_rule"] == "invite"
    # banned: no more
    alice.req("POST", f"{V}/rooms/{room}/ban", {"user_id": bob.user_id})
    assert summary(bob, room, status=404) == unknown


def test_unauthenticated_and_guest_access(env):
    app, alice = env["app"], env["alice"]
    public = alice.create_room(preset="public_chat", name="Open")
    readable = alice.create_room(preset="private_chat", name="Readable")
    alice.state(readable, "m.room.history_visibility",
                body={"history_visibility": "world_readable"})
    got = anonymous(app, public)
    assert got["name"] == "Open" and "membership" not in got
    assert anonymous(app, readable)["world_readable"] is True
    # a token that is wrong is not "no token"
    r = app.test_client().get(S + public, headers={"Authorization": "Bearer nonsense"})
    assert r.status_code == 401 and r.get_json()["errcode"] == "M_UNKNOWN_TOKEN"
    # guests may ask
    token = "guest_token_summary"

    def _add(txn):
        txn.execute("INSERT INTO users (name, creation_ts, is_guest) VALUES (?, ?, 1)",
                    ("@g1:test.local", 0))
        txn.execute("INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts)"
                    " VALUES (?, ?, ?, ?)", (hash_token(token), "@g1:test.local", "G", 0))

    runtime_of(app).db.run("add_guest", _add, write=True)
    guest = Client(app, "@g1:test.local", token)
    assert summary(guest, public)["membership"] == "leave"


def test_space_type_encryption_knock_and_restricted(env):
    alice, bob, carol = env["alice"], env["bob"], env["carol"]
    space = alice.create_room(
        preset="public_chat", creation_content={"type": "m.space"},
        initial_state=[{"type": "m.room.encryption", "state_key": "",
                        "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
    got = summary(carol, space)
    assert got["room_type"] == "m.space" and got["encryption"] == "m.megolm.v1.aes-sha2"
    assert "children_state" not in got
    # knock: anyone may preview
    knock = alice.create_room(preset="private_chat", name="Knock")
    alice.state(knock, "m.room.join_rules", body={"join_rule": "knock"})
    assert summary(carol, knock)["join_rule"] == "knock"
    # restricted: only members of an allowed room
    restricted = alice.create_room(preset="private_chat", name="Members only")
    alice.state(restricted, "m.room.join_rules", body={
        "join_rule": "restricted",
        "allow": [{"type": "m.room_membership", "room_id": space}]})
    bob.req("POST", f"{V}/join/{space}", {})
    got = summary(bob, restricted)
    assert got["allowed_room_ids"] == [space] and got["join_rule"] == "restricted"
    assert summary(carol, restricted, status=404)["errcode"] == "M_NOT_FOUND"


@pytest.mark.parametrize("target,status,errcode", [
    ("notaroom", 400, "M_INVALID_PARAM"),
    ("#no-server", 400, "M_INVALID_PARAM"),
    ("!no-server", 400, "M_INVALID_PARAM"),
    ("#unknown:test.local", 404, "M_NOT_FOUND"),
])
def test_bad_input(env, target, status, errcode):
    assert summary(env["bob"], target, status=status)["errcode"] == errcode


# ---------------------------------------------------------------------------- remote rooms

class _Fed:
    """Stands in for the federation service: a client answering /hierarchy, and the
    directory query."""

    def __init__(self, answers, aliases=None):
        self.answers = answers
        self.asked = []
        self.client = self
        self.queries = self
        self.aliases = aliases or {}

    def get_json(self, destination, path, query=None, **kw):
        self.asked.append((destination, path, query))
        answer = self.answers.get(destination)
        if answer is None:
            raise ConnectionError("unreachable")
        return answer

    def directory(self, alias):
        return self.aliases[alias]


def _remote_room(room_id, **fields):
    room = {"room_id": room_id, "num_joined_members": 7, "world_readable": False,
            "guest_can_join": False, "join_rule": "public", "room_version": "10",
            "children_state": [{"type": "m.space.child", "state_key": "!x:remote.test"}]}
    room.update(fields)
    return {"room": room, "children": [], "inaccessible_children": []}


@pytest.fixture
def fed(env):
    summaries = runtime_of(env["app"]).parts["room_summary"]
    old = summaries.fed

    def install(answers, aliases=None):
        f = _Fed(answers, aliases)
        summaries.fed = lambda: f
        return f

    yield install
    summaries.fed = old
    summaries._remote.clear()


def test_a_remote_room_is_asked_of_the_via_servers(env, fed):
    bob = env["bob"]
    room = "!pub:remote.test"
    f = fed({"remote.test": _remote_room(room, name="Far away", evil={"x": 1},
                                         topic=["not", "a", "string"])})
    got = summary(bob, room, via=["down.test", "remote.test"])
    assert got == {"room_id": room, "name": "Far away", "num_joined_members": 7,
                   "world_readable": False, "guest_can_join": False, "join_rule": "public",
                   "room_version": "10", "membership": "leave"}
    assert [(d, p, q) for d, p, q in f.asked] == [
        ("down.test", f"/_matrix/federation/v1/hierarchy/{quote(room, safe='')}",
         {"suggested_only": "true"}),
        ("remote.test", f"/_matrix/federation/v1/hierarchy/{quote(room, safe='')}",
         {"suggested_only": "true"})]
    # cached: asked again by nobody
    assert summary(bob, room, via="remote.test") == got
    assert len(f.asked) == 2


def test_a_remote_room_is_filtered_for_the_user(env, fed):
    alice, bob, carol = env["alice"], env["bob"], env["carol"]
    local_space = alice.create_room(preset="public_chat")
    bob.req("POST", f"{V}/join/{local_space}", {})
    private, restricted = "!priv:remote.test", "!restr:remote.test"
    fed({"a.test": _remote_room(private, join_rule="invite"),
         "b.test": _remote_room(restricted, join_rule="restricted",
                                allowed_room_ids=[local_space])})
    assert summary(bob, private, via="a.test", status=404)["errcode"] == "M_NOT_FOUND"
    assert anonymous(env["app"], private, status=404, query="?via=a.test")["errcode"] == \
        "M_NOT_FOUND"
    assert summary(bob, restricted, via="b.test")["allowed_room_ids"] == [local_space]
    assert summary(carol, restricted, via="b.test", status=404)["errcode"] == "M_NOT_FOUND"
    # nobody to ask, or nobody answers: 404
    assert summary(bob, "!gone:remote.test", status=404)["errcode"] == "M_NOT_FOUND"
    assert summary(bob, "!gone:remote.test", via="c.test", status=404)["errcode"] == \
        "M_NOT_FOUND"


def test_a_remote_alias_and_a_pending_invite(env, fed):
    bob = env["bob"]
    room, invited = "!aliased:remote.test", "!invited:remote.test"
    f = fed({"alias.test": _remote_room(room, name="By alias"),
             "inviter.test": _remote_room(invited, join_rule="invite", name="Invited")},
            aliases={"#far:remote.test": {"room_id": room, "servers": ["alias.test"]}})
    assert summary(bob, "#far:remote.test")["name"] == "By alias"
    assert f.asked[0][0] == "alias.test"
    rooms = runtime_of(env["app"]).parts["rooms"]
    invite = {"event_id": "$inv1", "sender": "@someone:inviter.test", "type": "m.room.member",
              "state_key": bob.user_id, "content": {"membership": "invite"}}
    stripped = [{"type": "m.room.name", "state_key": "", "content": {"name": "Stripped"},
                 "sender": "@someone:inviter.test"},
                {"type": "m.room.join_rules", "state_key": "",
                 "content": {"join_rule": "invite"}, "sender": "@someone:inviter.test"}]
    rooms.remote_invites.record(bob.user_id, invited, "invite", invite, room_version="10",
                                stripped_state=stripped, origin="inviter.test")
    # the invite's server is asked, and an invitee may see an invite-only room
    got = summary(bob, invited)
    assert got["name"] == "Invited" and got["membership"] == "invite"
    # when no server answers, the invite's stripped state is the (partial) answer
    gone = "!gone-inviter:remote.test"
    rooms.remote_invites.record(bob.user_id, gone, "invite", {**invite, "event_id": "$inv2"},
                                room_version="10", stripped_state=stripped,
                                origin="nowhere.test")
    got = summary(bob, gone)
    assert got["name"] == "Stripped" and got["membership"] == "invite"
    assert got["join_rule"] == "invite" and got["room_version"] == "10"
    # someone else never sees it
    assert summary(env["carol"], gone, status=404)["errcode"] == "M_NOT_FOUND"


def test_unauthenticated_requests_that_ask_other_servers_are_rate_limited(env, fed):
    app = env["app"]
    fed({"remote.test": _remote_room("!r0:remote.test")})
    statuses = []
    for i in range(7):
        r = app.test_client().get(S + f"!rl{i}:remote.test?via=remote.test")
        statuses.append(r.status_code)
    assert 429 in statuses and statuses[0] == 404
    r = app.test_client().get(S + "!rl9:remote.test?via=remote.test")
    assert r.status_code == 429 and r.get_json()["errcode"] == "M_LIMIT_EXCEEDED"
    # a user with a token is not limited by that
    assert summary(env["bob"], "!r0:remote.test", via="remote.test")["room_id"] == \
        "!r0:remote.test"
