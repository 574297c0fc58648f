"""The pieces of state resolution v2/v2.1 on their own (rooms/v2.md, rooms/v12.md
"Definitions"), plus the module's contract: dispatch, purity, ``pause``."""
from __future__ import annotations

import pathlib
import re

import pytest

from protocol.state_res import resolve_state
from protocol.state_res import v2
from protocol.state_res._common import EventCache, Pauser
from test_state_res_dag import (
    ALICE,
    BOB,
    PL,
    TOPIC,
    Dag,
    E,
    rv_of,
)


def ev(eid: str, auth: list[str], *, typ: str = "m.room.topic", sender: str = ALICE,
       ts: int = 0, content: dict | None = None) -> dict:
    return {"event_id": eid, "type": typ, "state_key": "", "sender": sender,
            "content": content or {}, "auth_events": auth, "origin_server_ts": ts}


def cache(*events: dict) -> EventCache:
    by_id = {e["event_id"]: e for e in events}
    return EventCache(by_id.get)


def test_conflicted_state_subgraph_is_the_paths_between_conflicted_events():
    # C <- B <- A (auth edges point back in time); D hangs off B; X is unrelated.
    events = cache(ev("$C", []), ev("$B", ["$C"]), ev("$A", ["$B"]), ev("$D", ["$B"]),
                   ev("$X", ["$C"]))
    got = v2.conflicted_state_subgraph({"$A", "$C", "$D"}, events, Pauser(None))
    assert got == {"$A", "$B", "$C", "$D"}
    assert v2.conflicted_state_subgraph({"$A", "$X"}, events, Pauser(None)) == {"$A", "$X"}


def test_power_events_are_power_levels_join_rules_and_kicks_or_bans_of_others():
    assert v2.is_power_event(ev("$p", [], typ="m.room.power_levels"))
    assert v2.is_power_event(ev("$j", [], typ="m.room.join_rules"))
    kick = {**ev("$k", [], typ="m.room.member", content={"membership": "leave"}),
            "state_key": BOB}
    assert v2.is_power_event(kick)
    assert not v2.is_power_event({**kick, "sender": BOB})
    assert not v2.is_power_event(ev("$t", []))


def test_mainline_order_puts_events_based_on_older_power_levels_first():
    rv = rv_of("11")
    p0 = ev("$P0", [], typ=PL)
    p1 = ev("$P1", ["$P0"], typ=PL)
    p2 = ev("$P2", ["$P1"], typ=PL)
    side = ev("$PS", ["$P0"], typ=PL)  # off the mainline, based on P0
    a = ev("$A", ["$P2"], ts=1)
    b = ev("$B", ["$P1"], ts=5)
    c = ev("$C", ["$PS"], ts=3)
    d = ev("$D", [], ts=9)  # no power levels at all: position ∞, first
    e = ev("$E", ["$P1"], ts=5)  # ties with B on position and ts: event id decides
    events = cache(p0, p1, p2, side, a, b, c, d, e)
    order = v2.mainline_order(["$A", "$E", "$B", "$C", "$D"], "$P2", events, Pauser(None))
    assert order == ["$D", "$C", "$B", "$E", "$A"]
    del rv


def test_reverse_topological_power_order_respects_auth_edges_then_power_ts_id():
    rv = rv_of("11")
    create = {**ev("$CREATE", [], typ="m.room.create"), "content": {}}
    pl = ev("$PL", ["$CREATE"], typ=PL, content={"users": {ALICE: 100, BOB: 50}})
    bob_old = ev("$B1", ["$CREATE", "$PL"], sender=BOB, ts=1)
    alice_new = ev("$A1", ["$CREATE", "$PL"], ts=9)
    alice_tie = ev("$A0", ["$CREATE", "$PL"], ts=9)
    child = ev("$C1", ["$B1", "$PL"], ts=0)  # must come after its auth event B1
    events = cache(create, pl, bob_old, alice_new, alice_tie, child)
    order = v2.reverse_topological_power_order(
        rv, {"$PL", "$B1", "$A1", "$A0", "$C1"}, events, create, Pauser(None))
    assert order == ["$PL", "$A0", "$A1", "$B1", "$C1"]


