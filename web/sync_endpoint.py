"""``GET /_matrix/client/v3/sync`` served in front of Flask.

/sync is most of a homeserver's traffic and nearly all of its long-lived requests: every
client keeps one waiting, and answers it again the moment it is answered.  This WSGI layer
(between web/app.py's path fix-ups and Flask) gives it what the Flask app gives every route —
the request id, the access token check, the spec's error bodies, the CORS and cache
headers, the access log line — without Flask's per-request objects: the request context,
werkzeug's request and query dict, the URL adapter, a session.  A parked /sync then holds
little more than gunicorn's environ and its waiter, and an answered one skips that set-up
(the handler itself is web/sync.py:get_sync).  Everything else goes on to Flask: other
paths, and the CORS pre-flight ``OPTIONS`` of this one.
"""
from __future__ import annotations

import json
import logging
import time
from http import HTTPStatus
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl

from atrium import access_log
from atrium.errors import MatrixError
from atrium.logs import request_id_var
from web.auth import authenticate, token_from
from web.errors import error_for, retry_after
from web.http import DEFAULT_HEADERS, request_id
from web.sync import get_sync

log = logging.getLogger(__name__)

PATHS = ("/_matrix/client/v3/sync", "/_matrix/client/v3/sync/")


class SyncEndpoint:
    def __init__(self, wsgi: Callable[..., Iterable[bytes]], runtime: Any) -> None:
        self.wsgi = wsgi
        self.runtime = runtime
        self.accounts = runtime.parts["accounts"]

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD")
        if environ.get("PATH_INFO") not in PATHS or method == "OPTIONS":
            return self.wsgi(environ, start_response)
        started = time.perf_counter()
        rid = request_id(environ)
        request_id_var.set(rid)
        qs = environ.get("QUERY_STRING", "")
        status, body, user_id, req = 200, None, None, None
        extra: list[tuple[str, str]] = []
        try:
            if method != "GET":
                raise MatrixError(405, "M_UNRECOGNIZED", "Unrecognized request method")
            args = _query(qs)
            req = authenticate(self.accounts,
                               token_from(environ.get("HTTP_AUTHORIZATION"),
                                          args.get("access_token")),
                               allow_guest=True)
            user_id = req.user_id
            policy = self.runtime.parts.get("user_policy")  # an admin locked the account
            if policy is not None and policy.locked and user_id in policy.locked:
                raise MatrixError(401, "M_USER_LOCKED", "This account has been locked",
                                  soft_logout=True)
            answer = get_sync(self.runtime, req, args.get)
            del args  # not kept while the /sync waits
            body = answer()
        except Exception as e:  # noqa: BLE001 - answered as every Flask route answers it
            err = error_for(e)
            status, body = err.status, err.to_json()
            after = retry_after(err)
            if after is not None:
                extra.append(("Retry-After", after))
        try:
            data = (json.dumps(body, separators=(",", ":")) + "\n").encode()
        except (TypeError, ValueError):  # a value JSON cannot hold: never a bare 500
            log.exception("unserialisable /sync answer")
            status = 500
            data = b'{"errcode":"M_UNKNOWN","error":"Internal server error"}\n'
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                   *((k, v) for _, k, v in DEFAULT_HEADERS), ("X-Request-Id", rid), *extra]
        start_response(f"{status} {_phrase(status)}", headers)
        access_log.write(environ, status, len(data), req, started)  # to the handler's end
        observe = self.runtime.parts.get("observe_sync")  # web/metrics.py, when enabled
        if observe is not None:
            observe(method, status, started, user_id)
        return [data]


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _query(qs: str) -> dict[str, str]:
    """The first value of each query parameter, decoded as werkzeug decodes them (the WSGI
    string holds the raw bytes as latin-1; they are UTF-8)."""
    raw = qs.encode("latin-1", "replace").decode("utf-8", "replace")
    out: dict[str, str] = {}
    for k, v in parse_qsl(raw, keep_blank_values=True, errors="replace"):
        out.setdefault(k, v)
    return out
