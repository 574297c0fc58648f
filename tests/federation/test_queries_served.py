"""The federation queries this server answers (federation/queries.py), on a real app with a
fake request verifier: /version, query/profile, query/directory, user/devices, user/keys/
query and claim (exactly once, also racing the client API), publicRooms, openid/userinfo."""
from __future__ import annotations

from urllib.parse import quote

import gevent
import pytest

import atrium
from store.openid import OpenIdStore
from tests.apps import app_factory
from tests.e2ee.conftest import CrossSigning, user
from tests.federation.queries_helpers import C3, ORIGIN, SERVER, V1, fed_of, fed_req, wire
from web.app import runtime_of


@pytest.fixture
def hs(tmp_path):
    yield from app_factory(tmp_path)


@pytest.fixture
def app(hs):
    a = hs()
    wire(a)
    return a


# ---------------------------------------------------------------------- authentication
def test_version_is_unauthenticated(app):
    got = fed_req(app, "GET", f"{V1}/version", origin=None)
    assert got == {"server": {"name": "Atrium", "version": atrium.__version__}}


@pytest.mark.parametrize("path,method", [
    (f"{V1}/query/profile?user_id=@a:{SERVER}", "GET"),
    (f"{V1}/query/directory?room_alias=%23a:{SERVER}", "GET"),
    (f"{V1}/user/devices/@a:{SERVER}", "GET"),
    (f"{V1}/user/keys/query", "POST"),
    (f"{V1}/user/keys/claim", "POST"),
    (f"{V1}/publicRooms", "GET"),
    (f"{V1}/publicRooms", "POST"),
])
def test_signed_routes_refuse_unsigned_requests(app, path, method):
    body = {} if method == "POST" else None
    assert fed_req(app, method, path, origin=None, body=body,
                   status=401)["errcode"] == "M_UNAUTHORIZED"
    fed_of(app).verifier = None   # no verifier built: nothing can be verified
    assert fed_req(app, method, path, body=body, status=401)["errcode"] == "M_UNAUTHORIZED"


def test_requests_run_inside_the_origin_rate_limit(app):
    verifier = fed_of(app).verifier
    user(app, "alice")
    fed_req(app, "GET", f"{V1}/query/profile", query={"user_id": f"@alice:{SERVER}"},
            origin="one.example")
    fed_req(app, "GET", f"{V1}/user/devices/@alice:{SERVER}", origin="two.example")
    assert verifier.limited_origins == ["one.example", "two.example"]


# ---------------------------------------------------------------------- profile
def test_query_profile(app):
    alice = user(app, "alice")
    alice.req("PUT", f"{C3}/profile/{alice.user_id}/displayname", {"displayname": "Alice"})
    q = {"user_id": alice.user_id}
    assert fed_req(app, "GET", f"{V1}/query/profile", query=q) == {"displayname": "Alice"}
    assert fed_req(app, "GET", f"{V1}/query/profile",
                   query=dict(q, field="displayname")) == {"displayname": "Alice"}
    # a field the user has not set: absent
    assert fed_req(app, "GET", f"{V1}/query/profile", query=dict(q, field="avatar_url")) == {}
    alice.req("PUT", f"{C3}/profile/{alice.user_id}/avatar_url",
              {"avatar_url": "mxc://test.local/a"})
    assert fed_req(app, "GET", f"{V1}/query/profile", query=q) == {
        "displayname": "Alice", "avatar_url": "mxc://test.local/a"}
    assert fed_req(app, "GET", f"{V1}/query/profile",
                   query=dict(q, field="avatar_url")) == {"avatar_url": "mxc://test.local/a"}


def test_query_profile_errors(app):
    alice = user(app, "alice")
    p = f"{V1}/query/profile"
    assert fed_req(app, "GET", p, query={"user_id": f"@nobody:{SERVER}"},
                   status=404)["errcode"] == "M_NOT_FOUND"
    assert fed_req(app, "GET", p, query={"user_id": f"@bob:{ORIGIN}"},
                   status=400)["errcode"] == "M_INVALID_PARAM"
    assert fed_req(app, "GET", p, status=400)["errcode"] == "M_MISSING_PARAM"
    assert fed_req(app, "GET", p, query={"user_id": "nosigil"},
                   status=400)["errcode"] == "M_INVALID_PARAM"
    assert fed_req(app, "GET", p, query={"user_id": alice.user_id, "field": "m.nope"},
                   status=404)["errcode"] == "M_NOT_FOUND"
    assert fed_req(app, "GET", p, query={"user_id": alice.user_id, "field": ""},
                   status=400)["errcode"] == "M_INVALID_PARAM"


