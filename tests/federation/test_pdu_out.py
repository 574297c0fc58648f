"""Outbound PDUs (federation/pdu_out.py, the RemoteServerActor's live window and catch-up):
scripted over the real app, its RoomActors and store, with a recording HTTP client."""
from __future__ import annotations

import time

import gevent
import pytest

from actors.room_messages import EventSpec, Send
from federation.errors import RemoteUnreachable
from federation.sender import FederationSender
from protocol.room_versions import EventFormat
from supervision import Tracer
from tests.apps import app_factory
from tests.federation.pdu_out_helpers import Hs, label
from tests.federation.sender_helpers import FakeClient, wait_until

THEM, THIRD = "them.test", "third.test"
BOB, CAROL = f"@bob:{THEM}", f"@carol:{THIRD}"


@pytest.fixture
def make(tmp_path):
    yield from app_factory(tmp_path)


def _room(hs, *remote):
    alice = hs.user("alice")
    room_id = hs.public_room(alice)
    for user in remote:
        hs.member(room_id, user, user, "join")
    return alice, room_id


def _down(hs, destination, room_id, alice, first="first"):
    """Make ``destination`` unreachable and wait until it is backing off (one message,
    ``first``, is then held in the failed transaction)."""
    hs.client.behaviour[destination] = RemoteUnreachable(destination, "down")
    hs.say(room_id, alice, first)
    wait_until(lambda: hs.sender.backing_off(destination) is not None, what="back-off")


def test_messages_go_once_in_order_to_exactly_the_joined_servers(make):
    hs = Hs(make)
    alice, room_id = _room(hs, BOB, CAROL)
    hs.member(room_id, alice, "@dave:invited.test", "invite")
    for i in range(5):
        hs.say_http(room_id, alice, f"m{i}")
    hs.say(room_id, BOB, "from bob")  # another server's event: never re-broadcast
    hs.say(room_id, alice, "last")
    want = ["invite:@dave:invited.test", "m0", "m1", "m2", "m3", "m4", "last"]
    assert hs.wait_bodies(THEM, len(want)) == want
    assert hs.wait_bodies(THIRD, len(want)) == want
    gevent.sleep(0.1)
    assert hs.bodies(THEM) == want and hs.bodies(THIRD) == want  # once each
    # the invitee's server hears of the invite through /invite, not a transaction
    assert hs.client.tried("invited.test") == []
    assert {a.destination for a in hs.client.attempts} == {THEM, THIRD}
    # wire form: the room version's PDU, our unsigned stripped, signed by us
    rv = hs.room_version(room_id)
    for pdu in hs.pdus(THEM):
        assert "unsigned" not in pdu
        assert ("event_id" in pdu) == (rv.event_format == EventFormat.V1)
        assert pdu["room_id"] == room_id and "test.local" in pdu["signatures"]
        assert pdu["sender"].endswith(":test.local")
    # the position is the last event's stream ordering
    last = hs.rooms.events.stream.current()
    wait_until(lambda: hs.position(THEM) == last, what="pdu_position stored")


def test_a_kicked_server_hears_the_kick_then_nothing(make):
    hs = Hs(make)
    alice, room_id = _room(hs, BOB, CAROL)
    hs.say(room_id, alice, "before")
    hs.member(room_id, alice, BOB, "leave")          # kick: the last user of them.test
    hs.say(room_id, alice, "after")
    hs.member(room_id, alice, "@eve:far.test", "ban")  # a ban of someone never joined
    hs.say(room_id, alice, "end")
    assert hs.wait_bodies(THIRD, 5) == ["before", f"leave:{BOB}", "after", "ban:@eve:far.test",
                                        "end"]
    assert hs.wait_bodies(THEM, 2) == ["before", f"leave:{BOB}"]
    assert hs.wait_bodies("far.test", 1) == ["ban:@eve:far.test"]
    gevent.sleep(0.1)
    assert hs.bodies(THEM) == ["before", f"leave:{BOB}"]
    assert hs.bodies("far.test") == ["ban:@eve:far.test"]


def test_a_server_whose_users_left_by_themselves_gets_nothing_more(make):
    hs = Hs(make)
    alice, room_id = _room(hs, BOB, f"@bob2:{THEM}", CAROL)
    hs.say(room_id, alice, "a")
    hs.member(room_id, BOB, BOB, "leave")
    hs.say(room_id, alice, "b")           # bob2 is still there
    hs.member(room_id, f"@bob2:{THEM}", f"@bob2:{THEM}", "leave")
    hs.say(room_id, alice, "c")
    assert hs.wait_bodies(THIRD, 3) == ["a", "b", "c"]
    gevent.sleep(0.1)
    assert hs.bodies(THEM) == ["a", "b"]   # their own leaves are theirs to send


