"""Every numbered authorization rule of every room-version family, allowed and rejected.

Each rejection asserts the rule number the spec gives it in that room version (via
``Room.assert_rejected``); ``test_rule_numbers_match_the_spec`` pins the numbering itself.
"""
from __future__ import annotations

import pytest

from auth_fixtures import ALICE, ALL_VERSIONS, BOB, CAROL, DAVE, Room, make_ev
from protocol.auth import (
    AuthError,
    allowed_auth_types,
    check_auth,
    check_auth_events,
    check_state_independent,
)
from protocol.auth_common import rule
from protocol.room_versions import KNOWN_ROOM_VERSIONS as KV

V = KV


def vs(pred) -> list:
    return [pytest.param(rv, id=f"v{rv.identifier}") for rv in ALL_VERSIONS if pred(rv)]


ALL = vs(lambda rv: True)
PRE_V12 = vs(lambda rv: not rv.room_id_is_create_event_hash)
V12 = vs(lambda rv: rv.room_id_is_create_event_hash)
RESTRICTED = vs(lambda rv: rv.restricted_join_rule)
NO_RESTRICTED = vs(lambda rv: not rv.restricted_join_rule)
ALIASES = vs(lambda rv: rv.special_case_aliases_auth)
NO_ALIASES = vs(lambda rv: not rv.special_case_aliases_auth)


# --- numbering -------------------------------------------------------------------------------

@pytest.mark.parametrize("version, expected", [
    ("1", ["1.5", "2.5", "3", "4.2", "5.2.3", "5.3.1.7", "5.6", "6", "10.6.1", "11.2", "12"]),
    ("3", ["1.5", "2.5", "3", "4.2", "5.2.3", "5.3.1.7", "5.6", "6", "10.6.1", None, "11"]),
    ("6", ["1.5", "2.5", "3", None, "4.2.3", "4.3.1.7", "4.6", "5", "9.6.1", None, "10"]),
    ("7", ["1.5", "2.5", "3", None, "4.2.3", "4.3.1.7", "4.7", "5", "9.6.1", None, "10"]),
    ("8", ["1.5", "2.5", "3", None, "4.3.3", "4.4.1.7", "4.8", "5", "9.6.1", None, "10"]),
    ("10", ["1.5", "2.5", "3", None, "4.3.3", "4.4.1.7", "4.8", "5", "9.8.1", None, "10"]),
    ("11", ["1.4", "2.5", "3", None, "4.3.3", "4.4.1.7", "4.8", "5", "9.8.1", None, "10"]),
    ("12", ["1.5", "3.5", "4", None, "5.3.3", "5.4.1.7", "5.8", "6", "10.9.1", None, "11"]),
])
def test_rule_numbers_match_the_spec(version, expected):
    rv = KV[version]
    paths = [("create", "allow"), ("auth_events", "room_id"), ("federate",),
             ("aliases", "domain"), ("member", "join", "banned"),
             ("member", "invite", "third_party", "signature"), ("member", "unknown"),
             ("sender_joined",), ("power_levels", "users_removed", "1"),
             ("redaction", "domain"), ("allow",)]
    got = []
    for path in paths:
        try:
            got.append(rule(rv, *path))
        except ValueError:
            got.append(None)
    assert got == expected


def test_v12_specific_numbers():
    assert rule(V["12"], "room_id") == "2"
    assert rule(V["12"], "create", "has_room_id") == "1.2"
    assert rule(V["12"], "create", "additional_creators") == "1.4"
    assert rule(V["12"], "power_levels", "creators_in_users") == "10.4"
    assert rule(V["10"], "power_levels", "int_maps") == "9.2"
    assert rule(V["8"], "member", "join", "restricted", "authoriser") == "4.3.5.2"


# --- rule 1: m.room.create ---------------------------------------------------------------------

def create_ev(rv, content=None, sender=ALICE, **kw):
    content = dict(content if content is not None else {})
    if not rv.implicit_room_creator:
        content.setdefault("creator", sender)
    room_id = kw.pop("room_id", None if rv.room_id_is_create_event_hash else "!r:a.org")
    return make_ev(rv, room_id, "m.room.create", sender, content, "", depth=1, **kw)


def reject_create(rv, ev, *path):
    for check in (lambda: check_state_independent(rv, ev), lambda: check_auth(rv, ev, {})):
        with pytest.raises(AuthError) as info:
            check()
        assert info.value.rule == rule(rv, "create", *path)


@pytest.mark.parametrize("rv", ALL)
def test_create_allowed(rv):
    check_state_independent(rv, create_ev(rv))
    check_auth(rv, create_ev(rv, {"room_version": rv.identifier}), {})


@pytest.mark.parametrize("rv", ALL)
def test_create_1_1_prev_events_rejected(rv):
    reject_create(rv, create_ev(rv, prev=["$x"]), "prev_events")


