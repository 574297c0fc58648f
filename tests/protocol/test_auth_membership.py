"""The m.room.member authorization rules (v1–v5: 5.x, v6–v7: 4.x, v8–v11: 4.x with 4.2,
v12: 5.x) for every room-version family, allowed and rejected."""
from __future__ import annotations

import base64

import nacl.signing
import pytest

from auth_fixtures import ALICE, ALL_VERSIONS, BOB, CAROL, DAVE, Room
from protocol.canonical import encode_canonical_json


def vs(pred) -> list:
    return [pytest.param(rv, id=f"v{rv.identifier}") for rv in ALL_VERSIONS if pred(rv)]


ALL = vs(lambda rv: True)
KNOCK = vs(lambda rv: rv.knock_join_rule)
NO_KNOCK = vs(lambda rv: not rv.knock_join_rule)
RESTRICTED = vs(lambda rv: rv.restricted_join_rule)
NO_RESTRICTED = vs(lambda rv: not rv.restricted_join_rule)
KNOCK_RESTRICTED = vs(lambda rv: rv.knock_restricted_join_rule)
NO_KNOCK_RESTRICTED = vs(lambda rv: not rv.knock_restricted_join_rule)
EXPLICIT_CREATOR = vs(lambda rv: not rv.implicit_room_creator)
IMPLICIT_CREATOR = vs(lambda rv: rv.implicit_room_creator)
V12 = vs(lambda rv: rv.privileged_creators)

J = ("member", "join")


# --- join ------------------------------------------------------------------------------------

@pytest.mark.parametrize("rv", ALL)
def test_join_1_creator_first_join_after_create(rv):
    room = Room(rv, joined=(), power_levels=None, join_rule=None)
    room.assert_allowed(room.member(ALICE, "join", prev=[room.create["event_id"]]))
    # Not right after the create event: the ordinary rules apply (no join rules: invite).
    room.assert_rejected(room.member(ALICE, "join", prev=["$later"]), *J, "reject")


@pytest.mark.parametrize("rv", EXPLICIT_CREATOR)
def test_join_1_creator_is_content_creator_before_v11(rv):
    room = Room(rv, joined=(), power_levels=None, join_rule=None,
                create_content={"creator": BOB})
    room.assert_allowed(room.member(BOB, "join", prev=[room.create["event_id"]]))
    room.assert_rejected(room.member(ALICE, "join", prev=[room.create["event_id"]]), *J,
                         "reject")


@pytest.mark.parametrize("rv", IMPLICIT_CREATOR)
def test_join_1_creator_is_create_sender_from_v11(rv):
    room = Room(rv, joined=(), power_levels=None, join_rule=None,
                create_content={"creator": BOB, "additional_creators": [BOB]})
    room.assert_allowed(room.member(ALICE, "join", prev=[room.create["event_id"]]))
    room.assert_rejected(room.member(BOB, "join", prev=[room.create["event_id"]]), *J,
                         "reject")


@pytest.mark.parametrize("rv", ALL)
def test_join_2_sender_must_be_target(rv):
    room = Room(rv, join_rule="public")
    room.assert_rejected(room.member(ALICE, "join", BOB), *J, "sender_is_target")


@pytest.mark.parametrize("rv", ALL)
def test_join_3_banned_rejected(rv):
    room = Room(rv, join_rule="public")
    room.set_member(BOB, "ban")
    room.assert_rejected(room.member(BOB, "join"), *J, "banned")


@pytest.mark.parametrize("rv", ALL)
def test_join_4_invite_rule(rv):
    room = Room(rv, join_rule="invite")
    room.assert_rejected(room.member(BOB, "join"), *J, "reject")
    room.set_member(BOB, "invite")
    room.assert_allowed(room.member(BOB, "join"))
    room.set_member(BOB, "join")
    room.assert_allowed(room.member(BOB, "join"))
    room.set_member(BOB, "leave")
    room.assert_rejected(room.member(BOB, "join"), *J, "reject")


@pytest.mark.parametrize("rv", ALL)
def test_join_without_join_rules_event_is_invite_only(rv):
    room = Room(rv, join_rule=None)
    room.assert_rejected(room.member(BOB, "join"), *J, "reject")
    room.set_member(BOB, "invite")
    room.assert_allowed(room.member(BOB, "join"))


@pytest.mark.parametrize("rv", KNOCK)
def test_join_4_knock_rule_admits_invited(rv):
    room = Room(rv, join_rule="knock")
    room.set_member(BOB, "knock")
    room.assert_rejected(room.member(BOB, "join"), *J, "reject")
    room.set_member(BOB, "invite")
    room.assert_allowed(room.member(BOB, "join"))


