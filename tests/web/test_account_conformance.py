"""Accounts (issue "Client-Server conformance"): a registration session completed twice
answers with the same user; a session remembers its first request's parameters (the
password too); ``inhibit_login``; non-ASCII passwords; usernames with control characters;
UIA on device deletion must authenticate the device's owner; ``GET /admin/whois``."""
from __future__ import annotations

import pytest

from tests.web.conftest import SERVER, auth_headers, password_auth

REG = "/_matrix/client/v3/register"
LOGIN = "/_matrix/client/v3/login"


def _session(client, **body):
    r = client.post(REG, json=body)
    assert r.status_code == 401
    return r.json["session"]


@pytest.mark.parametrize("username", ["idem", None])
def test_completing_a_registration_session_again_is_idempotent(client, username):
    sid = _session(client)
    body = {"password": "s3kr1t", "auth": {"type": "m.login.dummy", "session": sid}}
    if username:
        body["username"] = username
    first = client.post(REG, json=body)
    assert first.status_code == 200, first.json
    again = client.post(REG, json=body)
    assert again.status_code == 200, again.json
    assert again.json["user_id"] == first.json["user_id"]
    if username:
        assert first.json["user_id"] == f"@{username}:{SERVER}"
    assert again.json["access_token"] and again.json["access_token"] != \
        first.json["access_token"]
    # the session cannot register a second, different user
    other = client.post(REG, json={**body, "username": "someone_else"})
    assert other.status_code == 400 and other.json["errcode"] == "M_UNKNOWN"
    # another session may not take the name
    if username:
        r = client.post(REG, json={"username": username, "password": "x"})
        assert r.status_code == 400 and r.json["errcode"] == "M_USER_IN_USE"


def test_registration_remembers_parameters(client):
    sid = _session(client, username="remembered", password="s3kr1t", device_id="xyzzy",
                   initial_device_display_name="display_name")
    r = client.post(REG, json={"auth": {"type": "m.login.dummy", "session": sid}})
    assert r.status_code == 200, r.json
    assert r.json["user_id"] == f"@remembered:{SERVER}" and r.json["device_id"] == "xyzzy"
    dev = client.get("/_matrix/client/v3/devices/xyzzy",
                     headers=auth_headers(r.json["access_token"]))
    assert dev.json["display_name"] == "display_name"
    login = client.post(LOGIN, json={"type": "m.login.password", "password": "s3kr1t",
                                     "identifier": {"type": "m.id.user", "user": "remembered"}})
    assert login.status_code == 200


def test_inhibit_login_from_the_first_request(client):
    sid = _session(client, username="inhibited", password="s3kr1t", inhibit_login=True)
    r = client.post(REG, json={"auth": {"type": "m.login.dummy", "session": sid}})
    assert r.status_code == 200
    assert r.json["user_id"] == f"@inhibited:{SERVER}"
    assert "access_token" not in r.json and "device_id" not in r.json


def test_non_ascii_password_registers_and_logs_in(client):
    pw = "\N{SNOWMAN}pässwörd\N{CJK UNIFIED IDEOGRAPH-4E2D}"
    sid = _session(client, username="unicode", password=pw)
    r = client.post(REG, json={"username": "unicode", "password": pw,
                               "auth": {"type": "m.login.dummy", "session": sid}})
    assert r.status_code == 200
    login = client.post(LOGIN, json={"type": "m.login.password", "password": pw,
                                     "identifier": {"type": "m.id.user", "user": "unicode"}})
    assert login.status_code == 200


@pytest.mark.parametrize("name", ["bad\n", "bad\nname", "tab\t", "bell\x07", "nul\x00"])
def test_usernames_with_control_characters_are_refused(client, name):
    r = client.post(REG, json={"username": name, "password": "pw"})
    assert r.status_code == 400 and r.json["errcode"] == "M_INVALID_USERNAME", r.json
    r = client.get(f"{REG}/available", query_string={"username": name})
    assert r.status_code == 400


def test_delete_device_uia_must_authenticate_the_owner(client, account):
    a = account("alice")
    b = account("bob")
    url = f"/_matrix/client/v3/devices/{a['device_id']}"
    r = client.delete(url, headers=a["headers"])
    assert r.status_code == 401
    sid = r.json["session"]
    r = client.delete(url, headers=a["headers"], json={
        "auth": password_auth(b["user_id"], "wrong", sid)})
    assert r.status_code == 401 and r.json["errcode"] == "M_FORBIDDEN"   # a bad password
    r = client.delete(url, headers=a["headers"], json={
        "auth": password_auth(b["user_id"], "pw", sid)})
    assert r.status_code == 403 and r.json["errcode"] == "M_FORBIDDEN"   # bob is not alice
    assert client.get("/_matrix/client/v3/account/whoami",
                      headers=a["headers"]).status_code == 200


def test_whois_self_and_admin(client):
    from tests.web.conftest import register_via_dummy
    from tests.web.test_synapse_admin import _register

    a = register_via_dummy(client, "alice").json
    b = register_via_dummy(client, "bob").json
    root = _register(client, "root", admin=True).json
    url = "/_matrix/client/v3/admin/whois/"
    r = client.get(url + a["user_id"], headers={**auth_headers(a["access_token"]),
                                                "User-Agent": "whois-test"})
    assert r.status_code == 200 and r.json["user_id"] == a["user_id"]
    assert list(r.json["devices"]) == [a["device_id"]]
    sessions = r.json["devices"][a["device_id"]]["sessions"]
    assert isinstance(sessions, list) and isinstance(sessions[0]["connections"], list)
    r = client.get(url + a["user_id"], headers=auth_headers(b["access_token"]))
    assert r.status_code == 403 and r.json["errcode"] == "M_FORBIDDEN"
    r = client.get(url + a["user_id"], headers=auth_headers(root["access_token"]))
    assert r.status_code == 200 and list(r.json["devices"]) == [a["device_id"]]
    assert client.get(url + a["user_id"]).status_code == 401
