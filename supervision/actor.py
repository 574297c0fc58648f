"""``SupervisedActor``: the base class of every actor a :class:`Supervisor` runs.

A subclass implements ``handle(message)`` and, optionally, ``load()`` (read its state from the
store; called lazily before the first message of each incarnation, because an exception in
pykka's ``on_start`` kills the actor without telling anyone) and ``domain_errors`` (exception
types that are answers, e.g. a Matrix 403: they go back to the caller and the actor lives on).
Anything else raised by ``load``/``handle`` — including ``BaseException`` such as
``gevent.Timeout`` or ``SystemExit`` — means the actor's memory is suspect: the caller gets
``ActorFailed``, the actor stops, and the supervisor restarts it (the new incarnation reloads
from the store). Messages queued behind the failed one go to the new incarnation.

pykka's rules are bent in two places, on purpose:

* every message reaches pykka as a ``tell`` and ``on_receive`` never raises, so pykka's own
  ask/tell failure split (see STACK-NOTES) never applies; the supervisor owns replies;
* ``_actor_loop`` (pykka 4.x's greenlet entry point) is wrapped so that any exit — clean stop,
  crash, a ``GreenletExit`` while idle — drains the inbox and reports to the supervisor, and no
  ``BaseException`` reaches pykka (which would stop every actor in the process).

Actors are started by the supervisor, not by ``Actor.start()``, so they are not put in pykka's
``ActorRegistry`` (a list; slow with many rooms, and the target of pykka's stop-everything).
"""

from __future__ import annotations

import logging
import queue
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import pykka
from greenlet import GreenletExit

from supervision.errors import ActorFailed, InjectedFatal, InjectedFault
from supervision.messages import Envelope, TraceContext, _reset_context, _set_context

if TYPE_CHECKING:
    from supervision.supervisor import Supervisor, _Child

__all__ = ["SupervisedActor"]

log = logging.getLogger("atrium.supervision")


class _Item:
    """What sits in an inbox: pykka's loop reads ``.message`` and ``.reply_to``."""

    __slots__ = ("message", "reply_to")

    def __init__(self, message: Any) -> None:
        self.message = message
        self.reply_to = None


_IDLE = object()  # the inbox produced nothing for idle_timeout
_STOP = object()  # stop cleanly after the messages already queued


@dataclass(frozen=True, slots=True)
class _Inspect:
    """Run ``fn(actor)`` inside the actor, in mailbox order (tests, admin debugging)."""

    fn: Callable[[Any], Any]


class _Inbox:
    """pykka inbox whose blocking ``get`` yields an idle tick after ``idle_timeout``."""

    __slots__ = ("_q", "idle_timeout")

    def __init__(self) -> None:
        self._q: queue.Queue[Any] = queue.Queue()  # gevent's Queue once patched
        self.idle_timeout: float | None = None

    def put(self, item: Any, /) -> None:
        self._q.put(item)

    def get(self) -> Any:
        if self.idle_timeout is None:
            return self._q.get()
        try:
            return self._q.get(True, self.idle_timeout)
        except queue.Empty:
            return _Item(_IDLE)

    def get_nowait(self) -> Any:
        return self._q.get(block=False)

    def take_if(self, pred: Callable[[Any], bool]) -> Any:
        """Remove and return the head item if ``pred(item)``; else ``None`` (group commit)."""
        q = self._q
        if hasattr(q, "peek_nowait"):  # gevent's queue: greenlets don't preempt in between
            try:
                head = q.peek_nowait()
            except queue.Empty:
                return None
            return q.get_nowait() if pred(head) else None
        with q.mutex:  # the stdlib queue (unpatched process)
            if q.queue and pred(q.queue[0]):
                item = q.queue.popleft()
                q.not_full.notify()
                return item
        return None

    def empty(self) -> bool:
        return self._q.empty()

    def qsize(self) -> int:
        return self._q.qsize()


