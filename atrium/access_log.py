"""The access log: one line per request, on the ``atrium.access`` logger, in the format of
every other line (atrium/logs.py ``FORMAT``; docs/deploy.md "Logs")::

    2026-12-05 10:00:00,123 INFO atrium.access [3f2a9c01b4d2] 203.0.113.7 - @alice:example.org/ABCDEFGH "GET /_matrix/client/v3/sync?since=s12&timeout=30000 HTTP/1.1" 200 2311 30004.2ms "Element/1.11"

that is: client address (``REMOTE_ADDR``, the real client's once ``x_forwarded`` has set
it), ``-``, the user and device (``-`` before authentication; a federation request's
origin server), the request as sent with secrets replaced by ``<redacted>``, the status,
the body's size in bytes (``-`` when streamed), the time from the request's start to its
answer (for a long-poll, to the end of the handler) and the user agent.  The request id in
brackets is the one answered in ``X-Request-Id``.  Each field is also on the record (for
JSON logs): ``ip_address``, ``user_id``, ``device_id``, ``method``, ``uri``, ``protocol``,
``status``, ``bytes``, ``duration_ms``, ``user_agent``.

Written by the Flask app's ``_finish`` hook (web/app.py), by the /sync endpoint in front of
Flask (web/sync_endpoint.py), and by :class:`GunicornLogger` for the requests gunicorn
answers itself (a bad request line, headers too large) -- each request once.  Secrets never
reach it: the ``Authorization`` header and bodies are not logged; the query parameters that
carry one (:data:`SECRET_PARAMS`) and the registration token in an admin path are redacted.
"""
from __future__ import annotations

import logging
import os
import re
import time
from typing import Any
from urllib.parse import quote, unquote_plus

from gunicorn import glogging

from atrium.logs import ACCESS_LOGGER, FORMAT, REDACTED, RequestIdFilter, request_id_var, setup_logging

log = logging.getLogger(ACCESS_LOGGER)

#: environ keys: when the request started (perf_counter), and that its line is written
STARTED = "atrium.access_started"
LOGGED = "atrium.access_logged"
#: environ key a federation route may set to its authenticated origin server
ORIGIN = "atrium.origin"
#: query parameters whose value is a secret: access and refresh tokens, login tokens, the
#: registration token of ``…/registration_token/validity``, the ``sid`` / ``client_secret``
#: / ``token`` of e-mail validation links, UIA sessions, passwords
SECRET_PARAMS = frozenset({
    "access_token", "refresh_token", "login_token", "logintoken", "token", "id_access_token",
    "client_secret", "sid", "session", "password", "new_password",
})
_SECRET_PATH = re.compile(r"(/registration_tokens/)(?!new(?:/|$))[^/?]+")
_SEPARATORS = re.compile(r"([&;])")
_UNSAFE = re.compile(r'["\\\x00-\x1f\x7f]')
MAX_URI = 4096
MAX_AGENT = 512


def start(environ: dict[str, Any]) -> None:
    """Mark the start of a request (the Flask app's first ``before_request``)."""
    environ[STARTED] = time.perf_counter()


def write(environ: dict[str, Any], status: int, nbytes: int | None,
          requester: Any = None, started: float | None = None,
          duration_ms: float | None = None) -> None:
    """The access line of one request (once: later calls for the same request do nothing).
    ``requester`` has ``user_id`` / ``device_id`` (web/auth.py's Requester) or is None."""
    if environ.get(LOGGED):
        return
    environ[LOGGED] = True
    if not log.isEnabledFor(logging.INFO):
        return
    if duration_ms is None:
        if started is None:
            started = environ.get(STARTED)
        duration_ms = (time.perf_counter() - started) * 1000 if started is not None else 0.0
    user_id = device_id = None
    if requester is not None:
        user_id, device_id = requester.user_id, requester.device_id
        who = f"{user_id}/{device_id}" if device_id else user_id
    else:
        who = environ.get(ORIGIN) or "-"
    ip = environ.get("REMOTE_ADDR") or "-"
    method = environ.get("REQUEST_METHOD") or "-"
    uri = loggable_uri(environ)
    protocol = environ.get("SERVER_PROTOCOL") or "-"
    agent = _escape(environ.get("HTTP_USER_AGENT") or "-", MAX_AGENT)
    size = "-" if nbytes is None else str(nbytes)
    log.info(f'{ip} - {_escape(who, 512)} "{_escape(method, 32)} {uri} '
             f'{_escape(protocol, 16)}" {status} {size} {duration_ms:.1f}ms "{agent}"',
             extra={"ip_address": ip, "user_id": user_id, "device_id": device_id,
                    "method": method, "uri": uri, "protocol": protocol, "status": status,
                    "bytes": nbytes, "duration_ms": round(duration_ms, 3),
                    "user_agent": agent})


