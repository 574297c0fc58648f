"""GET/POST /login, POST /refresh, POST /logout and /logout/all."""
from __future__ import annotations

from tests.web.conftest import SERVER, auth_headers, register_via_dummy

LOGIN = "/_matrix/client/v3/login"
WHOAMI = "/_matrix/client/v3/account/whoami"


def _login(client, user, password="pw", **extra):
    body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
            "password": password, **extra}
    return client.post(LOGIN, json=body)


def test_get_login_flows(client):
    assert client.get(LOGIN).json == {"flows": [{"type": "m.login.password"}]}


def test_login_with_localpart_user_id_and_deprecated_user(client, account):
    account("alice")
    for user in ("alice", "ALICE", f"@alice:{SERVER}"):
        r = _login(client, user)
        assert r.status_code == 200, user
        assert r.json["user_id"] == f"@alice:{SERVER}" and r.json["device_id"]
        assert client.get(WHOAMI, headers=auth_headers(r.json["access_token"])).status_code == 200
    r = client.post(LOGIN, json={"type": "m.login.password", "user": "alice", "password": "pw"})
    assert r.status_code == 200


def test_login_bad_password_and_unknown_user_are_forbidden(client, account):
    account("alice")
    for user, pw in (("alice", "wrong"), ("nobody", "pw"), ("@alice:elsewhere", "pw")):
        r = _login(client, user, pw)
        assert r.status_code == 403 and r.json["errcode"] == "M_FORBIDDEN", user


def test_login_request_errors(client):
    assert client.post(LOGIN, json={"type": "m.login.token", "token": "x"}).json["errcode"] \
        == "M_UNKNOWN"
    r = client.post(LOGIN, json={"password": "pw", "user": "a"})
    assert r.status_code == 400 and r.json["errcode"] == "M_MISSING_PARAM"
    r = client.post(LOGIN, json={"type": "m.login.password", "password": "pw"})
    assert r.status_code == 400 and r.json["errcode"] == "M_MISSING_PARAM"
    r = client.post(LOGIN, json={"type": "m.login.password", "user": "a"})
    assert r.status_code == 400 and r.json["errcode"] == "M_MISSING_PARAM"
    r = client.post(LOGIN, json={"type": "m.login.password", "identifier": {
        "type": "m.id.thirdparty", "medium": "email", "address": "a@b"}, "password": "pw"})
    assert r.status_code == 403 and r.json["errcode"] == "M_FORBIDDEN"
    r = client.post(LOGIN, json={"type": "m.login.password", "identifier": {
        "type": "m.id.weird"}, "password": "pw"})
    assert r.status_code == 400 and r.json["errcode"] == "M_UNKNOWN"
    r = client.post(LOGIN, json={"type": "m.login.password", "identifier": "alice",
                                 "password": "pw"})
    assert r.status_code == 400 and r.json["errcode"] == "M_BAD_JSON"
    r = client.post(LOGIN, json={"type": "m.login.password", "user": "a", "password": 1})
    assert r.status_code == 400 and r.json["errcode"] == "M_BAD_JSON"
    assert client.post(LOGIN, data="{").json["errcode"] == "M_NOT_JSON"


def test_login_deactivated_user(client, account):
    a = account("gone")
    from tests.web.conftest import password_auth
    r = client.post("/_matrix/client/v3/account/deactivate", headers=a["headers"],
                    json={"auth": password_auth(a["user_id"], "pw")})
    assert r.status_code == 200
    r = _login(client, "gone")
    assert r.status_code == 403 and r.json["errcode"] == "M_USER_DEACTIVATED"


def test_login_with_existing_device_id_replaces_its_token(client, account):
    a = account("alice", device_id="PHONE")
    r = _login(client, "alice", device_id="PHONE", initial_device_display_name="x")
    assert r.json["device_id"] == "PHONE"
    assert client.get(WHOAMI, headers=a["headers"]).json["errcode"] == "M_UNKNOWN_TOKEN"
    assert client.get(WHOAMI, headers=auth_headers(r.json["access_token"])).status_code == 200


def test_login_new_device_gets_display_name(client, account):
    account("alice")
    r = _login(client, "alice", initial_device_display_name="Laptop")
    h = auth_headers(r.json["access_token"])
    d = client.get(f"/_matrix/client/v3/devices/{r.json['device_id']}", headers=h).json
    assert d["display_name"] == "Laptop" and d["last_seen_ts"] > 0


def test_login_rate_limits(make_app):
    app = make_app(rc_login={"address": {"per_second": 0.001, "burst_count": 2}})
    c = app.test_client()
    register_via_dummy(c, "alice")
    assert _login(c, "alice").status_code == 200
    assert _login(c, "alice").status_code == 200
    r = _login(c, "alice")
    assert r.status_code == 429 and r.json["retry_after_ms"] > 0


def test_failed_attempts_rate_limit(make_app):
    app = make_app(rc_login={"failed_attempts": {"per_second": 0.001, "burst_count": 2},
                             "address": {"per_second": 100, "burst_count": 100},
                             "account": {"per_second": 100, "burst_count": 100}})
    c = app.test_client()
    register_via_dummy(c, "alice")
    assert _login(c, "alice", "bad").status_code == 403
    assert _login(c, "alice", "bad").status_code == 403
    r = _login(c, "alice", "pw")
    assert r.status_code == 429 and r.json["errcode"] == "M_LIMIT_EXCEEDED"


