"""Matrix JSON bodies for the errors gunicorn answers itself, before the WSGI app sees the
request (a request line or header that is too long, malformed headers, a bad chunked
body): the spec's error model (client-server-api "Standard error response") holds for every
answer, so none of them may be gunicorn's HTML page.

gunicorn's workers write those answers through ``gunicorn.util.write_error(sock, status,
reason, mesg)``; :func:`install` replaces that one function in the worker process (it is
looked up at call time), which needs no worker class or setting in ``gunicorn.conf.py``.
"""
from __future__ import annotations

import json
from typing import Any

#: gunicorn's status → the errcode of the answer.
ERRCODES = {400: "M_BAD_JSON", 403: "M_FORBIDDEN", 413: "M_TOO_LARGE", 414: "M_TOO_LARGE",
            417: "M_UNKNOWN", 431: "M_TOO_LARGE", 500: "M_UNKNOWN", 501: "M_UNRECOGNIZED"}
MAX_MESSAGE = 200


def error_response(status: int, reason: str, mesg: str) -> bytes:
    """The whole HTTP/1.1 answer: status line, headers (CORS as on every answer) and
    ``{"errcode", "error"}``; the connection is closed after it."""
    errcode = ERRCODES.get(status, "M_UNKNOWN" if status >= 500 else "M_BAD_JSON")
    text = (mesg or reason or "Bad request")[:MAX_MESSAGE]
    body = json.dumps({"errcode": errcode, "error": text}, ensure_ascii=True).encode("ascii")
    reason_ascii = (reason or "Error").encode("ascii", "replace").decode("ascii")
    head = (f"HTTP/1.1 {int(status)} {reason_ascii}\r\n"
            "Connection: close\r\n"
            "Content-Type: application/json\r\n"
            "Access-Control-Allow-Origin: *\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("ascii") + body


def _write_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    from gunicorn import util

    util.write_nonblock(sock, error_response(status_int, reason, mesg))


_write_error.atrium = True  # type: ignore[attr-defined]


def install() -> bool:
    """Make gunicorn's own error answers Matrix JSON (idempotent); False without gunicorn."""
    try:
        from gunicorn import util
    except ImportError:  # pragma: no cover - gunicorn is a requirement
        return False
    if not getattr(util.write_error, "atrium", False):
        util.write_error = _write_error
    return True
