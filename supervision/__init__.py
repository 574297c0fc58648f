"""Actor runtime and supervision for Atrium (pykka actors as gevent greenlets).

Public surface, used by ``actors/`` and ``web/``:

* :class:`Supervisor` — directory key → actor; ``ask`` / ``tell`` / ``inject_fault`` /
  ``stop_all`` / ``children`` / ``stats``; lazy spawn, idle passivation, one-for-one restart
  with a cap and parking, bounded mailboxes.
* :class:`SupervisedActor` — base class; implement ``handle`` (and ``load``,
  ``domain_errors``).
* :func:`message`, :class:`Envelope`, :func:`trace_context`, :func:`current_trace`,
  :func:`new_trace_id` — message and trace conventions.
* :class:`Tracer`, :func:`render_trace`, :func:`render_recent` — message tracing.
* errors: :class:`SupervisionError` and its subclasses.

Requires gevent's monkey patching to have run first (actors are greenlets). See
docs/supervision.md.
"""

from supervision.actor import SupervisedActor
from supervision.errors import (
    ActorFailed,
    ActorParked,
    AskTimeout,
    InjectedFatal,
    InjectedFault,
    MailboxFull,
    SupervisionError,
    SupervisorStopped,
)
from supervision.messages import (
    Envelope,
    TraceContext,
    current_trace,
    message,
    new_trace_id,
    require_message,
    trace_context,
)
from supervision.render import render_recent, render_trace
from supervision.supervisor import FAULT_KINDS, Supervisor
from supervision.tracer import TraceRecord, Tracer, load_jsonl

__all__ = [
    "FAULT_KINDS",
    "ActorFailed",
    "ActorParked",
    "AskTimeout",
    "Envelope",
    "InjectedFatal",
    "InjectedFault",
    "MailboxFull",
    "SupervisedActor",
    "SupervisionError",
    "Supervisor",
    "SupervisorStopped",
    "TraceContext",
    "TraceRecord",
    "Tracer",
    "current_trace",
    "load_jsonl",
    "message",
    "new_trace_id",
    "render_recent",
    "render_trace",
    "require_message",
    "trace_context",
]
