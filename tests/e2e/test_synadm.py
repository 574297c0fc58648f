"""synadm, the Synapse admin CLI operators use (PyPI ``synadm``, a test-only dependency),
against a real ``gunicorn -k gevent web:app``: what an operator coming from Synapse types
works unchanged — users (list, details, modify, whois, shadow-ban, login as, password,
deactivate), rooms (list, details, members, state, block, delete and its status),
registration tokens, media, event reports, the server version.

Each step checks what the server did, not only that synadm printed something."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

pytestmark = pytest.mark.timeout(300)

SYNADM = shutil.which("synadm", path=str(Path(sys.executable).parent))


def _synadm(config: Path, *args: str) -> Any:
    r = subprocess.run([SYNADM, "--batch", "-c", str(config), "-o", "minified", *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    out = r.stdout.strip()
    if not out.startswith(("{", "[")):
        return out   # a sentence ("Registration token successfully deleted.")
    return json.loads(out.splitlines()[-1])


@pytest.fixture
def synadm(atrium_server, tmp_path):
    if SYNADM is None:
        pytest.skip("synadm is not installed in this venv (requirements-dev.txt)")
    admin = atrium_server.register("opsadmin", "pw-ops-1", admin=True)
    cfg = tmp_path / "synadm.yaml"
    cfg.write_text(yaml.safe_dump({
        "user": admin["user_id"], "token": admin["access_token"],
        "base_url": atrium_server.base_url, "admin_path": "/_synapse/admin",
        "matrix_path": "/_matrix", "timeout": 30, "homeserver": atrium_server.server_name,
        "server_discovery": "dns", "ssl_verify": False, "format": "json"}), encoding="utf-8")
    run = lambda *args: _synadm(cfg, *args)  # noqa: E731
    run.auth = {"Authorization": f"Bearer {admin['access_token']}"}  # type: ignore[attr-defined]
    return run


def _client(server, user: dict) -> tuple[str, dict[str, str]]:
    return server.base_url + "/_matrix/client/v3", {
        "Authorization": f"Bearer {user['access_token']}"}


def test_an_operator_runs_synadm_against_atrium(atrium_server, synadm):
    s = atrium_server
    assert synadm("version")["server_version"].startswith("Atrium")
    carol = s.register("carol", "pw-carol-1")
    uid = carol["user_id"]
    c, h = _client(s, carol)

    # users: list, details, modify, whois
    names = {u["name"] for u in synadm("user", "list", "-l", "100")["users"]}
    assert uid in names
    synadm("user", "modify", uid, "--display-name", "Carol Ops")
    assert synadm("user", "details", uid)["displayname"] == "Carol Ops"
    assert requests.get(f"{c}/profile/{uid}/displayname", timeout=10).json() == {
        "displayname": "Carol Ops"}
    whois = synadm("user", "whois", uid)
    assert whois["user_id"] == uid and carol["device_id"] in whois["devices"]

    # rooms: carol makes one and talks; the admin lists it and looks inside
    room = requests.post(f"{c}/createRoom", headers=h, json={"name": "lobby"},
                         timeout=10).json()["room_id"]
    ev = requests.put(f"{c}/rooms/{room}/send/m.room.message/t1", headers=h,
                      json={"msgtype": "m.text", "body": "hello"}, timeout=10).json()
    rooms = synadm("room", "list")["rooms"]
    assert any(r["room_id"] == room and r["name"] == "lobby" for r in rooms)
    assert synadm("room", "details", room)["joined_members"] == 1
    assert synadm("room", "members", room)["members"] == [uid]
    state = synadm("room", "state", room)["state"]
    assert any(e["type"] == "m.room.create" for e in state)

    # carol reports her own message; the admin sees the report
    r = requests.post(f"{c}/rooms/{room}/report/{ev['event_id']}", headers=h,
                      json={"reason": "test report", "score": -50}, timeout=10)
    assert r.status_code == 200, r.text
    reports = requests.get(f"{s.base_url}/_synapse/admin/v1/event_reports",
                           headers=synadm.auth, timeout=10).json()
    assert any(rep["event_id"] == ev["event_id"] for rep in reports["event_reports"])

    # registration tokens
    synadm("regtok", "new", "--token", "ops-token", "--uses-allowed", "2")
    toks = synadm("regtok", "list")["registration_tokens"]
    assert [t["uses_allowed"] for t in toks if t["token"] == "ops-token"] == [2]
    synadm("regtok", "update", "ops-token", "--uses-allowed", "5")
    assert synadm("regtok", "details", "ops-token")["uses_allowed"] == 5
    assert "deleted" in synadm("regtok", "delete", "ops-token")
    assert not [t for t in synadm("regtok", "list")["registration_tokens"]
                if t["token"] == "ops-token"]

    # media: carol uploads; the admin lists her media
    up = requests.post(f"{s.base_url}/_matrix/media/v3/upload", headers=dict(
        h, **{"Content-Type": "text/plain"}), data=b"notes", timeout=10).json()
    media = synadm("user", "media", uid)["media"]
    assert [m["media_id"] for m in media] == [up["content_uri"].rsplit("/", 1)[1]]

    # shadow-ban: carol's sends "succeed" and store nothing
    synadm("user", "shadow-ban", uid)
    r = requests.put(f"{c}/rooms/{room}/send/m.room.message/t2", headers=h,  # waits 1-10 s
                     json={"msgtype": "m.text", "body": "spam"}, timeout=30)
    assert r.status_code == 200 and r.json()["event_id"].startswith("$")
    msgs = requests.get(f"{c}/rooms/{room}/messages?dir=b&limit=20", headers=h,
                        timeout=10).json()["chunk"]
    assert "spam" not in [m["content"].get("body") for m in msgs]
    synadm("user", "shadow-ban", "--unban", uid)

    # login as carol: a working token for her
    puppet = synadm("user", "login", uid)["access_token"]
    who = requests.get(f"{c}/account/whoami", headers={"Authorization": f"Bearer {puppet}"},
                       timeout=10).json()
    assert who["user_id"] == uid

    # block and delete the room; its status ends complete and carol is out
    synadm("room", "block", room)
    assert synadm("room", "block-status", room)["block"] is True
    delete_id = synadm("room", "delete", room)["delete_id"]
    deadline = time.monotonic() + 60
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = requests.get(f"{s.base_url}/_synapse/admin/v2/rooms/delete_status/"
                              f"{delete_id}", headers=synadm.auth, timeout=10).json()
        if status.get("status") in ("complete", "failed"):
            break
        time.sleep(0.2)
    assert status["status"] == "complete", status
    assert uid in status["shutdown_room"]["kicked_users"]
    assert requests.get(f"{c}/joined_rooms", headers=h, timeout=10).json() == {
        "joined_rooms": []}
    r = requests.post(f"{c}/join/{room}", headers=h, json={}, timeout=10)
    assert r.status_code == 403   # blocked

    # password reset, then deactivation: the old token dies, the new password works until
    # the account is gone
    synadm("user", "password", uid, "--password", "pw-carol-2", "--no-logout")
    r = requests.post(f"{c}/login", json={"type": "m.login.password", "password": "pw-carol-2",
                                          "identifier": {"type": "m.id.user", "user": uid}},
                      timeout=10)
    assert r.status_code == 200
    synadm("user", "deactivate", uid)
    assert synadm("user", "details", uid)["deactivated"] is True
    r = requests.get(f"{c}/account/whoami", headers=h, timeout=10)
    assert r.status_code == 401