@pytest.mark.parametrize("rv", PRE_V12)
def test_create_1_2_room_id_domain_must_match_sender(rv):
    reject_create(rv, create_ev(rv, room_id="!r:b.org"), "room_id_domain")


@pytest.mark.parametrize("rv", V12)
def test_v12_create_1_2_room_id_rejected_unless_derived(rv):
    reject_create(rv, create_ev(rv, room_id="!r:a.org"), "has_room_id")
    ev = create_ev(rv)
    ev["room_id"] = "!" + ev["event_id"][1:]  # Atrium's internal, derived room id
    check_auth(rv, ev, {})


@pytest.mark.parametrize("rv", ALL)
def test_create_1_3_unknown_room_version_rejected(rv):
    reject_create(rv, create_ev(rv, {"room_version": "999"}), "room_version")
    reject_create(rv, create_ev(rv, {"room_version": 1}), "room_version")


@pytest.mark.parametrize("rv", vs(lambda rv: not rv.implicit_room_creator))
def test_create_1_4_creator_required_before_v11(rv):
    ev = create_ev(rv)
    del ev["content"]["creator"]
    reject_create(rv, ev, "creator")


@pytest.mark.parametrize("rv", vs(lambda rv: rv.implicit_room_creator))
def test_create_without_creator_allowed_from_v11(rv):
    check_auth(rv, create_ev(rv, {}), {})


@pytest.mark.parametrize("rv", V12)
@pytest.mark.parametrize("bad", ["@bob:b.org", ["bob"], [1], ["@bob:b.org", "nope"], {}])
def test_v12_create_1_4_additional_creators_must_be_user_ids(rv, bad):
    reject_create(rv, create_ev(rv, {"additional_creators": bad}), "additional_creators")


@pytest.mark.parametrize("rv", V12)
def test_v12_create_valid_additional_creators_allowed(rv):
    check_auth(rv, create_ev(rv, {"additional_creators": [BOB, CAROL]}), {})


@pytest.mark.parametrize("rv", vs(lambda rv: not rv.privileged_creators))
def test_additional_creators_ignored_before_v12(rv):
    check_auth(rv, create_ev(rv, {"additional_creators": "junk"}), {})


# --- v12 rule 2: room id is the create event's id ---------------------------------------------

@pytest.mark.parametrize("rv", V12)
def test_v12_rule_2_room_id_must_name_the_create_event(rv):
    room = Room(rv)
    room.assert_allowed(room.ev("m.room.message", ALICE, {"body": "hi"}))
    other = Room(rv)
    room.assert_rejected(other.ev("m.room.message", ALICE, {}), "room_id")
    bad = room.ev("m.room.message", ALICE, {}, room_id="!r:a.org")
    room.assert_rejected(bad, "room_id")
    with pytest.raises(AuthError) as info:
        check_state_independent(rv, bad)
    assert info.value.rule == "2"


@pytest.mark.parametrize("rv", ALL)
def test_missing_create_in_auth_state_rejected(rv):
    room = Room(rv)
    del room.state[("m.room.create", "")]
    path = ("room_id",) if rv.room_id_is_create_event_hash else ("auth_events", "no_create")
    room.assert_rejected(room.ev("m.room.message", ALICE, {}), *path)


# --- rule 2 (v12: 3): the event's auth_events ---------------------------------------------------

def _auth_list(room, *keys):
    return [room.state[k] for k in keys]


def reject_auth_events(rv, ev, auth, *path):
    with pytest.raises(AuthError) as info:
        check_auth_events(rv, ev, auth)
    assert info.value.rule == rule(rv, "auth_events", *path)


@pytest.mark.parametrize("rv", ALL)
def test_auth_events_proper_selection_allowed(rv):
    room = Room(rv, joined=(ALICE, BOB))
    ev = room.member(BOB, "leave")
    keys = [("m.room.power_levels", ""), ("m.room.member", BOB)]
    if not rv.room_id_is_create_event_hash:
        keys.append(("m.room.create", ""))
    check_auth_events(rv, ev, _auth_list(room, *keys))


@pytest.mark.parametrize("rv", ALL)
def test_auth_events_2_1_duplicates_rejected(rv):
    room = Room(rv)
    ev = room.ev("m.room.message", ALICE, {})
    dup = dict(room.state[("m.room.power_levels", "")], event_id="$dup")
    base = [] if rv.room_id_is_create_event_hash else [room.create]
    reject_auth_events(rv, ev, base + [room.state[("m.room.power_levels", "")], dup],
                       "duplicate")


@pytest.mark.parametrize("rv", ALL)
def test_auth_events_2_2_unselected_type_rejected(rv):
    room = Room(rv)
    ev = room.ev("m.room.message", ALICE, {})
    base = [] if rv.room_id_is_create_event_hash else [room.create]
    reject_auth_events(rv, ev, base + [room.state[("m.room.join_rules", "")]], "selection")


