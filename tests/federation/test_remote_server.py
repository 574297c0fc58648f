"""RemoteServerActor, scripted: the PDU window and catch-up mode (the Federation II slot),
stale results, cheap wake-ups, and the operator's state names."""
from __future__ import annotations

import dataclasses

import gevent
import pytest

from federation.errors import RemoteUnreachable
from federation.remote_server import RemoteServerActor
from federation.transaction_out import Ephemeral, PdusAvailable, TxnResult, Wake
from supervision.testing import ExpectActor, ExpectChild, ScriptHarness, Tell
from tests.federation.sender_helpers import FakeClient, Senders, enqueue, wait_until

THEM = "them.test"


@pytest.fixture
def senders(db):
    s = Senders(db)
    yield s
    s.close()


def test_messages_are_frozen_dataclasses():
    for m in (Wake(), Ephemeral("m.typing", {}, None, 0.0), PdusAvailable("!r", 1),
              TxnResult("t")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(m, dataclasses.fields(m)[0].name if dataclasses.fields(m) else "x", 1)


def test_pdu_window_is_bounded_then_catch_up_mode(senders):
    client = FakeClient()
    client.behaviour[THEM] = "hang"
    sender = senders(client, queue_size=3)
    sender.send_ephemeral(THEM, "m.typing", {"n": 0}, key="k")  # one transaction out
    wait_until(lambda: client.tried(THEM))
    h = ScriptHarness(supervisor=sender.supervisor)
    h.play(
        Tell(THEM, PdusAvailable("!r", 10)),
        ExpectActor(THEM, lambda a: list(a.window) == [(10, "!r")] and not a.catching_up),
        Tell(THEM, PdusAvailable("!r", 11)),
        Tell(THEM, PdusAvailable("!s", 12)),
        ExpectActor(THEM, lambda a: len(a.window) == 3 and not a.catching_up),
        Tell(THEM, PdusAvailable("!s", 13)),  # past queue_size: only the position counts
        ExpectActor(THEM, lambda a: len(a.window) == 0 and a.catching_up),
        Tell(THEM, PdusAvailable("!s", 14)),
        ExpectActor(THEM, lambda a: len(a.window) == 0),
    )
    assert sender.state(THEM) == "catching_up"
    assert sender.supervisor.inspect(THEM, lambda a: a._next_pdus(50)) == []


def test_pdu_position_is_stored_when_a_transaction_with_pdus_is_acknowledged(senders,
                                                                           monkeypatch):
    """The Federation II slot: whatever ``_next_pdus`` returns is sent, and the position it
    reports is stored once the destination answered 200."""
    def replay(self, limit):
        if self.catching_up and not getattr(self, "_replayed", False):
            self._replayed = True
            self.pdu_batch_position = 99
            return [{"event_id": "$e1"}, {"event_id": "$e2"}]
        return []

    monkeypatch.setattr(RemoteServerActor, "_next_pdus", replay)
    client = FakeClient()
    sender = senders(client, queue_size=2)
    for so in (97, 98, 99):  # overflows the window: catch-up mode
        sender.send_pdus([THEM], "!r:us.test", so)
    wait_until(lambda: client.delivered(THEM))
    assert client.delivered(THEM)[0].body["pdus"] == [{"event_id": "$e1"}, {"event_id": "$e2"}]
    wait_until(lambda: sender.store.get(THEM).pdu_position == 99)
    assert sender.supervisor.inspect(THEM, lambda a: (a.pdu_position, a.catching_up)) == \
        (99, False)
    assert sender.state(THEM) == "healthy"


def test_send_pdus_to_a_backing_off_destination_spawns_nothing(senders):
    client = FakeClient()
    client.behaviour[THEM] = RemoteUnreachable(THEM, "down")
    sender = senders(client, min_retry_interval=30.0, max_retry_interval=30.0,
                     timings={"idle_timeout": 0.05})
    enqueue(sender, THEM, range(1))
    wait_until(lambda: sender.backing_off(THEM) is not None)
    wait_until(lambda: sender.supervisor.child(THEM) is None, what="passivated")
    sender.send_pdus([THEM, "us.test"], "!r:us.test", 42)
    gevent.sleep(0.05)
    assert sender.supervisor.child(THEM) is None
    assert sender.state(THEM) == "backing_off"


def test_a_stored_pdu_position_starts_in_catch_up_mode(senders, db):
    sender = senders(FakeClient())
    sender.store.ensure(THEM)
    db.run("pos", lambda t: t.execute(
        "UPDATE federation_destinations SET pdu_position = 7 WHERE destination = ?", (THEM,)),
        write=True)
    seen = []
    h = ScriptHarness(supervisor=sender.supervisor)
    h.play(
        ExpectActor(THEM, lambda a: seen.append((a.pdu_position, a.catching_up)) or True),
    )
    # load saw the position (catch-up); the first pump found nothing to replay and left it
    assert seen[0][0] == 7
    wait_until(lambda: sender.state(THEM) == "healthy")


def test_a_stale_result_is_ignored(senders):
    client = FakeClient()
    sender = senders(client)
    ScriptHarness(supervisor=sender.supervisor).play(
        Tell(THEM, TxnResult("no-such-txn")),
        ExpectActor(THEM, lambda a: a.flight is None and a.failure_count == 0),
        ExpectChild(THEM, state="running"),
    )
    assert sender.supervisor.stats()["crashes"] == 0


def test_wake_of_a_healthy_destination_costs_nothing(senders, db):
    sender = senders(FakeClient())
    writes = []
    real_run = db.run

    def counting_run(name, fn, *args, write=False, **kw):
        if write:
            writes.append(name)
        return real_run(name, fn, *args, write=write, **kw)

    db.run = counting_run
    try:
        for _ in range(100):
            sender.wake(THEM)
        gevent.sleep(0.01)
    finally:
        db.run = real_run
    assert writes == [] and sender.supervisor.child(THEM) is None


def test_backing_off_is_none_once_the_retry_time_has_passed(senders):
    client = FakeClient()
    client.behaviour[THEM] = RemoteUnreachable(THEM, "down")
    sender = senders(client, min_retry_interval=0.1, max_retry_interval=0.1)
    enqueue(sender, THEM, range(1))
    wait_until(lambda: sender.backing_off(THEM) is not None)
    at = sender.backing_off(THEM)
    assert at > sender.now_ms()
    wait_until(lambda: sender.backing_off(THEM) is None or sender.backing_off(THEM) != at,
               within=1.0)


def test_factory_builds_one_actor_per_destination(senders):
    sender = senders(FakeClient())
    ScriptHarness(supervisor=sender.supervisor).play(
        Tell("a.test", Wake()), Tell("b.test", Wake()),
        ExpectActor("a.test", lambda a: isinstance(a, RemoteServerActor)
                    and a.destination == "a.test"),
        ExpectActor("b.test", lambda a: a.destination == "b.test"),
    )
