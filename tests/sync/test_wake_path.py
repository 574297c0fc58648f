"""The cheap path after a wake-up: the /syncs one event wakes read the room's newest events
from memory and share their other reads (the unread counts of the room in one transaction,
without waiting for the push actions' write to commit), E2E key
counts come from memory until an upload or a claim changes them, inline filters are parsed
once — and every answer stays what it would be without the sharing."""
from collections import Counter

import gevent
import pytest

from store import push as push_store
from store.e2e_keys import E2EKeyStore, one_time_keys_count, unused_fallback_key_types
from tests.sync.conftest import bodies, user
from web.app import runtime_of
from web.sync_caches import Coalescer, SharedReads

ALG = "signed_curve25519"
QUIET = {"presence": {"types": []}}  # other members' presence would wake the syncs too


@pytest.fixture
def db_calls(app, monkeypatch):
    """Counter of db.run by transaction name."""
    db = runtime_of(app).db
    calls: Counter[str] = Counter()
    real = db.run

    def counting(name, fn, *args, **kw):
        calls[name] += 1
        return real(name, fn, *args, **kw)

    monkeypatch.setattr(db, "run", counting)
    return calls


def _room_with(app, n):
    alice = user(app, "alice")
    members = [user(app, f"m{i}") for i in range(n)]
    room = alice.create_room(preset="public_chat")
    for m in members:
        m.join(room)
    return alice, members, room


def test_syncs_woken_by_one_event_share_their_reads(app, sync_svc, db_calls):
    alice, members, room = _room_with(app, 6)
    tokens = [m.sync(filter=QUIET)["next_batch"] for m in members]
    for m, t in zip(members, tokens):  # warm: key counts, memberships, to-device
        m.sync(since=t, filter=QUIET)
    out = {}

    def wait(i):
        out[i] = members[i].sync(since=tokens[i], timeout=10_000, filter=QUIET)

    waiters = [gevent.spawn(wait, i) for i in range(len(members))]
    gevent.sleep(0.1)
    assert sync_svc.notifier.waiting() == len(members)
    db_calls.clear()
    alice.send(room, "to everyone")
    gevent.joinall(waiters, timeout=10, raise_error=True)
    for i in range(len(members)):
        assert bodies(out[i], room) == ["to everyone"]
        assert out[i]["rooms"]["join"][room]["unread_notifications"] == {
            "notification_count": 1, "highlight_count": 0}
    # the new event's slice and the event itself are in memory since its commit
    # (store/recent_timeline.py, EventStore's cache filled at persist)
    assert db_calls["sync_timeline"] == 0
    assert db_calls["get_events"] == 0
    assert db_calls["unread_counts"] < len(members)  # normally 1: they join one batch
    assert db_calls["otk_counts"] == 0          # key counts from memory


def test_consecutive_wakes_lose_and_repeat_nothing(app, sync_svc):
    alice, members, room = _room_with(app, 3)
    tokens = [m.sync(filter=QUIET)["next_batch"] for m in members]
    seen = {i: [] for i in range(len(members))}

    def follow(i):
        since = tokens[i]
        while len(seen[i]) < 5:
            resp = members[i].sync(since=since, timeout=5_000, filter=QUIET)
            since = resp["next_batch"]
            seen[i] += bodies(resp, room)

    waiters = [gevent.spawn(follow, i) for i in range(len(members))]
    for k in range(5):
        gevent.sleep(0.02)
        alice.send(room, f"m{k}")
    gevent.joinall(waiters, timeout=10, raise_error=True)
    for i in range(len(members)):
        assert seen[i] == [f"m{k}" for k in range(5)]


def test_unread_counts_read_together_are_each_users_own(app):
    alice, members, room = _room_with(app, 3)
    alice.send(room, "one")
    alice.send(room, {"msgtype": "m.text", "body": "hey m0",
                      "m.mentions": {"user_ids": [members[0].user_id]}})
    db = runtime_of(app).db
    push_store.wait_evaluated(db, room)
    users = [alice.user_id] + [m.user_id for m in members]
    got = {}

    def read(u):
        got[u] = push_store.unread_counts(db, u, room)

    gevent.joinall([gevent.spawn(read, u) for u in users], raise_error=True)
    for u in users:
        assert got[u] == push_store.unread_counts(db, u, room)  # alone, the same
    assert got[members[0].user_id]["highlight_count"] == 1
    assert got[members[1].user_id]["notification_count"] == 2
    assert got[alice.user_id]["notification_count"] == 0