def loggable_uri(environ: dict[str, Any]) -> str:
    """The request's path and query as the client sent them, secrets redacted, quotes and
    control characters escaped."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if not raw:
        qs = environ.get("QUERY_STRING") or ""
        raw = quote(environ.get("PATH_INFO") or "/", safe="/:@!$&'()*+,;=%~") + (
            "?" + qs if qs else "")
    path, sep, query = raw.partition("?")
    if "://" in path:   # absolute form: drop the scheme and host
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    if "registration_tokens/" in path:
        path = _SECRET_PATH.sub(rf"\1{REDACTED}", path)
    if query:
        query = redact_query(query)
    return _escape(path + sep + query, MAX_URI)


def redact_query(query: str) -> str:
    """A raw query string with the value of each :data:`SECRET_PARAMS` parameter replaced
    (names compared decoded and case-insensitively: ``access%5Ftoken`` is caught too)."""
    parts = _SEPARATORS.split(query)
    for i in range(0, len(parts), 2):
        name, eq, _ = parts[i].partition("=")
        if eq and _param_name(name) in SECRET_PARAMS:
            parts[i] = f"{name}={REDACTED}"
    return "".join(parts)


def _param_name(name: str) -> str:
    if "%" in name or "+" in name:
        name = unquote_plus(name, errors="replace")
    return name.strip().lower()


def _escape(text: str, limit: int) -> str:
    if len(text) > limit:
        text = text[:limit] + "..."
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(lambda m: "\\" + m.group() if m.group() in '"\\'
                       else f"\\x{ord(m.group()):02x}", text)


# ------------------------------------------------------------------------------ gunicorn


class GunicornLogger(glogging.Logger):
    """gunicorn's logger (``logger_class`` in gunicorn.conf.py): its own lines (arbiter
    start, worker boot and exit, timeouts, errors) in Atrium's format through the root
    logger -- so a ``log_config`` file gets the worker's too -- and an access line in
    Atrium's format for each request the app did not log (the ones gunicorn answers
    itself).  With gunicorn's own ``--error-logfile``, ``--log-config…`` or ``--log-syslog``
    its handlers stay, in Atrium's format."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        custom = (cfg.errorlog not in (None, "-") or cfg.logconfig or cfg.logconfig_dict
                  or getattr(cfg, "logconfig_json", None) or cfg.syslog)
        if custom:
            fmt = logging.Formatter(FORMAT)
            for h in self.error_log.handlers:
                h.setFormatter(fmt)
                if not any(isinstance(f, RequestIdFilter) for f in h.filters):
                    h.addFilter(RequestIdFilter())
            return
        for h in list(self.error_log.handlers):
            if getattr(h, "_gunicorn", False):
                self.error_log.removeHandler(h)
        self.error_log.propagate = True
        setup_logging(os.environ.get("ATRIUM_LOG_LEVEL", "INFO").upper())

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if environ.get(LOGGED):
            return
        try:
            status = resp.status
            status = int(str(status).split(None, 1)[0]) if status else 0
            sent = getattr(resp, "sent", None) or None  # not gunicorn's error text's length
            env = environ
            if "HTTP_USER_AGENT" not in env:
                agent = next((v for k, v in getattr(req, "headers", ()) or ()
                              if str(k).upper() == "USER-AGENT"), None)
                if agent is not None:
                    env = dict(environ, HTTP_USER_AGENT=agent)
            token = request_id_var.set(os.urandom(6).hex())
            try:
                write(env, status, sent, duration_ms=request_time.total_seconds() * 1000)
            finally:
                request_id_var.reset(token)
        except Exception:  # noqa: BLE001 - a log line must never fail a request
            self.error_log.debug("access line failed", exc_info=True)
