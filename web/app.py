"""Builds the Flask app: wiring of the store, actors and API areas, done once at start-up
and passed explicitly to each area's blueprint (no global service locator)."""
from __future__ import annotations

import gc
import logging
import os
import re
import sys
from urllib.parse import quote, unquote_to_bytes
from dataclasses import dataclass, field
from typing import Any, Callable

from flask import Flask, Request, Response, g, request
from werkzeug.datastructures import ImmutableMultiDict
from werkzeug.routing import Rule

from atrium.config import Config, ConfigError, load_config
from atrium.errors import MatrixError
from atrium import access_log
from atrium.log_config import configure_logging
from atrium.logs import request_id_var, setup_logging
from web.errors import error_response, install_error_handlers
from web.http import DEFAULT_HEADERS, request_id
from web.ratelimit import Ratelimiter

log = logging.getLogger(__name__)



@dataclass
class Runtime:
    """What the app built at start-up, kept so it can be shut down in order."""

    config: Config
    db: Any
    signing_key: Any
    ratelimiter: Ratelimiter
    parts: dict[str, Any] = field(default_factory=dict)
    shutdown_hooks: list[Callable[[], None]] = field(default_factory=list)
    #: run as soon as shutdown begins, while in-flight requests may still finish (e.g. release
    #: waiting /sync long-polls so a graceful stop does not wait out their timeouts)
    drain_hooks: list[Callable[[], None]] = field(default_factory=list)

    def begin_shutdown(self) -> None:
        for hook in self.drain_hooks:
            try:
                hook()
            except Exception:
                log.exception("drain hook failed")

    def shutdown(self) -> None:
        """Stop actors first, then whatever flushes to the store, then the store."""
        for hook in reversed(self.shutdown_hooks):
            try:
                hook()
            except Exception:
                log.exception("shutdown hook failed")
        self.shutdown_hooks.clear()


#: Stands in for an encoded slash (%2F) inside one path segment while Flask routes the
#: request; turned back into "/" in the view arguments.  Event ids of room v3 contain "/".
SLASH = "\ue000"
_ENCODED_SLASH = re.compile(r"%2[fF]")


class LegacyPathMiddleware:
    """Path fix-ups before routing: keep ``%2F`` inside a segment (event ids of room v3
    contain ``/``), and serve ``/_matrix/client/r0/…`` and media ``r0`` as aliases of v3."""

    def __init__(self, wsgi: Any) -> None:
        self.wsgi = wsgi

    def __call__(self, environ: dict, start_response: Any) -> Any:
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
        if raw and ("%2f" in raw or "%2F" in raw):
            raw_path = raw.split("?", 1)[0]
            if "://" in raw_path:
                raw_path = "/" + raw_path.split("://", 1)[1].split("/", 1)[-1]
            marked = _ENCODED_SLASH.sub(quote(SLASH), raw_path)
            environ["PATH_INFO"] = unquote_to_bytes(marked).decode("latin-1")
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_matrix/client/r0/"):
            environ["PATH_INFO"] = "/_matrix/client/v3/" + path[len("/_matrix/client/r0/"):]
        elif path.startswith("/_matrix/media/r0/"):
            environ["PATH_INFO"] = "/_matrix/media/v3/" + path[len("/_matrix/media/r0/"):]
        return self.wsgi(environ, start_response)


class ReadyFirstMiddleware:
    """Let the greenlets already runnable go before a new request starts.

    A client answered by /sync sends its next poll at once, and on a kept-alive connection
    gunicorn reads it in the greenlet that has just written the answer — before the hub
    resumes the other /syncs the same event woke.  Without this the server alternated
    between an answer and a new poll, so the last of 8 woken /syncs waited for 7 polls
    too; one switch to the hub here puts the new request behind them."""

    def __init__(self, wsgi: Any) -> None:
        self.wsgi = wsgi
        self._sleep: Callable[[float], None] | None = None
        try:
            from gevent import monkey, sleep
        except ImportError:  # pragma: no cover
            return
        if monkey.is_module_patched("socket"):  # under gunicorn -k gevent
            self._sleep = sleep

    def __call__(self, environ: dict, start_response: Any) -> Any:
        if self._sleep is not None:
            self._sleep(0)
        return self.wsgi(environ, start_response)


class _QueryArgs(ImmutableMultiDict):
    """Query and form parameters whose ``get`` of a missing key returns the default without
    raising (werkzeug builds a ``BadRequestKeyError`` per miss, and /sync alone asks for
    several optional parameters on every request)."""

    def get(self, key: Any, default: Any = None, type: Any = None) -> Any:  # noqa: A002
        if key not in self:
            return default
        return super().get(key, default, type)


class AtriumRequest(Request):
    parameter_storage_class = _QueryArgs


class LazyBuilderRule(Rule):
    """A URL rule whose two URL *builders* (werkzeug generates and compiles Python code for
    each rule, for ``url_for``) are made on first use instead of when the rule is added:
    matching never needs them, Atrium never builds URLs from rules, and generating them for
    ~300 routes cost most of an app's start-up (every test builds an app)."""

    def _compile_builder(self, append_unknown: bool = True) -> Callable[..., Any]:
        name = "_build_unknown" if append_unknown else "_build"

        def build(rule: Rule, *args: Any, **kwargs: Any) -> Any:
            real = Rule._compile_builder(rule, append_unknown).__get__(rule, None)
            setattr(rule, name, real)
            return real(*args, **kwargs)

        return build


