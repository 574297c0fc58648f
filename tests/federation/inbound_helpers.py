"""Helpers for the inbound-transaction and EDU tests: the real app (tests/apps.py) with
TEST DOUBLES in place of the parts other engineers build — a verifier that takes the origin
from an ``X-Test-Origin`` header instead of checking an X-Matrix signature, a federation
client that answers from a dict, and a sender that records durable EDUs — plus local users
inserted directly and a few requests."""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import pytest

from atrium.errors import MatrixError
from store.accounts import hash_token
from tests.apps import app_factory
from web.app import runtime_of

V = "/_matrix/client/v3"
SERVER = "test.local"
REMOTE = "remote.test"


class FakeVerifier:
    """TEST DOUBLE for federation.request_auth.RequestVerifier: the origin is whatever the
    ``X-Test-Origin`` header says; no header → 401 (as an unsigned request would get)."""

    def __init__(self) -> None:
        self.limited_origins: list[str] = []

    def authenticate(self, req: Any) -> str:
        origin = req.headers.get("X-Test-Origin")
        if not origin:
            raise MatrixError(401, "M_UNAUTHORIZED", "Missing X-Matrix authorization")
        return origin

    @contextlib.contextmanager
    def limited(self, origin: str) -> Any:
        self.limited_origins.append(origin)
        yield


