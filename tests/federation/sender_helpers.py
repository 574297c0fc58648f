"""Helpers for the outbound federation tests: a fake FederationClient that records every
transaction and can be told to fail or hang per destination, a fast config, a sender over the
test database, and polling with a bound."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable

import gevent
from gevent.event import Event

from atrium.config import ActorConfig
from atrium.federation_config import FederationConfig
from federation.sender import FederationSender
from supervision import Tracer

US = "us.test"


@dataclass
class Attempt:
    destination: str
    txn_id: str
    body: dict[str, Any]
    ok: bool = False

    @property
    def edus(self) -> list[dict[str, Any]]:
        return self.body["edus"]


@dataclass
class FakeClient:
    """``put_json`` as the FederationClient contract has it.  ``behaviour[dest]`` is one of:
    None (answer 200), an exception instance (raise it), ``"hang"`` (wait until
    ``release(dest)``), a callable ``(attempt) -> response | exception`` or a list of those
    consumed one per attempt (the last one sticks)."""

    behaviour: dict[str, Any] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    gates: dict[str, Event] = field(default_factory=dict)
    backing_off: Any = None
    in_flight: dict[str, int] = field(default_factory=dict)
    max_in_flight: dict[str, int] = field(default_factory=dict)

    def put_json(self, destination: str, path: str, body: Any, *, fail_fast: bool = True,
                 timeout: float | None = None, **_kw: Any) -> Any:
        assert fail_fast is False, "the sender must not fail fast"
        assert timeout is not None and timeout > 0
        assert path.startswith("/_matrix/federation/v1/send/")
        a = Attempt(destination, path.rsplit("/", 1)[1], body)
        self.attempts.append(a)
        self.in_flight[destination] = self.in_flight.get(destination, 0) + 1
        self.max_in_flight[destination] = max(self.max_in_flight.get(destination, 0),
                                              self.in_flight[destination])
        try:
            b = self.behaviour.get(destination)
            if isinstance(b, list):
                b = b.pop(0) if len(b) > 1 else b[0]
            if b == "hang":
                self.gates.setdefault(destination, Event()).wait()
                b = None
            if callable(b):
                b = b(a)
            if isinstance(b, BaseException):
                raise b
            a.ok = True
            return b if isinstance(b, dict) else {"pdus": {}}
        finally:
            self.in_flight[destination] -= 1

    def release(self, destination: str) -> None:
        self.behaviour.pop(destination, None)
        self.gates.setdefault(destination, Event()).set()

    def delivered(self, destination: str) -> list[Attempt]:
        return [a for a in self.attempts if a.ok and a.destination == destination]

    def delivered_edus(self, destination: str, edu_type: str | None = None
                       ) -> list[dict[str, Any]]:
        return [e for a in self.delivered(destination) for e in a.edus
                if edu_type is None or e["edu_type"] == edu_type]

    def tried(self, destination: str) -> list[Attempt]:
        return [a for a in self.attempts if a.destination == destination]


def fed_config(**over: Any) -> SimpleNamespace:
    """A config with what the sender reads; federation timings in fractions of a second."""
    actors = over.pop("actors", None) or ActorConfig(
        ask_timeout=2.0, mailbox_size=1000, idle_timeout=30.0, restart_delay=0.01,
        max_restarts=3, restart_window=5.0, park_duration=0.3)
    fed: dict[str, Any] = {"min_retry_interval": 0.05, "max_retry_interval": 0.2,
                           "request_timeout": 2.0, "connect_timeout": 0.5,
                           "ephemeral_edu_ttl": 10.0, "queue_size": 1000,
                           "max_concurrent_transactions": 4}
    fed.update(over)
    return SimpleNamespace(server_name=US, federation=FederationConfig(**fed), actors=actors)


def make_sender(db: Any, client: FakeClient | None = None, *, tracer: Tracer | None = None,
                timings: dict[str, Any] | None = None, jitter: float | None = 1.0,
                **fed: Any) -> FederationSender:
    return FederationSender(fed_config(**fed), db, client if client is not None else FakeClient(),
                            tracer or Tracer(capacity=10_000), timings=timings,
                            jitter=(lambda: jitter) if jitter is not None else None)


def to_device(i: int, sender: str = "@a:us.test") -> dict[str, Any]:
    return {"sender": sender, "type": "m.test", "message_id": f"m{i}",
            "messages": {"@b:them.test": {"DEV": {"n": i}}}}


def enqueue(sender: FederationSender, destination: str, ids: range | list[int],
            edu_type: str = "m.direct_to_device") -> None:
    """One write transaction that queues ``to_device(i)`` for each i."""
    def _t(txn: Any) -> None:
        for i in ids:
            sender.enqueue_durable(txn, destination, edu_type, to_device(i))
    sender.db.run("test_enqueue", _t, write=True)


def numbers(edus: list[dict[str, Any]]) -> list[int]:
    return [int(e["content"]["message_id"][1:]) for e in edus]


def wait_until(pred: Callable[[], Any], within: float = 3.0, what: str = "") -> Any:
    deadline = time.monotonic() + within
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what or pred}")
        gevent.sleep(0.005)


class Senders:
    """Builds senders over one database and stops every one at the end of the test."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.made: list[FederationSender] = []

    def __call__(self, client: FakeClient | None = None, **kw: Any) -> FederationSender:
        s = make_sender(self.db, client, **kw)
        self.made.append(s)
        return s

    def close(self) -> None:
        for s in self.made:
            if not s.stopped:
                s.stop()
