"""Fault injection semantics, trace propagation, the tracer ring, JSONL and rendering."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from supervision import (
    ActorFailed, ActorParked, Supervisor, Tracer, current_trace, load_jsonl, message,
    render_recent, render_trace, require_message, trace_context,
)
from supervision.testing import (
    Add, Ask, Crash, ExpectChild, ExpectOutcomes, ExpectRestart, Forward, Get, ScriptFailure,
    ScriptHarness, counter_factory,
)

pytestmark = pytest.mark.timeout(10)


def test_fault_injected_before_the_actor_exists_fires_on_exactly_the_next_n_messages() -> None:
    with ScriptHarness(counter_factory({}, [])) as h:
        sup = h.supervisor
        h.play(
            ExpectChild("r1", state="absent"),
            Crash("r1", count=2),
            Ask("r1", Add(1), raises=ActorFailed),
            Ask("r1", Add(1), raises=ActorFailed),   # survived the restart it caused
            Ask("r1", Add(1), expect=1),
            Ask("r1", Add(1), expect=2),
            ExpectRestart("r1", restarts=2),
            ExpectOutcomes("r1", ["crash", "crash", "ok", "ok"]),
        )
        assert sup.pending_faults("r1") == 0
        sup.inject_fault("r1", count=5)
        sup.inject_fault("r1", count=0)              # clears
        assert sup.pending_faults("r1") == 0
        assert sup.ask("r1", Get()) == 2
        with pytest.raises(ValueError):
            sup.inject_fault("r1", "explode")       # type: ignore[arg-type]


def test_inspection_consumes_no_fault_and_a_failed_check_does_not_crash() -> None:
    with ScriptHarness(counter_factory({}, [])) as h:
        sup = h.supervisor
        sup.inject_fault("r1", count=1)
        assert sup.inspect("r1", lambda a: a.total) == 0
        assert sup.pending_faults("r1") == 1
        with pytest.raises(ZeroDivisionError):
            sup.inspect("r1", lambda a: 1 / 0)
        assert sup.child("r1")["incarnation"] == 1
        with pytest.raises(ScriptFailure, match="step 2"):
            h.play(Ask("r1", Add(1), raises=ActorFailed), Ask("r1", Add(1), expect=99))


def test_trace_id_follows_the_work_into_follow_on_tells() -> None:
    tracer = Tracer(capacity=100)
    sup = Supervisor("rooms", counter_factory({}, []), tracer=tracer, restart_delay=0.001)
    try:
        with trace_context(sender="web") as ctx:
            assert current_trace() == ctx
            sup.ask("a", Forward(to="b", n=3))
        assert current_trace() is None
        assert sup.ask("b", Get()) == 3
        recs = tracer.by_trace(ctx.trace_id)
        assert [(r.sender, r.recipient, r.message_type, r.kind, r.outcome) for r in recs] == [
            ("web", "rooms/a", "Forward", "ask", "ok"),
            ("rooms/a", "rooms/b", "Add", "tell", "ok"),
        ]
        explicit = sup.ask("a", Get(), trace_id="txn-42") == 0
        assert explicit and tracer.by_trace("txn-42")[0].sender == "external"
        assert tracer.by_trace("unknown") == []
        seen = sup.inspect("a", lambda actor: (actor.trace_id, actor.sender))
        assert seen[1] == "inspect" and len(seen[0]) == 16   # generated when absent
    finally:
        sup.stop_all()


def test_tracer_ring_is_bounded_and_recent_filters_by_actor() -> None:
    tracer = Tracer(capacity=5)
    sup = Supervisor("rooms", counter_factory({}, []), tracer=tracer)
    try:
        for i in range(8):
            sup.ask("a" if i % 2 else "b", Add(1), trace_id=f"t{i}")
        assert len(tracer) == 5
        assert [r.trace_id for r in tracer.recent()] == ["t3", "t4", "t5", "t6", "t7"]
        assert tracer.by_trace("t0") == []                   # fell off the ring
        assert [r.trace_id for r in tracer.recent("a", limit=2)] == ["t5", "t7"]
        assert [r.trace_id for r in tracer.recent("rooms/b")] == ["t4", "t6"]
    finally:
        sup.stop_all()
    with pytest.raises(ValueError):
        Tracer(capacity=0)


def test_tracer_writes_finished_records_to_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    tracer = Tracer(capacity=10, jsonl_path=path)
    with ScriptHarness(counter_factory({}, []), tracer=tracer, max_restarts=0,
                       park_duration=1.0) as h:
        h.play(
            Ask("r1", Add(1), expect=1, trace_id="T"),
            Crash("r1"),
            Ask("r1", Add(1), raises=ActorFailed, trace_id="T"),
            Ask("r1", Add(1), raises=ActorParked, trace_id="T"),
        )
    tracer.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [d["outcome"] for d in lines] == ["ok", "crash", "parked"]
    assert lines[1]["error"].startswith("InjectedFault")
    assert {d["to"] for d in lines} == {"test/r1"} and lines[0]["from"] == "external"
    back = load_jsonl(path)
    assert [r.outcome for r in back] == ["ok", "crash", "parked"]
    assert "crash  InjectedFault" in render_trace(back, "T")


def test_rendering_shows_the_sequence_with_timings() -> None:
    tracer = Tracer(capacity=100)
    sup = Supervisor("rooms", counter_factory({}, []), tracer=tracer)
    try:
        sup.ask("a", Forward(to="b", n=1), trace_id="T1")
        sup.ask("b", Get(), trace_id="T2")
        text = tracer.render_trace("T1")
        head, first, second = text.splitlines()
        assert head.startswith("trace T1: 2 messages over")
        assert "external → rooms/a" in first and "ask" in first and "Forward" in first
        assert first.strip().startswith("+0.000 ms") and first.rstrip().endswith("ok")
        assert "rooms/a → rooms/b" in second and "tell" in second and "run " in second
        recent = render_recent(tracer.recent("b"), "b").splitlines()
        assert recent[0].startswith("b: last 2 messages")
        assert recent[1].lstrip().startswith("T1") and recent[2].lstrip().startswith("T2")
        assert "no records" in tracer.render_trace("nope")
        assert "no recent messages" in tracer.render_recent("nobody")
    finally:
        sup.stop_all()


def test_messages_must_be_frozen_dataclasses() -> None:
    @message
    class Ok:
        x: int

    @dataclass
    class Mutable:
        x: int

    require_message(Ok(1))
    with pytest.raises(TypeError):
        require_message(Mutable(1))
    with pytest.raises(TypeError):
        require_message({"x": 1})
    with pytest.raises(Exception):
        Ok(1).x = 2  # type: ignore[misc]
    sup = Supervisor("rooms", counter_factory({}, []))
    try:
        with pytest.raises(TypeError):
            sup.tell("a", Mutable(1))
        assert sup.children() == []
    finally:
        sup.stop_all()


def test_errors_carry_their_http_mapping() -> None:
    from supervision import AskTimeout, MailboxFull, SupervisionError, SupervisorStopped

    full = MailboxFull("r", 3, retry_after_ms=120)
    assert (full.http_status, full.to_matrix_error()) == (
        429, {"errcode": "M_LIMIT_EXCEEDED", "error": "mailbox full (3 pending)",
              "retry_after_ms": 120})
    assert ActorParked("r", retry_after_ms=5).http_status == 503
    assert SupervisorStopped("r").http_status == 503
    assert AskTimeout("r", 0.5).http_status == 504
    failed = ActorFailed("r", KeyError("x"))
    assert failed.http_status == 500 and isinstance(failed.__cause__, KeyError)
    for err in (full, failed):
        assert isinstance(err, SupervisionError)


def test_render_cli_reads_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from supervision.render import main

    path = tmp_path / "t.jsonl"
    tracer = Tracer(capacity=10, jsonl_path=path)
    sup = Supervisor("rooms", counter_factory({}, []), tracer=tracer)
    try:
        sup.ask("a", Forward(to="b", n=1), trace_id="T1")
        sup.ask("b", Get(), trace_id="T2")
    finally:
        sup.stop_all()
        tracer.close()
    assert main([str(path), "--trace", "T1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("trace T1: 2 messages") and "rooms/a → rooms/b" in out
    main([str(path), "--actor", "b", "--limit", "1"])
    assert capsys.readouterr().out.startswith("b: last 1 messages")
