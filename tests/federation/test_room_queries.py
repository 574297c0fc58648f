"""The room queries served to other servers (federation/room_queries.py): /backfill,
/get_missing_events, /state, /state_ids, /event, /event_auth, /timestamp_to_event — their
shapes, limits and errors (unsigned, ACL-denied origin, a server not in the room, unknown
room / event) and history visibility per requesting server; over a real app and store."""
from __future__ import annotations

from urllib.parse import quote

import pytest

from actors.room_messages import EventSpec
from protocol.hashing import compute_event_id
from tests.apps import app_factory
from tests.federation.pdus_helpers import (C3, ORIGIN, SERVER, V1, Remote, User, install_parts,
                                           join_remote, local_send, room_state, snapshot)
from tests.federation.queries_helpers import fed_req
from web.app import runtime_of

BOB = f"@bob:{ORIGIN}"


@pytest.fixture
def hs(tmp_path):
    yield from app_factory(tmp_path)


class Room:
    """A room made by local alice, with remote bob joined; a few messages."""

    def __init__(self, app, *, join_bob=True, preset="public_chat"):
        self.app = app
        if "test_alice" not in app.extensions:
            app.extensions["test_alice"] = User(app, "alice")
        self.alice = app.extensions["test_alice"]
        self.room_id = self.alice.req("POST", f"{C3}/createRoom", {"preset": preset})["room_id"]
        self.rv = runtime_of(app).parts["rooms"].events.room_version(self.room_id)
        if join_bob:
            self.bob_join = join_remote(app, self.room_id, BOB)

    def say(self, body, sender=None):
        return local_send(self.app, self.room_id, EventSpec(
            type="m.room.message", sender=sender or self.alice.user_id,
            content={"msgtype": "m.text", "body": body}))

    def state(self, etype, content, state_key=""):
        return local_send(self.app, self.room_id, EventSpec(
            type=etype, sender=self.alice.user_id, content=content, state_key=state_key))

    def ids(self, pdus):
        return [compute_event_id(p, self.rv) for p in pdus]

    @property
    def q(self):
        return quote(self.room_id, safe="")


@pytest.fixture
def app(hs):
    a = hs()
    install_parts(a, [Remote()])
    return a


def qid(event_id):
    return quote(event_id, safe="")


def _paths(room):
    e = qid(room.bob_join)
    return [("GET", f"{V1}/backfill/{room.q}", {"v": room.bob_join, "limit": "5"}, None),
            ("POST", f"{V1}/get_missing_events/{room.q}", None,
             {"earliest_events": [], "latest_events": [room.bob_join]}),
            ("GET", f"{V1}/state/{room.q}", {"event_id": room.bob_join}, None),
            ("GET", f"{V1}/state_ids/{room.q}", {"event_id": room.bob_join}, None),
            ("GET", f"{V1}/event/{e}", None, None),
            ("GET", f"{V1}/event_auth/{room.q}/{e}", None, None),
            ("GET", f"{V1}/timestamp_to_event/{room.q}", {"ts": "0", "dir": "f"}, None)]


# ---------------------------------------------------------------------- access
def test_every_route_needs_a_signed_request(app):
    room = Room(app)
    for method, path, query, body in _paths(room):
        got = fed_req(app, method, path, origin=None, query=query, body=body, status=401)
        assert got["errcode"] == "M_UNAUTHORIZED"


def test_every_route_answers_a_server_in_the_room(app):
    room = Room(app)
    for method, path, query, body in _paths(room):
        fed_req(app, method, path, query=query, body=body, status=200)


def test_acl_denied_origin_gets_403_everywhere(app):
    room = Room(app)
    room.state("m.room.server_acl", {"allow": ["*"], "deny": [ORIGIN]})
    for method, path, query, body in _paths(room):
        got = fed_req(app, method, path, query=query, body=body, status=403)
        assert got["errcode"] == "M_FORBIDDEN" and "ACL" in got["error"]
    # the port does not matter, and an allowed server passes the ACL (then the membership
    # check applies: no user of other.example is joined)
    got = fed_req(app, "GET", f"{V1}/state_ids/{room.q}", query={"event_id": room.bob_join},
                  origin=f"{ORIGIN}:8448", status=403)
    assert "ACL" in got["error"]
    got = fed_req(app, "GET", f"{V1}/state_ids/{room.q}", query={"event_id": room.bob_join},
                  origin="other.example", status=403)
    assert got["error"] == "Host not in room"


