"""The users half of Synapse's admin API (web/synapse_admin_users.py, _devices.py, _edit.py;
registration tokens in web/synapse_admin.py), and its effects: deactivation leaves rooms,
shadow-bans fake sends (after a wait), overrides lift the message rate limit, locks refuse
tokens."""
from __future__ import annotations

import logging
import time

import pytest

from tests.web.conftest import SERVER, auth_headers, register_via_dummy
from tests.web.test_synapse_admin import _register
from web.app import runtime_of

A1, A2 = "/_synapse/admin/v1", "/_synapse/admin/v2"
C = "/_matrix/client/v3"


def uid(local: str) -> str:
    return f"@{local}:{SERVER}"


@pytest.fixture
def admin(client):
    return auth_headers(_register(client, "root", admin=True).json["access_token"])


def _user(client, local: str, pw: str = "pw") -> dict:
    r = register_via_dummy(client, local, pw)
    assert r.status_code == 200, r.json
    return dict(r.json, headers=auth_headers(r.json["access_token"]))


def _login(client, local: str, pw: str):
    return client.post(f"{C}/login", json={"type": "m.login.password", "password": pw,
                                           "identifier": {"type": "m.id.user", "user": local}})


def _room(client, user: dict, **body) -> str:
    r = client.post(f"{C}/createRoom", headers=user["headers"], json=body)
    assert r.status_code == 200, r.json
    return r.json["room_id"]


def _membership(app, room_id: str, user_id: str):
    return runtime_of(app).parts["rooms"].membership(room_id, user_id)[0]


# ------------------------------------------------------------------ access

def test_admin_routes_need_an_admin(client, admin):
    alice = _user(client, "alice")
    for method, path in [("get", f"{A2}/users"), ("get", f"{A2}/users/{uid('alice')}"),
                         ("post", f"{A1}/deactivate/{uid('alice')}"),
                         ("post", f"{A1}/users/{uid('alice')}/shadow_ban"),
                         ("get", f"{A2}/users/{uid('alice')}/devices"),
                         ("post", f"{A1}/users/{uid('alice')}/login")]:
        r = getattr(client, method)(path, headers=alice["headers"], json={})
        assert r.status_code == 403 and r.json["errcode"] == "M_FORBIDDEN", path
        r = getattr(client, method)(path, json={})
        assert r.status_code == 401 and r.json["errcode"] == "M_MISSING_TOKEN", path
    r = client.get(f"{A2}/users/@x:elsewhere.org", headers=admin)
    assert r.status_code == 400
    r = client.get(f"{A2}/users/nosigil", headers=admin)
    assert r.status_code == 400 and r.json["errcode"] == "M_INVALID_PARAM"
    r = client.get(f"{A2}/users/{uid('nobody')}", headers=admin)
    assert r.status_code == 404 and r.json["errcode"] == "M_NOT_FOUND"


# ------------------------------------------------------------------ listing

