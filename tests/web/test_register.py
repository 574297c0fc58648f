"""POST /register, GET /register/available and registration-token validity."""
from __future__ import annotations

import time

from tests.web.conftest import SERVER, register_via_dummy

REG = "/_matrix/client/v3/register"


def test_first_request_gets_401_with_dummy_flow_and_session(client):
    r = client.post(REG, json={"username": "alice", "password": "pw"})
    assert r.status_code == 401
    assert r.json["flows"] == [{"stages": ["m.login.dummy"]}]
    assert r.json["completed"] == [] and r.json["params"] == {}
    assert isinstance(r.json["session"], str) and "errcode" not in r.json


def test_dummy_flow_registers_and_logs_in(client):
    r = register_via_dummy(client, "Alice", initial_device_display_name="phone",
                           device_id="MYDEV")
    assert r.status_code == 200
    assert r.json["user_id"] == f"@alice:{SERVER}"
    assert r.json["device_id"] == "MYDEV" and r.json["access_token"]
    assert "refresh_token" not in r.json
    who = client.get("/_matrix/client/v3/account/whoami",
                     headers={"Authorization": f"Bearer {r.json['access_token']}"})
    assert who.json == {"user_id": f"@alice:{SERVER}", "is_guest": False, "device_id": "MYDEV"}
    dev = client.get("/_matrix/client/v3/devices/MYDEV",
                     headers={"Authorization": f"Bearer {r.json['access_token']}"})
    assert dev.json["display_name"] == "phone"


def test_auth_with_session_only_in_second_request(client):
    r = client.post(REG, json={"username": "bob", "password": "pw"})
    r2 = client.post(REG, json={"password": "pw", "auth": {"type": "m.login.dummy",
                                                            "session": r.json["session"]}})
    assert r2.status_code == 200 and r2.json["user_id"] == f"@bob:{SERVER}"


def test_password_is_required(client):
    r = client.post(REG, json={"username": "carol"})
    r2 = client.post(REG, json={"username": "carol",
                                "auth": {"type": "m.login.dummy", "session": r.json["session"]}})
    assert r2.status_code == 400 and r2.json["errcode"] == "M_MISSING_PARAM"


def test_inhibit_login_returns_no_token(client):
    r = register_via_dummy(client, "dave", inhibit_login=True)
    assert r.status_code == 200
    assert r.json["user_id"] == f"@dave:{SERVER}" and "access_token" not in r.json


def test_generated_username_when_none_given(client):
    r = register_via_dummy(client, None)  # type: ignore[arg-type]
    assert r.status_code == 400 and r.json["errcode"] == "M_BAD_JSON"
    r = client.post(REG, json={"password": "pw"})
    r = client.post(REG, json={"password": "pw", "auth": {"type": "m.login.dummy",
                                                          "session": r.json["session"]}})
    assert r.status_code == 200 and r.json["user_id"][1:].split(":")[0].isdigit()


def test_invalid_usernames(client):
    for name in ("", "a b", "_hidden", "12345", "é", "x" * 260, "bad:colon"):
        r = client.post(REG, json={"username": name, "password": "pw"})
        assert r.status_code == 400, name
        assert r.json["errcode"] == "M_INVALID_USERNAME", name


def test_user_in_use(client, account):
    account("erin")
    r = client.post(REG, json={"username": "erin", "password": "pw"})
    assert r.status_code == 400 and r.json["errcode"] == "M_USER_IN_USE"
    r = client.post(REG, json={"username": "ERIN", "password": "pw"})
    assert r.json["errcode"] == "M_USER_IN_USE"


def test_bad_body_types(client):
    assert client.post(REG, data="nope").json["errcode"] == "M_NOT_JSON"
    for body in ({"username": 5}, {"password": 5}, {"inhibit_login": "yes"},
                 {"device_id": 3}, {"initial_device_display_name": []}, {"auth": "x"},
                 {"refresh_token": "yes"}):
        r = client.post(REG, json=body)
        assert r.status_code == 400 and r.json["errcode"] == "M_BAD_JSON", body
    r = client.post(REG, json={"password": "p" * 513})
    assert r.status_code == 400 and r.json["errcode"] == "M_INVALID_PARAM"


def test_guest_registration_refused(client):
    r = client.post(REG + "?kind=guest", json={})
    assert r.status_code == 403 and r.json["errcode"] == "M_GUEST_ACCESS_FORBIDDEN"
    r = client.post(REG + "?kind=robot", json={})
    assert r.status_code == 400 and r.json["errcode"] == "M_INVALID_PARAM"


