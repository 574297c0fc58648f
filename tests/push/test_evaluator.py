"""The push evaluator behind the counts: it never fails or slows a room write, it is
bounded (past its queue it catches up from the store), and after a restart it evaluates
whatever was committed but not yet evaluated — each event once."""
import time

from actors.push_evaluator import PushEvaluator
from store import push as push_store
from web.app import runtime_of

from tests.push.conftest import PUSH_CONFIG, push_of, settle, user


def joined_room(alice, *others):
    room_id = alice.create_room()
    for c in others:
        alice.invite(room_id, c.user_id)
        c.join(room_id)
    return room_id


def count(app, c, room_id):
    return push_store.unread_counts(runtime_of(app).db, c.user_id, room_id)[
        "notification_count"]


def test_overflow_catches_up_from_the_store(hs):
    app = hs(push=dict(PUSH_CONFIG, evaluator_queue=1))
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    room_id = joined_room(alice, bob, carol)  # createRoom commits several events at once
    for i in range(5):
        alice.send(room_id, f"m{i}")
    settle(app, room_id)
    ev = push_of(app).evaluator
    assert ev.overflows >= 1
    assert count(app, bob, room_id) == 5 and count(app, carol, room_id) == 5


def test_a_failing_evaluation_never_fails_the_room_write(app, monkeypatch):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    room_id = joined_room(alice, bob, carol)
    ev = push_of(app).evaluator

    def boom(*a, **k):
        raise RuntimeError("poisoned")

    monkeypatch.setattr(ev, "_evaluate_room", boom)
    t0 = time.monotonic()
    alice.send(room_id, "lost to the bug")
    resp = bob.sync()  # the barrier is released even though the batch failed
    assert time.monotonic() - t0 < 1.0
    assert resp["rooms"]["join"][room_id]["unread_notifications"]["notification_count"] == 0
    monkeypatch.undo()
    alice.send(room_id, "counted")
    assert count(app, bob, room_id) == 1


def test_restart_evaluates_what_was_committed_but_not_evaluated(app):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    room_id = joined_room(alice, bob, carol)
    push = push_of(app)
    settle(app, room_id)
    start = push_store.evaluator_position(push.db)
    push.evaluator.stop()  # as if the process died after these commits
    for i in range(3):
        alice.send(room_id, f"m{i}")
    assert count(app, bob, room_id) == 0
    assert push_store.evaluator_position(push.db) == start
    fresh = PushEvaluator(push.db, push.rooms.events, push.rules, "test.local")
    push_store.set_barrier(push.db, fresh.barrier)
    fresh.start()
    try:
        deadline = time.monotonic() + 5
        while fresh._catch_up and time.monotonic() < deadline:
            time.sleep(0.01)
        assert count(app, bob, room_id) == 3
        assert push_store.evaluator_position(push.db) > start
        fresh._catch_up = True  # evaluating again writes nothing twice
        fresh._wake.set()
        time.sleep(0.1)
        assert count(app, bob, room_id) == 3
    finally:
        fresh.stop()


def test_cached_room_context_follows_membership(app):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    room_id = joined_room(alice, bob)
    alice.send(room_id, "before carol")
    alice.invite(room_id, carol.user_id)
    carol.join(room_id)
    alice.send(room_id, "after carol")
    assert count(app, carol, room_id) == 1
    bob.req("POST", f"/_matrix/client/v3/rooms/{room_id}/leave", {})
    alice.send(room_id, "after bob left")
    settle(app, room_id)
    rows = runtime_of(app).db.run("rows", lambda t: t.query_value(
        "SELECT COUNT(*) FROM event_push_actions WHERE user_id = ?", (bob.user_id,)))
    assert rows == 3  # his invite and two messages; nothing after he left