class FakeClient:
    """TEST DOUBLE for federation.client.FederationClient: ``get_json`` answers from
    ``answers[path]`` (a value, or a callable of (destination, path)) and records calls."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def get_json(self, destination: str, path: str, **kw: Any) -> Any:
        self.calls.append((destination, path, kw))
        answer = self.answers.get(path)
        if answer is None:
            raise RuntimeError(f"no answer for {path}")
        return answer(destination, path) if callable(answer) else answer


class FakeSender:
    """TEST DOUBLE for federation.sender.FederationSender: records durable EDUs (the
    transaction they were queued in commits with the caller's write)."""

    def __init__(self) -> None:
        self.durable: list[tuple[str, str, dict[str, Any]]] = []

    def enqueue_durable(self, txn: Any, destination: str, edu_type: str,
                        content: dict[str, Any]) -> None:
        assert txn is not None
        self.durable.append((destination, edu_type, content))

    def wake(self, destination: str) -> None:
        pass

    def backing_off(self, destination: str) -> None:
        return None


class Server:
    """One real app with the federation test doubles installed."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.runtime = runtime_of(app)
        self.db = self.runtime.db
        self.fed = self.runtime.parts["federation"]
        self.real_verifier = self.fed.verifier  # federation/request_auth.py, when built
        self.verifier = FakeVerifier()
        self.client = FakeClient()
        self.sender = FakeSender()
        self.fed.verifier = self.verifier
        self.fed.client = self.client
        self.fed.sender = self.sender
        self.http = app.test_client()
        self._txn = 0

    # -- federation -----------------------------------------------------------------------
    def put_txn(self, txn_id: str, body: Any, origin: str | None = REMOTE) -> Any:
        headers = {"X-Test-Origin": origin} if origin else {}
        return self.http.put(f"/_matrix/federation/v1/send/{txn_id}", json=body,
                             headers=headers)

    def send_edus(self, edus: list[dict[str, Any]], origin: str = REMOTE,
                  txn_id: str | None = None) -> dict[str, Any]:
        self._txn += 1
        r = self.put_txn(txn_id or f"t{self._txn}", txn(origin, edus=edus), origin)
        assert r.status_code == 200, r.get_data(as_text=True)
        return r.get_json()

    @property
    def edus(self) -> Any:
        return self.fed.edus

    @property
    def remote_devices(self) -> Any:
        return self.fed.remote_devices

    @property
    def out(self) -> Any:
        return self.fed.extras["device_lists_out"]

    # -- local data -----------------------------------------------------------------------
    def add_user(self, localpart: str, devices: tuple[str, ...] = ("A",)) -> "Local":
        user_id = f"@{localpart}:{SERVER}"

        def _add(t: Any) -> None:
            t.execute("INSERT INTO users (name, password_hash, creation_ts) VALUES (?, ?, ?)",
                      (user_id, "x", 0))
            for d in devices:
                t.execute("INSERT INTO devices (user_id, device_id, display_name, created_ts)"
                          " VALUES (?, ?, ?, ?)", (user_id, d, f"{localpart} {d}", 0))
                t.execute("INSERT INTO access_tokens (token_hash, user_id, device_id,"
                          " created_ts) VALUES (?, ?, ?, ?)",
                          (hash_token(f"tok_{localpart}_{d}"), user_id, d, 0))

        self.db.run("add_user", _add, write=True)
        return Local(self, user_id, {d: f"tok_{localpart}_{d}" for d in devices})

    def join_remote(self, room_id: str, user_id: str) -> None:
        """Put a remote user's join into a room's current state, as Federation II will."""
        self.db.run("join_remote", lambda t: t.execute(
            "INSERT INTO current_state (room_id, type, state_key, event_id, membership)"
            " VALUES (?, 'm.room.member', ?, ?, 'join')",
            (room_id, user_id, f"$join_{user_id}")), write=True)

    def inbox(self, user_id: str) -> list[tuple]:
        return self.db.run("inbox", lambda t: t.query(
            "SELECT device_id, sender, type, content FROM device_inbox WHERE user_id = ?"
            " ORDER BY stream_id", (user_id,)))

    def stream_users(self) -> list[str]:
        return [r[0] for r in self.db.run("dl_rows", lambda t: t.query(
            "SELECT user_id FROM device_lists_stream ORDER BY stream_id"))]


class Local:
    """A local user's devices, each with its access token."""

    def __init__(self, server: Server, user_id: str, tokens: dict[str, str]) -> None:
        self.server = server
        self.user_id = user_id
        self.tokens = tokens

    def req(self, method: str, path: str, body: Any = None, device: str = "A",
            query: dict[str, str] | None = None, status: int = 200) -> Any:
        r = self.server.http.open(path, method=method, json=body, query_string=query,
                                  headers={"Authorization": f"Bearer {self.tokens[device]}"})
        assert r.status_code == status, (path, r.status_code, r.get_data(as_text=True))
        return r.get_json()

    def sync(self, since: str | None = None, device: str = "A", timeout: int = 0) -> Any:
        q = {"timeout": str(timeout)}
        if since is not None:
            q["since"] = since
        return self.req("GET", f"{V}/sync", device=device, query=q)

    def create_room(self) -> str:
        return self.req("POST", f"{V}/createRoom", {})["room_id"]


def txn(origin: str, pdus: list[Any] | None = None, edus: list[Any] | None = None) -> dict:
    return {"origin": origin, "origin_server_ts": 1_700_000_000_000,
            "pdus": pdus or [], "edus": edus or []}


def to_device_edu(sender: str, message_id: str, messages: dict[str, Any],
                  type_: str = "m.room_key_request") -> dict[str, Any]:
    return {"edu_type": "m.direct_to_device",
            "content": {"sender": sender, "type": type_, "message_id": message_id,
                        "messages": messages}}


def device_keys(user_id: str, device_id: str, tag: str = "") -> dict[str, Any]:
    return {"user_id": user_id, "device_id": device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": {f"curve25519:{device_id}": "curve" + tag,
                     f"ed25519:{device_id}": "ed" + tag},
            "signatures": {user_id: {f"ed25519:{device_id}": "sig" + tag}}}


def list_update(user_id: str, device_id: str, stream_id: Any, prev: list[Any] | None,
                **extra: Any) -> dict[str, Any]:
    content = {"user_id": user_id, "device_id": device_id, "stream_id": stream_id}
    if prev is not None:
        content["prev_id"] = prev
    content.update(extra)
    return {"edu_type": "m.device_list_update", "content": content}


def xsign_key(user_id: str, usage: str, pub: str) -> dict[str, Any]:
    return {"user_id": user_id, "usage": [usage], "keys": {f"ed25519:{pub}": pub}}


def wait_until(cond: Callable[[], bool], timeout: float = 3.0) -> bool:
    import gevent
    deadline = gevent.get_hub().loop.now() + timeout
    while gevent.get_hub().loop.now() < deadline:
        if cond():
            return True
        gevent.sleep(0.01)
    return cond()


@pytest.fixture
def server(tmp_path: Any) -> Any:
    gen = app_factory(tmp_path)
    make = next(gen)
    yield Server(make())
    with contextlib.suppress(StopIteration):
        next(gen)
