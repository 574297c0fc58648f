"""Graceful stop for the gevent worker (wired in gunicorn.conf.py's ``post_worker_init``).

gunicorn stops a gevent worker by closing its listeners and waiting up to
``graceful_timeout`` for every connection greenlet to finish.  Two kinds of connection would
make every stop last that long: /sync long-polls (up to 30 s) and idle keep-alive
connections of pooled clients (kept for ``keepalive`` = 30 s).  On SIGTERM this module:

1. runs the app's drain hooks (the notifier releases every waiting /sync, which answers at
   once with what it has);
2. ends the connections that are idle between two requests: gunicorn waits for the next
   request line inside ``worker.timeout_ctx()``, so that context marks a connection idle;
   idle ones are closed, and no connection starts waiting for another request.  Requests in
   progress finish normally (gunicorn closes their connection after the response).
"""
from __future__ import annotations

import logging
import signal
from typing import Any, Callable

import gevent

log = logging.getLogger(__name__)


class _Idle:
    """Context around one wait for a request line on a kept-alive connection."""

    def __init__(self, state: "_State") -> None:
        self.state = state
        self.timeout: Any = None
        self.greenlet: Any = None

    def __enter__(self) -> "_Idle":
        if self.state.stopping:
            raise StopIteration("server is stopping")  # gunicorn closes the connection
        self.greenlet = gevent.getcurrent()
        self.state.idle.add(self.greenlet)
        self.timeout = self.state.original()
        self.timeout.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        self.state.idle.discard(self.greenlet)
        return self.timeout.__exit__(*exc)


class _State:
    def __init__(self, original: Callable[[], Any]) -> None:
        self.original = original
        self.stopping = False
        self.idle: set[Any] = set()


def install(worker: Any, begin_shutdown: Callable[[], None]) -> None:
    state = _State(worker.timeout_ctx)
    worker.timeout_ctx = lambda: _Idle(state)

    def on_term(sig: int, frame: Any) -> None:  # noqa: ARG001
        state.stopping = True
        worker.alive = False
        try:
            begin_shutdown()
        except Exception:
            log.exception("drain hooks failed")
        for g in list(state.idle):
            kill = getattr(g, "kill", None)
            if kill is not None:
                kill(StopIteration("server is stopping"), block=False)

    signal.signal(signal.SIGTERM, on_term)
