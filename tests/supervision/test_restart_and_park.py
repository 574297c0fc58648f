"""Crash isolation: restart one-for-one, park a crash loop, keep other children serving."""

from __future__ import annotations

import time

import gevent
import pykka
import pytest

from supervision import ActorFailed, ActorParked, Supervisor, Tracer
from supervision.testing import (
    Add, Ask, Crash, CounterActor, ExpectActor, ExpectChild, ExpectOutcomes, ExpectRestart,
    Fail, Get, Reject, Forbidden, ScriptHarness, Tell, Wait, counter_factory,
)

pytestmark = pytest.mark.timeout(10)


def test_raising_child_fails_only_that_request_then_restarts_and_serves() -> None:
    store: dict[str, int] = {}
    events: list = []
    with ScriptHarness(counter_factory(store, events)) as h:
        h.play(
            Ask("r1", Add(2), expect=2),
            Ask("r1", Fail(), raises=ActorFailed),
            ExpectRestart("r1", restarts=1),
            Ask("r1", Add(1), expect=3),          # reloaded from the store: nothing acked lost
            ExpectActor("r1", lambda a: a.total == 3),
            ExpectOutcomes("r1", ["ok", "crash", "ok"]),
        )
        assert isinstance(h.last_error, ActorFailed)
        assert isinstance(h.last_error.cause, RuntimeError)
        assert [e[0] for e in events] == ["load", "load"]
        assert events[0][2] != events[1][2]  # a new incarnation (URN)


def test_domain_error_goes_to_caller_and_actor_keeps_its_state() -> None:
    with ScriptHarness(counter_factory({}, [])) as h:
        h.play(
            Ask("r1", Add(5), expect=5),
            Ask("r1", Reject(), raises=Forbidden),
            Ask("r1", Get(), expect=5),
            ExpectChild("r1", state="running", fields={"restarts": 0, "incarnation": 1}),
            ExpectOutcomes("r1", ["ok", "domain_error", "ok"]),
        )


def test_crash_in_tell_restarts_too() -> None:
    with ScriptHarness(counter_factory({}, [])) as h:
        h.play(
            Tell("r1", Add(1)),
            Tell("r1", Fail()),
            ExpectRestart("r1", restarts=1),
            Ask("r1", Get(), expect=1),
        )


def test_messages_queued_behind_a_crash_are_served_by_the_new_incarnation() -> None:
    with ScriptHarness(counter_factory({}, [])) as h:
        sup = h.supervisor
        sup.tell("r1", Add(1))
        sup.tell("r1", Fail())
        for _ in range(4):
            sup.tell("r1", Add(1))
        assert sup.ask("r1", Get()) == 5
        assert sup.child("r1")["restarts"] == 1
        assert sup.stats()["pending"] == 0


def test_fatal_base_exception_is_contained_to_one_actor() -> None:
    with ScriptHarness(counter_factory({}, [])) as h:
        h.play(
            Ask("other", Add(1), expect=1),
            Crash("r1", kind="fatal"),
            Ask("r1", Add(1), raises=ActorFailed),
            ExpectRestart("r1"),
            Ask("r1", Add(1), expect=1),
            Ask("other", Add(1), expect=2),      # pykka did not stop every actor
            ExpectChild("other", state="running", fields={"incarnation": 1}),
        )
    assert pykka.ActorRegistry.get_all() == []  # ours never go into pykka's registry


