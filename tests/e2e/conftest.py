"""End-to-end fixtures: a real ``gunicorn -k gevent web:app`` subprocess on a free port,
configured through ``ATRIUM_CONFIG``/``ATRIUM_BIND`` exactly as in production, over a fresh
database on the engine under test.

``start_atrium(**config)`` starts a server (open registration, bcrypt_rounds 4, a shared
secret, generous rate limits unless overridden), waits until it answers
``/_matrix/client/versions`` and stops it at the end of the test.  ``atrium_server`` is one
such server per test module.  Both give an :class:`AtriumServer`: ``base_url``,
``config_path``, ``server_name``, ``shared_secret`` and ``register(...)``, which creates a
user (admin or not) through the shared-secret admin API.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests
import yaml

from store.testing import database_config, drop_schema

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
SERVER_NAME = "e2e.test"
SECRET = "e2e-shared-secret"
GENEROUS = {"per_second": 1000, "burst_count": 1000}
READY_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class AtriumServer:
    base_url: str
    config_path: str
    server_name: str
    shared_secret: str
    log_path: str
    process: subprocess.Popen = field(repr=False)
    schema: str | None = None

    def register(self, username: str, password: str, *, admin: bool = False,
                 user_type: str | None = None) -> dict[str, Any]:
        """Create a user with the shared-secret admin API; the login it returns."""
        from atrium.cli import register_user

        return register_user(self.base_url, self.shared_secret, username, password,
                             admin=admin, user_type=user_type)

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            # gunicorn's arbiter stops its worker gracefully on SIGTERM
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=25)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def _start(base: Path, overrides: dict[str, Any]) -> AtriumServer:
    base.mkdir(parents=True, exist_ok=True)
    dbcfg, schema = database_config(str(base))
    port = free_port()
    # the address the server really answers on, so /.well-known/matrix/client (which web
    # clients such as Hydrogen follow before logging in) points back at it
    config: dict[str, Any] = {
        "server_name": SERVER_NAME, "public_baseurl": f"http://127.0.0.1:{port}/",
        "database": dbcfg, "signing_key_path": str(base / "signing.key"),
        "media_store_path": str(base / "media"), "bcrypt_rounds": 4,
        "enable_registration": True, "enable_registration_without_verification": True,
        "registration_shared_secret": SECRET, "rc_registration": GENEROUS,
        "rc_login": {"address": GENEROUS, "account": GENEROUS, "failed_attempts": GENEROUS},
        "rc_message": GENEROUS,
    }
    config.update(overrides)
    config_path = base / "homeserver.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    log_path = base / "server.log"
    env = dict(os.environ, ATRIUM_CONFIG=str(config_path), ATRIUM_BIND=f"127.0.0.1:{port}",
               PYTHONDONTWRITEBYTECODE="1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [GUNICORN, "-c", str(ROOT / "gunicorn.conf.py"), "-k", "gevent", "web:app"],
            cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    server = AtriumServer(f"http://127.0.0.1:{port}", str(config_path),
                          config["server_name"], config.get("registration_shared_secret") or "",
                          str(log_path), proc, schema)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            drop_schema(schema)
            raise RuntimeError(f"atrium exited with {proc.returncode}:\n{server.log()}")
        try:
            if requests.get(server.base_url + "/_matrix/client/versions",
                            timeout=2).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.1)
    server.stop()
    drop_schema(schema)
    raise RuntimeError(f"atrium did not become ready in {READY_TIMEOUT}s:\n{server.log()}")


@pytest.fixture
def start_atrium(tmp_path) -> Iterator[Callable[..., AtriumServer]]:
    started: list[AtriumServer] = []

    def _start_one(**overrides: Any) -> AtriumServer:
        server = _start(tmp_path / f"server{len(started)}", overrides)
        started.append(server)
        return server

    yield _start_one
    for server in started:
        server.stop()
        drop_schema(server.schema)


@pytest.fixture(scope="module")
def atrium_server(tmp_path_factory) -> Iterator[AtriumServer]:
    server = _start(tmp_path_factory.mktemp("atrium"), {})
    try:
        yield server
    finally:
        server.stop()
        drop_schema(server.schema)