def test_list_users_paging_filters_and_order(client, admin, app):
    for local, name in (("anna", "zed"), ("bert", "yan"), ("carl", None)):
        _user(client, local)
        if name:
            client.put(f"{A2}/users/{uid(local)}", headers=admin, json={"displayname": name})
    client.put(f"{A2}/users/{uid('dora')}", headers=admin, json={"user_type": "bot"})
    client.post(f"{A1}/deactivate/{uid('carl')}", headers=admin, json={})
    r = client.get(f"{A2}/users?limit=2", headers=admin)
    assert r.status_code == 200 and r.json["total"] == 4 and r.json["next_token"] == "2"
    assert [u["name"] for u in r.json["users"]] == [uid("anna"), uid("bert")]
    assert set(r.json["users"][0]) >= {"name", "user_type", "is_guest", "admin", "deactivated",
                                       "shadow_banned", "displayname", "avatar_url",
                                       "creation_ts", "erased", "last_seen_ts", "locked"}
    # Synapse answers creation_ts in seconds (its users table keeps seconds)
    assert abs(r.json["users"][0]["creation_ts"] - time.time()) < 600
    r = client.get(f"{A2}/users?from=2&limit=2", headers=admin)
    assert [u["name"] for u in r.json["users"]] == [uid("dora"), uid("root")]
    assert "next_token" not in r.json
    names = lambda q: [u["name"] for u in client.get(f"{A2}/users?{q}",  # noqa: E731
                                                     headers=admin).json["users"]]
    assert uid("carl") in names("deactivated=true") and uid("carl") not in names("")
    assert names("deactivated=true&limit=10") == names("limit=10&deactivated=true")
    assert client.get("/_synapse/admin/v3/users?deactivated=true",
                      headers=admin).json["users"][0]["name"] == uid("carl")
    assert names("admins=true") == [uid("root")]
    assert names("user_id=ber") == [uid("bert")]
    assert names("name=zed") == [uid("anna")]          # the display name matches too
    assert names("not_user_type=bot") == [uid("anna"), uid("bert"), uid("root")]
    assert names("not_user_type=") == [uid("dora")]
    assert names("order_by=displayname&dir=b") == [uid(n) for n in ("anna", "bert", "root",
                                                                     "dora")]
    assert names("order_by=displayname") == [uid(n) for n in ("dora", "root", "bert", "anna")]
    assert names("order_by=admin&dir=b")[0] == uid("root")
    for bad in ("from=-1", "limit=x", "order_by=password", "dir=x", "admins=maybe"):
        r = client.get(f"{A2}/users?{bad}", headers=admin)
        assert r.status_code == 400 and r.json["errcode"] == "M_INVALID_PARAM", bad


# ------------------------------------------------------------------ one user

def test_put_creates_then_modifies(client, admin, caplog):
    caplog.set_level(logging.INFO, logger="web")
    r = client.put(f"{A2}/users/{uid('newbie')}", headers=admin, json={
        "password": "s3cret", "displayname": "New", "admin": False, "user_type": "bot",
        "threepids": [{"medium": "email", "address": "New@Example.org"}],
        "external_ids": [{"auth_provider": "oidc", "external_id": "n-1"}]})
    assert r.status_code == 201, r.json
    u = r.json
    assert u["name"] == uid("newbie") and u["displayname"] == "New" and u["user_type"] == "bot"
    assert [t["address"] for t in u["threepids"]] == ["new@example.org"]
    assert u["external_ids"] == [{"auth_provider": "oidc", "external_id": "n-1"}]
    for k in ("admin", "deactivated", "erased", "shadow_banned", "locked", "is_guest",
              "creation_ts", "appservice_id", "consent_version", "last_seen_ts"):
        assert k in u
    assert _login(client, "newbie", "s3cret").status_code == 200
    r = client.put(f"{A2}/users/{uid('newbie')}", headers=admin, json={
        "admin": True, "displayname": "Renamed", "threepids": [], "user_type": None,
        "password": "other", "logout_devices": True})
    assert r.status_code == 200 and r.json["admin"] is True and r.json["threepids"] == []
    assert r.json["displayname"] == "Renamed" and r.json["user_type"] is None
    assert _login(client, "newbie", "s3cret").status_code == 403
    assert any("made admin @newbie" in m and "@root" in m for m in caplog.messages)
    assert not any("other" in m for m in caplog.messages)   # never the password


