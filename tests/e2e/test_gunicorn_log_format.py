"""A real ``gunicorn -k gevent web:app``: gunicorn's own lines (arbiter start, worker boot,
shutdown) and Atrium's (access lines included) share one format; the requests gunicorn
answers itself get an access line too; no token reaches the log; with ``log_config`` the
worker's lines -- gunicorn's as well as Atrium's -- go where the file says."""
from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import requests
import yaml

V3 = "/_matrix/client/v3"
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
                  r"(?P<name>\S+) \[(?P<rid>[^\]]+)\] (?P<message>.*)$")


def _raw(server, payload: bytes) -> bytes:
    host, port = server.base_url.split("//", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(payload)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except (socket.timeout, ConnectionResetError):
            pass
        return data


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_gunicorn_and_atrium_lines_share_one_format(start_atrium):
    server = start_atrium()
    login = server.register("logalice", "pw")
    token = login["access_token"]
    r = requests.get(f"{server.base_url}{V3}/account/whoami",
                     headers={"Authorization": f"Bearer {token}", "User-Agent": "e2e-agent/1",
                              "X-Request-Id": "e2e-whoami"}, timeout=10)
    assert r.status_code == 200
    assert requests.get(f"{server.base_url}{V3}/sync",
                        params={"access_token": token, "timeout": "0"}, timeout=10).ok
    assert requests.get(f"{server.base_url}/.well-known/matrix/client", timeout=10).status_code \
        in (200, 404)
    # answered by gunicorn itself, before the app sees it
    answer = _raw(server, b"GET /_matrix/client/versions?access_token=GunicornSecret9 HTTP/1.1"
                          b"\r\nHost: x\r\nUser-Agent: raw/1\r\nContent-Length: 1\r\n"
                          b"Content-Length: 2\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer
    server.stop()

    lines = [ln for ln in server.log().splitlines() if ln.strip()]
    parsed = [LINE.match(ln) for ln in lines]
    odd = [ln for ln, m in zip(lines, parsed) if m is None]
    assert not odd, "lines not in Atrium's format:\n" + "\n".join(odd)
    by_name: dict[str, list[str]] = {}
    for m in parsed:
        by_name.setdefault(m["name"], []).append(m["message"])
    gunicorn = "\n".join(by_name.get("gunicorn.error", []))
    for expected in ("Starting gunicorn", "Booting worker with pid", "Handling signal: term",
                     "Shutting down: Master"):
        assert expected in gunicorn, gunicorn
    access = by_name.get("atrium.access", [])
    whoami = [ln for ln in lines if "/account/whoami" in ln]
    assert len(whoami) == 1 and "[e2e-whoami]" in whoami[0]
    assert f' - {login["user_id"]}/{login["device_id"]} "GET {V3}/account/whoami HTTP/1.1" 200 ' \
        in whoami[0] and whoami[0].endswith('"e2e-agent/1"')
    assert any(f'"GET {V3}/sync?access_token=<redacted>&timeout=0 HTTP/1.1" 200 ' in a
               for a in access), access
    assert any('"GET /_matrix/client/versions?access_token=<redacted> HTTP/1.1" 400 ' in a
               and a.endswith('"raw/1"') for a in access), access
    text = server.log()
    assert token not in text and "GunicornSecret9" not in text


def test_with_log_config_the_worker_writes_json_where_the_file_says(start_atrium, tmp_path):
    json_log = tmp_path / "atrium.json"
    log_config = tmp_path / "log.yaml"
    log_config.write_text(yaml.safe_dump({
        "version": 1,
        "formatters": {"structured": {"class": "synapse.logging.TerseJsonFormatter"}},
        "handlers": {"file": {"class": "logging.handlers.RotatingFileHandler",
                              "formatter": "structured", "filename": str(json_log),
                              "maxBytes": 10_000_000, "backupCount": 2}},
        "root": {"level": "INFO", "handlers": ["file"]},
    }))
    server = start_atrium(log_config=str(log_config))
    r = requests.get(f"{server.base_url}/health", headers={"X-Request-Id": "e2e-health"},
                     timeout=10)
    assert r.status_code == 200
    assert _wait_for(lambda: json_log.exists() and "e2e-health" in json_log.read_text())
    server.stop()

    events = [json.loads(ln) for ln in Path(json_log).read_text().splitlines()]
    health = [e for e in events if e["namespace"] == "atrium.access" and e["uri"] == "/health"]
    assert len(health) == 1 and health[0]["request"] == "e2e-health"
    assert health[0]["status"] == 200 and health[0]["method"] == "GET"
    assert any(e["namespace"] == "gunicorn.error" and "Worker exiting" in e["log"]
               for e in events), events[-5:]
    # the arbiter's own lines stay on stderr, in the same text format
    arbiter = [ln for ln in server.log().splitlines() if " gunicorn.error " in ln]
    assert any("Starting gunicorn" in ln for ln in arbiter)
    assert all(LINE.match(ln) for ln in arbiter), arbiter
    assert "e2e-health" not in server.log()