# ---------------------------------------------------------------------- directory
def test_query_directory(app):
    alice = user(app, "alice")
    room_id = alice.create_room()
    alice.req("PUT", f"{C3}/directory/room/{quote('#hall:' + SERVER)}", {"room_id": room_id})
    p = f"{V1}/query/directory"
    got = fed_req(app, "GET", p, query={"room_alias": f"#hall:{SERVER}"})
    assert got == {"room_id": room_id, "servers": [SERVER]}
    # another server with a joined member is listed after us
    runtime_of(app).db.run("member", lambda t: t.execute(
        "INSERT INTO current_state (room_id, type, state_key, event_id, membership)"
        " VALUES (?, 'm.room.member', ?, '$x', 'join')", (room_id, "@zed:other.example")),
        write=True)
    got = fed_req(app, "GET", p, query={"room_alias": f"#hall:{SERVER}"})
    assert got == {"room_id": room_id, "servers": [SERVER, "other.example"]}
    assert fed_req(app, "GET", p, query={"room_alias": f"#nope:{SERVER}"},
                   status=404)["errcode"] == "M_NOT_FOUND"
    assert fed_req(app, "GET", p, query={"room_alias": f"#hall:{ORIGIN}"},
                   status=400)["errcode"] == "M_INVALID_PARAM"
    assert fed_req(app, "GET", p, query={"room_alias": "hall"},
                   status=400)["errcode"] == "M_INVALID_PARAM"
    assert fed_req(app, "GET", p, status=400)["errcode"] == "M_MISSING_PARAM"


# ---------------------------------------------------------------------- devices and keys
def _with_keys(app, localpart, otks=0):
    u = user(app, localpart)
    u.upload(device_keys=u.device_keys(), one_time_keys=u.otks(otks) if otks else None,
             fallback_keys={"signed_curve25519:FB": {"key": "fb", "fallback": True}})
    xs = CrossSigning(u.user_id)
    u.req("POST", f"{C3}/keys/device_signing/upload", xs.upload_body())
    return u, xs


def test_user_devices(app):
    alice, xs = _with_keys(app, "alice")
    got = fed_req(app, "GET", f"{V1}/user/devices/{alice.user_id}")
    assert got["user_id"] == alice.user_id
    assert isinstance(got["stream_id"], int) and got["stream_id"] > 0
    (dev,) = got["devices"]
    assert dev["device_id"] == alice.device_id
    assert dev["device_display_name"] == "alice's phone"
    assert dev["keys"]["keys"][f"ed25519:{alice.device_id}"] == alice.ed25519
    assert "device_display_name" not in dev["keys"].get("unsigned", {})
    assert got["master_key"]["keys"] == xs.key("master", xs.master)["keys"]
    assert got["self_signing_key"]["usage"] == ["self_signing"]
    assert "user_signing_key" not in got
    # a change of the device list moves the stream id
    before = got["stream_id"]
    runtime_of(app).parts["sync"].device_lists.mark_changed([alice.user_id])
    assert fed_req(app, "GET", f"{V1}/user/devices/{alice.user_id}")["stream_id"] > before


def test_user_devices_errors(app):
    got = fed_req(app, "GET", f"{V1}/user/devices/@nobody:{SERVER}")
    assert got == {"user_id": f"@nobody:{SERVER}", "stream_id": 0, "devices": []}
    assert fed_req(app, "GET", f"{V1}/user/devices/@bob:{ORIGIN}",
                   status=400)["errcode"] == "M_INVALID_PARAM"
    assert fed_req(app, "GET", f"{V1}/user/devices/nosigil",
                   status=400)["errcode"] == "M_INVALID_PARAM"


def test_user_keys_query(app):
    alice, xs = _with_keys(app, "alice")
    p = f"{V1}/user/keys/query"
    got = fed_req(app, "POST", p, body={"device_keys": {alice.user_id: []}})
    dev = got["device_keys"][alice.user_id][alice.device_id]
    assert dev["keys"][f"ed25519:{alice.device_id}"] == alice.ed25519
    assert dev["unsigned"]["device_display_name"] == "alice's phone"
    assert got["master_keys"][alice.user_id]["usage"] == ["master"]
    assert got["self_signing_keys"][alice.user_id]["usage"] == ["self_signing"]
    assert "user_signing_keys" not in got
    only = fed_req(app, "POST", p, body={"device_keys": {alice.user_id: ["OTHER"]}})
    assert only["device_keys"] == {alice.user_id: {}}
    unknown = fed_req(app, "POST", p, body={"device_keys": {f"@nobody:{SERVER}": []}})
    assert unknown["device_keys"] == {f"@nobody:{SERVER}": {}}