def test_crash_loop_is_parked_without_burning_cpu_then_serves_again() -> None:
    created: list[str] = []

    def factory(key: str) -> CounterActor:
        created.append(key)
        return CounterActor({}, [])

    with ScriptHarness(factory, max_restarts=3, restart_window=5.0, restart_delay=0.002,
                       park_duration=0.15) as h:
        sup = h.supervisor
        sup.inject_fault("bad", count=1_000)
        outcomes: list[str] = []
        deadline = time.monotonic() + 0.1
        while time.monotonic() < deadline:  # a client retrying as fast as it can
            try:
                sup.ask("bad", Add(1))
                outcomes.append("ok")
            except ActorFailed:
                outcomes.append("failed")
            except ActorParked as exc:
                assert 0 < exc.retry_after_ms <= 150
                outcomes.append("parked")
                time.sleep(0.005)
        # 4 crashes (the 4th within the window parks), 3 restarts, then nothing runs.
        assert outcomes[:4] == ["failed"] * 4
        assert set(outcomes[4:]) == {"parked"}
        assert len(created) == 4
        stats = sup.stats()
        assert (stats["crashes"], stats["restarts"], stats["parks"]) == (4, 3, 1)
        assert sup.pending_faults("bad") == 1_000 - 4
        assert sup.child("bad")["state"] == "parked"

        sup.clear_faults("bad")
        h.play(
            Wait(0.15),
            Ask("bad", Add(1), expect=1),
            ExpectChild("bad", state="running", fields={"recent_failures": 0}),
        )
        assert len(created) == 5


def test_parked_child_rejects_tells_and_queued_asks_get_parked() -> None:
    with ScriptHarness(counter_factory({}, []), max_restarts=0, park_duration=0.1) as h:
        sup = h.supervisor
        sup.tell("r1", Fail())                 # max_restarts=0: the first crash parks
        pending = [gevent.spawn(sup.ask, "r1", Get()) for _ in range(3)]
        gevent.joinall(pending, timeout=2)
        assert all(isinstance(g.exception, ActorParked) for g in pending)
        h.play(
            ExpectChild("r1", state="parked"),
            Tell("r1", Add(1), raises=ActorParked),
            ExpectChild("r1", state="absent", within=0.5),   # park expired: entry dropped
            Ask("r1", Add(1), expect=1),
        )


def test_other_children_keep_serving_with_low_latency_meanwhile() -> None:
    tracer = Tracer(capacity=50_000)
    sup = Supervisor("rooms", counter_factory({}, []), tracer=tracer, ask_timeout=1.0,
                     restart_delay=0.001, max_restarts=1_000, restart_window=1.0,
                     park_duration=1.0)
    try:
        sup.inject_fault("bad", count=10_000)
        stop = False

        def hammer() -> None:
            while not stop:
                try:
                    sup.ask("bad", Add(1))
                except ActorFailed:
                    pass

        attackers = [gevent.spawn(hammer) for _ in range(3)]
        latencies = []
        i = 0
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            assert sup.ask(f"good{i % 5}", Add(1)) == i // 5 + 1
            latencies.append(time.perf_counter() - t0)
            i += 1
            gevent.sleep(0.001)
        stop = True
        gevent.joinall(attackers, timeout=2)
        assert sup.stats()["restarts"] > 20          # the bad one really was crash-looping
        latencies.sort()
        # loose bounds: this proves isolation, not speed (other work may share the CPU)
        assert latencies[len(latencies) // 2] < 0.05  # median
        assert latencies[-1] < 0.5
        assert all(sup.child(f"good{i}")["incarnation"] == 1 for i in range(5))
    finally:
        sup.stop_all()


def test_restart_only_replaces_the_actor_still_in_the_directory() -> None:
    with ScriptHarness(counter_factory({}, [])) as h:
        sup = h.supervisor
        sup.ask("r1", Add(1))
        first = sup._children["r1"].actor
        sup.tell("r1", Fail())
        h.play(ExpectRestart("r1"))
        second = sup._children["r1"].actor
        assert first is not second and second is not None
        # A late exit report from the first incarnation must not disturb the second.
        sup._on_actor_exit(first, [])
        assert sup._children["r1"].actor is second
        assert sup.ask("r1", Get()) == 1  # reloaded from the store
        assert sup.stats()["restarts"] == 1


def test_on_start_failure_counts_as_a_crash() -> None:
    class BadStart(CounterActor):
        def on_start(self) -> None:
            raise RuntimeError("use load() instead")

    with ScriptHarness(lambda key: BadStart({}, []), max_restarts=1, park_duration=0.1) as h:
        with pytest.raises(ActorParked):
            h.supervisor.ask("r1", Get())
        assert h.supervisor.stats()["crashes"] == 2