class SupervisedActor(pykka.ThreadingActor):
    """Base class for supervised actors. Subclasses implement :meth:`handle`.

    While a message is handled, ``self.trace_id`` and ``self.sender`` describe it, and any
    ``Supervisor.tell``/``ask`` made from the handler carries the same trace id with this
    actor's :attr:`name` as sender. ``self.key`` is the directory key (e.g. a room id) and
    ``self.supervisor`` the owning supervisor.
    """

    domain_errors: ClassVar[tuple[type[Exception], ...]] = ()
    """Exception types that are answers, not failures: re-raised to the asker, no restart."""

    batch_types: ClassVar[tuple[type, ...]] = ()
    """Message types that may be handled together by :meth:`handle_batch` (group commit):
    when one is taken from the mailbox, the ones queued right behind it join it."""

    max_batch: ClassVar[int] = 64

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key: str = ""
        self.supervisor: Supervisor | None = None
        self.trace_id: str | None = None
        self.sender: str | None = None
        self.loaded = False
        self._child: _Child | None = None
        self._crash: BaseException | None = None

    @staticmethod
    def _create_actor_inbox() -> _Inbox:  # type: ignore[override]
        return _Inbox()

    # -- to override -------------------------------------------------------------------------

    def load(self) -> None:
        """Load state from the store. Runs before the first message of each incarnation.

        A domain error here is returned to the caller and ``load`` is retried on the next
        message; any other exception counts as a crash.
        """

    def handle(self, message: Any) -> Any:
        """Handle one message; the return value is the reply to an ``ask``."""
        raise NotImplementedError(f"{type(self).__name__}.handle")

    def handle_batch(self, messages: list[Any]) -> list[Any]:
        """Handle several ``batch_types`` messages at once; one result per message, where a
        result that is a domain error instance is that message's error.  Raising fails the
        whole batch (every caller gets ``ActorFailed``) and restarts the actor."""
        return [self.handle(m) for m in messages]

    # -- runtime -------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """``<supervisor>/<key>``: the sender name of messages this actor sends."""
        sup = self.supervisor
        return f"{sup.name if sup else '?'}/{self.key}"

    def _bind(self, supervisor: Supervisor, child: _Child) -> None:
        self.supervisor = supervisor
        self.key = child.key
        self._child = child

    def on_receive(self, message: Any) -> Any:
        try:
            if isinstance(message, Envelope):
                batch = self._collect_batch(message)
                if batch is None:
                    self._deliver(message)
                else:
                    self._deliver_batch(batch)
            elif message is _IDLE:
                assert self.supervisor is not None
                self.supervisor._on_idle(self)
            elif message is _STOP:
                self._shutdown()
            else:
                log.warning("%s: ignoring non-envelope message %r", self.name, message)
        except BaseException as exc:  # a bug in the runtime itself: stop this actor only
            log.exception("%s: supervision bookkeeping failed", self.name)
            self._crash = exc
            self.actor_stopped.set()
        return None

    def _deliver(self, env: Envelope) -> None:
        sup = self.supervisor
        child = self._child
        assert sup is not None and child is not None
        if env.reply is not None and env.reply.abandoned:
            sup._finish(child, env, "timeout", None, 0.0)  # the asker gave up before we began
            return
        sup.tracer.started(env.record)
        started = time.perf_counter()
        token = _set_context(TraceContext(env.trace_id, self.name))
        self.trace_id, self.sender = env.trace_id, env.sender
        crash: BaseException | None = None
        msg = env.message
        try:
            if isinstance(msg, _Inspect):
                value = self._inspect(msg)
            else:
                self._apply_fault(sup)
                if not self.loaded:
                    self.load()
                    self.loaded = True
                value = self.handle(msg)
        except self.domain_errors as exc:
            outcome, error = "domain_error", exc
            if env.reply is not None:
                env.reply.set_error(exc)
        except _InspectError as exc:
            outcome, error = "domain_error", exc.error
            if env.reply is not None:
                env.reply.set_error(exc.error)
        except BaseException as exc:  # noqa: BLE001 - state is suspect; contain it here
            outcome, error, crash = "crash", exc, exc
            if env.reply is not None:
                env.reply.set_error(ActorFailed(self.key, exc))
        else:
            outcome, error = "ok", None
            if env.reply is not None:
                env.reply.set_value(value)
        finally:
            _reset_context(token)
            self.trace_id = self.sender = None
        sup._finish(child, env, outcome, error, time.perf_counter() - started)
        if crash is not None:
            self._crash = crash
            self.actor_stopped.set()  # the loop ends; _actor_loop hands queued work back
            if isinstance(crash, (InjectedFault, InjectedFatal)):
                log.warning("%s crashed on %s: %s", self.name, type(msg).__name__, crash)
            else:
                log.error("%s crashed on %s", self.name, type(msg).__name__,
                          exc_info=(type(crash), crash, crash.__traceback__))
            try:
                self.on_failure(type(crash), crash, crash.__traceback__)
            except BaseException:  # noqa: BLE001
                log.exception("%s: on_failure raised", self.name)

    def _inspect(self, msg: _Inspect) -> Any:
        try:
            if not self.loaded:
                self.load()
                self.loaded = True
            return msg.fn(self)
        except Exception as exc:  # a failed check is not a crash of the actor
            raise _InspectError(exc) from exc

    def _apply_fault(self, sup: Supervisor) -> None:
        fault = sup._take_fault(self.key)
        if fault is None:
            return
        kind, delay = fault
        if kind == "crash":
            raise InjectedFault(f"injected fault in {self.name}")
        if kind == "fatal":
            raise InjectedFatal(f"injected fatal error in {self.name}")
        time.sleep(delay)  # "hang": a slow handler (gevent sleep once patched)

    def _collect_batch(self, first: Envelope) -> list[Envelope] | None:
        """``first`` plus the batchable envelopes queued right behind it, or ``None``."""
        if not self.batch_types or not isinstance(first.message, self.batch_types):
            return None
        sup = self.supervisor
        if sup is None or sup.pending_faults(self.key) or not self.loaded:
            return None  # injected faults and the first load keep their one-by-one semantics
        inbox = self.actor_inbox
        assert isinstance(inbox, _Inbox)
        types = self.batch_types

        def batchable(item: Any) -> bool:
            m = getattr(item, "message", None)
            return isinstance(m, Envelope) and isinstance(m.message, types)

        batch = [first]
        while len(batch) < self.max_batch:
            item = inbox.take_if(batchable)
            if item is None:
                break
            batch.append(item.message)
        return batch if len(batch) > 1 else None

    def _deliver_batch(self, batch: list[Envelope]) -> None:
        sup = self.supervisor
        child = self._child
        assert sup is not None and child is not None
        live: list[Envelope] = []
        for env in batch:
            if env.reply is not None and env.reply.abandoned:
                sup._finish(child, env, "timeout", None, 0.0)
            else:
                sup.tracer.started(env.record)
                live.append(env)
        if not live:
            return
        started = time.perf_counter()
        token = _set_context(TraceContext(live[0].trace_id, self.name))
        self.trace_id, self.sender = live[0].trace_id, live[0].sender
        crash: BaseException | None = None
        results: list[Any] = []
        try:
            results = self.handle_batch([env.message for env in live])
            if len(results) != len(live):
                raise RuntimeError("handle_batch returned the wrong number of results")
        except BaseException as exc:  # noqa: BLE001 - state is suspect; contain it here
            crash = exc
        finally:
            _reset_context(token)
            self.trace_id = self.sender = None
        elapsed = (time.perf_counter() - started) / len(live)
        for i, env in enumerate(live):
            if crash is not None:
                outcome, error = "crash", crash
                if env.reply is not None:
                    env.reply.set_error(ActorFailed(self.key, crash))
            elif isinstance(results[i], self.domain_errors or ()) and \
                    isinstance(results[i], BaseException):
                outcome, error = "domain_error", results[i]
                if env.reply is not None:
                    env.reply.set_error(results[i])
            else:
                outcome, error = "ok", None
                if env.reply is not None:
                    env.reply.set_value(results[i])
            sup._finish(child, env, outcome, error, elapsed)
        if crash is not None:
            self._crash = crash
            self.actor_stopped.set()
            log.error("%s crashed on a batch of %d", self.name, len(live),
                      exc_info=(type(crash), crash, crash.__traceback__))
            try:
                self.on_failure(type(crash), crash, crash.__traceback__)
            except BaseException:  # noqa: BLE001
                log.exception("%s: on_failure raised", self.name)

    def _shutdown(self) -> None:
        """Stop cleanly: no more messages, run ``on_stop``."""
        self.actor_stopped.set()
        try:
            self.on_stop()
        except BaseException:  # noqa: BLE001
            log.exception("%s: on_stop raised", self.name)

    def _actor_loop(self) -> None:
        """pykka's greenlet entry point, wrapped so every exit reports to the supervisor."""
        try:
            try:
                self.on_start()
            except BaseException as exc:  # noqa: BLE001
                log.exception("%s: on_start raised (use load() instead)", self.name)
                self._crash = exc
                self.actor_stopped.set()
            self._actor_loop_running()
        except GreenletExit:
            self.actor_stopped.set()  # killed while idle: a clean stop, not a crash
        except BaseException as exc:  # noqa: BLE001 - never let pykka stop every actor
            log.exception("%s: actor loop failed", self.name)
            self._crash = self._crash or exc
            self.actor_stopped.set()
        finally:
            leftovers = self._drain_inbox()
            if self.supervisor is not None:
                try:
                    self.supervisor._on_actor_exit(self, leftovers)
                except BaseException:  # noqa: BLE001
                    log.exception("%s: supervisor exit handling failed", self.name)

    def _drain_inbox(self) -> list[Envelope]:
        inbox = self.actor_inbox
        assert isinstance(inbox, _Inbox)
        out: list[Envelope] = []
        while True:
            try:
                item = inbox.get_nowait()
            except queue.Empty:
                return out
            msg = item.message
            if isinstance(msg, Envelope):
                out.append(msg)
            elif item.reply_to is not None:  # a raw pykka ask/stop sent to our ref
                if isinstance(msg, pykka.messages._ActorStop):
                    item.reply_to.set(None)
                else:
                    item.reply_to.set_exception(exc_info=(
                        pykka.ActorDeadError, pykka.ActorDeadError(f"{self} stopped"), None))


class _InspectError(Exception):
    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error

