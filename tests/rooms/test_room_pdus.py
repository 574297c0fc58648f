"""ReceivePdus: remote PDUs into a RoomActor over a real store (server-server-api.md "Checks
performed on receipt of a PDU"): in order, out of order, missing prevs, auth failure,
soft failure, backfill, and a crash in the middle of a batch."""
import pytest

from supervision import ActorFailed
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

REMOTE = RemoteServer("remote.test")


@pytest.fixture
def room(app):
    alice = user(app, "alice")
    room_id = alice.create_room(preset="public_chat", name="shared")
    return alice, room_id


def test_in_order_pdus_are_accepted_and_served(app, room):
    alice, room_id = room
    _, since = sync_timeline(alice, room_id)
    join = REMOTE.join(app, room_id, "bob")
    assert receive(app, room_id, [join]) == {join["event_id"]: "accepted"}
    m1 = REMOTE.message(app, room_id, "bob", "one")
    m2 = REMOTE.message(app, room_id, "bob", "two", prevs=[m1["event_id"]], depth=m1["depth"] + 1)
    assert receive(app, room_id, [m1, m2]) == {m1["event_id"]: "accepted",
                                               m2["event_id"]: "accepted"}
    snap = snapshot(app, room_id)
    assert snap["extremities"] == [m2["event_id"]]
    assert snap["state"][("m.room.member", "@bob:remote.test")] == join["event_id"]
    ids, _ = sync_timeline(alice, room_id, since)
    assert ids == [join["event_id"], m1["event_id"], m2["event_id"]]
    assert messages(alice, room_id)[:3] == [m2["event_id"], m1["event_id"], join["event_id"]]
    members = alice.req("GET", f"{V}/rooms/{room_id}/joined_members")["joined"]
    assert "@bob:remote.test" in members
    # the same PDUs again: duplicates, nothing new stored
    assert set(receive(app, room_id, [join, m1]).values()) == {"duplicate"}
    # a local send follows the remote head
    sent = alice.send(room_id)["event_id"]
    assert rooms(app).events.get_event(sent).event["prev_events"] == [m2["event_id"]]


def test_unknown_prev_without_state_is_missing(app, room):
    _, room_id = room
    receive(app, room_id, [REMOTE.join(app, room_id, "bob")])
    ghost = REMOTE.message(app, room_id, "bob", "ghost")
    orphan = REMOTE.message(app, room_id, "bob", "orphan", prevs=[ghost["event_id"]],
                            state=snapshot(app, room_id)["state"], depth=99)
    assert receive(app, room_id, [orphan]) == {orphan["event_id"]: "missing"}
    assert rooms(app).events.get_event(orphan["event_id"]) is None
    assert orphan["event_id"] not in snapshot(app, room_id)["extremities"]


def test_out_of_order_with_state_before_then_the_gap_fills(app, room):
    alice, room_id = room
    join = REMOTE.join(app, room_id, "bob")
    receive(app, room_id, [join])
    state = snapshot(app, room_id)["state"]
    m1 = REMOTE.message(app, room_id, "bob", "first")
    m2 = REMOTE.message(app, room_id, "bob", "second", prevs=[m1["event_id"]], state=state,
                        depth=m1["depth"] + 1)
    # m2 arrives first; its prev stays unknown, the caller fetched the state before it
    out = receive(app, room_id, [m2], state_before={m2["event_id"]: dict(state)})
    assert out == {m2["event_id"]: "accepted"}
    assert set(snapshot(app, room_id)["extremities"]) == {join["event_id"], m2["event_id"]}
    # then the gap: m1 has a child already, so it is no extremity, and it closes the fork
    assert receive(app, room_id, [m1]) == {m1["event_id"]: "accepted"}
    assert snapshot(app, room_id)["extremities"] == [m2["event_id"]]
    assert messages(alice, room_id)[:3] == [m2["event_id"], m1["event_id"], join["event_id"]]


def test_prev_given_as_outlier_is_not_served_until_it_arrives(app, room):
    alice, room_id = room
    receive(app, room_id, [REMOTE.join(app, room_id, "bob")])
    state = snapshot(app, room_id)["state"]
    _, since = sync_timeline(alice, room_id)
    m1 = REMOTE.message(app, room_id, "bob", "as outlier")
    m2 = REMOTE.message(app, room_id, "bob", "after", prevs=[m1["event_id"]], state=state,
                        depth=m1["depth"] + 1)
    out = receive(app, room_id, [m2], outliers=[m1], state_before={m2["event_id"]: state})
    assert out == {m2["event_id"]: "accepted"}
    se = rooms(app).events.get_event(m1["event_id"])
    assert se.outlier and se.state_group is None
    ids, since = sync_timeline(alice, room_id, since)
    assert ids == [m2["event_id"]]
    assert m1["event_id"] not in messages(alice, room_id)
    # the outlier itself arrives as a PDU: it joins the timeline (one row, new position)
    assert receive(app, room_id, [m1]) == {m1["event_id"]: "accepted"}
    se = rooms(app).events.get_event(m1["event_id"])
    assert not se.outlier and se.state_group is not None
    assert m1["event_id"] in messages(alice, room_id)
    assert receive(app, room_id, [m1]) == {m1["event_id"]: "duplicate"}


