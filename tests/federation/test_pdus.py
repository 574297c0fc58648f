"""The inbound PDU pipeline (federation/pdus.py) over a real app and store, with TEST
DOUBLES for the room actors (FakeRooms records the ReceivePdus it is asked), the keyring
(FakeKeyring) and the origin's answers (FakeClient): checks 1–3, ACL, unknown rooms,
missing prev_events, gaps (state before), missing auth events, crash isolation between
rooms, bounded answer time and per-room ordering across concurrent transactions.  The last
test runs against the real RoomActor (needs R's ReceivePdus)."""
from __future__ import annotations

import time
from urllib.parse import quote

import gevent
import pytest

import actors.room_messages as room_messages
from actors.room_messages import EventSpec
from protocol.events import pdu_for_wire
from protocol.hashing import compute_event_id
from supervision.errors import ActorParked
from tests.apps import app_factory
from tests.federation.pdus_helpers import (C3, ORIGIN, V1, FakeRooms, Remote, User,
                                           install_parts, join_remote, local_send, room_state,
                                           snapshot)
from tests.federation.queries_helpers import fed_req, within
from web.app import runtime_of

BOB = f"@bob:{ORIGIN}"
CAROL = f"@carol:{ORIGIN}"


@pytest.fixture
def hs(tmp_path):
    yield from app_factory(tmp_path)


class World:
    """One app, one remote server, fake rooms; rooms made by local alice with bob joined."""

    def __init__(self, app, **pipe_kw):
        self.app = app
        self.remote = Remote(ORIGIN)
        self.rooms = FakeRooms()
        self.fed, self.client, self.pipe = install_parts(app, [self.remote],
                                                         fake_rooms=self.rooms, **pipe_kw)
        self.alice = User(app, "alice")
        self.answers = {}      # (method, path) -> value or callable(query, body)
        self.client.handlers[ORIGIN] = self._answer

    def _answer(self, method, path, query, body):
        fn = self.answers.get((method, path))
        if fn is None:
            raise AssertionError(f"unexpected {method} {path}")
        return fn(query, body) if callable(fn) else fn

    def room(self):
        room_id = self.alice.req("POST", f"{C3}/createRoom", {"preset": "public_chat"})[
            "room_id"]
        join_remote(self.app, room_id, BOB)
        return room_id

    def rv(self, room_id):
        return runtime_of(self.app).parts["rooms"].events.room_version(room_id)

    def msg(self, room_id, body, *, prev=None, depth=None, sender=BOB, auth=None,
            remote=None):
        snap = snapshot(self.app, room_id)
        state = room_state(self.app, room_id)
        if auth is None:
            auth = [state[("m.room.power_levels", "")], state[("m.room.member", sender)]]
        return (remote or self.remote).event(
            self.rv(room_id), room_id, sender, "m.room.message", {"msgtype": "m.text",
                                                                  "body": body},
            prev=prev if prev is not None else snap["extremities"],
            auth=auth, depth=depth or snap["depth"] + 1)

    def wire(self, ev):
        return pdu_for_wire(ev, self.rv(ev["room_id"]))

    def send(self, *events, origin=ORIGIN):
        return self.fed.pdu_handler(origin, [self.wire(e) if "event_id" in e else e
                                             for e in events])


@pytest.fixture
def w(hs):
    return World(hs())


def ids(events):
    return [e["event_id"] for e in events]


# ---------------------------------------------------------------------- checks 1-3
def test_a_good_pdu_is_handed_to_its_room(w):
    room = w.room()
    ev = w.msg(room, "hello")
    assert w.send(ev) == {ev["event_id"]: {}}
    [msg] = w.rooms.messages(room)
    assert type(msg).__name__ == "ReceivePdus" and msg.origin == ORIGIN
    assert ids(msg.events) == [ev["event_id"]]
    assert msg.events[0]["content"]["body"] == "hello"
    assert msg.outliers == () and msg.state_before is None
    assert w.fed.keyring.verified == [ev["event_id"]]


def test_a_forged_signature_is_dropped_with_an_error(w):
    room = w.room()
    forger = Remote(ORIGIN)                      # same name, another key
    ev = w.msg(room, "forged", remote=forger)
    got = w.send(ev)
    assert got[ev["event_id"]]["error"].startswith("Signature check failed")
    assert w.rooms.asks == []


def test_a_bad_format_is_dropped_with_an_error(w):
    room = w.room()
    ev = w.msg(room, "x")
    pdu = w.wire(ev)
    pdu["depth"] = "deep"
    got = w.send(pdu)
    eid = compute_event_id(pdu, w.rv(room))
    assert got[eid]["error"].startswith("Invalid event format")
    assert w.rooms.asks == []


