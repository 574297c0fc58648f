"""FederationSender + RemoteServerActor over a real store (SQLite or PostgreSQL) and a fake
client: durable EDUs in order exactly once, rollback, back-off persisted across a restart,
paging, wake, isolation between destinations, tracing."""
from __future__ import annotations

import pytest

from federation.errors import BadResponse, RemoteHTTPError, RemoteUnreachable
from supervision import trace_context
from tests.federation.sender_helpers import (
    FakeClient, Senders, enqueue, numbers, to_device, wait_until,
)

THEM = "them.test"
OTHER = "other.test"


@pytest.fixture
def senders(db):
    s = Senders(db)
    yield s
    s.close()


def test_durable_edus_delivered_in_order_exactly_once_in_pages_of_100(senders):
    client = FakeClient()
    sender = senders(client)
    enqueue(sender, THEM, range(0, 150))
    enqueue(sender, THEM, range(150, 250))
    wait_until(lambda: len(client.delivered_edus(THEM)) >= 250, what="250 EDUs delivered")
    gevent_sleep(0.05)
    delivered = client.delivered(THEM)
    assert numbers(client.delivered_edus(THEM)) == list(range(250))  # in order, once each
    assert all(len(a.edus) <= 100 for a in delivered)
    assert len(delivered) >= 3
    assert len({a.txn_id for a in client.attempts}) == len(client.attempts)  # unique txn ids
    body = delivered[0].body
    assert body["origin"] == "us.test" and body["pdus"] == []
    assert isinstance(body["origin_server_ts"], int)
    assert body["edus"][0] == {"edu_type": "m.direct_to_device", "content": to_device(0)}
    assert sender.store.outbox_count(THEM) == 0
    view = sender.destination(THEM)
    assert view["state"] == "healthy" and view["queue_depth"] == 0
    assert view["last_success_ts"] is not None and view["failure_count"] == 0


def test_rollback_of_the_callers_transaction_sends_nothing(senders):
    client = FakeClient()
    sender = senders(client)

    def _t(txn):
        sender.enqueue_durable(txn, THEM, "m.direct_to_device", to_device(1))
        raise RuntimeError("the caller's write failed")

    with pytest.raises(RuntimeError):
        sender.db.run("fails", _t, write=True)
    gevent_sleep(0.2)
    assert client.attempts == []
    assert sender.store.outbox_count(THEM) == 0
    assert sender.supervisor.child(THEM) is None  # no actor was even spawned


def test_own_server_and_non_whitelisted_destinations_are_never_queued(senders):
    client = FakeClient()
    sender = senders(client, domain_whitelist=frozenset({THEM}))
    enqueue(sender, "us.test", range(2))
    enqueue(sender, OTHER, range(2))
    enqueue(sender, THEM, range(1))
    wait_until(lambda: client.delivered(THEM))
    assert {a.destination for a in client.attempts} == {THEM}
    assert sender.store.outbox_count(OTHER) == 0


def test_peer_down_backs_off_exponentially_then_delivers_in_order_same_txn_id(senders):
    client = FakeClient()
    down = RemoteUnreachable(THEM, "connection refused")
    client.behaviour[THEM] = [down, down, down, None]
    sender = senders(client, min_retry_interval=0.05, max_retry_interval=0.15)
    intervals = []

    def watch():
        row = sender.store.get(THEM)
        if row is not None and row.retry_interval and (
                not intervals or intervals[-1] != (row.failure_count, row.retry_interval)):
            intervals.append((row.failure_count, row.retry_interval))
        return len(client.delivered(THEM)) == 1

    enqueue(sender, THEM, range(5))
    wait_until(watch, within=3.0, what="delivered after 3 failures")
    assert intervals == [(1, 50), (2, 100), (3, 150)]  # doubling, capped at the max
    tried = client.tried(THEM)
    assert len(tried) == 4
    assert len({a.txn_id for a in tried}) == 1  # the same transaction until it gets a 200
    assert numbers(client.delivered_edus(THEM)) == list(range(5))
    wait_until(lambda: sender.store.get(THEM).retry_interval == 0, what="healthy again")
    row = sender.store.get(THEM)
    assert row.failure_count == 0 and row.failure_ts is None and row.last_success_ts
    assert sender.backing_off(THEM) is None


