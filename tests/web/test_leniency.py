"""Where Synapse is lenient and clients depend on it (issue 15 group 6): device keys stored
as sent (no self-signature check; cross-signing signature uploads still verified), any
string as ``avatar_url``, any object as key-backup ``auth_data``, and
``POST /rooms/{roomId}/send/{eventType}`` without a transaction id."""
from __future__ import annotations

import pytest

from protocol.signing import generate_signing_key, sign_json
from tests.apps import app_factory
from tests.e2ee.conftest import V, CrossSigning, user

BACKUP_ALG = "m.megolm_backup.v1.curve25519-aes-sha2"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    gen = app_factory(tmp_path_factory.mktemp("leniency"))
    yield next(gen)()
    next(gen, None)


def test_device_keys_stored_as_sent(app):
    alice, bob = user(app, "kalice"), user(app, "kbob")
    # signed by some other key, no ed25519 key of the device, an extra field: all kept
    keys = {"user_id": alice.user_id, "device_id": alice.device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": {f"curve25519:{alice.device_id}": "curvekey"},
            "org.example.extra": {"x": 1}}
    sign_json(keys, alice.user_id, generate_signing_key(alice.device_id))
    assert alice.upload(device_keys=keys) == {"one_time_key_counts": {"signed_curve25519": 0}}
    got = bob.query([alice.user_id])["device_keys"][alice.user_id][alice.device_id]
    assert {k: v for k, v in got.items() if k != "unsigned"} == keys
    # what the spec requires of the shape is still checked (400 M_BAD_JSON, as Synapse)
    for broken in ({**keys, "user_id": bob.user_id}, {**keys, "device_id": "OTHER"},
                   {k: v for k, v in keys.items() if k != "signatures"},
                   {**keys, "algorithms": "x"}, {**keys, "keys": {"a:b": 1}},
                   {**keys, "signatures": {alice.user_id: {"ed25519:X": 5}}}, "x"):
        r = alice.upload(device_keys=broken, status=400)
        assert r["errcode"] == "M_BAD_JSON", broken


def test_cross_signing_signature_uploads_are_still_verified(app):
    alice = user(app, "xalice")
    alice.upload(device_keys=alice.device_keys())
    xs = CrossSigning(alice.user_id)
    alice.req("POST", f"{V}/keys/device_signing/upload", xs.upload_body())
    dev = alice.device_keys()
    sign_json(dev, alice.user_id, generate_signing_key(xs.pub(xs.self_signing)))  # forged
    r = alice.req("POST", f"{V}/keys/signatures/upload", {alice.user_id: {
        alice.device_id: dev}})
    assert r["failures"][alice.user_id][alice.device_id]["errcode"] == "M_INVALID_SIGNATURE"


def test_avatar_url_accepts_what_synapse_accepts(app):
    alice = user(app, "palice")
    url = f"{V}/profile/{alice.user_id}/avatar_url"
    room = alice.create_room()
    for value in ("https://example.org/me.png", "not even a URL", "mxc://test.local/abc"):
        alice.req("PUT", url, {"avatar_url": value})
        assert alice.req("GET", url) == {"avatar_url": value}
    member = alice.req("GET", f"{V}/rooms/{room}/state/m.room.member/{alice.user_id}")
    assert member["avatar_url"] == "mxc://test.local/abc"
    alice.req("PUT", url, {"avatar_url": ""})                 # "" clears it, as in Synapse
    assert alice.req("GET", url, status=404)["errcode"] == "M_NOT_FOUND"
    for bad in (5, ["x"], {"a": 1}, "x" * 1001):
        r = alice.req("PUT", url, {"avatar_url": bad}, status=400)
        assert r["errcode"] == "M_INVALID_PARAM", bad


def test_key_backup_auth_data_is_any_object(app):
    alice = user(app, "balice")
    auth_data = {"public_key": 5, "signatures": {"@nobody:x": {"ed25519:Z": "forged"}},
                 "org.example.custom": [1, {"deep": None}]}
    version = alice.req("POST", f"{V}/room_keys/version",
                        {"algorithm": BACKUP_ALG, "auth_data": auth_data})["version"]
    got = alice.req("GET", f"{V}/room_keys/version/{version}")
    assert got["auth_data"] == auth_data and got["algorithm"] == BACKUP_ALG
    alice.req("PUT", f"{V}/room_keys/version/{version}",
              {"algorithm": BACKUP_ALG, "auth_data": {}})
    assert alice.req("GET", f"{V}/room_keys/version")["auth_data"] == {}
    for bad in ("x", None, [1]):
        r = alice.req("POST", f"{V}/room_keys/version", {"algorithm": BACKUP_ALG,
                                                          "auth_data": bad}, status=400)
        assert r["errcode"] == "M_BAD_JSON"


def test_send_without_a_transaction_id(app):
    alice = user(app, "salice")
    room = alice.create_room()
    path = f"{V}/rooms/{room}/send/m.room.message"
    body = {"msgtype": "m.text", "body": "no txn"}
    first = alice.req("POST", path, body)["event_id"]
    second = alice.req("POST", path, body)["event_id"]
    assert first != second                                     # a new event each time
    got = alice.req("GET", f"{V}/rooms/{room}/event/{second}")
    assert got["content"] == body and got["sender"] == alice.user_id
    assert "transaction_id" not in got.get("unsigned", {})
    # the PUT form stays idempotent per transaction id
    put = f"{path}/t1"
    assert alice.req("PUT", put, body)["event_id"] == alice.req("PUT", put, body)["event_id"]
    assert alice.req("POST", path, ["x"], status=400)["errcode"] == "M_BAD_JSON"
    assert alice.req("POST", f"{V}/rooms/!nope:test.local/send/m.room.message", body,
                     status=404)["errcode"] == "M_NOT_FOUND"