def test_peer_down_for_500_messages_catches_up_in_order_in_transactions_of_50(make):
    hs = Hs(make, catchup_max_per_room=1000)
    alice, room_id = _room(hs, BOB)
    _down(hs, THEM, room_id, alice)
    for n in range(0, 500, 50):          # 50 sends at a time: the actor commits them together
        gevent.joinall([gevent.spawn(hs.say, room_id, alice, f"m{i}")
                        for i in range(n, n + 50)], raise_error=True)
    assert hs.client.delivered(THEM) == []
    assert hs.sender.state(THEM) in ("backing_off", "catching_up")  # retries keep failing
    hs.client.behaviour.pop(THEM)        # the peer is back: the retry timer finds it
    t0 = time.monotonic()
    got = hs.wait_bodies(THEM, 501, within=8.0)
    print(f"catch-up of 500 PDUs: {time.monotonic() - t0:.2f}s")
    assert got == ["first"] + [f"m{i}" for i in range(500)]
    sizes = [len(a.body["pdus"]) for a in hs.client.delivered(THEM)]
    assert max(sizes) <= 50 and len(sizes) >= 11
    wait_until(lambda: hs.sender.state(THEM) == "healthy")
    hs.say(room_id, alice, "live again")
    assert hs.wait_bodies(THEM, 502)[-1] == "live again"
    gevent.sleep(0.1)
    assert len(hs.bodies(THEM)) == 502


def test_catch_up_sends_only_the_newest_events_of_each_room(make):
    hs = Hs(make, catchup_max_per_room=20)
    alice, room_a = _room(hs, BOB)
    room_b = hs.public_room(alice)
    hs.member(room_b, BOB, BOB, "join")
    _down(hs, THEM, room_a, alice)
    for i in range(100):
        hs.say(room_a, alice, f"a{i}")
        if i % 20 == 0:
            hs.say(room_b, alice, f"b{i}")
    hs.client.behaviour.pop(THEM)
    want = ["first"] + [f"a{i}" for i in range(80, 100)] + [f"b{i}" for i in range(0, 100, 20)]
    got = hs.wait_bodies(THEM, len(want))
    gevent.sleep(0.1)
    got = hs.bodies(THEM)
    assert sorted(got) == sorted(want) and len(got) == len(want)
    # in stream order: room b's early messages come before room a's newest 20
    assert got[0] == "first" and got.index("b0") < got.index("a80")
    assert got.index("b80") < got.index("a81")


def test_window_overflow_replays_from_the_store_without_duplicates(make):
    hs = Hs(make, queue_size=10)
    alice, room_id = _room(hs, BOB)
    hs.client.behaviour[THEM] = "hang"
    hs.say(room_id, alice, "m0")
    wait_until(lambda: hs.client.tried(THEM), what="first transaction out")
    for i in range(1, 40):               # past the window: catch-up mode
        hs.say(room_id, alice, f"m{i}")
    wait_until(lambda: hs.sender.state(THEM) == "catching_up")
    hs.client.release(THEM)
    got = hs.wait_bodies(THEM, 40)
    for i in range(40, 45):              # live again, while the replay may still be ending
        hs.say(room_id, alice, f"m{i}")
    got = hs.wait_bodies(THEM, 45)
    gevent.sleep(0.1)
    assert hs.bodies(THEM) == [f"m{i}" for i in range(45)]


def test_catch_up_follows_the_membership_history(make):
    """Replayed from the store, each event goes only where a user of the destination was
    joined at that event (room_memberships), plus the kick of its last user."""
    hs = Hs(make, catchup_max_per_room=1000)
    alice, room_id = _room(hs, BOB, CAROL)
    _down(hs, THIRD, room_id, alice)
    hs.say(room_id, alice, "x1")
    hs.member(room_id, alice, CAROL, "leave")        # kicked while her server is down
    hs.say(room_id, alice, "x2 not for third")
    hs.member(room_id, CAROL, CAROL, "join")         # back (her server's event)
    hs.say(room_id, alice, "x3")
    hs.client.behaviour.pop(THIRD)
    want = ["first", "x1", f"leave:{CAROL}", "x3"]
    assert hs.wait_bodies(THIRD, len(want)) == want
    gevent.sleep(0.1)
    assert hs.bodies(THIRD) == want
    assert hs.bodies(THEM) == ["first", "x1", f"leave:{CAROL}", "x2 not for third", "x3"]