def test_backoff_survives_a_new_sender_and_wake_resets_it(senders, db):
    client = FakeClient()
    client.behaviour[THEM] = RemoteUnreachable(THEM, "down")
    first = senders(client, min_retry_interval=30.0, max_retry_interval=60.0)
    enqueue(first, THEM, range(3))
    wait_until(lambda: first.backing_off(THEM) is not None, what="backing off")
    at = first.backing_off(THEM)
    view = first.destination(THEM)
    assert view["state"] == "backing_off" and view["failure_count"] == 1
    assert view["backoff_until_ts"] == at and view["last_failure"]
    enqueue(first, THEM, range(3, 6))  # queued during the back-off: no attempt
    gevent_sleep(0.1)
    assert len(client.tried(THEM)) == 1
    first.stop()

    client2 = FakeClient()
    second = senders(client2, min_retry_interval=30.0, max_retry_interval=60.0)
    assert second.backing_off(THEM) == at  # persisted
    assert second.destination(THEM)["state"] == "backing_off"
    assert second.destination(THEM)["queue_depth"] == 6
    gevent_sleep(0.1)
    assert client2.attempts == []  # the start-up sweep respects the back-off
    second.wake(THEM)  # an inbound request from them
    wait_until(lambda: len(client2.delivered_edus(THEM)) == 6, what="all six after wake")
    assert numbers(client2.delivered_edus(THEM)) == list(range(6))
    assert second.backing_off(THEM) is None
    assert second.store.get(THEM).retry_interval == 0
    assert second.destination(THEM)["state"] == "healthy"


def test_start_up_sweep_delivers_what_was_left(senders):
    client = FakeClient()
    client.behaviour[THEM] = "hang"
    first = senders(client)
    enqueue(first, THEM, range(4))
    wait_until(lambda: client.tried(THEM))
    first.stop()  # the transaction in flight is abandoned; its rows stay
    assert first.store.outbox_count(THEM) == 4
    client2 = FakeClient()
    senders(client2)
    wait_until(lambda: len(client2.delivered_edus(THEM)) == 4, what="delivered after restart")
    assert numbers(client2.delivered_edus(THEM)) == list(range(4))


def test_back_off_ends_by_itself_after_passivation(senders):
    """A dead destination's actor may be passivated; the sweep timer wakes it later."""
    client = FakeClient()
    client.behaviour[THEM] = [RemoteUnreachable(THEM, "down"), None]
    sender = senders(client, min_retry_interval=0.3, max_retry_interval=0.3,
                     timings={"idle_timeout": 0.05})
    enqueue(sender, THEM, range(2))
    wait_until(lambda: sender.backing_off(THEM) is not None)
    wait_until(lambda: sender.supervisor.child(THEM) is None, what="passivated")
    wait_until(lambda: len(client.delivered_edus(THEM)) == 2, within=3.0)


def test_ten_thousand_queued_are_read_a_page_at_a_time(senders):
    client = FakeClient()
    client.behaviour[THEM] = RemoteUnreachable(THEM, "down")
    sender = senders(client, min_retry_interval=30.0, max_retry_interval=30.0)
    for start in range(0, 10_000, 2_500):
        enqueue(sender, THEM, range(start, start + 2_500))
    wait_until(lambda: sender.backing_off(THEM) is not None)

    def held(actor):  # what the actor keeps while the peer is down
        h = actor.held
        return (0 if h is None else len(h.body["edus"]), len(actor.ephemeral),
                actor.outbox_pages)

    kept, eph, pages = sender.supervisor.inspect(THEM, held)
    assert kept == 100 and eph == 0 and pages == 1
    assert sender.destination(THEM)["queue_depth"] == 10_000
    client.behaviour.pop(THEM)
    sender.wake(THEM)
    wait_until(lambda: len(client.delivered_edus(THEM)) == 10_000, within=30.0)
    assert numbers(client.delivered_edus(THEM)) == list(range(10_000))
    assert max(len(a.edus) for a in client.attempts) == 100
    pages = sender.supervisor.inspect(THEM, lambda a: a.outbox_pages)
    assert 100 <= pages <= 102  # one page per transaction (+ the empty read at the end)
    assert sender.store.outbox_count(THEM) == 0


def test_one_hanging_destination_does_not_delay_another(senders):
    client = FakeClient()
    client.behaviour[THEM] = "hang"
    sender = senders(client, max_concurrent_transactions=2)
    enqueue(sender, THEM, range(3))
    wait_until(lambda: client.tried(THEM))
    enqueue(sender, OTHER, range(5))
    wait_until(lambda: len(client.delivered_edus(OTHER)) == 5, within=1.0)
    enqueue(sender, THEM, range(3, 6))  # queued behind the transaction in flight
    enqueue(sender, OTHER, range(5, 7))
    wait_until(lambda: len(client.delivered_edus(OTHER)) == 7, within=1.0)
    assert len(client.tried(THEM)) == 1  # one transaction at a time
    assert sender.destination(THEM)["in_flight"] == client.tried(THEM)[0].txn_id
    client.release(THEM)
    wait_until(lambda: len(client.delivered_edus(THEM)) == 6)
    assert numbers(client.delivered_edus(THEM)) == list(range(6))
    assert client.max_in_flight[THEM] == 1