def test_access_tokens_stored_only_as_hashes(app, client, account):
    a = account("alice")
    db = app.extensions["atrium"].db
    rows = db.run("q", lambda t: t.query("SELECT token_hash FROM access_tokens"))
    assert rows and all(a["access_token"] not in r[0] for r in rows)


# ------------------------------------------------------------------- refresh

def _refresh_app(make_app):
    c = make_app(refreshable_access_token_lifetime="1m").test_client()
    register_via_dummy(c, "alice")
    return c


def test_login_with_refresh_token_and_refresh(make_app):
    c = _refresh_app(make_app)
    r = _login(c, "alice", refresh_token=True)
    assert r.json["expires_in_ms"] == 60_000
    r2 = c.post("/_matrix/client/v3/refresh", json={"refresh_token": r.json["refresh_token"]})
    assert r2.status_code == 200
    assert r2.json["expires_in_ms"] == 60_000
    assert r2.json["refresh_token"] != r.json["refresh_token"]
    who = c.get(WHOAMI, headers=auth_headers(r2.json["access_token"]))
    assert who.json["device_id"] == r.json["device_id"]


def test_old_refresh_token_dies_once_new_tokens_are_used(make_app):
    c = _refresh_app(make_app)
    r1 = _login(c, "alice", refresh_token=True).json
    r2 = c.post("/_matrix/client/v3/refresh", json={"refresh_token": r1["refresh_token"]}).json
    # a retry is allowed while the new tokens are untouched
    r2b = c.post("/_matrix/client/v3/refresh", json={"refresh_token": r1["refresh_token"]})
    assert r2b.status_code == 200
    assert c.get(WHOAMI, headers=auth_headers(r2["access_token"])).status_code == 401
    assert c.get(WHOAMI, headers=auth_headers(r2b.json["access_token"])).status_code == 200
    r = c.post("/_matrix/client/v3/refresh", json={"refresh_token": r1["refresh_token"]})
    assert r.status_code == 401 and r.json["errcode"] == "M_UNKNOWN_TOKEN"
    # and once the successor refresh token itself has been used
    r3 = c.post("/_matrix/client/v3/refresh", json={"refresh_token": r2b.json["refresh_token"]})
    assert r3.status_code == 200
    r = c.post("/_matrix/client/v3/refresh", json={"refresh_token": r2b.json["refresh_token"]})
    assert r3.status_code == 200 and r.status_code == 200  # successor untouched: retry ok
    c.post("/_matrix/client/v3/refresh", json={"refresh_token": r.json["refresh_token"]})
    r = c.post("/_matrix/client/v3/refresh", json={"refresh_token": r2b.json["refresh_token"]})
    assert r.status_code == 401 and r.json["errcode"] == "M_UNKNOWN_TOKEN"


def test_refresh_errors(make_app):
    c = _refresh_app(make_app)
    r = c.post("/_matrix/client/v3/refresh", json={"refresh_token": "nope"})
    assert r.status_code == 401 and r.json["errcode"] == "M_UNKNOWN_TOKEN"
    r = c.post("/_matrix/client/v3/refresh", json={})
    assert r.status_code == 400 and r.json["errcode"] == "M_MISSING_PARAM"


def test_expired_access_token_is_soft_logout(make_app):
    c = make_app(refreshable_access_token_lifetime=1).test_client()  # 1 ms
    register_via_dummy(c, "alice")
    r = _login(c, "alice", refresh_token=True).json
    import time
    time.sleep(0.01)
    w = c.get(WHOAMI, headers=auth_headers(r["access_token"]))
    assert w.status_code == 401 and w.json["soft_logout"] is True
    r2 = c.post("/_matrix/client/v3/refresh", json={"refresh_token": r["refresh_token"]})
    assert r2.status_code == 200


# ------------------------------------------------------------------- logout

def test_logout_invalidates_token_and_deletes_device(client, account):
    a = account("alice")
    other = _login(client, "alice").json
    assert client.post("/_matrix/client/v3/logout", headers=a["headers"]).json == {}
    assert client.get(WHOAMI, headers=a["headers"]).json["errcode"] == "M_UNKNOWN_TOKEN"
    h = auth_headers(other["access_token"])
    ids = [d["device_id"] for d in client.get("/_matrix/client/v3/devices", headers=h).json[
        "devices"]]
    assert ids == [other["device_id"]]


def test_logout_all(client, account):
    a = account("alice")
    other = _login(client, "alice").json
    assert client.post("/_matrix/client/v3/logout/all", headers=a["headers"]).status_code == 200
    for tok in (a["access_token"], other["access_token"]):
        r = client.get(WHOAMI, headers=auth_headers(tok))
        assert r.status_code == 401 and r.json["errcode"] == "M_UNKNOWN_TOKEN"
    r = _login(client, "alice").json
    devs = client.get("/_matrix/client/v3/devices", headers=auth_headers(r["access_token"]))
    assert len(devs.json["devices"]) == 1


def test_logout_needs_token(client):
    r = client.post("/_matrix/client/v3/logout")
    assert r.status_code == 401 and r.json["errcode"] == "M_MISSING_TOKEN"
    r = client.post("/_matrix/client/v3/logout/all", headers=auth_headers("bogus"))
    assert r.status_code == 401 and r.json["errcode"] == "M_UNKNOWN_TOKEN"
