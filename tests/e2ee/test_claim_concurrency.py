"""One-time keys are handed out exactly once, however many claims race for them: many
greenlets claim the same devices at once (on SQLite and on PostgreSQL, where the claims run
on separate connections at the same time), through the store and through HTTP."""
from collections import Counter

import gevent

from store.e2e_keys import E2EKeyStore, one_time_keys_count
from tests.e2ee.conftest import user

ALG = "signed_curve25519"


def _seed(store, user_id, device_id, n, fallback=True):
    keys = {f"{ALG}:K{i:04d}": {"key": f"k{i}"} for i in range(n)}
    fb = {f"{ALG}:FB": {"key": "fallback", "fallback": True}} if fallback else {}
    store.upload(user_id, device_id, None, keys, fb)


def test_store_claims_racing_for_one_device_never_share_a_key(db):
    store = E2EKeyStore(db)
    _seed(store, "@a:t", "D", 60)
    results = []

    def claimer():
        for _ in range(4):
            got = store.claim([("@a:t", "D", ALG)])
            results.append(next(iter(got["@a:t"]["D"])))

    gevent.joinall([gevent.spawn(claimer) for _ in range(25)], raise_error=True)
    assert len(results) == 100
    otks = [k for k in results if k != f"{ALG}:FB"]
    assert len(otks) == len(set(otks)) == 60  # every key once, none twice
    assert Counter(results)[f"{ALG}:FB"] == 40  # then the fallback key
    assert one_time_keys_count(db, "@a:t", "D") == {ALG: 0}


def test_store_claims_for_many_devices_in_one_request_race_safely(db):
    store = E2EKeyStore(db)
    devices = [f"D{i}" for i in range(5)]
    for d in devices:
        _seed(store, "@a:t", d, 10, fallback=False)
    taken = []

    def claimer():
        got = store.claim([("@a:t", d, ALG) for d in devices])
        taken.extend((d, k) for d, ks in got.get("@a:t", {}).items() for k in ks)

    gevent.joinall([gevent.spawn(claimer) for _ in range(15)], raise_error=True)
    assert len(taken) == len(set(taken)) == 50  # 10 per device, then nothing


def test_http_claims_from_many_clients_never_share_a_key(app):
    alice = user(app, "alice")
    others = [user(app, f"u{i}") for i in range(10)]
    alice.upload(device_keys=alice.device_keys(), one_time_keys=alice.otks(40))
    want = {alice.user_id: {alice.device_id: ALG}}
    got = []

    def claimer(c):
        for _ in range(5):
            r = c.claim(want)["one_time_keys"]
            got.extend(r.get(alice.user_id, {}).get(alice.device_id, {}))

    gevent.joinall([gevent.spawn(claimer, c) for c in others], raise_error=True)
    assert len(got) == len(set(got)) == 40  # 50 claims, 40 keys, no fallback: 10 empty


def test_overlapping_multi_device_claims_with_fallbacks_neither_deadlock_nor_repeat(db):
    """Claims of overlapping device sets in different orders (the shape that deadlocks if a
    claim ever waits for a one-time key another claim holds)."""
    store = E2EKeyStore(db)
    devices = [f"D{i}" for i in range(6)]
    for d in devices:
        _seed(store, "@a:t", d, 8)
    taken: list[tuple[str, str]] = []

    def claimer(n):
        mine = devices[n % 6:] + devices[:n % 6]
        if n % 2:
            mine.reverse()
        for _ in range(3):
            got = store.claim([("@a:t", d, ALG) for d in mine[:4]])
            taken.extend((d, k) for d, ks in got["@a:t"].items() for k in ks)

    gevent.joinall([gevent.spawn(claimer, n) for n in range(24)], raise_error=True)
    otks = [t for t in taken if not t[1].endswith(":FB")]
    assert len(otks) == len(set(otks)) == 48  # all 6 × 8 one-time keys, each once
    assert len(taken) == 24 * 3 * 4  # every claim got a key (one-time or fallback)
    assert store.db.run("n", lambda t: t.query_value(
        "SELECT COUNT(*) FROM e2e_fallback_keys WHERE used = 1")) == 6
