"""Logging set-up: one format for every line -- Atrium's, gunicorn's and the access log's --
each carrying the id of the request (or trace) it belongs to, with secrets scrubbed.

Every handler gets :class:`RequestIdFilter`, whatever configured it (the defaults here, a
Synapse-style ``log_config`` file through atrium/log_config.py, gunicorn's own handlers
through atrium/access_log.py's ``GunicornLogger``).  The filter sets ``request_id`` (and
``request``, the name Synapse's formats use) on each record, and rewrites what looks like a
secret in a message (``access_token=…``, ``Bearer …``, ``"password": "…"``) to
``<redacted>``: gunicorn's warnings quote request lines, an exception text may quote a URL.
"""
from __future__ import annotations

import contextvars
import logging
import re
from typing import Any

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

#: every line: time, level, logger, [request id], message (docs/deploy.md "Logs")
FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
_FORMAT = FORMAT  # the old name
#: the access log's logger (atrium/access_log.py); its lines are built without secrets
ACCESS_LOGGER = "atrium.access"

_NAMES = (r"access(?:_|%5[Ff])token|refresh(?:_|%5[Ff])token|login(?:_|%5[Ff])?token"
          r"|id(?:_|%5[Ff])access(?:_|%5[Ff])token|client(?:_|%5[Ff])secret|token|sid|session"
          r"|password|new(?:_|%5[Ff])password")
_SECRETS = re.compile(
    rf"(?i)(?P<q>(?<![A-Za-z0-9_])(?:{_NAMES})=)[^&\s\"';,]+"          # query parameters
    rf"|(?P<b>\bBearer\s+)[^\s\"',]+"                                  # Authorization
    rf"|(?P<j>[\"'](?:{_NAMES})[\"']\s*:\s*)(?:\"[^\"]*\"|'[^']*')")   # JSON / repr
REDACTED = "<redacted>"


def scrub(text: str) -> str:
    """``text`` with every value that looks like a secret replaced by ``<redacted>``."""
    return _SECRETS.sub(_replace, text)


def _replace(m: re.Match[str]) -> str:
    if m.group("j") is not None:
        return f'{m.group("j")}"{REDACTED}"'
    return (m.group("q") or m.group("b")) + REDACTED


class RequestIdFilter(logging.Filter):
    """Sets ``record.request_id`` / ``record.request`` and scrubs secrets (see the module
    docstring).  Takes and ignores keyword arguments, so a log config may name it as it
    names Synapse's ``LoggingContextFilter`` (``request: ""``)."""

    def __init__(self, name: str = "", **_ignored: Any) -> None:
        super().__init__(name)

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            rid = request_id_var.get()
            record.request_id = rid
            if not hasattr(record, "request"):
                record.request = rid
            if record.name != ACCESS_LOGGER:
                _scrub_record(record)
        return True


_plain = logging.Formatter()


def _scrub_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string: logging reports it itself
        return
    clean = scrub(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info or record.exc_text:
        text = record.exc_text or _plain.formatException(record.exc_info)  # type: ignore[arg-type]
        clean = scrub(text)
        if clean != text:
            record.exc_text = clean


def attach_filters() -> None:
    """Put :class:`RequestIdFilter` on every handler of every logger (and on the targets of
    memory handlers), unless it has one already."""
    loggers: list[Any] = [logging.getLogger()]
    loggers += [lg for lg in list(logging.Logger.manager.loggerDict.values())
                if isinstance(lg, logging.Logger)]
    for lg in loggers:
        for h in lg.handlers:
            _attach(h)
            target = getattr(h, "target", None)
            if isinstance(target, logging.Handler):
                _attach(target)


def _attach(h: logging.Handler) -> None:
    if not any(isinstance(f, RequestIdFilter) for f in h.filters):
        h.addFilter(RequestIdFilter())


def default_handler() -> logging.Handler:
    """A stderr handler in Atrium's format."""
    h = logging.StreamHandler()
    h._atrium = True  # type: ignore[attr-defined]
    h.addFilter(RequestIdFilter())
    h.setFormatter(logging.Formatter(FORMAT))
    return h


def setup_logging(level: str = "INFO", log_config: str | None = None) -> None:
    """Without ``log_config``: Atrium's format on stderr at ``level`` (idempotent).  With
    it: that Synapse-style file configures logging instead (atrium/log_config.py; raises
    ``ConfigError`` naming the key when it is bad)."""
    if log_config is not None:
        from atrium.log_config import apply

        apply(log_config)
        return
    root = logging.getLogger()
    root.setLevel(level)
    if not any(getattr(h, "_atrium", False) for h in root.handlers):
        root.addHandler(default_handler())
    attach_filters()


def remove_default_handler() -> None:
    """Take Atrium's own stderr handler off the root logger (a log config replaces it)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_atrium", False):
            root.removeHandler(h)
