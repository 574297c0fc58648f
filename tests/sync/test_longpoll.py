"""Long-polling /sync: a waiting sync wakes on a send to its room within milliseconds, does
not wake for an unrelated room, and the notifier wakes only the users concerned."""
import time

import gevent

from tests.sync.conftest import bodies, user
from web.app import runtime_of


def _wait_in_background(client, since, timeout_ms):
    out = {}

    def run():
        t0 = time.monotonic()
        out["resp"] = client.sync(since=since, timeout=timeout_ms)
        out["elapsed"] = time.monotonic() - t0

    return gevent.spawn(run), out


def test_long_poll_wakes_on_send(app, sync_svc):
    alice, bob = user(app, "alice"), user(app, "bob")
    room = alice.create_room(preset="public_chat")
    bob.join(room)
    since = bob.sync()["next_batch"]
    g, out = _wait_in_background(bob, since, 10_000)
    gevent.sleep(0.05)
    assert sync_svc.notifier.waiting() == 1
    sent_at = time.monotonic()
    alice.send(room, "wake up")
    g.join(timeout=5)
    assert g.successful()
    assert bodies(out["resp"], room) == ["wake up"]
    assert time.monotonic() - sent_at < 1.0
    assert sync_svc.notifier.waiting() == 0


def test_long_poll_does_not_wake_for_unrelated_room(app, sync_svc):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    room = alice.create_room(preset="public_chat")
    bob.join(room)
    elsewhere = carol.create_room()
    since = bob.sync()["next_batch"]
    before = sync_svc.notifier.wakeups
    g, out = _wait_in_background(bob, since, 400)
    gevent.sleep(0.05)
    carol.send(elsewhere, "not for bob")
    g.join(timeout=5)
    assert out["resp"]["rooms"]["join"] == {}
    assert out["elapsed"] >= 0.35  # ran to its timeout
    assert sync_svc.notifier.wakeups == before  # bob was never woken


def test_empty_long_poll_times_out_with_same_positions(app):
    alice = user(app, "alice")
    alice.create_room()
    since = alice.sync()["next_batch"]
    t0 = time.monotonic()
    s = alice.sync(since=since, timeout=300)
    assert time.monotonic() - t0 >= 0.25
    assert s["next_batch"] == since


def test_invite_wakes_the_invitee(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room = alice.create_room()
    since = bob.sync()["next_batch"]
    g, out = _wait_in_background(bob, since, 10_000)
    gevent.sleep(0.05)
    alice.invite(room, bob.user_id)
    g.join(timeout=5)
    assert room in out["resp"]["rooms"]["invite"]
    assert out["elapsed"] < 2


def test_many_waiters_each_woken_once(hs):
    # presence off: otherwise each member coming online is news for the earlier ones
    app = hs(presence={"enabled": False})
    sync_svc = runtime_of(app).parts["sync"]
    alice = user(app, "alice")
    room = alice.create_room(preset="public_chat")
    members = [user(app, f"u{i}") for i in range(20)]
    for m in members:
        m.join(room)
    tokens = [m.sync()["next_batch"] for m in members]
    waits = [_wait_in_background(m, t, 10_000) for m, t in zip(members, tokens)]
    gevent.sleep(0.1)
    assert sync_svc.notifier.waiting() == 20
    alice.send(room, "all")
    gevent.joinall([g for g, _ in waits], timeout=5)
    for _, out in waits:
        assert bodies(out["resp"], room) == ["all"]
