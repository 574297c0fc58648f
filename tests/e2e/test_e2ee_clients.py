"""End-to-end encryption with real clients: matrix-nio with its ``[e2e]`` extra (Olm and
Megolm through vodozemac) against a real ``gunicorn -k gevent web:app``.

1. Alice and Bob each upload device keys and one-time keys, Alice creates an encrypted room
   and invites Bob.  Each one's first message makes nio query the other's device keys,
   claim a one-time key, open an Olm session and send its Megolm session over to-device
   messages; each decrypts the other's message.  The server only ever sees ciphertext.
2. Alice logs in on a new device (the room's third device).  It cannot read the history,
   so it asks Alice's other devices for the keys (``m.room_key_request`` to ``*``); Alice's
   first device, having verified it, claims a one-time key for it and forwards the keys
   (``m.forwarded_room_key``) — the new device then decrypts the old messages.  Bob
   verifies the new device, which makes nio re-share a fresh Megolm session with every
   device, so the new device reads Bob's next message too.
"""
from __future__ import annotations

import asyncio
from typing import Any

import nio
import pytest
import requests

from tests.e2e.conftest import AtriumServer

pytestmark = pytest.mark.timeout(180)
PASSWORD = "e2ee-pass"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def _client(server: AtriumServer, name: str, store: str) -> nio.AsyncClient:
    cfg = nio.AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False)
    return nio.AsyncClient(server.base_url, f"@{name}:{server.server_name}",
                           store_path=store, config=cfg)


async def _step(c: nio.AsyncClient) -> nio.SyncResponse:
    """One client round, as nio's sync_forever does it: sync, then keys to upload, query
    and claim, then the queued to-device messages."""
    r = await c.sync(timeout=0)
    assert isinstance(r, nio.SyncResponse), r
    if c.should_upload_keys:
        assert isinstance(await c.keys_upload(), nio.KeysUploadResponse)
    if c.should_query_keys:
        assert isinstance(await c.keys_query(), nio.KeysQueryResponse)
    if c.should_claim_keys:
        assert isinstance(await c.keys_claim(c.get_users_for_key_claiming()),
                          nio.KeysClaimResponse)
        # key shares that waited for this Olm session are only picked up while nio handles
        # a sync with a *new* next_batch; an idle room gives the same token, so do it here
        await c._collect_key_requests()
    await c.send_to_device_messages()
    return r


async def _until(clients: list[nio.AsyncClient], done: Any, rounds: int = 15) -> None:
    for _ in range(rounds):
        for c in clients:
            await _step(c)
        if done():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached")


def _texts(c: nio.AsyncClient, room_id: str) -> dict[str, str]:
    """Decrypted message bodies this client has seen, by event id."""
    return c.seen.setdefault(room_id, {})  # type: ignore[attr-defined]


def _track(c: nio.AsyncClient, room_id: str) -> None:
    c.seen = {}  # type: ignore[attr-defined]
    c.undecrypted = {}  # type: ignore[attr-defined]

    async def on_text(room: nio.MatrixRoom, ev: nio.RoomMessageText) -> None:
        if room.room_id == room_id:
            assert ev.decrypted, "an encrypted room must only carry encrypted messages"
            _texts(c, room_id)[ev.event_id] = ev.body

    async def on_megolm(room: nio.MatrixRoom, ev: nio.MegolmEvent) -> None:
        c.undecrypted[ev.event_id] = ev  # type: ignore[attr-defined]

    c.add_event_callback(on_text, nio.RoomMessageText)
    c.add_event_callback(on_megolm, nio.MegolmEvent)


def _retry_decrypt(c: nio.AsyncClient, room_id: str) -> None:
    for event_id, ev in list(c.undecrypted.items()):  # type: ignore[attr-defined]
        try:
            clear = c.decrypt_event(ev)
        except nio.EncryptionError:
            continue
        if isinstance(clear, nio.RoomMessageText):
            _texts(c, room_id)[event_id] = clear.body
            del c.undecrypted[event_id]  # type: ignore[attr-defined]


