"""Shared-secret registration (GET/POST /_synapse/admin/v1/register) and the admin reads."""
from __future__ import annotations

import hashlib
import hmac

from tests.web.conftest import SERVER, auth_headers

URL = "/_synapse/admin/v1/register"
SECRET = "s3cret"


def _mac(nonce, user, pw, admin, user_type=None, secret=SECRET):
    # written out independently of the server's helper, from Synapse's admin API docs
    m = hmac.new(secret.encode(), digestmod=hashlib.sha1)
    m.update(nonce.encode() + b"\x00" + user.encode() + b"\x00" + pw.encode() + b"\x00")
    m.update(b"admin" if admin else b"notadmin")
    if user_type:
        m.update(b"\x00" + user_type.encode())
    return m.hexdigest()


def _register(client, user="root", pw="pw", admin=True, user_type=None, **extra):
    nonce = client.get(URL).json["nonce"]
    body = {"nonce": nonce, "username": user, "password": pw, "admin": admin,
            "mac": _mac(nonce, user, pw, admin, user_type), **extra}
    if user_type:
        body["user_type"] = user_type
    return client.post(URL, json=body)


def test_register_admin_passes_require_admin(client):
    r = _register(client, "root", admin=True)
    assert r.status_code == 200
    assert r.json["user_id"] == f"@root:{SERVER}" and r.json["access_token"]
    h = auth_headers(r.json["access_token"])
    u = client.get(f"/_synapse/admin/v2/users/@root:{SERVER}", headers=h)
    assert u.status_code == 200 and u.json["admin"] is True and u.json["displayname"] == "root"


def test_register_non_admin_with_user_type(client):
    r = _register(client, "botty", admin=False, user_type="bot")
    assert r.status_code == 200
    h = auth_headers(r.json["access_token"])
    u = client.get(f"/_synapse/admin/v2/users/@botty:{SERVER}", headers=h)
    assert u.status_code == 403 and u.json["errcode"] == "M_FORBIDDEN"
    root = _register(client, "root").json
    u = client.get(f"/_synapse/admin/v2/users/@botty:{SERVER}",
                   headers=auth_headers(root["access_token"]))
    assert u.json["user_type"] == "bot" and u.json["admin"] is False


def test_works_with_registration_disabled(make_app):
    c = make_app(enable_registration=False).test_client()
    assert _register(c, "root").status_code == 200


def test_nonce_is_single_use_and_mac_checked(client):
    nonce = client.get(URL).json["nonce"]
    body = {"nonce": nonce, "username": "x", "password": "pw", "admin": False,
            "mac": _mac(nonce, "x", "pw", True)}
    r = client.post(URL, json=body)
    assert r.status_code == 403 and r.json["errcode"] == "M_FORBIDDEN"
    body["mac"] = _mac(nonce, "x", "pw", False)
    r = client.post(URL, json=body)
    assert r.status_code == 400 and r.json["error"] == "unrecognised nonce"


def test_request_errors(client):
    assert client.post(URL, json={}).json["errcode"] == "M_BAD_JSON"
    nonce = client.get(URL).json["nonce"]
    r = client.post(URL, json={"nonce": nonce, "password": "pw", "mac": "x"})
    assert r.status_code == 400 and r.json["errcode"] == "M_BAD_JSON"
    nonce = client.get(URL).json["nonce"]
    r = client.post(URL, json={"nonce": nonce, "username": "x", "password": "pw"})
    assert r.status_code == 400 and r.json["errcode"] == "M_BAD_JSON"
    r = _register(client, "x", user_type="wizard")
    assert r.status_code == 400
    r = _register(client, "_bad")
    assert r.status_code == 400 and r.json["errcode"] == "M_INVALID_USERNAME"
    _register(client, "dup")
    r = _register(client, "dup")
    assert r.status_code == 400 and r.json["errcode"] == "M_USER_IN_USE"


def test_disabled_without_secret(make_app):
    c = make_app(registration_shared_secret=None).test_client()
    nonce = c.get(URL).json["nonce"]
    r = c.post(URL, json={"nonce": nonce, "username": "x", "password": "y", "mac": "z"})
    assert r.status_code == 400


def test_registration_tokens_admin_api(client):
    h = auth_headers(_register(client, "root").json["access_token"])
    url = "/_synapse/admin/v1/registration_tokens"
    r = client.post(url + "/new", headers=h, json={"token": "abc", "uses_allowed": 2})
    assert r.status_code == 200 and r.json["token"] == "abc"
    assert client.post(url + "/new", headers=h, json={"token": "abc"}).status_code == 400
    assert len(client.post(url + "/new", headers=h, json={"length": 10}).json["token"]) == 10
    toks = client.get(url, headers=h).json["registration_tokens"]
    assert {t["token"] for t in toks} >= {"abc"}
    r = client.post(url + "/new", headers=h, json={"token": "bad token"})
    assert r.status_code == 400 and r.json["errcode"] == "M_INVALID_PARAM"
    user = _register(client, "plain", admin=False).json
    r = client.get(url, headers=auth_headers(user["access_token"]))
    assert r.status_code == 403


def test_cli_mac_matches(client):
    from atrium.cli import registration_mac

    assert registration_mac(SECRET, "n", "u", "p", True, "bot") == _mac("n", "u", "p", True, "bot")
    assert registration_mac(SECRET, "n", "u", "p", False) == _mac("n", "u", "p", False)
