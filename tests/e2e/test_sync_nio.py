"""Sync end to end: matrix-nio's ``sync_forever`` against a real gunicorn/gevent server keeps
a live session and sees another user's messages, typing notifications and receipts."""
from __future__ import annotations

import asyncio

import nio

from tests.e2e.conftest import AtriumServer

DEADLINE = 20.0


async def _live_session(server: AtriumServer) -> None:
    alice = nio.AsyncClient(server.base_url, "sync-alice")
    bob = nio.AsyncClient(server.base_url, "sync-bob")
    try:
        assert isinstance(await alice.register("sync-alice", "pw-a"), nio.RegisterResponse)
        assert isinstance(await bob.register("sync-bob", "pw-b"), nio.RegisterResponse)
        created = await alice.room_create(name="nio sync", invite=[bob.user_id])
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = created.room_id
        assert isinstance(await bob.join(room_id), nio.JoinResponse)

        seen_messages: list[str] = []
        seen_typing: list[list[str]] = []
        seen_receipts: list[str] = []
        done = asyncio.Event()
        expected = ["hello bob", "second"]

        def check() -> None:
            if seen_messages[-2:] == expected and any(alice.user_id in t for t in seen_typing) \
                    and seen_receipts:
                done.set()

        async def on_message(room: nio.MatrixRoom, event: nio.RoomMessageText) -> None:
            if event.sender == alice.user_id:
                seen_messages.append(event.body)
                check()

        async def on_typing(room: nio.MatrixRoom, event: nio.TypingNoticeEvent) -> None:
            seen_typing.append(list(event.users))
            check()

        async def on_receipt(room: nio.MatrixRoom, event: nio.ReceiptEvent) -> None:
            seen_receipts.extend(r.user_id for r in event.receipts
                                 if r.user_id == alice.user_id)
            check()

        bob.add_event_callback(on_message, nio.RoomMessageText)
        bob.add_ephemeral_callback(on_typing, nio.TypingNoticeEvent)
        bob.add_ephemeral_callback(on_receipt, nio.ReceiptEvent)
        first = await bob.sync(timeout=0, full_state=True)
        assert isinstance(first, nio.SyncResponse), first
        assert room_id in bob.rooms
        loop_task = asyncio.create_task(bob.sync_forever(timeout=10_000))
        await asyncio.sleep(0.3)  # bob is now long-polling

        await alice.sync(timeout=0)
        sent = await alice.room_send(room_id, "m.room.message",
                                     {"msgtype": "m.text", "body": "hello bob"})
        assert isinstance(sent, nio.RoomSendResponse), sent
        assert isinstance(await alice.room_typing(room_id, True, timeout=10_000),
                          nio.RoomTypingResponse)
        second = await alice.room_send(room_id, "m.room.message",
                                       {"msgtype": "m.text", "body": "second"})
        assert isinstance(await alice.room_read_markers(room_id, second.event_id,
                                                        second.event_id),
                          nio.RoomReadMarkersResponse)
        try:
            await asyncio.wait_for(done.wait(), DEADLINE)
        finally:
            loop_task.cancel()
            try:
                await loop_task
            except (asyncio.CancelledError, Exception):
                pass
        assert seen_messages[-2:] == expected
        assert bob.rooms[room_id].member_count == 2
    finally:
        await alice.close()
        await bob.close()


def test_nio_sync_forever_sees_messages_typing_and_receipts(atrium_server):
    asyncio.run(_live_session(atrium_server))