def test_a_bad_content_hash_hands_over_the_redacted_copy(w):
    room = w.room()
    ev = w.msg(room, "original")
    pdu = w.wire(ev)
    pdu["content"] = {"msgtype": "m.text", "body": "tampered"}   # signature still valid
    eid = compute_event_id(pdu, w.rv(room))
    assert w.send(pdu) == {eid: {}}
    [msg] = w.rooms.messages(room)
    assert msg.events[0]["event_id"] == eid and msg.events[0]["content"] == {}


def test_acl_denied_origin_gets_errors_and_nothing_reaches_the_room(w):
    room = w.room()
    ev = w.msg(room, "hi")
    local_send(w.app, room, EventSpec(type="m.room.server_acl", sender=w.alice.user_id,
                                      content={"allow": ["*"], "deny": [ORIGIN]},
                                      state_key=""))
    got = w.send(ev)
    assert "ACL" in got[ev["event_id"]]["error"]
    assert w.rooms.asks == []


def test_unknown_room_and_a_room_this_server_left(w):
    room = w.room()
    ev = w.msg(room, "hi")
    unknown = dict(w.wire(ev), room_id="!unknown:elsewhere.example")
    v1_style = dict(unknown, event_id="$abc:elsewhere.example")
    got = w.send(unknown, v1_style)
    assert got == {"$abc:elsewhere.example": {"error": "unknown room"}}
    local_send(w.app, room, EventSpec(type="m.room.member", sender=w.alice.user_id,
                                      content={"membership": "leave"},
                                      state_key=w.alice.user_id))
    assert w.send(ev) == {ev["event_id"]: {"error": "this server is not in the room"}}
    assert w.rooms.asks == []


def test_events_already_in_the_room_are_answered_without_the_actor(w):
    room = w.room()
    join_id = room_state(w.app, room)[("m.room.member", BOB)]
    stored = runtime_of(w.app).parts["rooms"].events.get_event(join_id).event
    assert w.send(stored) == {join_id: {}}
    assert w.rooms.asks == []


@pytest.mark.parametrize("outcome,answer", [
    ("soft_failed", {}), ("duplicate", {}), ("rejected", {"error": "rejected: because"}),
    ("missing", {"error": "missing: because"})])
def test_room_outcomes_become_the_answer(w, outcome, answer):
    room = w.room()
    ev = w.msg(room, "x")
    w.rooms.outcomes[ev["event_id"]] = outcome
    assert w.send(ev) == {ev["event_id"]: answer}


# ---------------------------------------------------------------------- missing prevs, gaps
def test_missing_prev_events_are_fetched_and_handed_over_first_in_order(w):
    room = w.room()
    snap = snapshot(w.app, room)
    a = w.msg(room, "a")
    b = w.msg(room, "b", prev=[a["event_id"]], depth=a["depth"] + 1)
    c = w.msg(room, "c", prev=[b["event_id"]], depth=b["depth"] + 1)
    asked = []

    def gme(query, body):
        asked.append(body)
        return {"events": [w.wire(b), w.wire(a)]}      # any order on the wire
    w.answers[("POST", f"{V1}/get_missing_events/{quote(room, safe='')}")] = gme
    assert w.send(c) == {c["event_id"]: {}}           # only the transaction's PDUs answered
    [body] = asked
    assert body["earliest_events"] == sorted(snap["extremities"])
    assert body["latest_events"] == [c["event_id"]] and body["limit"] == 10
    assert isinstance(body["min_depth"], int) and body["min_depth"] <= snap["depth"]
    [msg] = w.rooms.messages(room)
    assert ids(msg.events) == [a["event_id"], b["event_id"], c["event_id"]]
    assert msg.state_before is None and msg.outliers == ()


def test_fetched_missing_events_are_checked_too(w):
    room = w.room()
    a = w.msg(room, "a", remote=Remote(ORIGIN))       # forged: dropped
    c = w.msg(room, "c", prev=[a["event_id"]], depth=a["depth"] + 1)
    w.answers[("POST", f"{V1}/get_missing_events/{quote(room, safe='')}")] = {
        "events": [w.wire(a), {"not": "an event"}, "junk"]}
    w.answers[("GET", f"{V1}/state_ids/{quote(room, safe='')}")] = {"pdu_ids": [],
                                                                      "auth_chain_ids": []}
    w.answers[("GET", f"{V1}/event/{quote(a['event_id'], safe='')}")] = {
        "pdus": [w.wire(a)]}
    w.send(c)
    [msg] = w.rooms.messages(room)
    assert ids(msg.events) == [c["event_id"]]
    assert a["event_id"] not in ids(msg.outliers)


