"""``log_config``: a Python logging config file (Synapse's key and format) in place of the
default stderr lines.

The file is YAML holding a ``logging.config.dictConfig`` mapping (``version: 1``,
``formatters``, ``filters``, ``handlers``, ``loggers``, ``root``), as Synapse's
``log_config`` is: files, rotation (``logging.handlers.RotatingFileHandler`` /
``TimedRotatingFileHandler`` / ``WatchedFileHandler``), JSON (:class:`JsonFormatter`,
:class:`TerseJsonFormatter`).  A log config written for Synapse works unchanged:

- Synapse's classes are read as their counterparts here (``synapse.logging.TerseJsonFormatter``,
  ``…JsonFormatter``, ``synapse.logging.handlers.PeriodicallyFlushingMemoryHandler``,
  ``synapse.logging.context.LoggingContextFilter``, ``synapse.logging.formatter.LogFormatter``);
  any other ``synapse.*`` class is refused with a clear line;
- the ``synapse`` logger configures Atrium's top-level loggers (``atrium``, ``web``,
  ``actors``, ``store``, ``federation``, ``supervision``, ``protocol``, ``gunicorn``),
  ``synapse.access…`` the access log (``atrium.access``), ``synapse.storage`` the store; other
  ``synapse.*`` and ``twisted`` loggers name nothing here and are left out;
- ``%(request)s`` in a format is the request id (as ``%(request_id)s`` is);
- ``disable_existing_loggers`` is always false: Atrium's loggers exist before the file is
  read, and silencing them would lose lines.

Whatever the file says, every handler gets the request-id filter (atrium/logs.py), which
also scrubs secrets.  A file that cannot be read or applied stops the start with one line
naming the key (``ConfigError``), as any bad config value does.
"""
from __future__ import annotations

import copy
import json
import logging
import logging.config
import logging.handlers
import os
import threading
from typing import Any

from atrium.config import ConfigError
from atrium.logs import ACCESS_LOGGER, attach_filters, remove_default_handler

KEY = "log_config"
#: Atrium's top-level loggers: what Synapse's ``synapse`` logger stands for here
TOP_LOGGERS = ("atrium", "web", "actors", "store", "federation", "supervision", "protocol",
               "gunicorn")
_HERE = __name__
#: Synapse's class names → ours
CLASSES = {
    "synapse.logging.TerseJsonFormatter": f"{_HERE}.TerseJsonFormatter",
    "synapse.logging._terse_json.TerseJsonFormatter": f"{_HERE}.TerseJsonFormatter",
    "synapse.logging.JsonFormatter": f"{_HERE}.JsonFormatter",
    "synapse.logging._terse_json.JsonFormatter": f"{_HERE}.JsonFormatter",
    "synapse.logging.formatter.LogFormatter": "logging.Formatter",
    "synapse.logging.handlers.PeriodicallyFlushingMemoryHandler":
        f"{_HERE}.PeriodicallyFlushingMemoryHandler",
    "synapse.logging.context.LoggingContextFilter": "atrium.logs.RequestIdFilter",
}


def path_of(config: Any) -> str | None:
    """The ``log_config`` file named by a loaded config (relative to the config file's
    folder), or None."""
    value = (getattr(config, "raw", None) or {}).get(KEY)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"config key '{KEY}' must be the path of a log config file")
    value = os.path.expanduser(value)
    if os.path.isabs(value):
        return value
    base = os.path.dirname(os.path.abspath(getattr(config, "path", "") or "."))
    return os.path.join(base, value)


def configure_logging(config: Any) -> None:
    """Logging for a loaded config: its ``log_config`` file, else ``log_level`` on stderr."""
    from atrium.logs import setup_logging

    setup_logging(config.log_level, path_of(config))


def check(config: Any) -> None:
    """``ConfigError`` if the config's ``log_config`` file cannot be read or names what has
    no counterpart here (for ``check-config``; configures nothing)."""
    path = path_of(config)
    if path is not None:
        load(path)


