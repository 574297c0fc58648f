"""Ephemeral EDUs (typing, presence, receipts): held in memory, coalesced by key, bounded,
dropped when stale or while the destination is backing off."""
from __future__ import annotations

import gevent
import pytest

from federation.errors import RemoteUnreachable
from tests.federation.sender_helpers import FakeClient, Senders, enqueue, numbers, wait_until

THEM = "them.test"


@pytest.fixture
def senders(db):
    s = Senders(db)
    yield s
    s.close()


def _typing(room, user, on=True):
    return {"room_id": room, "user_id": user, "typing": on}


def _hold_first_transaction(sender, client):
    """Put one transaction in flight (hanging) so what follows queues in the actor."""
    client.behaviour[THEM] = "hang"
    sender.send_ephemeral(THEM, "m.typing", _typing("!first", "@a:us.test"), key="first")
    wait_until(lambda: client.tried(THEM))


def test_coalesced_by_key_newest_wins(senders):
    client = FakeClient()
    sender = senders(client)
    _hold_first_transaction(sender, client)
    for on in (True, False, True):
        sender.send_ephemeral(THEM, "m.typing", _typing("!r1", "@a:us.test", on), key="!r1@a")
    sender.send_ephemeral(THEM, "m.typing", _typing("!r2", "@a:us.test"), key="!r2@a")
    sender.send_ephemeral(THEM, "m.typing", _typing("!r1", "@a:us.test", False), key="!r1@a")
    wait_until(lambda: sender.destination(THEM)["ephemeral"] == 2)
    assert sender.destination(THEM)["queue_depth"] == 2
    client.release(THEM)
    wait_until(lambda: len(client.delivered(THEM)) == 2)
    second = client.delivered(THEM)[1].edus
    assert [e["content"] for e in second] == [_typing("!r2", "@a:us.test"),
                                              _typing("!r1", "@a:us.test", False)]
    assert all(e["edu_type"] == "m.typing" for e in second)


def test_bounded_by_queue_size_oldest_dropped(senders):
    client = FakeClient()
    sender = senders(client, queue_size=5)
    _hold_first_transaction(sender, client)
    for i in range(8):
        sender.send_ephemeral(THEM, "m.presence", {"push": [{"n": i}]})
    wait_until(lambda: sender.destination(THEM)["ephemeral"] == 5)
    client.release(THEM)
    wait_until(lambda: len(client.delivered(THEM)) == 2)
    assert [e["content"]["push"][0]["n"] for e in client.delivered(THEM)[1].edus] == \
        [3, 4, 5, 6, 7]


def test_stale_ones_are_dropped(senders):
    client = FakeClient()
    sender = senders(client, ephemeral_edu_ttl=0.1)
    _hold_first_transaction(sender, client)
    sender.send_ephemeral(THEM, "m.typing", _typing("!old", "@a:us.test"), key="old")
    gevent.sleep(0.2)
    sender.send_ephemeral(THEM, "m.typing", _typing("!new", "@a:us.test"), key="new")
    client.release(THEM)
    wait_until(lambda: len(client.delivered(THEM)) == 2)
    gevent.sleep(0.05)
    assert [e["content"]["room_id"] for e in client.delivered(THEM)[1].edus] == ["!new"]


def test_a_held_retry_with_stale_ephemerals_is_rebuilt_under_a_new_txn_id(senders):
    client = FakeClient()
    client.behaviour[THEM] = [RemoteUnreachable(THEM, "down"), None]
    sender = senders(client, ephemeral_edu_ttl=0.1, min_retry_interval=0.2,
                     max_retry_interval=0.2)
    sender.send_ephemeral(THEM, "m.typing", _typing("!r", "@a:us.test"), key="k")
    enqueue(sender, THEM, range(2))
    wait_until(lambda: len(client.delivered(THEM)) >= 1, within=3.0)
    gevent.sleep(0.05)
    first, second = client.tried(THEM)[0], client.delivered(THEM)[0]
    assert first.txn_id != second.txn_id
    assert [e["edu_type"] for e in second.edus] == ["m.direct_to_device"] * 2
    assert numbers(second.edus) == [0, 1]


def test_dropped_while_backing_off(senders):
    client = FakeClient()
    client.behaviour[THEM] = RemoteUnreachable(THEM, "down")
    sender = senders(client, min_retry_interval=30.0, max_retry_interval=30.0)
    sender.send_ephemeral(THEM, "m.typing", _typing("!r", "@a:us.test"), key="k")
    wait_until(lambda: sender.backing_off(THEM) is not None)
    sender.send_ephemeral(THEM, "m.typing", _typing("!r2", "@a:us.test"), key="k2")
    assert sender.destination(THEM)["ephemeral"] == 0
    client.behaviour.pop(THEM)
    sender.wake(THEM)
    gevent.sleep(0.2)
    # the held transaction (with its still-fresh typing EDU) is resent; the one sent during
    # the back-off is gone
    assert [e["content"]["room_id"] for a in client.delivered(THEM) for e in a.edus] == ["!r"]
