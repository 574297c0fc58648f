"""Matrix errors shared by the web layer and the actors.

A :class:`MatrixError` is a *domain* error: the request was wrong or not allowed, nothing
inside the server is broken.  The web layer turns it into the spec's status code and a JSON
body ``{"errcode": "M_…", "error": "…"}``; actors return it to the caller and keep running.
"""
from __future__ import annotations

from typing import Any


class MatrixError(Exception):
    def __init__(self, status: int, errcode: str, error: str, **extra: Any) -> None:
        super().__init__(f"{status} {errcode}: {error}")
        self.status = status
        self.errcode = errcode
        self.error = error
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"errcode": self.errcode, "error": self.error}
        body.update(self.extra)
        return body


def forbidden(msg: str = "Forbidden") -> MatrixError:
    return MatrixError(403, "M_FORBIDDEN", msg)


def not_found(msg: str = "Not found") -> MatrixError:
    return MatrixError(404, "M_NOT_FOUND", msg)


def bad_json(msg: str) -> MatrixError:
    return MatrixError(400, "M_BAD_JSON", msg)


def not_json(msg: str = "Content not JSON.") -> MatrixError:
    return MatrixError(400, "M_NOT_JSON", msg)


def invalid_param(msg: str) -> MatrixError:
    return MatrixError(400, "M_INVALID_PARAM", msg)


def missing_param(msg: str) -> MatrixError:
    return MatrixError(400, "M_MISSING_PARAM", msg)


def too_large(msg: str = "Request too large") -> MatrixError:
    return MatrixError(413, "M_TOO_LARGE", msg)


def limit_exceeded(retry_after_ms: int) -> MatrixError:
    return MatrixError(429, "M_LIMIT_EXCEEDED", "Too many requests",
                       retry_after_ms=max(0, int(retry_after_ms)))


def unrecognized(status: int = 404, msg: str = "Unrecognized request") -> MatrixError:
    return MatrixError(status, "M_UNRECOGNIZED", msg)