@pytest.mark.parametrize("rv", NO_KNOCK)
def test_join_knock_rule_unknown_before_v7(rv):
    room = Room(rv, join_rule="knock")
    room.set_member(BOB, "invite")
    room.assert_rejected(room.member(BOB, "join"), *J, "reject")


@pytest.mark.parametrize("rv", RESTRICTED)
@pytest.mark.parametrize("join_rule", ["restricted", "knock_restricted"])
def test_join_5_restricted(rv, join_rule):
    if join_rule == "knock_restricted" and not rv.knock_restricted_join_rule:
        pytest.skip("knock_restricted is v10+")
    room = Room(rv, join_rule=join_rule, joined=(ALICE, DAVE))
    R = (*J, "restricted", "authoriser")
    # 5.2: missing / not joined / not able to invite -> reject.
    room.assert_rejected(room.member(BOB, "join"), *R)
    room.assert_rejected(room.member(BOB, "join", join_authorised_via_users_server=CAROL), *R)
    room.set_pl({"users": {ALICE: 100} if not rv.privileged_creators else {}, "invite": 50})
    room.assert_rejected(room.member(BOB, "join", join_authorised_via_users_server=DAVE), *R)
    # 5.3: a joined user with the invite level -> allow.
    room.assert_allowed(room.member(BOB, "join", join_authorised_via_users_server=ALICE))
    # 5.1: already invited (or joined) -> allow without an authoriser.
    room.set_member(BOB, "invite")
    room.assert_allowed(room.member(BOB, "join"))


@pytest.mark.parametrize("rv", NO_RESTRICTED)
def test_join_restricted_unknown_before_v8(rv):
    room = Room(rv, join_rule="restricted")
    room.assert_rejected(room.member(BOB, "join", join_authorised_via_users_server=ALICE),
                         *J, "reject")


@pytest.mark.parametrize("rv", vs(lambda rv: rv.restricted_join_rule
                                  and not rv.knock_restricted_join_rule))
def test_join_knock_restricted_unknown_in_v8_v9(rv):
    room = Room(rv, join_rule="knock_restricted")
    room.assert_rejected(room.member(BOB, "join", join_authorised_via_users_server=ALICE),
                         *J, "reject")
    room.set_member(BOB, "invite")
    room.assert_rejected(room.member(BOB, "join"), *J, "reject")


@pytest.mark.parametrize("rv", ALL)
def test_join_6_public_and_7_otherwise(rv):
    room = Room(rv, join_rule="public")
    room.assert_allowed(room.member(BOB, "join"))
    room.set_join_rule("private")
    room.assert_rejected(room.member(BOB, "join"), *J, "reject")


# --- invite ----------------------------------------------------------------------------------

I = ("member", "invite")


@pytest.mark.parametrize("rv", ALL)
def test_invite_2_sender_must_be_joined(rv):
    room = Room(rv, joined=(ALICE,))
    room.set_member(DAVE, "invite")
    room.assert_rejected(room.member(DAVE, "invite", BOB), *I, "sender_joined")


@pytest.mark.parametrize("rv", ALL)
@pytest.mark.parametrize("membership", ["join", "ban"])
def test_invite_3_target_joined_or_banned(rv, membership):
    room = Room(rv)
    room.set_member(BOB, membership)
    room.assert_rejected(room.member(ALICE, "invite", BOB), *I, "target")


@pytest.mark.parametrize("rv", ALL)
def test_invite_4_invite_level_and_5_otherwise(rv):
    room = Room(rv, joined=(ALICE, DAVE))
    room.assert_allowed(room.member(DAVE, "invite", BOB))  # invite level defaults to 0
    room.set_pl({"users": {} if rv.privileged_creators else {ALICE: 100}, "invite": 50})
    room.assert_rejected(room.member(DAVE, "invite", BOB), *I, "reject")
    room.assert_allowed(room.member(ALICE, "invite", BOB))
    room.set_member(BOB, "leave")
    room.assert_allowed(room.member(ALICE, "invite", BOB))


# --- third-party invites (4.x.1) -------------------------------------------------------------

T = ("member", "invite", "third_party")
_SK = nacl.signing.SigningKey(b"\x01" * 32)
_OTHER_SK = nacl.signing.SigningKey(b"\x02" * 32)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


def signed_block(mxid=BOB, token="tok", sk=_SK):
    signed = {"mxid": mxid, "token": token, "sender": ALICE}
    sig = sk.sign(encode_canonical_json(signed)).signature
    return {**signed, "signatures": {"id.example": {"ed25519:0": _b64(sig)}}}


