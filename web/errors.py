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
    after = retry_after(err)
    if after is not None:
        resp.headers["Retry-After"] = after
    return resp


def retry_after(err: MatrixError) -> str | None:
    """The ``Retry-After`` header value of a 429 that says when to retry."""
    if err.status == 429 and "retry_after_ms" in err.extra:
        return str(max(1, int(err.extra["retry_after_ms"]) // 1000))
    return None


def error_for(e: Exception) -> MatrixError:
    """The Matrix error that answers an exception a handler let through, logged as it
    deserves (call it inside the ``except``, so a traceback is at hand)."""
    if isinstance(e, MatrixError):
        return e
    mapped = supervision_error(e)
    if mapped is not None:
        if mapped.status >= 500:
            log.warning("request failed: %s: %s", type(e).__name__, e)
        return mapped
    log.exception("unhandled error")
    return MatrixError(500, "M_UNKNOWN", "Internal server error")


def supervision_error(e: Exception) -> MatrixError | None:
    """Supervision failures (mailbox full, parked, timeout, crash) carry their own HTTP
    status and errcode (see supervision/errors.py); a crash's detail stays in the log."""
    try:
        from supervision.errors import ActorFailed, SupervisionError
    except ImportError:  # pragma: no cover
        return None
    if not isinstance(e, SupervisionError):
        return None
    body = e.to_matrix_error()
    extra = {k: v for k, v in body.items() if k not in ("errcode", "error")}
    if isinstance(e, ActorFailed):
        return MatrixError(e.http_status, e.errcode, "Internal error while handling the "
                           "request; it was not applied, please retry", **extra)
    return MatrixError(e.http_status, e.errcode, body["error"], **extra)


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
        return error_response(error_for(e))