def test_user_keys_query_errors(app):
    p = f"{V1}/user/keys/query"
    assert fed_req(app, "POST", p, body={"device_keys": {f"@bob:{ORIGIN}": []}},
                   status=400)["errcode"] == "M_INVALID_PARAM"
    assert fed_req(app, "POST", p, body={}, status=400)["errcode"] == "M_MISSING_PARAM"
    assert fed_req(app, "POST", p, body={"device_keys": {f"@a:{SERVER}": "x"}},
                   status=400)["errcode"] == "M_BAD_JSON"
    assert fed_req(app, "POST", p, body={"device_keys": {f"@a:{SERVER}": [1]}},
                   status=400)["errcode"] == "M_BAD_JSON"
    assert fed_req(app, "POST", p, data=b"{nope", status=400)["errcode"] == "M_NOT_JSON"
    assert fed_req(app, "POST", p, data=b"[]", status=400)["errcode"] == "M_BAD_JSON"


def test_user_keys_claim_exactly_once(app):
    alice, _ = _with_keys(app, "alice", otks=3)
    p = f"{V1}/user/keys/claim"
    want = {"one_time_keys": {alice.user_id: {alice.device_id: "signed_curve25519"}}}
    seen = set()
    for _ in range(3):
        got = fed_req(app, "POST", p, body=want)["one_time_keys"]
        (kid,) = got[alice.user_id][alice.device_id]
        assert kid.startswith("signed_curve25519:") and kid != "signed_curve25519:FB"
        assert kid not in seen
        seen.add(kid)
    # none left: the fallback key
    got = fed_req(app, "POST", p, body=want)["one_time_keys"]
    assert list(got[alice.user_id][alice.device_id]) == ["signed_curve25519:FB"]
    assert fed_req(app, "POST", p, body={"one_time_keys": {f"@b:{ORIGIN}": {"D": "x"}}},
                   status=400)["errcode"] == "M_INVALID_PARAM"
    assert fed_req(app, "POST", p, body={"one_time_keys": {alice.user_id: {"D": 1}}},
                   status=400)["errcode"] == "M_BAD_JSON"


def test_claims_over_federation_and_the_client_api_never_share_a_key(app):
    alice, _ = _with_keys(app, "alice", otks=20)
    bob = user(app, "bob")
    want = {alice.user_id: {alice.device_id: "signed_curve25519"}}
    got: list[str] = []

    def over_federation():
        r = fed_req(app, "POST", f"{V1}/user/keys/claim", body={"one_time_keys": want})
        got.extend(r["one_time_keys"][alice.user_id][alice.device_id])

    def locally():
        r = bob.claim(want)
        got.extend(r["one_time_keys"][alice.user_id][alice.device_id])

    jobs = [gevent.spawn(over_federation if i % 2 else locally) for i in range(20)]
    gevent.joinall(jobs, timeout=20, raise_error=True)
    assert len(got) == 20 and len(set(got)) == 20 and "signed_curve25519:FB" not in got


# ---------------------------------------------------------------------- public rooms
def test_public_rooms_are_refused_by_default(app):
    assert fed_req(app, "GET", f"{V1}/publicRooms", status=403)["errcode"] == "M_FORBIDDEN"
    assert fed_req(app, "POST", f"{V1}/publicRooms", body={},
                   status=403)["errcode"] == "M_FORBIDDEN"


def test_public_rooms_when_allowed(hs):
    app = hs(allow_public_rooms_over_federation=True)
    wire(app)
    alice = user(app, "alice")
    rooms = [alice.create_room(visibility="public", name=f"room {i}") for i in range(3)]
    alice.create_room(visibility="private")
    p = f"{V1}/publicRooms"
    got = fed_req(app, "GET", p)
    assert sorted(r["room_id"] for r in got["chunk"]) == sorted(rooms)
    assert got["total_room_count_estimate"] == 3
    page1 = fed_req(app, "GET", p, query={"limit": "2"})
    assert len(page1["chunk"]) == 2 and "next_batch" in page1
    page2 = fed_req(app, "GET", p, query={"limit": "2", "since": page1["next_batch"]})
    assert len(page2["chunk"]) == 1
    assert {r["room_id"] for r in page1["chunk"] + page2["chunk"]} == set(rooms)
    found = fed_req(app, "POST", p, body={"filter": {"generic_search_term": "room 1"}})
    assert [r["name"] for r in found["chunk"]] == ["room 1"]
    paged = fed_req(app, "POST", p, body={"limit": 1, "include_all_networks": False})
    assert len(paged["chunk"]) == 1 and "next_batch" in paged
    assert fed_req(app, "GET", p, query={"third_party_instance_id": "irc"})["chunk"] == []
    assert fed_req(app, "GET", p, query={"limit": "x"}, status=400)["errcode"] == \
        "M_INVALID_PARAM"
    assert fed_req(app, "GET", p, query={"include_all_networks": "maybe"},
                   status=400)["errcode"] == "M_INVALID_PARAM"
    assert fed_req(app, "POST", p, body={"limit": "2"}, status=400)["errcode"] == "M_BAD_JSON"
    assert fed_req(app, "GET", p, query={"since": "garbage"},
                   status=400)["errcode"] == "M_INVALID_PARAM"


