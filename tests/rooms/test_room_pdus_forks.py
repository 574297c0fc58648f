"""Forks and merges: two servers write on the same prev event; the RoomActor keeps both
forward extremities, current state is what state resolution (v1 / v2 / v2.1 by room
version) answers over their states, and the next event — ours or a remote merge —
references both."""
import pytest

from protocol.room_versions import KNOWN_ROOM_VERSIONS
from protocol.state_res import resolve_state
from tests.federation.room_pdus_helpers import (
    V,
    RemoteServer,
    messages,
    receive,
    rooms,
    snapshot,
    sync_timeline,
)
from tests.rooms.conftest import user

BOB_HS, CAROL_HS = RemoteServer("remote.test"), RemoteServer("other.test")
BOB, CAROL = BOB_HS.user("bob"), CAROL_HS.user("carol")
TOPIC = ("m.room.topic", "")


def _forked_room(app, version, bob_level=50):
    alice = user(app, "alice")
    room_id = alice.create_room(
        preset="public_chat", room_version=version,
        power_level_content_override={"users": {alice.user_id: 100, BOB: bob_level,
                                                CAROL: 50}})
    for hs, lp in ((BOB_HS, "bob"), (CAROL_HS, "carol")):
        ev = hs.join(app, room_id, lp)
        assert receive(app, room_id, [ev], origin=hs.name) == {ev["event_id"]: "accepted"}
    base = snapshot(app, room_id)
    a = BOB_HS.event(app, room_id, BOB, "m.room.topic", {"topic": "from bob"}, state_key="",
                     ts=1_700_000_001_000)
    b = CAROL_HS.event(app, room_id, CAROL, "m.room.topic", {"topic": "from carol"},
                       state_key="", ts=1_700_000_002_000)
    assert a["prev_events"] == b["prev_events"]
    assert receive(app, room_id, [a], origin=BOB_HS.name) == {a["event_id"]: "accepted"}
    assert receive(app, room_id, [b], origin=CAROL_HS.name) == {b["event_id"]: "accepted"}
    return alice, room_id, base, a, b


def _expected(app, room_id, heads):
    svc = rooms(app)
    rv = svc.events.room_version(room_id)

    def get(eid):
        se = svc.events.get_event(eid)
        return se.event if se is not None and se.rejection is None else None

    return resolve_state(rv, [svc.events.state_ids_after(h) for h in heads], get)


@pytest.mark.parametrize("version", ["1", "10", "12"])
def test_fork_current_state_is_the_resolution(app, version):
    alice, room_id, base, a, b = _forked_room(app, version)
    snap = snapshot(app, room_id)
    assert set(snap["extremities"]) == {a["event_id"], b["event_id"]}
    expected = _expected(app, room_id, [a["event_id"], b["event_id"]])
    assert snap["state"] == expected
    assert expected[TOPIC] in (a["event_id"], b["event_id"])
    topic = alice.req("GET", f"{V}/rooms/{room_id}/state/m.room.topic")["topic"]
    winner = a if expected[TOPIC] == a["event_id"] else b
    assert topic == winner["content"]["topic"]
    # both sides of the fork are in the timeline
    ids = messages(alice, room_id)
    assert a["event_id"] in ids and b["event_id"] in ids


@pytest.mark.parametrize("version", ["1", "12"])
def test_local_send_after_a_fork_references_both_extremities(app, version):
    alice, room_id, _, a, b = _forked_room(app, version)
    resolved = snapshot(app, room_id)["state"]
    sent = alice.send(room_id)["event_id"]
    se = rooms(app).events.get_event(sent)
    rv = KNOWN_ROOM_VERSIONS[version]
    prevs = [p[0] if isinstance(p, list) else p for p in se.event["prev_events"]]
    assert set(prevs) == {a["event_id"], b["event_id"]}
    assert se.event["depth"] == max(a["depth"], b["depth"]) + 1
    assert snapshot(app, room_id)["extremities"] == [sent]
    # the state at our event is the resolved state (a message changes nothing)
    assert rooms(app).events.state_ids_after(sent) == resolved
    assert rv.identifier == version
    # and a local state change builds on the resolved state
    alice.state(room_id, "m.room.name", body={"name": "merged"})
    after = snapshot(app, room_id)["state"]
    assert after[TOPIC] == resolved[TOPIC]


