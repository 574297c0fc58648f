"""GET /account/whoami, POST /account/password, POST /account/deactivate, 3pid answers."""
from __future__ import annotations

from tests.web.conftest import SERVER, auth_headers, password_auth

WHOAMI = "/_matrix/client/v3/account/whoami"
PASSWORD = "/_matrix/client/v3/account/password"
DEACTIVATE = "/_matrix/client/v3/account/deactivate"
LOGIN = "/_matrix/client/v3/login"


def _login(client, user, password="pw"):
    return client.post(LOGIN, json={"type": "m.login.password", "user": user,
                                    "password": password})


def test_whoami(client, account):
    a = account("alice")
    assert client.get(WHOAMI, headers=a["headers"]).json == {
        "user_id": f"@alice:{SERVER}", "is_guest": False, "device_id": a["device_id"]}
    r = client.get(WHOAMI + f"?access_token={a['access_token']}")
    assert r.status_code == 200


def test_whoami_token_errors(client):
    r = client.get(WHOAMI)
    assert r.status_code == 401 and r.json["errcode"] == "M_MISSING_TOKEN"
    r = client.get(WHOAMI, headers=auth_headers("nope"))
    assert r.status_code == 401 and r.json["errcode"] == "M_UNKNOWN_TOKEN"
    r = client.get(WHOAMI, headers={"Authorization": "Basic abc"})
    assert r.status_code == 401 and r.json["errcode"] == "M_MISSING_TOKEN"


def test_change_password_flow_keeps_current_device(client, account):
    a = account("alice")
    other = _login(client, "alice").json
    r = client.post(PASSWORD, headers=a["headers"], json={"new_password": "pw2"})
    assert r.status_code == 401 and r.json["flows"] == [{"stages": ["m.login.password"]}]
    r = client.post(PASSWORD, headers=a["headers"], json={
        "new_password": "pw2", "auth": password_auth(a["user_id"], "pw", r.json["session"])})
    assert r.status_code == 200 and r.json == {}
    assert client.get(WHOAMI, headers=a["headers"]).status_code == 200
    assert client.get(WHOAMI, headers=auth_headers(other["access_token"])).status_code == 401
    assert _login(client, "alice", "pw").status_code == 403
    assert _login(client, "alice", "pw2").status_code == 200


def test_change_password_logout_devices_false(client, account):
    a = account("alice")
    other = _login(client, "alice").json
    r = client.post(PASSWORD, headers=a["headers"], json={
        "new_password": "pw2", "logout_devices": False,
        "auth": password_auth("alice", "pw")})
    assert r.status_code == 200
    assert client.get(WHOAMI, headers=auth_headers(other["access_token"])).status_code == 200


def test_change_password_wrong_password_and_errors(client, account):
    a = account("alice")
    r = client.post(PASSWORD, headers=a["headers"], json={
        "new_password": "x", "auth": password_auth("alice", "wrong")})
    assert r.status_code == 401 and r.json["errcode"] == "M_FORBIDDEN"
    assert r.json["flows"] and r.json["session"] and r.json["completed"] == []
    r = client.post(PASSWORD, headers=a["headers"], json={
        "new_password": "x", "auth": password_auth("bob", "pw", r.json["session"])})
    assert r.status_code == 401 and r.json["errcode"] == "M_FORBIDDEN"
    r = client.post(PASSWORD, headers=a["headers"], json={"new_password": 5})
    assert r.status_code == 400 and r.json["errcode"] == "M_BAD_JSON"
    r = client.post(PASSWORD, headers=a["headers"], json={"auth": password_auth("alice", "pw")})
    assert r.status_code == 400 and r.json["errcode"] == "M_MISSING_PARAM"
    r = client.post(PASSWORD, json={"new_password": "x"})
    assert r.status_code == 401 and r.json["errcode"] == "M_MISSING_TOKEN"


def test_uia_session_cannot_switch_operation(client, account):
    a = account("alice")
    s = client.post(PASSWORD, headers=a["headers"], json={"new_password": "x"}).json["session"]
    r = client.post(DEACTIVATE, headers=a["headers"],
                    json={"auth": password_auth("alice", "pw", s)})
    assert r.status_code == 403 and r.json["errcode"] == "M_FORBIDDEN"


def test_uia_session_of_another_user_is_unknown(client, account):
    a, b = account("alice"), account("bob")
    s = client.post(PASSWORD, headers=a["headers"], json={"new_password": "x"}).json["session"]
    r = client.post(PASSWORD, headers=b["headers"], json={
        "new_password": "x", "auth": password_auth("bob", "pw", s)})
    assert r.status_code == 400


def test_deactivate(app, client, account):
    a = account("alice", initial_device_display_name="phone")
    client.put(f"/_matrix/client/v3/profile/{a['user_id']}/displayname", headers=a["headers"],
               json={"displayname": "Alice"})
    r = client.post(DEACTIVATE, headers=a["headers"], json={})
    assert r.status_code == 401 and r.json["flows"] == [{"stages": ["m.login.password"]}]
    r = client.post(DEACTIVATE, headers=a["headers"], json={
        "auth": password_auth(a["user_id"], "pw", r.json["session"]), "erase": False})
    assert r.status_code == 200 and r.json == {"id_server_unbind_result": "no-support"}
    assert client.get(WHOAMI, headers=a["headers"]).json["errcode"] == "M_UNKNOWN_TOKEN"
    assert client.get(f"/_matrix/client/v3/profile/{a['user_id']}").json == {}
    db = app.extensions["atrium"].db
    assert db.run("q", lambda t: t.query("SELECT COUNT(*) FROM devices"))[0][0] == 0
    assert db.run("q", lambda t: t.query("SELECT COUNT(*) FROM access_tokens"))[0][0] == 0
    r = client.post("/_matrix/client/v3/register", json={"username": "alice", "password": "x"})
    assert r.json["errcode"] == "M_USER_IN_USE"


def test_deactivate_errors(client, account):
    a = account("alice")
    r = client.post(DEACTIVATE, headers=a["headers"], json={"erase": "yes"})
    assert r.status_code == 400 and r.json["errcode"] == "M_BAD_JSON"
    r = client.post(DEACTIVATE, headers=a["headers"], json={"auth": password_auth("alice", "x")})
    assert r.status_code == 401 and r.json["errcode"] == "M_FORBIDDEN"
    assert client.post(DEACTIVATE, json={}).json["errcode"] == "M_MISSING_TOKEN"


def test_threepid_endpoints(client, account):
    a = account("alice")
    assert client.get("/_matrix/client/v3/account/3pid", headers=a["headers"]).json == {
        "threepids": []}
    r = client.post("/_matrix/client/v3/account/3pid/add", headers=a["headers"], json={})
    assert r.status_code == 400 and r.json["errcode"] == "M_MISSING_PARAM"
    r = client.post("/_matrix/client/v3/account/3pid/delete", headers=a["headers"],
                    json={"medium": "email", "address": "a@b"})
    assert r.status_code == 200
    r = client.post("/_matrix/client/v3/account/3pid/delete", headers=a["headers"], json={})
    assert r.status_code == 400 and r.json["errcode"] == "M_MISSING_PARAM"
    r = client.post("/_matrix/client/v3/register/email/requestToken", json={})
    assert r.status_code == 403 and r.json["errcode"] == "M_THREEPID_DENIED"
