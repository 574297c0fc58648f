"""The client's ``GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event``
(room_event_by_timestamp.yaml) on one server: the closest event each way, 404 when there is
none, who may ask, and the parameter errors."""
from __future__ import annotations

import pytest

from tests.rooms.conftest import user
from web.app import runtime_of

T = "/_matrix/client/v1/rooms/{}/timestamp_to_event"


def lookup(c, room_id, status=200, **query):
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    return c.req("GET", T.format(room_id) + "?" + qs, status=status)


def ts_of(app, event_id):
    return runtime_of(app).parts["rooms"].events.get_event(event_id).event["origin_server_ts"]


@pytest.fixture
def room(app):
    alice = user(app, "alice")
    room_id = alice.create_room(preset="private_chat")
    sent = [alice.send(room_id, {"msgtype": "m.text", "body": str(i)})["event_id"]
            for i in range(3)]
    return app, alice, room_id, sent


def test_closest_each_way(room):
    app, alice, room_id, sent = room
    t1 = ts_of(app, sent[1])
    got = lookup(alice, room_id, ts=t1, dir="f")
    assert got["origin_server_ts"] == t1 and got["event_id"] == sent[1]
    got = lookup(alice, room_id, ts=t1, dir="b")
    assert got == {"event_id": sent[1], "origin_server_ts": t1}
    # between two events: forwards the later one, backwards the earlier one
    t0, t2 = ts_of(app, sent[0]), ts_of(app, sent[2])
    assert lookup(alice, room_id, ts=t2 + 10_000, dir="b")["event_id"] == sent[2]
    assert lookup(alice, room_id, ts=t0, dir="f")["event_id"] == sent[0]
    # nothing after the last one, nothing before the room
    assert lookup(alice, room_id, ts=t2 + 10_000, dir="f", status=404)["errcode"] == \
        "M_NOT_FOUND"
    assert lookup(alice, room_id, ts=0, dir="b", status=404)["errcode"] == "M_NOT_FOUND"


def test_who_may_ask(room):
    app, alice, room_id, sent = room
    bob = user(app, "bob")
    assert lookup(bob, room_id, ts=0, dir="f", status=403)["errcode"] == "M_FORBIDDEN"
    assert lookup(bob, "!nosuch:test.local", ts=0, dir="f", status=403)["errcode"] == \
        "M_FORBIDDEN"
    alice.state(room_id, "m.room.history_visibility", body={"history_visibility":
                                                             "world_readable"})
    assert lookup(bob, room_id, ts=0, dir="f")["event_id"]


@pytest.mark.parametrize("query, errcode", [
    ("dir=f", "M_MISSING_PARAM"), ("ts=1", "M_MISSING_PARAM"), ("ts=x&dir=f", "M_INVALID_PARAM"),
    ("ts=1&dir=up", "M_INVALID_PARAM"), ("ts=-5&dir=f", "M_INVALID_PARAM")])
def test_bad_parameters(room, query, errcode):
    app, alice, room_id, _ = room
    r = alice.c.get(T.format(room_id) + "?" + query, headers=alice.h)
    assert r.status_code == 400 and r.get_json()["errcode"] == errcode, r.get_json()
