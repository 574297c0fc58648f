"""The keyring (federation/keyring.py) and its store (store/server_keys.py): direct fetches,
notaries (pinned and trust-on-first-use, bad ones ignored), the store across instances,
re-fetch of unknown key ids with a rate bound, coalescing, validity periods and forged
responses.  Runs on the engine under test (ATRIUM_TEST_DB)."""
import threading

import pytest

from federation.keyring import SEVEN_DAYS_MS, Keyring, KeyLookupError, check_key_response
from protocol.hashing import add_content_hash
from protocol.room_versions import KNOWN_ROOM_VERSIONS
from protocol.signing import (
    SignatureError, encode_verify_key_base64, generate_signing_key, get_verify_key, sign_event,
    sign_json,
)
from store.server_keys import ServerKeyStore, StoredKey
from tests.federation.keyring_helpers import (
    DAY_MS, FakeClient, FakeNotary, FakeServer, b64, keyring_config, now_ms,
)

OURS = generate_signing_key("ours")


def make(db, client, **kw):
    return Keyring(db, keyring_config(**kw), client, "test.local", OURS)


def vk_b64(vk):
    return encode_verify_key_base64(vk)


@pytest.fixture
def a():
    return FakeServer("a.example")


# --- direct ------------------------------------------------------------------------------

def test_direct_fetch_then_memory_then_store(db, a):
    client = FakeClient(a)
    kr = make(db, client)
    keys = kr.get_keys("a.example", [a.kid])
    assert vk_b64(keys[a.kid]) == b64(a.sk)
    assert client.calls == [("GET", "a.example", "/_matrix/key/v2/server")]
    kr.get_keys("a.example", [a.kid])
    assert len(client.calls) == 1                       # memory
    # a new keyring (a restart) with the server gone: the store still knows the key
    dead = FakeClient()
    kr2 = make(db, dead)
    assert vk_b64(kr2.get_keys("a.example", [a.kid])[a.kid]) == b64(a.sk)
    assert dead.calls == []
    # the response itself is stored, with only a.example's signature
    (resp,) = ServerKeyStore(db).get_responses("a.example")
    assert resp.from_server == "a.example"
    assert set(resp.response["signatures"]) == {"a.example"}


def test_unknown_server_raises_key_lookup_error(db):
    kr = make(db, FakeClient())
    with pytest.raises(KeyLookupError) as e:
        kr.get_keys("nowhere.example", ["ed25519:x"])
    assert e.value.server_name == "nowhere.example"
    assert "unreachable" in e.value.reason or "refused" in e.value.reason


def test_no_client_is_a_lookup_error_not_a_crash(db):
    kr = make(db, None)
    with pytest.raises(KeyLookupError):
        kr.get_keys("a.example", ["ed25519:k1"])


# --- forged responses ----------------------------------------------------------------------

def test_wrong_server_name_refused(db, a):
    client = FakeClient(a)
    a.tamper = lambda r: {**r, "server_name": "evil.example"}
    kr = make(db, client)
    with pytest.raises(KeyLookupError) as e:
        kr.get_keys("a.example", [a.kid])
    assert "evil.example" in e.value.reason
    assert ServerKeyStore(db).get_keys("a.example") == {}


def test_bad_self_signature_refused(db, a):
    other = generate_signing_key("k1")
    # the published key is replaced after signing: the signature no longer matches it
    a.tamper = lambda r: {**r, "verify_keys": {a.kid: {"key": b64(other)}}}
    kr = make(db, FakeClient(a))
    with pytest.raises(KeyLookupError) as e:
        kr.get_keys("a.example", [a.kid])
    assert "self-signature" in e.value.reason
    assert ServerKeyStore(db).get_keys("a.example") == {}


def test_response_signed_only_by_a_key_it_does_not_list_refused(db, a):
    stranger = generate_signing_key("zz")
    a.tamper = lambda r: sign_json({k: v for k, v in r.items() if k != "signatures"},
                                   "a.example", stranger)
    kr = make(db, FakeClient(a))
    with pytest.raises(KeyLookupError):
        kr.get_keys("a.example", [a.kid])


@pytest.mark.parametrize("mangle", [
    lambda r: [r],
    lambda r: {**r, "valid_until_ts": "soon"},
    lambda r: {**r, "verify_keys": []},
    lambda r: {**r, "verify_keys": {"ed25519:k1": {"key": "!!"}}},
    lambda r: {**r, "old_verify_keys": {"ed25519:o": {"key": "AAAA"}}},
])
def test_malformed_responses_refused(db, a, mangle):
    a.tamper = mangle
    kr = make(db, FakeClient(a))
    with pytest.raises(KeyLookupError):
        kr.get_keys("a.example", [a.kid])