def test_put_refusals(client, admin):
    _user(client, "alice")
    _user(client, "bob")
    url = f"{A2}/users/{uid('alice')}"
    client.put(url, headers=admin, json={
        "threepids": [{"medium": "email", "address": "a@x.org"}],
        "external_ids": [{"auth_provider": "p", "external_id": "a"}]})
    bob = f"{A2}/users/{uid('bob')}"
    r = client.put(bob, headers=admin, json={"threepids": [{"medium": "email",
                                                           "address": "a@x.org"}]})
    assert r.status_code == 400 and r.json["errcode"] == "M_THREEPID_IN_USE"
    r = client.put(bob, headers=admin, json={"external_ids": [{"auth_provider": "p",
                                                               "external_id": "a"}]})
    assert r.status_code == 409
    for body, code in [({"admin": "yes"}, "M_BAD_JSON"), ({"user_type": "wizard"}, None),
                       ({"deactivated": True, "locked": True}, None),
                       ({"threepids": [{"medium": "email"}]}, "M_MISSING_PARAM"),
                       ({"password": 5}, None), ({"displayname": 5}, "M_INVALID_PARAM")]:
        r = client.put(bob, headers=admin, json=body)
        assert r.status_code == 400 and (code is None or r.json["errcode"] == code), body
    r = client.put(f"{A2}/users/{uid('root')}", headers=admin, json={"admin": False})
    assert r.status_code == 400 and "demote" in r.json["error"]
    r = client.put(f"{A2}/users/{uid('Upper')}", headers=admin, json={})
    assert r.status_code == 400 and r.json["errcode"] == "M_INVALID_USERNAME"
    assert client.put(bob, headers=admin, data="{x").json["errcode"] == "M_NOT_JSON"


# ------------------------------------------------------------------ deactivation

def test_deactivate_with_erase_leaves_rooms_and_logs(client, admin, app, caplog):
    caplog.set_level(logging.INFO, logger="web")
    alice, bob = _user(client, "alice"), _user(client, "bob")
    room = _room(client, alice, preset="public_chat")
    other = _room(client, bob)
    assert client.post(f"{C}/join/{room}", headers=bob["headers"], json={}).status_code == 200
    client.post(f"{C}/rooms/{other}/invite", headers=bob["headers"],
                json={"user_id": alice["user_id"]})
    r = client.post(f"{A1}/deactivate/{alice['user_id']}", headers=admin, json={"erase": True})
    assert r.status_code == 200 and r.json == {"id_server_unbind_result": "success"}
    assert _membership(app, room, alice["user_id"]) == "leave"
    assert _membership(app, other, alice["user_id"]) == "leave"     # invite rejected
    assert client.get(f"{C}/account/whoami", headers=alice["headers"]).status_code == 401
    u = client.get(f"{A2}/users/{alice['user_id']}", headers=admin).json
    assert u["deactivated"] and u["erased"] and u["displayname"] is None
    assert client.get(f"{A2}/users/{alice['user_id']}/devices",
                      headers=admin).json["total"] == 0
    assert runtime_of(app).parts["admin_users"].pending_parting() == []
    assert any("@root" in m and "deactivated @alice" in m for m in caplog.messages)
    r = client.post(f"{A1}/deactivate/{alice['user_id']}", headers=admin, json={"erase": 1})
    assert r.status_code == 400 and r.json["errcode"] == "M_BAD_JSON"
    r = client.post(f"{A1}/deactivate/{uid('nobody')}", headers=admin, json={})
    assert r.status_code == 404
    r = client.put(f"{A2}/users/{alice['user_id']}", headers=admin,
                   json={"deactivated": False, "password": "back"})
    assert r.status_code == 200 and not r.json["deactivated"] and not r.json["erased"]
    assert _login(client, "alice", "back").status_code == 200


def test_own_deactivation_leaves_rooms_too(client, app):
    from tests.web.conftest import password_auth

    alice, bob = _user(client, "alice"), _user(client, "bob")
    room = _room(client, bob, preset="public_chat")
    client.post(f"{C}/join/{room}", headers=alice["headers"], json={})
    r = client.post(f"{C}/account/deactivate", headers=alice["headers"], json={})
    r = client.post(f"{C}/account/deactivate", headers=alice["headers"], json={
        "auth": password_auth(alice["user_id"], "pw", r.json["session"])})
    assert r.status_code == 200
    assert _membership(app, room, alice["user_id"]) == "leave"


