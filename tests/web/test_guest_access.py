"""Guest access (client-server-api "Guest Access"): POST /register?kind=guest, what a guest
may call, joining rooms by m.room.guest_access, being taken out of a room when guest access
is revoked, reading world-readable rooms without joining, and upgrading to a full account."""
from __future__ import annotations

from urllib.parse import quote

import gevent
import pytest

from tests.web.conftest import SERVER, auth_headers, register_via_dummy
from web.app import runtime_of

from actors.room_messages import EventSpec

REG = "/_matrix/client/v3/register"
V3 = "/_matrix/client/v3"


class User:
    def __init__(self, client, login):
        self.c = client
        self.user_id = login["user_id"]
        self.device_id = login["device_id"]
        self.token = login["access_token"]
        self.h = auth_headers(self.token)

    def req(self, method, path, body=None, status=200):
        r = self.c.open(path, method=method, json=body, headers=self.h)
        assert r.status_code == status, (method, path, r.status_code, r.get_data(as_text=True))
        return r.get_json()


@pytest.fixture
def gapp(make_app):
    return make_app(allow_guest_access=True)


@pytest.fixture
def gclient(gapp):
    return gapp.test_client()


def guest(client, **body):
    r = client.post(REG + "?kind=guest", json=body)
    assert r.status_code == 200, r.json
    return User(client, r.json)


def full_user(client, name):
    r = register_via_dummy(client, name)
    assert r.status_code == 200, r.json
    return User(client, r.json)


def room(owner, guest_access=None, visibility=None):
    initial = []
    if guest_access is not None:
        initial.append({"type": "m.room.guest_access", "state_key": "",
                        "content": {"guest_access": guest_access}})
    if visibility is not None:
        initial.append({"type": "m.room.history_visibility", "state_key": "",
                        "content": {"history_visibility": visibility}})
    return owner.req("POST", f"{V3}/createRoom",
                     {"preset": "public_chat", "initial_state": initial})["room_id"]


def membership(app, room_id, user_id):
    return runtime_of(app).parts["rooms"].membership(room_id, user_id)


def settle(app):
    """Wait for the evictor's greenlets (they run after the change is persisted)."""
    evictor = runtime_of(app).parts["guest_evictor"]
    for _ in range(200):
        gevent.joinall(list(evictor.running), timeout=5)
        if not evictor.running:
            return
        gevent.sleep(0.01)


# ------------------------------------------------------------------ registration

def test_guest_registration_is_off_by_default(client):
    r = client.post(REG + "?kind=guest", json={})
    assert r.status_code == 403 and r.json["errcode"] == "M_GUEST_ACCESS_FORBIDDEN"


def test_guest_registration_ignores_all_but_the_device_name(make_app):
    # guests need allow_guest_access only, not open registration (as Synapse)
    client = make_app(allow_guest_access=True, enable_registration=False).test_client()
    g = guest(client, username="chosen", device_id="MINE", password="pw",
              initial_device_display_name="Guest phone")
    localpart = g.user_id[1:].split(":")[0]
    assert localpart.isdigit() and g.user_id.endswith(":" + SERVER)
    assert g.device_id != "MINE"
    assert g.req("GET", f"{V3}/account/whoami") == {
        "user_id": g.user_id, "is_guest": True, "device_id": g.device_id}
    assert g.req("GET", f"{V3}/devices/{g.device_id}")["display_name"] == "Guest phone"
    assert g.req("GET", f"{V3}/profile/{g.user_id}")["displayname"] == localpart
    other = guest(client)
    assert other.user_id != g.user_id
    # an empty body is fine too
    assert client.post(REG + "?kind=guest").status_code == 200


# ------------------------------------------------------------------ what a guest may call

