"""Scripted-sequence test harness: a test reads as the sequence of messages it proves.

Example::

    with ScriptHarness(lambda key: Counter(), restart_delay=0.005) as h:
        h.play(
            Ask("r1", Add(2), expect=2),
            Crash("r1"),                                  # next message raises inside it
            Ask("r1", Add(1), raises=ActorFailed),
            ExpectRestart("r1", restarts=1),
            Ask("r1", Add(1), expect=1),                  # fresh incarnation, reloaded state
            ExpectActor("r1", lambda a: a.total == 1),
            ExpectChild("r1", state="running"),
            ExpectOutcomes("r1", ["ok", "crash", "ok", "ok"]),
        )

Each step is a small frozen dataclass with ``run(harness)``. A failing step raises
:class:`ScriptFailure` naming the step number and the step, followed by the recent traffic of
the key as rendered by the tracer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from supervision.actor import SupervisedActor
from supervision.errors import SupervisionError
from supervision.supervisor import FaultKind, Supervisor
from supervision.tracer import Tracer

__all__ = [
    "ANY",
    "Add",
    "Ask",
    "CounterActor",
    "Crash",
    "Do",
    "Fail",
    "Forbidden",
    "Forward",
    "Get",
    "ExpectActor",
    "ExpectChild",
    "ExpectOutcomes",
    "ExpectRestart",
    "ScriptFailure",
    "ScriptHarness",
    "Reject",
    "Sleep",
    "Step",
    "Tell",
    "Wait",
    "counter_factory",
]

ANY: Any = object()
"""``expect=ANY`` accepts any reply."""

FAST = {
    "max_mailbox": 50,
    "ask_timeout": 1.0,
    "idle_timeout": 5.0,
    "restart_delay": 0.005,
    "max_restarts": 3,
    "restart_window": 5.0,
    "park_duration": 0.2,
}
"""Default supervisor timings for tests: everything in milliseconds."""


class ScriptFailure(AssertionError):
    """A step of a script did not go as expected."""


class Step:
    """One step of a script (steps about one actor have a ``key`` field)."""

    def run(self, h: ScriptHarness) -> None:
        raise NotImplementedError


def _poll(until: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not until():
        if time.monotonic() > deadline:
            raise ScriptFailure(f"not within {within * 1000:.0f} ms: {what}")
        time.sleep(0.001)


@dataclass(frozen=True)
class Ask(Step):
    """Ask ``key``; expect the reply ``expect`` (a value, a predicate, or ANY) or ``raises``."""

    key: str
    message: Any
    expect: Any = ANY
    raises: type[BaseException] | None = None
    timeout: float | None = None
    trace_id: str | None = None

    def run(self, h: ScriptHarness) -> None:
        try:
            reply = h.supervisor.ask(self.key, self.message, timeout=self.timeout,
                                     trace_id=self.trace_id)
        except BaseException as exc:
            if self.raises is not None and isinstance(exc, self.raises):
                h.last_error = exc
                return
            raise ScriptFailure(f"unexpected {type(exc).__name__}: {exc}") from exc
        h.last_reply = reply
        if self.raises is not None:
            raise ScriptFailure(f"expected {self.raises.__name__}, got reply {reply!r}")
        if self.expect is ANY:
            return
        ok = self.expect(reply) if callable(self.expect) else reply == self.expect
        if not ok:
            raise ScriptFailure(f"reply {reply!r} does not match {self.expect!r}")


@dataclass(frozen=True)
class Tell(Step):
    """Tell ``key``; optionally expect the send itself to be refused with ``raises``."""

    key: str
    message: Any
    raises: type[SupervisionError] | None = None
    trace_id: str | None = None

    def run(self, h: ScriptHarness) -> None:
        try:
            h.supervisor.tell(self.key, self.message, trace_id=self.trace_id)
        except SupervisionError as exc:
            if self.raises is not None and isinstance(exc, self.raises):
                h.last_error = exc
                return
            raise ScriptFailure(f"tell refused: {exc!r}") from exc
        if self.raises is not None:
            raise ScriptFailure(f"expected {self.raises.__name__}, tell was accepted")


@dataclass(frozen=True)
class Crash(Step):
    """Inject a fault: ``key``'s actor misbehaves on its next ``count`` messages."""

    key: str
    count: int = 1
    kind: FaultKind = "crash"
    delay: float = 0.05

    def run(self, h: ScriptHarness) -> None:
        h.supervisor.inject_fault(self.key, self.kind, self.count, delay=self.delay)


@dataclass(frozen=True)
class ExpectRestart(Step):
    """Wait until ``key`` has been restarted ``restarts`` times and runs again."""

    key: str
    restarts: int = 1
    within: float = 1.0

    def run(self, h: ScriptHarness) -> None:
        def done() -> bool:
            row = h.supervisor.child(self.key)
            return row is not None and row["restarts"] >= self.restarts \
                and row["state"] == "running"
        _poll(done, self.within, f"{self.key} restarted {self.restarts}x and running "
                                 f"(now {h.supervisor.child(self.key)})")


@dataclass(frozen=True)
class ExpectChild(Step):
    """Wait until ``key``'s directory row has ``state`` (``"absent"`` = no entry) and the
    other given fields (e.g. ``pending=0``, ``incarnation=2``)."""

    key: str
    state: str | None = None
    within: float = 1.0
    fields: dict[str, Any] = field(default_factory=dict)

    def run(self, h: ScriptHarness) -> None:
        def done() -> bool:
            row = h.supervisor.child(self.key)
            if row is None:
                return self.state == "absent" and not self.fields
            if self.state is not None and row["state"] != self.state:
                return False
            return all(row.get(k) == v for k, v in self.fields.items())
        _poll(done, self.within, f"{self.key} state={self.state} {self.fields} "
                                 f"(now {h.supervisor.child(self.key)})")


