"""The resident server relays the joins, leaves and knocks it receives (federation/pdu_out.py
``relay``, the ``federation_relayed`` reads of store/federation_queue.py, the
RemoteServerActor's live window and catch-up): server-server-api "Joining Rooms" ("the
resident server must also send the event to other servers participating in the room").

Three servers' worth: a real app as the resident (a.test) with its real FederationSender over
a recording client; remote.test joins through make_join / send_join (events built and signed
with its real key); third.test already has a member in the room (its join persisted by the
room's actor, as an accepted PDU would be) and only records the transactions it gets."""
from __future__ import annotations

import gevent
import pytest

from actors.room_messages import EventSpec, Send
from federation.errors import RemoteUnreachable
from protocol.room_versions import KNOWN_ROOM_VERSIONS
from tests.federation.membership_helpers import F1, F2, event_id_of, network, q, wire
from tests.federation.pdu_out_helpers import FAST, label
from tests.federation.sender_helpers import FakeClient, wait_until

R, THIRD = "remote.test", "third.test"
CAROL = f"@carol:{THIRD}"
RV = KNOWN_ROOM_VERSIONS["10"]


@pytest.fixture
def net(tmp_path):
    yield from network(tmp_path)


class Resident:
    """a.test, its real sender's client replaced by a recording one."""

    def __init__(self, net):
        self.hs = net.app("a.test", trusted_key_servers=[], federation=dict(FAST))
        self.out = self.hs.fed.extras["pdu_out"]
        assert self.hs.fed.extras["membership_received"] == self.out.relay
        self.sender = self.out.send_pdus.__self__   # the real FederationSender
        self.client = FakeClient()
        self.sender.client = self.client
        self.remote = net.remote(R)
        self.alice = self.hs.user("alice")

    def room(self, **body):
        room = self.alice.create_room(preset="public_chat", room_version="10", **body)
        self.hs.rooms.supervisor.ask(room, Send(spec=EventSpec(
            "m.room.member", CAROL, {"membership": "join"}, CAROL)))
        return room

    def membership(self, room, user, membership="join", what=None, **content):
        r = self.hs.fed_req("GET", f"{F1}/make_{membership}/{q(room)}/{q(user)}", origin=R,
                            query=None if membership == "leave" else {"ver": ["10"]})
        assert r.status_code == 200, r.get_data(as_text=True)
        ev = self.remote.sign_template(RV, r.get_json()["event"], **content)
        eid = event_id_of(ev, RV)
        version = F1 if membership == "knock" else F2   # send_knock has only v1
        r = self.hs.fed_req("PUT", f"{version}/{what or 'send_' + membership}/{q(room)}/{q(eid)}",
                            wire(ev, RV), origin=R)
        assert r.status_code == 200, r.get_data(as_text=True)
        return eid

    def pdus(self, dest):
        return [p for a in self.client.delivered(dest) for p in a.body["pdus"]]

    def bodies(self, dest):
        return [label(p) for p in self.pdus(dest)]

    def wait(self, dest, n, within=5.0):
        wait_until(lambda: len(self.pdus(dest)) >= n, within,
                   f"{n} PDUs to {dest} (have {self.bodies(dest)})")
        gevent.sleep(0.1)   # and nothing more
        return self.bodies(dest)


def test_a_join_received_through_send_join_goes_to_the_other_servers_not_the_joiner(net):
    a = Resident(net)
    room = a.room()
    a.alice.send(room, "before")
    bob = a.remote.user("bob")
    join_id = a.membership(room, bob)
    a.alice.send(room, "after")
    assert a.wait(THIRD, 3) == ["before", f"join:{bob}", "after"]
    assert a.wait(R, 1) == ["after"]          # the joiner never gets its own join back
    relayed = a.pdus(THIRD)[1]
    # the joining server's event as it signed it, without our unsigned
    assert relayed["sender"] == bob and R in relayed["signatures"]
    assert event_id_of(relayed, RV) == join_id and "unsigned" not in relayed
    assert {x.destination for x in a.client.attempts} == {THIRD, R}


def test_a_repeated_send_join_is_not_relayed_twice(net):
    a = Resident(net)
    room = a.room()
    bob = a.remote.user("bob")
    r = a.hs.fed_req("GET", f"{F1}/make_join/{q(room)}/{q(bob)}", origin=R,
                     query={"ver": ["10"]})
    ev = a.remote.sign_template(RV, r.get_json()["event"])
    path = f"{F2}/send_join/{q(room)}/{q(event_id_of(ev, RV))}"
    for _ in range(2):
        assert a.hs.fed_req("PUT", path, wire(ev, RV), origin=R).status_code == 200
    a.alice.send(room, "end")
    assert a.wait(THIRD, 2) == [f"join:{bob}", "end"]


