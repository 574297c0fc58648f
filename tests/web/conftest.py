"""Fixtures for the web areas: a real app over a fresh database on the engine under test
(SQLite, or PostgreSQL with ``ATRIUM_TEST_DB=postgres``), driven with Flask's test client.

``make_app(**config)`` builds an app from a config mapping (open registration, bcrypt_rounds
4 and generous rate limits unless overridden); ``client`` is a test client of the default
app; ``account`` registers a user and returns its login (``user_id``, ``access_token``,
``device_id``, ``headers``).
"""
from __future__ import annotations

import itertools
from typing import Any, Callable

import pytest

from atrium.config import parse_config
from store.testing import database_config, drop_schema
from web.app import create_app, runtime_of

SERVER = "test.local"
GENEROUS = {"per_second": 1000, "burst_count": 1000}
DEFAULTS: dict[str, Any] = {
    "server_name": SERVER,
    "bcrypt_rounds": 4,
    "enable_registration": True,
    "enable_registration_without_verification": True,
    "registration_shared_secret": "s3cret",
    "rc_registration": GENEROUS,
    "rc_login": {"address": GENEROUS, "account": GENEROUS, "failed_attempts": GENEROUS},
}


@pytest.fixture
def make_app(tmp_path) -> Any:
    made: list[tuple[Any, str | None]] = []
    counter = itertools.count()

    def _make(**overrides: Any) -> Any:
        n = next(counter)
        base = tmp_path / f"app{n}"
        base.mkdir()
        dbcfg, schema = database_config(str(base))
        raw = dict(DEFAULTS, database=dbcfg, signing_key_path=str(base / "signing.key"),
                   media_store_path=str(base / "media"))
        raw.update(overrides)
        app = create_app(parse_config(raw, str(base / "homeserver.yaml")))
        made.append((app, schema))
        return app

    yield _make
    for app, schema in made:
        runtime_of(app).shutdown()
        drop_schema(schema)


@pytest.fixture
def app(make_app) -> Any:
    return make_app()


@pytest.fixture
def client(app) -> Any:
    return app.test_client()


def auth_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def register_via_dummy(client: Any, username: str, password: str = "pw",
                       **extra: Any) -> Any:
    """Run the m.login.dummy registration flow; the final response."""
    body = {"username": username, "password": password, **extra}
    r = client.post("/_matrix/client/v3/register", json=body)
    if r.status_code != 401:
        return r
    body["auth"] = {"type": "m.login.dummy", "session": r.json["session"]}
    return client.post("/_matrix/client/v3/register", json=body)


@pytest.fixture
def account(client) -> Callable[..., dict[str, Any]]:
    def _account(username: str = "alice", password: str = "pw", **extra: Any) -> dict[str, Any]:
        r = register_via_dummy(client, username, password, **extra)
        assert r.status_code == 200, r.json
        out = dict(r.json)
        out["headers"] = auth_headers(out["access_token"])
        out["password"] = password
        return out

    return _account


def password_auth(user_id: str, password: str, session: str | None = None) -> dict[str, Any]:
    auth: dict[str, Any] = {"type": "m.login.password",
                            "identifier": {"type": "m.id.user", "user": user_id},
                            "password": password}
    if session is not None:
        auth["session"] = session
    return auth
