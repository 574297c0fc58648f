"""protocol.power_levels: parsing per room version, defaults, creators, levels."""
from __future__ import annotations

import math

import pytest

from protocol.power_levels import (
    CREATOR_POWER_LEVEL,
    creators,
    get_event_level,
    get_named_level,
    get_notification_level,
    get_user_level,
    parse_level,
)
from protocol.room_versions import KNOWN_ROOM_VERSIONS as KV

ALICE, BOB, CAROL = "@alice:a.org", "@bob:b.org", "@carol:c.org"


def create(rv, sender=ALICE, **content):
    if not rv.implicit_room_creator:
        content.setdefault("creator", sender)
    return {"type": "m.room.create", "state_key": "", "sender": sender, "content": content}


@pytest.mark.parametrize("value, expected", [
    (50, 50), (-3, -3), ("50", 50), ("+100", 100), ("-100", -100), ("000100", 100),
    (" 100 ", 100), ("\t-7\n", -7), ("1.5", None), ("1e3", None), ("", None), ("+-1", None),
    ("abc", None), (True, None), (None, None), ([1], None), ({"a": 1}, None),
])
def test_parse_level_v1_to_v9_accepts_int_strings(value, expected):
    for v in ("1", "6", "9"):
        assert parse_level(KV[v], value) == expected


@pytest.mark.parametrize("value", ["50", " 50", 50.0, True])
def test_parse_level_v10_plus_integers_only(value):
    for v in ("10", "11", "12"):
        assert parse_level(KV[v], value) is None
        assert parse_level(KV[v], 50) == 50


def test_parse_level_floats_truncate_only_without_strict_json():
    assert parse_level(KV["1"], 50.9) == 50
    assert parse_level(KV["5"], -50.9) == -50
    assert parse_level(KV["1"], 5.114698e4) == 51146
    assert parse_level(KV["1"], math.inf) is None
    assert parse_level(KV["1"], math.nan) is None
    assert parse_level(KV["6"], 50.0) is None
    assert parse_level(None, 50.0) is None  # lenient mode: ints and int strings only
    assert parse_level(None, "50") == 50


def test_creators_per_version():
    for v in ("1", "10"):
        assert creators(KV[v], create(KV[v], creator=BOB)) == {BOB}
        assert creators(KV[v], {"sender": ALICE, "content": {}}) == set()
    assert creators(KV["11"], create(KV["11"], creator=BOB)) == {ALICE}
    assert creators(KV["11"], create(KV["11"], additional_creators=[BOB])) == {ALICE}
    assert creators(KV["12"], create(KV["12"], additional_creators=[BOB, CAROL])) == {
        ALICE, BOB, CAROL}
    assert creators(KV["12"], create(KV["12"], additional_creators="x")) == {ALICE}


@pytest.mark.parametrize("v", [str(i) for i in range(1, 12)])
def test_user_level_without_power_levels_creator_100_others_0(v):
    rv = KV[v]
    assert get_user_level(rv, create(rv), None, ALICE) == 100
    assert get_user_level(rv, create(rv), None, BOB) == 0


def test_v12_creators_infinite_with_or_without_power_levels():
    rv = KV["12"]
    c = create(rv, additional_creators=[BOB])
    for pl in (None, {"users": {ALICE: 5, BOB: 5}, "users_default": 7}):
        assert get_user_level(rv, c, pl, ALICE) == CREATOR_POWER_LEVEL == math.inf
        assert get_user_level(rv, c, pl, BOB) == math.inf
    assert get_user_level(rv, c, None, CAROL) == 0
    assert get_user_level(rv, c, {"users_default": 7}, CAROL) == 7


def test_user_level_from_users_then_users_default():
    rv = KV["9"]
    pl = {"users": {BOB: "30", CAROL: "junk"}, "users_default": "5"}
    assert get_user_level(rv, create(rv), pl, BOB) == 30
    assert get_user_level(rv, create(rv), pl, CAROL) == 5  # invalid entry reads as absent
    assert get_user_level(rv, create(rv), pl, ALICE) == 5  # the creator is not special
    assert get_user_level(rv, create(rv), {}, ALICE) == 0
    assert get_user_level(KV["10"], create(KV["10"]), pl, BOB) == 0  # "30" invalid in v10


def test_event_level_defaults_and_overrides():
    assert get_event_level(None, "m.room.message", False) == 0
    assert get_event_level(None, "m.room.name", True) == 50
    pl = {"events": {"m.room.name": 10, "m.x": "20"}, "state_default": 40,
          "events_default": 5}
    assert get_event_level(pl, "m.room.name", True) == 10
    assert get_event_level(pl, "m.room.topic", True) == 40
    assert get_event_level(pl, "m.room.message", False) == 5
    assert get_event_level(pl, "m.x", False, rv=KV["9"]) == 20
    assert get_event_level(pl, "m.x", False, rv=KV["10"]) == 5  # "20" invalid in v10
    assert get_event_level({}, "m.room.name", True) == 50


@pytest.mark.parametrize("name, default", [
    ("ban", 50), ("kick", 50), ("redact", 50), ("invite", 0), ("state_default", 50),
    ("events_default", 0), ("users_default", 0),
])
def test_named_level_defaults(name, default):
    assert get_named_level(None, name) == default
    assert get_named_level({}, name) == default
    assert get_named_level({name: 7}, name) == 7
    assert get_named_level({name: "7"}, name, rv=KV["1"]) == 7
    assert get_named_level({name: "7"}, name, rv=KV["10"]) == default
    assert get_named_level(None, name, 99) == 99


def test_notification_levels():
    assert get_notification_level(None) == 50
    assert get_notification_level({"notifications": {"room": 20}}) == 20
    assert get_notification_level({"notifications": {"room": "20"}}, rv=KV["6"]) == 20
    assert get_notification_level({"notifications": "x"}) == 50
    assert get_notification_level({"notifications": {}}, "other", 75) == 75