def test_server_not_in_room_is_refused_unless_world_readable(app):
    room = Room(app, join_bob=False)
    first = room.say("hi")
    for method, path, query, body in _paths(SimpleRoom(room, first)):
        got = fed_req(app, method, path, query=query, body=body, status=403)
        assert got == {"errcode": "M_FORBIDDEN", "error": "Host not in room"}
    room.state("m.room.history_visibility", {"history_visibility": "world_readable"})
    for method, path, query, body in _paths(SimpleRoom(room, first)):
        fed_req(app, method, path, query=query, body=body, status=200)


class SimpleRoom:
    """_paths() over a room without bob: uses ``event_id`` where bob's join would be."""

    def __init__(self, room, event_id):
        self.q, self.bob_join = room.q, event_id


def test_a_server_whose_users_left_is_no_longer_in_the_room(app):
    room = Room(app)
    local_send(app, room.room_id, EventSpec(type="m.room.member", sender=BOB,
                                            content={"membership": "leave"}, state_key=BOB))
    fed_req(app, "GET", f"{V1}/event/{qid(room.bob_join)}", status=403)


def test_unknown_room_and_unknown_event(app):
    room = Room(app)
    unknown_room = quote("!nope:test.local", safe="")
    for path, query in [(f"{V1}/backfill/{unknown_room}", {"v": "$x", "limit": "1"}),
                        (f"{V1}/state_ids/{unknown_room}", {"event_id": "$x"}),
                        (f"{V1}/state/{unknown_room}", {"event_id": "$x"}),
                        (f"{V1}/event_auth/{unknown_room}/%24x", None),
                        (f"{V1}/timestamp_to_event/{unknown_room}", {"ts": "0", "dir": "b"})]:
        assert fed_req(app, "GET", path, query=query, status=404)["errcode"] == "M_NOT_FOUND"
    assert fed_req(app, "POST", f"{V1}/get_missing_events/{unknown_room}",
                   body={"earliest_events": [], "latest_events": []},
                   status=404)["errcode"] == "M_NOT_FOUND"
    for path, query in [(f"{V1}/event/%24unknown", None),
                        (f"{V1}/state_ids/{room.q}", {"event_id": "$unknown"}),
                        (f"{V1}/state/{room.q}", {"event_id": "$unknown"}),
                        (f"{V1}/event_auth/{room.q}/%24unknown", None)]:
        got = fed_req(app, "GET", path, query=query, status=404)
        assert got["errcode"] == "M_NOT_FOUND"
    # an event of another room is unknown in this one
    other = Room(app, join_bob=True)
    fed_req(app, "GET", f"{V1}/state_ids/{room.q}", query={"event_id": other.bob_join},
            status=404)
    fed_req(app, "GET", f"{V1}/event_auth/{room.q}/{qid(other.bob_join)}", status=404)


# ---------------------------------------------------------------------- /backfill
def test_backfill_shape_order_and_limit(app):
    room = Room(app)
    msgs = [room.say(f"m{i}") for i in range(5)]
    got = fed_req(app, "GET", f"{V1}/backfill/{room.q}", query={"v": msgs[-1], "limit": "3"})
    assert got["origin"] == SERVER and isinstance(got["origin_server_ts"], int)
    assert room.ids(got["pdus"]) == [msgs[4], msgs[3], msgs[2]]     # newest first, with v
    for pdu in got["pdus"]:
        assert "event_id" not in pdu and "unsigned" not in pdu      # v12 wire form
        assert pdu["room_id"] == room.room_id and pdu["content"]["body"].startswith("m")
    # walks back to the create event; never past the limit of 100
    everything = fed_req(app, "GET", f"{V1}/backfill/{room.q}",
                         query={"v": msgs[-1], "limit": "1000"})["pdus"]
    types = [p["type"] for p in everything]
    assert types[-1] == "m.room.create" and len(everything) == len(set(room.ids(everything)))
    depths = [p["depth"] for p in everything]
    assert depths == sorted(depths, reverse=True)
    # several starting points
    two = fed_req(app, "GET", f"{V1}/backfill/{room.q}",
                  query=[("v", msgs[1]), ("v", msgs[3]), ("limit", "2")])["pdus"]
    assert room.ids(two) == [msgs[3], msgs[2]]
    assert fed_req(app, "GET", f"{V1}/backfill/{room.q}",
                   query={"v": msgs[0], "limit": "0"})["pdus"] == []


def test_backfill_caps_at_100(app):
    room = Room(app)
    last = None
    for i in range(105):
        last = room.say(f"n{i}")
    got = fed_req(app, "GET", f"{V1}/backfill/{room.q}", query={"v": last, "limit": "500"})
    assert len(got["pdus"]) == 100


