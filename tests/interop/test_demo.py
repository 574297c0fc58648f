"""``python -m atrium demo``: three federating servers come up over TLS, each with its
user; a user of one reads the profile of a user on another; SIGTERM stops all three."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_demo_three_servers_federate_and_stop_on_sigterm(tmp_path) -> None:
    ports = _free_ports(3)
    out_path = tmp_path / "demo.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "atrium", "demo", "--dir", str(tmp_path / "demo"),
             "--ports", ",".join(map(str, ports))], cwd=str(ROOT), stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while "Ctrl-C stops" not in out_path.read_text():
            assert proc.poll() is None, out_path.read_text()
            assert time.monotonic() < deadline, out_path.read_text()
            time.sleep(0.2)
        text = out_path.read_text()
        users = re.findall(r"(https://localhost:\d+)\s+(@\w+:localhost:\d+)\s+password (\S+)"
                           r"\s+access token (\S+)", text)
        assert [u[1] for u in users] == [f"@{n}:localhost:{p}" for n, p in
                                         zip(("alice", "bob", "carol"), ports)], text
        ca = str(tmp_path / "demo" / "ca.pem")
        assert ca in text
        # every user reads the next server's user's profile: federation over TLS
        for (base, _uid, _pw, token), (_b, other, _p, _t) in zip(users, users[1:] + users[:1]):
            r = requests.get(f"{base}/_matrix/client/v3/profile/{quote(other, safe='')}",
                             headers={"Authorization": f"Bearer {token}"}, verify=ca,
                             timeout=30)
            assert r.status_code == 200, r.text
            assert r.json()["displayname"] == other[1:].split(":")[0].capitalize()
        # the printed password logs in
        base, uid, pw, _ = users[0]
        r = requests.post(f"{base}/_matrix/client/v3/login", verify=ca, timeout=30, json={
            "type": "m.login.password", "password": pw,
            "identifier": {"type": "m.id.user", "user": uid}})
        assert r.status_code == 200, r.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not any(_listening(p) for p in ports), "a demo server is still listening"
        assert "stopping 3 server(s)" in out_path.read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)   # the demo stops its servers by PID
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