def _raw_event(server: AtriumServer, token: str, room_id: str, event_id: str) -> dict:
    r = requests.get(f"{server.base_url}/_matrix/client/v3/rooms/{room_id}/event/{event_id}",
                     headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


async def _scenario(server: AtriumServer, tmp: Any) -> None:
    alice = _client(server, "alice", str(tmp / "a1"))
    bob = _client(server, "bob", str(tmp / "b1"))
    alice3 = _client(server, "alice", str(tmp / "a3"))
    for d in ("a1", "b1", "a3"):
        (tmp / d).mkdir()
    try:
        assert isinstance(await alice.register("alice", PASSWORD, "alice phone"),
                          nio.RegisterResponse)
        assert isinstance(await bob.register("bob", PASSWORD, "bob phone"),
                          nio.RegisterResponse)
        for c in (alice, bob):
            await _step(c)
            counts = await c.keys_upload() if c.should_upload_keys else None
            assert counts is None or isinstance(counts, nio.KeysUploadResponse)

        created = await alice.room_create(
            name="secret", invite=[bob.user_id],
            initial_state=[{"type": "m.room.encryption", "state_key": "",
                            "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = created.room_id
        for c in (alice, bob):
            _track(c, room_id)
        await _step(bob)
        assert isinstance(await bob.join(room_id), nio.JoinResponse)
        await _until([alice, bob], lambda: alice.rooms.get(room_id) is not None
                     and bob.user_id in alice.rooms[room_id].users
                     and bob.rooms.get(room_id) is not None
                     and bob.rooms[room_id].encrypted)

        # -- 1. Alice ↔ Bob -------------------------------------------------------------
        sent = await alice.room_send(room_id, "m.room.message",
                                     {"msgtype": "m.text", "body": "hello bob"},
                                     ignore_unverified_devices=True)
        assert isinstance(sent, nio.RoomSendResponse), sent
        await _until([bob], lambda: "hello bob" in _texts(bob, room_id).values())
        raw = _raw_event(server, alice.access_token, room_id, sent.event_id)
        assert raw["type"] == "m.room.encrypted" and "hello bob" not in str(raw)

        reply = await bob.room_send(room_id, "m.room.message",
                                    {"msgtype": "m.text", "body": "hi alice"},
                                    ignore_unverified_devices=True)
        assert isinstance(reply, nio.RoomSendResponse), reply
        await _until([alice], lambda: "hi alice" in _texts(alice, room_id).values())

        # -- 2. Alice's new device ----------------------------------------------------------
        login = await alice3.login(PASSWORD, device_name="alice laptop")
        assert isinstance(login, nio.LoginResponse), login
        _track(alice3, room_id)
        await _until([alice3], lambda: len(alice3.undecrypted) >= 2)  # type: ignore[attr-defined]
        assert not _texts(alice3, room_id)  # history it has no keys for
        # both of Alice's devices learn about each other (device list change → query)
        await _until([alice, alice3, bob],
                     lambda: alice3.device_id in alice.device_store[alice.user_id]
                     and alice.device_id in alice3.device_store[alice.user_id]
                     and alice3.device_id in bob.device_store[alice.user_id])
        alice.verify_device(alice.device_store[alice.user_id][alice3.device_id])
        alice3.verify_device(alice3.device_store[alice.user_id][alice.device_id])
        for ev in list(alice3.undecrypted.values()):  # type: ignore[attr-defined]
            if ev.session_id not in alice3.outgoing_key_requests:
                r = await alice3.request_room_key(ev)
                assert isinstance(r, nio.RoomKeyRequestResponse), r

        def history_read() -> bool:
            _retry_decrypt(alice3, room_id)
            return {"hello bob", "hi alice"} <= set(_texts(alice3, room_id).values())

        await _until([alice, alice3], history_read)

        # Bob trusts the new device: nio drops its outbound session and re-shares a new one
        bob.verify_device(bob.device_store[alice.user_id][alice3.device_id])
        later = await bob.room_send(room_id, "m.room.message",
                                    {"msgtype": "m.text", "body": "welcome, laptop"},
                                    ignore_unverified_devices=True)
        assert isinstance(later, nio.RoomSendResponse), later
        await _until([alice3, alice],
                     lambda: "welcome, laptop" in _texts(alice3, room_id).values()
                     and "welcome, laptop" in _texts(alice, room_id).values())
        # and the laptop can talk too: everyone decrypts it
        mine = await alice3.room_send(room_id, "m.room.message",
                                      {"msgtype": "m.text", "body": "from the laptop"},
                                      ignore_unverified_devices=True)
        assert isinstance(mine, nio.RoomSendResponse), mine
        await _until([bob, alice],
                     lambda: "from the laptop" in _texts(bob, room_id).values()
                     and "from the laptop" in _texts(alice, room_id).values())
    finally:
        for c in (alice, bob, alice3):
            await c.close()


def test_nio_clients_exchange_megolm_keys_and_a_new_device_gets_them(atrium_server,
                                                                      tmp_path):
    run(_scenario(atrium_server, tmp_path))