def test_guest_may_call_what_the_spec_lists_and_nothing_else(gclient):
    g, alice = guest(gclient), full_user(gclient, "alice")
    room_id = room(alice, guest_access="can_join", visibility="world_readable")
    allowed = [
        ("GET", f"{V3}/account/whoami", None),
        ("GET", f"{V3}/capabilities", None),
        ("GET", f"{V3}/devices", None),
        ("PUT", f"{V3}/devices/{g.device_id}", {"display_name": "renamed"}),
        ("POST", f"{V3}/keys/upload", {}),
        ("POST", f"{V3}/keys/query", {"device_keys": {alice.user_id: []}}),
        ("POST", f"{V3}/keys/claim", {"one_time_keys": {}}),
        ("PUT", f"{V3}/sendToDevice/m.test/t1", {"messages": {}}),
        ("PUT", f"{V3}/profile/{g.user_id}/displayname", {"displayname": "Visitor"}),
        ("GET", f"{V3}/publicRooms", None),
        ("GET", f"{V3}/sync?timeout=0", None),
        ("GET", f"{V3}/rooms/{room_id}/state", None),
    ]
    for method, path, body in allowed:
        g.req(method, path, body)
    forbidden = [
        ("POST", f"{V3}/createRoom", {}),
        ("POST", f"{V3}/rooms/{room_id}/invite", {"user_id": alice.user_id}),
        ("POST", f"{V3}/knock/{room_id}", {}),
        ("PUT", f"{V3}/profile/{g.user_id}/avatar_url", {"avatar_url": "mxc://a/b"}),
        ("POST", f"{V3}/user/{g.user_id}/filter", {}),
        ("PUT", f"{V3}/user/{g.user_id}/account_data/m.x", {}),
        ("GET", f"{V3}/pushrules/", None),
        ("POST", f"{V3}/account/password", {"new_password": "x"}),
        ("POST", f"{V3}/account/deactivate", {}),
        ("GET", f"{V3}/joined_rooms", None),
        ("PUT", f"{V3}/rooms/{room_id}/typing/{g.user_id}", {"typing": False}),
        ("POST", f"{V3}/rooms/{room_id}/read_markers", {}),
        ("GET", f"{V3}/rooms/{room_id}/joined_members", None),
        ("POST", f"{V3}/delete_devices", {"devices": []}),
        ("POST", "/_matrix/media/v3/upload", {}),
    ]
    for method, path, body in forbidden:
        r = g.req(method, path, body, status=403)
        assert r["errcode"] == "M_GUEST_ACCESS_FORBIDDEN", (method, path, r)
    assert g.req("GET", f"{V3}/profile/{g.user_id}")["displayname"] == "Visitor"


# ------------------------------------------------------------------ joining

def test_guest_joins_only_rooms_with_can_join(gapp, gclient):
    g, alice = guest(gclient), full_user(gclient, "alice")
    closed = room(alice)                       # public, but no m.room.guest_access
    forbidden = room(alice, guest_access="forbidden")
    open_ = room(alice, guest_access="can_join")
    for room_id in (closed, forbidden):
        r = g.req("POST", f"{V3}/rooms/{room_id}/join", {}, status=403)
        assert r["errcode"] == "M_GUEST_ACCESS_FORBIDDEN"
        r = g.req("POST", f"{V3}/join/{room_id}", {}, status=403)
        assert r["errcode"] == "M_GUEST_ACCESS_FORBIDDEN"
        # nor by writing its own membership state
        g.req("PUT", f"{V3}/rooms/{room_id}/state/m.room.member/{g.user_id}",
              {"membership": "join"}, status=403)
        assert membership(gapp, room_id, g.user_id)[0] is None
    r = g.req("POST", f"{V3}/join/{open_}", {})
    assert r == {"room_id": open_}
    member = g.req("GET", f"{V3}/rooms/{open_}/state/m.room.member/{g.user_id}")
    assert member["membership"] == "join" and member["kind"] == "guest"
    # a joined guest talks (any event type, spec v1.2) and leaves
    g.req("PUT", f"{V3}/rooms/{open_}/send/m.room.message/1", {"msgtype": "m.text", "body": "hi"})
    g.req("PUT", f"{V3}/rooms/{open_}/send/org.example.ping/2", {})
    g.req("PUT", f"{V3}/rooms/{open_}/state/m.room.member/{alice.user_id}",
          {"membership": "leave"}, status=403)   # no kicking through the state API
    g.req("POST", f"{V3}/rooms/{open_}/leave", {})
    assert membership(gapp, open_, g.user_id)[0] == "leave"
    g.req("PUT", f"{V3}/rooms/{open_}/state/m.room.member/{g.user_id}", {"membership": "join"})
    assert membership(gapp, open_, g.user_id)[0] == "join"


