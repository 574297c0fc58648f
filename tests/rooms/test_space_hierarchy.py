"""The client's ``GET /_matrix/client/v1/rooms/{roomId}/hierarchy`` (space_hierarchy.yaml,
client-server-api "Spaces"): depth-first walk in the spec's child order, what the user may
see, ``max_depth``, ``suggested_only``, pagination bound to its parameters, the errors, and
remote rooms summarised from a remote server's federation answer."""
from __future__ import annotations

import pytest

from tests.rooms.conftest import user
from web.app import runtime_of
from web.space_hierarchy import child_order

V = "/_matrix/client/v3"
H = "/_matrix/client/v1/rooms/{}/hierarchy"


def space(c, **kw):
    kw.setdefault("preset", "public_chat")
    return c.create_room(creation_content={"type": "m.space"}, **kw)


def link(c, parent, child, **content):
    content.setdefault("via", ["test.local"])
    c.state(parent, "m.space.child", child, body=content)


def walk(c, root, status=200, **query):
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    return c.req("GET", H.format(root) + (f"?{qs}" if qs else ""), status=status)


def ids(answer):
    return [r["room_id"] for r in answer["rooms"]]


@pytest.fixture
def tree(app):
    """root ─┬─ a (space, order "b") ─── a1
             ├─ b (order "a")
             ├─ secret (invite-only, alice only)
             └─ sub (space, suggested) ─── deep (space) ─── deepest"""
    alice = user(app, "alice")
    root = space(alice, name="Root")
    a = space(alice, name="A")
    a1 = alice.create_room(preset="public_chat", name="A1")
    b = alice.create_room(preset="public_chat", name="B")
    secret = alice.create_room(preset="private_chat", name="Secret")
    sub = space(alice, name="Sub")
    deep = space(alice, name="Deep")
    deepest = alice.create_room(preset="public_chat", name="Deepest")
    link(alice, root, a, order="b")
    link(alice, root, b, order="a")
    link(alice, root, secret)
    link(alice, root, sub, suggested=True)
    link(alice, a, a1)
    link(alice, sub, deep, suggested=True)
    link(alice, deep, deepest)
    link(alice, b, a1)            # b is not a space: its links are not followed
    return dict(app=app, alice=alice, root=root, a=a, a1=a1, b=b, secret=secret, sub=sub,
                deep=deep, deepest=deepest)


def test_depth_first_in_the_spec_order(tree):
    t = tree
    got = walk(t["alice"], t["root"])
    # ordered children first by `order` (b's "a" < a's "b"), then by timestamp
    assert ids(got) == [t["root"], t["b"], t["a"], t["a1"], t["secret"], t["sub"], t["deep"],
                        t["deepest"]]
    assert "next_batch" not in got
    rooms = {r["room_id"]: r for r in got["rooms"]}
    root = rooms[t["root"]]
    assert root["room_type"] == "m.space" and root["name"] == "Root"
    assert root["num_joined_members"] == 1 and root["join_rule"] == "public"
    assert root["world_readable"] is False and root["guest_can_join"] is False
    assert {c["state_key"] for c in root["children_state"]} == \
        {t["a"], t["b"], t["secret"], t["sub"]}
    assert all(c["type"] == "m.space.child" and "origin_server_ts" in c
               for c in root["children_state"])
    # a room that is not a space lists no children
    assert rooms[t["b"]]["children_state"] == []


def test_what_another_user_may_see(tree):
    t = tree
    bob = user(t["app"], "bob")
    got = ids(walk(bob, t["root"]))
    assert t["secret"] not in got and t["a1"] in got and len(got) == 7
    # invited: visible
    t["alice"].req("POST", f"{V}/rooms/{t['secret']}/invite", {"user_id": bob.user_id})
    assert t["secret"] in ids(walk(bob, t["root"]))


def test_a_root_the_user_may_not_see_is_403(tree):
    t = tree
    bob = user(t["app"], "bob")
    hidden = space(t["alice"], preset="private_chat")
    r = walk(bob, hidden, status=403)
    assert r["errcode"] == "M_FORBIDDEN"
    assert walk(bob, "!nosuchroom:test.local", status=403)["errcode"] == "M_FORBIDDEN"


def test_max_depth_and_suggested_only(tree):
    t = tree
    assert ids(walk(t["alice"], t["root"], max_depth=0)) == [t["root"]]
    assert ids(walk(t["alice"], t["root"], max_depth=1)) == \
        [t["root"], t["b"], t["a"], t["secret"], t["sub"]]
    assert ids(walk(t["alice"], t["root"], suggested_only="true")) == \
        [t["root"], t["sub"], t["deep"]]