@pytest.mark.parametrize("rv", V12)
def test_v12_auth_events_3_2_create_must_not_be_cited(rv):
    room = Room(rv)
    reject_auth_events(rv, room.ev("m.room.message", ALICE, {}), [room.create], "selection")


@pytest.mark.parametrize("rv", PRE_V12)
def test_auth_events_2_4_create_required(rv):
    room = Room(rv)
    reject_auth_events(rv, room.ev("m.room.message", ALICE, {}),
                       [room.state[("m.room.member", ALICE)]], "no_create")


@pytest.mark.parametrize("rv", ALL)
def test_auth_events_2_5_other_room_rejected(rv):
    room = Room(rv)
    pl = dict(room.state[("m.room.power_levels", "")], room_id="!elsewhere:a.org")
    base = [] if rv.room_id_is_create_event_hash else [room.create]
    reject_auth_events(rv, room.ev("m.room.message", ALICE, {}), base + [pl], "room_id")


@pytest.mark.parametrize("rv", ALL)
def test_allowed_auth_types_agree_with_events_module(rv):
    events = pytest.importorskip("protocol.events")
    room = Room(rv)
    samples = [
        room.ev("m.room.message", ALICE, {}),
        room.member(BOB, "join", join_authorised_via_users_server=ALICE),
        room.member(ALICE, "invite", BOB, third_party_invite={"signed": {"token": "t"}}),
        room.member(BOB, "knock"), room.member(ALICE, "ban", BOB),
    ]
    for ev in samples:
        assert allowed_auth_types(rv, ev) == events.auth_types_for_event(
            rv, ev["type"], ev["sender"], ev.get("state_key"), ev["content"])


# --- rule 3 (v12: 4): m.federate ----------------------------------------------------------------

@pytest.mark.parametrize("rv", ALL)
def test_federate_false_rejects_other_servers(rv):
    room = Room(rv, create_content={"m.federate": False}, joined=(ALICE, BOB, DAVE))
    room.assert_rejected(room.ev("m.room.message", BOB, {}), "federate")
    room.assert_allowed(room.ev("m.room.message", DAVE, {}))
    fed = Room(rv, create_content={"m.federate": True}, joined=(ALICE, BOB))
    fed.assert_allowed(fed.ev("m.room.message", BOB, {}))


# --- rule 4 (v1–v5): m.room.aliases -------------------------------------------------------------

@pytest.mark.parametrize("rv", ALIASES)
def test_aliases_special_case(rv):
    room = Room(rv)
    room.assert_rejected(room.ev("m.room.aliases", BOB, {"aliases": []}), "aliases",
                         "no_state_key")
    room.assert_rejected(room.ev("m.room.aliases", BOB, {}, "a.org"), "aliases", "domain")
    # Allowed although BOB is not even in the room.
    room.assert_allowed(room.ev("m.room.aliases", BOB, {"aliases": ["#x:b.org"]}, "b.org"))


@pytest.mark.parametrize("rv", NO_ALIASES)
def test_aliases_is_ordinary_state_from_v6(rv):
    room = Room(rv)
    room.assert_rejected(room.ev("m.room.aliases", BOB, {}, "b.org"), "sender_joined")
    room.assert_allowed(room.ev("m.room.aliases", ALICE, {}, "b.org"))


# --- membership: shape, authorised-via ------------------------------------------------------------

@pytest.mark.parametrize("rv", ALL)
def test_member_shape_rejected(rv):
    room = Room(rv)
    room.assert_rejected(room.ev("m.room.member", ALICE, {"membership": "join"}), "member",
                         "shape")
    room.assert_rejected(room.ev("m.room.member", ALICE, {}, ALICE), "member", "shape")


@pytest.mark.parametrize("rv", ALL)
def test_unknown_membership_rejected(rv):
    room = Room(rv)
    room.assert_rejected(room.member(ALICE, "dance"), "member", "unknown")


@pytest.mark.parametrize("rv", RESTRICTED)
def test_authorised_via_must_name_a_user(rv):
    room = Room(rv, join_rule="public")
    room.assert_rejected(room.member(BOB, "join", join_authorised_via_users_server="nobody"),
                         "member", "authorised_via")


@pytest.mark.parametrize("rv", NO_RESTRICTED)
def test_authorised_via_ignored_before_v8(rv):
    room = Room(rv, join_rule="public")
    room.assert_allowed(room.member(BOB, "join", join_authorised_via_users_server="nobody"))


# --- rules after membership: sender joined, third-party invite, levels, "@" keys -------------

