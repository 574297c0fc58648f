"""Outbound device-list updates (federation/device_lists_out.py): a local user's device and
key changes become m.device_list_update EDUs (stream_id / prev_id chained, deletions marked)
and cross-signing changes m.signing_key_update, queued durably to every other server in a
shared room — through a recording TEST DOUBLE of the sender."""
from protocol.signing import encode_verify_key_base64, generate_signing_key, get_verify_key, \
    sign_json
from store.device_lists import latest_stream_id
from tests.federation.inbound_helpers import REMOTE, V, server  # noqa: F401 - fixture


def _signed_keys(user_id, device_id):
    sk = generate_signing_key(device_id)
    keys = {"user_id": user_id, "device_id": device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {f"curve25519:{device_id}": "curve" + device_id,
                     f"ed25519:{device_id}": encode_verify_key_base64(get_verify_key(sk))}}
    return sign_json(keys, user_id, sk)


def _cross_signing(user_id):
    def key(usage, sk, signer=None):
        pub = encode_verify_key_base64(get_verify_key(sk))
        obj = {"user_id": user_id, "usage": [usage], "keys": {f"ed25519:{pub}": pub}}
        return sign_json(obj, user_id, signer) if signer is not None else obj

    master, ssk, usk = (generate_signing_key(n) for n in ("m", "s", "u"))
    master.version = encode_verify_key_base64(get_verify_key(master))
    return {"master_key": key("master", master),
            "self_signing_key": key("self_signing", ssk, master),
            "user_signing_key": key("user_signing", usk, master)}


def _sent(server, edu_type=None):
    server.out.flush(timeout=3)
    out = [e for e in server.sender.durable if edu_type is None or e[1] == edu_type]
    server.sender.durable.clear()
    return out


def _setup(server):
    alice = server.add_user("alice", devices=("A", "B"))
    room_id = alice.create_room()
    server.join_remote(room_id, "@bob:remote.test")
    server.join_remote(room_id, "@carol:third.test")
    server.join_remote(room_id, "@dan:remote.test")
    return alice


def test_key_upload_sends_chained_updates_to_every_server_in_a_shared_room(server):
    alice = _setup(server)
    alice.req("POST", f"{V}/keys/upload", {"device_keys": _signed_keys(alice.user_id, "A")})
    first = _sent(server)
    assert sorted({d for d, _, _ in first}) == [REMOTE, "third.test"]  # once per server
    to_remote = [c for d, t, c in first if d == REMOTE]
    assert all(t == "m.device_list_update" for _, t, _ in first)
    # nothing was sent before: every device is announced, in one chain
    assert [c["device_id"] for c in to_remote] == ["A", "B"]
    a, b = to_remote
    assert a["prev_id"] == [] and b["prev_id"] == [a["stream_id"]]
    assert b["stream_id"] > a["stream_id"]
    assert a["keys"]["keys"]["curve25519:A"] == "curveA" and "unsigned" not in a["keys"]
    assert a["device_display_name"] == "alice A" and a["deleted"] is False
    assert "keys" not in b
    # the chain's head is what GET /user/devices answers as stream_id
    assert latest_stream_id(server.db, alice.user_id) == b["stream_id"]

    alice.req("POST", f"{V}/keys/upload", {"device_keys": _signed_keys(alice.user_id, "B")},
              device="B")
    second = [c for d, _, c in _sent(server) if d == REMOTE]
    assert len(second) == 1 and second[0]["device_id"] == "B"
    assert second[0]["prev_id"] == [b["stream_id"]]
    assert second[0]["keys"]["device_id"] == "B"
    assert latest_stream_id(server.db, alice.user_id) == second[0]["stream_id"]


def test_deleted_device_is_announced_as_deleted(server):
    alice = _setup(server)
    alice.req("POST", f"{V}/keys/upload", {"device_keys": _signed_keys(alice.user_id, "A")})
    last = [c for d, _, c in _sent(server) if d == REMOTE][-1]
    server.runtime.parts["accounts"].delete_devices(alice.user_id, ["A"])
    sent = [c for d, _, c in _sent(server) if d == REMOTE]
    assert [(c["device_id"], c["deleted"]) for c in sent] == [("A", True)]
    assert sent[0]["prev_id"] == [last["stream_id"]] and "keys" not in sent[0]


def test_cross_signing_upload_sends_a_signing_key_update(server):
    alice = _setup(server)
    alice.req("POST", f"{V}/keys/upload", {"device_keys": _signed_keys(alice.user_id, "A")})
    _sent(server)
    body = _cross_signing(alice.user_id)
    alice.req("POST", f"{V}/keys/device_signing/upload", body)
    sent = _sent(server)
    assert sorted(d for d, _, _ in sent) == [REMOTE, "third.test"]
    assert {t for _, t, _ in sent} == {"m.signing_key_update"}
    content = sent[0][2]
    assert content["user_id"] == alice.user_id
    assert content["master_key"]["keys"] == body["master_key"]["keys"]
    assert content["self_signing_key"]["keys"] == body["self_signing_key"]["keys"]
    assert "user_signing_key" not in content  # private to the user


def test_nothing_is_sent_without_other_servers_or_without_a_change(server):
    alice = server.add_user("alice")
    alice.create_room()
    alice.req("POST", f"{V}/keys/upload", {"device_keys": _signed_keys(alice.user_id, "A")})
    assert _sent(server) == []
    # a change that does not alter what other servers know sends nothing
    room_id = alice.create_room()
    server.join_remote(room_id, "@bob:remote.test")
    assert server.out.process(alice.user_id) == 1  # first contact: the device is announced
    assert server.out.process(alice.user_id) == 0
    assert len(_sent(server)) == 1


def test_no_sender_sends_nothing_and_catches_up_later(server):
    alice = _setup(server)
    server.fed.sender = None
    alice.req("POST", f"{V}/keys/upload", {"device_keys": _signed_keys(alice.user_id, "A")})
    server.out.flush(timeout=3)
    server.fed.sender = server.sender
    assert server.sender.durable == []
    alice.req("POST", f"{V}/keys/upload", {"device_keys": _signed_keys(alice.user_id, "B")},
              device="B")
    sent = [c for d, _, c in _sent(server) if d == REMOTE]
    assert [c["device_id"] for c in sent] == ["A", "B"]  # the missed change is in the diff


def test_remote_users_changes_are_not_sent_back_out(server):
    _setup(server)
    server.remote_devices.set_devices("@bob:remote.test", 1, [])
    server.runtime.parts["sync"].device_lists.mark_changed(["@bob:remote.test"])
    assert _sent(server) == []