def test_pagination_is_exactly_once_and_bound_to_the_query(tree):
    t = tree
    alice = t["alice"]
    everything = ids(walk(alice, t["root"]))
    seen: list[str] = []
    page = walk(alice, t["root"], limit=3)
    tokens = []
    while True:
        assert len(page["rooms"]) <= 3
        seen += ids(page)
        if "next_batch" not in page:
            break
        tokens.append(page["next_batch"])
        page = walk(alice, t["root"], limit=3, **{"from": page["next_batch"]})
    assert seen == everything
    # a token is bound to its parameters and to its user
    r = walk(alice, t["root"], limit=3, max_depth=1, **{"from": tokens[0]}, status=400)
    assert r["errcode"] == "M_INVALID_PARAM"
    bob = user(t["app"], "bob")
    assert walk(bob, t["root"], limit=3, **{"from": tokens[0]}, status=400)["errcode"] == \
        "M_INVALID_PARAM"
    assert walk(alice, t["root"], **{"from": "nonsense"}, status=400)["errcode"] == \
        "M_INVALID_PARAM"
    # the same token twice gives the same page (a retried request)
    again = walk(alice, t["root"], limit=3, **{"from": tokens[0]})
    assert ids(again) == everything[3:6]


@pytest.mark.parametrize("query", ["limit=0", "limit=x", "max_depth=-1", "max_depth=1.5",
                                   "suggested_only=yes"])
def test_bad_parameters_are_400(tree, query):
    t = tree
    r = t["alice"].c.get(H.format(t["root"]) + "?" + query, headers=t["alice"].h)
    assert r.status_code == 400 and r.get_json()["errcode"] == "M_INVALID_PARAM", r.get_json()


def test_needs_a_token(tree):
    r = tree["alice"].c.get(H.format(tree["root"]))
    assert r.status_code == 401 and r.get_json()["errcode"] == "M_MISSING_TOKEN"


def test_child_order_rules():
    def ev(room, order=None, ts=0):
        c = {"via": ["x"]}
        if order is not None:
            c["order"] = order
        return {"state_key": room, "content": c, "origin_server_ts": ts}

    kids = [ev("!d:x", ts=1), ev("!c:x", order="\x7f", ts=0), ev("!b:x", order="zz"),
            ev("!a:x", order="aa", ts=9), ev("!e:x", ts=1), ev("!f:x", order="x" * 51)]
    assert [k["state_key"] for k in sorted(kids, key=child_order)] == \
        ["!a:x", "!b:x", "!c:x", "!f:x", "!d:x", "!e:x"]


class _RemoteClient:
    """Stands in for the federation client: answers /hierarchy for one remote room."""

    def __init__(self, answers):
        self.answers = answers
        self.asked: list[tuple[str, str]] = []

    def get_json(self, destination, path, **kw):
        self.asked.append((destination, path))
        if destination not in self.answers:
            raise ConnectionError("unreachable")
        return self.answers[destination]


def test_remote_children_come_from_the_via_servers(tree):
    t = tree
    alice, app = t["alice"], t["app"]
    remote_space, remote_room, hidden = "!rs:remote.test", "!rr:remote.test", "!rh:remote.test"
    link(alice, t["root"], remote_space, via=["down.test", "remote.test"], order="0")
    answer = {
        "room": {"room_id": remote_space, "room_type": "m.space", "name": "Remote space",
                 "num_joined_members": 3, "join_rule": "public", "world_readable": False,
                 "guest_can_join": False,
                 "children_state": [
                     {"type": "m.space.child", "state_key": remote_room, "sender": "@x:r",
                      "origin_server_ts": 5, "content": {"via": ["remote.test"]}},
                     {"type": "m.space.child", "state_key": hidden, "sender": "@x:r",
                      "origin_server_ts": 6, "content": {"via": ["remote.test"]}}]},
        "children": [{"room_id": remote_room, "name": "Remote room", "num_joined_members": 2,
                      "join_rule": "public", "world_readable": True, "guest_can_join": False,
                      "children_state": []}],
        "inaccessible_children": [hidden],
    }
    client = _RemoteClient({"remote.test": answer})
    runtime_of(app).parts["space_hierarchy"].fed = lambda: type("F", (), {"client": client})()
    got = walk(alice, t["root"])
    assert ids(got)[:3] == [t["root"], remote_space, remote_room]
    assert hidden not in ids(got)
    assert got["rooms"][1]["name"] == "Remote space"
    # asked down.test first (unreachable), then remote.test; the child came from the answer
    assert [d for d, _ in client.asked] == ["down.test", "remote.test"]
    # the answer is cached: a second walk asks nobody
    walk(alice, t["root"])
    assert len(client.asked) == 2