def test_event_failing_auth_is_rejected_and_never_served(app, room):
    alice, room_id = room
    _, since = sync_timeline(alice, room_id)
    eve = REMOTE.message(app, room_id, "eve", "not a member")   # never joined
    out = receive(app, room_id, [eve])
    assert out == {eve["event_id"]: "rejected"}
    se = rooms(app).events.get_event(eve["event_id"])
    assert se is not None and se.rejection
    ids, _ = sync_timeline(alice, room_id, since)
    assert eve["event_id"] not in ids
    assert eve["event_id"] not in messages(alice, room_id)
    assert eve["event_id"] not in snapshot(app, room_id)["extremities"]
    alice.req("GET", f"{V}/rooms/{room_id}/event/{eve['event_id']}", status=404)
    assert receive(app, room_id, [eve]) == {eve["event_id"]: "duplicate"}
    # bob joins; then makes eve "join" (nobody may join someone else): rejected, and an
    # event citing that rejected membership as its auth event is rejected too
    join = REMOTE.join(app, room_id, "bob")
    assert receive(app, room_id, [join]) == {join["event_id"]: "accepted"}
    forged = REMOTE.event(app, room_id, "@bob:remote.test", "m.room.member",
                          {"membership": "join"}, state_key="@eve:remote.test")
    assert receive(app, room_id, [forged]) == {forged["event_id"]: "rejected"}
    state = dict(snapshot(app, room_id)["state"])
    state[("m.room.member", "@eve:remote.test")] = forged["event_id"]
    cites = REMOTE.message(app, room_id, "eve", "in?", state=state)
    assert forged["event_id"] in cites["auth_events"]
    out = receive(app, room_id, [cites])
    assert out == {cites["event_id"]: "rejected"}
    assert snapshot(app, room_id)["extremities"] == [join["event_id"]]


def test_soft_failed_event_moves_nothing_and_is_not_served(app, room):
    alice, room_id = room
    join = REMOTE.join(app, room_id, "bob")
    receive(app, room_id, [join])
    before_ban = snapshot(app, room_id)
    _, since = sync_timeline(alice, room_id)
    alice.req("POST", f"{V}/rooms/{room_id}/ban", {"user_id": "@bob:remote.test"})
    ban_head = snapshot(app, room_id)["extremities"]
    # bob's server had not seen the ban: its message is fine against the state before it,
    # but bob is banned in the current state
    late = REMOTE.message(app, room_id, "bob", "sneaky", prevs=before_ban["extremities"],
                          state=before_ban["state"])
    assert receive(app, room_id, [late]) == {late["event_id"]: "soft_failed"}
    se = rooms(app).events.get_event(late["event_id"])
    assert se.soft_failed and se.state_group is not None
    assert snapshot(app, room_id)["extremities"] == ban_head
    ids, _ = sync_timeline(alice, room_id, since)
    assert late["event_id"] not in ids
    assert late["event_id"] not in messages(alice, room_id)
    assert receive(app, room_id, [late]) == {late["event_id"]: "duplicate"}


def test_backfilled_events_keep_extremities_and_state(app, room):
    alice, room_id = room
    join = REMOTE.join(app, room_id, "bob")
    receive(app, room_id, [join])
    state = snapshot(app, room_id)["state"]
    head = alice.send(room_id)["event_id"]
    # history from before the gap: prevs unknown here, state given by the fetcher
    old = REMOTE.message(app, room_id, "bob", "old", prevs=[join["event_id"]], state=state)
    older = REMOTE.message(app, room_id, "bob", "older", prevs=[old["event_id"]], state=state,
                           depth=old["depth"] + 1)
    before = snapshot(app, room_id)
    out = receive(app, room_id, [old, older], backfilled=True)
    assert set(out.values()) == {"accepted"}
    after = snapshot(app, room_id)
    assert after["extremities"] == before["extremities"] == [head]
    assert after["state"] == before["state"]
    se = rooms(app).events.get_event(old["event_id"])
    assert not se.outlier and se.state_group is not None
    assert old["event_id"] in messages(alice, room_id)


def test_wrong_room_and_unstorable_events_get_an_error_and_others_go_on(app, room):
    alice, room_id = room
    other = alice.create_room()
    wrong = REMOTE.message(app, other, "bob", "elsewhere", state={})
    join = REMOTE.join(app, room_id, "bob")
    nul = REMOTE.event(app, room_id, "@bob:remote.test", "m.bad\x00type", {},
                       prevs=[join["event_id"]], state=snapshot(app, room_id)["state"])
    m = REMOTE.message(app, room_id, "bob", "fine", prevs=[join["event_id"]],
                       depth=join["depth"] + 1, state=snapshot(app, room_id)["state"]
                       | {("m.room.member", "@bob:remote.test"): join["event_id"]})
    out = receive(app, room_id, [wrong, join, nul, m])
    assert out == {wrong["event_id"]: "error", join["event_id"]: "accepted",
                   nul["event_id"]: "error", m["event_id"]: "accepted"}