def test_a_request_that_never_answers_is_cut_by_the_timeout(senders):
    client = FakeClient()
    client.behaviour[THEM] = ["hang", None]
    sender = senders(client, request_timeout=0.1, connect_timeout=0.05,
                     min_retry_interval=0.05)
    enqueue(sender, THEM, range(2))
    wait_until(lambda: sender.store.get(THEM) and sender.store.get(THEM).failure_count == 1,
               within=3.0, what="timed out")
    assert "no answer" in sender.store.get(THEM).last_failure
    client.gates.setdefault(THEM, __import__("gevent").event.Event()).set()
    wait_until(lambda: len(client.delivered_edus(THEM)) == 2, within=3.0)


def test_4xx_refusal_drops_that_transaction_without_back_off(senders):
    client = FakeClient()
    client.behaviour[THEM] = [RemoteHTTPError(THEM, 400, "M_BAD_JSON", "nope"), None]
    sender = senders(client)
    enqueue(sender, THEM, range(3))
    wait_until(lambda: client.tried(THEM))
    wait_until(lambda: sender.store.outbox_count(THEM) == 0)
    row = sender.store.get(THEM)
    assert row.retry_interval == 0 and "400" in row.last_failure
    assert sender.backing_off(THEM) is None
    enqueue(sender, THEM, range(3, 5))
    wait_until(lambda: client.delivered(THEM))
    assert numbers(client.delivered_edus(THEM)) == [3, 4]


@pytest.mark.parametrize("error, transient", [
    (RemoteHTTPError(THEM, 500, "M_UNKNOWN", "oops"), True),
    (RemoteHTTPError(THEM, 401, "M_UNAUTHORIZED", "who"), True),
    (RemoteHTTPError(THEM, 404, "M_UNRECOGNIZED", "?"), True),
    (RemoteHTTPError(THEM, 403, "M_FORBIDDEN", "no"), False),
    (BadResponse(THEM, "not json"), True),
])
def test_which_answers_back_off(senders, error, transient):
    client = FakeClient()
    client.behaviour[THEM] = [error, None]
    sender = senders(client, min_retry_interval=30.0, max_retry_interval=30.0)
    enqueue(sender, THEM, range(1))
    wait_until(lambda: client.tried(THEM))
    gevent_sleep(0.1)
    assert (sender.backing_off(THEM) is not None) is transient
    assert sender.store.outbox_count(THEM) == (1 if transient else 0)


def test_429_backs_off_at_least_retry_after(senders):
    client = FakeClient()
    client.behaviour[THEM] = RemoteHTTPError(THEM, 429, "M_LIMIT_EXCEEDED", "slow",
                                             {"retry_after_ms": 20_000})
    sender = senders(client, min_retry_interval=0.05, max_retry_interval=60.0)
    enqueue(sender, THEM, range(1))
    wait_until(lambda: sender.backing_off(THEM) is not None)
    assert sender.store.get(THEM).retry_interval == 20_000


def test_answer_without_pdus_is_retried_and_per_pdu_errors_are_not(senders):
    client = FakeClient()
    client.behaviour[THEM] = [{"nope": 1}, {"pdus": {"$e": {"error": "bad"}}}]
    sender = senders(client, min_retry_interval=0.05)
    enqueue(sender, THEM, range(2))
    wait_until(lambda: len(client.tried(THEM)) == 2 and sender.store.outbox_count(THEM) == 0)
    gevent_sleep(0.1)
    assert len(client.tried(THEM)) == 2 and client.tried(THEM)[0].txn_id == \
        client.tried(THEM)[1].txn_id
    assert sender.backing_off(THEM) is None


def test_each_transaction_is_traced_with_the_trace_id_of_its_cause(senders):
    client = FakeClient()
    sender = senders(client)
    with trace_context("req-abc"):
        enqueue(sender, THEM, range(2))
    wait_until(lambda: client.delivered(THEM))
    wait_until(lambda: any(r.message_type == "TxnResult" and r.outcome
                           for r in sender.tracer.by_trace("req-abc")))
    recs = sender.tracer.by_trace("req-abc")
    types = [r.message_type for r in recs]
    assert "Wake" in types and "PutTransaction" in types and "TxnResult" in types
    put = next(r for r in recs if r.message_type == "PutTransaction")
    assert put.outcome == "ok" and put.key == THEM and put.started_at and put.ended_at
    assert "PutTransaction" in sender.tracer.render_trace("req-abc")


def gevent_sleep(s):
    import gevent

    gevent.sleep(s)
