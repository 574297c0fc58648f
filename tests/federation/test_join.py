"""The joining side (federation/join.py through web/rooms.py), end to end between two real
Atrium apps bridged in-process: a.test holds the rooms, b.test's users join by room id with
``via`` and by remote alias, are invited (with countersignature), accept, reject, knock;
forged send_join answers are refused."""
import copy

import pytest

from tests.federation.membership_helpers import F1, F2, V, network, q

A, B = "a.test", "b.test"


@pytest.fixture
def net(tmp_path):
    yield from network(tmp_path)


@pytest.fixture
def a(net):
    return net.app(A)


@pytest.fixture
def b(net):
    return net.app(B)


def state_of(user, room_id, sync=None):
    got = sync or user.sync()
    room = got["rooms"]["join"][room_id]
    return {(e["type"], e["state_key"]): e for e in
            room["state"]["events"] + room["timeline"]["events"] if "state_key" in e}


@pytest.mark.parametrize("version", ["1", "10", "12"])
def test_join_by_room_id_with_via(a, b, version):
    alice, bob = a.user("alice"), b.user("bob")
    room = alice.create_room(preset="public_chat", room_version=version, name="Pub")
    alice.send(room, "before bob")
    r = bob.req("POST", f"{V}/join/{q(room)}", {}, query={"via": A})
    assert r == {"room_id": room}
    assert a.member(room, bob.user_id) == "join"
    assert b.member(room, bob.user_id) == "join"
    assert b.rooms.room_version(room).identifier == version
    state = {(e["type"], e["state_key"]): e
             for e in bob.req("GET", f"{V}/rooms/{q(room)}/state")}
    assert state[("m.room.name", "")]["content"] == {"name": "Pub"}
    assert state[("m.room.member", alice.user_id)]["content"]["membership"] == "join"
    assert state[("m.room.member", bob.user_id)]["content"]["membership"] == "join"
    assert room in bob.req("GET", f"{V}/joined_rooms")["joined_rooms"]
    assert room in bob.sync()["rooms"]["join"]
    # joining again is answered at once (no second handshake)
    calls = len(b.client.calls)
    bob.req("POST", f"{V}/rooms/{q(room)}/join", {})
    assert len(b.client.calls) == calls


def test_first_sync_after_a_remote_join_has_the_room_state(a, b):
    alice, bob = a.user("alice"), b.user("bob")
    room = alice.create_room(preset="public_chat", room_version="10", name="Pub")
    bob.req("POST", f"{V}/join/{q(room)}", {}, query={"via": A})
    state = state_of(bob, room)
    assert state[("m.room.name", "")]["content"] == {"name": "Pub"}
    assert state[("m.room.member", alice.user_id)]["content"]["membership"] == "join"


def test_join_by_remote_alias(a, b):
    alice, bob = a.user("alice"), b.user("bob")
    room = alice.create_room(preset="public_chat", room_alias_name="lobby", room_version="10")
    r = bob.req("POST", f"{V}/join/{q('#lobby:a.test')}", {})
    assert r == {"room_id": room}
    assert ("GET", A, f"{F1}/query/directory") in [c for c in b.client.calls]
    assert a.member(room, bob.user_id) == "join"
    bob.req("POST", f"{V}/join/{q('#nope:a.test')}", {}, status=404)


def test_join_without_servers_or_reachable_servers(net, a, b):
    alice, bob = a.user("alice"), b.user("bob")
    room = alice.create_room(preset="public_chat", room_version="12")   # no server in the id
    r = bob.req("POST", f"{V}/join/{q(room)}", {}, status=404)
    assert r["errcode"] == "M_NOT_FOUND"
    net.down.add(A)
    r = bob.req("POST", f"{V}/join/{q(room)}", {}, status=502, query={"via": A})
    assert r["errcode"] == "M_UNKNOWN"
    assert b.rooms.room_version(room) is None


def test_banned_user_join_is_refused_by_the_resident(a, b):
    alice, bob = a.user("alice"), b.user("bob")
    room = alice.create_room(preset="public_chat", room_version="10")
    alice.req("POST", f"{V}/rooms/{q(room)}/ban", {"user_id": bob.user_id})
    r = bob.req("POST", f"{V}/join/{q(room)}", {}, status=403, query={"via": A})
    assert r["errcode"] == "M_FORBIDDEN"
    assert b.rooms.room_version(room) is None


def forge(fn):
    def tamper(answer):
        answer = copy.deepcopy(answer)
        fn(answer)
        return answer
    return tamper