def test_a_gap_passes_the_state_before_the_event_and_the_fetched_state(w):
    room = w.room()
    qroom = quote(room, safe="")
    state = room_state(w.app, room)
    rv = w.rv(room)
    snap = snapshot(w.app, room)
    a = w.msg(room, "a")
    topic = w.remote.event(rv, room, BOB, "m.room.topic", {"topic": "remote topic"},
                           prev=[a["event_id"]], auth=[state[("m.room.power_levels", "")],
                                                       state[("m.room.member", BOB)]],
                           depth=a["depth"] + 1, state_key="")
    b = w.msg(room, "b", prev=[topic["event_id"]], depth=topic["depth"] + 1)
    c = w.msg(room, "c", prev=[b["event_id"]], depth=b["depth"] + 1)
    w.answers[("POST", f"{V1}/get_missing_events/{qroom}")] = {"events": []}
    state_ids_asked = []

    def state_ids(query, body):
        state_ids_asked.append(query)
        return {"pdu_ids": list(state.values()) + [topic["event_id"]],
                "auth_chain_ids": [state[("m.room.create", "")]]}
    w.answers[("GET", f"{V1}/state_ids/{qroom}")] = state_ids
    w.answers[("GET", f"{V1}/event/{quote(b['event_id'], safe='')}")] = {"pdus": [w.wire(b)]}
    w.answers[("GET", f"{V1}/event/{quote(topic['event_id'], safe='')}")] = {
        "pdus": [w.wire(topic)]}
    assert w.send(c) == {c["event_id"]: {}}
    assert state_ids_asked == [{"event_id": b["event_id"]}]   # the state at the missing prev
    [msg] = w.rooms.messages(room)
    assert ids(msg.events) == [c["event_id"]]
    expected = dict(state)
    expected[("m.room.topic", "")] = topic["event_id"]
    assert msg.state_before == {c["event_id"]: expected}
    assert ids(msg.outliers) == [topic["event_id"]]       # b is a message: not an outlier
    assert snap["extremities"] == snapshot(w.app, room)["extremities"]


def test_a_gap_at_a_state_prev_includes_the_prev_itself(w):
    room = w.room()
    qroom = quote(room, safe="")
    state = room_state(w.app, room)
    rv = w.rv(room)
    snap = snapshot(w.app, room)
    name = w.remote.event(rv, room, BOB, "m.room.name", {"name": "N"},
                          prev=[snap["extremities"][0] + "x"],
                          auth=[state[("m.room.power_levels", "")],
                                state[("m.room.member", BOB)]],
                          depth=snap["depth"] + 2, state_key="")
    c = w.msg(room, "c", prev=[name["event_id"]], depth=name["depth"] + 1)
    w.answers[("POST", f"{V1}/get_missing_events/{qroom}")] = {"events": []}
    w.answers[("GET", f"{V1}/state_ids/{qroom}")] = {"pdu_ids": list(state.values()),
                                                      "auth_chain_ids": []}
    w.answers[("GET", f"{V1}/event/{quote(name['event_id'], safe='')}")] = {
        "pdus": [w.wire(name)]}
    w.send(c)
    [msg] = w.rooms.messages(room)
    assert msg.state_before[c["event_id"]][("m.room.name", "")] == name["event_id"]
    assert ids(msg.outliers) == [name["event_id"]]


def test_a_gap_whose_state_cannot_be_fetched_still_reaches_the_room(w):
    room = w.room()
    a = w.msg(room, "a")
    c = w.msg(room, "c", prev=[a["event_id"]], depth=a["depth"] + 1)
    # the origin answers nothing useful: the room decides (it will say "missing")
    w.client.handlers[ORIGIN] = lambda *args: {"garbage": True}
    w.rooms.outcomes[c["event_id"]] = "missing"
    with within(3):
        got = w.send(c)
    assert got == {c["event_id"]: {"error": "missing: because"}}
    [msg] = w.rooms.messages(room)
    assert msg.state_before is None