def tpi_room(rv, *, listed=False, sender=DAVE):
    room = Room(rv, joined=(ALICE, DAVE))
    key = _b64(bytes(_SK.verify_key))
    content = {"display_name": "b...", "key_validity_url": "https://id.example/v"}
    if listed:
        content["public_keys"] = [{"public_key": _b64(bytes(_OTHER_SK.verify_key))},
                                  {"public_key": key}]
    else:
        content["public_key"] = key
    room.put(room.ev("m.room.third_party_invite", sender, content, "tok"))
    return room


def tpi_invite(room, signed, sender=DAVE, target=BOB):
    return room.member(sender, "invite", target,
                       third_party_invite={"display_name": "b...", "signed": signed})


@pytest.mark.parametrize("rv", ALL)
@pytest.mark.parametrize("listed", [False, True])
def test_third_party_invite_7_valid_signature_allows(rv, listed):
    room = tpi_room(rv, listed=listed)
    # Allowed even though the invite level is above DAVE's: the branch allows on its own.
    room.set_pl({"users": {} if rv.privileged_creators else {ALICE: 100}, "invite": 100})
    room.assert_allowed(tpi_invite(room, signed_block()))


@pytest.mark.parametrize("rv", ALL)
def test_third_party_invite_1_target_banned(rv):
    room = tpi_room(rv)
    room.set_member(BOB, "ban")
    room.assert_rejected(tpi_invite(room, signed_block()), *T, "target_banned")


@pytest.mark.parametrize("rv", ALL)
def test_third_party_invite_2_to_6_malformed_or_mismatched(rv):
    room = tpi_room(rv)
    room.assert_rejected(room.member(DAVE, "invite", BOB, third_party_invite={}), *T, "signed")
    room.assert_rejected(tpi_invite(room, {"mxid": BOB}), *T, "mxid_token")
    room.assert_rejected(tpi_invite(room, {"token": "tok"}), *T, "mxid_token")
    room.assert_rejected(tpi_invite(room, signed_block(mxid=CAROL)), *T, "mxid")
    room.assert_rejected(tpi_invite(room, signed_block(token="other")), *T, "event")
    room.set_member(CAROL, "join")
    room.assert_rejected(tpi_invite(room, signed_block(), sender=ALICE), *T, "sender")


@pytest.mark.parametrize("rv", ALL)
def test_third_party_invite_8_bad_signature_rejected(rv):
    room = tpi_room(rv)
    room.assert_rejected(tpi_invite(room, signed_block(sk=_OTHER_SK)), *T, "reject")
    tampered = dict(signed_block(), extra="field")
    room.assert_rejected(tpi_invite(room, tampered), *T, "reject")
    unsigned = {k: v for k, v in signed_block().items() if k != "signatures"}
    room.assert_rejected(tpi_invite(room, unsigned), *T, "reject")


# --- leave -----------------------------------------------------------------------------------

L = ("member", "leave")


@pytest.mark.parametrize("rv", ALL)
@pytest.mark.parametrize("membership", ["join", "invite"])
def test_leave_1_self_from_join_or_invite(rv, membership):
    room = Room(rv)
    room.set_member(BOB, membership)
    room.assert_allowed(room.member(BOB, "leave"))


@pytest.mark.parametrize("rv", ALL)
@pytest.mark.parametrize("membership", [None, "leave", "ban"])
def test_leave_1_self_otherwise_rejected(rv, membership):
    room = Room(rv)
    if membership:
        room.set_member(BOB, membership)
    room.assert_rejected(room.member(BOB, "leave"), *L, "self")


@pytest.mark.parametrize("rv", KNOCK)
def test_leave_1_retract_knock_from_v7(rv):
    room = Room(rv, join_rule="knock")
    room.set_member(BOB, "knock")
    room.assert_allowed(room.member(BOB, "leave"))


@pytest.mark.parametrize("rv", NO_KNOCK)
def test_leave_1_knock_membership_means_nothing_before_v7(rv):
    room = Room(rv)
    room.set_member(BOB, "knock")
    room.assert_rejected(room.member(BOB, "leave"), *L, "self")


@pytest.mark.parametrize("rv", ALL)
def test_leave_2_kicker_must_be_joined(rv):
    room = Room(rv, joined=(BOB,))
    room.set_member(ALICE, "leave")
    room.assert_rejected(room.member(ALICE, "leave", BOB), *L, "sender_joined")


