"""End-to-end encryption across Atrium and Synapse over TLS on loopback: device keys and
one-time keys queried and claimed from the other server (real ed25519 signatures, each
one-time key handed out once), to-device messages delivered once, and matrix-nio clients
on each side opening Olm sessions with each other and exchanging an encrypted to-device
message (an ``m.room_key`` whose Megolm session then decrypts a message).

Spec: client-server-api "End-to-End Encryption" (/keys/query, /keys/claim, sendToDevice),
server-server-api.md "End-to-End Encryption" (/user/keys/query, /user/keys/claim),
"Send-to-device messaging" (``m.direct_to_device``).
"""
from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from protocol.signing import decode_verify_key_base64, verify_signed_json
from tests.interop.conftest import PASSWORD, Peers
from tests.interop.helpers import V3, Account, collect_to_device

pytestmark = pytest.mark.timeout(150)


def _ed25519_of(device_keys: dict[str, Any], device_id: str):
    return decode_verify_key_base64("ed25519", device_id,
                                    device_keys["keys"][f"ed25519:{device_id}"])


def _query(asker: Account, owner: Account) -> dict[str, Any]:
    j = asker.ok("POST", f"{V3}/keys/query", {"device_keys": {owner.user_id: []}})
    assert j.get("failures", {}) == {}, j
    return j["device_keys"].get(owner.user_id, {})


def _claim(asker: Account, owner: Account) -> dict[str, Any]:
    j = asker.ok("POST", f"{V3}/keys/claim",
                 {"one_time_keys": {owner.user_id: {owner.device_id: "signed_curve25519"}}})
    assert j.get("failures", {}) == {}, j
    return j["one_time_keys"].get(owner.user_id, {}).get(owner.device_id, {})


@pytest.mark.parametrize("direction", ["atrium_asks_synapse", "synapse_asks_atrium"])
def test_device_keys_and_one_time_keys_across(peers: Peers, direction: str) -> None:
    a, b = peers.account(peers.atrium), peers.account(peers.synapse)
    asker, owner = (a, b) if direction == "atrium_asks_synapse" else (b, a)
    counts = owner.upload_keys(2)["one_time_key_counts"]
    assert counts.get("signed_curve25519") == 2, counts

    devices = _query(asker, owner)
    assert list(devices) == [owner.device_id], devices
    got = devices[owner.device_id]
    sent = owner.device_keys()
    for k in ("user_id", "device_id", "algorithms", "keys"):
        assert got[k] == sent[k], (k, got)
    verify_signed_json(got, owner.user_id, _ed25519_of(got, owner.device_id))

    claimed = []
    for _ in range(3):
        claimed.append(_claim(asker, owner))
    first, second, third = claimed
    assert len(first) == 1 and len(second) == 1, claimed
    assert first.keys() != second.keys(), "one one-time key handed out twice"
    assert third == {}, "a third claim found a key though only two were uploaded"
    for got_otk in (first, second):
        [(kid, obj)] = got_otk.items()
        assert kid.startswith("signed_curve25519:")
        verify_signed_json(obj, owner.user_id, _ed25519_of(got, owner.device_id))
    assert owner.ok("POST", f"{V3}/keys/upload", {})["one_time_key_counts"] \
        .get("signed_curve25519", 0) == 0


@pytest.mark.parametrize("direction", ["atrium_asks_synapse", "synapse_asks_atrium"])
def test_concurrent_claims_hand_each_key_out_once(peers: Peers, direction: str) -> None:
    a, b = peers.account(peers.atrium), peers.account(peers.synapse)
    asker, owner = (a, b) if direction == "atrium_asks_synapse" else (b, a)
    owner.upload_keys(5)
    askers = [asker] + [peers.account(asker_server(peers, asker)) for _ in range(3)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: _claim(askers[i % len(askers)], owner), range(8)))
    handed = [kid for r in results for kid in r]
    assert len(handed) == 5 and len(set(handed)) == 5, results


def asker_server(peers: Peers, acct: Account):
    return peers.atrium if acct.server_name == peers.atrium.server_name else peers.synapse


@pytest.mark.parametrize("direction", ["atrium_to_synapse", "synapse_to_atrium"])
def test_to_device_arrives_once(peers: Peers, direction: str) -> None:
    a, b = peers.account(peers.atrium), peers.account(peers.synapse)
    sender, recipient = (a, b) if direction == "atrium_to_synapse" else (b, a)
    recipient.sync()
    tags = [uuid.uuid4().hex for _ in range(3)]
    # one message to the device, one to "*" (every device of the user), one more to the
    # device: all three arrive, once each, in the order sent
    sender.send_to_device("org.atrium.interop", {recipient.user_id: {
        recipient.device_id: {"tag": tags[0]}}})
    sender.send_to_device("org.atrium.interop", {recipient.user_id: {"*": {"tag": tags[1]}}})
    sender.send_to_device("org.atrium.interop", {recipient.user_id: {
        recipient.device_id: {"tag": tags[2]}}})
    got = collect_to_device(recipient, lambda e: e.get("content", {}).get("tag") in tags, 3,
                            timeout=30)
    assert [e["content"]["tag"] for e in got] == tags, (got, _federation_log(peers))
    assert all(e["sender"] == sender.user_id and e["type"] == "org.atrium.interop"
               for e in got), got


