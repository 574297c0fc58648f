import pytest

from atrium.config import parse_config
from store.accounts import hash_token
from store.testing import database_config, drop_schema
from web.app import create_app, runtime_of


@pytest.fixture
def make_app(tmp_path):
    made = []

    def _make(**overrides):
        dbcfg, schema = database_config(str(tmp_path))
        raw = {"server_name": "test.local", "bcrypt_rounds": 4, "database": dbcfg,
               "signing_key_path": str(tmp_path / "signing.key"),
               "media_store_path": str(tmp_path / "media")}
        raw.update(overrides)
        app = create_app(parse_config(raw, str(tmp_path / "homeserver.yaml")))
        made.append((app, schema))
        return app

    yield _make
    for app, schema in made:
        runtime_of(app).shutdown()
        drop_schema(schema)


def add_user_with_token(app, user_id, token, *, admin=False, expires_ts=None):
    def _add(txn):
        txn.execute("INSERT INTO users (name, creation_ts, admin) VALUES (?, ?, ?)",
                    (user_id, 0, int(admin)))
        txn.execute("INSERT INTO devices (user_id, device_id, created_ts) VALUES (?, ?, ?)",
                    (user_id, "DEV", 0))
        txn.execute("INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts,"
                    " expires_ts) VALUES (?, ?, ?, ?, ?)",
                    (hash_token(token), user_id, "DEV", 0, expires_ts))

    runtime_of(app).db.run("add_user", _add, write=True)
