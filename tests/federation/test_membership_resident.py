"""The resident side of membership across servers (federation/membership.py): make_join /
send_join v1 and v2, make_leave / send_leave, make_knock / send_knock, against a real app,
with events built and signed by a hand-made remote server (real ed25519 keys)."""
import pytest

from federation.join import RemoteMembership
from protocol.room_versions import KNOWN_ROOM_VERSIONS
from tests.federation.membership_helpers import F1, F2, event_id_of, network, q, wire

R = "remote.test"


@pytest.fixture
def net(tmp_path):
    yield from network(tmp_path)


@pytest.fixture
def a(net):
    return net.app("a.test")


@pytest.fixture
def remote(net):
    return net.remote(R)


def make(a, room, user, membership="join", ver=None, origin=R):
    query = {"ver": ver} if ver is not None else None
    return a.fed_req("GET", f"{F1}/make_{membership}/{q(room)}/{q(user)}", origin=origin,
                     query=query)


def template(a, room, user, membership="join", rv="10"):
    r = make(a, room, user, membership, ver=[rv] if membership != "leave" else None)
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.get_json()["event"]


def send(a, room, ev, rv, what="send_join", version=F2, origin=R, query=None):
    eid = event_id_of(ev, rv)
    return a.fed_req("PUT", f"{version}/{what}/{q(room)}/{q(eid)}", wire(ev, rv),
                     origin=origin, query=query)


def test_make_join_negotiates_the_room_version(a, remote):
    alice = a.user("alice")
    room = alice.create_room(preset="public_chat", room_version="10")
    bob = remote.user("bob")
    r = make(a, room, bob, ver=["1", "2"])
    assert r.status_code == 400
    body = r.get_json()
    assert body == {"errcode": "M_INCOMPATIBLE_ROOM_VERSION", "error": body["error"],
                    "room_version": "10"}
    r = make(a, room, bob)   # no ver: only room version 1 is assumed
    assert r.get_json()["errcode"] == "M_INCOMPATIBLE_ROOM_VERSION"
    r = make(a, room, bob, ver=["9", "10"])
    assert r.status_code == 200
    body = r.get_json()
    assert body["room_version"] == "10"
    ev = body["event"]
    assert (ev["type"], ev["sender"], ev["state_key"], ev["room_id"]) == \
        ("m.room.member", bob, bob, room)
    assert ev["content"]["membership"] == "join"
    assert ev["prev_events"] and ev["auth_events"]
    # a user of another server than the requester, an unknown room, an unsigned request
    assert make(a, room, "@eve:other.test", ver=["10"]).status_code == 403
    r = make(a, "!nope:a.test", bob, ver=["10"])
    assert (r.status_code, r.get_json()["errcode"]) == (404, "M_NOT_FOUND")
    r = a.http.get(f"{F1}/make_join/{q(room)}/{q(bob)}?ver=10")
    assert (r.status_code, r.get_json()["errcode"]) == (401, "M_UNAUTHORIZED")


def test_send_join_v2_answers_state_and_auth_chain_that_verify(a, remote):
    alice = a.user("alice")
    room = alice.create_room(preset="public_chat", room_version="10", name="Lobby")
    alice.send(room, "hello")
    rv = KNOWN_ROOM_VERSIONS["10"]
    bob = remote.user("bob")
    forwarded = []
    a.fed.extras["membership_received"] = lambda *args: forwarded.append(args)
    ev = remote.sign_template(rv, template(a, room, bob), displayname="Bob")
    r = send(a, room, ev, rv)
    assert r.status_code == 200, r.get_data(as_text=True)
    body = r.get_json()
    assert body["origin"] == "a.test"
    assert body["members_omitted"] is False
    keys = {(e["type"], e["state_key"]) for e in body["state"]}
    assert {("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.join_rules", ""),
            ("m.room.name", ""), ("m.room.member", alice.user_id)} <= keys
    assert ("m.room.member", bob) not in keys          # the state BEFORE the join
    assert body["event"]["signatures"][R]
    assert a.member(room, bob) == "join"
    # the answer passes the joining side's own verification (signatures, hashes, auth)
    joiner = RemoteMembership(a.fed, a.rooms)
    mine = dict(ev, event_id=event_id_of(ev, rv))
    join_ev, state, chain = joiner.verify_join_answer(rv, room, mine, body)
    assert join_ev["event_id"] == mine["event_id"]
    assert len(state) == len(body["state"]) and body["auth_chain"]
    assert forwarded == [(room, mine["event_id"], R)]   # for the room's other servers
    # the same join again: answered again, not a second event, not forwarded again
    r = send(a, room, ev, rv)
    assert r.status_code == 200
    assert a.member(room, bob) == "join"
    assert len(forwarded) == 1


