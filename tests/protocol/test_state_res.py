"""State resolution v2 / v2.1 on the classic DAG fixtures (rooms/v2.md, rooms/v12.md).

Every fixture is resolved event by event along the DAG, in batches and all at once, in
shuffled orders (see test_state_res_dag.py), in room versions with v2 (2, 6, 11) and v2.1
(12) resolution; all must give the expected state.
"""
from __future__ import annotations

import pytest

from test_state_res_dag import (
    ALICE,
    BOB,
    CHARLIE,
    EVELYN,
    JR,
    MEMBER,
    MESSAGE,
    PL,
    TOPIC,
    ZARA,
    Dag,
    E,
    assert_all_agree,
    join,
    member,
    rv_of,
)

V2_ROOMS = ["2", "6", "11", "12"]


def users(rv, **levels: int) -> dict[str, int]:
    """A power-levels ``users`` map; v12 creators (Alice) may not be listed."""
    by_name = {"alice": ALICE, "bob": BOB, "charlie": CHARLIE, "zara": ZARA}
    out = {by_name[k]: v for k, v in levels.items()}
    if rv.privileged_creators:
        out.pop(ALICE, None)
    return out


@pytest.mark.parametrize("room", V2_ROOMS)
def test_ban_beats_concurrent_power_levels_by_the_banned_user(room):
    rv = rv_of(room)
    bob50 = {"users": users(rv, alice=100, bob=50)}
    dag = Dag(rv, [
        E("PA", ALICE, PL, "", bob50),
        E("MA", ALICE, MEMBER, ALICE, member("join", displayname="Alice")),
        E("MB", ALICE, MEMBER, BOB, member("ban")),
        E("PB", BOB, PL, "", dict(bob50)),
    ], [["END", "MB", "MA", "PA", "START"], ["END", "PB", "PA"]])
    assert_all_agree(dag, dag.expected(["PA", "MA", "MB"]))


@pytest.mark.parametrize("room", V2_ROOMS)
def test_topic_of_banned_moderator_is_reset(room):
    rv = rv_of(room)
    dag = Dag(rv, [
        E("T1", ALICE, TOPIC, "", {"topic": "one"}),
        E("PA", ALICE, PL, "", {"users": users(rv, alice=100, bob=50)}),
        E("T2", BOB, TOPIC, "", {"topic": "two"}),
        E("MB", ALICE, MEMBER, BOB, member("ban")),
    ], [["END", "MB", "T2", "PA", "T1", "START"], ["END", "T1"]])
    assert_all_agree(dag, dag.expected(["T1", "PA", "MB"]))


@pytest.mark.parametrize("room", V2_ROOMS)
def test_join_racing_a_switch_to_invite_only_is_rejected(room):
    dag = Dag(rv_of(room), [
        E("JR", ALICE, JR, "", {"join_rule": "invite"}),
        E("ME", EVELYN, MEMBER, EVELYN, join()),
    ], [["END", "JR", "START"], ["END", "ME", "START"]])
    assert_all_agree(dag, dag.expected(["JR"]))
    assert (MEMBER, EVELYN) not in dag.incremental(0)


@pytest.mark.parametrize("room", V2_ROOMS)
def test_demoted_moderator_cannot_use_old_power_on_another_fork(room):
    rv = rv_of(room)
    dag = Dag(rv, [
        E("PA", ALICE, PL, "", {"users": users(rv, alice=100, bob=50)}),
        E("PD", ALICE, PL, "", {"users": users(rv, alice=100)}),
        E("MBAN", BOB, MEMBER, CHARLIE, member("ban")),
        E("TB", BOB, TOPIC, "", {"topic": "bob was here"}),
    ], [["END", "PD", "PA", "START"], ["END", "TB", "MBAN", "PA"]])
    assert_all_agree(dag, dag.expected(["PD"]))


@pytest.mark.parametrize("room", V2_ROOMS)
def test_power_level_takeover_by_equal_admin_is_rejected(room):
    """Bob (50) raises Charlie to 50 and Charlie then tries to demote Bob, while Alice, on
    another fork, removes Bob's power: Alice's change is applied first and the rest fail."""
    rv = rv_of(room)
    dag = Dag(rv, [
        E("PA", ALICE, PL, "", {"users": users(rv, alice=100, bob=50)}),
        E("PB", BOB, PL, "", {"users": users(rv, alice=100, bob=50, charlie=50)}),
        E("PC", CHARLIE, PL, "", {"users": users(rv, alice=100, bob=50, charlie=50)}),
        E("PZ", ALICE, PL, "", {"users": users(rv, alice=100)}),
    ], [["END", "PC", "PB", "PA", "START"], ["END", "PZ", "PA"]])
    assert_all_agree(dag, dag.expected(["PZ"]))


@pytest.mark.parametrize("room", V2_ROOMS)
def test_concurrent_self_membership_changes_latest_wins(room):
    dag = Dag(rv_of(room), [
        E("MB1", BOB, MEMBER, BOB, member("join", displayname="Bobby")),
        E("LB", BOB, MEMBER, BOB, member("leave")),
    ], [["END", "MB1", "START"], ["END", "LB", "START"]])
    assert_all_agree(dag, dag.expected(["LB"]))


@pytest.mark.parametrize("room", V2_ROOMS)
def test_ban_beats_later_concurrent_profile_change(room):
    dag = Dag(rv_of(room), [
        E("MBAN", ALICE, MEMBER, CHARLIE, member("ban")),
        E("MC2", CHARLIE, MEMBER, CHARLIE, member("join", displayname="Chuck")),
    ], [["END", "MBAN", "START"], ["END", "MC2", "START"]])
    assert_all_agree(dag, dag.expected(["MBAN"]))


