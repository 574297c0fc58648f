"""``Supervisor``: a directory of keyed actors with lazy spawn, restart, parking and bounds.

One supervisor per kind of actor (``rooms``, ``users``, ``remotes``, ``media``). It keeps its
own directory ``key → child`` (a dict; pykka's registry is a list and far too slow with many
rooms) and owns every lifecycle decision:

* **lazy spawn**: the first message for a key creates its actor (``factory(key)``); senders
  that arrive while it starts are queued behind it, so a key never has two actors;
* **idle passivation**: an actor that got no message for ``idle_timeout`` is stopped
  (``on_stop`` runs); messages that arrive while it stops start a fresh one afterwards;
* **one-for-one restart**: an unexpected exception (in an ask or a tell) fails that one request
  with ``ActorFailed``; after ``restart_delay`` a new incarnation starts and takes over the
  messages queued behind the failed one. Only the actor that is still the directory's entry
  for its key is restarted (compared by identity, i.e. by URN);
* **parking**: more than ``max_restarts`` crashes within ``restart_window`` parks the key for
  ``park_duration``: callers get ``ActorParked(retry_after_ms)`` at once, nothing runs, no CPU
  burns. After the park the next message starts it again with a clean history;
* **bounded mailboxes**: at most ``max_mailbox`` messages pending per key (queued, held during
  a restart, or running); beyond that ``MailboxFull(retry_after_ms)``;
* **asks always time out** (``AskTimeout``); an ask whose caller gave up before the actor
  began on it is skipped;
* **shutdown**: ``stop_all`` lets queued messages finish, stops every child cleanly and
  refuses new messages; nothing restarts afterwards.

Everything here runs in greenlets of one thread with no preemption, so the directory needs no
lock: each decision is made between two yields. The seam for scale-out (rooms owned by other
processes) is ``_send``: a key owned elsewhere would be forwarded there instead.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import gevent

from supervision.actor import _STOP, SupervisedActor, _Inspect, _Item
from supervision.errors import (
    ActorFailed, ActorParked, AskTimeout, MailboxFull, SupervisionError, SupervisorStopped,
)
from supervision.messages import Envelope, Reply, current_trace, new_trace_id, require_message
from supervision.tracer import PARKED, REJECTED_FULL, STOPPED, TIMEOUT, Tracer

__all__ = ["FAULT_KINDS", "Supervisor"]

log = logging.getLogger("atrium.supervision")

ABSENT, STARTING, RUNNING, STOPPING, RESTARTING, PARKED_STATE = (
    "absent", "starting", "running", "stopping", "restarting", "parked")
FAULT_KINDS = ("crash", "fatal", "hang")
FaultKind = Literal["crash", "fatal", "hang"]
_COUNTER_OF_OUTCOME = {"ok": "handled", "domain_error": "domain_errors", "crash": "failed"}


@dataclass(eq=False, slots=True)
class _Child:
    """Directory entry for one key. Outlives an incarnation (restart history, held work)."""

    key: str
    state: str = ABSENT
    actor: SupervisedActor | None = None
    pending: int = 0
    held: deque[Envelope] = field(default_factory=deque)  # waiting for an actor to exist
    failures: deque[float] = field(default_factory=deque)  # monotonic crash times
    parked_until: float | None = None
    restarts: int = 0
    incarnation: int = 0
    exited: threading.Event | None = None
    timer: gevent.Greenlet | None = None
    service_s: float = 0.001  # moving average of handler time, for retry_after_ms
    last_message_at: float = 0.0


class Supervisor:
    """Runs one actor per key, created by ``factory(key)`` (an unstarted SupervisedActor)."""

    def __init__(
        self,
        name: str,
        factory: Callable[[str], SupervisedActor],
        *,
        tracer: Tracer | None = None,
        max_mailbox: int = 100,
        ask_timeout: float = 10.0,
        idle_timeout: float | None = 300.0,
        restart_delay: float = 0.1,
        max_restarts: int = 3,
        restart_window: float = 60.0,
        park_duration: float = 30.0,
    ) -> None:
        if max_mailbox < 1 or ask_timeout <= 0 or max_restarts < 0:
            raise ValueError("max_mailbox >= 1, ask_timeout > 0, max_restarts >= 0")
        self.name = name
        self.tracer = tracer if tracer is not None else Tracer(capacity=1024)
        self.max_mailbox = max_mailbox
        self.ask_timeout = ask_timeout
        self.idle_timeout = idle_timeout
        self.restart_delay = restart_delay
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.park_duration = park_duration
        self._factory = factory
        self._children: dict[str, _Child] = {}
        self._faults: dict[str, list[Any]] = {}  # key -> [kind, remaining, delay]
        self._stopping = False
        self._retired: set[str] = set()  # keys refused until reinstate() (retire())
        self._counts: Counter[str] = Counter()

    # -- public API ----------------------------------------------------------------------

    def ask(self, key: str, msg: Any, *, timeout: float | None = None,
            trace_id: str | None = None, sender: str | None = None) -> Any:
        """Send ``msg`` to ``key``'s actor and wait for the reply (at most ``timeout`` s).

        Raises the actor's domain error as is, or ``ActorFailed`` / ``AskTimeout`` /
        ``MailboxFull`` / ``ActorParked`` / ``SupervisorStopped``.
        """
        wait = self.ask_timeout if timeout is None else timeout
        if wait <= 0:
            raise ValueError("ask timeout must be > 0")
        ctx = current_trace()
        if ctx is not None and ctx.sender == f"{self.name}/{key}":
            raise RuntimeError(f"{ctx.sender} asked itself: use tell, or it deadlocks")
        env = self._send(key, msg, True, trace_id, sender)
        reply = env.reply
        assert reply is not None
        if not reply.wait(wait):
            reply.abandoned = True
            err = AskTimeout(key, wait)
            self.tracer.finished(env.record, TIMEOUT, err)
            self._counts["timeouts"] += 1
            raise err
        return reply.result()

    def tell(self, key: str, msg: Any, *, trace_id: str | None = None,
             sender: str | None = None) -> None:
        """Queue ``msg`` for ``key``'s actor without waiting.

        Raises ``MailboxFull`` / ``ActorParked`` / ``SupervisorStopped`` at once if refused.
        """
        self._send(key, msg, False, trace_id, sender)

    def inspect(self, key: str, fn: Callable[[Any], Any], *, timeout: float | None = None) -> Any:
        """Run ``fn(actor)`` inside ``key``'s actor, in mailbox order; return its result.

        For tests and debugging: it bypasses the message types. An exception from ``fn`` is
        re-raised here and does not crash the actor. Injected faults are not consumed.
        """
        return self.ask(key, _Inspect(fn), timeout=timeout, sender="inspect")

    def inject_fault(self, key: str, kind: FaultKind = "crash", count: int = 1, *,
                     delay: float = 0.05) -> None:
        """Make ``key``'s actor misbehave on each of its next ``count`` messages.

        ``crash`` raises an unexpected exception, ``fatal`` a BaseException (like
        ``gevent.Timeout``), ``hang`` sleeps ``delay`` s before handling normally. Works
        whether or not the actor is running and survives the restarts it causes; a new call
        replaces the previous plan; ``count=0`` clears it.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}")
        if count <= 0:
            self._faults.pop(key, None)
        else:
            self._faults[key] = [kind, count, delay]

    def clear_faults(self, key: str | None = None) -> None:
        """Forget the fault plan of ``key`` (or of every key)."""
        if key is None:
            self._faults.clear()
        else:
            self._faults.pop(key, None)

    def unpark(self, key: str) -> bool:
        """Lift ``key``'s park now (operator): its next message starts a fresh actor with a
        clean restart history.  ``False`` if ``key`` is not parked."""
        child = self._children.get(key)
        if child is None or child.state != PARKED_STATE:
            return False
        self._unpark(child)
        if child.pending == 0:
            self._drop(child)
        return True

    def pending_faults(self, key: str) -> int:
        """How many injected faults ``key`` still has to fire."""
        plan = self._faults.get(key)
        return plan[1] if plan else 0

    def stop_all(self, timeout: float = 5.0) -> bool:
        """Stop every child cleanly (queued messages first, then ``on_stop``); refuse new work.

        No restart happens during or after. Returns ``True`` if every actor stopped within
        ``timeout`` seconds.
        """
        self._stopping = True
        waits: list[threading.Event] = []
        for child in list(self._children.values()):
            self._cancel_timer(child)
            self._fail_held(child, STOPPED, lambda: SupervisorStopped(child.key))
            if child.actor is not None and child.exited is not None:
                if child.state == RUNNING:
                    child.actor.actor_inbox.put(_Item(_STOP))
                waits.append(child.exited)
        deadline = time.monotonic() + timeout
        stuck = sum(not ev.wait(max(0.0, deadline - time.monotonic())) for ev in waits)
        if stuck:
            log.warning("%s: %d actors did not stop within %.1fs", self.name, stuck, timeout)
        self._children.clear()
        return stuck == 0

    def retire(self, key: str, timeout: float = 10.0) -> bool:
        """Stop ``key``'s actor once the messages already queued are done, and refuse new
        ones (``SupervisorStopped``) until :meth:`reinstate`: for work that must not run
        beside the actor, nor have it restarted meanwhile (a room being purged).  ``True``
        once no actor of ``key`` runs."""
        self._retired.add(key)
        child = self._children.get(key)
        if child is None:
            return True
        self._cancel_timer(child)
        self._fail_held(child, STOPPED, lambda: SupervisorStopped(child.key))
        if child.actor is None:  # restarting, parked, or its factory still running
            self._drop(child)
            return True
        if child.state == RUNNING:
            child.actor.actor_inbox.put(_Item(_STOP))
        return child.exited is None or child.exited.wait(timeout)

    def reinstate(self, key: str) -> None:
        """Accept messages for a key :meth:`retire` closed; the next one starts an actor."""
        self._retired.discard(key)

    @property
    def stopped(self) -> bool:
        return self._stopping

    def children(self) -> list[dict[str, Any]]:
        """One row per key in the directory (admin API)."""
        now = time.monotonic()
        rows = []
        for child in self._children.values():
            row: dict[str, Any] = {
                "key": child.key,
                "state": child.state,
                "pending": child.pending,
                "incarnation": child.incarnation,
                "restarts": child.restarts,
                "recent_failures": len(child.failures),
                "urn": child.actor.actor_urn if child.actor is not None else None,
                "last_message_at": child.last_message_at,
            }
            if child.state == PARKED_STATE and child.parked_until is not None:
                row["retry_after_ms"] = max(0, math.ceil((child.parked_until - now) * 1000))
            rows.append(row)
        return rows

    def child(self, key: str) -> dict[str, Any] | None:
        """The :meth:`children` row of one key, or ``None`` if it has no entry."""
        if key not in self._children:
            return None
        return next(r for r in self.children() if r["key"] == key)

    def stats(self) -> dict[str, Any]:
        """Counters and gauges (admin API, metrics)."""
        by_state = Counter(c.state for c in self._children.values())
        out: dict[str, Any] = {
            "name": self.name,
            "children": len(self._children),
            "by_state": dict(by_state),
            "pending": sum(c.pending for c in self._children.values()),
            "faults_armed": sum(p[1] for p in self._faults.values()),
            "stopped": self._stopping,
        }
        for counter in ("spawned", "passivated", "handled", "domain_errors", "failed", "crashes",
                        "restarts", "parks", "rejected_full", "rejected_parked", "timeouts",
                        "factory_errors"):
            out[counter] = self._counts[counter]
        return out

    # -- sending ---------------------------------------------------------------------------

    def _send(self, key: str, msg: Any, is_ask: bool, trace_id: str | None,
              sender: str | None) -> Envelope:
        require_message(msg)
        ctx = current_trace()
        trace_id = trace_id or (ctx.trace_id if ctx is not None else new_trace_id())
        sender = sender or (ctx.sender if ctx is not None else "external")
        kind = "ask" if is_ask else "tell"
        if self._stopping:
            err: SupervisionError = SupervisorStopped(key)
            self.tracer.rejected(trace_id, sender, self.name, key, msg, kind, STOPPED, err)
            raise err
        if key in self._retired:
            err = SupervisorStopped(key)
            self.tracer.rejected(trace_id, sender, self.name, key, msg, kind, STOPPED, err)
            raise err
        child = self._children.get(key)
        if child is not None and child.state == PARKED_STATE:
            assert child.parked_until is not None
            remaining = child.parked_until - time.monotonic()
            if remaining > 0:
                self._counts["rejected_parked"] += 1
                err = ActorParked(key, retry_after_ms=math.ceil(remaining * 1000))
                self.tracer.rejected(trace_id, sender, self.name, key, msg, kind, PARKED, err)
                raise err
            self._unpark(child)
        if child is not None and child.pending >= self.max_mailbox:
            self._counts["rejected_full"] += 1
            err = MailboxFull(key, child.pending, retry_after_ms=self._retry_after_ms(child))
            self.tracer.rejected(trace_id, sender, self.name, key, msg, kind, REJECTED_FULL, err)
            raise err
        if child is None:
            child = self._children[key] = _Child(key)
        env = Envelope(msg, trace_id, sender, Reply() if is_ask else None,
                       self.tracer.enqueued(trace_id, sender, self.name, key, msg, kind))
        child.pending += 1
        child.last_message_at = time.time()
        if child.state == RUNNING:
            assert child.actor is not None
            child.actor.actor_inbox.put(_Item(env))
        else:
            child.held.append(env)
            if child.state == ABSENT:
                self._spawn(child)
        return env

    def _retry_after_ms(self, child: _Child) -> int:
        estimate = child.service_s * child.pending * 1000
        return int(min(10_000, max(20, estimate)))

    # -- lifecycle -------------------------------------------------------------------------

    def _spawn(self, child: _Child) -> None:
        """Create, bind and start an actor for ``child``, handing it the held messages."""
        child.state = STARTING  # senders arriving while the factory runs queue in `held`
        try:
            actor = self._factory(child.key)
            if not isinstance(actor, SupervisedActor):
                raise TypeError(f"factory returned {type(actor).__name__}, not SupervisedActor")
        except Exception as exc:  # noqa: BLE001
            self._factory_failed(child, exc)
            return
        if self._stopping or self._children.get(child.key) is not child:
            self._fail_held(child, STOPPED, lambda: SupervisorStopped(child.key))
            return
        actor._bind(self, child)
        inbox = actor.actor_inbox
        inbox.idle_timeout = self.idle_timeout  # type: ignore[attr-defined]
        while child.held:
            inbox.put(_Item(child.held.popleft()))
        child.actor = actor
        child.state = RUNNING
        child.incarnation += 1
        child.exited = threading.Event()
        self._counts["spawned"] += 1
        actor._start_actor_loop()  # yields to the new greenlet; it may already be running

    def _factory_failed(self, child: _Child, exc: Exception) -> None:
        log.error("%s: factory failed for %s", self.name, child.key, exc_info=exc)
        self._counts["factory_errors"] += 1
        self._fail_held(child, "crash", lambda: ActorFailed(child.key, exc), exc)
        child.state = ABSENT
        self._record_failure(child)
        if child.state == ABSENT and child.pending == 0 and not child.failures:
            self._drop(child)

    def _on_idle(self, actor: SupervisedActor) -> None:
        """Called in the actor after ``idle_timeout`` without a message: passivate it."""
        child = actor._child
        assert child is not None
        if (child.actor is not actor or child.state != RUNNING or child.pending
                or not actor.actor_inbox.empty()):
            return
        child.state = STOPPING  # new messages are held until on_stop has finished
        self._counts["passivated"] += 1
        actor._shutdown()

    def _on_actor_exit(self, actor: SupervisedActor, leftovers: list[Envelope]) -> None:
        """Called in the dying actor's greenlet once its loop has ended, however it ended."""
        child = actor._child
        assert child is not None
        if child.actor is not actor or self._children.get(child.key) is not child:
            # Not the directory's actor any more (shutdown cleared the directory).
            for env in leftovers:
                self._settle_refused(child, env, STOPPED, SupervisorStopped(child.key))
            return
        child.actor = None
        if child.exited is not None:
            child.exited.set()
        child.held.extendleft(reversed(leftovers))  # they were queued before the held ones
        crash = actor._crash
        if self._stopping or child.key in self._retired:
            self._fail_held(child, STOPPED, lambda: SupervisorStopped(child.key))
            self._drop(child)
            return
        if crash is None:  # passivated, or stopped by someone else
            child.state = ABSENT
            if child.held:
                self._spawn(child)
            else:
                self._drop(child)  # memory follows active keys; restart history goes too
            return
        self._counts["crashes"] += 1
        child.state = RESTARTING
        self._record_failure(child)
        if child.state == RESTARTING:
            child.timer = gevent.spawn_later(self.restart_delay, self._restart, child)

    def _record_failure(self, child: _Child) -> None:
        """Count a failure; past the cap within the window, park the key."""
        now = time.monotonic()
        child.failures.append(now)
        while child.failures and child.failures[0] < now - self.restart_window:
            child.failures.popleft()
        if len(child.failures) > self.max_restarts:
            self._park(child, now)

    def _park(self, child: _Child, now: float) -> None:
        child.state = PARKED_STATE
        child.parked_until = now + self.park_duration
        self._counts["parks"] += 1
        log.warning("%s: %s parked for %.1fs after %d failures within %.1fs", self.name,
                    child.key, self.park_duration, len(child.failures), self.restart_window)
        retry_ms = math.ceil(self.park_duration * 1000)
        self._fail_held(child, PARKED, lambda: ActorParked(child.key, retry_after_ms=retry_ms))
        self._cancel_timer(child)
        child.timer = gevent.spawn_later(self.park_duration, self._park_expired, child)

    def _park_expired(self, child: _Child) -> None:
        child.timer = None
        if self._children.get(child.key) is child and child.state == PARKED_STATE:
            self._unpark(child)
            if child.pending == 0:
                self._drop(child)

    def _unpark(self, child: _Child) -> None:
        self._cancel_timer(child)
        child.state = ABSENT
        child.parked_until = None
        child.failures.clear()

    def _restart(self, child: _Child) -> None:
        child.timer = None
        if self._stopping or self._children.get(child.key) is not child:
            return
        if child.state != RESTARTING:
            return
        child.restarts += 1
        self._counts["restarts"] += 1
        self._spawn(child)

    def _cancel_timer(self, child: _Child) -> None:
        if child.timer is not None:
            child.timer.kill(block=False)
            child.timer = None

    def _drop(self, child: _Child) -> None:
        if self._children.get(child.key) is child:
            del self._children[child.key]

    # -- settling messages -----------------------------------------------------------------

    def _finish(self, child: _Child, env: Envelope, outcome: str,
                error: BaseException | None, elapsed: float) -> None:
        """Called by the actor when it is done with ``env`` (handled or skipped)."""
        child.pending -= 1
        if elapsed:
            child.service_s = 0.8 * child.service_s + 0.2 * elapsed
        self._counts[_COUNTER_OF_OUTCOME.get(outcome, "skipped")] += 1
        self.tracer.finished(env.record, outcome, error)

    def _settle_refused(self, child: _Child, env: Envelope, outcome: str,
                        error: BaseException) -> None:
        child.pending -= 1
        if env.reply is not None:
            env.reply.set_error(error)
        self.tracer.finished(env.record, outcome, error)

    def _fail_held(self, child: _Child, outcome: str, make_error: Callable[[], BaseException],
                   trace_error: BaseException | None = None) -> None:
        while child.held:
            env = child.held.popleft()
            error = make_error()
            child.pending -= 1
            if env.reply is not None:
                env.reply.set_error(error)
            self.tracer.finished(env.record, outcome, trace_error or error)

    # -- fault injection (called by the actor) -----------------------------------------------

    def _take_fault(self, key: str) -> tuple[str, float] | None:
        plan = self._faults.get(key)
        if plan is None:
            return None
        plan[1] -= 1
        if plan[1] <= 0:
            del self._faults[key]
        return plan[0], plan[2]
