"""End to end in a browser: Atrium's operator console (``/_atrium/console``) in Debian's
headless Chromium, driven by playwright-core (``tests/e2e/js/console_flow.mjs``), against a
real ``gunicorn -k gevent web:app`` with ``enable_fault_injection: true``.

A non-admin is turned away; the admin logs in, sees the room it just sent to in the
supervision tree and among the busiest rooms, draws the room's trace and the send's own
trace (by its request id) as sequence diagrams, and unparks a room that fault injection
crashed until its supervisor parked it; the admin API then confirms the room is serving
again.  Skips when node/npm or Chromium are missing; playwright never downloads a browser.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from typing import Any
from urllib.parse import quote

import pytest
import requests

from tests.e2e.test_js_client import JS_DIR, ensure_node_modules

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
MAX_RESTARTS = 2
ACTORS = {"max_restarts": MAX_RESTARTS, "restart_window": "60s", "park_duration": "120s",
          "restart_delay": "50ms"}
ADMIN = "/_atrium/admin/v1"

pytestmark = pytest.mark.timeout(300)


class Api:
    def __init__(self, base_url: str, login: dict[str, Any]) -> None:
        self.base = base_url
        self.headers = {"Authorization": f"Bearer {login['access_token']}"}

    def call(self, method: str, path: str, body: Any = None) -> requests.Response:
        return requests.request(method, self.base + path, headers=self.headers, json=body,
                                timeout=15)

    def send(self, room_id: str, txn: str) -> requests.Response:
        return self.call("PUT", f"/_matrix/client/v3/rooms/{quote(room_id)}/send/"
                                f"m.room.message/{txn}", {"msgtype": "m.text", "body": txn})

    def room_child(self, room_id: str) -> dict[str, Any] | None:
        rows = self.call("GET", f"{ADMIN}/actors?limit=10000").json()["rooms"]["children"]
        return next((r for r in rows if r["key"] == room_id), None)


@pytest.fixture
def browser_ready() -> None:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip("Chromium is not installed (apt-get install -y chromium); "
                    "the console browser test needs it")
    ensure_node_modules("playwright-core")


def test_console_in_chromium(start_atrium, browser_ready) -> None:
    server = start_atrium(enable_fault_injection=True, actors=ACTORS)
    admin = Api(server.base_url, server.register("root", "root pw", admin=True))
    server.register("mortal", "mortal pw")

    room = admin.call("POST", "/_matrix/client/v3/createRoom", {"name": "Console room"})
    assert room.status_code == 200, room.text
    room_id = room.json()["room_id"]
    sent = admin.send(room_id, "hello-console")
    assert sent.status_code == 200, sent.text
    request_id = sent.headers["X-Request-Id"]

    # a room that crashes until it is parked: exactly MAX_RESTARTS + 1 crashes armed, so it
    # serves again once unparked
    parked_id = admin.call("POST", "/_matrix/client/v3/createRoom", {}).json()["room_id"]
    armed = admin.call("POST", f"{ADMIN}/rooms/{quote(parked_id)}/fault",
                       {"kind": "crash", "count": MAX_RESTARTS + 1})
    assert armed.status_code == 200, armed.text
    statuses = []
    for i in range(MAX_RESTARTS + 3):
        statuses.append(admin.send(parked_id, f"x{i}").status_code)
        if statuses[-1] == 503:
            break
        time.sleep(0.15)  # past restart_delay: the next message meets the new incarnation
    assert statuses == [500] * (MAX_RESTARTS + 1) + [503], statuses
    assert admin.room_child(parked_id)["state"] == "parked"

    proc = subprocess.run(
        ["node", "console_flow.mjs", server.base_url, "root", "root pw", "mortal",
         "mortal pw", room_id, request_id, parked_id],
        cwd=JS_DIR, capture_output=True, text=True, timeout=150,
        env=dict(os.environ, CHROMIUM=CHROMIUM))
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"console_flow.mjs printed no JSON (exit {proc.returncode}):\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    assert result["ok"] and proc.returncode == 0, (
        f"{result.get('error')}\n{json.dumps(result, indent=1)[-6000:]}\n"
        f"server log:\n{server.log()[-4000:]}")
    names = [s["name"] for s in result["steps"]]
    assert "Unpark" in names and "the room's trace is drawn" in names

    # the API confirms what the button did: not parked any more, and the room serves
    child = admin.room_child(parked_id)
    assert child is None or child["state"] != "parked", child
    again = admin.send(parked_id, "after-unpark")
    assert again.status_code == 200, again.text
    assert admin.room_child(parked_id)["state"] == "running"
    assert "Traceback" not in server.log()
