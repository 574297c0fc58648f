"""TURN credentials from a real Atrium (``gunicorn -k gevent``) against a real coturn with
``use-auth-secret``: a TURN client (coturn's ``turnutils_uclient``) allocates relays with
the credentials ``GET /voip/turnServer`` handed out and sends data through them; a wrong
password, another user's name and an expired credential are refused.  Skips when coturn is
not installed (Debian: ``apt-get install coturn``; ``.ci/run`` installs it)."""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import free_port
from web.voip import rest_api_credentials

TURNSERVER = shutil.which("turnserver")
UCLIENT = shutil.which("turnutils_uclient")
pytestmark = pytest.mark.skipif(
    not (TURNSERVER and UCLIENT),
    reason="coturn is not installed (turnserver and turnutils_uclient; Debian package "
           "coturn)")

SECRET = "e2e-turn-static-auth-secret"


@pytest.fixture
def coturn(tmp_path):
    """turnserver on a free loopback port with the TURN REST API's shared secret; its port."""
    port = free_port()
    log = tmp_path / "turnserver.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [TURNSERVER, "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
             f"--listening-port={port}", "--use-auth-secret",
             f"--static-auth-secret={SECRET}", "--realm=e2e.test", "--no-tls", "--no-dtls",
             "--no-cli", "--allow-loopback-peers", "--no-rfc5780",
             f"--userdb={tmp_path / 'turndb'}", "--log-file=stdout", "--simple-log"],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:   # it listens on TCP and UDP on the same port
            assert proc.poll() is None, log.read_text(errors="replace")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text(errors="replace")
                time.sleep(0.05)
        yield port, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _allocate(port: int, username: str, password: str) -> subprocess.CompletedProcess:
    """Two clients allocate a relay each and send a message to each other through them
    (``-c``: no RTCP pair, which only doubles the allocations)."""
    return subprocess.run([UCLIENT, "-y", "-c", "-n", "1", "-u", username, "-w", password,
                           "-p", str(port), "127.0.0.1"],
                          capture_output=True, text=True, timeout=30)


def test_coturn_relays_with_the_credentials_atrium_hands_out(start_atrium, coturn):
    port, log = coturn
    server = start_atrium(turn_uris=[f"turn:127.0.0.1:{port}?transport=udp"],
                          turn_shared_secret=SECRET, turn_user_lifetime="10m")
    alice = server.register("alice", "pw")
    r = requests.get(server.base_url + "/_matrix/client/v3/voip/turnServer",
                     headers={"Authorization": f"Bearer {alice['access_token']}"}, timeout=10)
    assert r.status_code == 200, r.text
    creds = r.json()
    assert creds["uris"] == [f"turn:127.0.0.1:{port}?transport=udp"] and creds["ttl"] == 600
    assert creds["username"].endswith(":@alice:e2e.test")

    for _ in range(3):   # relay ports may still be starting just after the port opens
        ok = _allocate(port, creds["username"], creds["password"])
        if ok.returncode == 0:
            break
        time.sleep(0.2)
    assert ok.returncode == 0, ok.stdout + ok.stderr + Path(log).read_text(errors="replace")
    received = [int(n) for n in re.findall(r"tot_recv_msgs=(\d+)", ok.stdout)]
    assert received and max(received) > 0, ok.stdout

    # coturn checks the HMAC over the whole username, and the expiry in it
    wrong = _allocate(port, creds["username"], "not-the-password")
    assert wrong.returncode != 0 and "Cannot complete Allocation" in wrong.stdout + wrong.stderr
    other = "@mallory:e2e.test".join(creds["username"].rsplit("@alice:e2e.test", 1))
    assert _allocate(port, other, creds["password"]).returncode != 0
    expired = rest_api_credentials(SECRET, "@alice:e2e.test", 600, now=time.time() - 3600)
    assert _allocate(port, *expired).returncode != 0