def test_missing_auth_events_come_from_event_auth_as_outliers(w):
    room = w.room()
    state = room_state(w.app, room)
    rv = w.rv(room)
    snap = snapshot(w.app, room)
    carol_join = w.remote.event(rv, room, CAROL, "m.room.member", {"membership": "join"},
                                prev=snap["extremities"],
                                auth=[state[("m.room.power_levels", "")],
                                      state[("m.room.join_rules", "")]],
                                depth=snap["depth"] + 1, state_key=CAROL)
    c = w.msg(room, "from carol", sender=CAROL,
              auth=[state[("m.room.power_levels", "")], carol_join["event_id"]])
    known = runtime_of(w.app).parts["rooms"].events.get_event(
        state[("m.room.power_levels", "")]).event
    w.answers[("GET", f"{V1}/event_auth/{quote(room, safe='')}/"
                      f"{quote(c['event_id'], safe='')}")] = {
        "auth_chain": [w.wire(known), w.wire(carol_join)]}
    assert w.send(c) == {c["event_id"]: {}}
    [msg] = w.rooms.messages(room)
    assert ids(msg.events) == [c["event_id"]]
    assert ids(msg.outliers) == [carol_join["event_id"]]


def test_missing_auth_events_fall_back_to_single_event_fetches(w):
    room = w.room()
    state = room_state(w.app, room)
    rv = w.rv(room)
    snap = snapshot(w.app, room)
    carol_join = w.remote.event(rv, room, CAROL, "m.room.member", {"membership": "join"},
                                prev=snap["extremities"],
                                auth=[state[("m.room.power_levels", "")],
                                      state[("m.room.join_rules", "")]],
                                depth=snap["depth"] + 1, state_key=CAROL)
    c = w.msg(room, "from carol", sender=CAROL,
              auth=[state[("m.room.power_levels", "")], carol_join["event_id"]])
    w.answers[("GET", f"{V1}/event_auth/{quote(room, safe='')}/"
                      f"{quote(c['event_id'], safe='')}")] = {"auth_chain": []}
    w.answers[("GET", f"{V1}/event/{quote(carol_join['event_id'], safe='')}")] = {
        "pdus": [w.wire(carol_join)]}
    w.send(c)
    [msg] = w.rooms.messages(room)
    assert ids(msg.outliers) == [carol_join["event_id"]]


# ---------------------------------------------------------------------- isolation, time
def test_a_poisoned_room_does_not_affect_another_room_of_the_transaction(w):
    sick, healthy = w.room(), w.room()
    bad, good = w.msg(sick, "poison"), w.msg(healthy, "fine")
    w.rooms.fail[sick] = ActorParked(sick, retry_after_ms=1000)
    got = w.send(bad, good)
    assert got[good["event_id"]] == {}
    assert got[bad["event_id"]]["error"].startswith("The room could not take the event")
    w.rooms.fail[sick] = RuntimeError("boom")
    bad2 = w.msg(sick, "poison 2")
    good2 = w.msg(healthy, "fine 2")
    got = w.send(bad2, good2)
    assert got[good2["event_id"]] == {} and "error" in got[bad2["event_id"]]


def test_a_room_that_never_answers_does_not_hold_the_transaction(hs):
    w = World(hs(), txn_timeout=0.5)
    slow, fast = w.room(), w.room()
    a, b = w.msg(slow, "slow"), w.msg(fast, "fast")
    w.rooms.delay[slow] = 5
    with within(2):
        got = w.send(a, b)
    assert got[b["event_id"]] == {}
    assert "Timed out" in got[a["event_id"]]["error"]


def test_rooms_run_concurrently(w):
    r1, r2 = w.room(), w.room()
    a, b = w.msg(r1, "a"), w.msg(r2, "b")
    w.rooms.delay[r1] = w.rooms.delay[r2] = 0.4
    t0 = time.monotonic()
    w.send(a, b)
    assert time.monotonic() - t0 < 0.75


def test_one_room_keeps_arrival_order_across_concurrent_transactions(w):
    room = w.room()
    p = w.msg(room, "p")
    first = w.msg(room, "first", prev=[p["event_id"]], depth=p["depth"] + 1)
    second = w.msg(room, "second")

    def slow_gme(query, body):
        gevent.sleep(0.3)
        return {"events": [w.wire(p)]}
    w.answers[("POST", f"{V1}/get_missing_events/{quote(room, safe='')}")] = slow_gme
    t1 = gevent.spawn(w.send, first)
    gevent.sleep(0.05)
    t2 = gevent.spawn(w.send, second)
    gevent.joinall([t1, t2], timeout=3)
    assert t1.value == {first["event_id"]: {}} and t2.value == {second["event_id"]: {}}
    order = [ids(m.events) for m in w.rooms.messages(room)]
    assert order == [[p["event_id"], first["event_id"]], [second["event_id"]]]


def test_duplicates_inside_one_transaction_are_handed_over_once(w):
    room = w.room()
    ev = w.msg(room, "twice")
    assert w.send(ev, ev) == {ev["event_id"]: {}}
    [msg] = w.rooms.messages(room)
    assert ids(msg.events) == [ev["event_id"]]