def test_crash_in_the_persist_then_the_same_batch_again(app, room):
    """A database failure while persisting crashes the actor; nothing of the batch is
    stored; the restarted actor takes the same batch, and once more gives duplicates."""
    alice, room_id = room
    join = REMOTE.join(app, room_id, "bob")
    m1 = REMOTE.message(app, room_id, "bob", "one", prevs=[join["event_id"]],
                        depth=join["depth"] + 1,
                        state=snapshot(app, room_id)["state"]
                        | {("m.room.member", "@bob:remote.test"): join["event_id"]})
    svc = rooms(app)
    real = svc.db.run
    boom = {"left": 1}

    def run(name, fn, *args, **kw):
        if name == "persist_events" and boom["left"]:
            boom["left"] -= 1
            raise RuntimeError("disk on fire")
        return real(name, fn, *args, **kw)

    svc.db.run = run
    try:
        with pytest.raises(ActorFailed):
            receive(app, room_id, [join, m1])
    finally:
        svc.db.run = real
    assert svc.events.get_event(join["event_id"]) is None
    assert receive(app, room_id, [join, m1]) == {join["event_id"]: "accepted",
                                                 m1["event_id"]: "accepted"}
    assert receive(app, room_id, [join, m1]) == {join["event_id"]: "duplicate",
                                                 m1["event_id"]: "duplicate"}
    assert snapshot(app, room_id)["extremities"] == [m1["event_id"]]
    # an injected fault before the message is handled: also nothing half-done
    m2 = REMOTE.message(app, room_id, "bob", "two")
    svc.supervisor.inject_fault(room_id, "crash", 1)
    with pytest.raises(ActorFailed):
        receive(app, room_id, [m2])
    assert receive(app, room_id, [m2]) == {m2["event_id"]: "accepted"}


def test_hooks_see_only_accepted_timeline_events(app, room):
    alice, room_id = room
    seen = []
    rooms(app).on_persisted.append(lambda rid, evs: seen.extend(e["event_id"] for e, _ in evs))
    join = REMOTE.join(app, room_id, "bob")
    receive(app, room_id, [join])
    before_ban = snapshot(app, room_id)
    alice.req("POST", f"{V}/rooms/{room_id}/ban", {"user_id": "@bob:remote.test"})
    ban = snapshot(app, room_id)["extremities"][0]
    soft = REMOTE.message(app, room_id, "bob", "soft", prevs=before_ban["extremities"],
                          state=before_ban["state"])
    rejected = REMOTE.message(app, room_id, "mallory", "no")
    outlier = REMOTE.message(app, room_id, "bob", "outlier", prevs=before_ban["extremities"],
                             state=before_ban["state"], ts=5)
    out = receive(app, room_id, [soft, rejected], outliers=[outlier])
    assert out == {soft["event_id"]: "soft_failed", rejected["event_id"]: "rejected"}
    old = REMOTE.message(app, room_id, "bob", "old", prevs=[join["event_id"]],
                         state=before_ban["state"], ts=7)
    assert receive(app, room_id, [old], backfilled=True) == {old["event_id"]: "accepted"}
    assert seen == [join["event_id"], ban]
    assert rooms(app).events.get_event(outlier["event_id"]).outlier


def test_outlier_with_unknown_auth_events_is_not_stored(app, room):
    _, room_id = room
    state = dict(snapshot(app, room_id)["state"])
    state[("m.room.member", "@bob:remote.test")] = "$neverseen"
    orphan = REMOTE.message(app, room_id, "bob", "orphan", state=state)
    assert "$neverseen" in orphan["auth_events"]
    assert receive(app, room_id, [], outliers=[orphan]) == {}
    assert rooms(app).events.get_event(orphan["event_id"]) is None


def test_backfilled_events_are_not_new_to_sync(app, room):
    alice, room_id = room
    join = REMOTE.join(app, room_id, "bob")
    receive(app, room_id, [join])
    state = snapshot(app, room_id)["state"]
    _, since = sync_timeline(alice, room_id)
    old = REMOTE.message(app, room_id, "bob", "old", prevs=[join["event_id"]], state=state)
    assert receive(app, room_id, [old], backfilled=True) == {old["event_id"]: "accepted"}
    assert rooms(app).events.recent.ids(room_id, 0, 2**62, 50) is None or \
        old["event_id"] not in [e for e, _ in rooms(app).events.recent.ids(room_id, 0, 2**62, 50)]
    ids, _ = sync_timeline(alice, room_id, since)
    assert old["event_id"] not in ids


def test_backfilled_events_stay_out_of_a_later_incremental_sync(app, room):
    alice, room_id = room
    join = REMOTE.join(app, room_id, "bob")
    receive(app, room_id, [join])
    state = snapshot(app, room_id)["state"]
    _, since = sync_timeline(alice, room_id)
    old = REMOTE.message(app, room_id, "bob", "old", prevs=[join["event_id"]], state=state)
    receive(app, room_id, [old], backfilled=True)
    new = alice.send(room_id)["event_id"]
    ids, _ = sync_timeline(alice, room_id, since)
    assert new in ids
    assert old["event_id"] not in ids
