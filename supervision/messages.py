"""Message conventions: frozen-dataclass messages, trace ids, the envelope and reply slot.

Every message an actor receives is a frozen dataclass (pykka does not copy messages, so they
must be immutable). It travels inside an :class:`Envelope` that adds the trace id of the HTTP
request or federation transaction that caused it and the sender's name.

The trace id follows the work without being passed by hand: the web layer opens a
:func:`trace_context` per request, and while an actor handles a message the context holds that
message's trace id and the actor's name, so any ``Supervisor.tell``/``ask`` made from inside
the handler carries them. The context is a ``ContextVar``; every greenlet has its own.
"""

from __future__ import annotations

import contextvars
import dataclasses
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from supervision.tracer import TraceRecord

__all__ = [
    "Envelope",
    "Reply",
    "TraceContext",
    "current_trace",
    "message",
    "new_trace_id",
    "require_message",
    "trace_context",
]

T = TypeVar("T")


def message(cls: type[T]) -> type[T]:
    """Class decorator for actor messages: ``@message class Send: room_id: str; ...``.

    Equivalent to ``@dataclass(frozen=True, slots=True)``.
    """
    return dataclass(frozen=True, slots=True)(cls)


_checked_types: dict[type, bool] = {}


def require_message(msg: object) -> None:
    """Raise ``TypeError`` unless ``msg`` is an instance of a frozen dataclass."""
    cls = type(msg)
    ok = _checked_types.get(cls)
    if ok is None:
        params = getattr(cls, "__dataclass_params__", None)
        ok = dataclasses.is_dataclass(cls) and params is not None and bool(params.frozen)
        _checked_types[cls] = ok
    if not ok:
        raise TypeError(f"actor messages must be frozen dataclasses, got {cls.__qualname__}")


def new_trace_id() -> str:
    """A fresh random trace id (16 hex characters)."""
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class TraceContext:
    """The trace id and sender name that outgoing messages from this greenlet carry."""

    trace_id: str
    sender: str


_current: contextvars.ContextVar[TraceContext | None] = contextvars.ContextVar(
    "atrium_trace", default=None
)


def current_trace() -> TraceContext | None:
    """The trace context of the running greenlet, or ``None`` outside any."""
    return _current.get()


@contextmanager
def trace_context(trace_id: str | None = None, sender: str = "web") -> Iterator[TraceContext]:
    """Run a block with a trace context (one per HTTP request or federation transaction).

    Messages sent from the block carry ``trace_id`` (a fresh one if ``None``) and ``sender``.
    """
    ctx = TraceContext(trace_id or new_trace_id(), sender)
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def _set_context(ctx: TraceContext) -> contextvars.Token[TraceContext | None]:
    return _current.set(ctx)


def _reset_context(token: contextvars.Token[TraceContext | None]) -> None:
    _current.reset(token)


class Reply:
    """One-shot reply slot for an ``ask``: the actor fills it, the caller waits on it.

    ``abandoned`` is set by a caller that gave up (timeout); an actor that has not started on
    the message yet then skips it, so a timed-out request does not cost work nobody awaits.
    """

    __slots__ = ("_event", "_value", "_error", "abandoned")

    def __init__(self) -> None:
        self._event = threading.Event()  # a gevent Event once monkey-patched
        self._value: Any = None
        self._error: BaseException | None = None
        self.abandoned = False

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def set_value(self, value: Any) -> None:
        if not self._event.is_set():
            self._value = value
            self._event.set()

    def set_error(self, error: BaseException) -> None:
        if not self._event.is_set():
            self._error = error
            self._event.set()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; ``True`` if a value or error arrived."""
        return self._event.wait(timeout)

    def result(self) -> Any:
        """The value, or raise the error. Only valid once ``done``."""
        if self._error is not None:
            raise self._error
        return self._value


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message on its way to an actor, with its trace id, sender and reply slot.

    ``reply`` is ``None`` for a ``tell``. ``record`` is the tracer's record of this delivery.
    """

    message: Any
    trace_id: str
    sender: str
    reply: Reply | None
    record: TraceRecord

    @property
    def kind(self) -> str:
        return "tell" if self.reply is None else "ask"