def test_parting_cut_short_is_resumed(client, admin, app):
    alice = _user(client, "alice")
    room = _room(client, alice)
    rt = runtime_of(app)
    parter = rt.parts["parter"]
    rt.parts["accounts"].on_user_deactivated.remove(parter.hook)   # a crash after commit
    rt.parts["accounts"].on_user_deactivated.append(
        lambda txn, user_id: parter.store.queue_parting(txn, user_id))
    client.post(f"{A1}/deactivate/{alice['user_id']}", headers=admin, json={})
    assert _membership(app, room, alice["user_id"]) == "join"
    assert rt.parts["admin_users"].pending_parting() == [alice["user_id"]]
    parter.resume()    # what the next start does
    assert _membership(app, room, alice["user_id"]) == "leave"
    assert rt.parts["admin_users"].pending_parting() == []


def test_reset_password(client, admin):
    alice = _user(client, "alice")
    url = f"{A1}/reset_password/{alice['user_id']}"
    r = client.post(url, headers=admin, json={"new_password": "n1", "logout_devices": False})
    assert r.status_code == 200 and r.json == {}
    assert client.get(f"{C}/account/whoami", headers=alice["headers"]).status_code == 200
    assert _login(client, "alice", "pw").status_code == 403
    assert client.post(url, headers=admin, json={"new_password": "n2"}).status_code == 200
    assert client.get(f"{C}/account/whoami", headers=alice["headers"]).status_code == 401
    assert _login(client, "alice", "n2").status_code == 200
    r = client.post(url, headers=admin, json={})
    assert r.status_code == 400 and r.json["errcode"] == "M_MISSING_PARAM"
    assert client.post(f"{A1}/reset_password/{uid('ghost')}", headers=admin,
                       json={"new_password": "x"}).status_code == 404


# ------------------------------------------------------------------ reads

def test_whois_both_paths(client, admin):
    alice, bob = _user(client, "alice"), _user(client, "bob")
    for path in (f"{A1}/whois/", f"{C}/admin/whois/"):
        r = client.get(path + alice["user_id"], headers=admin)
        assert r.status_code == 200 and r.json["user_id"] == alice["user_id"]
        conns = r.json["devices"][alice["device_id"]]["sessions"][0]["connections"]
        assert all(set(c) == {"ip", "last_seen", "user_agent"} for c in conns)
    assert client.get(f"{C}/admin/whois/{alice['user_id']}",
                      headers=alice["headers"]).status_code == 200
    r = client.get(f"{C}/admin/whois/{alice['user_id']}", headers=bob["headers"])
    assert r.status_code == 403 and r.json["errcode"] == "M_FORBIDDEN"
    assert client.get(f"{A1}/whois/@a:remote.org", headers=admin).status_code == 400


def test_joined_rooms(client, admin):
    alice = _user(client, "alice")
    rooms = sorted(_room(client, alice) for _ in range(2))
    r = client.get(f"{A1}/users/{alice['user_id']}/joined_rooms", headers=admin)
    assert r.status_code == 200 and sorted(r.json["joined_rooms"]) == rooms
    assert r.json["total"] == 2


