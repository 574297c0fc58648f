"""Bounded mailboxes, ask timeouts, idle passivation, lazy spawn races and shutdown."""

from __future__ import annotations

import time

import gevent
import pytest

from supervision import (
    ActorFailed, AskTimeout, MailboxFull, SupervisedActor, Supervisor, SupervisorStopped,
)
from supervision.testing import (
    Add, Ask, CounterActor, ExpectChild, ExpectOutcomes, Fail, Get, ScriptHarness, Sleep,
    Tell, Wait, counter_factory,
)

pytestmark = pytest.mark.timeout(10)


def test_full_mailbox_rejects_with_retry_after() -> None:
    with ScriptHarness(counter_factory({}, []), max_mailbox=3) as h:
        sup = h.supervisor
        sup.tell("r1", Sleep(0.05))          # occupies the actor
        sup.tell("r1", Add(1))
        sup.tell("r1", Add(1))
        with pytest.raises(MailboxFull) as info:
            sup.tell("r1", Add(1))
        assert info.value.retry_after_ms >= 20
        assert info.value.http_status == 429
        assert info.value.to_matrix_error()["errcode"] == "M_LIMIT_EXCEEDED"
        with pytest.raises(MailboxFull):
            sup.ask("r1", Get())
        other = sup.ask("r2", Add(7))         # other keys unaffected
        assert other == 7
        h.play(
            Wait(0.08),
            Ask("r1", Get(), expect=2),       # drained: accepted again
            ExpectOutcomes("r1", ["ok", "ok", "ok", "rejected_full", "rejected_full", "ok"]),
        )
        assert sup.stats()["rejected_full"] == 2


def test_ask_times_out_and_a_late_abandoned_ask_is_skipped() -> None:
    with ScriptHarness(counter_factory({}, [])) as h:
        sup = h.supervisor
        sup.tell("r1", Sleep(0.05))
        t0 = time.monotonic()
        with pytest.raises(AskTimeout) as info:
            sup.ask("r1", Add(1), timeout=0.01)  # queued behind the sleep; caller gives up
        assert 0.009 < time.monotonic() - t0 < 0.04
        assert info.value.http_status == 504
        h.play(
            Ask("r1", Get(), expect=0),          # the abandoned Add never ran
            ExpectOutcomes("r1", ["ok", "timeout", "ok"]),
        )
        assert sup.stats()["timeouts"] == 1 and sup.stats()["pending"] == 0


def test_hang_fault_makes_an_ask_time_out_while_the_actor_survives() -> None:
    with ScriptHarness(counter_factory({}, [])) as h:
        h.play(
            Ask("r1", Add(1), expect=1),
            ExpectChild("r1", state="running"),
        )
        h.supervisor.inject_fault("r1", "hang", delay=0.05)
        h.play(
            Ask("r1", Add(1), raises=AskTimeout, timeout=0.01),
            Ask("r1", Get(), expect=2),          # started before the timeout: it completed
            ExpectChild("r1", state="running", fields={"restarts": 0}),
        )


def test_idle_child_is_passivated_then_respawned_lazily() -> None:
    events: list = []
    with ScriptHarness(counter_factory({}, events), idle_timeout=0.03) as h:
        h.play(
            Ask("r1", Add(1), expect=1),
            Ask("r2", Add(1), expect=1),
            Wait(0.015),
            Ask("r2", Get(), expect=1),                  # r2 stays busy
            ExpectChild("r1", state="absent", within=0.2),
            Ask("r1", Add(1), expect=2),                 # lazy respawn, reloaded
            ExpectChild("r1", state="running", fields={"incarnation": 1}),
        )
        kinds = [(e[0], e[1]) for e in events if e[1] == "r1"]
        assert kinds == [("load", "r1"), ("stop", "r1"), ("load", "r1")]
        assert h.supervisor.stats()["passivated"] >= 1


def test_messages_arriving_during_on_stop_wait_for_it_then_get_a_fresh_actor() -> None:
    active: list[str] = []
    overlaps: list[int] = []

    class SlowStop(CounterActor):
        def load(self) -> None:
            active.append(self.actor_urn)
            overlaps.append(len(active))
            super().load()

        def on_stop(self) -> None:
            time.sleep(0.03)   # e.g. a final flush that yields
            active.remove(self.actor_urn)

    with ScriptHarness(lambda key: SlowStop({}, []), idle_timeout=0.01) as h:
        sup = h.supervisor
        assert sup.ask("r1", Add(1)) == 1
        deadline = time.monotonic() + 1
        while sup.child("r1")["state"] != "stopping":
            assert time.monotonic() < deadline
            time.sleep(0.001)
        assert sup.ask("r1", Add(1)) == 1   # store is a fresh dict per actor here
        assert overlaps == [1, 1]           # never two live actors for one key


