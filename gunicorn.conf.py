"""gunicorn defaults for Atrium: ``gunicorn -k gevent web:app`` from the project root.

One gevent worker per server: a room's actor must be the only writer of that room, and two
workers would mean two actors for one room (STACK-NOTES).  Scale out by routing rooms to
processes, not by raising ``workers``.  Never ``preload_app``: actors must start in the worker.

TLS: with ``tls_certificate_path`` and ``tls_private_key_path`` in the Atrium config the same
listener serves HTTPS (federation needs TLS); without them it is plain HTTP, as for ``make run``.
"""
import os

bind = os.environ.get("ATRIUM_BIND", "127.0.0.1:8008")
workers = 1
worker_class = "gevent"
worker_connections = 4000
preload_app = False
keepalive = 30          # pooled clients saw resets with gunicorn's 2 s default
timeout = 60
graceful_timeout = 20
accesslog = None
control_socket_disable = True  # gunicorn 27 opens ~/.gunicorn/ by default; not needed


def _tls_files():
    """(certfile, keyfile) from the Atrium config's ``tls_certificate_path`` /
    ``tls_private_key_path`` (Synapse's keys; relative paths are relative to the config
    file's folder), or None.  Read cheaply with yaml, without building the app; anything
    odd (no file, bad YAML, keys missing or unreadable) gives None, and the app reports a
    bad config properly when it starts."""
    try:
        import yaml

        path = os.environ.get("ATRIUM_CONFIG") or "homeserver.yaml"
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
        if not isinstance(raw, dict):
            return None
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


def _runtime():
    import sys

    web = sys.modules.get("web")
    app = getattr(web, "__dict__", {}).get("app") if web else None
    if app is None:
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
