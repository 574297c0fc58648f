"""gunicorn defaults for Atrium: ``gunicorn -k gevent web:app`` from the project root.

One gevent worker per server: a room's actor must be the only writer of that room, and two
workers would mean two actors for one room (STACK-NOTES).  Scale out by routing rooms to
processes, not by raising ``workers``.  Never ``preload_app``: actors must start in the worker.
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
