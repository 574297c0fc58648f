"""Errors raised by the supervision runtime to callers of ``Supervisor.ask`` / ``tell``.

Every error subclasses :class:`SupervisionError` and carries the HTTP status and Matrix
errcode the web layer should answer with, so ``web/`` can map them in one place:

=====================  ======  ==================  ============================================
error                  status  errcode             meaning
=====================  ======  ==================  ============================================
``MailboxFull``        429     M_LIMIT_EXCEEDED    the actor's bounded mailbox is full
``ActorParked``        503     M_UNKNOWN           the actor kept crashing and is parked
``SupervisorStopped``  503     M_UNKNOWN           the server is shutting down
``AskTimeout``         504     M_UNKNOWN           no reply within the ask timeout
``ActorFailed``        500     M_UNKNOWN           the request crashed the actor (it restarts)
=====================  ======  ==================  ============================================

``retry_after_ms`` is set where a retry makes sense (full mailbox, parked actor).
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "ActorFailed",
    "ActorParked",
    "AskTimeout",
    "InjectedFatal",
    "InjectedFault",
    "MailboxFull",
    "SupervisionError",
    "SupervisorStopped",
]


class SupervisionError(Exception):
    """Base class of every error the supervision runtime raises to a caller."""

    http_status: ClassVar[int] = 500
    errcode: ClassVar[str] = "M_UNKNOWN"

    def __init__(self, key: str, detail: str, *, retry_after_ms: int | None = None) -> None:
        super().__init__(f"{key}: {detail}")
        self.key = key
        self.detail = detail
        self.retry_after_ms = retry_after_ms

    def to_matrix_error(self) -> dict[str, Any]:
        """The JSON body a Matrix endpoint should answer with (status in ``http_status``)."""
        body: dict[str, Any] = {"errcode": self.errcode, "error": self.detail}
        if self.retry_after_ms is not None:
            body["retry_after_ms"] = self.retry_after_ms
        return body


class MailboxFull(SupervisionError):
    """The actor already has ``max_mailbox`` messages pending; try again later."""

    http_status = 429
    errcode = "M_LIMIT_EXCEEDED"

    def __init__(self, key: str, pending: int, *, retry_after_ms: int) -> None:
        super().__init__(key, f"mailbox full ({pending} pending)", retry_after_ms=retry_after_ms)
        self.pending = pending


class ActorParked(SupervisionError):
    """The actor crashed too often within the restart window and is parked for a while."""

    http_status = 503

    def __init__(self, key: str, *, retry_after_ms: int) -> None:
        super().__init__(key, "temporarily unavailable after repeated failures",
                         retry_after_ms=retry_after_ms)


class SupervisorStopped(SupervisionError):
    """The supervisor is shutting down (or has shut down) and accepts no messages."""

    http_status = 503

    def __init__(self, key: str) -> None:
        super().__init__(key, "shutting down")


class AskTimeout(SupervisionError):
    """No reply arrived within the ask timeout. The message may still be handled later."""

    http_status = 504

    def __init__(self, key: str, timeout: float) -> None:
        super().__init__(key, f"no reply within {timeout * 1000:.0f} ms")
        self.timeout = timeout


class ActorFailed(SupervisionError):
    """The request raised an unexpected error; the actor is being restarted.

    ``cause`` (also ``__cause__``) is the original exception. Only the request that failed
    sees this error: messages queued behind it are handed to the restarted actor.
    """

    http_status = 500

    def __init__(self, key: str, cause: BaseException) -> None:
        super().__init__(key, f"internal error ({type(cause).__name__})")
        self.cause = cause
        self.__cause__ = cause


class InjectedFault(RuntimeError):
    """Raised inside an actor by ``Supervisor.inject_fault(kind="crash")``."""


class InjectedFatal(BaseException):
    """Raised inside an actor by ``inject_fault(kind="fatal")``.

    A ``BaseException`` like ``gevent.Timeout`` or ``SystemExit``: it proves that one escaping
    a handler is contained to that actor instead of making pykka stop every actor.
    """