def test_leaves_and_knocks_are_relayed_too(net):
    a = Resident(net)
    room = a.room()
    bob = a.remote.user("bob")
    a.membership(room, bob)
    a.membership(room, bob, "leave")
    a.alice.send(room, "gone")
    assert a.wait(THIRD, 3) == [f"join:{bob}", f"leave:{bob}", "gone"]
    assert a.bodies(R) == []   # its own join and leave are not sent back
    knock_room = a.alice.create_room(room_version="10", initial_state=[
        {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}])
    a.hs.rooms.supervisor.ask(knock_room, Send(spec=EventSpec(
        "m.room.member", a.alice.user_id, {"membership": "invite"}, CAROL)))
    a.hs.rooms.supervisor.ask(knock_room, Send(spec=EventSpec(
        "m.room.member", CAROL, {"membership": "join"}, CAROL)))
    dave = a.remote.user("dave")
    a.membership(knock_room, dave, "knock", reason="let me in")
    got = a.wait(THIRD, 4)   # carol's own invite and join are not ours to send
    assert got[3:] == [f"knock:{dave}"]
    assert a.bodies(R) == []


def test_a_relayed_join_survives_a_back_off_and_is_replayed_in_order(net):
    a = Resident(net)
    room = a.room()
    a.client.behaviour[THIRD] = RemoteUnreachable(THIRD, "down")
    a.alice.send(room, "first")
    wait_until(lambda: a.sender.backing_off(THIRD) is not None, what="back-off")
    bob = a.remote.user("bob")
    a.membership(room, bob)
    a.alice.send(room, "more")
    assert a.client.delivered(THIRD) == []
    a.client.behaviour.pop(THIRD)       # back: the retry timer finds it, catch-up replays
    assert a.wait(THIRD, 3, within=8.0) == ["first", f"join:{bob}", "more"]
    assert a.wait(R, 1) == ["more"]
    wait_until(lambda: a.sender.state(THIRD) == "healthy", what="healthy again")


def test_catch_up_never_sends_a_relayed_event_back_to_its_origin(net):
    """remote.test is in the room and down when a second user of it joins: its replay skips
    that join (it sent it) but carries the rest; third.test's replay carries all of it."""
    a = Resident(net)
    room = a.room()
    bob, bob2 = a.remote.user("bob"), a.remote.user("bob2")
    start = a.hs.rooms.events.stream.current()
    a.membership(room, bob)
    a.alice.send(room, "x")
    assert a.wait(R, 1) == ["x"]
    for dest in (R, THIRD):
        a.client.behaviour[dest] = RemoteUnreachable(dest, "down")
    a.alice.send(room, "first")
    wait_until(lambda: a.sender.backing_off(R) is not None
               and a.sender.backing_off(THIRD) is not None, what="both back off")
    a.membership(room, bob2)
    a.alice.send(room, "y")
    # what the replay reads: the relayed join, named with its origin
    reads = a.sender.pdu_reads
    head = a.hs.rooms.events.stream.current()
    rows = reads.page(THIRD, reads.rooms_of(THIRD), start, head, 50)
    assert [(label(r.event), r.relayed_from) for r in rows] == [
        (f"join:{bob}", R), ("x", None), ("first", None), (f"join:{bob2}", R), ("y", None)]
    assert reads.cutoffs(THIRD, [room], start, head, 2) == {room: rows[-2].stream_ordering}
    for dest in (R, THIRD):
        a.client.behaviour.pop(dest)
    assert a.wait(THIRD, 5, within=8.0) == [f"join:{bob}", "x", "first", f"join:{bob2}", "y"]
    assert a.wait(R, 3, within=8.0) == ["x", "first", "y"]


def test_relay_of_an_event_that_is_not_accepted_in_the_room_sends_nothing(net):
    a = Resident(net)
    room = a.room()
    assert a.out.relay(room, "$nope", R) == []
    assert a.out.relay("!other:a.test", "$nope", R) == []
    assert a.hs.db.run("n", lambda t: t.query_value(
        "SELECT COUNT(*) FROM federation_relayed", default=0)) == 0