def test_revoking_guest_access_takes_guests_out(gapp, gclient):
    g1, g2 = guest(gclient), guest(gclient)
    alice, bob = full_user(gclient, "alice"), full_user(gclient, "bob")
    room_id = room(alice, guest_access="can_join")
    other = room(alice, guest_access="can_join")
    for u in (g1, g2, bob):
        u.req("POST", f"{V3}/rooms/{room_id}/join", {})
    g1.req("POST", f"{V3}/rooms/{other}/join", {})
    alice.req("PUT", f"{V3}/rooms/{room_id}/state/m.room.guest_access",
              {"guest_access": "forbidden"})
    settle(gapp)
    svc = runtime_of(gapp).parts["rooms"]
    for gu in (g1, g2):
        m, eid = membership(gapp, room_id, gu.user_id)
        assert m == "leave"
        assert svc.events.get_event(eid).event["sender"] == gu.user_id   # the guest's own
    assert membership(gapp, room_id, bob.user_id)[0] == "join"
    assert membership(gapp, room_id, alice.user_id)[0] == "join"
    assert membership(gapp, other, g1.user_id)[0] == "join"   # other rooms untouched
    r = g1.req("POST", f"{V3}/rooms/{room_id}/join", {}, status=403)
    assert r["errcode"] == "M_GUEST_ACCESS_FORBIDDEN"
    # a change that keeps can_join (or to can_join) takes nobody out
    alice.req("PUT", f"{V3}/rooms/{other}/state/m.room.guest_access",
              {"guest_access": "can_join", "note": "same"})
    settle(gapp)
    assert membership(gapp, other, g1.user_id)[0] == "join"


def test_guest_join_landing_after_the_revocation_is_undone(gapp, gclient):
    """A guest join that passed the check just before guest access was revoked, and is
    persisted after the revocation, is taken out too."""
    g, alice = guest(gclient), full_user(gclient, "alice")
    room_id = room(alice, guest_access="forbidden")
    svc = runtime_of(gapp).parts["rooms"]
    with gapp.test_request_context():   # as the join path would have sent it
        svc.send(room_id, EventSpec("m.room.member", g.user_id,
                                    {"membership": "join", "kind": "guest"}, g.user_id))
    settle(gapp)
    assert membership(gapp, room_id, g.user_id)[0] == "leave"


# ------------------------------------------------------------------ reading without joining

def test_guest_reads_world_readable_room_without_joining(gclient):
    g, alice = guest(gclient), full_user(gclient, "alice")
    readable = room(alice, visibility="world_readable")
    eid = alice.req("PUT", f"{V3}/rooms/{readable}/send/m.room.message/1",
                    {"msgtype": "m.text", "body": "for everyone"})["event_id"]
    chunk = g.req("GET", f"{V3}/rooms/{readable}/messages?dir=b&limit=50")["chunk"]
    assert "for everyone" in [e["content"].get("body") for e in chunk]
    assert g.req("GET", f"{V3}/rooms/{readable}/event/{quote(eid, safe='')}")["event_id"] == eid
    ctx = g.req("GET", f"{V3}/rooms/{readable}/context/{quote(eid, safe='')}")
    assert ctx["event"]["event_id"] == eid
    members = g.req("GET", f"{V3}/rooms/{readable}/members")["chunk"]
    assert [m["state_key"] for m in members] == [alice.user_id]
    assert g.req("GET", f"{V3}/rooms/{readable}/state/m.room.history_visibility") == {
        "history_visibility": "world_readable"}
    # a room that is not world-readable stays closed to a guest who has not joined
    shared = room(alice, visibility="shared", guest_access="can_join")
    eid2 = alice.req("PUT", f"{V3}/rooms/{shared}/send/m.room.message/2",
                     {"msgtype": "m.text", "body": "members"})["event_id"]
    g.req("GET", f"{V3}/rooms/{shared}/messages?dir=b", status=403)
    g.req("GET", f"{V3}/rooms/{shared}/members", status=403)
    g.req("GET", f"{V3}/rooms/{shared}/state", status=403)
    g.req("GET", f"{V3}/rooms/{shared}/event/{quote(eid2, safe='')}", status=404)
    # ... until it joins (shared: the earlier history opens)
    g.req("POST", f"{V3}/rooms/{shared}/join", {})
    chunk = g.req("GET", f"{V3}/rooms/{shared}/messages?dir=b&limit=50")["chunk"]
    assert "members" in [e["content"].get("body") for e in chunk]


