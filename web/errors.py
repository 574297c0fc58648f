"""The spec's error model for every response: status + ``{"errcode", "error"}``, never a
traceback.  Also maps the supervision runtime's failures to HTTP."""
from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from atrium.errors import MatrixError

log = logging.getLogger(__name__)


def error_response(err: MatrixError) -> Response:
    resp = jsonify(err.to_json())
    resp.status_code = err.status
    if err.status == 429 and "retry_after_ms" in err.extra:
        resp.headers["Retry-After"] = str(max(1, int(err.extra["retry_after_ms"]) // 1000))
    return resp


def _supervision_error(e: Exception) -> MatrixError | None:
    """Translate supervision errors (mailbox full, parked, timeout, crash) to Matrix errors."""
    try:
        from supervision import errors as se
    except ImportError:  # pragma: no cover - supervision not built yet
        return None
    if isinstance(e, se.MailboxFull):
        return MatrixError(429, "M_LIMIT_EXCEEDED", "Too many requests queued for this room",
                           retry_after_ms=int(getattr(e, "retry_after_ms", 1000) or 1000))
    if isinstance(e, se.ActorParked):
        return MatrixError(503, "M_UNKNOWN",
                           "This room is temporarily unavailable after repeated failures",
                           retry_after_ms=int(getattr(e, "retry_after_ms", 1000) or 1000))
    if isinstance(e, se.AskTimeout):
        return MatrixError(504, "M_UNKNOWN", "Timed out waiting for the room to answer")
    if isinstance(e, se.ActorFailed):
        return MatrixError(500, "M_UNKNOWN", "Internal error while handling the request; "
                                             "the room has been restarted, please retry")
    return None


def install_error_handlers(app: Flask) -> None:
    @app.errorhandler(MatrixError)
    def _matrix(e: MatrixError) -> Response:
        return error_response(e)

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException) -> Response:
        code = e.code or 500
        if code == 404:
            err = MatrixError(404, "M_UNRECOGNIZED", "Unrecognized request")
        elif code == 405:
            err = MatrixError(405, "M_UNRECOGNIZED", "Unrecognized request method")
        elif code == 413:
            err = MatrixError(413, "M_TOO_LARGE", "Request body too large")
        elif code == 400:
            err = MatrixError(400, "M_UNKNOWN", "Bad request")
        else:
            err = MatrixError(code, "M_UNKNOWN", e.name or "Error")
        return error_response(err)

    @app.errorhandler(Exception)
    def _any(e: Exception) -> Response:
        mapped = _supervision_error(e)
        if mapped is not None:
            if mapped.status >= 500:
                log.warning("request failed: %s: %s", type(e).__name__, e)
            return error_response(mapped)
        log.exception("unhandled error")
        return error_response(MatrixError(500, "M_UNKNOWN", "Internal server error"))
