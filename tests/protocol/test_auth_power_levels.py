"""The m.room.power_levels authorization rule (v1–v5: 10, v6–v11: 9, v12: 10), every
sub-rule, for every room-version family."""
from __future__ import annotations

import pytest

from auth_fixtures import ALICE, ALL_VERSIONS, BOB, CAROL, DAVE, Room

P = "power_levels"


def vs(pred) -> list:
    return [pytest.param(rv, id=f"v{rv.identifier}") for rv in ALL_VERSIONS if pred(rv)]


ALL = vs(lambda rv: True)
INT_PL = vs(lambda rv: rv.enforce_int_power_levels)
STRINGY_PL = vs(lambda rv: not rv.enforce_int_power_levels)
FLOATY_PL = vs(lambda rv: not rv.strict_canonicaljson)
NOTIFICATIONS = vs(lambda rv: rv.limit_notifications_power_levels)
NO_NOTIFICATIONS = vs(lambda rv: not rv.limit_notifications_power_levels)
V12 = vs(lambda rv: rv.privileged_creators)
NAMED = ["users_default", "events_default", "state_default", "ban", "redact", "kick", "invite"]


def room_with(rv, users=None, **levels):
    """ALICE creator (100 or infinite), DAVE at 50 unless ``users`` says otherwise."""
    room = Room(rv, joined=(ALICE, DAVE, BOB, CAROL))
    users = dict(users if users is not None else {DAVE: 50})
    if not rv.privileged_creators:
        users.setdefault(ALICE, 100)
    room.set_pl({"users": users, **levels})
    return room


def pl_users(rv, users):
    """A users map that also keeps ALICE where she must be listed (pre-v12)."""
    return users if rv.privileged_creators else {ALICE: 100, **users}


def pl_ev(room, sender, content):
    return room.ev("m.room.power_levels", sender, content, "")


# --- content validation ------------------------------------------------------------------------

@pytest.mark.parametrize("rv", INT_PL)
@pytest.mark.parametrize("key", NAMED)
def test_v10_9_1_named_levels_must_be_integers(rv, key):
    room = room_with(rv)
    for bad in ("50", 50.0, True, None):
        room.assert_rejected(pl_ev(room, ALICE, {key: bad}), P, "int_fields")


@pytest.mark.parametrize("rv", INT_PL)
@pytest.mark.parametrize("key", ["events", "notifications"])
def test_v10_9_2_events_and_notifications_must_map_to_integers(rv, key):
    room = room_with(rv)
    for bad in ([], {"x": "50"}, {"x": None}, 5):
        room.assert_rejected(pl_ev(room, ALICE, {key: bad}), P, "int_maps")
    room.assert_allowed(pl_ev(room, ALICE, {key: {"room": 50}}))


@pytest.mark.parametrize("rv", STRINGY_PL)
def test_stringy_levels_accepted_before_v10(rv):
    room = room_with(rv)
    content = {"ban": "50", "events": {"m.room.name": " +40 "}, "kick": "0050",
               "users": {k: str(v) for k, v in pl_users(rv, {DAVE: 50}).items()}}
    room.assert_allowed(pl_ev(room, ALICE, content))


@pytest.mark.parametrize("rv", ALL)
@pytest.mark.parametrize("users", [[], "x", {"bob": 10}, {"@bob": 10}, {BOB: "ten"},
                                   {BOB: None}, {BOB: "1.5"}, {BOB: True}])
def test_users_must_map_user_ids_to_integers(rv, users):
    room = room_with(rv)
    room.assert_rejected(pl_ev(room, ALICE, {"users": users}), P, "users")


@pytest.mark.parametrize("rv", INT_PL)
def test_v10_users_values_must_be_real_integers(rv):
    room = room_with(rv)
    room.assert_rejected(pl_ev(room, ALICE, {"users": {BOB: "10"}}), P, "users")