def test_send_join_v1_shape(a, remote):
    alice = a.user("alice")
    room = alice.create_room(preset="public_chat", room_version="1")
    rv = KNOWN_ROOM_VERSIONS["1"]
    bob = remote.user("bob")
    tpl = template(a, room, bob, rv="1")
    assert all(isinstance(p, list) for p in tpl["prev_events"])   # v1 references
    ev = remote.sign_template(rv, tpl)
    r = send(a, room, ev, rv, version=F1)
    assert r.status_code == 200, r.get_data(as_text=True)
    status, body = r.get_json()
    assert status == 200
    assert {"state", "auth_chain", "origin"} <= set(body)
    assert any(e["type"] == "m.room.create" for e in body["state"])
    assert all("event_id" in e for e in body["state"])       # v1 events carry their id
    assert a.member(room, bob) == "join"


def test_send_join_refusals(a, remote):
    alice = a.user("alice")
    room = alice.create_room(preset="public_chat", room_version="10")
    rv = KNOWN_ROOM_VERSIONS["10"]
    bob = remote.user("bob")
    tpl = template(a, room, bob)

    def refused(ev, code=400, errcode="M_INVALID_PARAM", **kw):
        r = send(a, room, ev, rv, **kw)
        assert r.status_code == code, r.get_data(as_text=True)
        assert r.get_json()["errcode"] == errcode
        return r.get_json()["error"]

    # not a join
    assert "membership" in refused(remote.sign_template(rv, tpl, membership="leave"))
    # sent by another server than the sender's
    refused(remote.sign_template(rv, tpl), origin="evil.test")
    # a forged signature
    ev = remote.sign_template(rv, tpl)
    ev["signatures"][R] = {k: "A" * 86 for k in ev["signatures"][R]}
    assert "signature" in refused(ev)
    # content changed after signing: the content hash no longer matches
    ev = remote.sign_template(rv, tpl)
    ev["content"] = dict(ev["content"], displayname="Mallory")
    assert "hash" in refused(ev)
    # the event id in the path is not the event's
    ev = remote.sign_template(rv, tpl)
    r = a.fed_req("PUT", f"{F2}/send_join/{q(room)}/{q('$notit')}", wire(ev, rv), origin=R)
    assert (r.status_code, r.get_json()["errcode"]) == (400, "M_INVALID_PARAM")
    # not an object / not a PDU
    r = a.fed_req("PUT", f"{F2}/send_join/{q(room)}/{q('$x')}", [1, 2], origin=R)
    assert r.status_code == 400
    assert a.member(room, bob) is None


def test_banned_remote_user_cannot_join(a, remote):
    alice = a.user("alice")
    room = alice.create_room(preset="public_chat", room_version="10")
    rv = KNOWN_ROOM_VERSIONS["10"]
    bob = remote.user("bob")
    early = template(a, room, bob)          # made before the ban
    alice.req("POST", f"/_matrix/client/v3/rooms/{q(room)}/ban", {"user_id": bob})
    assert a.member(room, bob) == "ban"
    r = make(a, room, bob, ver=["10"])
    assert (r.status_code, r.get_json()["errcode"]) == (403, "M_FORBIDDEN")
    r = send(a, room, remote.sign_template(rv, early), rv)
    assert (r.status_code, r.get_json()["errcode"]) == (403, "M_FORBIDDEN")
    assert a.member(room, bob) == "ban"