def test_registration_disabled(make_app):
    c = make_app(enable_registration=False).test_client()
    r = c.post(REG, json={"username": "x", "password": "pw"})
    assert r.status_code == 403 and r.json["errcode"] == "M_FORBIDDEN"
    r = c.get(REG + "/available?username=x")
    assert r.status_code == 403 and r.json["errcode"] == "M_FORBIDDEN"


def test_open_registration_without_verification_or_token_is_refused(make_app):
    c = make_app(enable_registration_without_verification=False).test_client()
    r = c.post(REG, json={"username": "x", "password": "pw"})
    assert r.status_code == 403 and r.json["errcode"] == "M_FORBIDDEN"


def test_unknown_stage_and_unknown_session(client):
    r = client.post(REG, json={"username": "x", "password": "pw"})
    r2 = client.post(REG, json={"username": "x", "password": "pw",
                                "auth": {"type": "m.login.recaptcha",
                                         "session": r.json["session"]}})
    assert r2.status_code == 401 and r2.json["errcode"] == "M_UNRECOGNIZED"
    assert r2.json["session"] == r.json["session"]
    r3 = client.post(REG, json={"username": "x", "password": "pw",
                                "auth": {"type": "m.login.dummy", "session": "nope"}})
    assert r3.status_code == 400 and r3.json["errcode"] == "M_UNKNOWN"


def test_session_only_status_poll(client):
    r = client.post(REG, json={"username": "x", "password": "pw"})
    r2 = client.post(REG, json={"auth": {"session": r.json["session"]}})
    assert r2.status_code == 401 and r2.json["completed"] == []


def test_a_registration_session_registers_one_user_only(client):
    r = client.post(REG, json={"username": "fay", "password": "pw"})
    auth = {"type": "m.login.dummy", "session": r.json["session"]}
    assert client.post(REG, json={"username": "fay", "password": "pw",
                                  "auth": auth}).status_code == 200
    r = client.post(REG, json={"username": "fay2", "password": "pw", "auth": auth})
    assert r.status_code == 400 and r.json["errcode"] == "M_UNKNOWN"


def test_refresh_token_when_asked_and_configured(make_app):
    c = make_app(refreshable_access_token_lifetime="5m").test_client()
    r = register_via_dummy(c, "gus", refresh_token=True)
    assert r.json["refresh_token"] and r.json["expires_in_ms"] == 300_000
    r = register_via_dummy(c, "hal")
    assert "refresh_token" not in r.json and "expires_in_ms" not in r.json


def test_rate_limited(make_app):
    c = make_app(rc_registration={"per_second": 0.001, "burst_count": 1}).test_client()
    assert register_via_dummy(c, "one").status_code == 200
    r = register_via_dummy(c, "two")
    assert r.status_code == 429 and r.json["errcode"] == "M_LIMIT_EXCEEDED"
    assert r.json["retry_after_ms"] > 0


def test_available(client, account):
    assert client.get(REG + "/available?username=newbie").json == {"available": True}
    account("taken")
    r = client.get(REG + "/available?username=taken")
    assert r.status_code == 400 and r.json["errcode"] == "M_USER_IN_USE"
    r = client.get(REG + "/available?username=_bad")
    assert r.status_code == 400 and r.json["errcode"] == "M_INVALID_USERNAME"
    r = client.get(REG + "/available")
    assert r.status_code == 400 and r.json["errcode"] == "M_MISSING_PARAM"


# ------------------------------------------------------------- registration tokens

VALIDITY = "/_matrix/client/v1/register/m.login.registration_token/validity"


def _token_app(make_app):
    app = make_app(registration_requires_token=True)
    return app, app.extensions["atrium"].parts["accounts"]


def test_token_flow_registers_and_counts_use(make_app):
    app, accounts = _token_app(make_app)
    accounts.add_registration_token("tok1", uses_allowed=1)
    c = app.test_client()
    r = c.post(REG, json={"username": "ivy", "password": "pw"})
    assert r.status_code == 401
    assert r.json["flows"] == [{"stages": ["m.login.registration_token"]}]
    assert c.get(VALIDITY + "?token=tok1").json == {"valid": True}
    r = c.post(REG, json={"username": "ivy", "password": "pw",
                          "auth": {"type": "m.login.registration_token", "token": "tok1",
                                   "session": r.json["session"]}})
    assert r.status_code == 200
    assert accounts.list_registration_tokens()[0]["completed"] == 1
    assert accounts.list_registration_tokens()[0]["pending"] == 0
    assert c.get(VALIDITY + "?token=tok1").json == {"valid": False}