def test_devices(client, admin, caplog):
    caplog.set_level(logging.INFO, logger="web")
    alice = _user(client, "alice")
    base = f"{A2}/users/{alice['user_id']}"
    r = client.get(f"{base}/devices", headers=admin)
    assert r.json["total"] == 1
    d = r.json["devices"][0]
    assert set(d) >= {"device_id", "display_name", "last_seen_ip", "last_seen_ts",
                      "last_seen_user_agent", "user_id"}
    assert client.post(f"{base}/devices", headers=admin,
                       json={"device_id": "EXTRA"}).status_code == 201
    dev = alice["device_id"]
    assert client.put(f"{base}/devices/{dev}", headers=admin,
                      json={"display_name": "Phone"}).status_code == 200
    assert client.get(f"{base}/devices/{dev}", headers=admin).json["display_name"] == "Phone"
    r = client.put(f"{base}/devices/{dev}", headers=admin, json={"display_name": "x" * 101})
    assert r.status_code == 400 and r.json["errcode"] == "M_TOO_LARGE"
    assert client.put(f"{base}/devices/NOPE", headers=admin, json={}).status_code == 404
    assert client.get(f"{base}/devices/NOPE", headers=admin).status_code == 404
    assert client.delete(f"{base}/devices/EXTRA", headers=admin).status_code == 200
    assert client.delete(f"{base}/devices/NOPE", headers=admin).status_code == 200
    r = client.post(f"{base}/delete_devices", headers=admin, json={})
    assert r.status_code == 400 and r.json["errcode"] == "M_MISSING_PARAM"
    assert client.post(f"{base}/delete_devices", headers=admin,
                       json={"devices": [dev]}).status_code == 200
    assert client.get(f"{C}/account/whoami", headers=alice["headers"]).status_code == 401
    assert client.get(f"{base}/devices", headers=admin).json["total"] == 0
    assert any("deleted devices of @alice" in m for m in caplog.messages)
    assert client.get(f"{A2}/users/{uid('ghost')}/devices", headers=admin).status_code == 404


# ------------------------------------------------------------------ moderation

def test_shadow_ban_fakes_sends_invites_and_typing(client, admin, app):
    alice, bob = _user(client, "alice"), _user(client, "bob")
    room = _room(client, alice, preset="public_chat")
    client.post(f"{C}/join/{room}", headers=bob["headers"], json={})
    db = runtime_of(app).db
    runtime_of(app).parts["user_policy"].shadow_ban_delay = (0, 0)   # the wait: below
    count = lambda: db.run("n", lambda t: t.query_value(  # noqa: E731
        "SELECT COUNT(*) FROM events WHERE room_id = ?", (room,)))
    assert client.post(f"{A1}/users/{alice['user_id']}/shadow_ban", headers=admin,
                       json={}).json == {}
    assert client.get(f"{A2}/users/{alice['user_id']}", headers=admin).json["shadow_banned"]
    before = count()
    r = client.put(f"{C}/rooms/{room}/send/m.room.message/t1", headers=alice["headers"],
                   json={"msgtype": "m.text", "body": "spam"})
    assert r.status_code == 200 and r.json["event_id"].startswith("$")
    eid = r.json["event_id"]
    assert client.get(f"{C}/rooms/{room}/event/{eid}",
                      headers=bob["headers"]).status_code == 404
    r = client.put(f"{C}/rooms/{room}/state/m.room.topic", headers=alice["headers"],
                   json={"topic": "spam"})
    assert r.status_code == 200 and "event_id" in r.json
    carol = _user(client, "carol")
    assert client.post(f"{C}/rooms/{room}/invite", headers=alice["headers"],
                       json={"user_id": carol["user_id"]}).status_code == 200
    assert client.put(f"{C}/rooms/{room}/typing/{alice['user_id']}", headers=alice["headers"],
                      json={"typing": True, "timeout": 1000}).status_code == 200
    assert count() == before and _membership(app, room, carol["user_id"]) is None
    new = _room(client, alice, invite=[carol["user_id"]])
    assert _membership(app, new, carol["user_id"]) is None
    assert client.post(f"{C}/rooms/{room}/leave", headers=alice["headers"],
                       json={}).status_code == 200    # leaving still works, as in Synapse
    assert _membership(app, room, alice["user_id"]) == "leave"
    assert client.delete(f"{A1}/users/{alice['user_id']}/shadow_ban", headers=admin,
                         json={}).status_code == 200
    assert client.post(f"{C}/rooms/{new}/invite", headers=alice["headers"],
                       json={"user_id": carol["user_id"]}).status_code == 200
    assert _membership(app, new, carol["user_id"]) == "invite"
    assert client.post(f"{A1}/users/@x:remote.org/shadow_ban", headers=admin,
                       json={}).status_code == 400


