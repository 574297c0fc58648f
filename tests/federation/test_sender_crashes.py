"""Crash injection into RemoteServerActors: a restarted actor carries on from the store, adopts
the transaction its predecessor had out, and a destination that keeps crashing is parked
without touching the others."""
from __future__ import annotations

import gevent
import pytest

from tests.federation.sender_helpers import FakeClient, Senders, enqueue, numbers, wait_until

THEM = "them.test"
OTHER = "other.test"


@pytest.fixture
def senders(db):
    s = Senders(db)
    yield s
    s.close()


def test_crash_on_the_wake_restarts_and_delivers_from_the_store(senders):
    client = FakeClient()
    sender = senders(client)
    sender.supervisor.inject_fault(THEM, "crash", 1)
    enqueue(sender, THEM, range(5))  # its Wake crashes the first incarnation
    wait_until(lambda: len(client.delivered_edus(THEM)) == 5, what="delivered after restart")
    assert numbers(client.delivered_edus(THEM)) == list(range(5))
    assert sender.supervisor.stats()["crashes"] == 1
    wait_until(lambda: sender.store.outbox_count(THEM) == 0)


def test_crash_while_a_transaction_is_out_adopts_it_without_a_second_one(senders):
    client = FakeClient()
    client.behaviour[THEM] = "hang"
    sender = senders(client)
    enqueue(sender, THEM, range(3))
    wait_until(lambda: client.tried(THEM))
    sender.supervisor.inject_fault(THEM, "crash", 1)
    enqueue(sender, THEM, range(3, 6))  # this Wake crashes it while the flight is out
    wait_until(lambda: sender.supervisor.stats()["crashes"] == 1)
    gevent.sleep(0.05)
    assert len(client.tried(THEM)) == 1  # the new incarnation did not start another
    client.release(THEM)
    wait_until(lambda: len(client.delivered_edus(THEM)) == 6)
    assert numbers(client.delivered_edus(THEM)) == list(range(6))  # exactly once each
    assert client.max_in_flight[THEM] == 1


def test_crash_on_the_result_still_acknowledges_it(senders):
    """The TxnResult itself is lost to the crash; the next incarnation finds the outcome on
    the flight and deletes the rows, so nothing is sent twice."""
    client = FakeClient()
    client.behaviour[THEM] = "hang"
    sender = senders(client)
    enqueue(sender, THEM, range(4))
    wait_until(lambda: client.tried(THEM))
    sender.supervisor.inject_fault(THEM, "crash", 1)
    client.release(THEM)
    wait_until(lambda: sender.supervisor.stats()["crashes"] == 1)
    wait_until(lambda: sender.store.outbox_count(THEM) == 0)
    gevent.sleep(0.1)
    assert numbers(client.delivered_edus(THEM)) == list(range(4))
    assert len(client.tried(THEM)) == 1


def test_a_destination_that_keeps_crashing_is_parked_others_are_not_delayed(senders):
    client = FakeClient()
    sender = senders(client, timings={"park_duration": 0.4, "max_restarts": 2})
    sender.supervisor.inject_fault(THEM, "crash", 20)
    enqueue(sender, THEM, range(3))
    wait_until(lambda: (sender.supervisor.child(THEM) or {}).get("state") == "parked",
               what="parked")
    assert sender.destination(THEM)["state"] == "parked"
    enqueue(sender, OTHER, range(2))
    wait_until(lambda: len(client.delivered_edus(OTHER)) == 2, within=1.0)
    enqueue(sender, THEM, range(3, 5))  # refused at the door while parked: kept in the store
    assert sender.store.outbox_count(THEM) == 5
    sender.supervisor.clear_faults(THEM)
    # when the park ends, the sweep wakes it and everything goes, in order
    wait_until(lambda: len(client.delivered_edus(THEM)) == 5, within=3.0, what="after park")
    assert numbers(client.delivered_edus(THEM)) == list(range(5))


def test_fatal_error_in_one_actor_stops_nothing_else(senders):
    client = FakeClient()
    sender = senders(client)
    sender.supervisor.inject_fault(THEM, "fatal", 1)
    enqueue(sender, THEM, range(2))
    enqueue(sender, OTHER, range(2))
    wait_until(lambda: len(client.delivered_edus(OTHER)) == 2)
    wait_until(lambda: len(client.delivered_edus(THEM)) == 2)