@pytest.mark.parametrize("query,errcode", [
    ({"limit": "3"}, "M_MISSING_PARAM"),
    ({"v": "$x"}, "M_MISSING_PARAM"),
    ({"v": "$x", "limit": "many"}, "M_INVALID_PARAM"),
    ({"v": "$x", "limit": "-1"}, "M_INVALID_PARAM"),
    ({"v": "$x", "limit": str(2**70)}, "M_INVALID_PARAM"),
])
def test_backfill_bad_parameters(app, query, errcode):
    room = Room(app)
    got = fed_req(app, "GET", f"{V1}/backfill/{room.q}", query=query, status=400)
    assert got["errcode"] == errcode


# ---------------------------------------------------------------------- visibility
def test_history_a_server_may_not_see_is_served_redacted(app):
    room = Room(app, join_bob=False)
    room.state("m.room.history_visibility", {"history_visibility": "joined"})
    secret = room.say("before bob")
    bob_join = join_remote(app, room.room_id, BOB)
    after = room.say("after bob")
    got = fed_req(app, "GET", f"{V1}/backfill/{room.q}", query={"v": after, "limit": "4"})
    by_id = dict(zip(room.ids(got["pdus"]), got["pdus"]))
    assert by_id[after]["content"]["body"] == "after bob"
    assert by_id[secret]["content"] == {}                   # redacted, not omitted
    assert by_id[secret]["hashes"] and by_id[secret]["signatures"]
    assert by_id[bob_join]["content"]["membership"] == "join"
    # the same through /event and /get_missing_events
    one = fed_req(app, "GET", f"{V1}/event/{qid(secret)}")["pdus"][0]
    assert one["content"] == {} and compute_event_id(one, room.rv) == secret
    missing = fed_req(app, "POST", f"{V1}/get_missing_events/{room.q}",
                      body={"earliest_events": [], "latest_events": [after], "limit": 3})
    assert {compute_event_id(p, room.rv): p["content"] for p in missing["events"]}[secret] == {}


def test_invited_visibility_counts_invites_of_the_server(app):
    room = Room(app, join_bob=False)
    room.state("m.room.history_visibility", {"history_visibility": "invited"})
    before = room.say("before invite")
    local_send(app, room.room_id, EventSpec(type="m.room.member", sender=room.alice.user_id,
                                            content={"membership": "invite"}, state_key=BOB))
    during = room.say("while invited")
    join_remote(app, room.room_id, BOB)
    got = fed_req(app, "GET", f"{V1}/event/{qid(during)}")["pdus"][0]
    assert got["content"]["body"] == "while invited"
    assert fed_req(app, "GET", f"{V1}/event/{qid(before)}")["pdus"][0]["content"] == {}


def test_shared_history_is_visible_to_a_server_that_joined_later(app):
    room = Room(app, join_bob=False)            # public_chat: shared
    early = room.say("early")
    join_remote(app, room.room_id, BOB)
    got = fed_req(app, "GET", f"{V1}/event/{qid(early)}")["pdus"][0]
    assert got["content"]["body"] == "early"


# ---------------------------------------------------------------------- get_missing_events
def test_get_missing_events_walks_between_earliest_and_latest(app):
    room = Room(app)
    m = [room.say(f"g{i}") for i in range(6)]
    got = fed_req(app, "POST", f"{V1}/get_missing_events/{room.q}",
                  body={"earliest_events": [m[1]], "latest_events": [m[5]], "limit": 10})
    assert room.ids(got["events"]) == [m[2], m[3], m[4]]      # oldest first, ends excluded
    got = fed_req(app, "POST", f"{V1}/get_missing_events/{room.q}",
                  body={"earliest_events": [m[0]], "latest_events": [m[5]], "limit": 2})
    assert room.ids(got["events"]) == [m[3], m[4]]            # the newest ones within limit
    depth3 = fed_req(app, "GET", f"{V1}/event/{qid(m[3])}")["pdus"][0]["depth"]
    got = fed_req(app, "POST", f"{V1}/get_missing_events/{room.q}",
                  body={"earliest_events": [], "latest_events": [m[5]], "min_depth": depth3})
    assert room.ids(got["events"]) == [m[3], m[4]]
    # an unknown latest event gives nothing; limit capped at 20
    assert fed_req(app, "POST", f"{V1}/get_missing_events/{room.q}",
                   body={"earliest_events": [], "latest_events": ["$nope"]})["events"] == []
    for i in range(25):
        room.say(f"x{i}")
    last = snapshot(app, room.room_id)["extremities"][0]
    got = fed_req(app, "POST", f"{V1}/get_missing_events/{room.q}",
                  body={"earliest_events": [], "latest_events": [last], "limit": 500})
    assert len(got["events"]) == 20