@pytest.mark.parametrize("how", ["bad_signature", "no_create", "unauthorised_state",
                                 "other_room"])
def test_forged_send_join_answer_is_refused(net, a, b, how):
    alice, bob = a.user("alice"), b.user("bob")
    room = alice.create_room(preset="public_chat", room_version="10")
    other = alice.create_room(preset="public_chat", room_version="10")
    mallory = net.remote("evil.test")

    def change(answer):
        state = answer["state"]
        if how == "bad_signature":
            pl = next(e for e in state if e["type"] == "m.room.power_levels")
            pl["content"]["users"][bob.user_id] = 100   # hash breaks: re-signed by the wrong key
            from protocol.hashing import add_content_hash
            from protocol.room_versions import KNOWN_ROOM_VERSIONS
            from protocol.signing import sign_event

            rv = KNOWN_ROOM_VERSIONS["10"]
            add_content_hash(pl, rv)
            pl["signatures"] = {}
            sign_event(pl, rv, A, mallory.sk)
        elif how == "no_create":
            answer["state"] = [e for e in state if e["type"] != "m.room.create"]
            answer["auth_chain"] = [e for e in answer["auth_chain"]
                                    if e["type"] != "m.room.create"]
        elif how == "unauthorised_state":
            # a topic set by someone who never joined, signed by its own (known) server
            from protocol.room_versions import KNOWN_ROOM_VERSIONS
            from tests.federation.membership_helpers import wire

            rv = KNOWN_ROOM_VERSIONS["10"]
            create = next(e for e in state if e["type"] == "m.room.create")
            pl = next(e for e in state if e["type"] == "m.room.power_levels")
            from tests.federation.membership_helpers import event_id_of

            ev = mallory.event(rv, room_id=room, sender="@m:evil.test", type="m.room.topic",
                               content={"topic": "pwned"}, state_key="",
                               prev=[event_id_of(pl, rv)],
                               auth=[event_id_of(create, rv), event_id_of(pl, rv)], depth=9)
            state.append(wire(ev, rv))
        elif how == "other_room":
            for e in state:
                if e["type"] == "m.room.name":
                    e["room_id"] = other
            answer["state"].append(dict(state[0], room_id=other))

    net.tamper[("PUT", f"{F2}/send_join/")] = forge(change)
    r = bob.req("POST", f"{V}/join/{q(room)}", {}, status=502, query={"via": A})
    assert r["errcode"] == "M_UNKNOWN"
    assert b.rooms.room_version(room) is None
    assert room not in bob.sync()["rooms"]["join"]


def test_remote_invite_then_accept(a, b):
    alice, bob = a.user("alice"), b.user("bob")
    room = alice.create_room(room_version="10", name="Private")   # invite-only
    first = bob.sync()
    alice.req("POST", f"{V}/rooms/{q(room)}/invite", {"user_id": bob.user_id})
    assert a.member(room, bob.user_id) == "invite"
    inv_ev = a.state_event(room, "m.room.member", bob.user_id)
    assert set(inv_ev["signatures"]) == {A, B}                    # countersigned by b.test
    got = bob.sync(first["next_batch"])
    stripped = {(e["type"], e["state_key"]): e
                for e in got["rooms"]["invite"][room]["invite_state"]["events"]}
    assert ("m.room.create", "") in stripped and ("m.room.join_rules", "") in stripped
    assert stripped[("m.room.name", "")]["content"] == {"name": "Private"}
    assert stripped[("m.room.member", alice.user_id)]["content"]["membership"] == "join"
    assert stripped[("m.room.member", bob.user_id)]["content"]["membership"] == "invite"
    # accepting = joining through the inviting server (no via needed)
    bob.req("POST", f"{V}/join/{q(room)}", {})
    assert a.member(room, bob.user_id) == "join"
    after = bob.sync(got["next_batch"])
    assert room in after["rooms"]["join"] and room not in after["rooms"]["invite"]
    assert room not in bob.sync()["rooms"]["invite"]


def test_remote_invite_then_reject(a, b):
    alice, bob = a.user("alice"), b.user("bob")
    room = alice.create_room(room_version="10")
    alice.req("POST", f"{V}/rooms/{q(room)}/invite", {"user_id": bob.user_id})
    mid = bob.sync()
    assert room in mid["rooms"]["invite"]
    bob.req("POST", f"{V}/rooms/{q(room)}/leave", {})
    assert a.member(room, bob.user_id) == "leave"
    got = bob.sync(mid["next_batch"])
    assert room not in got["rooms"]["invite"]
    assert room in got["rooms"]["leave"]