# --- notaries ------------------------------------------------------------------------------

def test_via_pinned_notary(db, a):
    notary = FakeNotary("notary.example", {"a.example": a})
    client = FakeClient(a, notary)
    client.down.add("a.example")
    kr = make(db, client, notaries=(("notary.example", {notary.kid: b64(notary.sk)}),))
    keys = kr.get_keys("a.example", [a.kid])
    assert vk_b64(keys[a.kid]) == b64(a.sk)
    assert client.count("a.example") == 0
    assert client.count("notary.example", "POST") == 1
    assert client.count("notary.example", "GET") == 0    # pinned: no TOFU fetch
    # the query asked for the key id with a minimum_valid_until_ts
    (q,) = notary.queries
    crit = q["server_keys"]["a.example"][a.kid]
    assert abs(crit["minimum_valid_until_ts"] - now_ms()) < 60_000
    (resp,) = ServerKeyStore(db).get_responses("a.example")
    assert resp.from_server == "notary.example"
    assert set(resp.response["signatures"]) == {"a.example"}


def test_via_unpinned_notary_trusts_its_published_key(db, a):
    notary = FakeNotary("notary.example", {"a.example": a})
    client = FakeClient(a, notary)
    client.down.add("a.example")
    kr = make(db, client, notaries=(("notary.example", None),))
    assert vk_b64(kr.get_keys("a.example", [a.kid])[a.kid]) == b64(a.sk)
    assert client.count("notary.example", "GET") == 1    # the notary's own key, directly


@pytest.mark.parametrize("pinned", [True, False])
def test_notary_with_bad_signature_ignored(db, a, pinned):
    notary = FakeNotary("notary.example", {"a.example": a})
    notary.sign_with = generate_signing_key("notary")   # same key id, wrong key
    client = FakeClient(a, notary)
    kr = make(db, client, notaries=(
        ("notary.example", {notary.kid: b64(notary.sk)} if pinned else None),))
    # the notary is ignored; the server itself answers
    assert vk_b64(kr.get_keys("a.example", [a.kid])[a.kid]) == b64(a.sk)
    assert client.count("a.example", "GET") == 1
    assert [r.from_server for r in ServerKeyStore(db).get_responses("a.example")] \
        == ["a.example"]
    # with the server down too, nothing usable
    b = FakeServer("b.example")
    notary.reach["b.example"] = b
    client.add(b)
    client.down.add("b.example")
    with pytest.raises(KeyLookupError) as e:
        kr.get_keys("b.example", [b.kid])
    assert "notary signature" in e.value.reason


def test_notary_relaying_a_forged_server_response_ignored(db, a):
    forged = FakeServer("a.example", "k1")              # same name and key id, other key
    forged.tamper = lambda r: {**r, "verify_keys": {a.kid: {"key": b64(a.sk)}}}
    notary = FakeNotary("notary.example", {"a.example": forged})
    client = FakeClient(a, notary)
    kr = make(db, client, notaries=(("notary.example", {notary.kid: b64(notary.sk)}),))
    assert vk_b64(kr.get_keys("a.example", [a.kid])[a.kid]) == b64(a.sk)
    assert client.count("a.example", "GET") == 1


# --- re-fetch, rate bound, coalescing -------------------------------------------------------

def test_refetch_on_unknown_key_id_rate_bound(db, a):
    client = FakeClient(a)
    kr = make(db, client)
    kr.get_keys("a.example", [a.kid])
    old_kid = a.kid
    a.rotate("k2")
    keys = kr.get_keys("a.example", [a.kid])            # a new key id: fetched again
    assert vk_b64(keys[a.kid]) == b64(a.sk)
    assert client.count() == 2
    assert old_kid in ServerKeyStore(db).get_keys("a.example")
    # a key id that stays unknown is asked for once per minute, not per look-up
    for _ in range(3):
        with pytest.raises(KeyLookupError):
            kr.get_keys("a.example", ["ed25519:nope"])
    assert client.count() == 3
    t = now_ms() + kr.refetch_interval_ms + 1
    kr.now_ms = lambda: t
    with pytest.raises(KeyLookupError):
        kr.get_keys("a.example", ["ed25519:nope"])
    assert client.count() == 4