def test_ordering_follows_auth_paths_through_unselected_events():
    rv = rv_of("11")
    create = {**ev("$CREATE", [], typ="m.room.create"), "content": {}}
    old = ev("$OLD", ["$CREATE"], sender=BOB, ts=50)
    mid = ev("$MID", ["$OLD"], ts=1)
    new = ev("$NEW", ["$MID"], ts=2)  # Alice outranks Bob, but NEW descends from OLD
    events = cache(create, old, mid, new)
    order = v2.reverse_topological_power_order(rv, {"$OLD", "$NEW"}, events, create,
                                               Pauser(None))
    assert order == ["$OLD", "$NEW"]


def test_resolve_state_trivial_inputs():
    rv = rv_of("11")
    assert resolve_state(rv, [], lambda _: None) == {}
    only = {("m.room.topic", ""): "$T"}
    assert resolve_state(rv, [only], lambda _: None) == only
    assert resolve_state(rv, [only, dict(only)], lambda _: None) == only


@pytest.mark.parametrize("room", ["1", "11", "12"])
def test_unknown_events_are_left_out(room):
    dag = Dag(rv_of(room), [E("T1", ALICE, TOPIC, "", {"topic": "x"})],
              [["END", "T1", "START"]])
    with_missing = dict(dag.state_after["T1"])
    with_missing[("org.example.gone", "")] = "$GONE"
    got = dag.resolve([dag.state_after["START"], with_missing])
    assert got[(TOPIC, "")] == dag.eid("T1")


@pytest.mark.parametrize("room", ["1", "11", "12"])
def test_pause_is_called_during_a_long_resolution(room):
    n = 250
    fork_a = [E(f"A{i}", ALICE, "org.example.s", str(i), {"v": "a"}) for i in range(n)]
    fork_b = [E(f"B{i}", ALICE, "org.example.s", str(i), {"v": "b"}) for i in range(n)]
    chain_a = ["END"] + [f"A{i}" for i in reversed(range(n))] + ["START"]
    chain_b = ["END"] + [f"B{i}" for i in reversed(range(n))] + ["START"]
    dag = Dag(rv_of(room), fork_a + fork_b, [chain_a, chain_b])
    calls = []
    result = resolve_state(dag.rv, dag.fork_states(), dag.get_event,
                           pause=lambda: calls.append(1))
    assert calls
    assert result == resolve_state(dag.rv, dag.fork_states(), dag.get_event)


def test_state_res_modules_stay_pure():
    root = pathlib.Path(__file__).resolve().parents[2] / "protocol" / "state_res"
    for path in root.glob("*.py"):
        source = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(gevent|store|web|supervision|time|os)\b",
                             source, re.M), path.name
        assert "open(" not in source, path.name


def test_auth_cycles_from_forged_v1_style_ids_terminate():
    """Rooms v1–v2 let the sender choose event ids, so a forged auth DAG may have a cycle."""
    rv = rv_of("2")
    create = {**ev("$CREATE", [], typ="m.room.create"), "content": {}}
    a = ev("$A", ["$B"], typ=PL)
    b = ev("$B", ["$A"], typ=PL)
    t = ev("$T", ["$A"])
    events = cache(create, a, b, t)
    assert v2.conflicted_state_subgraph({"$A", "$T"}, events, Pauser(None)) >= {"$A", "$T"}
    order = v2.reverse_topological_power_order(rv, {"$A", "$B", "$T"}, events, create,
                                               Pauser(None))
    assert order == []  # nothing in a cycle is ever ready
    assert v2.mainline_order(["$T"], "$B", events, Pauser(None)) == ["$T"]
