"""Start-up from outside, as an operator meets it: a real ``gunicorn -k gevent web:app`` with
``ATRIUM_BIND`` on a non-default port and no config yet (the written config advertises that
port, and ``python -m atrium register`` finds the server without ``--url``); a config typo and
a PostgreSQL database that does not exist each stop it with one line and no traceback."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from store.testing import pg_conninfo
from tests.e2e.conftest import GUNICORN, ROOT, free_port

pytestmark = pytest.mark.timeout(120)


def _gunicorn(env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([GUNICORN, "-c", str(ROOT / "gunicorn.conf.py"), "-k", "gevent",
                             "web:app"], cwd=str(ROOT), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _env(config: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ATRIUM_BIND", "ATRIUM_CONFIG")}
    env.update(ATRIUM_CONFIG=str(config), PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


def _stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.terminate()
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate(timeout=10)
    return out


def _fails_with_one_line(env: dict[str, str], want: str) -> None:
    proc = _gunicorn(env, ROOT)
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    assert proc.returncode not in (0, None), out
    ours = [ln for ln in out.splitlines() if ln.startswith("atrium:")]
    assert len(ours) == 1 and want in ours[0], out
    assert "Traceback" not in out and "Exception" not in out, out


def test_fresh_start_on_atrium_bind_advertises_that_port_and_the_cli_finds_it(tmp_path):
    port = free_port()
    config = tmp_path / "conf" / "homeserver.yaml"
    proc = _gunicorn(_env(config, ATRIUM_BIND=f"127.0.0.1:{port}"), ROOT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, _stop(proc)
            try:
                r = requests.get(f"http://127.0.0.1:{port}/.well-known/matrix/client",
                                 timeout=2)
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, _stop(proc)
                time.sleep(0.2)
        assert r.json() == {"m.homeserver": {"base_url": f"http://127.0.0.1:{port}"}}
        assert stat.S_IMODE(os.stat(config).st_mode) == 0o600
        raw = yaml.safe_load(config.read_text())
        assert raw["listeners"][0]["port"] == port
        # the CLI, without ATRIUM_BIND or --url, reaches the server from the config alone
        cli = subprocess.run([sys.executable, "-m", "atrium", "register", "-u", "alice",
                              "-p", "a long password"], cwd=str(ROOT), env=_env(config),
                             capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        assert "Registered @alice:localhost" in cli.stdout
    finally:
        out = _stop(proc)
    assert "Traceback" not in out, out


def test_a_port_alone_listens_on_loopback(tmp_path):
    port = free_port()
    config = tmp_path / "homeserver.yaml"
    proc = _gunicorn(_env(config, ATRIUM_BIND=str(port)), ROOT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, _stop(proc)
            try:
                assert requests.get(f"http://127.0.0.1:{port}/_matrix/client/versions",
                                    timeout=2).status_code == 200
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, _stop(proc)
                time.sleep(0.2)
    finally:
        _stop(proc)


def test_a_bad_atrium_bind_is_one_line(tmp_path):
    _fails_with_one_line(_env(tmp_path / "homeserver.yaml", ATRIUM_BIND="localhost"),
                         "ATRIUM_BIND must be")
    assert not (tmp_path / "homeserver.yaml").exists()


def test_a_config_typo_is_one_line_and_no_traceback(tmp_path):
    config = tmp_path / "homeserver.yaml"
    config.write_text("server_name: typo.test\nenable_registration: yess\n"
                      f"media_store_path: {tmp_path / 'media'}\n")
    _fails_with_one_line(_env(config, ATRIUM_BIND=f"127.0.0.1:{free_port()}"),
                         "config key 'enable_registration' must be true or false")


def test_a_missing_postgres_database_is_one_line(tmp_path):
    import psycopg

    try:
        psycopg.connect(pg_conninfo(), connect_timeout=3).close()
    except psycopg.Error:
        pytest.skip("no PostgreSQL server to ask")
    args = dict(part.split("=", 1) for part in pg_conninfo().split())
    args["dbname"] = "atrium_h5_no_such_database"
    config = tmp_path / "homeserver.yaml"
    config.write_text(yaml.safe_dump({
        "server_name": "pg.test", "database": {"name": "psycopg2", "args": args},
        "signing_key_path": str(tmp_path / "signing.key"),
        "media_store_path": str(tmp_path / "media")}))
    _fails_with_one_line(_env(config, ATRIUM_BIND=f"127.0.0.1:{free_port()}"),
                         "config key 'database.args.dbname': cannot connect")


def test_a_port_in_use_is_one_line(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        _fails_with_one_line(_env(tmp_path / "homeserver.yaml", ATRIUM_BIND=f"127.0.0.1:{port}"),
                             f"cannot listen on 127.0.0.1:{port}: the address is already in use")