def test_omit_members_partial_state(a, remote):
    alice = a.user("alice")
    room = alice.create_room(preset="public_chat", room_version="10")
    locals_ = [a.user(f"u{i}") for i in range(7)]
    for u in locals_:
        u.req("POST", f"/_matrix/client/v3/join/{q(room)}")
    rv = KNOWN_ROOM_VERSIONS["10"]
    bob = remote.user("bob")
    ev = remote.sign_template(rv, template(a, room, bob))
    r = send(a, room, ev, rv, query={"omit_members": "true"})
    assert r.status_code == 200, r.get_data(as_text=True)
    body = r.get_json()
    assert body["members_omitted"] is True
    assert body["servers_in_room"] == ["a.test"]
    members = [e for e in body["state"] if e["type"] == "m.room.member"]
    assert 0 < len(members) <= 5                       # the heroes only, of 8 members
    assert any(e["type"] == "m.room.join_rules" for e in body["state"])
    state_ids = {event_id_of(e, rv) for e in body["state"]}
    chain_ids = {event_id_of(e, rv) for e in body["auth_chain"]}
    assert not state_ids & chain_ids                   # no repeats in the auth chain
    # the full answer (another server joining) has every member
    carol = remote.user("carol")
    ev = remote.sign_template(rv, template(a, room, carol))
    full = send(a, room, ev, rv).get_json()
    assert full["members_omitted"] is False
    assert len([e for e in full["state"] if e["type"] == "m.room.member"]) == 9
    assert "servers_in_room" not in full
    r = send(a, room, ev, rv, query={"omit_members": "maybe"})
    assert r.status_code == 400


def test_restricted_join_is_countersigned(a, remote):
    alice = a.user("alice")
    rv = KNOWN_ROOM_VERSIONS["10"]
    space = alice.create_room(preset="public_chat", room_version="10")
    room = alice.create_room(room_version="10", initial_state=[{
        "type": "m.room.join_rules", "state_key": "",
        "content": {"join_rule": "restricted",
                    "allow": [{"type": "m.room_membership", "room_id": space}]}}])
    bob = remote.user("bob")
    # not in the allowed room yet: refused
    r = make(a, room, bob, ver=["10"])
    assert r.status_code == 403, r.get_data(as_text=True)
    assert send(a, space, remote.sign_template(rv, template(a, space, bob)), rv).status_code \
        == 200
    tpl = template(a, room, bob)
    assert tpl["content"]["join_authorised_via_users_server"] == alice.user_id
    ev = remote.sign_template(rv, tpl)
    r = send(a, room, ev, rv)
    assert r.status_code == 200, r.get_data(as_text=True)
    signed = r.get_json()["event"]
    assert set(signed["signatures"]) == {R, "a.test"}
    a.fed.keyring.verify_event(dict(signed, event_id=event_id_of(ev, rv)), rv)
    assert a.member(room, bob) == "join"
    # an authoriser of another server is not ours to countersign
    carol = remote.user("carol")
    assert send(a, space, remote.sign_template(rv, template(a, space, carol)), rv) \
        .status_code == 200
    tpl = template(a, room, carol)
    ev = remote.sign_template(rv, tpl, join_authorised_via_users_server="@x:other.test")
    r = send(a, room, ev, rv)
    assert (r.status_code, r.get_json()["errcode"]) == (400, "M_UNABLE_TO_GRANT_JOIN")


