import pytest

from tests.apps import app_factory

from store.accounts import hash_token
from web.app import runtime_of


class Client:
    """A Flask test client acting as one user."""

    def __init__(self, app, user_id, token):
        self.c = app.test_client()
        self.user_id = user_id
        self.h = {"Authorization": f"Bearer {token}"}
        self._txn = 0

    def req(self, method, path, body=None, status=200):
        r = self.c.open(path, method=method, json=body, headers=self.h)
        assert r.status_code == status, (method, path, r.status_code, r.get_data(as_text=True))
        return r.get_json()

    def create_room(self, **body):
        return self.req("POST", "/_matrix/client/v3/createRoom", body)["room_id"]

    def send(self, room_id, body=None, etype="m.room.message", status=200, txn=None):
        self._txn += 1
        txn = txn or f"t{self._txn}"
        return self.req("PUT", f"/_matrix/client/v3/rooms/{room_id}/send/{etype}/{txn}",
                        body if body is not None else {"msgtype": "m.text", "body": "hi"},
                        status=status)

    def state(self, room_id, etype, key="", body=None, status=200):
        path = f"/_matrix/client/v3/rooms/{room_id}/state/{etype}/{key}"
        if body is None:
            return self.req("GET", path, status=status)
        return self.req("PUT", path, body, status=status)


@pytest.fixture
def hs(tmp_path):
    yield from app_factory(tmp_path)


def user(app, localpart, *, admin=False):
    user_id = f"@{localpart}:test.local"
    token = f"tok_{localpart}"

    def _add(txn):
        txn.execute("INSERT INTO users (name, creation_ts, admin) VALUES (?, ?, ?)",
                    (user_id, 0, int(admin)))
        txn.execute("INSERT INTO devices (user_id, device_id, created_ts) VALUES (?, ?, ?)",
                    (user_id, "DEV" + localpart, 0))
        txn.execute("INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts)"
                    " VALUES (?, ?, ?, ?)", (hash_token(token), user_id, "DEV" + localpart, 0))

    runtime_of(app).db.run("add_user", _add, write=True)
    return Client(app, user_id, token)


@pytest.fixture
def app(hs):
    return hs()