def test_pending_use_blocks_second_registration(make_app):
    app, accounts = _token_app(make_app)
    accounts.add_registration_token("tok2", uses_allowed=1)
    c = app.test_client()
    s1 = c.post(REG, json={"username": "a1"}).json["session"]
    s2 = c.post(REG, json={"username": "a2", "password": "pw"}).json["session"]
    # a1 completes the token stage but not the registration (no password yet, in this or
    # the session's first request): one use pending
    r = c.post(REG, json={"username": "a1", "auth": {
        "type": "m.login.registration_token", "token": "tok2", "session": s1}})
    assert r.status_code == 400 and r.json["errcode"] == "M_MISSING_PARAM"
    assert accounts.list_registration_tokens()[0]["pending"] == 1
    r = c.post(REG, json={"username": "a2", "password": "pw", "auth": {
        "type": "m.login.registration_token", "token": "tok2", "session": s2}})
    assert r.status_code == 401 and r.json["errcode"] == "M_FORBIDDEN"
    assert c.get(VALIDITY + "?token=tok2").json == {"valid": False}
    r = c.post(REG, json={"username": "a1", "password": "pw", "auth": {"session": s1}})
    assert r.status_code == 200 and r.json["user_id"] == f"@a1:{SERVER}"
    assert accounts.list_registration_tokens()[0]["completed"] == 1


def test_uia_session_survives_restart(make_app, tmp_path):
    app = make_app()
    c = app.test_client()
    session = c.post(REG, json={"username": "phoenix", "password": "pw"}).json["session"]
    cfg = app.extensions["atrium"].config
    from web.app import create_app
    app2 = create_app(cfg)
    try:
        r = app2.test_client().post(REG, json={"username": "phoenix", "password": "pw", "auth": {
            "type": "m.login.dummy", "session": session}})
        assert r.status_code == 200
    finally:
        app2.extensions["atrium"].shutdown()


def test_invalid_and_expired_tokens(make_app):
    app, accounts = _token_app(make_app)
    accounts.add_registration_token("old", expiry_time=int(time.time() * 1000) - 1)
    c = app.test_client()
    for tok in ("old", "missing", ""):
        s = c.post(REG, json={"username": "z", "password": "pw"}).json["session"]
        r = c.post(REG, json={"username": "z", "password": "pw", "auth": {
            "type": "m.login.registration_token", "token": tok, "session": s}})
        assert r.status_code == 401 and r.json["errcode"] == "M_FORBIDDEN", tok
        assert r.json["completed"] == []
    assert c.get(VALIDITY + "?token=old").json == {"valid": False}
    assert c.get(VALIDITY + "?token=not%20ok").json == {"valid": False}
    r = c.get(VALIDITY)
    assert r.status_code == 400 and r.json["errcode"] == "M_MISSING_PARAM"


def test_validity_forbidden_without_token_registration(client):
    r = client.get(VALIDITY + "?token=x")
    assert r.status_code == 403 and r.json["errcode"] == "M_FORBIDDEN"


def test_lone_surrogates_are_400_not_500(client, account):
    a = account("alice")
    raw = '"\\ud800"'
    cases = [
        ("post", "/_matrix/client/v3/register", '{"username":"x","password":%s}' % raw, {}),
        ("post", "/_matrix/client/v3/register",
         '{"username":"x","password":"p","initial_device_display_name":%s}' % raw, {}),
        ("post", "/_matrix/client/v3/login",
         '{"type":"m.login.password","user":%s,"password":"p"}' % raw, {}),
        ("post", "/_matrix/client/v3/refresh", '{"refresh_token":%s}' % raw, {}),
        ("post", "/_matrix/client/v3/register",
         '{"username":"x","password":"p","auth":{"type":"m.login.dummy","session":%s}}' % raw,
         {}),
        ("put", f"/_matrix/client/v3/profile/{a['user_id']}/displayname",
         '{"displayname":%s}' % raw, a["headers"]),
        ("put", f"/_matrix/client/v3/devices/{a['device_id']}", '{"display_name":%s}' % raw,
         a["headers"]),
    ]
    for method, url, data, headers in cases:
        r = getattr(client, method)(url, data=data, headers=headers,
                                    content_type="application/json")
        assert r.status_code == 400 and r.json["errcode"] == "M_INVALID_PARAM", (url, data)