@pytest.mark.parametrize("rv", FLOATY_PL)
def test_float_levels_truncate_in_v1_to_v5(rv):
    room = room_with(rv, users={DAVE: 50.9})
    # DAVE is at 50 (50.9 truncated): giving BOB 50.7 (= 50) is within DAVE's level.
    room.assert_allowed(pl_ev(room, DAVE, {"users": pl_users(rv, {DAVE: 50.9, BOB: 50.7})}))
    room.assert_rejected(pl_ev(room, DAVE, {"users": pl_users(rv, {DAVE: 50, BOB: 51.2})}),
                         P, "users_added", "1")


@pytest.mark.parametrize("rv", vs(lambda rv: rv.strict_canonicaljson))
def test_float_levels_not_integers_from_v6(rv):
    room = room_with(rv)
    room.assert_rejected(pl_ev(room, ALICE, {"users": {BOB: 50.0}}), P, "users")


@pytest.mark.parametrize("rv", V12)
def test_v12_10_4_creators_not_allowed_in_users(rv):
    room = Room(rv, create_content={"additional_creators": [BOB]}, joined=(ALICE, BOB))
    room.assert_rejected(pl_ev(room, ALICE, {"users": {ALICE: 100}}), P, "creators_in_users")
    room.assert_rejected(pl_ev(room, ALICE, {"users": {BOB: 100}}), P, "creators_in_users")
    room.assert_allowed(pl_ev(room, ALICE, {"users": {CAROL: 100}}))


@pytest.mark.parametrize("rv", vs(lambda rv: not rv.privileged_creators))
def test_creator_may_be_listed_before_v12(rv):
    room = Room(rv)
    room.assert_allowed(pl_ev(room, ALICE, {"users": {ALICE: 100}}))


# --- no previous power levels ------------------------------------------------------------------

@pytest.mark.parametrize("rv", ALL)
def test_first_power_levels_allowed_whatever_the_levels(rv):
    room = Room(rv, power_levels=None)
    room.assert_allowed(pl_ev(room, ALICE, {"users": {BOB: 9000}, "ban": 9000,
                                            "events": {"x": 9000}}))


# --- changes against the current power levels -------------------------------------------------

@pytest.mark.parametrize("rv", ALL)
@pytest.mark.parametrize("key", NAMED)
def test_named_levels_alterations(rv, key):
    pl_level = {"events": {"m.room.power_levels": 0}}  # so state_default=60 does not block
    room = room_with(rv, **pl_level, **{key: 60})
    users = pl_users(rv, {DAVE: 50})
    # .1: current value (60) above the sender's level (50): no change, no removal.
    room.assert_rejected(pl_ev(room, DAVE, {"users": users, key: 10}), P, "named", "1")
    room.assert_rejected(pl_ev(room, DAVE, {"users": users}), P, "named", "1")
    room2 = room_with(rv, **{key: 40})
    # .2: new value above the sender's level.
    room2.assert_rejected(pl_ev(room2, DAVE, {"users": users, key: 51}), P, "named", "2")
    room2.assert_allowed(pl_ev(room2, DAVE, {"users": users, key: 50}))
    room2.assert_allowed(pl_ev(room2, DAVE, {"users": users}))  # removal of 40: fine
    # Unchanged values above one's level are fine.
    room.assert_allowed(pl_ev(room, DAVE, {"users": users, key: 60}))


