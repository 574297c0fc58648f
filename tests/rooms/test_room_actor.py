"""The RoomActor's own sequences: group commit under concurrent sends, a crash mid-batch,
passivation and reload, and scripted message sequences."""
import gevent
import pytest

from actors.room_messages import EventSpec, GetRoomSnapshot, Send
from supervision import ActorFailed
from tests.rooms.conftest import user
from web.app import runtime_of

V = "/_matrix/client/v3"


def _svc(app):
    return runtime_of(app).parts["rooms"]


def _count_persists(svc):
    calls = []
    real = svc.db.run

    def run(name, fn, *args, **kw):
        if name == "persist_events":
            calls.append(1)
        return real(name, fn, *args, **kw)

    svc.db.run = run
    return calls


def _msg(sender, i):
    return Send(EventSpec("m.room.message", sender, {"msgtype": "m.text", "body": str(i)}))


def test_concurrent_sends_are_group_committed_and_linear(app):
    alice = user(app, "alice")
    room_id = alice.create_room()
    svc = _svc(app)
    calls = _count_persists(svc)
    jobs = [gevent.spawn(svc.supervisor.ask, room_id, _msg(alice.user_id, i)) for i in range(60)]
    gevent.joinall(jobs, raise_error=True)
    sent = [j.value for j in jobs]
    assert len({s.event_id for s in sent}) == 60
    assert len({s.stream_ordering for s in sent}) == 60
    assert len(calls) < 60, "queued sends should share transactions"
    # the DAG stays a line: each event's prev_events is the one before it
    events = svc.events.get_events(s.event_id for s in sent)
    by_order = sorted(events.values(), key=lambda se: se.stream_ordering)
    for a, b in zip(by_order, by_order[1:]):
        assert b.event["prev_events"] == [a.event_id]
    snap = svc.supervisor.ask(room_id, GetRoomSnapshot())
    assert snap["extremities"] == [by_order[-1].event_id]


def test_forbidden_send_in_a_batch_fails_alone(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = alice.create_room()
    svc = _svc(app)
    msgs = [_msg(alice.user_id, 1), _msg(bob.user_id, 2), _msg(alice.user_id, 3)]
    jobs = [gevent.spawn(svc.supervisor.ask, room_id, m) for m in msgs]
    gevent.joinall(jobs)
    assert jobs[0].successful() and jobs[2].successful()
    assert getattr(jobs[1].exception, "errcode", None) == "M_FORBIDDEN"


def test_crash_mid_sequence_loses_nothing_acknowledged(app):
    alice = user(app, "alice")
    room_id = alice.create_room()
    svc = _svc(app)
    ok = [svc.supervisor.ask(room_id, _msg(alice.user_id, i)).event_id for i in range(3)]
    svc.supervisor.inject_fault(room_id, "crash", 1)
    with pytest.raises(ActorFailed):
        svc.supervisor.ask(room_id, _msg(alice.user_id, "boom"))
    after = svc.supervisor.ask(room_id, _msg(alice.user_id, "after")).event_id
    stored = svc.events.get_events(ok + [after])
    assert set(stored) == set(ok + [after])
    assert stored[after].event["prev_events"] == [ok[-1]]


def test_passivated_room_reloads_from_store(hs):
    app = hs(actors={"idle_timeout": "50ms"})
    alice = user(app, "alice")
    room_id = alice.create_room()
    svc = _svc(app)
    first = svc.supervisor.ask(room_id, _msg(alice.user_id, 1)).event_id
    gevent.sleep(0.3)
    assert svc.supervisor.stats()["passivated"] >= 1
    second = svc.supervisor.ask(room_id, _msg(alice.user_id, 2)).event_id
    assert svc.events.get_event(second).event["prev_events"] == [first]


def test_txn_idempotent_across_actor_restart(app):
    alice = user(app, "alice")
    room_id = alice.create_room()
    a = alice.send(room_id, txn="t-restart")["event_id"]
    svc = _svc(app)
    svc.supervisor.inject_fault(room_id, "crash", 1)
    alice.send(room_id, txn="boom", status=500)
    assert alice.send(room_id, txn="t-restart")["event_id"] == a


def _txn_msg(sender, body, txn_id):
    return Send(EventSpec("m.room.message", sender, {"msgtype": "m.text", "body": body}),
                txn=("DEV", txn_id))


def test_batch_with_a_stored_txn_is_rebuilt_without_it(app):
    """After a restart the actor no longer remembers txn ids: a batch mixing a retry with
    new sends rolls back once, answers the retry with the stored event, commits the rest."""
    alice = user(app, "alice")
    room_id = alice.create_room()
    svc = _svc(app)
    old = svc.supervisor.ask(room_id, _txn_msg(alice.user_id, "old", "t1"))
    svc.supervisor.inject_fault(room_id, "crash", 1)
    with pytest.raises(ActorFailed):
        svc.supervisor.ask(room_id, _msg(alice.user_id, "boom"))
    calls = _count_persists(svc)
    msgs = [_txn_msg(alice.user_id, "new-a", "t2"), _txn_msg(alice.user_id, "retry", "t1"),
            _txn_msg(alice.user_id, "new-a again", "t2"), _txn_msg(alice.user_id, "b", "t3")]
    jobs = [gevent.spawn(svc.supervisor.ask, room_id, m) for m in msgs]
    gevent.joinall(jobs, raise_error=True)
    a, retry, a_again, b = (j.value for j in jobs)
    assert retry.event_id == old.event_id and retry.stream_ordering == old.stream_ordering
    assert a_again.event_id == a.event_id and a.event_id != b.event_id
    assert len(calls) <= 3  # at most: the first send, a rolled-back batch, its rebuild
    events = svc.events.get_events([a.event_id, b.event_id])
    assert events[a.event_id].event["content"]["body"] == "new-a"
    assert events[b.event_id].event["prev_events"] == [a.event_id]
    # and now from memory: no store round trip at all
    calls.clear()
    assert svc.supervisor.ask(room_id, _txn_msg(alice.user_id, "x", "t3")).event_id \
        == b.event_id
    assert calls == []
