"""Filters (issue "Client-Server conformance"): invalid definitions are refused on upload
and inline (nothing stored, nothing half-applied); ``timeline.limit: 0`` is valid; inline
JSON filters work; forward /messages hands out ``end`` to continue from."""
import json

import pytest

from tests.sync.conftest import V, user

BAD = [
    {"room": {"timeline": {"limit": -1}}},
    {"room": {"timeline": {"limit": 2 ** 53}}},
    {"room": {"timeline": {"limit": "10"}}},
    {"room": {"timeline": {"limit": 1.5}}},
    {"presence": {"limit": True}},
    {"event_format": "matrix"},
    {"event_format": ["client"]},
    {"event_fields": "content.body"},
    {"event_fields": [1]},
    {"event_fields": [""]},
    {"event_fields": ["content..body"]},
    {"event_fields": ["content.\\\\body"]},
    {"room": None},
    {"room": {"timeline": None}},
    {"room": {"rooms": "!a:b"}},
    {"room": {"timeline": {"types": [1]}}},
    {"room": {"state": {"lazy_load_members": "true"}}},
    {"room": {"include_leave": 1}},
    {"presence": []},
]


@pytest.mark.parametrize("bad", BAD, ids=[json.dumps(b) for b in BAD])
def test_invalid_filter_is_refused_on_upload_and_inline(app, bad):
    alice = user(app, "alice")
    r = alice.req("POST", f"{V}/user/{alice.user_id}/filter", bad, status=400)
    assert r["errcode"] == "M_BAD_JSON"
    r = alice.sync(filter=json.dumps(bad), status=400)
    assert r["errcode"] in ("M_BAD_JSON", "M_INVALID_PARAM")
    # nothing was stored: the next filter gets the first id
    assert alice.req("POST", f"{V}/user/{alice.user_id}/filter", {})["filter_id"] == "0"


def test_timeline_limit_zero_is_valid(app):
    alice = user(app, "alice")
    room = alice.create_room(name="Zero")
    alice.send(room, "one")
    fid = alice.req("POST", f"{V}/user/{alice.user_id}/filter",
                    {"room": {"timeline": {"limit": 0}}})["filter_id"]
    for f in (fid, json.dumps({"room": {"timeline": {"limit": 0}}})):
        joined = alice.sync(filter=f)["rooms"]["join"][room]
        assert joined["timeline"]["events"] == [] and joined["timeline"]["limited"] is True
        assert any(e["type"] == "m.room.name" for e in joined["state"]["events"])


def test_inline_json_filter_applies(app):
    alice = user(app, "alice")
    room = alice.create_room()
    alice.send(room, "one")
    inline = json.dumps({"event_fields": ["type", "content.body"],
                         "room": {"timeline": {"limit": 1, "types": ["m.room.message"]}}})
    tl = alice.sync(filter=inline)["rooms"]["join"][room]["timeline"]["events"]
    assert tl == [{"type": "m.room.message", "content": {"body": "one"}}]
    # a leading space is still JSON
    assert alice.sync(filter=" " + inline)["rooms"]["join"][room]["timeline"]["events"] == tl


def test_forward_messages_give_end_to_continue_from(app):
    alice = user(app, "alice")
    room = alice.create_room()
    first = alice.req("GET", f"{V}/rooms/{room}/messages", query={"dir": "f", "limit": "50"})
    assert first["chunk"] and "end" in first
    alice.send(room, "later")
    more = alice.req("GET", f"{V}/rooms/{room}/messages",
                     query={"dir": "f", "from": first["end"], "limit": "50"})
    assert [e["content"].get("body") for e in more["chunk"]] == ["later"]
    back = alice.req("GET", f"{V}/rooms/{room}/messages", query={"dir": "b", "limit": "50"})
    assert back["chunk"] and "end" not in back   # the room's start is final
