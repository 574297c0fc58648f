"""Fixtures for the sync tests: the real app from ``create_app(parse_config(...))`` over a
fresh database on the engine under test (ATRIUM_TEST_DB), users inserted directly, and a
Flask test client per user with /sync helpers."""
import json
from urllib.parse import quote

import pytest

from tests.apps import app_factory

from store.accounts import hash_token
from web.app import runtime_of

V = "/_matrix/client/v3"
GENEROUS = {"per_second": 1000, "burst_count": 1000}


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

    def send(self, room_id, body=None, etype="m.room.message", status=200, txn=None):
        self._txn += 1
        txn = txn or f"t{self._txn}"
        if isinstance(body, str):
            body = {"msgtype": "m.text", "body": body}
        return self.req("PUT", f"{V}/rooms/{room_id}/send/{etype}/{txn}",
                        body if body is not None else {"msgtype": "m.text", "body": "hi"},
                        status=status)

    def join(self, room_id):
        return self.req("POST", f"{V}/join/{room_id}")

    def invite(self, room_id, user_id):
        return self.req("POST", f"{V}/rooms/{room_id}/invite", {"user_id": user_id})

    def leave(self, room_id):
        return self.req("POST", f"{V}/rooms/{room_id}/leave", {})

    def sync(self, since=None, timeout=0, filter=None, status=200, **params):
        q = {"timeout": str(timeout)}
        if since is not None:
            q["since"] = since
        if filter is not None:
            q["filter"] = filter if isinstance(filter, str) else json.dumps(filter)
        q.update({k: str(v).lower() if isinstance(v, bool) else str(v)
                  for k, v in params.items()})
        return self.req("GET", f"{V}/sync", status=status, query=q)

    def typing(self, room_id, typing=True, timeout=30000, status=200):
        return self.req("PUT", f"{V}/rooms/{room_id}/typing/{quote(self.user_id)}",
                        {"typing": typing, "timeout": timeout}, status=status)

    def receipt(self, room_id, event_id, rtype="m.read", body=None, status=200):
        return self.req("POST", f"{V}/rooms/{room_id}/receipt/{rtype}/{quote(event_id, safe='')}",
                        body or {}, status=status)


def timeline_ids(resp, room_id, section="join"):
    room = resp["rooms"][section].get(room_id)
    return [e["event_id"] for e in room["timeline"]["events"]] if room else []


def bodies(resp, room_id, section="join"):
    room = resp["rooms"][section].get(room_id)
    if not room:
        return []
    return [e["content"].get("body") for e in room["timeline"]["events"]
            if e["type"] == "m.room.message"]


@pytest.fixture
def hs(tmp_path):
    yield from app_factory(tmp_path)


def user(app, localpart, *, devices=("",)):
    """Insert a user with one device (or several: returns one Client per device)."""
    user_id = f"@{localpart}:test.local"
    clients = []

    def _add(txn):
        txn.execute("INSERT INTO users (name, creation_ts) VALUES (?, ?)", (user_id, 0))
        for suffix in devices:
            device_id = "DEV" + localpart + suffix
            txn.execute("INSERT INTO devices (user_id, device_id, created_ts) VALUES (?, ?, ?)",
                        (user_id, device_id, 0))
            txn.execute("INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts)"
                        " VALUES (?, ?, ?, ?)",
                        (hash_token(f"tok_{localpart}{suffix}"), user_id, device_id, 0))

    runtime_of(app).db.run("add_user", _add, write=True)
    for suffix in devices:
        clients.append(Client(app, user_id, f"tok_{localpart}{suffix}", "DEV" + localpart + suffix))
    return clients[0] if len(devices) == 1 else clients


@pytest.fixture
def app(hs):
    return hs()


@pytest.fixture
def sync_svc(app):
    return runtime_of(app).parts["sync"]
