"""gunicorn defaults for Atrium: ``gunicorn -k gevent web:app`` from the project root.

One gevent worker per server: a room's actor must be the only writer of that room, and two
workers would mean two actors for one room (STACK-NOTES).  Scale out by routing rooms to
processes, not by raising ``workers``.  Never ``preload_app``: actors must start in the worker.

Bind: ``ATRIUM_BIND`` (``host:port``, ``[v6]:port``, a port alone = 127.0.0.1, ``unix:/path``,
comma-separated), else the config's Synapse ``listeners`` (``type: http``, and ``type:
metrics`` with ``enable_metrics: true``; each serves its ``resources``:
atrium/listener_resources.py), else 127.0.0.1:8008 (atrium/listeners.py); gunicorn's ``-b``
on the command line still wins.  TLS: with
``tls_certificate_path`` and ``tls_private_key_path`` in the Atrium config (and, when there are
listeners, one with ``tls: true``) the listeners serve HTTPS (federation needs TLS); without
them it is plain HTTP, as for ``make run``.  Before binding, ``on_starting`` checks the config
and its files (atrium/config_checks.py): a problem is one line and exit status 4.
"""
import os
import sys

_ROOT = os.path.dirname(os.path.abspath(__file__))
if _ROOT not in sys.path:  # gunicorn adds the working directory only after reading this file
    sys.path.insert(0, _ROOT)


def _raw_config():
    """The Atrium config as a mapping, read cheaply with yaml without building the app; {}
    for anything odd (no file, bad YAML, not a mapping): the app reports a bad config
    properly when it starts."""
    try:
        import yaml

        with open(os.environ.get("ATRIUM_CONFIG") or "homeserver.yaml", encoding="utf-8") as f:
            raw = yaml.safe_load(f)
        return raw if isinstance(raw, dict) else {}
    except Exception:  # noqa: BLE001 -- never a traceback from the settings file
        return {}


def _listeners(raw):
    """The config's http and metrics listeners; a metrics listener without
    ``enable_metrics: true`` is left out (not bound), as Synapse does."""
    from atrium.listeners import parse_listeners

    try:
        return parse_listeners(raw.get("listeners"), ValueError, lambda _msg: None,
                               enable_metrics=raw.get("enable_metrics") is True)
    except Exception:  # noqa: BLE001 -- the app names the bad key when it starts
        return ()


def _bind(listeners):
    from atrium.listeners import BindError, bind_addresses

    try:
        binds = bind_addresses(listeners)
    except BindError as e:  # a bad ATRIUM_BIND: one line, no traceback
        print(f"atrium: {e}", file=sys.stderr, flush=True)
        sys.exit(4)
    return binds[0] if len(binds) == 1 else binds


_LISTENERS = _listeners(_raw_config())
bind = _bind(_LISTENERS)
workers = 1
worker_class = "gevent"
worker_connections = 4000
preload_app = False
keepalive = 30          # pooled clients saw resets with gunicorn's 2 s default
timeout = 60
graceful_timeout = 20
accesslog = None
# gunicorn's own lines in Atrium's format, through the root logger (so log_config gets the
# worker's too), and an access line for the requests gunicorn answers itself; the app writes
# every other access line (atrium/access_log.py, docs/deploy.md "Logs")
logger_class = "atrium.access_log.GunicornLogger"
control_socket_disable = True  # gunicorn 27 opens ~/.gunicorn/ by default; not needed


def _tls_files():
    """(certfile, keyfile) from the Atrium config's ``tls_certificate_path`` /
    ``tls_private_key_path`` (Synapse's keys; relative paths are relative to the config
    file's folder), or None.  Read cheaply with yaml, without building the app; anything
    odd (no file, bad YAML, keys missing or unreadable) gives None, and the app reports a
    bad config properly when it starts."""
    try:
        path = os.environ.get("ATRIUM_CONFIG") or "homeserver.yaml"
        raw = _raw_config()
        if _LISTENERS and not any(lst.tls for lst in _LISTENERS):
            return None  # Synapse's listeners: HTTPS only where one asks for tls
        cert, key = raw.get("tls_certificate_path"), raw.get("tls_private_key_path")
        if not (isinstance(cert, str) and isinstance(key, str) and cert and key):
            return None
        base = os.path.dirname(os.path.abspath(path))
        cert, key = (os.path.join(base, os.path.expanduser(p)) for p in (cert, key))
        if not (os.access(cert, os.R_OK) and os.access(key, os.R_OK)):
            return None
        return cert, key
    except Exception:  # noqa: BLE001 -- never a traceback from the settings file
        return None


# HTTPS on the same listener when the config names a certificate and key; gunicorn's own
# --certfile/--keyfile on the command line still win (it applies them after this file).
_tls = _tls_files()
if _tls is not None:
    certfile, keyfile = _tls


def on_starting(server):
    """Before binding: write a default config for the addresses about to be bound, check the
    config, its files and the addresses; a problem stops here with one line."""
    from atrium.config_checks import before_binding

    before_binding(server)


def _runtime():
    web = sys.modules.get("web")
    app = getattr(web, "__dict__", {}).get("app") if web else None
    # the app failed to load: "app" is then the submodule web.app, not the Flask app
    if app is None or not hasattr(app, "extensions"):
        return None
    from web.app import runtime_of

    return runtime_of(app)


def post_worker_init(worker):
    """On SIGTERM, release waiting /sync long-polls and idle keep-alive connections at once,
    so a graceful stop lasts as long as the real work in flight (atrium/graceful.py)."""
    from atrium.graceful import install

    def begin_shutdown():
        runtime = _runtime()
        if runtime is not None:
            runtime.begin_shutdown()

    install(worker, begin_shutdown)


def worker_exit(server, worker):  # noqa: ARG001
    """Stop the room actors first, then what flushes to the store, then the store."""
    runtime = _runtime()
    if runtime is not None:
        runtime.shutdown()