def test_remote_merge_event_closes_the_fork(app):
    alice, room_id, _, a, b = _forked_room(app, "10")
    _, since = sync_timeline(alice, room_id)
    expected = _expected(app, room_id, [a["event_id"], b["event_id"]])
    merge = BOB_HS.message(app, room_id, "bob", "merged", prevs=[a["event_id"], b["event_id"]],
                           state=expected)
    assert receive(app, room_id, [merge]) == {merge["event_id"]: "accepted"}
    snap = snapshot(app, room_id)
    assert snap["extremities"] == [merge["event_id"]]
    assert snap["state"] == expected
    assert rooms(app).events.state_ids_before(merge["event_id"]) == expected
    ids, _ = sync_timeline(alice, room_id, since)
    assert ids == [merge["event_id"]]


def test_fork_where_one_side_changes_power(app):
    """Carol's topic races bob removing carol's power: v2 applies the power event first,
    so carol's topic loses whatever the timestamps say, and her later writes soft-fail."""
    alice, room_id, base, a, b = _forked_room(app, "10", bob_level=100)
    state = rooms(app).events.state_ids_after(a["event_id"])
    pl_id = state[("m.room.power_levels", "")]
    pl = dict(rooms(app).events.get_event(pl_id).event["content"])
    pl["users"] = {alice.user_id: 100, BOB: 100}
    demote = BOB_HS.event(app, room_id, BOB, "m.room.power_levels", pl, state_key="",
                          prevs=[a["event_id"]], ts=1_600_000_000_000)
    out = receive(app, room_id, [demote])
    assert out[demote["event_id"]] == "accepted"
    snap = snapshot(app, room_id)
    assert set(snap["extremities"]) == {demote["event_id"], b["event_id"]}
    expected = _expected(app, room_id, [demote["event_id"], b["event_id"]])
    assert snap["state"] == expected
    assert expected[("m.room.power_levels", "")] == demote["event_id"]
    # carol's topic is re-checked against the resolved power levels and loses to bob's
    assert expected[TOPIC] == a["event_id"]
    # carol's server, not yet aware, writes on its side of the fork: fine against the state
    # before it, not against the resolved current state
    c2 = CAROL_HS.event(app, room_id, CAROL, "m.room.topic", {"topic": "carol again"},
                        state_key="", prevs=[b["event_id"]], ts=1_800_000_000_000)
    assert receive(app, room_id, [c2]) == {c2["event_id"]: "soft_failed"}
    assert snapshot(app, room_id) == snap


def test_local_send_after_a_fork_reads_nothing(app):
    """The local send path stays one write: with two extremities in memory, a message is
    built, checked and persisted without a database read."""
    import gevent

    from actors.room_messages import EventSpec, Send

    alice, room_id, _, a, b = _forked_room(app, "12")
    svc = rooms(app)
    assert len(snapshot(app, room_id)["extremities"]) == 2
    real, calls = svc.db.run, []

    def run(name, fn, *args, **kw):
        calls.append((name, gevent.getcurrent()))
        return real(name, fn, *args, **kw)

    svc.db.run = run
    try:
        svc.supervisor.ask(room_id, Send(EventSpec("m.room.message", alice.user_id,
                                                   {"msgtype": "m.text", "body": "x"})))
    finally:
        svc.db.run = real
    actor = [g for n, g in calls if n == "persist_events"]
    assert len(actor) == 1
    assert [n for n, g in calls if g is actor[0]] == ["persist_events"]
