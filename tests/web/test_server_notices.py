"""Server notices (modules/server_notices.md) and Synapse's admin API
``POST /_synapse/admin/v1/send_server_notice`` (and ``PUT …/{txnId}``): the system user
(made on first use, cannot log in), one notice room per user (tagged ``m.server_notice``,
the user invited and unable to send), the invite that cannot be rejected, a new room after
the user left, ``auto_join``, the room kept in line with the config, and the errors."""
from __future__ import annotations

from dataclasses import replace

import pytest

from atrium.config import ConfigError, parse_config
from tests.apps import app_factory
from tests.rooms.conftest import user
from web.app import runtime_of

V = "/_matrix/client/v3"
SEND = "/_synapse/admin/v1/send_server_notice"
SYSTEM = "@notices:test.local"
NOTICE = {"msgtype": "m.server_notice", "body": "Scheduled maintenance tonight",
          "server_notice_type": "m.server_notice.usage_limit_reached",
          "limit_type": "monthly_active_user"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    factory = app_factory(tmp_path_factory.mktemp("notices"))
    app = next(factory)(server_notices={
        "system_mxid_localpart": "notices", "system_mxid_display_name": "Server Notices",
        "system_mxid_avatar_url": "mxc://test.local/notices", "room_topic": "From the server",
        "room_avatar_url": "mxc://test.local/room"})
    users = {name: user(app, name) for name in ("bob", "carol", "dave", "erin")}
    yield dict(app=app, root=user(app, "root", admin=True), **users)
    for _ in factory:
        pass


def send(env, body, status=200, txn=None):
    if txn is None:
        return env["root"].req("POST", SEND, body, status=status)
    return env["root"].req("PUT", f"{SEND}/{txn}", body, status=status)


def sync_invites(c):
    return c.req("GET", f"{V}/sync?timeout=0")["rooms"]["invite"]


def test_a_notice_reaches_the_user_in_a_tagged_room(env):
    bob = env["bob"]
    event_id = send(env, {"user_id": bob.user_id, "content": NOTICE})["event_id"]
    invites = sync_invites(bob)
    assert len(invites) == 1
    room_id, invite = next(iter(invites.items()))
    state = {(e["type"], e.get("state_key")): e for e in invite["invite_state"]["events"]}
    assert state[("m.room.name", "")]["content"]["name"] == "Server Notices"
    assert state[("m.room.member", bob.user_id)]["sender"] == SYSTEM
    tags = bob.req("GET", f"{V}/user/{bob.user_id}/rooms/{room_id}/tags")["tags"]
    assert tags == {"m.server_notice": {}}
    # joined, the user reads the notice, the room's look, and cannot write
    bob.req("POST", f"{V}/rooms/{room_id}/join", {})
    event = bob.req("GET", f"{V}/rooms/{room_id}/event/{event_id}")
    assert event["sender"] == SYSTEM and event["content"] == NOTICE
    assert bob.state(room_id, "m.room.topic")["topic"] == "From the server"
    assert bob.state(room_id, "m.room.avatar")["url"] == "mxc://test.local/room"
    assert bob.state(room_id, "m.room.member", SYSTEM)["displayname"] == "Server Notices"
    assert bob.state(room_id, "m.room.power_levels")["users_default"] == -10
    assert bob.send(room_id, status=403)["errcode"] == "M_FORBIDDEN"
    r = bob.req("POST", f"{V}/rooms/{room_id}/invite", {"user_id": env["carol"].user_id},
                status=403)
    assert r["errcode"] == "M_FORBIDDEN"
    # a second notice goes to the same room
    send(env, {"user_id": bob.user_id, "content": {"msgtype": "m.text", "body": "again"}})
    assert runtime_of(env["app"]).parts["server_notices"].notice_room(bob.user_id) == room_id


def test_the_system_user_exists_and_cannot_log_in(env):
    send(env, {"user_id": env["erin"].user_id, "content": NOTICE})
    c = env["app"].test_client()
    r = c.post(f"{V}/login", json={"type": "m.login.password", "password": "",
                                   "identifier": {"type": "m.id.user", "user": "notices"}})
    assert r.status_code == 403 and r.get_json()["errcode"] == "M_FORBIDDEN"
    profile = c.get(f"{V}/profile/{SYSTEM}").get_json()
    assert profile == {"displayname": "Server Notices",
                       "avatar_url": "mxc://test.local/notices"}


def test_the_invite_cannot_be_rejected_but_a_joined_user_may_leave(env):
    carol = env["carol"]
    send(env, {"user_id": carol.user_id, "content": NOTICE})
    room_id = next(iter(sync_invites(carol)))
    r = carol.req("POST", f"{V}/rooms/{room_id}/leave", {}, status=403)
    assert r["errcode"] == "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM"
    assert room_id in sync_invites(carol)
    # a leave of another, ordinary room is not affected
    other = env["bob"].create_room(preset="public_chat")
    carol.req("POST", f"{V}/join/{other}", {})
    carol.req("POST", f"{V}/rooms/{other}/leave", {})
    # joined, then left: the next notice comes in a new room, tagged and invited again
    carol.req("POST", f"{V}/rooms/{room_id}/join", {})
    carol.req("POST", f"{V}/rooms/{room_id}/leave", {})
    send(env, {"user_id": carol.user_id, "content": NOTICE})
    invites = sync_invites(carol)
    assert room_id not in invites and len(invites) == 1
    new_room = next(iter(invites))
    assert carol.req("GET", f"{V}/user/{carol.user_id}/rooms/{new_room}/tags")["tags"] == \
        {"m.server_notice": {}}


def test_auto_join_state_events_and_config_changes(env):
    dave = env["dave"]
    notices = runtime_of(env["app"]).parts["server_notices"]
    old = notices.cfg
    notices.cfg = replace(old, auto_join=True)
    try:
        send(env, {"user_id": dave.user_id, "content": NOTICE})
    finally:
        notices.cfg = old
    joined = dave.req("GET", f"{V}/joined_rooms")["joined_rooms"]
    room_id = notices.notice_room(dave.user_id)
    assert room_id in joined
    # a state event as a notice (type and state_key of the body)
    send(env, {"user_id": dave.user_id, "type": "m.room.pinned_events", "state_key": "",
               "content": {"pinned": []}})
    assert dave.state(room_id, "m.room.pinned_events") == {"pinned": []}
    # the config changed: the room is brought in line before the next notice
    notices.cfg = replace(old, room_name="Notices from the admins", room_topic=None,
                          system_mxid_display_name="Admins")
    try:
        send(env, {"user_id": dave.user_id, "content": NOTICE})
    finally:
        notices.cfg = old
    assert dave.state(room_id, "m.room.name")["name"] == "Notices from the admins"
    assert dave.state(room_id, "m.room.topic")["topic"] == ""
    assert dave.state(room_id, "m.room.member", SYSTEM)["displayname"] == "Admins"


def test_a_retried_put_sends_once(env):
    erin = env["erin"]
    first = send(env, {"user_id": erin.user_id, "content": NOTICE}, txn="t1")["event_id"]
    again = send(env, {"user_id": erin.user_id, "content": NOTICE}, txn="t1")["event_id"]
    other = send(env, {"user_id": erin.user_id, "content": NOTICE}, txn="t2")["event_id"]
    assert first == again != other


@pytest.mark.parametrize("body,status,errcode", [
    ({"content": NOTICE}, 400, "M_MISSING_PARAM"),
    ({"user_id": "@bob:test.local"}, 400, "M_MISSING_PARAM"),
    ({"user_id": "@bob:test.local", "content": "text"}, 400, "M_BAD_JSON"),
    ({"user_id": "@bob:test.local", "content": {}, "type": 5}, 400, "M_BAD_JSON"),
    ({"user_id": "@bob:test.local", "content": {}, "state_key": 5}, 400, "M_BAD_JSON"),
    ({"user_id": "bob", "content": NOTICE}, 400, "M_INVALID_PARAM"),
    ({"user_id": "@bob:elsewhere.test", "content": NOTICE}, 400, "M_UNKNOWN"),
    ({"user_id": "@nobody:test.local", "content": NOTICE}, 404, "M_NOT_FOUND"),
    ({"user_id": SYSTEM, "content": NOTICE}, 400, "M_INVALID_PARAM"),
])
def test_bad_requests(env, body, status, errcode):
    assert send(env, body, status=status)["errcode"] == errcode


def test_only_admins_and_only_when_configured(env):
    r = env["bob"].req("POST", SEND, {"user_id": env["carol"].user_id, "content": NOTICE},
                       status=403)
    assert r["errcode"] == "M_FORBIDDEN"
    r = env["app"].test_client().post(SEND, json={"user_id": "@bob:test.local",
                                                  "content": NOTICE})
    assert r.status_code == 401
    notices = runtime_of(env["app"]).parts["server_notices"]
    old, notices.cfg = notices.cfg, None
    try:
        r = send(env, {"user_id": env["bob"].user_id, "content": NOTICE}, status=400)
        assert r["errcode"] == "M_UNKNOWN"
    finally:
        notices.cfg = old


def test_config():
    base = {"server_name": "x.test"}
    assert parse_config(base).server_notices is None
    cfg = parse_config({**base, "server_notices": {"system_mxid_localpart": "n"}}).server_notices
    assert cfg.room_name == "Server Notices" and cfg.auto_join is False
    assert cfg.system_user("x.test") == "@n:x.test"
    for bad in ({}, {"system_mxid_localpart": "Not Valid"}, "yes",
                {"system_mxid_localpart": "n", "auto_join": "yes"},
                {"system_mxid_localpart": "n", "system_mxid_avatar_url": "http://x/a.png"}):
        with pytest.raises(ConfigError) as e:
            parse_config({**base, "server_notices": bad})
        assert "'server_notices" in str(e.value)