def test_shadow_banned_requests_wait_and_only_their_greenlet_does(client, admin, app):
    import gevent

    alice, bob = _user(client, "alice"), _user(client, "bob")
    room = _room(client, alice, preset="public_chat")
    client.post(f"{C}/join/{room}", headers=bob["headers"], json={})
    policy = runtime_of(app).parts["user_policy"]
    assert policy.shadow_ban_delay == (1.0, 10.0)          # Synapse's, unless told
    client.post(f"{A1}/users/{alice['user_id']}/shadow_ban", headers=admin, json={})
    h = alice["headers"]
    n = iter(range(1000))
    calls = {
        "send": lambda: client.put(f"{C}/rooms/{room}/send/m.room.message/w{next(n)}",
                                   headers=h, json={"msgtype": "m.text", "body": "spam"}),
        "state": lambda: client.put(f"{C}/rooms/{room}/state/m.room.topic", headers=h,
                                    json={"topic": "spam"}),
        "invite": lambda: client.post(f"{C}/rooms/{room}/invite", headers=h,
                                      json={"user_id": bob["user_id"]}),
        "typing": lambda: client.put(f"{C}/rooms/{room}/typing/{alice['user_id']}",
                                     headers=h, json={"typing": True, "timeout": 1000}),
        "createRoom+invite": lambda: client.post(f"{C}/createRoom", headers=h,
                                                 json={"invite": [bob["user_id"]]}),
    }

    def timed(fn) -> float:
        t0 = time.monotonic()
        assert fn().status_code == 200
        return time.monotonic() - t0

    policy.shadow_ban_delay = (0.3, 0.4)
    for name, fn in calls.items():
        assert timed(fn) >= 0.3, name
    # createRoom without invites and bob's requests answer at once
    assert timed(lambda: client.post(f"{C}/createRoom", headers=h, json={})) < 0.3
    assert timed(lambda: client.put(f"{C}/rooms/{room}/send/m.room.message/b1",
                                    headers=bob["headers"], json={"msgtype": "m.text",
                                                                  "body": "hi"})) < 0.3
    # a gevent sleep: three waits at once take one wait, not three
    t0 = time.monotonic()
    gevent.joinall([gevent.spawn(calls["send"]) for _ in range(3)], raise_error=True)
    assert time.monotonic() - t0 < 0.9
    policy.shadow_ban_delay = (0, 0)                       # off: at once
    for name, fn in calls.items():
        assert timed(fn) < 0.3, name


def test_override_ratelimit(make_app):
    app = make_app(rc_message={"per_second": 0.001, "burst_count": 2})
    client = app.test_client()
    admin = auth_headers(_register(client, "root", admin=True).json["access_token"])
    alice = _user(client, "alice")
    room = _room(client, alice)
    url = f"{A1}/users/{alice['user_id']}/override_ratelimit"

    def send(n: int) -> int:
        return client.put(f"{C}/rooms/{room}/send/m.room.message/t{n}-{time.time()}",
                          headers=alice["headers"], json={"msgtype": "m.text",
                                                          "body": "x"}).status_code

    assert [send(i) for i in range(3)] == [200, 200, 429]
    assert client.get(url, headers=admin).json == {}
    r = client.post(url, headers=admin, json={"messages_per_second": 0, "burst_count": 0})
    assert r.json == {"messages_per_second": 0, "burst_count": 0}
    assert [send(i) for i in range(3, 8)] == [200] * 5
    assert client.get(url, headers=admin).json == {"messages_per_second": 0, "burst_count": 0}
    r = client.post(url, headers=admin, json={"messages_per_second": -1})
    assert r.status_code == 400 and r.json["errcode"] == "M_INVALID_PARAM"
    assert client.delete(url, headers=admin).json == {}
    assert send(9) == 429 and client.get(url, headers=admin).json == {}
    assert client.get(f"{A1}/users/{uid('ghost')}/override_ratelimit",
                      headers=admin).status_code == 404