def test_no_duplicate_actor_for_one_key_under_a_race() -> None:
    created: list[str] = []

    class SlowLoad(CounterActor):
        def load(self) -> None:
            time.sleep(0.005)
            super().load()

    def factory(key: str) -> SupervisedActor:
        created.append(key)
        time.sleep(0.005)                   # a factory that yields
        return SlowLoad({}, [])

    with ScriptHarness(factory, max_mailbox=500) as h:
        sup = h.supervisor
        asks = [gevent.spawn(sup.ask, "r1", Add(1)) for _ in range(100)]
        tells = [gevent.spawn(sup.tell, "r1", Add(1)) for _ in range(100)]
        gevent.joinall(asks + tells, timeout=5, raise_error=True)
        assert sorted(g.value for g in asks) == sorted(set(g.value for g in asks))
        assert created == ["r1"]
        assert sup.ask("r1", Get()) == 200
        assert sup.child("r1")["incarnation"] == 1


def test_stop_all_stops_everything_and_nothing_restarts_after() -> None:
    events: list = []
    sup = Supervisor("rooms", counter_factory({}, events), ask_timeout=1.0,
                     restart_delay=0.05, max_restarts=0, park_duration=0.05,
                     idle_timeout=None)
    for key in ("a", "b", "c"):
        sup.ask(key, Add(1))
    sup.tell("a", Sleep(0.02))
    sup.tell("a", Add(1))                 # queued: finishes before "a" stops
    sup.tell("b", Fail())                 # b parks (max_restarts=0)
    sup.inject_fault("c")
    sup.tell("c", Add(1))                 # c parks too, through an injected fault
    sup2 = Supervisor("others", counter_factory({}, []), restart_delay=0.05)
    sup2.tell("x", Fail())                # x is waiting out its restart delay at shutdown
    gevent.sleep(0.005)
    assert [sup.child(k)["state"] for k in "abc"] == ["running", "parked", "parked"]
    assert sup2.child("x")["state"] == "restarting"

    assert sup.stop_all(timeout=2.0) is True
    assert sup2.stop_all(timeout=2.0) is True
    assert sup.children() == [] and sup.stats()["stopped"] is True
    stops = sorted(e[1] for e in events if e[0] == "stop")
    assert stops == ["a"]                 # b and c had no running actor left
    spawned = sup.stats()["spawned"], sup2.stats()["spawned"]
    gevent.sleep(0.1)                      # past every restart delay and park
    assert (sup.stats()["spawned"], sup2.stats()["spawned"]) == spawned
    assert sup.children() == [] and sup2.children() == []
    with pytest.raises(SupervisorStopped):
        sup.ask("a", Get())
    with pytest.raises(SupervisorStopped):
        sup.tell("d", Add(1))
    assert sup.tracer.recent("a")[-1].outcome == "stopped"


def test_stop_all_answers_asks_that_wait_for_a_restart() -> None:
    sup = Supervisor("rooms", counter_factory({}, []), restart_delay=0.5)
    sup.tell("r1", Fail())
    waiter = gevent.spawn(sup.ask, "r1", Get())
    gevent.sleep(0.01)
    assert sup.child("r1")["state"] == "restarting"
    sup.stop_all()
    waiter.join(timeout=1)
    assert isinstance(waiter.exception, SupervisorStopped)


def test_an_actor_that_asks_itself_fails_fast_instead_of_deadlocking() -> None:
    class SelfAsker(CounterActor):
        def handle(self, message: object) -> object:
            assert self.supervisor is not None
            return self.supervisor.ask(self.key, Get(), timeout=1.0)

    with ScriptHarness(lambda key: SelfAsker({}, [])) as h:
        t0 = time.monotonic()
        h.play(Ask("r1", Add(1), raises=ActorFailed))
        assert time.monotonic() - t0 < 0.1
        assert isinstance(h.last_error.cause, RuntimeError)


def test_factory_errors_fail_the_request_and_count_towards_parking() -> None:
    def factory(key: str) -> SupervisedActor:
        raise OSError("store unavailable")

    with ScriptHarness(factory, max_restarts=1) as h:
        h.play(
            Ask("r1", Get(), raises=ActorFailed),
            Tell("r1", Add(1)),                    # accepted, then fails at spawn
            ExpectChild("r1", state="parked"),
        )
        assert h.supervisor.stats()["factory_errors"] == 2
