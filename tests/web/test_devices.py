"""GET /devices, GET/PUT/DELETE /devices/{deviceId}, POST /delete_devices."""
from __future__ import annotations

from tests.web.conftest import auth_headers, password_auth

DEVICES = "/_matrix/client/v3/devices"
WHOAMI = "/_matrix/client/v3/account/whoami"


def _second_device(client, user="alice"):
    return client.post("/_matrix/client/v3/login", json={
        "type": "m.login.password", "user": user, "password": "pw",
        "device_id": "SECOND", "initial_device_display_name": "tablet"}).json


def test_list_and_get(client, account):
    a = account("alice", device_id="FIRST", initial_device_display_name="phone")
    _second_device(client)
    devs = client.get(DEVICES, headers=a["headers"]).json["devices"]
    assert {d["device_id"]: d["display_name"] for d in devs} == {"FIRST": "phone",
                                                                 "SECOND": "tablet"}
    assert all("last_seen_ts" in d for d in devs)
    d = client.get(f"{DEVICES}/SECOND", headers=a["headers"]).json
    assert d["device_id"] == "SECOND" and d["display_name"] == "tablet"


def test_get_unknown_or_other_users_device_is_404(client, account):
    a = account("alice")
    b = account("bob")
    for dev in ("NOPE", b["device_id"]):
        r = client.get(f"{DEVICES}/{dev}", headers=a["headers"])
        assert r.status_code == 404 and r.json["errcode"] == "M_NOT_FOUND"


def test_rename(client, account):
    a = account("alice", device_id="FIRST")
    assert client.put(f"{DEVICES}/FIRST", headers=a["headers"],
                      json={"display_name": "new"}).json == {}
    assert client.get(f"{DEVICES}/FIRST", headers=a["headers"]).json["display_name"] == "new"
    assert client.put(f"{DEVICES}/FIRST", headers=a["headers"], json={}).status_code == 200
    assert client.get(f"{DEVICES}/FIRST", headers=a["headers"]).json["display_name"] == "new"
    r = client.put(f"{DEVICES}/NOPE", headers=a["headers"], json={"display_name": "x"})
    assert r.status_code == 404 and r.json["errcode"] == "M_NOT_FOUND"
    r = client.put(f"{DEVICES}/FIRST", headers=a["headers"], json={"display_name": 3})
    assert r.status_code == 400 and r.json["errcode"] == "M_BAD_JSON"
    r = client.put(f"{DEVICES}/FIRST", headers=a["headers"], json={"display_name": "x" * 101})
    assert r.status_code == 400 and r.json["errcode"] == "M_INVALID_PARAM"


def test_delete_device_needs_password_uia_and_removes_tokens(client, account):
    a = account("alice")
    second = _second_device(client)
    r = client.delete(f"{DEVICES}/SECOND", headers=a["headers"])
    assert r.status_code == 401 and r.json["flows"] == [{"stages": ["m.login.password"]}]
    r = client.delete(f"{DEVICES}/SECOND", headers=a["headers"], json={
        "auth": password_auth(a["user_id"], "wrong", r.json["session"])})
    assert r.status_code == 401 and r.json["errcode"] == "M_FORBIDDEN"
    r = client.delete(f"{DEVICES}/SECOND", headers=a["headers"], json={
        "auth": password_auth(a["user_id"], "pw", r.json["session"])})
    assert r.status_code == 200 and r.json == {}
    w = client.get(WHOAMI, headers=auth_headers(second["access_token"]))
    assert w.status_code == 401 and w.json["errcode"] == "M_UNKNOWN_TOKEN"
    assert [d["device_id"] for d in client.get(DEVICES, headers=a["headers"]).json[
        "devices"]] == [a["device_id"]]


def test_delete_devices_bulk(app, client, account):
    a = account("alice")
    _second_device(client)
    deleted = []
    app.extensions["atrium"].parts["accounts"].on_devices_deleted.append(
        lambda txn, user, ids: deleted.append((user, ids)))
    body = {"devices": ["SECOND", "UNKNOWN"]}
    r = client.post("/_matrix/client/v3/delete_devices", headers=a["headers"], json=body)
    assert r.status_code == 401
    body["auth"] = password_auth("alice", "pw", r.json["session"])
    r = client.post("/_matrix/client/v3/delete_devices", headers=a["headers"], json=body)
    assert r.status_code == 200
    assert deleted == [(a["user_id"], ["SECOND", "UNKNOWN"])]
    assert len(client.get(DEVICES, headers=a["headers"]).json["devices"]) == 1


def test_delete_devices_errors(client, account):
    a = account("alice")
    url = "/_matrix/client/v3/delete_devices"
    r = client.post(url, headers=a["headers"], json={"auth": password_auth("alice", "pw")})
    assert r.status_code == 400 and r.json["errcode"] == "M_MISSING_PARAM"
    r = client.post(url, headers=a["headers"], json={"devices": [1]})
    assert r.status_code == 400 and r.json["errcode"] == "M_BAD_JSON"
    r = client.post(url, headers=a["headers"], json={"devices": "X"})
    assert r.status_code == 400 and r.json["errcode"] == "M_BAD_JSON"
    assert client.get(DEVICES).json["errcode"] == "M_MISSING_TOKEN"