@pytest.mark.parametrize("rv", ALL)
def test_events_entries(rv):
    room = room_with(rv, events={"m.room.name": 60, "m.room.topic": 40})
    users = pl_users(rv, {DAVE: 50})
    keep = {"m.room.name": 60}
    # removed/changed with a current value above the sender's: reject
    room.assert_rejected(pl_ev(room, DAVE, {"users": users, "events": {"m.room.topic": 40}}),
                         P, "events_removed", "1")
    room.assert_rejected(pl_ev(room, DAVE, {"users": users, "events": {
        "m.room.name": 50, "m.room.topic": 40}}), P, "events_removed", "1")
    # added/changed with a new value above the sender's: reject
    room.assert_rejected(pl_ev(room, DAVE, {"users": users, "events": {
        **keep, "m.room.topic": 51}}), P, "events_added", "1")
    room.assert_rejected(pl_ev(room, DAVE, {"users": users, "events": {
        **keep, "m.room.topic": 40, "m.new": 70}}), P, "events_added", "1")
    # within the sender's level: allow
    room.assert_allowed(pl_ev(room, DAVE, {"users": users, "events": {
        **keep, "m.room.topic": 50, "m.new": 50}}))
    room.assert_allowed(pl_ev(room, DAVE, {"users": users, "events": keep}))


@pytest.mark.parametrize("rv", NOTIFICATIONS)
def test_notifications_entries_checked_from_v6(rv):
    room = room_with(rv, notifications={"room": 60})
    users = pl_users(rv, {DAVE: 50})
    room.assert_rejected(pl_ev(room, DAVE, {"users": users, "notifications": {"room": 10}}),
                         P, "events_removed", "1")
    room2 = room_with(rv)
    room2.assert_rejected(pl_ev(room2, DAVE, {"users": users, "notifications": {"room": 70}}),
                          P, "events_added", "1")
    room2.assert_allowed(pl_ev(room2, DAVE, {"users": users, "notifications": {"room": 50}}))


@pytest.mark.parametrize("rv", NO_NOTIFICATIONS)
def test_notifications_not_checked_before_v6(rv):
    room = room_with(rv, notifications={"room": 60})
    users = pl_users(rv, {DAVE: 50})
    room.assert_allowed(pl_ev(room, DAVE, {"users": users, "notifications": {"room": 9000}}))


@pytest.mark.parametrize("rv", ALL)
def test_users_entries(rv):
    room = room_with(rv, users={DAVE: 50, BOB: 50, CAROL: 20})
    base = {DAVE: 50, BOB: 50, CAROL: 20}
    # changing/removing another user at or above one's own level: reject
    room.assert_rejected(pl_ev(room, DAVE, {"users": pl_users(rv, {**base, BOB: 10})}),
                         P, "users_removed", "1")
    without_bob = {DAVE: 50, CAROL: 20}
    room.assert_rejected(pl_ev(room, DAVE, {"users": pl_users(rv, without_bob)}),
                         P, "users_removed", "1")
    # adding/changing to a value above one's own level: reject
    room.assert_rejected(pl_ev(room, DAVE, {"users": pl_users(rv, {**base, CAROL: 51})}),
                         P, "users_added", "1")
    room.assert_rejected(pl_ev(room, DAVE, {"users": pl_users(rv, {**base, DAVE: 51})}),
                         P, "users_added", "1")
    # below one's level, and one's own entry: allow
    room.assert_allowed(pl_ev(room, DAVE, {"users": pl_users(rv, {**base, CAROL: 50})}))
    room.assert_allowed(pl_ev(room, DAVE, {"users": pl_users(rv, {**base, DAVE: 10})}))
    room.assert_allowed(pl_ev(room, DAVE, {"users": pl_users(rv, {DAVE: 50, BOB: 50})}))


@pytest.mark.parametrize("rv", V12)
def test_v12_creator_can_change_anything(rv):
    room = room_with(rv, users={DAVE: 2**53 - 1}, ban=2**53 - 1)
    room.assert_allowed(pl_ev(room, ALICE, {"users": {BOB: 2**53 - 1}, "ban": 0}))


@pytest.mark.parametrize("rv", ALL)
def test_power_levels_also_need_the_required_level(rv):
    room = room_with(rv, users={DAVE: 40}, events={"m.room.power_levels": 45})
    room.assert_rejected(pl_ev(room, DAVE, {"users": pl_users(rv, {DAVE: 40})}),
                         "required_level")
