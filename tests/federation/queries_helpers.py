"""Test doubles and fixtures for the federation-query tests (test_queries*.py,
test_remote_queries*.py).

* :class:`FakeVerifier` stands in for ``federation.request_auth.RequestVerifier``: the origin
  of a request is read from the ``X-Test-Origin`` header (no header: 401), and every
  ``limited(origin)`` is recorded.  A test double, not a way to skip authentication.
* :class:`FakeClient` stands in for ``federation.client.FederationClient``: each destination
  gets a handler ``fn(method, path, query, body) -> JSON`` that may raise federation errors,
  sleep past a timeout or answer garbage; every call is recorded.
* :class:`FakeSender` records ``enqueue_durable`` calls and whether their transaction
  committed.
"""
from __future__ import annotations

import contextlib
import time
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import gevent

from atrium.errors import MatrixError
from federation.errors import RemoteHTTPError, RemoteUnreachable
from store.accounts import hash_token
from web.app import runtime_of

SERVER = "test.local"
V1 = "/_matrix/federation/v1"
C3 = "/_matrix/client/v3"
ORIGIN = "remote.example"


class FakeVerifier:
    def __init__(self) -> None:
        self.limited_origins: list[str] = []

    def authenticate(self, flask_request: Any) -> str:
        origin = flask_request.headers.get("X-Test-Origin")
        if not origin:
            raise MatrixError(401, "M_UNAUTHORIZED", "Missing X-Matrix Authorization header")
        return origin

    @contextlib.contextmanager
    def limited(self, origin: str) -> Iterator[None]:
        self.limited_origins.append(origin)
        yield


Handler = Callable[[str, str, Any, Any], Any]


class FakeClient:
    """Records ``(method, destination, path, query, body, timeout)``; answers through
    ``handlers[destination]`` (no handler: the server is unreachable)."""

    def __init__(self, handlers: dict[str, Handler] | None = None) -> None:
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.calls: list[tuple[str, str, str, Any, Any, Any]] = []

    def request(self, method: str, destination: str, path: str, *, query: Any = None,
                body: Any = None, timeout: Any = None, **kw: Any) -> Any:
        self.calls.append((method, destination, path, query, body, timeout))
        handler = self.handlers.get(destination)
        if handler is None:
            raise RemoteUnreachable(destination, "connection refused")
        return handler(method, path, query, body)

    def get_json(self, destination: str, path: str, **kw: Any) -> Any:
        return self.request("GET", destination, path, **kw)

    def post_json(self, destination: str, path: str, body: Any, **kw: Any) -> Any:
        return self.request("POST", destination, path, body=body, **kw)

    def put_json(self, destination: str, path: str, body: Any, **kw: Any) -> Any:
        return self.request("PUT", destination, path, body=body, **kw)

    def paths(self, destination: str | None = None) -> list[str]:
        return [c[2] for c in self.calls if destination is None or c[1] == destination]


def answers(value: Any) -> Handler:
    return lambda method, path, query, body: value


def fails(status: int, errcode: str = "M_UNKNOWN", error: str = "no") -> Handler:
    def fn(method: str, path: str, query: Any, body: Any) -> Any:
        raise RemoteHTTPError("x", status, errcode, error, {"errcode": errcode})
    return fn


def hangs(seconds: float = 30.0) -> Handler:
    def fn(method: str, path: str, query: Any, body: Any) -> Any:
        gevent.sleep(seconds)
        return {}
    return fn


def slow(seconds: float, value: Any) -> Handler:
    def fn(method: str, path: str, query: Any, body: Any) -> Any:
        gevent.sleep(seconds)
        return value
    return fn


class FakeSender:
    def __init__(self) -> None:
        self.queued: list[tuple[str, str, dict[str, Any]]] = []
        self.committed: list[tuple[str, str, dict[str, Any]]] = []

    def enqueue_durable(self, txn: Any, destination: str, edu_type: str,
                        content: dict[str, Any]) -> None:
        item = (destination, edu_type, content)
        self.queued.append(item)
        txn.call_after_commit(lambda: self.committed.append(item))


def fed_of(app: Any) -> Any:
    return runtime_of(app).parts["federation"]


def wire(app: Any, client: FakeClient | None = None, *, sender: Any = None,
         verifier: Any = None) -> tuple[FakeVerifier, FakeClient]:
    """Put the doubles into the app's ``Federation``; returns (verifier, client)."""
    fed = fed_of(app)
    v = verifier or FakeVerifier()
    c = client or FakeClient()
    fed.verifier = v
    fed.client = c
    if sender is not None:
        fed.sender = sender
    return v, c


def fake_fed(client: Any, *, remote_devices: Any = None, query_timeout: float = 5.0) -> Any:
    """A ``Federation``-shaped object for unit tests of RemoteQueries."""
    return SimpleNamespace(server_name=SERVER, client=client, remote_devices=remote_devices,
                           config=SimpleNamespace(federation=SimpleNamespace(
                               query_timeout=query_timeout)))


class User:
    """A local user inserted directly, with one device and a Flask test client."""

    def __init__(self, app: Any, localpart: str) -> None:
        self.app = app
        self.user_id = f"@{localpart}:{SERVER}"
        self.device_id = "DEV" + localpart.upper()
        token = f"tok_{localpart}"

        def _add(txn: Any) -> None:
            txn.execute("INSERT INTO users (name, password_hash, creation_ts) VALUES (?, ?, ?)",
                        (self.user_id, None, 0))
            txn.execute("INSERT INTO profiles (user_id, displayname) VALUES (?, ?)",
                        (self.user_id, localpart.capitalize()))
            txn.execute("INSERT INTO devices (user_id, device_id, display_name, created_ts)"
                        " VALUES (?, ?, ?, ?)",
                        (self.user_id, self.device_id, f"{localpart}'s phone", 0))
            txn.execute("INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts)"
                        " VALUES (?, ?, ?, ?)", (hash_token(token), self.user_id,
                                                 self.device_id, 0))

        runtime_of(app).db.run("add_user", _add, write=True)
        self.c = app.test_client()
        self.h = {"Authorization": f"Bearer {token}"}

    def req(self, method: str, path: str, body: Any = None, status: int = 200,
            query: Any = None) -> Any:
        r = self.c.open(path, method=method, json=body, headers=self.h, query_string=query)
        assert r.status_code == status, (method, path, r.status_code, r.get_data(as_text=True))
        return r.get_json()


def fed_req(app: Any, method: str, path: str, *, origin: str | None = ORIGIN,
            query: Any = None, body: Any = None, data: Any = None, status: int = 200) -> Any:
    """A federation request as ``origin`` (None: unsigned) through the Flask test client."""
    headers = {"X-Test-Origin": origin} if origin else {}
    kw: dict[str, Any] = {"json": body} if body is not None else {}
    if data is not None:
        kw = {"data": data, "content_type": "application/json"}
    r = app.test_client().open(path, method=method, headers=headers, query_string=query, **kw)
    assert r.status_code == status, (method, path, r.status_code, r.get_data(as_text=True))
    got = r.get_json()
    if status >= 400:
        assert isinstance(got, dict) and got["errcode"].startswith("M_") and "error" in got
    return got


@contextlib.contextmanager
def within(seconds: float) -> Iterator[None]:
    """Assert the block finishes within ``seconds`` (wall clock)."""
    t0 = time.monotonic()
    yield
    took = time.monotonic() - t0
    assert took < seconds, f"took {took:.2f}s, limit {seconds}s"