def test_login_as_user(client, admin):
    alice = _user(client, "alice")
    url = f"{A1}/users/{alice['user_id']}/login"
    r = client.post(url, headers=admin, json={})
    assert r.status_code == 200
    h = auth_headers(r.json["access_token"])
    assert client.get(f"{C}/account/whoami", headers=h).json["user_id"] == alice["user_id"]
    devices = client.get(f"{C}/devices", headers=alice["headers"]).json["devices"]
    assert [d["device_id"] for d in devices] == [alice["device_id"]]   # hidden
    past = client.post(url, headers=admin, json={"valid_until_ms": 1}).json["access_token"]
    r = client.get(f"{C}/account/whoami", headers=auth_headers(past))
    assert r.status_code == 401 and r.json["errcode"] == "M_UNKNOWN_TOKEN"
    r = client.post(url, headers=admin, json={"valid_until_ms": "soon"})
    assert r.status_code == 400
    r = client.post(f"{A1}/users/{uid('root')}/login", headers=admin, json={})
    assert r.status_code == 400 and "self" in r.json["error"]


def test_locked_user_is_refused(client, admin):
    alice = _user(client, "alice")
    url = f"{A2}/users/{alice['user_id']}"
    assert client.put(url, headers=admin, json={"locked": True}).json["locked"] is True
    r = client.get(f"{C}/joined_rooms", headers=alice["headers"])
    assert r.status_code == 401 and r.json["errcode"] == "M_USER_LOCKED"
    assert r.json["soft_logout"] is True
    assert client.get(f"{C}/account/whoami", headers=alice["headers"]).status_code == 200
    r = client.get(f"{C}/sync?timeout=0", headers=alice["headers"])  # served before Flask
    assert r.status_code == 401 and r.json["errcode"] == "M_USER_LOCKED"
    r = _login(client, "alice", "pw")
    assert r.status_code == 401 and r.json["errcode"] == "M_USER_LOCKED"
    assert _login(client, "alice", "wrong").status_code == 403   # no oracle for the password
    assert client.get(f"{A2}/users?locked=true", headers=admin).json["total"] == 2
    assert client.get(f"{A2}/users", headers=admin).json["total"] == 1
    assert client.put(url, headers=admin, json={"locked": False}).json["locked"] is False
    assert client.get(f"{C}/joined_rooms", headers=alice["headers"]).status_code == 200
    assert _login(client, "alice", "pw").status_code == 200


# ------------------------------------------------------------------ registration tokens

def test_registration_tokens_crud(client, admin):
    url = f"{A1}/registration_tokens"
    future = int(time.time() * 1000) + 3_600_000
    assert client.post(f"{url}/new", headers=admin,
                       json={"token": "once", "uses_allowed": 0}).status_code == 200
    assert client.post(f"{url}/new", headers=admin,
                       json={"token": "open", "expiry_time": future}).status_code == 200
    r = client.get(f"{url}/open", headers=admin)
    assert r.json == {"token": "open", "uses_allowed": None, "pending": 0, "completed": 0,
                      "expiry_time": future}
    valid = [t["token"] for t in client.get(f"{url}?valid=true",
                                            headers=admin).json["registration_tokens"]]
    invalid = [t["token"] for t in client.get(f"{url}?valid=false",
                                              headers=admin).json["registration_tokens"]]
    assert valid == ["open"] and invalid == ["once"]
    r = client.put(f"{url}/once", headers=admin, json={"uses_allowed": 3})
    assert r.status_code == 200 and r.json["uses_allowed"] == 3
    r = client.put(f"{url}/once", headers=admin, json={"expiry_time": 1})
    assert r.status_code == 400 and r.json["errcode"] == "M_INVALID_PARAM"
    assert client.put(f"{url}/ghost", headers=admin, json={}).status_code == 404
    assert client.delete(f"{url}/once", headers=admin).json == {}
    r = client.delete(f"{url}/once", headers=admin)
    assert r.status_code == 404 and r.json["errcode"] == "M_NOT_FOUND"
    assert client.get(f"{url}/once", headers=admin).status_code == 404
    assert client.get(f"{url}?valid=maybe", headers=admin).status_code == 400
