"""Fixtures for the media repository tests: a Flask app on a fresh database (SQLite, or
PostgreSQL with ATRIUM_TEST_DB=postgres) with a temp media store, and access tokens made
by inserting users and token rows directly."""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pytest
from PIL import Image

from atrium.config import parse_config
from store.accounts import hash_token, now_ms
from store.database import Txn
from store.testing import database_config, drop_schema

SERVER = "media.test"


@dataclass
class MediaEnv:
    app: Any
    client: Any
    runtime: Any
    store_path: str
    make_user: Callable[..., str]


def _insert_user(txn: Txn, user_id: str, token: str, admin: bool) -> None:
    txn.execute("INSERT INTO users (name, password_hash, creation_ts, admin) VALUES (?,?,?,?)",
                (user_id, None, now_ms(), int(admin)))
    txn.execute("INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts)"
                " VALUES (?,?,?,?)", (hash_token(token), user_id, "DEV", now_ms()))


def make_env(tmp_path: Any, **overrides: Any) -> Iterator[MediaEnv]:
    from web.app import create_app, runtime_of

    db_cfg, schema = database_config(str(tmp_path))
    raw = {"server_name": SERVER, "database": db_cfg, "bcrypt_rounds": 4,
           "media_store_path": str(tmp_path / "media"),
           "signing_key_path": str(tmp_path / "signing.key"),
           "max_upload_size": "1M", **overrides}
    app = create_app(parse_config(raw, base_dir=str(tmp_path)))
    runtime = runtime_of(app)

    def make_user(local: str, *, admin: bool = False) -> str:
        token = f"tok_{local}"
        runtime.db.run("insert_user", _insert_user, f"@{local}:{SERVER}", token, admin,
                       write=True)
        return token

    try:
        yield MediaEnv(app, app.test_client(), runtime, str(tmp_path / "media"), make_user)
    finally:
        runtime.shutdown()
        drop_schema(schema)


@pytest.fixture
def env(tmp_path: Any) -> Iterator[MediaEnv]:
    yield from make_env(tmp_path)


@pytest.fixture
def alice(env: MediaEnv) -> dict[str, str]:
    return {"Authorization": f"Bearer {env.make_user('alice')}"}


@pytest.fixture
def bob(env: MediaEnv) -> dict[str, str]:
    return {"Authorization": f"Bearer {env.make_user('bob')}"}


@pytest.fixture
def admin(env: MediaEnv) -> dict[str, str]:
    return {"Authorization": f"Bearer {env.make_user('root', admin=True)}"}


def image_bytes(fmt: str, size: tuple[int, int] = (1000, 500), *, frames: int = 1,
                mode: str = "RGB") -> bytes:
    """An encoded test image; several frames make an animated GIF/WebP."""
    imgs = [Image.new(mode, size, (40 * i % 256, 100, 200)) for i in range(frames)]
    buf = io.BytesIO()
    if frames > 1:
        imgs[0].save(buf, fmt, save_all=True, append_images=imgs[1:], duration=50, loop=0)
    else:
        imgs[0].save(buf, fmt)
    return buf.getvalue()


def upload(env: MediaEnv, headers: dict[str, str], data: bytes,
           content_type: str = "application/octet-stream", filename: str | None = None) -> str:
    """Upload and return the media id (asserting success)."""
    qs = {"filename": filename} if filename is not None else {}
    r = env.client.post("/_matrix/media/v3/upload", data=data, query_string=qs,
                        headers={**headers, "Content-Type": content_type})
    assert r.status_code == 200, r.get_json()
    uri = r.get_json()["content_uri"]
    assert uri.startswith(f"mxc://{SERVER}/")
    return uri.rsplit("/", 1)[1]


def files_under(path: str) -> list[str]:
    return [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
