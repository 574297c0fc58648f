"""POST /keys/upload, /keys/query and /keys/claim: device keys checked against the device's
own ed25519 key, one-time and fallback keys, counts in /sync, remote users as failures."""
from protocol.signing import generate_signing_key
from web.app import runtime_of
from tests.e2ee.conftest import V, user


def test_upload_device_keys_and_query_them_with_display_name(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    r = alice.upload(device_keys=alice.device_keys())
    assert r == {"one_time_key_counts": {"signed_curve25519": 0}}
    got = bob.query([alice.user_id])
    dev = got["device_keys"][alice.user_id][alice.device_id]
    assert dev["keys"][f"ed25519:{alice.device_id}"] == alice.ed25519
    assert dev["unsigned"] == {"device_display_name": "alice's phone"}
    assert got["failures"] == {}
    # a device list filter, and a user without keys
    got = bob.query({alice.user_id: ["NOPE"], bob.user_id: []})
    assert got["device_keys"] == {alice.user_id: {}, bob.user_id: {}}


def test_device_keys_stored_as_sent_without_checking_the_self_signature(app):
    # issue 15 group 6: as Synapse, the server does not verify a device's self-signature
    # (tests/web/test_leniency.py has the rest); the spec's required fields stay checked
    alice = user(app, "alice")
    unsigned = alice.device_keys()
    del unsigned["signatures"]
    assert alice.upload(device_keys=unsigned, status=400)["errcode"] == "M_BAD_JSON"
    forged = alice.device_keys(sk=generate_signing_key(alice.device_id))
    alice.upload(device_keys=forged)
    got = alice.query([alice.user_id])["device_keys"][alice.user_id][alice.device_id]
    assert got["signatures"] == forged["signatures"]


def test_device_keys_must_name_the_tokens_user_and_device(app):
    alice = user(app, "alice")
    other_device = alice.device_keys(device_id="OTHER")
    assert alice.upload(device_keys=other_device, status=400)["errcode"] == "M_BAD_JSON"
    other_user = alice.device_keys(user_id="@bob:test.local")
    assert alice.upload(device_keys=other_user, status=400)["errcode"] == "M_BAD_JSON"


def test_identical_reupload_accepted_different_keys_refused(app):
    alice = user(app, "alice")
    alice.upload(device_keys=alice.device_keys())
    alice.upload(device_keys=alice.device_keys())  # identical: fine (a retried request)
    alice.sk = generate_signing_key(alice.device_id)  # a new identity for the same device
    r = alice.upload(device_keys=alice.device_keys(), status=400)
    assert r["errcode"] == "M_INVALID_PARAM"


def test_one_time_keys_counts_and_conflicting_ids(app):
    alice = user(app, "alice")
    keys = alice.otks(5)
    assert alice.upload(one_time_keys=keys)["one_time_key_counts"] == {"signed_curve25519": 5}
    assert alice.upload(one_time_keys=keys)["one_time_key_counts"]["signed_curve25519"] == 5
    r = alice.upload(one_time_keys={"curve25519:X1": "abc", "curve25519:X2": "def"})
    assert r["one_time_key_counts"] == {"signed_curve25519": 5, "curve25519": 2}
    clash = {next(iter(keys)): {"key": "something else"}}
    assert alice.upload(one_time_keys=clash, status=400)["errcode"] == "M_INVALID_PARAM"
    assert alice.upload(one_time_keys={"nocolon": "x"}, status=400)["errcode"] == \
        "M_BAD_JSON"  # as Synapse
    assert alice.sync()["device_one_time_keys_count"] == {"signed_curve25519": 5,
                                                          "curve25519": 2}


def test_claim_takes_each_key_once_then_the_fallback(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    alice.upload(device_keys=alice.device_keys(), one_time_keys=alice.otks(2),
                 fallback_keys={"signed_curve25519:FB1": {"key": "fb1", "fallback": True}})
    assert alice.sync()["device_unused_fallback_key_types"] == ["signed_curve25519"]
    want = {alice.user_id: {alice.device_id: "signed_curve25519"}}
    seen = set()
    for _ in range(2):
        got = bob.claim(want)["one_time_keys"][alice.user_id][alice.device_id]
        (kid,) = got
        assert kid not in seen and kid != "signed_curve25519:FB1"
        seen.add(kid)
    assert alice.sync()["device_one_time_keys_count"] == {"signed_curve25519": 0}
    # none left: the fallback key, marked used, and given again on the next claim
    for _ in range(2):
        got = bob.claim(want)["one_time_keys"][alice.user_id][alice.device_id]
        assert got == {"signed_curve25519:FB1": {"key": "fb1", "fallback": True}}
    assert alice.sync()["device_unused_fallback_key_types"] == []
    # re-uploading the same fallback key keeps it used; a new one resets
    alice.upload(fallback_keys={"signed_curve25519:FB1": {"key": "fb1", "fallback": True}})
    assert alice.sync()["device_unused_fallback_key_types"] == []
    alice.upload(fallback_keys={"signed_curve25519:FB2": {"key": "fb2", "fallback": True}})
    assert alice.sync()["device_unused_fallback_key_types"] == ["signed_curve25519"]
    got = bob.claim(want)["one_time_keys"][alice.user_id][alice.device_id]
    assert list(got) == ["signed_curve25519:FB2"]
    # an algorithm without keys, and an unknown device: nothing
    got = bob.claim({alice.user_id: {alice.device_id: "curve25519", "NOPE": "x"}})
    assert got == {"one_time_keys": {}, "failures": {}}


class _Unreachable:
    """A stand-in for the federation client: no server can be reached."""

    def post_json(self, destination, path, body, **kw):
        from federation.errors import RemoteUnreachable
        raise RemoteUnreachable(destination, "connection refused")


def test_remote_users_are_failures(app):
    # users of servers that cannot be reached (tests/federation has the answering ones)
    runtime_of(app).parts["federation"].client = _Unreachable()
    alice = user(app, "alice")
    got = alice.query(["@carol:elsewhere.example", alice.user_id])
    assert got["failures"] == {"elsewhere.example": {"status": 503, "message": got[
        "failures"]["elsewhere.example"]["message"]}}
    assert "@carol:elsewhere.example" not in got["device_keys"]
    got = alice.claim({"@carol:elsewhere.example": {"D": "signed_curve25519"}})
    assert got["one_time_keys"] == {} and "elsewhere.example" in got["failures"]


def test_bad_requests(app):
    alice = user(app, "alice")
    alice.req("POST", f"{V}/keys/query", {}, status=400)
    alice.req("POST", f"{V}/keys/query", {"device_keys": {"@a:test.local": "x"}}, status=400)
    alice.req("POST", f"{V}/keys/claim", {"one_time_keys": []}, status=400)
    alice.req("POST", f"{V}/keys/upload", {"device_keys": "x"}, status=400)
    alice.req("POST", f"{V}/keys/upload", {"one_time_keys": {"a:b": 3}}, status=400)
    assert alice.c.post(f"{V}/keys/upload", json={}).status_code == 401
