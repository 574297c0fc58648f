"""State resolution v1 (rooms/v1.md "State resolution") on DAG fixtures in room version 1.

Auth-type conflicts (power levels, join rules, members) go by ascending depth, each next
event applied only while it passes auth; other conflicts take the deepest event (lowest
sha1(event_id) on ties) that passes auth.
"""
from __future__ import annotations

import hashlib

from test_state_res_dag import (
    ALICE,
    BOB,
    CHARLIE,
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

V1 = rv_of("1")


def test_deeper_topic_wins_even_if_older():
    dag = Dag(V1, [
        E("M1", ZARA, MESSAGE, None, {"body": "filler"}),
        E("T1", ALICE, TOPIC, "", {"topic": "deep"}),
        E("T2", ALICE, TOPIC, "", {"topic": "shallow but newer"}),
    ], [["END", "T1", "M1", "START"], ["END", "T2", "START"]])
    assert_all_agree(dag, dag.expected(["T1"]))


def test_equal_depth_topics_pick_lowest_sha1_of_event_id():
    dag = Dag(V1, [
        E("T1", ALICE, TOPIC, "", {"topic": "one"}),
        E("T2", ALICE, TOPIC, "", {"topic": "two"}),
    ], [["END", "T1", "START"], ["END", "T2", "START"]])
    winner = min(["T1", "T2"], key=lambda n: hashlib.sha1(dag.eid(n).encode()).hexdigest())
    assert_all_agree(dag, dag.expected([winner]))


def test_topic_failing_auth_loses_to_shallower_one():
    """Bob's deeper topic was allowed on his fork, but Alice demoted him on the other: the
    demotion is resolved first, Bob's topic then fails auth and Alice's stands."""
    dag = Dag(V1, [
        E("PA", ALICE, PL, "", {"users": {ALICE: 100, BOB: 50}}),
        E("PD", ALICE, PL, "", {"users": {ALICE: 100}}),
        E("TA", ALICE, TOPIC, "", {"topic": "alice"}),
        E("M1", ZARA, MESSAGE, None, {"body": "filler"}),
        E("TB", BOB, TOPIC, "", {"topic": "bob"}),
    ], [["END", "TA", "PD", "PA", "START"], ["END", "TB", "M1", "PA"]])
    assert_all_agree(dag, dag.expected(["PD", "TA"]))


def test_power_levels_applied_by_depth_stop_at_first_failure():
    """Shallower PD (Bob demoted) goes first; Bob's deeper PLB then fails against it."""
    dag = Dag(V1, [
        E("PA", ALICE, PL, "", {"users": {ALICE: 100, BOB: 50}}),
        E("PD", ALICE, PL, "", {"users": {ALICE: 100}}),
        E("M1", ZARA, MESSAGE, None, {"body": "filler"}),
        E("PLB", BOB, PL, "", {"users": {ALICE: 100, BOB: 50}, "events": {TOPIC: 50}}),
    ], [["END", "PD", "PA", "START"], ["END", "PLB", "M1", "PA"]])
    assert_all_agree(dag, dag.expected(["PD"]))


def test_deeper_power_levels_that_pass_auth_replace_shallower():
    dag = Dag(V1, [
        E("PA", ALICE, PL, "", {"users": {ALICE: 100, BOB: 50}}),
        E("PLB", BOB, PL, "", {"users": {ALICE: 100, BOB: 50}, "events": {TOPIC: 50}}),
        E("M1", ZARA, MESSAGE, None, {"body": "filler"}),
        E("PD", ALICE, PL, "", {"users": {ALICE: 100}}),
    ], [["END", "PLB", "PA", "START"], ["END", "PD", "M1", "PA"]])
    assert_all_agree(dag, dag.expected(["PD"]))


def test_ban_beats_deeper_profile_change():
    dag = Dag(V1, [
        E("MBAN", ALICE, MEMBER, CHARLIE, member("ban")),
        E("M1", ZARA, MESSAGE, None, {"body": "filler"}),
        E("MC2", CHARLIE, MEMBER, CHARLIE, member("join", displayname="Chuck")),
    ], [["END", "MBAN", "START"], ["END", "MC2", "M1", "START"]])
    assert_all_agree(dag, dag.expected(["MBAN"]))


def test_key_set_on_one_fork_only_is_not_a_conflict_in_v1():
    dag = Dag(V1, [
        E("T1", ALICE, TOPIC, "", {"topic": "one"}),
        E("MB1", BOB, MEMBER, BOB, member("join", displayname="Bobby")),
    ], [["END", "T1", "START"], ["END", "MB1", "START"]])
    assert_all_agree(dag, dag.expected(["T1", "MB1"]))