@pytest.mark.parametrize("body,errcode", [
    ({"latest_events": []}, "M_MISSING_PARAM"),
    ({"earliest_events": []}, "M_MISSING_PARAM"),
    ({"earliest_events": "x", "latest_events": []}, "M_BAD_JSON"),
    ({"earliest_events": [1], "latest_events": []}, "M_BAD_JSON"),
    ({"earliest_events": [], "latest_events": [], "limit": "5"}, "M_BAD_JSON"),
    ({"earliest_events": [], "latest_events": ["$a"] * 101}, "M_BAD_JSON"),
    ([], "M_BAD_JSON"),
])
def test_get_missing_events_bad_bodies(app, body, errcode):
    room = Room(app)
    got = fed_req(app, "POST", f"{V1}/get_missing_events/{room.q}", body=body, status=400)
    assert got["errcode"] == errcode


def test_get_missing_events_not_json(app):
    room = Room(app)
    got = fed_req(app, "POST", f"{V1}/get_missing_events/{room.q}", data=b"{nope",
                  status=400)
    assert got["errcode"] == "M_NOT_JSON"


# ---------------------------------------------------------------------- state
def test_state_ids_is_the_state_before_the_event(app):
    room = Room(app)
    first_name = room.state("m.room.name", {"name": "one"})
    second_name = room.state("m.room.name", {"name": "two"})
    msg = room.say("hello")
    current = room_state(app, room.room_id)
    got = fed_req(app, "GET", f"{V1}/state_ids/{room.q}", query={"event_id": msg})
    assert set(got["pdu_ids"]) == set(current.values())
    # at a state event: its own change is not included, the previous value is
    got = fed_req(app, "GET", f"{V1}/state_ids/{room.q}", query={"event_id": second_name})
    assert first_name in got["pdu_ids"] and second_name not in got["pdu_ids"]
    create = current[("m.room.create", "")]
    assert create in got["auth_chain_ids"]
    # the auth chain holds the ancestors, over auth_events, of the state events
    assert len(set(got["auth_chain_ids"])) == len(got["auth_chain_ids"])
    assert current[("m.room.power_levels", "")] in got["auth_chain_ids"]


def test_state_returns_events_and_their_auth_chain(app):
    room = Room(app)
    msg = room.say("hello")
    current = room_state(app, room.room_id)
    got = fed_req(app, "GET", f"{V1}/state/{room.q}", query={"event_id": msg})
    assert set(room.ids(got["pdus"])) == set(current.values())
    chain = room.ids(got["auth_chain"])
    assert current[("m.room.create", "")] in chain and msg not in chain
    assert all("unsigned" not in p for p in got["pdus"] + got["auth_chain"])
    ids = fed_req(app, "GET", f"{V1}/state_ids/{room.q}", query={"event_id": msg})
    assert set(chain) == set(ids["auth_chain_ids"])
    assert fed_req(app, "GET", f"{V1}/state/{room.q}",
                   status=400)["errcode"] == "M_MISSING_PARAM"
    assert fed_req(app, "GET", f"{V1}/state_ids/{room.q}",
                   status=400)["errcode"] == "M_MISSING_PARAM"


def test_state_before_the_create_event_is_empty(app):
    room = Room(app)
    create = room_state(app, room.room_id)[("m.room.create", "")]
    got = fed_req(app, "GET", f"{V1}/state_ids/{room.q}", query={"event_id": create})
    assert got == {"pdu_ids": [], "auth_chain_ids": []}


# ---------------------------------------------------------------------- event, event_auth
def test_event_returns_one_pdu(app):
    room = Room(app)
    msg = room.say("single")
    got = fed_req(app, "GET", f"{V1}/event/{qid(msg)}")
    assert got["origin"] == SERVER and len(got["pdus"]) == 1
    assert room.ids(got["pdus"]) == [msg] and got["pdus"][0]["content"]["body"] == "single"


def test_event_of_a_redacted_event_is_pruned(app):
    room = Room(app)
    msg = room.say("oops")
    local_send(app, room.room_id, EventSpec(type="m.room.redaction",
                                            sender=room.alice.user_id,
                                            content={}), redacts=msg)
    got = fed_req(app, "GET", f"{V1}/event/{qid(msg)}")["pdus"][0]
    assert got["content"] == {} and compute_event_id(got, room.rv) == msg