@pytest.mark.parametrize("room", V2_ROOMS)
def test_offline_server_rejoin_in_public_room_keeps_both_sides(room):
    dag = Dag(rv_of(room), [
        E("T1", ALICE, TOPIC, "", {"topic": "while zara was away"}),
        E("MZL", ZARA, MEMBER, ZARA, member("leave")),
        E("MZJ", ZARA, MEMBER, ZARA, join()),
    ], [["END", "T1", "START"], ["END", "MZJ", "MZL", "START"]])
    assert_all_agree(dag, dag.expected(["T1", "MZJ"]))


@pytest.mark.parametrize("room", V2_ROOMS)
def test_offline_server_cannot_rejoin_after_room_went_invite_only(room):
    dag = Dag(rv_of(room), [
        E("T1", ALICE, TOPIC, "", {"topic": "invite only now"}),
        E("JRI", ALICE, JR, "", {"join_rule": "invite"}),
        E("MZL", ZARA, MEMBER, ZARA, member("leave")),
        E("MZJ", ZARA, MEMBER, ZARA, join()),
    ], [["END", "JRI", "T1", "START"], ["END", "MZJ", "MZL", "START"]])
    assert_all_agree(dag, dag.expected(["T1", "JRI", "MZL"]))


@pytest.mark.parametrize("room", V2_ROOMS)
def test_three_forks_merge_to_the_same_state_in_any_grouping(room):
    dag = Dag(rv_of(room), [
        E("TA", ALICE, TOPIC, "", {"topic": "a"}),
        E("MB1", BOB, MEMBER, BOB, member("join", displayname="Bobby")),
        E("LC", CHARLIE, MEMBER, CHARLIE, member("leave")),
        E("TC", ALICE, TOPIC, "", {"topic": "c"}),
    ], [["END", "TA", "START"], ["END", "MB1", "START"], ["END", "TC", "LC", "START"]])
    assert_all_agree(dag, dag.expected(["MB1", "LC", "TC"]))


@pytest.mark.parametrize("room", V2_ROOMS)
def test_fork_merged_mid_dag_then_forked_again(room):
    """A merge in the middle of the DAG (state resolved at M) feeding a later merge."""
    rv = rv_of(room)
    dag = Dag(rv, [
        E("PA", ALICE, PL, "", {"users": users(rv, alice=100, bob=50)}),
        E("T1", BOB, TOPIC, "", {"topic": "bob's"}),
        E("MBAN", ALICE, MEMBER, BOB, member("ban")),
        E("M", ZARA, MESSAGE, None, {"body": "merge"}),
        E("T2", ALICE, TOPIC, "", {"topic": "alice's"}),
        E("N", CHARLIE, MEMBER, CHARLIE, member("join", displayname="C")),
    ], [["END", "T2", "M", "T1", "PA", "START"], ["M", "MBAN", "PA"], ["END", "N", "PA"]])
    assert_all_agree(dag, dag.expected(["PA", "MBAN", "T2", "N"]))


# --- where v2 and v2.1 differ ---------------------------------------------------------------


@pytest.mark.parametrize("room, winner", [("6", "JRA"), ("11", "JRA"), ("12", "JRB")])
def test_v12_creator_power_is_infinite_in_the_power_ordering(room, winner):
    """Alice (creator) and Bob both have 100 in v11; Bob's change is older, so it is applied
    first and Alice's wins.  In v12 Alice's power is infinite: hers is applied first and
    Bob's (still allowed) is applied after it and wins.  (XB makes Bob's membership part of
    both forks' auth chains, so it is not in the auth difference — otherwise Bob's join,
    at power 0, would be sorted after Alice's change and drag Bob's after it too.)"""
    rv = rv_of(room)
    dag = Dag(rv, [
        E("P100", ALICE, PL, "", {"users": users(rv, alice=100, bob=100)}),
        E("JRB", BOB, JR, "", {"join_rule": "invite"}),
        E("XB", BOB, "org.example.bob", "", {"x": 1}),
        E("JRA", ALICE, JR, "", {"join_rule": "public"}),
    ], [["END", "JRB", "P100", "START"], ["END", "JRA", "XB", "P100"]])
    assert_all_agree(dag, dag.expected(["P100", "XB", winner]))


@pytest.mark.parametrize("room, winner", [("2", "PA"), ("11", "PA"), ("12", "PLB")])
def test_v21_replays_power_events_from_an_empty_state(room, winner):
    """Two states agree that Bob is banned but not on the power levels (PA vs Bob's PLB,
    sent before the ban).  v2 checks PLB against the unconflicted state, where Bob is
    banned, and drops it; v2.1 starts the checks from an empty state, so PLB is checked
    against its own auth events and stands."""
    rv = rv_of(room)
    dag = Dag(rv, [
        E("PA", ALICE, PL, "", {"users": users(rv, alice=100, bob=50)}),
        E("PLB", BOB, PL, "", {"users": users(rv, alice=100, bob=50),
                                "events": {TOPIC: 50}}),
        E("MBAN", ALICE, MEMBER, BOB, member("ban")),
    ], [["END", "PLB", "PA", "START"], ["END", "MBAN", "PA"]])
    banned = dict(dag.state_after["MBAN"])
    believes_both = dict(dag.state_after["PLB"])
    believes_both[(MEMBER, BOB)] = dag.eid("MBAN")
    want = dag.expected(["MBAN", winner])
    for states in ([banned, believes_both], [believes_both, banned]):
        assert dag.names(dag.resolve(states)) == dag.names(want)
