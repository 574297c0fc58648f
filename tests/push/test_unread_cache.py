"""The unread counts kept in memory (store/unread_cache.py) answer what a read of the store
answers: after every step of a random mix of messages, mentions, thread replies, own events
and receipts (threaded, unthreaded, private), and across the fill races the cache guards."""
import random

from store import push as push_store
from store.unread_cache import UnreadCache
from web.app import runtime_of

from tests.push.conftest import push_of, settle, user
from tests.push.test_counts import room_of


def _stored(db, user_id, room_id):
    """The counts from the rows alone (no cache, nothing unwritten)."""
    return db.run("counts", lambda t: push_store._counts_txn(t, user_id, room_id))


def test_cached_counts_follow_a_random_history(app):
    db = runtime_of(app).db
    cache = push_store.unread_cache(db)
    assert cache is not None
    users = [user(app, n) for n in ("alice", "bob", "carol", "dave")]
    room_id = room_of(app, *users)
    root = users[0].send(room_id, "root")
    events = [(root, "main")]
    rng = random.Random(5)
    for step in range(160):
        actor = rng.choice(users)
        op = rng.random()
        if op < 0.55:
            body = {"msgtype": "m.text", "body": f"m{step}"}
            thread = "main"
            if rng.random() < 0.4:
                body["m.relates_to"] = {"rel_type": "m.thread", "event_id": root}
                thread = root
            if rng.random() < 0.2:
                body["m.mentions"] = {"user_ids": [rng.choice(users).user_id]}
            events.append((actor.send(room_id, body), thread))
        else:
            eid, thread = rng.choice(events[-12:])
            rtype = rng.choice(["m.read", "m.read.private"])
            how = rng.random()
            if how < 0.4:
                actor.receipt(room_id, eid, rtype)                              # unthreaded
            else:
                actor.receipt(room_id, eid, rtype, body={"thread_id": thread})  # threaded
        # what /sync would read right now (the barrier, then memory or one fill) ...
        seen = {u.user_id: push_store.unread_counts(db, u.user_id, room_id) for u in users}
        settle(app, room_id)
        # ... is what the rows say once written
        for u in users:
            assert seen[u.user_id] == _stored(db, u.user_id, room_id), (step, u.user_id)
    assert cache.hits > 300  # most answers came from memory, not from fills


def test_a_receipt_drops_the_entry_and_the_next_read_refills_it(app):
    db = runtime_of(app).db
    cache = push_store.unread_cache(db)
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = room_of(app, alice, bob)
    first = alice.send(room_id, "one")
    alice.send(room_id, "two")
    assert push_store.unread_counts(db, bob.user_id, room_id)["notification_count"] == 2
    assert (bob.user_id, room_id) in cache._entries
    bob.receipt(room_id, first)
    assert (bob.user_id, room_id) not in cache._entries
    assert push_store.unread_counts(db, bob.user_id, room_id)["notification_count"] == 1
    # bob's own message reads the main timeline up to it, in memory
    bob.send(room_id, "me")
    assert push_store.unread_counts(db, bob.user_id, room_id)["notification_count"] == 0


def test_overflow_catch_up_drops_what_it_replays(app):
    db = runtime_of(app).db
    evaluator = push_of(app).evaluator
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = room_of(app, alice, bob)
    alice.send(room_id, "one")
    assert push_store.unread_counts(db, bob.user_id, room_id)["notification_count"] == 1
    evaluator.max_pending = 0  # every hand-over overflows: catch up from the store
    try:
        alice.send(room_id, "two")
        alice.send(room_id, "three")
        got = push_store.unread_counts(db, bob.user_id, room_id)
    finally:
        evaluator.max_pending = 10_000
    settle(app, room_id)
    assert got["notification_count"] == 3 == _stored(db, bob.user_id, room_id)[
        "notification_count"]
    alice.send(room_id, "four")  # back to the queue: counted in memory, once
    assert push_store.unread_counts(db, bob.user_id, room_id)["notification_count"] == 4


def test_a_fill_overtaken_by_an_update_is_not_kept():
    cache = UnreadCache(10)
    key = ("@b:x", "!r:x")
    keys = cache.begin_fill([key])
    # evaluated while the read was in flight: the read may or may not include it
    cache.evaluated([("@b:x", "$e", "!r:x", 7, "main", ["notify"], False, 0)], [])
    cache.end_fill(keys, {key: ({}, {"main": [1, 0]})})
    assert cache.get(key) is None
    keys = cache.begin_fill([key])
    cache.end_fill(keys, {key: ({}, {"main": [1, 0]})})
    assert cache.get(key) == {"main": [1, 0]}
    # moved forward: a notification after the read positions, a highlight, an own event
    cache.evaluated([("@b:x", "$f", "!r:x", 8, "main", ["notify"], True, 0),
                     ("@b:x", "$g", "!r:x", 9, "$root", ["notify"], False, 0)], [])
    assert cache.get(key) == {"main": [2, 1], "$root": [1, 0]}
    cache.evaluated([], [("@b:x", "!r:x", "main", 10)])
    assert cache.get(key) == {"$root": [1, 0]}
    # a row at or before a thread's read position does not count
    cache.evaluated([("@b:x", "$h", "!r:x", 10, "main", ["notify"], False, 0)], [])
    assert cache.get(key) == {"$root": [1, 0]}


def test_bounds_and_drops():
    cache = UnreadCache(2)
    for i in range(3):
        keys = cache.begin_fill([(f"@u{i}:x", "!r:x")])
        cache.end_fill(keys, {keys[0]: ({}, {})})
    assert len(cache) == 2 and cache.get(("@u0:x", "!r:x")) is None
    keys = cache.begin_fill([("@u1:x", "!s:x")])
    cache.drop_user("@u1:x")  # a deactivation during the fill
    cache.end_fill(keys, {keys[0]: ({}, {})})
    assert cache.get(("@u1:x", "!r:x")) is None and cache.get(("@u1:x", "!s:x")) is None
    keys = cache.begin_fill([("@u9:x", "!r:x")])
    cache.clear()
    cache.end_fill(keys, {keys[0]: ({}, {})})
    assert len(cache) == 0