@pytest.mark.parametrize("rv", ALL)
@pytest.mark.parametrize("membership", [None, "invite", "leave", "ban", "knock"])
def test_sender_must_be_joined(rv, membership):
    room = Room(rv)
    if membership:
        room.set_member(BOB, membership)
    room.assert_rejected(room.ev("m.room.message", BOB, {"body": "x"}), "sender_joined")


@pytest.mark.parametrize("rv", ALL)
def test_third_party_invite_event_needs_invite_level_only(rv):
    room = Room(rv, joined=(ALICE, DAVE))
    users = {} if rv.privileged_creators else {ALICE: 100}
    # `events` would demand 100 and state_default 50: the rule looks at `invite` only.
    room.set_pl({"users": users, "events": {"m.room.third_party_invite": 100}})
    room.assert_allowed(room.ev("m.room.third_party_invite", DAVE, {}, "tok"))
    room.set_pl({"users": users, "invite": 10})
    room.assert_rejected(room.ev("m.room.third_party_invite", DAVE, {}, "tok"),
                         "third_party_invite")


@pytest.mark.parametrize("rv", ALL)
def test_required_power_level(rv):
    room = Room(rv, joined=(ALICE, DAVE))
    users = {DAVE: 10} if rv.privileged_creators else {ALICE: 100, DAVE: 10}
    room.set_pl({"users": users, "events_default": 20,
                 "events": {"m.reaction": 5, "m.room.topic": 10}})
    room.assert_rejected(room.ev("m.room.message", DAVE, {}), "required_level")
    room.assert_allowed(room.ev("m.reaction", DAVE, {}))
    room.assert_allowed(room.ev("m.room.topic", DAVE, {}, ""))
    room.assert_rejected(room.ev("m.room.name", DAVE, {}, ""), "required_level")  # state 50
    room.assert_allowed(room.ev("m.room.name", ALICE, {}, ""))


@pytest.mark.parametrize("rv", ALL)
def test_no_power_levels_event_defaults(rv):
    room = Room(rv, joined=(ALICE, DAVE), power_levels=None)
    room.assert_allowed(room.ev("m.room.message", DAVE, {}))
    room.assert_rejected(room.ev("m.room.name", DAVE, {}, ""), "required_level")
    room.assert_allowed(room.ev("m.room.name", ALICE, {}, ""))  # creator: 100 (v12: inf)


@pytest.mark.parametrize("rv", ALL)
def test_state_key_starting_with_at_belongs_to_that_user(rv):
    room = Room(rv)
    room.assert_rejected(room.ev("m.custom", ALICE, {}, BOB), "state_key")
    room.assert_allowed(room.ev("m.custom", ALICE, {}, ALICE))
    room.assert_allowed(room.ev("m.custom", ALICE, {}, "bob"))


# --- v1–v2 rule 11: m.room.redaction ------------------------------------------------------------

REDACTION_V1 = vs(lambda rv: rv.event_format == 1)
REDACTION_LATER = vs(lambda rv: rv.event_format != 1)


@pytest.mark.parametrize("rv", REDACTION_V1)
def test_v1_redaction_rule(rv):
    room = Room(rv, joined=(ALICE, BOB))
    other = "$msg:c.org"
    room.assert_allowed(room.ev("m.room.redaction", ALICE, {}, redacts=other))  # 11.1
    room.assert_allowed(room.ev("m.room.redaction", BOB, {}, redacts="$msg:b.org"))  # 11.2
    room.assert_rejected(room.ev("m.room.redaction", BOB, {}, redacts=other), "redaction",
                         "reject")


@pytest.mark.parametrize("rv", REDACTION_LATER)
def test_redaction_not_special_from_v3(rv):
    room = Room(rv, joined=(ALICE, BOB))
    room.assert_allowed(room.ev("m.room.redaction", BOB, {"redacts": "$x"}, redacts="$x"))
    users = {} if rv.privileged_creators else {ALICE: 100}
    room.set_pl({"users": users, "events": {"m.room.redaction": 10}})
    room.assert_rejected(room.ev("m.room.redaction", BOB, {}, redacts="$x"), "required_level")


# --- the final "otherwise, allow" -------------------------------------------------------------

@pytest.mark.parametrize("rv", ALL)
def test_otherwise_allow(rv):
    room = Room(rv, joined=(ALICE, BOB))
    room.assert_allowed(room.ev("m.room.message", BOB, {"body": "hello"}))
    room.assert_allowed(room.ev("org.example.anything", BOB, {"x": [1, 2]}))


@pytest.mark.parametrize("rv", ALL)
def test_auth_error_message_cites_rule_and_version(rv):
    room = Room(rv)
    err = room.assert_rejected(room.ev("m.room.message", BOB, {}), "sender_joined")
    assert str(err).startswith(f"auth rule {err.rule}:")
    assert f"room v{rv.identifier}" in str(err)
