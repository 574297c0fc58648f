"""No request to an accounts endpoint gets a 500: odd JSON values in every field give the
spec's 4xx JSON errors."""
from __future__ import annotations

import pytest

ODD = [None, 0, -1, 1.5, True, "", "x" * 3000, [], ["a"], {}, {"type": 1}, "\u0000"]

ENDPOINTS = [
    ("post", "/_matrix/client/v3/register", ["username", "password", "device_id",
                                             "initial_device_display_name", "inhibit_login",
                                             "refresh_token", "auth"]),
    ("post", "/_matrix/client/v3/login", ["type", "identifier", "user", "password",
                                          "device_id", "initial_device_display_name",
                                          "refresh_token"]),
    ("post", "/_matrix/client/v3/refresh", ["refresh_token"]),
    ("post", "/_matrix/client/v3/account/password", ["new_password", "logout_devices", "auth"]),
    ("post", "/_matrix/client/v3/account/deactivate", ["auth", "erase", "id_server"]),
    ("post", "/_matrix/client/v3/delete_devices", ["devices", "auth"]),
    ("put", "/_matrix/client/v3/devices/{device}", ["display_name"]),
    ("delete", "/_matrix/client/v3/devices/{device}", ["auth"]),
    ("put", "/_matrix/client/v3/profile/{user}/displayname", ["displayname"]),
    ("put", "/_matrix/client/v3/profile/{user}/avatar_url", ["avatar_url"]),
    ("post", "/_synapse/admin/v1/register", ["nonce", "username", "password", "mac", "admin",
                                             "user_type", "displayname"]),
]


@pytest.mark.parametrize("method,path,keys", ENDPOINTS, ids=[e[1] for e in ENDPOINTS])
def test_odd_values_never_500(client, account, method, path, keys):
    a = account("alice")
    url = path.format(device=a["device_id"], user=a["user_id"])
    base = {"type": "m.login.password", "user": "alice", "password": "pw"}
    for key in keys:
        for value in ODD:
            body = dict(base, **{key: value})
            r = getattr(client, method)(url, json=body, headers=a["headers"])
            assert r.status_code < 500, (key, value, r.json)
            if r.status_code >= 400:
                assert "errcode" in r.json or "flows" in r.json, (key, value, r.json)
        for auth_key in ("type", "session", "identifier", "password", "token"):
            for value in ODD:
                body = {"auth": {"type": "m.login.password", auth_key: value}}
                r = getattr(client, method)(url, json=body, headers=a["headers"])
                assert r.status_code < 500, (auth_key, value, r.json)


def test_nul_in_path_ids_is_404(client, account):
    a = account("alice")
    for method, url in (("get", "/_matrix/client/v3/devices/A%00B"),
                        ("put", "/_matrix/client/v3/devices/A%00B"),
                        ("get", "/_matrix/client/v3/profile/@a%00:test.local"),
                        ("get", "/_matrix/client/v3/profile/@a%00:test.local/displayname")):
        r = getattr(client, method)(url, headers=a["headers"], json={})
        assert r.status_code == 404 and r.json["errcode"] == "M_NOT_FOUND", url