def test_create_room_invites_remote_users(a, b):
    alice, bob = a.user("alice"), b.user("bob")
    room = alice.create_room(room_version="10", invite=[bob.user_id], is_direct=True)
    assert a.member(room, bob.user_id) == "invite"
    inv = bob.sync()["rooms"]["invite"][room]["invite_state"]["events"]
    me = next(e for e in inv if e["state_key"] == bob.user_id)
    assert me["content"] == {"membership": "invite", "is_direct": True}


def test_invite_of_an_unknown_remote_user_fails_cleanly(net, a, b):
    alice = a.user("alice")
    room = alice.create_room(room_version="10")
    r = alice.req("POST", f"{V}/rooms/{q(room)}/invite", {"user_id": "@ghost:b.test"},
                  status=403)
    assert r["errcode"] == "M_FORBIDDEN"
    net.down.add(B)
    r = alice.req("POST", f"{V}/rooms/{q(room)}/invite", {"user_id": "@x:b.test"}, status=502)
    assert r["errcode"] == "M_UNKNOWN"
    assert a.member(room, "@x:b.test") is None


def test_remote_knock(a, b):
    alice, bob = a.user("alice"), b.user("bob")
    room = alice.create_room(room_version="10", name="Knock", initial_state=[
        {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}])
    first = bob.sync()
    bob.req("POST", f"{V}/knock/{q(room)}", {"reason": "hi"}, query={"via": A})
    assert a.member(room, bob.user_id) == "knock"
    got = bob.sync(first["next_batch"])
    state = {(e["type"], e["state_key"]): e
             for e in got["rooms"]["knock"][room]["knock_state"]["events"]}
    assert state[("m.room.name", "")]["content"] == {"name": "Knock"}
    assert state[("m.room.member", bob.user_id)]["content"]["membership"] == "knock"
    # alice lets bob in; the invite reaches b.test and bob joins
    alice.req("POST", f"{V}/rooms/{q(room)}/invite", {"user_id": bob.user_id})
    bob.req("POST", f"{V}/join/{q(room)}", {})
    assert a.member(room, bob.user_id) == "join"


def test_kick_and_ban_of_remote_members_are_local_sends(a, b):
    alice, bob = a.user("alice"), b.user("bob")
    room = alice.create_room(preset="public_chat", room_version="10")
    bob.req("POST", f"{V}/join/{q(room)}", {}, query={"via": A})
    alice.req("POST", f"{V}/rooms/{q(room)}/kick", {"user_id": bob.user_id})
    assert a.member(room, bob.user_id) == "leave"
    alice.req("POST", f"{V}/rooms/{q(room)}/ban", {"user_id": bob.user_id})
    assert a.member(room, bob.user_id) == "ban"


def test_restricted_join_through_the_authorising_resident(a, b):
    alice, bob = a.user("alice"), b.user("bob")
    space = alice.create_room(preset="public_chat", room_version="10")
    room = alice.create_room(room_version="10", initial_state=[{
        "type": "m.room.join_rules", "state_key": "",
        "content": {"join_rule": "restricted",
                    "allow": [{"type": "m.room_membership", "room_id": space}]}}])
    r = bob.req("POST", f"{V}/join/{q(room)}", {}, status=403, query={"via": A})
    assert r["errcode"] == "M_FORBIDDEN"
    bob.req("POST", f"{V}/join/{q(space)}", {}, query={"via": A})
    bob.req("POST", f"{V}/join/{q(room)}", {}, query={"via": A})
    assert a.member(room, bob.user_id) == "join"
    mine = b.state_event(room, "m.room.member", bob.user_id)
    assert mine["content"]["join_authorised_via_users_server"] == alice.user_id
    assert set(mine["signatures"]) == {A, B}       # the resident's countersignature kept


def test_remote_joins_are_rate_limited_by_rc_joins_remote(net, a):
    b = net.app(B, rc_joins={"local": {"per_second": 1000, "burst_count": 1000},
                             "remote": {"per_second": 0.001, "burst_count": 1}})
    alice, bob = a.user("alice"), b.user("bob")
    one = alice.create_room(preset="public_chat", room_version="10")
    two = alice.create_room(preset="public_chat", room_version="10")
    bob.req("POST", f"{V}/join/{q(one)}", {}, query={"via": A})
    r = bob.req("POST", f"{V}/join/{q(two)}", {}, status=429, query={"via": A})
    assert r["errcode"] == "M_LIMIT_EXCEEDED"
    assert a.member(two, bob.user_id) is None