def test_concurrent_lookups_coalesce_into_one_fetch(db, a):
    client = FakeClient(a)
    client.delay = 0.2
    kr = make(db, client)
    results, errors = [], []

    def look():
        try:
            results.append(kr.get_keys("a.example", [a.kid]))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=look) for _ in range(5)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(5)
    assert not errors
    assert len(results) == 5 and all(a.kid in r for r in results)
    assert client.count() == 1


def test_follower_with_a_different_key_id_fetches_after_the_flight(db, a):
    client = FakeClient(a)
    client.delay = 0.1
    kr = make(db, client)
    a.rotate("k2")                                      # both k1 (old) and k2 published
    out = {}

    def look(kid):
        out[kid] = kr.get_keys("a.example", [kid], at_ts=0)

    old = "ed25519:k1"
    threads = [threading.Thread(target=look, args=(k,)) for k in (a.kid, old)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(5)
    assert set(out) == {a.kid, old}
    assert client.count() <= 2


# --- validity ----------------------------------------------------------------------------

def test_expired_current_key_refetched_then_refused(db, a):
    a.valid_until_ts = now_ms() - 1000
    client = FakeClient(a)
    kr = make(db, client)
    with pytest.raises(KeyLookupError):
        kr.get_keys("a.example", [a.kid])
    assert client.count() == 1
    # valid for a signature made before valid_until_ts (no new fetch needed)
    assert a.kid in kr.get_keys("a.example", [a.kid], at_ts=a.valid_until_ts - 5000)
    assert client.count() == 1
    # the server publishes a fresh response: a later look-up (after the bound) renews it
    a.valid_until_ts = None
    t = now_ms() + kr.refetch_interval_ms + 1
    kr.now_ms = lambda: t
    assert a.kid in kr.get_keys("a.example", [a.kid])
    assert client.count() == 2


def test_valid_until_capped_at_seven_days(db, a):
    a.valid_for_ms = 30 * DAY_MS
    kr = make(db, FakeClient(a))
    before = now_ms()
    kr.get_keys("a.example", [a.kid])
    assert a.kid in kr.get_keys("a.example", [a.kid], at_ts=before + 6 * DAY_MS)
    with pytest.raises(KeyLookupError):
        kr.get_keys("a.example", [a.kid], at_ts=before + 8 * DAY_MS)
    stored = ServerKeyStore(db).get_keys("a.example")[a.kid]
    assert stored.valid_until_ts <= stored.fetched_ts + SEVEN_DAYS_MS


def test_old_keys_valid_only_before_expiry(db, a):
    expired = now_ms() - DAY_MS
    old_kid = a.kid
    a.rotate("k2", expired_ts=expired)
    kr = make(db, FakeClient(a))
    assert old_kid in kr.get_keys("a.example", [old_kid], at_ts=expired - 1)
    with pytest.raises(KeyLookupError):
        kr.get_keys("a.example", [old_kid], at_ts=expired)
    with pytest.raises(KeyLookupError):
        kr.get_keys("a.example", [old_kid])               # now: expired


def test_store_merge_keeps_expiry_and_greatest_validity(db):
    st = ServerKeyStore(db)
    sk = generate_signing_key("k")
    key = encode_verify_key_base64(get_verify_key(sk))
    st.store_response("s.example", "s.example", {"x": 1}, 500,
                      [StoredKey("ed25519:k", key, 500, 300, 1)], 1)
    # an older response (say, cached at a notary) lists it as current: it stays expired
    got = st.store_response("s.example", "n.example", {"x": 2}, 900,
                            [StoredKey("ed25519:k", key, 900, None, 2)], 2)
    assert got["ed25519:k"].expired_ts == 300
    assert got["ed25519:k"].valid_until_ts == 900
    assert not got["ed25519:k"].usable_at(400)
    # a different key under the same id replaces it
    other = encode_verify_key_base64(get_verify_key(generate_signing_key("k")))
    got = st.store_response("s.example", "s.example", {"x": 3}, 100,
                            [StoredKey("ed25519:k", other, 100, None, 3)], 3)
    assert got["ed25519:k"] == StoredKey("ed25519:k", other, 100, None, 3)
    assert {r.from_server for r in st.get_responses("s.example")} == {"s.example", "n.example"}
    assert [r.response for r in st.get_responses("s.example", "s.example")] == [{"x": 3}]


# --- our own keys --------------------------------------------------------------------------

def test_own_keys_and_configured_old_keys_need_no_fetch(db):
    old_sk = generate_signing_key("old")
    client = FakeClient()
    kr = make(db, client, old_signing_keys=(("ed25519:old", b64(old_sk), 1_000_000),))
    ours = kr.get_keys("test.local", ["ed25519:ours"])
    assert vk_b64(ours["ed25519:ours"]) == b64(OURS)
    assert "ed25519:old" in kr.get_keys("test.local", ["ed25519:old"], at_ts=999_999)
    with pytest.raises(KeyLookupError):
        kr.get_keys("test.local", ["ed25519:old"])
    with pytest.raises(KeyLookupError):
        kr.get_keys("test.local", ["ed25519:other"])
    assert client.calls == []


# --- verify_json / verify_event ------------------------------------------------------------

def test_verify_json(db, a):
    kr = make(db, FakeClient(a))
    obj = a.sign({"method": "GET", "uri": "/x", "origin": "a.example"})
    kr.verify_json("a.example", obj)
    with pytest.raises(SignatureError):
        kr.verify_json("a.example", {**obj, "uri": "/y"})
    with pytest.raises(SignatureError):
        kr.verify_json("a.example", {"uri": "/x"})
    with pytest.raises(SignatureError):
        kr.verify_json("b.example", obj)                  # not signed by b.example
    unknown = sign_json({"uri": "/x"}, "a.example", generate_signing_key("zz"))
    with pytest.raises(KeyLookupError):
        kr.verify_json("a.example", unknown)
    # a signature by an unknown key beside a good one is skipped
    both = sign_json(dict(obj), "a.example", generate_signing_key("zz2"))
    kr.verify_json("a.example", both)
    # and our own signature checks against our own key
    kr.verify_json("test.local", sign_json({"a": 1}, "test.local", OURS))


def _event(rv, sender_server, sk, ts):
    ev = {"type": "m.room.message", "room_id": "!r:a.example", "sender": f"@u:{sender_server}",
          "content": {"body": "hi"}, "origin_server_ts": ts, "depth": 3,
          "prev_events": [], "auth_events": []}
    if rv.event_format == 1:
        ev["event_id"] = f"$e:{sender_server}"
        ev["origin"] = sender_server
    add_content_hash(ev, rv)
    return sign_event(ev, rv, sender_server, sk)


@pytest.mark.parametrize("version", ["4", "10", "12"])
def test_verify_event_key_validity(db, a, version):
    rv = KNOWN_ROOM_VERSIONS[version]
    kr = make(db, FakeClient(a))
    now = now_ms()
    kr.verify_event(_event(rv, "a.example", a.sk, now), rv)
    kr.verify_event(_event(rv, "a.example", a.sk, now), version)       # identifier accepted
    # a forged event (content changed after signing) fails
    ev = _event(rv, "a.example", a.sk, now)
    ev["origin_server_ts"] = now + 1
    with pytest.raises(SignatureError):
        kr.verify_event(ev, rv)
    # another server's key expired (listed under old_verify_keys): an event signed with it
    # and dated after the expiry
    b = FakeServer("b.example")
    old_sk, expired = b.sk, now - DAY_MS
    b.rotate("k2", expired_ts=expired)
    kr2 = make(db, FakeClient(b))
    late = _event(rv, "b.example", old_sk, expired + 1000)
    if rv.enforce_key_validity:
        with pytest.raises(KeyLookupError):
            kr2.verify_event(late, rv)
        kr2.verify_event(_event(rv, "b.example", old_sk, expired - 1000), rv)
    else:
        kr2.verify_event(late, rv)                     # v1-v4: validity is ignored


def test_verify_event_missing_signature(db, a):
    rv = KNOWN_ROOM_VERSIONS["10"]
    kr = make(db, FakeClient(a))
    ev = _event(rv, "a.example", a.sk, now_ms())
    ev["signatures"] = {"b.example": ev["signatures"]["a.example"]}
    with pytest.raises(SignatureError):
        kr.verify_event(ev, rv)
    ev["sender"] = "not a user id"
    with pytest.raises(SignatureError):
        kr.verify_event(ev, rv)


def test_check_key_response_strips_foreign_signatures(a):
    resp = sign_json(a.key_response(), "notary.example", generate_signing_key("n"))
    vut, keys, clean = check_key_response(resp, "a.example", now_ms())
    assert set(clean["signatures"]) == {"a.example"}
    assert [k.key_id for k in keys] == [a.kid] and vut == resp["valid_until_ts"]
