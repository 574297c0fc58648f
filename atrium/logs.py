"""Logging set-up: every line carries the id of the request (or trace) it belongs to."""
from __future__ import annotations

import contextvars
import logging

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def setup_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    root.setLevel(level)
    if not any(getattr(h, "_atrium", False) for h in root.handlers):
        h = logging.StreamHandler()
        h._atrium = True  # type: ignore[attr-defined]
        h.addFilter(_RequestIdFilter())
        h.setFormatter(logging.Formatter(_FORMAT))
        root.addHandler(h)
