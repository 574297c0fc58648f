"""Served ``GET /_matrix/federation/v1/hierarchy/{roomId}`` (space_hierarchy.yaml): the
space's summary with ``children_state``, one level of children, visibility per requesting
server and ``inaccessible_children``."""
from __future__ import annotations

import contextlib

import pytest

from federation import hierarchy
from tests.apps import app_factory
from tests.federation.inbound_helpers import REMOTE, SERVER, V, Server

H = "/_matrix/federation/v1/hierarchy/"


@pytest.fixture
def hs(tmp_path):
    gen = app_factory(tmp_path)
    server = Server(next(gen)())
    assert hierarchy.install(server.app, server.fed, server.runtime.parts) is not None
    server.alice = server.add_user("alice")
    yield server
    with contextlib.suppress(StopIteration):
        next(gen)


def _room(hs, **body):
    return hs.alice.req("POST", f"{V}/createRoom", body)["room_id"]


def _link(hs, space, child, **content):
    content.setdefault("via", [SERVER])
    hs.alice.req("PUT", f"{V}/rooms/{space}/state/m.space.child/{child}", content)


def _get(hs, room_id, origin=REMOTE, **query):
    return hs.http.get(H + room_id, query_string=query,
                       headers={"X-Test-Origin": origin} if origin else {})


def _space(hs):
    space = _room(hs, preset="public_chat", name="The Space", topic="all of it",
                  creation_content={"type": "m.space"})
    public = _room(hs, preset="public_chat", name="Public")
    secret = _room(hs, preset="private_chat", name="Secret")
    readable = _room(hs, preset="private_chat", name="Readable", initial_state=[
        {"type": "m.room.history_visibility", "state_key": "",
         "content": {"history_visibility": "world_readable"}}])
    encrypted = _room(hs, preset="public_chat", initial_state=[
        {"type": "m.room.encryption", "state_key": "",
         "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
    _link(hs, space, public, suggested=True)
    _link(hs, space, secret)
    _link(hs, space, readable)
    _link(hs, space, encrypted)
    _link(hs, space, "!unknown:elsewhere.test", via=["elsewhere.test"])
    _link(hs, space, secret.replace("!", "!x"), via=[])  # no via: not a child
    return space, public, secret, readable, encrypted


def test_shape_and_visibility(hs):
    space, public, secret, readable, encrypted = _space(hs)
    r = _get(hs, space)
    assert r.status_code == 200, r.get_data(as_text=True)
    body = r.get_json()
    room = body["room"]
    assert room["room_id"] == space and room["room_type"] == "m.space"
    assert room["name"] == "The Space" and room["topic"] == "all of it"
    assert room["join_rule"] == "public" and room["world_readable"] is False
    assert room["guest_can_join"] is False and room["num_joined_members"] == 1
    assert isinstance(room["room_version"], str)
    children_state = room["children_state"]
    assert {c["state_key"] for c in children_state} == {
        public, secret, readable, encrypted, "!unknown:elsewhere.test"}
    for c in children_state:
        assert c["type"] == "m.space.child" and c["sender"] == hs.alice.user_id
        assert isinstance(c["origin_server_ts"], int) and c["content"]["via"]
        assert set(c) == {"type", "state_key", "content", "sender", "origin_server_ts"}
    by_id = {c["room_id"]: c for c in body["children"]}
    assert set(by_id) == {public, readable, encrypted}
    assert body["inaccessible_children"] == [secret]
    assert by_id[readable]["world_readable"] is True
    assert by_id[readable]["join_rule"] == "invite"
    assert by_id[encrypted]["encryption"] == "m.megolm.v1.aes-sha2"
    assert by_id[public]["name"] == "Public" and by_id[public]["children_state"] == []


def test_suggested_only(hs):
    space, public, *_ = _space(hs)
    body = _get(hs, space, suggested_only="true").get_json()
    assert [c["state_key"] for c in body["room"]["children_state"]] == [public]
    assert [c["room_id"] for c in body["children"]] == [public]
    assert _get(hs, space, suggested_only="maybe").status_code == 400


def test_a_server_with_members_sees_private_rooms(hs):
    space, public, secret, *_ = _space(hs)
    hs.join_remote(secret, f"@bob:{REMOTE}")
    body = _get(hs, space).get_json()
    assert secret in {c["room_id"] for c in body["children"]}
    assert body["inaccessible_children"] == []
    # another server still does not
    body = _get(hs, space, origin="third.test").get_json()
    assert body["inaccessible_children"] == [secret]


def test_restricted_child_visible_to_servers_in_the_allowed_room(hs):
    space = _room(hs, preset="private_chat", creation_content={"type": "m.space"})
    hs.join_remote(space, f"@bob:{REMOTE}")
    restricted = _room(hs, preset="private_chat", room_version="10", initial_state=[
        {"type": "m.room.join_rules", "state_key": "",
         "content": {"join_rule": "restricted",
                     "allow": [{"type": "m.room_membership", "room_id": space}]}}])
    _link(hs, space, restricted)
    body = _get(hs, space).get_json()
    (child,) = body["children"]
    assert child["room_id"] == restricted and child["allowed_room_ids"] == [space]
    # the root is private: a server with nobody in it gets 404
    r = _get(hs, space, origin="third.test")
    assert r.status_code == 404 and r.get_json()["errcode"] == "M_NOT_FOUND"


def test_errors(hs):
    space, *_ = _space(hs)
    r = _get(hs, space, origin=None)
    assert r.status_code == 401 and r.get_json()["errcode"] == "M_UNAUTHORIZED"
    r = _get(hs, "!nosuch:" + SERVER)
    assert r.status_code == 404 and r.get_json()["errcode"] == "M_NOT_FOUND"
    r = _get(hs, "notaroom")
    assert r.status_code == 404 and r.get_json()["errcode"] == "M_NOT_FOUND"
    secret = _room(hs, preset="private_chat")
    assert _get(hs, secret).status_code == 404