def load(path: str) -> dict[str, Any]:
    """The file's dictConfig mapping, translated (see the module docstring)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"config key '{KEY}': cannot read {path}: "
                          f"{e.strerror or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"config key '{KEY}': {path} is not valid YAML{where}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config key '{KEY}': {path} must hold a mapping "
                          "(a Python logging config with 'version: 1')")
    if raw.get("version") != 1:
        raise ConfigError(f"config key '{KEY}': {path} must say 'version: 1' "
                          "(a Python logging config, as Synapse's log_config is)")
    return translate(raw, path)


def translate(raw: dict[str, Any], path: str = "<log config>") -> dict[str, Any]:
    """Synapse's names → Atrium's; ``disable_existing_loggers`` false."""
    cfg = copy.deepcopy(raw)
    cfg["disable_existing_loggers"] = False
    cfg.pop("incremental", None)
    for section in ("formatters", "filters", "handlers"):
        entries = cfg.get(section) or {}
        if not isinstance(entries, dict):
            raise ConfigError(f"config key '{KEY}': {path}: '{section}' must be a mapping")
        for name, entry in entries.items():
            if not isinstance(entry, dict):
                raise ConfigError(f"config key '{KEY}': {path}: {section}.{name} must be "
                                  "a mapping")
            for field in ("class", "()"):
                cls = entry.get(field)
                if isinstance(cls, str) and cls.startswith("synapse."):
                    if cls not in CLASSES:
                        raise ConfigError(f"config key '{KEY}': {path}: {section}.{name} "
                                          f"names {cls}, which has no counterpart in Atrium")
                    entry[field] = CLASSES[cls]
            if section == "filters" and entry.get("()") == "atrium.logs.RequestIdFilter":
                entry.pop("request", None)
    loggers = cfg.get("loggers") or {}
    if not isinstance(loggers, dict):
        raise ConfigError(f"config key '{KEY}': {path}: 'loggers' must be a mapping")
    out: dict[str, Any] = {}
    for name, entry in loggers.items():
        for target in _logger_names(str(name)):
            if target not in out or str(name) == target:   # Atrium's own name wins
                out[target] = entry
    cfg["loggers"] = out
    return cfg


def _logger_names(name: str) -> tuple[str, ...]:
    if name == "synapse":
        return TOP_LOGGERS
    if name == "synapse.access" or name.startswith("synapse.access."):
        return (ACCESS_LOGGER,)
    if name == "synapse.storage":
        return ("store",)
    if name.startswith("synapse.") or name == "twisted" or name.startswith("twisted."):
        return ()
    return (name,)


def apply(path: str) -> None:
    """Configure logging from the file at ``path`` (``ConfigError`` naming the key if it is
    bad; the previous configuration is then left as it was)."""
    cfg = load(path)
    root = logging.getLogger()
    kept = list(root.handlers)
    if cfg.get("root") is not None:
        remove_default_handler()   # the file's root handlers replace Atrium's stderr one
    try:
        logging.config.dictConfig(cfg)
    except (ValueError, TypeError, AttributeError, ImportError, KeyError, OSError) as e:
        for h in kept:
            if h not in root.handlers:
                root.addHandler(h)
        cause = e.__cause__ or e.__context__
        detail = f"{e}: {cause}" if cause is not None and str(cause) not in str(e) else str(e)
        raise ConfigError(f"config key '{KEY}': {path}: {detail}") from None
    attach_filters()


# ---------------------------------------------------------------------------- classes


#: LogRecord attributes that are not "extra" fields
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "request_id", "request", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``log`` (the message), ``namespace`` (the logger),
    ``level``, ``request`` (the request id), the record's extra fields (the access log's
    ``ip_address``, ``user_id``, ``status``, ``duration_ms``, …) and, for an exception,
    ``exc_type`` / ``exc_value`` -- the fields of Synapse's ``JsonFormatter``."""

    with_time = False

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {"log": record.getMessage(), "namespace": record.name,
                                 "level": record.levelname}
        if self.with_time:
            event["time"] = round(record.created, 2)
        event["request"] = getattr(record, "request_id", "-")
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                event[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            event["exc_type"] = record.exc_info[0].__name__
            event["exc_value"] = str(record.exc_info[1])
        return json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=str)


class TerseJsonFormatter(JsonFormatter):
    """:class:`JsonFormatter` with ``time`` (seconds since the epoch, 2 decimals), as
    Synapse's ``TerseJsonFormatter``."""

    with_time = True


class PeriodicallyFlushingMemoryHandler(logging.handlers.MemoryHandler):
    """A ``MemoryHandler`` that also flushes every ``period`` seconds, so a quiet server's
    lines are not held back (Synapse's class of the same name, which its default log config
    uses).  The flusher is a daemon thread -- a greenlet under gevent."""

    def __init__(self, capacity: int, flushLevel: int = logging.ERROR,  # noqa: N803
                 target: logging.Handler | None = None, flushOnClose: bool = True,  # noqa: N803
                 period: float = 5.0) -> None:
        super().__init__(capacity, flushLevel, target, flushOnClose)
        self._period = max(float(period), 0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._flush_periodically, daemon=True,
                                        name="log flusher")
        self._thread.start()

    def _flush_periodically(self) -> None:
        while not self._stop.wait(self._period):
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - logging must never take the server down
                pass

    def close(self) -> None:
        self._stop.set()
        super().close()