@dataclass(frozen=True)
class ExpectActor(Step):
    """Run ``check(actor)`` inside ``key``'s actor (in mailbox order); it must be truthy."""

    key: str
    check: Callable[[Any], Any]

    def run(self, h: ScriptHarness) -> None:
        if not h.supervisor.inspect(self.key, self.check):
            raise ScriptFailure(f"actor state check failed for {self.key}")


@dataclass(frozen=True)
class ExpectOutcomes(Step):
    """The tracer's outcomes for ``key`` since the harness started (or the last
    ``ExpectOutcomes`` for it), in order. Inspection messages are left out."""

    key: str
    outcomes: list[str]
    within: float = 1.0

    def run(self, h: ScriptHarness) -> None:
        def seen() -> list[str | None]:
            return [r.outcome for r in h.tracer.recent(self.key, limit=h.tracer.capacity)
                    if r.seq > h.outcome_marks.get(self.key, 0) and r.sender != "inspect"
                    and r.key == self.key]
        _poll(lambda: seen() == self.outcomes, self.within,
              f"outcomes {self.outcomes} (seen {seen()})")
        h.outcome_marks[self.key] = max(
            (r.seq for r in h.tracer.recent(self.key, limit=h.tracer.capacity)), default=0)


@dataclass(frozen=True)
class Wait(Step):
    """Let time pass (other greenlets run)."""

    seconds: float

    def run(self, h: ScriptHarness) -> None:
        time.sleep(self.seconds)


@dataclass(frozen=True)
class Do(Step):
    """Run ``fn(harness)``: anything a script needs that has no step of its own."""

    fn: Callable[[ScriptHarness], Any]

    def run(self, h: ScriptHarness) -> None:
        self.fn(h)


class ScriptHarness:
    """A supervisor over ``factory`` with fast test timings, plus :meth:`play`.

    Use as a context manager (``stop_all`` on exit) or call :meth:`close`. Keyword arguments
    override :data:`FAST`; pass ``supervisor=`` to drive an existing one instead.
    """

    def __init__(self, factory: Callable[[str], SupervisedActor] | None = None, *,
                 name: str = "test", tracer: Tracer | None = None,
                 supervisor: Supervisor | None = None, **timings: Any) -> None:
        if supervisor is None:
            if factory is None:
                raise ValueError("give a factory or a supervisor")
            self.tracer = tracer if tracer is not None else Tracer(capacity=10_000)
            supervisor = Supervisor(name, factory, tracer=self.tracer, **{**FAST, **timings})
        else:
            self.tracer = supervisor.tracer
        self.supervisor = supervisor
        self.last_reply: Any = None
        self.last_error: BaseException | None = None
        self.outcome_marks: dict[str, int] = {}

    def play(self, *steps: Step | Iterable[Step]) -> ScriptHarness:
        """Run the steps in order; raise :class:`ScriptFailure` at the first that fails."""
        flat: list[Step] = []
        for s in steps:
            flat.extend([s] if isinstance(s, Step) else s)
        for i, step in enumerate(flat, 1):
            try:
                step.run(self)
            except ScriptFailure as exc:
                key = getattr(step, "key", None)
                traffic = self.tracer.render_recent(key, limit=20) if key else ""
                raise ScriptFailure(f"step {i} {step!r}: {exc}\n{traffic}") from exc
        return self

    def close(self) -> None:
        self.supervisor.stop_all(timeout=2.0)

    def __enter__(self) -> ScriptHarness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- a reference actor ------------------------------------------------------------------------
# Small, but shaped like a real one: state loaded lazily from a "store" (a dict), written
# through on every change, so a restarted incarnation continues from what was acknowledged.


class Forbidden(Exception):
    """A domain error of :class:`CounterActor` (think Matrix 403)."""


@dataclass(frozen=True, slots=True)
class Add:
    n: int


@dataclass(frozen=True, slots=True)
class Get:
    pass


@dataclass(frozen=True, slots=True)
class Fail:
    """Raise an unexpected error (a bug) inside the handler."""


@dataclass(frozen=True, slots=True)
class Reject:
    """Raise the domain error :class:`Forbidden`."""


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Forward:
    """Tell ``to`` an ``Add(n)`` from inside the handler (carries this trace id)."""

    to: str
    n: int


class CounterActor(SupervisedActor):
    """Keeps a running total per key in ``store``; logs lifecycle events to ``events``."""

    domain_errors = (Forbidden,)

    def __init__(self, store: dict[str, int], events: list[tuple[str, str, str]]) -> None:
        super().__init__()
        self.store = store
        self.events = events
        self.total = 0

    def load(self) -> None:
        self.total = self.store.get(self.key, 0)
        self.events.append(("load", self.key, self.actor_urn))

    def handle(self, message: Any) -> Any:
        if isinstance(message, Add):
            self.total += message.n
            self.store[self.key] = self.total
            return self.total
        if isinstance(message, Get):
            return self.total
        if isinstance(message, Fail):
            raise RuntimeError("bug")
        if isinstance(message, Reject):
            raise Forbidden("not allowed")
        if isinstance(message, Sleep):
            time.sleep(message.seconds)
            return self.total
        if isinstance(message, Forward):
            assert self.supervisor is not None
            self.supervisor.tell(message.to, Add(message.n))
            return self.total
        raise TypeError(f"unknown message {message!r}")

    def on_stop(self) -> None:
        self.events.append(("stop", self.key, self.actor_urn))


def counter_factory(store: dict[str, int], events: list[tuple[str, str, str]]
                    ) -> Callable[[str], CounterActor]:
    """A factory for :class:`CounterActor` over a shared store and event log."""
    return lambda key: CounterActor(store, events)
