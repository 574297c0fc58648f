"""Fixtures for the push tests: the real app from ``create_app(parse_config(...))`` over a
fresh database on the engine under test (ATRIUM_TEST_DB), users inserted directly, a Flask
test client per user, and a push gateway of our own (gevent WSGI server on loopback) that
records what it receives and answers as scripted."""
import json
import socket
import ssl
import time
from urllib.parse import quote

import gevent
import pytest
from gevent.pywsgi import WSGIHandler, WSGIServer

from store.accounts import hash_token
from tests.apps import app_factory
from web.app import runtime_of

V = "/_matrix/client/v3"
GENEROUS = {"per_second": 1000, "burst_count": 1000}
PUSH_CONFIG = {"allow_http_gateways": True, "backoff_base": 0.05, "backoff_max": 0.4,
               "gateway_timeout": 2.0}


class Client:
    """A Flask test client acting as one user (one device)."""

    def __init__(self, app, user_id, token, device_id):
        self.app = app
        self.c = app.test_client()
        self.user_id = user_id
        self.device_id = device_id
        self.h = {"Authorization": f"Bearer {token}"}
        self._txn = 0

    def req(self, method, path, body=None, status=200, query=None):
        r = self.c.open(path, method=method, json=body, headers=self.h, query_string=query)
        assert r.status_code == status, (method, path, r.status_code, r.get_data(as_text=True))
        return r.get_json()

    def create_room(self, **body):
        return self.req("POST", f"{V}/createRoom", body)["room_id"]

    def send(self, room_id, body=None, etype="m.room.message", status=200):
        self._txn += 1
        if isinstance(body, str):
            body = {"msgtype": "m.text", "body": body}
        return self.req("PUT", f"{V}/rooms/{room_id}/send/{etype}/t{self._txn}",
                        body if body is not None else {"msgtype": "m.text", "body": "hi"},
                        status=status)["event_id"]

    def join(self, room_id):
        return self.req("POST", f"{V}/join/{room_id}")

    def invite(self, room_id, user_id):
        return self.req("POST", f"{V}/rooms/{room_id}/invite", {"user_id": user_id})

    def sync(self, since=None, filter=None):
        q = {"timeout": "0"}
        if since is not None:
            q["since"] = since
        if filter is not None:
            q["filter"] = json.dumps(filter)
        return self.req("GET", f"{V}/sync", query=q)

    def receipt(self, room_id, event_id, rtype="m.read", body=None, status=200):
        return self.req("POST", f"{V}/rooms/{room_id}/receipt/{rtype}/{quote(event_id, safe='')}",
                        body or {}, status=status)

    def rule_path(self, kind, rule_id, attr=None):
        path = f"{V}/pushrules/global/{kind}/{quote(rule_id, safe='')}"
        return f"{path}/{attr}" if attr else path


@pytest.fixture
def hs(tmp_path):
    factory = app_factory(tmp_path)
    make = next(factory)
    yield lambda **overrides: make(**{"push": dict(PUSH_CONFIG), **overrides})
    next(factory, None)  # shut the apps down, drop their schemas


def user(app, localpart, displayname=None):
    user_id = f"@{localpart}:test.local"
    token, device_id = f"tok_{localpart}", f"DEV{localpart}"

    def _add(txn):
        txn.execute("INSERT INTO users (name, creation_ts) VALUES (?, ?)", (user_id, 0))
        txn.execute("INSERT INTO devices (user_id, device_id, created_ts) VALUES (?, ?, ?)",
                    (user_id, device_id, 0))
        txn.execute("INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts)"
                    " VALUES (?, ?, ?, ?)", (hash_token(token), user_id, device_id, 0))

    runtime_of(app).db.run("add_user", _add, write=True)
    c = Client(app, user_id, token, device_id)
    if displayname:
        c.req("PUT", f"{V}/profile/{quote(user_id)}/displayname", {"displayname": displayname})
    return c


@pytest.fixture
def app(hs):
    return hs()


def push_of(app):
    return runtime_of(app).parts["push"]


def settle(app, room_id=None):
    """Wait until the evaluator has written what it was handed."""
    push = push_of(app)
    if room_id is not None:
        push.evaluator.barrier(room_id, 5.0, written=True)
    deadline = time.monotonic() + 5
    while (push.evaluator._queue or push.evaluator._catch_up or push.evaluator._unwritten) \
            and time.monotonic() < deadline:
        gevent.sleep(0.01)


def wait_for(pred, timeout=5.0, step=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        gevent.sleep(step)
    return pred()


class _NoDelayHandler(WSGIHandler):
    """pywsgi writes a response's headers and body separately: without TCP_NODELAY the body
    waits for the client's delayed ACK (~40 ms) on every kept-alive request after the
    first, which the sender's pooled connections would see as a slow gateway."""

    def handle(self):
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return super().handle()


class Gateway:
    """A push gateway on loopback: records each notify POST (with its arrival time) and
    answers with the next scripted (status, body), else what ``reply(body)`` says (None:
    no opinion), else 200 {"rejected": []}.  With ``tls`` ((certfile, keyfile)) it serves
    HTTPS."""

    def __init__(self, tls=None):
        self.received = []
        self.script = []
        self.reply = None
        self.delay = 0.0
        ssl_args = {}
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            ssl_args["ssl_context"] = ctx
        self.server = WSGIServer(("127.0.0.1", 0), self._app, log=None, error_log=None,
                                 handler_class=_NoDelayHandler, **ssl_args)
        self.server.start()
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_port}/_matrix/push/v1/notify"

    def _app(self, environ, start_response):
        n = int(environ.get("CONTENT_LENGTH") or 0)
        body = json.loads(environ["wsgi.input"].read(n) or b"{}")
        self.received.append((time.monotonic(), environ["PATH_INFO"], body))
        if self.delay:
            gevent.sleep(self.delay)
        answer = self.script.pop(0) if self.script else None
        if answer is None and self.reply is not None:
            answer = self.reply(body)
        status, reply = answer or (200, {"rejected": []})
        start_response(f"{status} X", [("Content-Type", "application/json")])
        return [json.dumps(reply).encode()]

    def notifications(self):
        return [b["notification"] for _, _, b in self.received]

    def stop(self):
        self.server.stop(timeout=1)


@pytest.fixture
def gateway():
    gw = Gateway()
    yield gw
    gw.stop()


def set_pusher(client, url, pushkey="key1", app_id="org.example.app", fmt=None, status=200,
               **extra):
    data = {"url": url}
    if fmt:
        data["format"] = fmt
    body = {"kind": "http", "app_id": app_id, "pushkey": pushkey, "app_display_name": "App",
            "device_display_name": "Phone", "lang": "en", "data": data}
    body.update(extra)
    return client.req("POST", f"{V}/pushers/set", body, status=status)
