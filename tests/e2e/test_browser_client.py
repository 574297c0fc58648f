"""End to end in a browser: the Hydrogen web client (npm ``hydrogen-view-sdk``, its full app
with the login screen) in Debian's headless Chromium, driven by playwright-core
(``tests/e2e/js/browser_flow.mjs``), against a real ``gunicorn -k gevent web:app``.

A user logs in through Hydrogen's login screen, opens a room from the room list, sees a
message another user sent, and replies through the composer; the reply is then read back
over the API. Skips when node/npm or Chromium (``apt-get install chromium``) are missing;
playwright never downloads a browser.
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import pytest
import requests

from tests.e2e.conftest import free_port
from tests.e2e.test_js_client import JS_DIR, ensure_node_modules

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
HYDROGEN = JS_DIR / "node_modules" / "hydrogen-view-sdk"

pytestmark = pytest.mark.timeout(300)


class _Static(http.server.SimpleHTTPRequestHandler):
    """tests/e2e/js over HTTP, with the page at / and Hydrogen's service worker at /sw.js
    (a service worker only controls pages under its own path)."""

    ROUTES = {
        "/": JS_DIR / "browser" / "index.html",
        "/sw.js": HYDROGEN / "lib-build" / "sw.js",
        "/download-sandbox.html": HYDROGEN / "asset-build" / "assets" / "download-sandbox.html",
    }

    def translate_path(self, path: str) -> str:
        route = self.ROUTES.get(path.split("?", 1)[0])
        return str(route) if route else super().translate_path(path)

    def log_message(self, format: str, *args) -> None:  # keep pytest output quiet
        pass


@pytest.fixture
def web_client() -> Iterator[str]:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip("Chromium is not installed (apt-get install -y chromium); "
                    "the Hydrogen browser test needs it")
    ensure_node_modules("hydrogen-view-sdk")
    bundle = subprocess.run(
        [str(JS_DIR / "node_modules" / ".bin" / "esbuild"), "browser/app.mjs", "--bundle",
         "--format=esm", "--platform=browser", "--outfile=browser/dist/app.js",
         "--external:fs", "--external:path", "--external:crypto", "--log-level=warning"],
        cwd=JS_DIR, capture_output=True, text=True, timeout=120)
    assert bundle.returncode == 0, bundle.stderr
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", free_port()), functools.partial(_Static, directory=str(JS_DIR)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_hydrogen_logs_in_and_sees_a_message(start_atrium, web_client) -> None:
    server = start_atrium()
    alice = server.register("hyalice", "alice pw")
    bob = server.register("hybob", "bob pw")
    api = server.base_url + "/_matrix/client/v3"

    def auth(login: dict) -> dict:
        return {"Authorization": f"Bearer {login['access_token']}"}

    room = requests.post(f"{api}/createRoom", headers=auth(alice), timeout=10,
                         json={"name": "Browser room", "invite": [bob["user_id"]]})
    assert room.status_code == 200, room.text
    room_id = room.json()["room_id"]
    assert requests.post(f"{api}/join/{room_id}", headers=auth(bob), json={},
                         timeout=10).status_code == 200
    sent = requests.put(f"{api}/rooms/{room_id}/send/m.room.message/hy1", headers=auth(alice),
                        json={"msgtype": "m.text", "body": "hello hydrogen"}, timeout=10)
    assert sent.status_code == 200, sent.text

    proc = subprocess.run(
        ["node", "browser_flow.mjs", web_client, server.base_url, "hybob", "bob pw",
         "Browser room", "hello hydrogen", "reply from hydrogen"],
        cwd=JS_DIR, capture_output=True, text=True, timeout=150,
        env=dict(os.environ, CHROMIUM=CHROMIUM))
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"browser_flow.mjs printed no JSON (exit {proc.returncode}):\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    assert result["ok"] and proc.returncode == 0, (
        f"{result.get('error')}\n{json.dumps(result, indent=1)[-6000:]}\n"
        f"server log:\n{server.log()[-4000:]}")

    # the reply typed into Hydrogen's composer reached the room
    msgs = requests.get(f"{api}/rooms/{room_id}/messages", headers=auth(alice),
                        params={"dir": "b", "limit": 10}, timeout=10).json()
    bodies = [(e["sender"], e["content"].get("body")) for e in msgs["chunk"]
              if e["type"] == "m.room.message"]
    assert (bob["user_id"], "reply from hydrogen") in bodies, bodies
    assert "Traceback" not in server.log()

    # end Hydrogen's session server-side: a /sync still long-polling for the closed browser
    # would otherwise hold the server's graceful shutdown for its full graceful_timeout
    assert requests.post(f"{api}/logout/all", headers=auth(bob), json={},
                         timeout=10).status_code == 200