@pytest.mark.parametrize("rv", ALL)
def test_leave_3_unban_needs_ban_level(rv):
    room = Room(rv, joined=(ALICE, DAVE))
    users = {DAVE: 60} if rv.privileged_creators else {ALICE: 100, DAVE: 60}
    room.set_pl({"users": users, "ban": 70, "kick": 50})
    room.set_member(BOB, "ban")
    room.assert_rejected(room.member(DAVE, "leave", BOB), *L, "unban")
    room.assert_allowed(room.member(ALICE, "leave", BOB))


@pytest.mark.parametrize("rv", ALL)
def test_leave_4_kick_needs_kick_level_and_more_power(rv):
    room = Room(rv, joined=(ALICE, BOB, DAVE, CAROL))
    users = {DAVE: 50, CAROL: 50} if rv.privileged_creators else {
        ALICE: 100, DAVE: 50, CAROL: 50}
    room.set_pl({"users": users, "kick": 50})
    room.assert_allowed(room.member(DAVE, "leave", BOB))
    room.assert_rejected(room.member(DAVE, "leave", CAROL), *L, "reject")  # equal power
    room.assert_rejected(room.member(BOB, "leave", DAVE), *L, "reject")    # below kick
    room.assert_rejected(room.member(DAVE, "leave", ALICE), *L, "reject")  # above


@pytest.mark.parametrize("rv", V12)
def test_v12_creators_cannot_be_kicked_or_banned(rv):
    room = Room(rv, create_content={"additional_creators": [BOB]}, joined=(ALICE, BOB, DAVE))
    room.set_pl({"users": {DAVE: 2**53 - 1}})
    room.assert_rejected(room.member(DAVE, "leave", BOB), *L, "reject")
    room.assert_rejected(room.member(DAVE, "ban", ALICE), "member", "ban", "reject")
    room.assert_allowed(room.member(BOB, "ban", DAVE))
    # Creators have equal (infinite) power: one cannot kick another.
    room.assert_rejected(room.member(BOB, "leave", ALICE), *L, "reject")


# --- ban -------------------------------------------------------------------------------------

B = ("member", "ban")


@pytest.mark.parametrize("rv", ALL)
def test_ban_rules(rv):
    room = Room(rv, joined=(ALICE, DAVE, CAROL))
    users = {DAVE: 50, CAROL: 50} if rv.privileged_creators else {
        ALICE: 100, DAVE: 50, CAROL: 50}
    room.set_pl({"users": users})  # ban defaults to 50
    room.assert_allowed(room.member(DAVE, "ban", BOB))             # 2: allow
    room.assert_rejected(room.member(DAVE, "ban", CAROL), *B, "reject")  # equal power
    room.set_pl({"users": users, "ban": 60})
    room.assert_rejected(room.member(DAVE, "ban", BOB), *B, "reject")    # below ban level
    room.set_member(DAVE, "leave")
    room.assert_rejected(room.member(DAVE, "ban", BOB), *B, "sender_joined")


# --- knock -----------------------------------------------------------------------------------

K = ("member", "knock")


@pytest.mark.parametrize("rv", KNOCK)
def test_knock_rules(rv):
    room = Room(rv, join_rule="knock")
    room.assert_allowed(room.member(BOB, "knock"))                          # 3: allow
    room.assert_rejected(room.member(ALICE, "knock", BOB), *K, "sender_is_target")
    for membership in ("ban", "invite", "join"):
        room.set_member(BOB, membership)
        room.assert_rejected(room.member(BOB, "knock"), *K, "reject")
    room.set_member(BOB, "leave")
    room.assert_allowed(room.member(BOB, "knock"))
    room.set_join_rule("invite")
    room.assert_rejected(room.member(BOB, "knock"), *K, "join_rule")


@pytest.mark.parametrize("rv", KNOCK_RESTRICTED)
def test_knock_on_knock_restricted_from_v10(rv):
    room = Room(rv, join_rule="knock_restricted")
    room.assert_allowed(room.member(BOB, "knock"))


@pytest.mark.parametrize("rv", vs(lambda rv: rv.knock_join_rule
                                  and not rv.knock_restricted_join_rule))
def test_knock_on_knock_restricted_rejected_before_v10(rv):
    room = Room(rv, join_rule="knock_restricted")
    room.assert_rejected(room.member(BOB, "knock"), *K, "join_rule")


@pytest.mark.parametrize("rv", NO_KNOCK)
def test_knock_is_unknown_membership_before_v7(rv):
    room = Room(rv, join_rule="knock")
    room.assert_rejected(room.member(BOB, "knock"), "member", "unknown")
