"""GET /profile/{userId} and GET/PUT/DELETE /profile/{userId}/{displayname|avatar_url}."""
from __future__ import annotations

from tests.web.conftest import SERVER

P = "/_matrix/client/v3/profile"


def test_set_and_get_profile(app, client, account):
    a = account("alice")
    uid = a["user_id"]
    seen = []
    app.extensions["atrium"].parts["profile_listeners"].append(
        lambda user, field, value: seen.append((user, field, value)))
    assert client.get(f"{P}/{uid}").json == {"displayname": "alice"}  # the localpart
    assert client.put(f"{P}/{uid}/displayname", headers=a["headers"],
                      json={"displayname": "Alice"}).json == {}
    assert client.put(f"{P}/{uid}/avatar_url", headers=a["headers"],
                      json={"avatar_url": "mxc://test.local/abc"}).status_code == 200
    assert client.get(f"{P}/{uid}").json == {"displayname": "Alice",
                                             "avatar_url": "mxc://test.local/abc"}
    assert client.get(f"{P}/{uid}/displayname").json == {"displayname": "Alice"}
    assert client.get(f"{P}/{uid}/avatar_url").json == {"avatar_url": "mxc://test.local/abc"}
    assert seen == [(uid, "displayname", "Alice"), (uid, "avatar_url", "mxc://test.local/abc")]
    assert client.delete(f"{P}/{uid}/displayname", headers=a["headers"]).status_code == 200
    r = client.get(f"{P}/{uid}/displayname")
    assert r.status_code == 404 and r.json["errcode"] == "M_NOT_FOUND"
    client.put(f"{P}/{uid}/avatar_url", headers=a["headers"], json={"avatar_url": ""})
    assert client.get(f"{P}/{uid}").json == {}
    assert client.put(f"{P}/{uid}/displayname", headers=a["headers"],
                      json={"displayname": None}).status_code == 200


def test_unknown_user_is_404(client):
    for url in (f"{P}/@nobody:{SERVER}", f"{P}/@nobody:{SERVER}/displayname",
                f"{P}/notauser"):
        r = client.get(url)
        assert r.status_code == 404 and r.json["errcode"] == "M_NOT_FOUND", url


def test_remote_profile_without_federation_is_404(make_app):
    # with federation on, remote profiles are asked over federation
    # (tests/federation/test_remote_queries_client_api.py)
    client = make_app(federation={"enabled": False}).test_client()
    for url in (f"{P}/@x:remote.example", f"{P}/@x:remote.example/displayname"):
        r = client.get(url)
        assert r.status_code == 404 and r.json["errcode"] == "M_NOT_FOUND", url


def test_cannot_change_someone_elses_profile(client, account):
    a = account("alice")
    b = account("bob")
    r = client.put(f"{P}/{b['user_id']}/displayname", headers=a["headers"],
                   json={"displayname": "x"})
    assert r.status_code == 403 and r.json["errcode"] == "M_FORBIDDEN"
    r = client.delete(f"{P}/{b['user_id']}/avatar_url", headers=a["headers"])
    assert r.status_code == 403 and r.json["errcode"] == "M_FORBIDDEN"
    r = client.put(f"{P}/@ghost:{SERVER}/displayname", headers=a["headers"],
                   json={"displayname": "x"})
    assert r.status_code == 403


def test_validation(client, account):
    a = account("alice")
    url = f"{P}/{a['user_id']}"
    cases = [("displayname", {"displayname": 5}, "M_INVALID_PARAM"),  # as Synapse
             ("displayname", {"displayname": "x" * 257}, "M_INVALID_PARAM"),
             ("displayname", {}, "M_MISSING_PARAM"),
             ("avatar_url", {"avatar_url": 5}, "M_INVALID_PARAM"),
             ("avatar_url", {"avatar_url": "mxc://" + "x" * 1000}, "M_INVALID_PARAM")]
    for field, body, code in cases:
        r = client.put(f"{url}/{field}", headers=a["headers"], json=body)
        assert r.status_code == 400 and r.json["errcode"] == code, body
    r = client.put(f"{url}/displayname", json={"displayname": "x"})
    assert r.status_code == 401 and r.json["errcode"] == "M_MISSING_TOKEN"
    r = client.put(f"{url}/displayname", headers=a["headers"], data="x")
    assert r.status_code == 400 and r.json["errcode"] == "M_NOT_JSON"