# ---------------------------------------------------------------------- OpenID
def test_openid_token_round_trip(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    got = alice.req("POST", f"{C3}/user/{alice.user_id}/openid/request_token", {})
    assert got["token_type"] == "Bearer" and got["matrix_server_name"] == SERVER
    assert got["expires_in"] == 3600 and len(got["access_token"]) >= 32
    info = fed_req(app, "GET", f"{V1}/openid/userinfo", origin=None,
                   query={"access_token": got["access_token"]})
    assert info == {"sub": alice.user_id}
    # only for yourself; the token is not an access token of the client API
    assert bob.req("POST", f"{C3}/user/{alice.user_id}/openid/request_token", {},
                   status=403)["errcode"] == "M_FORBIDDEN"
    r = app.test_client().get(f"{C3}/account/whoami",
                              headers={"Authorization": f"Bearer {got['access_token']}"})
    assert r.status_code == 401


def test_openid_unknown_missing_and_expired_tokens(app):
    alice = user(app, "alice")
    p = f"{V1}/openid/userinfo"
    for q in ({"access_token": "nope"}, {}, {"access_token": ""}):
        assert fed_req(app, "GET", p, origin=None, query=q,
                       status=401)["errcode"] == "M_UNKNOWN_TOKEN"
    store = OpenIdStore(runtime_of(app).db)
    expired = store.create(alice.user_id, lifetime_ms=-1)
    assert fed_req(app, "GET", p, origin=None, query={"access_token": expired},
                   status=401)["errcode"] == "M_UNKNOWN_TOKEN"
    # the next token made prunes the expired one
    store.create(alice.user_id)
    assert runtime_of(app).db.run("n", lambda t: t.query_value(
        "SELECT COUNT(*) FROM openid_tokens")) == 1


def test_openid_tokens_end_with_deactivation(app):
    alice = user(app, "alice")
    token = alice.req("POST", f"{C3}/user/{alice.user_id}/openid/request_token",
                      {})["access_token"]
    runtime_of(app).parts["accounts"].deactivate(alice.user_id)
    assert fed_req(app, "GET", f"{V1}/openid/userinfo", origin=None,
                   query={"access_token": token}, status=401)["errcode"] == "M_UNKNOWN_TOKEN"


# ---------------------------------------------------------------------- hostile input
HOSTILE_BODIES = [b"", b"null", b"[]", b"5", b'"x"', b"{", b'{"device_keys": null}',
                  b'{"device_keys": []}', b'{"one_time_keys": {"@a:test.local": []}}',
                  b'{"one_time_keys": {"@a:test.local": {"D": null}}}',
                  b'{"device_keys": {"nosigil": []}}', b'{"limit": -1}', b'{"limit": 1e400}',
                  b'{"filter": []}', b'{"filter": {"room_types": [1]}}', b'{"since": 5}',
                  b'{"third_party_instance_id": "x", "include_all_networks": true}',
                  b'{"device_keys": {"@\\ud800:test.local": []}}', b"[" * 5000]
HOSTILE_QUERIES = [{"user_id": "@:"}, {"user_id": "@a:" + "x" * 300}, {"field": "x" * 300},
                   {"room_alias": "#:"}, {"room_alias": "\x00"}, {"limit": "-1"},
                   {"limit": "9" * 40}, {"since": "\x00"}, {"include_all_networks": "1"},
                   {"user_id": f"@a:{SERVER}", "field": "\x00"}]


def test_hostile_input_never_answers_500(hs):
    app = hs(allow_public_rooms_over_federation=True)
    wire(app)
    user(app, "a")
    client = app.test_client()
    h = {"X-Test-Origin": ORIGIN}
    for path in ("user/keys/query", "user/keys/claim", "publicRooms"):
        for data in HOSTILE_BODIES:
            r = client.post(f"{V1}/{path}", data=data, headers=h,
                            content_type="application/json")
            assert r.status_code < 500, (path, data[:40], r.get_data(as_text=True))
            if r.status_code >= 400:
                assert r.get_json()["errcode"].startswith("M_"), (path, data[:40])
    for path in ("query/profile", "query/directory", "publicRooms", "openid/userinfo",
                 f"user/devices/{quote('@:')}", f"user/devices/{quote('@a:' + 'x' * 300)}"):
        for q in HOSTILE_QUERIES:
            r = client.get(f"{V1}/{path}", query_string=q, headers=h)
            assert r.status_code < 500, (path, q, r.get_data(as_text=True))
            if r.status_code >= 400:
                assert r.get_json()["errcode"].startswith("M_"), (path, q)
