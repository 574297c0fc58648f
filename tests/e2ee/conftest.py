"""Fixtures for the E2EE tests: the real app from ``create_app(parse_config(...))`` over a
fresh database on the engine under test (ATRIUM_TEST_DB), users inserted directly, and a
Flask test client per device that can make real ed25519-signed device and cross-signing
keys (the keys are real; the clients never encrypt anything, the server never could)."""
import pytest

from tests.apps import app_factory

from protocol.signing import encode_verify_key_base64, generate_signing_key, get_verify_key, sign_json
from store.accounts import hash_token
from web.app import runtime_of
from web.uia import hash_password

V = "/_matrix/client/v3"
GENEROUS = {"per_second": 1000, "burst_count": 1000}
PASSWORD = "correct horse"


class Client:
    """A Flask test client acting as one device of one user, with that device's keys."""

    def __init__(self, app, user_id, token, device_id):
        self.app = app
        self.c = app.test_client()
        self.user_id = user_id
        self.device_id = device_id
        self.h = {"Authorization": f"Bearer {token}"}
        self.sk = generate_signing_key(device_id)  # key id ed25519:<device_id>
        self._txn = 0

    def req(self, method, path, body=None, status=200, query=None):
        r = self.c.open(path, method=method, json=body, headers=self.h, query_string=query)
        assert r.status_code == status, (method, path, r.status_code, r.get_data(as_text=True))
        return r.get_json()

    # -- keys -----------------------------------------------------------------------------
    @property
    def ed25519(self):
        return encode_verify_key_base64(get_verify_key(self.sk))

    def device_keys(self, sk=None, **extra):
        keys = {"user_id": self.user_id, "device_id": self.device_id,
                "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                "keys": {f"curve25519:{self.device_id}": "curve" + self.device_id,
                         f"ed25519:{self.device_id}": self.ed25519}}
        keys.update(extra)
        return sign_json(keys, self.user_id, sk or self.sk)

    def otks(self, n, start=0, alg="signed_curve25519"):
        return {f"{alg}:{self.device_id}{i:05d}":
                sign_json({"key": f"otk-{self.device_id}-{i}"}, self.user_id, self.sk)
                for i in range(start, start + n)}

    def upload(self, status=200, **body):
        return self.req("POST", f"{V}/keys/upload", body, status=status)

    def query(self, users, status=200):
        wanted = users if isinstance(users, dict) else {u: [] for u in users}
        return self.req("POST", f"{V}/keys/query", {"device_keys": wanted}, status=status)

    def claim(self, wanted, status=200):
        return self.req("POST", f"{V}/keys/claim", {"one_time_keys": wanted}, status=status)

    # -- rooms / sync ---------------------------------------------------------------------
    def create_room(self, **body):
        return self.req("POST", f"{V}/createRoom", body)["room_id"]

    def join(self, room_id):
        return self.req("POST", f"{V}/join/{room_id}")

    def invite(self, room_id, user_id):
        return self.req("POST", f"{V}/rooms/{room_id}/invite", {"user_id": user_id})

    def leave(self, room_id):
        return self.req("POST", f"{V}/rooms/{room_id}/leave", {})

    def sync(self, since=None):
        q = {"timeout": "0"}
        if since is not None:
            q["since"] = since
        return self.req("GET", f"{V}/sync", query=q)


class CrossSigning:
    """A user's three cross-signing key pairs."""

    def __init__(self, user_id):
        self.user_id = user_id
        self.master = generate_signing_key("m")
        self.self_signing = generate_signing_key("s")
        self.user_signing = generate_signing_key("u")
        for sk in (self.master, self.self_signing, self.user_signing):
            sk.version = encode_verify_key_base64(get_verify_key(sk))

    @staticmethod
    def pub(sk):
        return sk.version

    def key(self, usage, sk, signer=None):
        obj = {"user_id": self.user_id, "usage": [usage],
               "keys": {f"ed25519:{self.pub(sk)}": self.pub(sk)}}
        if signer is not None:
            sign_json(obj, self.user_id, signer)
        return obj

    def upload_body(self):
        return {"master_key": self.key("master", self.master),
                "self_signing_key": self.key("self_signing", self.self_signing, self.master),
                "user_signing_key": self.key("user_signing", self.user_signing, self.master)}


@pytest.fixture
def hs(tmp_path):
    yield from app_factory(tmp_path)


_PW_HASH = {}


def user(app, localpart, *, devices=("",)):
    """Insert a user (password ``PASSWORD``) with one device, or several: one Client each."""
    user_id = f"@{localpart}:test.local"
    if "h" not in _PW_HASH:
        _PW_HASH["h"] = hash_password(PASSWORD, 4)

    def _add(txn):
        txn.execute("INSERT INTO users (name, password_hash, creation_ts) VALUES (?, ?, ?)",
                    (user_id, _PW_HASH["h"], 0))
        for suffix in devices:
            device_id = "DEV" + localpart.upper() + suffix
            name = f"{localpart}'s {suffix or 'phone'}"
            txn.execute("INSERT INTO devices (user_id, device_id, display_name, created_ts)"
                        " VALUES (?, ?, ?, ?)", (user_id, device_id, name, 0))
            txn.execute("INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts)"
                        " VALUES (?, ?, ?, ?)",
                        (hash_token(f"tok_{localpart}{suffix}"), user_id, device_id, 0))

    runtime_of(app).db.run("add_user", _add, write=True)
    clients = [Client(app, user_id, f"tok_{localpart}{s}", "DEV" + localpart.upper() + s)
               for s in devices]
    return clients[0] if len(devices) == 1 else clients


def password_auth(session, localpart):
    return {"type": "m.login.password", "session": session,
            "identifier": {"type": "m.id.user", "user": localpart}, "password": PASSWORD}


@pytest.fixture
def app(hs):
    return hs()
