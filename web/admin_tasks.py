"""Background tasks of the admin API (room deletes and history purges, redacting a user's
events): each runs in a greenlet, at most one per subject (a room, a user) at a time, its
status kept in the database by the subclass so that a task a restart interrupted runs again
at the next start (:meth:`TaskRunner.resume`)."""
from __future__ import annotations

import logging
from typing import Any, Callable

import gevent

log = logging.getLogger(__name__)

#: seconds after start-up before interrupted tasks run again
RESUME_DELAY = 1.0


def resume_soon(runtime: Any, fn: Callable[[], None]) -> None:
    """Run ``fn`` (work a restart interrupted) once start-up is over, in a greenlet that
    shutdown cancels if it has not run yet."""
    resumer = gevent.spawn_later(RESUME_DELAY, fn)
    runtime.shutdown_hooks.append(lambda: resumer.kill(block=False))


class TaskRunner:
    """The greenlets of one kind of admin task; subclasses name a task's id and subject, read
    the unfinished tasks from their store and :meth:`run` one."""

    #: what the log calls these tasks
    what = "admin task"

    def __init__(self) -> None:
        self.running: dict[str, gevent.Greenlet] = {}   # task id → greenlet (tests join)
        self._busy: set[str] = set()   # subjects with a task starting or running here

    # -- what a subclass says ------------------------------------------------------------
    def task_id(self, task: Any) -> str:
        raise NotImplementedError

    def subject(self, task: Any) -> str:
        raise NotImplementedError

    def unfinished(self) -> list[Any]:
        """Every task not complete nor failed, from the store."""
        raise NotImplementedError

    def describe(self, task: Any) -> str:
        return f"{self.task_id(task)} ({self.subject(task)})"

    def run(self, task: Any) -> None:
        raise NotImplementedError

    def install(self, runtime: Any) -> None:
        """Stopped at shutdown before the rooms stop (hooks run reversed); tasks a restart
        interrupted run again shortly after start."""
        runtime.shutdown_hooks.append(self.stop)
        resume_soon(runtime, self.resume)

    # -- running -------------------------------------------------------------------------
    def _spawn(self, task: Any) -> None:
        subject, task_id = self.subject(task), self.task_id(task)
        self._busy.add(subject)
        g = gevent.spawn(self.run, task)
        self.running[task_id] = g

        def done(_g: Any) -> None:
            self.running.pop(task_id, None)
            self._busy.discard(subject)

        g.link(done)

    def resume(self) -> None:
        """Start-up: run again what a restart interrupted."""
        try:
            tasks = self.unfinished()
        except Exception:   # noqa: BLE001 - the store is closing (shutdown meanwhile)
            log.exception("%ss: could not read unfinished tasks", self.what)
            return
        for task in tasks:
            if self.task_id(task) not in self.running:
                log.info("%s %s resumed after a restart", self.what, self.describe(task))
                self._spawn(task)

    def stop(self) -> None:
        """Shutdown: interrupt the running tasks (they run again at the next start)."""
        for g in list(self.running.values()):
            g.kill(block=True, timeout=5)

    def wait(self, timeout: float = 30.0) -> None:
        """Tests: wait for the running tasks."""
        gevent.joinall(list(self.running.values()), timeout=timeout)
