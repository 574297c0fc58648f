"""Per-listener resources under a real ``gunicorn -k gevent web:app`` started from Synapse's
``listeners`` block (no ATRIUM_BIND): the client API on its listener, the Prometheus metrics
only on the ``type: metrics`` listener, a unix socket listener with its own resources, and
a metrics listener left unbound without ``enable_metrics: true`` (as Synapse)."""
from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from store.testing import database_config, drop_schema
from tests.e2e.conftest import GUNICORN, ROOT, free_port

pytestmark = pytest.mark.timeout(120)


def _start(tmp_path: Path, config: dict[str, Any]) -> tuple[subprocess.Popen, Path]:
    path = tmp_path / "homeserver.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("ATRIUM_BIND", "ATRIUM_CONFIG")}
    env.update(ATRIUM_CONFIG=str(path), PYTHONDONTWRITEBYTECODE="1")
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([GUNICORN, "-c", str(ROOT / "gunicorn.conf.py"), "-k",
                                 "gevent", "web:app"], cwd=str(ROOT), env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=10)


def _wait(proc: subprocess.Popen, log: Path, url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text(errors="replace")
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.2)


def _unix_get(path: str, target: str) -> tuple[int, bytes]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                  .encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _base(tmp_path: Path) -> tuple[dict[str, Any], str | None]:
    dbcfg, schema = database_config(str(tmp_path))
    return {"server_name": "listeners.test", "database": dbcfg,
            "signing_key_path": str(tmp_path / "signing.key"),
            "media_store_path": str(tmp_path / "media")}, schema


def test_each_listener_serves_its_resources(tmp_path):
    client_port, metrics_port = free_port(), free_port()
    sock = str(tmp_path / "keys.sock")
    config, schema = _base(tmp_path)
    config.update(enable_metrics=True, listeners=[
        {"port": client_port, "type": "http", "x_forwarded": True,
         "bind_addresses": ["127.0.0.1"], "resources": [{"names": ["client", "federation"]}]},
        {"port": metrics_port, "type": "metrics", "bind_addresses": ["127.0.0.1"]},
        {"path": sock, "type": "http", "resources": [{"names": ["keys"]}]},
    ])
    proc, log = _start(tmp_path, config)
    client, metrics = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{metrics_port}"
    try:
        _wait(proc, log, client + "/health")
        _wait(proc, log, metrics + "/health")
        assert requests.get(client + "/_matrix/client/versions", timeout=10).status_code == 200
        assert requests.get(client + "/_matrix/key/v2/server", timeout=10).status_code == 200
        r = requests.get(client + "/_synapse/metrics", timeout=10)
        assert r.status_code == 404 and r.json()["errcode"] == "M_UNRECOGNIZED"

        r = requests.get(metrics + "/_synapse/metrics", timeout=10)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
        assert "process_cpu_seconds_total" in r.text and "atrium_http_requests_total" in r.text
        assert requests.get(metrics + "/health", timeout=10).text == "OK"
        for path in ("/_matrix/client/versions", "/_synapse/admin/v1/server_version",
                     "/_matrix/key/v2/server"):
            r = requests.get(metrics + path, timeout=10,
                             headers={"Host": f"127.0.0.1:{client_port}"})
            assert r.status_code == 404 and r.json() == {
                "errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"}, path

        status, body = _unix_get(sock, "/_matrix/key/v2/server")
        assert status == 200 and b"verify_keys" in body
        status, body = _unix_get(sock, "/_matrix/client/versions")
        assert status == 404 and b"M_UNRECOGNIZED" in body
    finally:
        _stop(proc)
        drop_schema(schema)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text
    assert "is not served" not in text and "not bound" not in text, text


def test_a_metrics_listener_without_enable_metrics_is_not_bound(tmp_path):
    client_port, metrics_port = free_port(), free_port()
    config, schema = _base(tmp_path)
    config.update(listeners=[
        {"port": client_port, "type": "http", "bind_addresses": ["127.0.0.1"],
         "resources": [{"names": ["client", "federation"]}]},
        {"port": metrics_port, "type": "metrics", "bind_addresses": ["127.0.0.1"]},
    ])
    proc, log = _start(tmp_path, config)
    try:
        _wait(proc, log, f"http://127.0.0.1:{client_port}/health")
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{metrics_port}/_synapse/metrics", timeout=5)
    finally:
        _stop(proc)
        drop_schema(schema)
    text = log.read_text(errors="replace")
    # named once, by the config's parse or (when it does not know enable_metrics) the app
    assert text.count("is not bound: enable_metrics is false") == 1, text