def test_make_and_send_leave(a, remote):
    alice = a.user("alice")
    room = alice.create_room(preset="public_chat", room_version="10")
    rv = KNOWN_ROOM_VERSIONS["10"]
    bob, carol = remote.user("bob"), remote.user("carol")
    for u in (bob, carol):
        assert send(a, room, remote.sign_template(rv, template(a, room, u)), rv).status_code \
            == 200
    leave = remote.sign_template(rv, template(a, room, bob, "leave"))
    r = send(a, room, leave, rv, what="send_leave")
    assert (r.status_code, r.get_json()) == (200, {})
    assert a.member(room, bob) == "leave"
    leave = remote.sign_template(rv, template(a, room, carol, "leave"))
    r = send(a, room, leave, rv, what="send_leave", version=F1)
    assert (r.status_code, r.get_json()) == (200, [200, {}])
    assert a.member(room, carol) == "leave"
    # a join sent as a leave is refused
    join = remote.sign_template(rv, template(a, room, bob))
    assert send(a, room, join, rv, what="send_leave").status_code == 400


def test_make_and_send_knock(a, remote):
    alice = a.user("alice")
    room = alice.create_room(room_version="10", name="Knock here", initial_state=[
        {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}])
    rv = KNOWN_ROOM_VERSIONS["10"]
    bob = remote.user("bob")
    r = make(a, room, bob, "knock", ver=["6"])
    assert (r.status_code, r.get_json()["errcode"]) == (400, "M_INCOMPATIBLE_ROOM_VERSION")
    tpl = template(a, room, bob, "knock")
    r = send(a, room, remote.sign_template(rv, tpl, reason="let me in"), rv, what="send_knock",
             version=F1)
    assert r.status_code == 200, r.get_data(as_text=True)
    state = r.get_json()["knock_room_state"]
    types = [e["type"] for e in state]
    assert types[0] == "m.room.create"
    assert {"m.room.join_rules", "m.room.name"} <= set(types)
    assert a.member(room, bob) == "knock"
    # knocking on a public room is refused by the auth rules
    pub = alice.create_room(preset="public_chat", room_version="10")
    assert make(a, pub, bob, "knock", ver=["10"]).status_code == 403


def test_server_acl_refuses_membership_requests(a, remote):
    alice = a.user("alice")
    room = alice.create_room(preset="public_chat", room_version="10")
    alice.state(room, "m.room.server_acl", {"allow": ["a.test"], "deny": []})
    r = make(a, room, remote.user("bob"), ver=["10"])
    assert (r.status_code, r.get_json()["errcode"]) == (403, "M_FORBIDDEN")


@pytest.mark.parametrize("method,path,body", [
    ("PUT", f"{F2}/send_join/{{room}}/$x", "a string"),
    ("PUT", f"{F2}/send_join/{{room}}/$x", {"type": "m.room.member"}),
    ("PUT", f"{F2}/send_join/{{room}}/$x", {"type": 1, "content": [], "depth": "x"}),
    ("PUT", f"{F1}/send_join/not-a-room/$x", {}),
    ("PUT", f"{F2}/send_leave/{{room}}/$x", None),
    ("PUT", f"{F1}/send_knock/{{room}}/$x", {"prev_events": "x"}),
    ("PUT", f"{F2}/invite/{{room}}/$x", {"room_version": 10, "event": {}}),
    ("PUT", f"{F2}/invite/{{room}}/$x", {"room_version": "10", "event": "x"}),
    ("PUT", f"{F2}/invite/{{room}}/$x", {"room_version": "10", "event": {},
                                         "invite_room_state": "x"}),
    ("PUT", f"{F1}/invite/{{room}}/$x", ["x"]),
    ("GET", f"{F1}/make_join/{{room}}/not-a-user", None),
    ("GET", f"{F1}/make_knock/{{room}}/%40bob%3Aremote.test?ver=", None),
    ("GET", f"{F1}/make_leave/!x:a.test/%40bob%3Aremote.test", None),
])
def test_garbage_is_answered_with_matrix_errors(a, method, path, body):
    alice = a.user("alice")
    room = alice.create_room(preset="public_chat", room_version="10")
    r = a.fed_req(method, path.replace("{room}", q(room)), body)
    assert 400 <= r.status_code < 500, r.get_data(as_text=True)
    assert r.get_json()["errcode"].startswith("M_")
