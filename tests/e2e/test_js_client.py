"""End to end with a real JavaScript client: matrix-js-sdk 37.x (Node 20) against a real
``gunicorn -k gevent web:app``, driven by ``tests/e2e/js/client_flow.mjs``.

The script logs two users in, runs both clients' sync loops and walks through what a new
user does first (create a room, invite, join, talk both ways, typing, receipts, displayname,
media, redaction, scrollback, logout); it prints JSON and exits non-zero on any failure.

node_modules is installed with ``npm ci`` into ``tests/e2e/js/node_modules`` on first use and
reused afterwards (it is gitignored); the test skips when ``node``/``npm`` are missing.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import AtriumServer

JS_DIR = Path(__file__).resolve().parent / "js"
SCRIPT = JS_DIR / "client_flow.mjs"
SCRIPT_TIMEOUT = 90  # seconds, enforced inside the script too

pytestmark = pytest.mark.timeout(300)


def _node_major() -> int | None:
    node = shutil.which("node")
    if not node:
        return None
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout
    m = re.match(r"v(\d+)", out.strip())
    return int(m.group(1)) if m else None


def ensure_node_modules(package: str = "matrix-js-sdk") -> None:
    """``npm ci`` into tests/e2e/js once; later runs find the package and skip the install.
    A lock file newer than the installed tree triggers a reinstall."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm not installed: the matrix-js-sdk end-to-end test needs Node >= 20")
    major = _node_major()
    if major is None or major < 20:
        pytest.skip(f"matrix-js-sdk 37.5 needs Node >= 20 (found {major})")
    marker = JS_DIR / "node_modules" / ".package-lock.json"
    installed = (JS_DIR / "node_modules" / package / "package.json").exists() and marker.exists()
    if installed and marker.stat().st_mtime >= (JS_DIR / "package-lock.json").stat().st_mtime:
        return
    proc = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                          cwd=JS_DIR, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"npm ci failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def run_flow(server: AtriumServer, users: list[tuple[str, str]]) -> tuple[dict, str]:
    args = ["node", str(SCRIPT), server.base_url]
    for user, password in users:
        args += [user, password]
    args.append(str(SCRIPT_TIMEOUT))
    proc = subprocess.run(args, cwd=JS_DIR, capture_output=True, text=True,
                          timeout=SCRIPT_TIMEOUT + 30)
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"client_flow.mjs printed no JSON (exit {proc.returncode}):\n"
                    f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
    result["_exit"] = proc.returncode
    return result, proc.stderr


def test_matrix_js_sdk_new_user_flow(start_atrium) -> None:
    ensure_node_modules()
    server = start_atrium()
    server.register("jsalice", "alice password 1")
    server.register("jsbob", "bob password 2")
    result, stderr = run_flow(server, [("jsalice", "alice password 1"),
                                       ("@jsbob:" + server.server_name, "bob password 2")])

    failed = [s for s in result["steps"] if not s["ok"]]
    log = server.log()
    assert result["ok"] and result["_exit"] == 0 and not failed, (
        f"{result.get('error')}\nsteps: {json.dumps(result['steps'], indent=1)[-6000:]}\n"
        f"client stderr:\n{stderr[-3000:]}\nserver log:\n{log[-4000:]}")

    names = [s["name"] for s in result["steps"]]
    for expected in ("startClient (initial sync) user1", "createRoom",
                     "message user1 -> user2 (live timeline)",
                     "message user2 -> user1 (live timeline)", "typing notifications",
                     "read receipts", "set displayname, seen in room member and profile",
                     "upload media and download it back", "redact a message, seen by the other side",
                     "lazy-loaded members: loadMembersIfNeeded (GET /members)",
                     "edit (m.replace) and reaction (m.annotation), relations API",
                     "thread reply and the /threads list", "event context (GET /context, jump to event)",
                     "space hierarchy walk (GET /hierarchy)",
                     "jump to date (GET /timestamp_to_event)",
                     "account data and room tags, seen through own sync",
                     "unread notification counts (from sync)",
                     "paginate history with scrollback (fresh login, initialSyncLimit 5)",
                     "logout"):
        assert expected in names, f"step {expected!r} did not run: {names}"
    assert result["user1"] == f"@jsalice:{server.server_name}"
    assert result["user2"] == f"@jsbob:{server.server_name}"
    media = next(s for s in result["steps"] if s["name"] == "upload media and download it back")
    assert media["detail"]["bytes"] == 3000
    assert media["detail"]["content_uri"].startswith(f"mxc://{server.server_name}/")

    # every optional module the flow tries (search, the user directory) is served now: none
    # may answer 404 M_UNRECOGNIZED
    assert result["unsupported"] == [], result["unsupported"]

    # nothing the SDK did made the server fail
    assert "Traceback" not in log, log[-6000:]
    assert not re.search(r'" 5\d\d ', log), log[-6000:]