def create_app(config: Config, *, federation_transport: Any = None) -> Flask:
    from atrium.config_checks import open_store

    app = Flask("atrium")
    app.url_rule_class = LazyBuilderRule
    app.request_class = AtriumRequest
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.compact = True  # type: ignore[attr-defined]
    app.config["ATRIUM_MAX_BODY"] = config.max_request_body_size
    app.url_map.strict_slashes = False

    # folders, database, server identity and signing key: ConfigError (one line) if unusable
    db, signing_key = open_store(config)
    runtime = Runtime(config=config, db=db, signing_key=signing_key, ratelimiter=Ratelimiter())
    runtime.shutdown_hooks.append(db.close)
    app.extensions["atrium"] = runtime

    install_error_handlers(app)
    from web.gunicorn_errors import install as json_gunicorn_errors

    json_gunicorn_errors()  # errors gunicorn answers before the app sees the request

    @app.url_value_preprocessor
    def _slashes(endpoint: str | None, values: dict[str, Any] | None) -> None:
        if values:
            for k, v in values.items():
                if isinstance(v, str) and SLASH in v:
                    values[k] = v.replace(SLASH, "/")
                # an id, type or txn id with a NUL names nothing (and PostgreSQL text
                # cannot hold one): 404 before any handler passes it to the store
                if isinstance(v, str) and "\x00" in v:
                    raise MatrixError(404, "M_NOT_FOUND", "Not found")

    @app.before_request
    def _start() -> Response | None:
        access_log.start(request.environ)
        rid = request_id(request.environ)
        g.request_id = rid
        request_id_var.set(rid)
        if request.method == "OPTIONS":  # CORS pre-flight, for any path
            return Response(status=200)
        return None

    @app.after_request
    def _finish(resp: Response) -> Response:
        # one pass over the headers the handler set (werkzeug's setdefault scans them all
        # for each default: most of this hook's cost on a small JSON answer)
        headers = resp.headers
        present = {k.lower() for k in headers.keys()}
        for lower, k, v in DEFAULT_HEADERS:
            if lower not in present:
                headers.add(k, v)
        if "x-request-id" not in present and "request_id" in g:
            headers.add("X-Request-Id", g.request_id)
        # the access line of every request (atrium/access_log.py: docs/deploy.md "Logs")
        access_log.write(request.environ, resp.status_code, resp.content_length,
                         g.get("requester"))
        return resp

    from web import areas

    areas.register_all(app, runtime)
    # Bound methods, not the instances: Python runs a call of a Python function or bound
    # method inside the caller's C frame but an instance's __call__ through a C frame of its
    # own, and each parked /sync keeps a copy of the C stack below it (~0.3 KB a layer).
    app.wsgi_app = ReadyFirstMiddleware(  # type: ignore[method-assign]
        LegacyPathMiddleware(app.wsgi_app).__call__).__call__
    # each listener serves its own resources (paths elsewhere: 404 as an unknown path)
    from atrium.listener_resources import listener_resources_layer, refusal

    restrict = listener_resources_layer(
        config.listeners, config.enable_metrics, warn=log.warning,
        refuse=refusal([(k, v) for _, k, v in DEFAULT_HEADERS], request_id, access_log.write))
    if restrict is not None:
        app.wsgi_app = restrict(app.wsgi_app).__call__  # type: ignore[method-assign]
    # outermost: behind a reverse proxy (x_forwarded) every layer sees the real client
    from atrium.listeners import forwarded_for_layer

    forwarded = forwarded_for_layer(config.listeners)
    if forwarded is not None:
        app.wsgi_app = forwarded(app.wsgi_app).__call__  # type: ignore[method-assign]
    return app


def app_from_environment() -> Flask:
    """Build the app from ``ATRIUM_CONFIG`` / ``./homeserver.yaml`` (gunicorn entry point)."""
    setup_logging(os.environ.get("ATRIUM_LOG_LEVEL", "INFO"))
    try:
        config = load_config()
    except ConfigError as e:
        print(f"atrium: {e}", file=sys.stderr, flush=True)
        sys.exit(4)  # gunicorn: "App failed to load", and the arbiter halts
    try:
        configure_logging(config)  # its log_config file, else log_level (atrium/log_config.py)
        app = create_app(config)
    except ConfigError as e:
        print(f"atrium: {e}", file=sys.stderr, flush=True)
        sys.exit(4)
    tune_gc()
    return app


#: gen0 collects after this many net allocations (CPython's default: 700)
GC_GEN0_THRESHOLD = 20_000


def tune_gc() -> None:
    """Once the app is built: move everything alive now (modules, the app, compiled push
    rules, ...) into the permanent generation, so that no collection walks it again, and
    collect the young generation less often.  A full collection over the start-up heap
    took 40–90 ms here — a pause every waiting /sync and every send feels."""
    gc.collect()
    gc.freeze()
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, g1, g2)


def runtime_of(app: Flask) -> Runtime:
    return app.extensions["atrium"]


__all__ = ["create_app", "app_from_environment", "runtime_of", "error_response"]
