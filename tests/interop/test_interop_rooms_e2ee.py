"""An end-to-end encrypted room shared by Atrium and Synapse: matrix-nio ``[e2e]`` clients,
one per server, in a room with ``m.room.encryption`` (Megolm) created on one server and joined
by invite from the other; each sends an encrypted message (nio shares its Megolm session
over Olm to-device messages, after querying and claiming the other server's device keys
over federation) and each decrypts the other's.

Select with ``-k e2ee_room`` (or ``-m e2ee_room``).  Spec: client-server-api "End-to-End
Encryption" (Megolm in rooms), server-server-api.md "End-to-End Encryption", "Device
Management" (device-list updates to the servers sharing a room), "Send-to-device messaging".
"""
from __future__ import annotations

import asyncio
import ssl
import time
from collections import defaultdict
from typing import Any

import pytest

from tests.interop.conftest import PASSWORD, Peers
from tests.interop.helpers import Account
from tests.interop.rooms_helpers import logs, messages, txn

pytestmark = [pytest.mark.timeout(180), pytest.mark.e2ee_room]
ROUND_WAIT = 30.0


def _client(base_url: str, user_id: str, store: str, ca_path: str) -> Any:
    import nio

    cfg = nio.AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False)
    return nio.AsyncClient(base_url, user_id, store_path=store, config=cfg,
                           ssl=ssl.create_default_context(cafile=ca_path))


async def _pump(c: Any) -> None:
    """One sync and the key upkeep a nio client does in ``sync_forever``."""
    import nio

    r = await c.sync(timeout=500)
    assert isinstance(r, nio.SyncResponse), r
    if c.should_upload_keys:
        await c.keys_upload()
    if c.should_query_keys:
        await c.keys_query()
    if c.should_claim_keys:
        await c.keys_claim(c.get_users_for_key_claiming())


async def _until(clients: list[Any], cond: Any, what: str, peers: Peers, room: str) -> None:
    deadline = time.monotonic() + ROUND_WAIT
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {ROUND_WAIT:.0f}s\n{logs(peers, room)}")
        for c in clients:
            await _pump(c)


async def _scenario(peers: Peers, tmp: Any, host: str) -> None:
    import nio

    ca = peers.ca.cert_path
    tag = txn()[:6]
    servers = [peers.atrium, peers.synapse]
    if host == "synapse_hosts":
        servers.reverse()
    logins = [srv.register(f"e2e{tag}{i}", PASSWORD) for i, srv in enumerate(servers)]
    clients = []
    for i, (srv, login) in enumerate(zip(servers, logins)):
        (tmp / str(i)).mkdir()
        clients.append(_client(srv.base_url, login["user_id"], str(tmp / str(i)), ca))
    owner, guest = clients
    decrypted: dict[str, list[str]] = defaultdict(list)
    undecryptable: dict[str, list[Any]] = defaultdict(list)

    def on_message(c: Any) -> Any:
        async def cb(room: Any, ev: Any) -> None:
            if isinstance(ev, nio.RoomMessageText):
                decrypted[c.user_id].append(ev.body)
            elif isinstance(ev, nio.MegolmEvent):
                undecryptable[c.user_id].append(ev)
        return cb

    room_id = "?"
    try:
        for c in clients:
            assert isinstance(await c.login(PASSWORD, device_name="interop e2ee room"),
                              nio.LoginResponse)
            assert isinstance(await c.keys_upload(), nio.KeysUploadResponse)
            await c.sync(timeout=0)
            c.add_event_callback(on_message(c), (nio.RoomMessageText, nio.MegolmEvent))
        r = await owner.room_create(name=f"encrypted {tag}", invite=[guest.user_id],
                                    initial_state=[{
                                        "type": "m.room.encryption", "state_key": "",
                                        "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
        assert isinstance(r, nio.RoomCreateResponse), r
        room_id = r.room_id
        await _until([guest], lambda: room_id in guest.invited_rooms, "the invite", peers,
                     room_id)
        j = await guest.join(room_id)
        assert isinstance(j, nio.JoinResponse), f"{j}\n{logs(peers, room_id)}"
        await _until([owner, guest], lambda: guest.user_id in
                     getattr(owner.rooms.get(room_id), "users", {}) and
                     room_id in guest.rooms and guest.rooms[room_id].encrypted,
                     "both see the encrypted room with both members", peers, room_id)
        for sender, receiver in ((owner, guest), (guest, owner)):
            text = f"secret from {sender.user_id} {tag}"
            sent = await sender.room_send(room_id, "m.room.message",
                                          {"msgtype": "m.text", "body": text},
                                          ignore_unverified_devices=True)
            assert isinstance(sent, nio.RoomSendResponse), f"{sent}\n{logs(peers, room_id)}"
            await _until([receiver, sender], lambda: text in decrypted[receiver.user_id],
                         f"{receiver.user_id} decrypts {sender.user_id}'s message "
                         f"(undecryptable so far: {len(undecryptable[receiver.user_id])})",
                         peers, room_id)
            assert decrypted[receiver.user_id].count(text) == 1
        # each server holds ciphertext only: m.room.encrypted events, no plaintext message
        for srv, login in zip(servers, logins):
            hist = messages(Account(srv.base_url, ca, login), room_id)
            assert sum(e["type"] == "m.room.encrypted" for e in hist) >= 2, \
                [e["type"] for e in hist]
            assert not [e for e in hist if e["type"] == "m.room.message"], hist
    finally:
        for c in clients:
            await c.close()


@pytest.mark.parametrize("host", ["atrium_hosts", "synapse_hosts"])
def test_e2ee_room_across_servers(room_peers: Peers, tmp_path: Any, host: str) -> None:
    pytest.importorskip("nio")
    asyncio.run(_scenario(room_peers, tmp_path, host))
