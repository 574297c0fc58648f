"""Counts while the evaluator's write has not committed: /sync does not wait for that write
(store/push.py reads the evaluated rows it does not find), and nothing counts twice once the
write lands, or when it fails."""
import gevent
import gevent.event

from store import push as push_store

from tests.push.conftest import push_of, settle, user
from tests.push.test_counts import room_of, unread


def _hold_writes(monkeypatch, fail=False):
    """Every push-actions write waits for the returned event (then commits, or raises)."""
    gate = gevent.event.Event()
    real = push_store.write_actions

    def held(*args, **kwargs):
        gate.wait(10)
        if fail:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(push_store, "write_actions", held)
    return gate


def _evaluated(app, room_id):
    push = push_of(app)
    push.evaluator.barrier(room_id, 5.0)
    assert push.evaluator._unwritten, "the write should still be held"


def test_counts_are_right_before_during_and_after_the_write(app, monkeypatch):
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = room_of(app, alice, bob)
    settle(app, room_id)
    gate = _hold_writes(monkeypatch)
    alice.send(room_id, "one")
    alice.send(room_id, {"msgtype": "m.text", "body": "hey bob",
                         "m.mentions": {"user_ids": [bob.user_id]}})
    _evaluated(app, room_id)
    assert unread(bob, room_id) == {"notification_count": 2, "highlight_count": 1}
    assert unread(alice, room_id) == {"notification_count": 0, "highlight_count": 0}
    gate.set()
    settle(app, room_id)
    assert not push_of(app).evaluator._unwritten
    assert unread(bob, room_id) == {"notification_count": 2, "highlight_count": 1}


def test_an_own_event_not_written_yet_reads_the_room(app, monkeypatch):
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = room_of(app, alice, bob)
    alice.send(room_id, "one")
    alice.send(room_id, "two")
    settle(app, room_id)
    assert unread(bob, room_id)["notification_count"] == 2
    gate = _hold_writes(monkeypatch)
    bob.send(room_id, "I read it all")   # bob's own event: read up to it
    _evaluated(app, room_id)
    assert unread(bob, room_id) == {"notification_count": 0, "highlight_count": 0}
    assert unread(alice, room_id)["notification_count"] == 1
    gate.set()
    settle(app, room_id)
    assert unread(bob, room_id) == {"notification_count": 0, "highlight_count": 0}
    assert unread(alice, room_id)["notification_count"] == 1


def test_a_failed_write_leaves_nothing_behind(app, monkeypatch):
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = room_of(app, alice, bob)
    settle(app, room_id)
    gate = _hold_writes(monkeypatch, fail=True)
    alice.send(room_id, "one")
    _evaluated(app, room_id)
    assert unread(bob, room_id)["notification_count"] == 1
    gate.set()
    settle(app, room_id)
    assert not push_of(app).evaluator._unwritten
    # the batch was skipped (logged), as a failed batch always was: nothing half-counted
    assert unread(bob, room_id)["notification_count"] == 0