def _federation_log(peers: Peers) -> str:
    """Atrium's log lines about federation, for a failure message."""
    lines = [ln for ln in peers.atrium.log().splitlines()
             if "federation" in ln.lower() or "remote" in ln.lower()]
    return "\n".join(lines[-40:])


# --- matrix-nio: Olm across servers --------------------------------------------------------


def _nio_client(base_url: str, user_id: str, store: str, ca_path: str):
    import nio

    cfg = nio.AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False)
    ctx = ssl.create_default_context(cafile=ca_path)
    return nio.AsyncClient(base_url, user_id, store_path=store, config=cfg, ssl=ctx)


async def _olm_room_key(sender, recipient_id: str, recipient_device: str) -> tuple[Any, Any]:
    """Sender: query the recipient's keys, claim a one-time key (an Olm session), send an
    ``m.room_key`` for a fresh Megolm session inside an Olm message; the session."""
    import nio
    from nio.crypto import OutboundGroupSession

    sender.olm.users_for_key_query.add(recipient_id)
    assert isinstance(await sender.keys_query(), nio.KeysQueryResponse)
    device = sender.device_store[recipient_id][recipient_device]
    r = await sender.keys_claim({recipient_id: [recipient_device]})
    assert isinstance(r, nio.KeysClaimResponse), r
    session = sender.olm.session_store.get(device.curve25519)
    assert session is not None, "no Olm session after claiming a one-time key"
    group = OutboundGroupSession()
    room_id = f"!interop{uuid.uuid4().hex[:8]}:{sender.user_id.split(':', 1)[1]}"
    content = {"algorithm": "m.megolm.v1.aes-sha2", "room_id": room_id,
               "session_id": group.id, "session_key": group.session_key}
    encrypted = sender.olm._olm_encrypt(session, device, "m.room_key", content)
    r = await sender.to_device(nio.ToDeviceMessage("m.room.encrypted", recipient_id,
                                                   recipient_device, encrypted))
    assert isinstance(r, nio.ToDeviceResponse), r
    return group, room_id


async def _receive_room_keys(recipient, group_id: str, rounds: int = 40) -> list[Any]:
    import nio

    got: list[Any] = []

    async def on_to_device(ev: Any) -> None:
        if isinstance(ev, nio.RoomKeyEvent) and ev.session_id == group_id:
            got.append(ev)

    recipient.add_to_device_callback(on_to_device, (nio.RoomKeyEvent,))
    for _ in range(rounds):
        r = await recipient.sync(timeout=500)
        assert isinstance(r, nio.SyncResponse), r
        if got:
            break
    for _ in range(3):     # a duplicate would show in the next syncs
        await recipient.sync(timeout=200)
    return got


async def _nio_scenario(peers: Peers, tmp) -> None:
    import nio

    ca = peers.ca.cert_path
    a_login = peers.atrium.register("nio_alice", PASSWORD)
    b_login = peers.synapse.register("nio_bob", PASSWORD)
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    alice = _nio_client(peers.atrium.base_url, a_login["user_id"], str(tmp / "a"), ca)
    bob = _nio_client(peers.synapse.base_url, b_login["user_id"], str(tmp / "b"), ca)
    try:
        for c in (alice, bob):
            assert isinstance(await c.login(PASSWORD, device_name="interop"),
                              nio.LoginResponse)
            assert isinstance(await c.keys_upload(), nio.KeysUploadResponse)
            await c.sync(timeout=0)
        for sender, recipient in ((alice, bob), (bob, alice)):
            group, room_id = await _olm_room_key(sender, recipient.user_id,
                                                 recipient.device_id)
            got = await _receive_room_keys(recipient, group.id)
            assert len(got) == 1, f"{recipient.user_id} got the room key {len(got)} times"
            ev = got[0]
            assert ev.sender == sender.user_id and ev.room_id == room_id
            # the key really is the sender's Megolm session: a message encrypted with it
            # decrypts on the recipient
            group.mark_as_shared()
            text = f"hello from {sender.user_id}"
            ciphertext = group.encrypt(json.dumps({"type": "m.room.message",
                                                   "content": {"body": text}}))
            inbound = recipient.olm.inbound_group_store.get(
                room_id, sender.olm.account.identity_keys["curve25519"], group.id)
            assert inbound is not None
            plaintext, _index = inbound.decrypt(ciphertext)
            assert json.loads(plaintext)["content"]["body"] == text
    finally:
        await alice.close()
        await bob.close()


def test_nio_olm_to_device_both_ways(peers: Peers, tmp_path) -> None:
    pytest.importorskip("nio")
    asyncio.run(_nio_scenario(peers, tmp_path))