def test_key_counts_cached_until_upload_or_claim(db):
    store = E2EKeyStore(db)
    store.upload("@a:t", "D", None, {f"{ALG}:K{i}": {"key": f"k{i}"} for i in range(3)},
                 {f"{ALG}:FB": {"key": "fb", "fallback": True}})
    assert one_time_keys_count(db, "@a:t", "D") == {ALG: 3}
    assert unused_fallback_key_types(db, "@a:t", "D") == [ALG]
    store.claim([("@a:t", "D", ALG)])
    assert one_time_keys_count(db, "@a:t", "D") == {ALG: 2}
    store.upload("@a:t", "D", None, {f"{ALG}:K9": {"key": "k9"}}, {})
    assert one_time_keys_count(db, "@a:t", "D") == {ALG: 3}
    for _ in range(4):
        store.claim([("@a:t", "D", ALG)])  # three one-time keys, then the fallback key
    assert one_time_keys_count(db, "@a:t", "D") == {ALG: 0}
    assert unused_fallback_key_types(db, "@a:t", "D") == []
    counts = one_time_keys_count(db, "@a:t", "D")
    counts[ALG] = 99  # callers get copies
    assert one_time_keys_count(db, "@a:t", "D") == {ALG: 0}


def test_key_count_fill_racing_a_claim_is_not_kept(db, monkeypatch):
    from store import e2e_keys

    store = E2EKeyStore(db)
    store.upload("@a:t", "D", None, {f"{ALG}:K{i}": {"key": f"k{i}"} for i in range(2)}, {})
    real = e2e_keys._counts_and_fallbacks

    def slow(txn, u, d):  # the claim commits after this read and before the fill is kept
        got = real(txn, u, d)
        gevent.spawn(store.claim, [("@a:t", "D", ALG)]).join()
        return got

    monkeypatch.setattr(e2e_keys, "_counts_and_fallbacks", slow)
    assert one_time_keys_count(db, "@a:t", "D") == {ALG: 2}  # what it read
    monkeypatch.setattr(e2e_keys, "_counts_and_fallbacks", real)
    assert one_time_keys_count(db, "@a:t", "D") == {ALG: 1}  # not the stale fill


def test_sync_sees_key_counts_change(app):
    from store.e2e_keys import E2EKeyStore as Store

    alice, bob = user(app, "alice"), user(app, "bob")
    keys = Store(runtime_of(app).db)
    keys.upload(alice.user_id, alice.device_id, None,
                {f"{ALG}:K{i}": {"key": f"k{i}"} for i in range(2)}, {})
    since = alice.sync()["next_batch"]
    assert alice.sync(since=since)["device_one_time_keys_count"] == {ALG: 2}
    bob.req("POST", "/_matrix/client/v3/keys/claim",
            {"one_time_keys": {alice.user_id: {alice.device_id: ALG}}})
    assert alice.sync(since=since)["device_one_time_keys_count"] == {ALG: 1}


def test_shared_reads_once_per_key_and_errors_not_kept():
    reads = SharedReads(8)
    calls = []

    def slow():
        calls.append(1)
        gevent.sleep(0.01)
        return [("e", 1)]

    got = [gevent.spawn(reads.get, "k", slow) for _ in range(5)]
    gevent.joinall(got, raise_error=True)
    assert [g.value for g in got] == [[("e", 1)]] * 5 and len(calls) == 1
    assert reads.get("k", slow) == [("e", 1)] and len(calls) == 1

    def boom():
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        reads.get("bad", boom)
    assert reads.get("bad", lambda: []) == []


def test_coalescer_followers_wait_for_the_leader():
    c = Coalescer()
    filled = []

    def fill():
        gevent.sleep(0.01)
        filled.append(1)

    gs = [gevent.spawn(c.fill, "k", fill) for _ in range(4)]
    gevent.joinall(gs, raise_error=True)
    assert filled == [1]


def test_inline_filter_parsed_once_and_bad_one_still_refused(app, monkeypatch):
    from web import sync as sync_mod

    alice = user(app, "alice")
    parsed = []
    real = sync_mod.resolve_filter

    def counting(*args):
        parsed.append(args[2])
        return real(*args)

    monkeypatch.setattr(sync_mod, "resolve_filter", counting)
    f = '{"room": {"timeline": {"limit": 3}}, "org.test.nonce": 1}'
    alice.sync(filter=f)
    alice.sync(filter=f)
    assert parsed.count(f) == 1
    alice.sync(filter='{"room": {"timeline": {"limit": "x"}}}', status=400)
    alice.sync(filter='{"room": {"timeline": {"limit": "x"}}}', status=400)