def test_event_auth_is_the_auth_chain(app):
    room = Room(app)
    msg = room.say("auth me", sender=BOB)
    ev = runtime_of(app).parts["rooms"].events.get_event(msg).event
    got = fed_req(app, "GET", f"{V1}/event_auth/{room.q}/{qid(msg)}")
    chain = room.ids(got["auth_chain"])
    assert set(ev["auth_events"]) <= set(chain) and msg not in chain
    current = room_state(app, room.room_id)
    assert current[("m.room.create", "")] in chain
    assert room.bob_join in chain
    assert current[("m.room.join_rules", "")] in chain    # an ancestor via bob's join
    depths = [p["depth"] for p in got["auth_chain"]]
    assert depths == sorted(depths)


# ---------------------------------------------------------------------- timestamp_to_event
def test_timestamp_to_event(app):
    room = Room(app)
    a = room.say("a")
    events = runtime_of(app).parts["rooms"].events
    ts_a = events.get_event(a).event["origin_server_ts"]
    got = fed_req(app, "GET", f"{V1}/timestamp_to_event/{room.q}",
                  query={"ts": str(ts_a), "dir": "b"})
    assert got == {"event_id": a, "origin_server_ts": ts_a}
    got = fed_req(app, "GET", f"{V1}/timestamp_to_event/{room.q}",
                  query={"ts": str(ts_a + 10**9), "dir": "b"})
    assert got["origin_server_ts"] <= ts_a + 10**9
    got = fed_req(app, "GET", f"{V1}/timestamp_to_event/{room.q}",
                  query={"ts": "0", "dir": "f"})
    assert got["event_id"] == room_state(app, room.room_id)[("m.room.create", "")]
    assert fed_req(app, "GET", f"{V1}/timestamp_to_event/{room.q}",
                   query={"ts": str(ts_a + 10**9), "dir": "f"},
                   status=404)["errcode"] == "M_NOT_FOUND"
    assert fed_req(app, "GET", f"{V1}/timestamp_to_event/{room.q}",
                   query={"ts": "0", "dir": "x"}, status=400)["errcode"] == "M_INVALID_PARAM"
    assert fed_req(app, "GET", f"{V1}/timestamp_to_event/{room.q}",
                   query={"ts": "0"}, status=400)["errcode"] == "M_MISSING_PARAM"
    assert fed_req(app, "GET", f"{V1}/timestamp_to_event/{room.q}",
                   query={"dir": "f"}, status=400)["errcode"] == "M_MISSING_PARAM"


# ---------------------------------------------------------------------- state at a merge
def test_state_before_a_state_event_with_two_prevs_is_resolved(hs):
    """store/room_federation_reads.py: a state event merging a fork gets the state before
    it by state resolution over its prevs' states (uses the real RoomActor's ReceivePdus to
    make the fork)."""
    from protocol.events import pdu_for_wire
    from store.room_federation_reads import RoomFederationReads

    app = hs()
    remote = Remote(ORIGIN)
    fed, _, _ = install_parts(app, [remote])
    room = Room(app)
    events = runtime_of(app).parts["rooms"].events
    state = room_state(app, room.room_id)
    fork_point = room.bob_join
    room.say("local branch")
    x = remote.event(room.rv, room.room_id, BOB, "m.room.member",
                     {"membership": "join", "displayname": "Bob on a branch"},
                     prev=[fork_point], auth=[state[("m.room.power_levels", "")],
                                              state[("m.room.join_rules", "")],
                                              state[("m.room.member", BOB)]],
                     depth=events.get_event(fork_point).event["depth"] + 1, state_key=BOB)
    assert fed.pdu_handler(ORIGIN, [pdu_for_wire(x, room.rv)]) == {x["event_id"]: {}}
    assert len(snapshot(app, room.room_id)["extremities"]) == 2
    name = room.state("m.room.name", {"name": "merged"})
    assert len(events.get_event(name).event["prev_events"]) == 2
    calls = []
    real = runtime_of(app).parts["rooms"]

    def recording(rv, sets, get_event):
        calls.append(len(sets))
        from protocol.state_res import resolve_state
        return resolve_state(rv, sets, get_event)
    reads = RoomFederationReads(real.db, real.events, real.state_groups, resolve=recording)
    before = reads.state_ids_before(name)
    assert calls == [2]
    assert before[("m.room.member", BOB)] in (x["event_id"], room.bob_join)
    # the same resolution the RoomActor made for the merge: after = its current state
    assert reads.state_ids_after(name) == room_state(app, room.room_id)
    assert ("m.room.name", "") not in before
    after = reads.state_ids_after(name)
    assert after == {**before, ("m.room.name", ""): name}
    got = fed_req(app, "GET", f"{V1}/state_ids/{room.q}", query={"event_id": name})
    assert set(got["pdu_ids"]) == set(before.values())