def test_through_put_send(w):
    room = w.room()
    ev = w.msg(room, "over http")
    body = {"origin": ORIGIN, "origin_server_ts": 1, "pdus": [w.wire(ev)], "edus": []}
    got = fed_req(w.app, "PUT", f"{V1}/send/txn1", body=body)
    assert got == {"pdus": {ev["event_id"]: {}}}
    assert ids(w.rooms.messages(room)[0].events) == [ev["event_id"]]


# ---------------------------------------------------------------------- the real RoomActor
HAS_RECEIVE_PDUS = hasattr(room_messages, "ReceivePdus")


@pytest.mark.xfail(not HAS_RECEIVE_PDUS, strict=True,
                   reason="needs the RoomActor's ReceivePdus (engineer R, Federation II)")
def test_against_the_real_room_actor(hs):
    """END-TO-END OF THE PIPELINE WITH THE REAL RoomActor: a remote message is accepted
    into the room's timeline and becomes its forward extremity; a forged one never
    reaches it."""
    app = hs()
    remote = Remote(ORIGIN)
    fed, client, _ = install_parts(app, [remote])
    alice = User(app, "alice")
    room = alice.req("POST", f"{C3}/createRoom", {"preset": "public_chat"})["room_id"]
    join_remote(app, room, BOB)
    rv = runtime_of(app).parts["rooms"].events.room_version(room)
    snap = snapshot(app, room)
    state = room_state(app, room)
    ev = remote.event(rv, room, BOB, "m.room.message", {"msgtype": "m.text", "body": "hi"},
                      prev=snap["extremities"], auth=[state[("m.room.power_levels", "")],
                                                      state[("m.room.member", BOB)]],
                      depth=snap["depth"] + 1)
    assert fed.pdu_handler(ORIGIN, [pdu_for_wire(ev, rv)]) == {ev["event_id"]: {}}
    stored = runtime_of(app).parts["rooms"].events.get_event(ev["event_id"])
    assert stored is not None and not stored.outlier and stored.rejection is None
    assert snapshot(app, room)["extremities"] == [ev["event_id"]]
    forged = Remote(ORIGIN).event(rv, room, BOB, "m.room.message", {"body": "x"},
                                  prev=[ev["event_id"]], auth=ev["auth_events"],
                                  depth=ev["depth"] + 1)
    got = fed.pdu_handler(ORIGIN, [pdu_for_wire(forged, rv)])
    assert "error" in got[forged["event_id"]]
    assert runtime_of(app).parts["rooms"].events.get_event(forged["event_id"]) is None


@pytest.mark.xfail(not HAS_RECEIVE_PDUS, strict=True,
                   reason="needs the RoomActor's ReceivePdus (engineer R, Federation II)")
def test_missing_prevs_reach_the_real_room_actor_in_order(hs):
    """END-TO-END OF THE PIPELINE WITH THE REAL RoomActor: only the newest of three remote
    events arrives; the other two come from /get_missing_events and all three end up in
    the timeline, the newest as the forward extremity."""
    app = hs()
    remote = Remote(ORIGIN)
    fed, client, _ = install_parts(app, [remote])
    alice = User(app, "alice")
    room = alice.req("POST", f"{C3}/createRoom", {"preset": "public_chat"})["room_id"]
    join_remote(app, room, BOB)
    rv = runtime_of(app).parts["rooms"].events.room_version(room)
    snap = snapshot(app, room)
    state = room_state(app, room)
    auth = [state[("m.room.power_levels", "")], state[("m.room.member", BOB)]]
    chain, prev, depth = [], snap["extremities"], snap["depth"]
    for body in ("one", "two", "three"):
        depth += 1
        ev = remote.event(rv, room, BOB, "m.room.message", {"msgtype": "m.text", "body": body},
                          prev=prev, auth=auth, depth=depth)
        chain.append(ev)
        prev = [ev["event_id"]]
    client.handlers[ORIGIN] = lambda method, path, query, body: {
        "events": [pdu_for_wire(chain[1], rv), pdu_for_wire(chain[0], rv)]}
    assert fed.pdu_handler(ORIGIN, [pdu_for_wire(chain[2], rv)]) == {chain[2]["event_id"]: {}}
    events = runtime_of(app).parts["rooms"].events
    stored = [events.get_event(e["event_id"]) for e in chain]
    assert all(se is not None and not se.outlier and se.rejection is None for se in stored)
    assert [se.stream_ordering for se in stored] == sorted(se.stream_ordering for se in stored)
    assert snapshot(app, room)["extremities"] == [chain[2]["event_id"]]