def test_timed_out_long_poll_answers_like_an_immediate_empty_sync(app):
    alice = user(app, "alice")
    alice.create_room()
    since = alice.sync(filter=QUIET)["next_batch"]
    now = alice.sync(since=since, filter=QUIET)
    waited = alice.sync(since=since, timeout=200, filter=QUIET)
    assert waited == now
    assert waited["rooms"] == {"join": {}, "invite": {}, "leave": {}, "knock": {}}


def test_initial_sync_of_many_rooms_reads_them_side_by_side(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    rooms = []
    for i in range(12):
        room = alice.create_room(preset="public_chat", name=f"r{i}")
        bob.join(room)
        alice.send(room, f"hello {i}")
        rooms.append(room)
    resp = bob.sync(filter=QUIET)
    assert list(resp["rooms"]["join"]) == [r for r in rooms if r in resp["rooms"]["join"]]
    for i, room in enumerate(rooms):
        joined = resp["rooms"]["join"][room]
        assert bodies(resp, room) == [f"hello {i}"]
        assert joined["unread_notifications"] == {"notification_count": 1,
                                                  "highlight_count": 0}
        got = joined["state"]["events"] + joined["timeline"]["events"]
        assert [e["content"]["name"] for e in got if e["type"] == "m.room.name"] == [f"r{i}"]


@pytest.fixture
def computes(monkeypatch):
    """Counter of compute_sync calls (how many answers /sync worked out)."""
    from web import sync as sync_mod

    calls = Counter()
    real = sync_mod.compute_sync

    def counting(*args, **kw):
        calls["compute"] += 1
        return real(*args, **kw)

    monkeypatch.setattr(sync_mod, "compute_sync", counting)
    return calls


def _settled(client):
    """A token at which every stream stands still (presence updates are asynchronous)."""
    since = client.sync(filter=QUIET, set_presence="offline")["next_batch"]
    still = 0
    for _ in range(100):
        gevent.sleep(0.05)
        nxt = client.sync(since=since, filter=QUIET, set_presence="offline")["next_batch"]
        # still for three polls in a row over >= 150 ms: asynchronous work (presence, push
        # actions) lags further behind on a loaded machine than one 50 ms pause
        still = still + 1 if nxt == since else 0
        if still >= 3:
            return since
        since = nxt
    raise AssertionError("the streams never settled")


def test_a_poll_with_the_token_just_given_parks_without_computing(app, sync_svc, computes):
    alice, (bob,), room = _room_with(app, 1)
    since = _settled(bob)
    computes.clear()
    # nothing moved: the answer is known to be empty, and says so after the timeout
    quiet = bob.sync(since=since, timeout=100, filter=QUIET, set_presence="offline")
    assert computes["compute"] == 0
    assert quiet["next_batch"] == since
    assert quiet["rooms"]["join"] == {} and quiet["to_device"]["events"] == []
    assert "device_one_time_keys_count" in quiet
    # woken by a new event: computed once, and the event is there
    out = {}
    waiter = gevent.spawn(lambda: out.update(bob.sync(
        since=since, timeout=10_000, filter=QUIET, set_presence="offline")))
    gevent.sleep(0.1)
    assert sync_svc.notifier.waiting() == 1 and computes["compute"] == 0
    alice.send(room, "news")
    waiter.join(timeout=10)
    assert bodies(out, room) == ["news"]
    assert computes["compute"] >= 1


def test_a_poll_behind_the_streams_or_owing_an_ack_computes(app, sync_svc, computes):
    alice, (bob,), room = _room_with(app, 1)
    since = _settled(bob)
    alice.send(room, "while away")
    computes.clear()
    assert bodies(bob.sync(since=since, timeout=5_000, filter=QUIET,
                           set_presence="offline"), room) == ["while away"]
    assert computes["compute"] >= 1
    # a to-device message delivered: the next poll (with the token that carried it) must
    # acknowledge it, so it computes even though no stream moved since
    since = _settled(bob)
    alice.req("PUT", "/_matrix/client/v3/sendToDevice/m.test/t1",
              {"messages": {bob.user_id: {bob.device_id: {"n": 1}}}})
    got = bob.sync(since=since, filter=QUIET, set_presence="offline")
    assert [e["content"] for e in got["to_device"]["events"]] == [{"n": 1}]
    computes.clear()
    after = bob.sync(since=got["next_batch"], timeout=100, filter=QUIET,
                     set_presence="offline")
    assert computes["compute"] >= 1 and after["to_device"]["events"] == []
    gevent.sleep(0.05)
    assert runtime_of(app).db.run("n", lambda t: t.query_value(
        "SELECT COUNT(*) FROM device_inbox")) == 0