def test_a_restarted_sender_resumes_from_the_stored_position(make):
    hs = Hs(make, catchup_max_per_room=1000)
    alice, room_id = _room(hs, BOB)
    for i in range(10):
        hs.say(room_id, alice, f"m{i}")
    hs.wait_bodies(THEM, 10)
    acked = hs.rooms.events.stream.current()
    wait_until(lambda: hs.position(THEM) == acked)
    _down(hs, THEM, room_id, alice, first="m10")
    for i in range(11, 40):
        hs.say(room_id, alice, f"m{i}")
    hs.sender.stop()                      # the process goes away with m10..m39 unsent
    assert hs.position(THEM) == acked
    # a new process: its sender's start-up sweep finds them.test behind the stream
    client = FakeClient()
    sender = FederationSender(hs.runtime.config, hs.db, client, Tracer(capacity=100))
    sender.events_position = hs.rooms.events.stream.current
    try:
        sender.store.reset_backoff(THEM)  # (its back-off is over)
        sender._backoff.pop(THEM, None)
        sender.sweep()
        wait_until(lambda: len([p for a in client.delivered(THEM) for p in a.body["pdus"]])
                   >= 30, what="catch-up after the restart")
        gevent.sleep(0.1)
        got = [label(p) for a in client.delivered(THEM) for p in a.body["pdus"]]
        assert got == [f"m{i}" for i in range(10, 40)]
        wait_until(lambda: sender.store.get(THEM).pdu_position
                   == hs.rooms.events.stream.current())
    finally:
        sender.stop()


def test_the_hook_reads_nothing_for_rooms_without_remote_members(make):
    hs = Hs(make)
    alice = hs.user("alice")
    local_room = hs.public_room(alice)
    shared = hs.public_room(alice)
    hs.member(shared, BOB, BOB, "join")
    in_hook = []
    names = []
    real_run, real_hook = hs.db.run, hs.out.on_persisted

    yielded = []

    def counting_run(name, fn, *args, **kw):
        if in_hook and in_hook[-1] is gevent.getcurrent():  # the hook's own reads only
            names.append(name)
        return real_run(name, fn, *args, **kw)

    def hook(room_id, persisted):
        in_hook.append(gevent.getcurrent())
        probe = gevent.spawn(lambda: None)
        try:
            real_hook(room_id, persisted)
        finally:
            in_hook.pop()
        yielded.append((room_id, probe.dead))

    hooks = hs.rooms.on_persisted
    hooks[hooks.index(real_hook)] = hook
    hs.db.run = counting_run
    try:
        for i in range(30):
            hs.say(local_room, alice, f"l{i}")
            hs.say(shared, alice, f"s{i}")
        assert names == []                       # both rooms were seen being created
        # the hook never gave the hub a turn, but when the first note spawned them.test's
        # actor (the supervisor's start)
        assert [r for r, y in yielded if y] in ([], [shared])
        hs.out.forget(local_room)                # e.g. after a restart: read once, then not
        hs.out.forget(shared)
        for i in range(30):
            hs.say(local_room, alice, f"l{i}")
            hs.say(shared, alice, f"s{i}")
        assert names == ["pdu_out_members", "pdu_out_members"]
        assert hs.out.joined_servers(local_room) == frozenset()
        assert hs.out.joined_servers(shared) == frozenset({THEM})
    finally:
        hs.db.run = real_run
    assert hs.wait_bodies(THEM, 60)[-1] == "s29"


def test_a_replayed_event_we_redacted_goes_redacted(make):
    hs = Hs(make, catchup_max_per_room=1000)
    alice, room_id = _room(hs, BOB)
    _down(hs, THEM, room_id, alice)
    secret = hs.say(room_id, alice, "secret").event_id
    hs.rooms.supervisor.ask(room_id, Send(spec=EventSpec("m.room.redaction", alice, {}),
                                          redacts=secret))
    hs.client.behaviour.pop(THEM)
    wait_until(lambda: len(hs.pdus(THEM)) >= 3, what="3 PDUs")
    gevent.sleep(0.05)
    first, redacted, redaction = hs.pdus(THEM)
    assert label(first) == "first" and first["content"]["body"] == "first"
    assert redacted["type"] == "m.room.message" and redacted["content"] == {}
    assert "hashes" in redacted and "signatures" in redacted  # the receiver checks the hash
    assert redaction["type"] == "m.room.redaction"


def test_partial_state_servers_get_our_events_until_forgotten(make):
    hs = Hs(make)
    alice, room_id = _room(hs, BOB)
    hs.out.partial_state_servers(room_id, [THIRD, "test.local"])
    hs.say(room_id, alice, "p1")
    assert hs.wait_bodies(THIRD, 1) == ["p1"]
    hs.out.forget(room_id)             # the full state arrived: current_state is the truth
    hs.say(room_id, alice, "p2")
    assert hs.wait_bodies(THEM, 2) == ["p1", "p2"]
    gevent.sleep(0.05)
    assert hs.bodies(THIRD) == ["p1"] and hs.client.tried("test.local") == []