# ------------------------------------------------------------------ upgrading

def upgrade(client, body):
    """The dummy flow with ``body``: first round, then the same body with ``auth``."""
    r = client.post(REG, json=body)
    if r.status_code != 401:
        return r
    return client.post(REG, json={**body, "auth": {"type": "m.login.dummy",
                                                   "session": r.json["session"]}})


def test_upgrading_a_guest_keeps_its_user_id(gapp, gclient):
    g, alice = guest(gclient), full_user(gclient, "alice")
    room_id = room(alice, guest_access="can_join")
    g.req("POST", f"{V3}/rooms/{room_id}/join", {})
    g.req("PUT", f"{V3}/profile/{g.user_id}/displayname", {"displayname": "Visitor"})
    localpart = g.user_id[1:].split(":")[0]
    r = upgrade(gclient, {"username": localpart, "password": "newpw",
                          "guest_access_token": g.token,
                          "initial_device_display_name": "laptop"})
    assert r.status_code == 200, r.json
    assert r.json["user_id"] == g.user_id and r.json["device_id"] != g.device_id
    full = User(gclient, r.json)
    assert full.req("GET", f"{V3}/account/whoami")["is_guest"] is False
    # the guest's own token is a full user's token now (no stale cached guest flag)
    assert g.req("GET", f"{V3}/account/whoami")["is_guest"] is False
    g.req("POST", f"{V3}/createRoom", {})
    assert g.req("GET", f"{V3}/profile/{g.user_id}")["displayname"] == "Visitor"
    assert membership(gapp, room_id, g.user_id)[0] == "join"
    login = gclient.post(f"{V3}/login", json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart},
        "password": "newpw"})
    assert login.status_code == 200 and login.json["user_id"] == g.user_id
    # no longer a guest: revoking guest access leaves it in the room
    alice.req("PUT", f"{V3}/rooms/{room_id}/state/m.room.guest_access",
              {"guest_access": "forbidden"})
    settle(gapp)
    assert membership(gapp, room_id, g.user_id)[0] == "join"
    # the token proves nothing any more
    again = upgrade(gclient, {"username": localpart, "password": "x",
                              "guest_access_token": g.token})
    assert again.status_code == 403 and again.json["errcode"] == "M_FORBIDDEN"


def test_upgrade_across_uia_rounds_never_stores_the_token(gapp, gclient):
    g = guest(gclient)
    first = gclient.post(REG, json={"password": "pw", "guest_access_token": g.token})
    assert first.status_code == 401
    sid = first.json["session"]
    stored = runtime_of(gapp).parts["accounts"].get_uia_session(sid)
    assert g.token not in repr(stored)
    # the last round names neither the guest nor the password: the session remembers both
    r = gclient.post(REG, json={"auth": {"type": "m.login.dummy", "session": sid}})
    assert r.status_code == 200, r.json
    assert r.json["user_id"] == g.user_id


def test_upgrade_refusals(gclient):
    g, alice = guest(gclient), full_user(gclient, "alice")
    cases = [
        ({"username": "someoneelse", "guest_access_token": g.token}, 403, "M_FORBIDDEN"),
        ({"username": "alice", "guest_access_token": g.token}, 403, "M_FORBIDDEN"),
        ({"guest_access_token": alice.token}, 403, "M_FORBIDDEN"),      # not a guest
        ({"guest_access_token": "nonsense"}, 403, "M_FORBIDDEN"),
        ({"guest_access_token": 5}, 400, "M_INVALID_PARAM"),
        # a numeric name without the guest's token is not an upgrade
        ({"username": g.user_id[1:].split(":")[0]}, 400, "M_INVALID_USERNAME"),
    ]
    for body, status, errcode in cases:
        r = upgrade(gclient, {"password": "pw", **body})
        assert (r.status_code, r.json["errcode"]) == (status, errcode), (body, r.json)
    assert g.req("GET", f"{V3}/account/whoami")["is_guest"] is True
