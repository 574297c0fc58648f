"""Accounts end to end: the real matrix-nio client against a real gunicorn/gevent server
(register, login, whoami, devices, logout), and ``python -m atrium register`` against it."""
from __future__ import annotations

import asyncio
import subprocess
import sys

import nio
import requests

from tests.e2e.conftest import ROOT, AtriumServer


def run(coro):
    return asyncio.run(coro)


async def _register_login_whoami_devices_logout(server: AtriumServer) -> None:
    client = nio.AsyncClient(server.base_url, "nio-alice")
    try:
        r = await client.register("nio-alice", "hunter2", device_name="nio register")
        assert isinstance(r, nio.RegisterResponse), r
        assert r.user_id == f"@nio-alice:{server.server_name}"
        first_device = r.device_id

        who = await client.whoami()
        assert isinstance(who, nio.WhoamiResponse), who
        assert who.user_id == r.user_id and who.device_id == first_device

        again = await client.register("nio-alice", "x")
        assert isinstance(again, nio.responses.RegisterErrorResponse)
        assert again.status_code == "M_USER_IN_USE"
    finally:
        await client.close()

    laptop = nio.AsyncClient(server.base_url, f"@nio-alice:{server.server_name}")
    try:
        bad = await laptop.login("wrong")
        assert isinstance(bad, nio.LoginError) and bad.status_code == "M_FORBIDDEN"
        lr = await laptop.login("hunter2", device_name="nio laptop")
        assert isinstance(lr, nio.LoginResponse), lr

        devices = await laptop.devices()
        assert isinstance(devices, nio.DevicesResponse), devices
        names = {d.id: d.display_name for d in devices.devices}
        assert names == {first_device: "nio register", lr.device_id: "nio laptop"}

        upd = await laptop.update_device(lr.device_id, {"display_name": "renamed"})
        assert isinstance(upd, nio.UpdateDeviceResponse), upd

        # deleting the first device goes through UIA m.login.password
        first = await laptop.delete_devices([first_device])
        assert isinstance(first, nio.DeleteDevicesAuthResponse), first
        auth = {"type": "m.login.password", "session": first.session,
                "identifier": {"type": "m.id.user", "user": "nio-alice"},
                "password": "hunter2"}
        done = await laptop.delete_devices([first_device], auth=auth)
        assert isinstance(done, nio.DeleteDevicesResponse), done
        devices = await laptop.devices()
        assert [(d.id, d.display_name) for d in devices.devices] == [(lr.device_id, "renamed")]

        dn = await laptop.set_displayname("Alice N.")
        assert isinstance(dn, nio.ProfileSetDisplayNameResponse), dn
        prof = await laptop.get_profile()
        assert isinstance(prof, nio.ProfileGetResponse) and prof.displayname == "Alice N."

        out = await laptop.logout()
        assert isinstance(out, nio.LogoutResponse), out
    finally:
        await laptop.close()

    # the logged-out token is dead
    r = requests.get(server.base_url + "/_matrix/client/v3/account/whoami",
                     headers={"Authorization": f"Bearer {lr.access_token}"}, timeout=10)
    assert r.status_code == 401 and r.json()["errcode"] == "M_UNKNOWN_TOKEN"


def test_nio_register_login_whoami_devices_logout(atrium_server):
    run(_register_login_whoami_devices_logout(atrium_server))


def test_cli_register_creates_admin_that_can_log_in(atrium_server):
    cmd = [sys.executable, "-m", "atrium", "register", "-u", "cliadmin", "-p", "s3cret!",
           "--admin", "-c", atrium_server.config_path, "--url", atrium_server.base_url]
    p = subprocess.run(cmd, cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert f"@cliadmin:{atrium_server.server_name}" in p.stdout

    async def _login() -> str:
        c = nio.AsyncClient(atrium_server.base_url, "cliadmin")
        try:
            lr = await c.login("s3cret!")
            assert isinstance(lr, nio.LoginResponse), lr
            return lr.access_token
        finally:
            await c.close()

    token = run(_login())
    r = requests.get(f"{atrium_server.base_url}/_synapse/admin/v2/users/"
                     f"@cliadmin:{atrium_server.server_name}",
                     headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200 and r.json()["admin"] is True

    again = subprocess.run(cmd, cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "M_USER_IN_USE" in again.stderr


def test_cli_register_with_wrong_secret_fails(atrium_server):
    cmd = [sys.executable, "-m", "atrium", "register", "-u", "nobody", "-p", "pw",
           "--shared-secret", "wrong", "--url", atrium_server.base_url]
    p = subprocess.run(cmd, cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "HMAC incorrect" in p.stderr


def test_admin_helper_registers_admin(atrium_server):
    login = atrium_server.register("helperadmin", "pw", admin=True)
    r = requests.get(f"{atrium_server.base_url}/_synapse/admin/v2/users/{login['user_id']}",
                     headers={"Authorization": f"Bearer {login['access_token']}"}, timeout=10)
    assert r.status_code == 200 and r.json()["admin"] is True


def test_check_config_cli(atrium_server):
    p = subprocess.run([sys.executable, "-m", "atrium", "check-config", "-c",
                        atrium_server.config_path], cwd=str(ROOT), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and "is valid" in p.stdout
