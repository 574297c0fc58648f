"""``RemoteServerActor``: the one sender of transactions to one destination (server-server-api
"Transactions": ``PUT /_matrix/federation/v1/send/{txnId}``, at most 50 PDUs and 100 EDUs;
"EDUs"; "Send-to-device messaging"; "Device Management").  One per destination, under the
``remote`` supervisor that :class:`federation.sender.FederationSender` owns.

What it keeps in memory is small and bounded; the store is the queue:

* **durable EDUs** stay in ``federation_outbox`` until acknowledged; the actor reads them a page
  (≤ 100) at a time, in stream order, when it builds a transaction, and deletes exactly the
  rows of a transaction once the destination answered it;
* **ephemeral EDUs** (typing, presence, receipts) are held here, at most ``queue_size``,
  coalesced by key (newest wins), dropped once older than ``ephemeral_edu_ttl`` or when a
  back-off starts;
* **PDUs** (Federation II): a window of at most ``queue_size`` notes; past it, during a back-off
  and after a start it is in *catch-up mode*, where only ``pdu_position`` (in the store) counts
  and ``_next_pdus`` replays from the events stream.

**One transaction at a time.**  A transaction is a :class:`Flight`, sent by a greenlet of the
sender (so the mailbox keeps taking enqueues while the request is out) that stores the outcome
on the flight and tells the actor :class:`TxnResult`.  Flights live in the sender's registry,
not in the actor: an incarnation that starts (after a crash or a passivation) while one is out
adopts it instead of starting a second one, and applies its result if it came back meanwhile.

**Answers** (docs/federation.md "Outbound"):

* 200: the rows go; per-PDU errors in ``pdus`` are logged, never retried;
* no answer, a timeout, 5xx, 401, 404, 408, 429 or a 2xx that is not a transaction answer:
  the destination is *backing off* — ``min_retry_interval`` doubling (with ±15 % jitter) up to
  ``max_retry_interval``, at least a 429's ``retry_after_ms`` — persisted in
  ``federation_destinations``; the same transaction (same txn id, same body, as the spec asks:
  "wait and retry for a 200 OK response before sending a transaction with a different txnId")
  is sent again when it ends, unless ephemeral EDUs in it went stale or the actor was restarted,
  in which case a new one is built from the store;
* any other 4xx: the destination refused this transaction for good; resending the same body
  cannot succeed and would block everything behind it, so its rows are dropped and the reason
  is kept (``last_failure``) — the destination is reachable, so there is no back-off.

Delivery is at least once: a crash between the destination's 200 and the deletion, or a
request that timed out after the destination processed it, sends the rows again in a new
transaction.  Receivers dedupe (``txn_id`` per origin, to-device ``message_id``, device-list
``stream_id``/``prev_id``).
"""
from __future__ import annotations

import logging
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gevent

from supervision import SupervisedActor, SupervisionError, message

if TYPE_CHECKING:
    from federation.sender import FederationSender

log = logging.getLogger(__name__)

MAX_PDUS = 50
MAX_EDUS = 100


# -- messages --------------------------------------------------------------------------------

@message
class Wake:
    """Something may be waiting in the store; ``reset`` first clears the back-off (an inbound
    request came from the destination, or the operator asked)."""

    reset: bool = False


@message
class Ephemeral:
    """An ephemeral EDU; ``key`` coalesces (a newer one with the same type and key replaces
    it); ``at`` is when it was queued (seconds, the sender's clock)."""

    edu_type: str
    content: Any
    key: str | None
    at: float


@message
class PdusAvailable:
    """Events of ``room_id`` up to ``stream_ordering`` are for this destination (Fed II)."""

    room_id: str
    stream_ordering: int


@message
class TxnResult:
    """The flight ``txn_id`` has its outcome (on the flight in the sender's registry)."""

    txn_id: str


@message
class PutTransaction:
    """Only a tracer record: the HTTP request of one transaction."""

    txn_id: str
    pdus: int
    edus: int


# -- a transaction and its outcome ------------------------------------------------------------

OK, TRANSIENT, REFUSED = "ok", "transient", "refused"


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str                      # OK | TRANSIENT | REFUSED
    reason: str = ""
    retry_after_ms: int | None = None


@dataclass(eq=False)
class Flight:
    """One transaction: its body and what it carries, while it is out or held for a resend."""

    destination: str
    txn_id: str
    trace_id: str
    body: dict[str, Any]
    outbox_ids: list[int]
    pdu_upto: int | None
    ephemeral_since: float | None   # when its oldest ephemeral EDU was queued
    greenlet: Any = None
    result: Outcome | None = None
    attempts: int = 0
    started: float = 0.0


# -- the actor -------------------------------------------------------------------------------

class RemoteServerActor(SupervisedActor):
    """Sends transactions to ``destination``, one at a time, with back-off."""

    def __init__(self, destination: str, sender: FederationSender) -> None:
        super().__init__()
        self.destination = destination
        self.s = sender
        fc = sender.fc
        self.queue_size: int = fc.queue_size
        self.flight: Flight | None = None
        self.held: Flight | None = None
        self.ephemeral: OrderedDict[tuple[Any, ...], tuple[str, Any, float]] = OrderedDict()
        self._eph_seq = 0
        self.ephemeral_dropped = 0
        self.window: deque[tuple[int, str]] = deque()
        self.catching_up = False
        self.pdu_position: int | None = None
        #: stream_ordering of the last PDU the latest ``_next_pdus`` returned (Fed II sets it)
        self.pdu_batch_position: int | None = None
        self.failure_count = 0
        self.failure_ts: int | None = None
        self.retry_interval = 0
        self.retry_at: int | None = None
        self.outbox_pages = 0          # store reads of the outbox (tests: paging, not hoarding)
        self._timer: Any = None

    # -- lifecycle -----------------------------------------------------------------------

    def on_start(self) -> None:
        # A restarted incarnation has no message to start on if the crash consumed the one
        # that woke it: look at the store anyway.
        try:
            assert self.supervisor is not None
            self.supervisor.tell(self.key, Wake(), sender=self.name)
        except Exception:  # noqa: BLE001 - parked / stopping: the sender's sweep covers it
            pass

    def load(self) -> None:
        row = self.s.store.ensure(self.destination)
        self.failure_count = row.failure_count
        self.failure_ts = row.failure_ts
        self.retry_interval = row.retry_interval
        self.retry_at = row.retry_at
        self.pdu_position = row.pdu_position
        self.catching_up = row.pdu_position is not None
        self.s._note_catching_up(self.destination, self.catching_up)
        self.s._note_backoff(self.destination, self.retry_at)
        flight = self.s._flights.get(self.destination)
        if flight is not None:  # sent by an earlier incarnation: adopt it
            self.flight = flight
            if flight.result is not None:
                self._apply(flight)

    def on_stop(self) -> None:
        self._cancel_timer()
        self.s._ephemeral_depth.pop(self.destination, None)

    def on_failure(self, *_exc: Any) -> None:
        self._cancel_timer()
        self.s._ephemeral_depth.pop(self.destination, None)

    # -- messages ------------------------------------------------------------------------

    def handle(self, msg: Any) -> Any:
        flight = self.flight
        if flight is not None and flight.result is not None:
            self._apply(flight)  # whichever message comes first (a TxnResult can be refused)
        if isinstance(msg, Wake):
            if msg.reset:
                self._reset_backoff()
        elif isinstance(msg, Ephemeral):
            self._add_ephemeral(msg)
        elif isinstance(msg, PdusAvailable):
            self._note_pdus(msg)
        elif isinstance(msg, TxnResult):
            pass  # applied above if it is ours; a stale one (an older flight) is ignored
        else:
            raise TypeError(f"RemoteServerActor: unknown message {type(msg).__name__}")
        self._pump()
        return None

    # -- building and sending ------------------------------------------------------------

    def _pump(self) -> None:
        """Start the next transaction if none is out and the destination is not backing off."""
        if self.flight is not None or self.s.stopped:
            return
        now_ms = self.s.now_ms()
        if self.retry_at is not None and now_ms < self.retry_at:
            self._drop_ephemeral()
            self._arm_timer(self.retry_at)
            return
        flight = self.held
        self.held = None
        if flight is not None and flight.ephemeral_since is not None \
                and flight.ephemeral_since < self.s.clock() - self.s.fc.ephemeral_edu_ttl:
            flight = None  # its typing/presence are stale: rebuild (new txn id) from the store
        if flight is None:
            flight = self._build()
            if flight is None:
                return
        flight.result = None
        flight.attempts += 1
        self.flight = flight
        self.s._launch(flight)

    def _build(self) -> Flight | None:
        now = self.s.clock()
        self._expire_ephemeral(now)
        pdus = self._next_pdus(MAX_PDUS)
        if self.catching_up and len(pdus) < MAX_PDUS:
            self.catching_up = False  # the replay has caught up with the stream
            self.s._note_catching_up(self.destination, False)
        eph_room = min(len(self.ephemeral), MAX_EDUS // 2)
        rows = self.s.store.outbox_page(self.destination, MAX_EDUS - eph_room)
        self.outbox_pages += 1
        edus: list[dict[str, Any]] = [{"edu_type": r.edu_type, "content": r.content}
                                      for r in rows]
        oldest: float | None = None
        while self.ephemeral and len(edus) < MAX_EDUS:
            _, (edu_type, content, at) = self.ephemeral.popitem(last=False)
            edus.append({"edu_type": edu_type, "content": content})
            oldest = at if oldest is None else min(oldest, at)
        self.s._ephemeral_depth[self.destination] = len(self.ephemeral)
        if not pdus and not edus:
            return None
        body = {"origin": self.s.server_name, "origin_server_ts": int(now * 1000),
                "pdus": pdus, "edus": edus}
        return Flight(self.destination, self.s.new_txn_id(), self.trace_id or "", body,
                      [r.stream_id for r in rows], self.pdu_batch_position if pdus else None,
                      oldest)

    def _next_pdus(self, limit: int) -> list[dict[str, Any]]:
        """The next PDUs to send (at most ``limit``), oldest first.  Federation II fills it:
        in live mode the events noted in ``self.window``; in catch-up mode the newest events
        of each room after ``self.pdu_position`` (``catchup_max_per_room``), read from the
        events stream.  It sets ``self.pdu_batch_position`` to the stream_ordering of the last
        PDU it returns.  No PDUs flow yet: always ``[]``."""
        return []

    # -- outcomes ------------------------------------------------------------------------

    def _apply(self, flight: Flight) -> None:
        """Account for a flight that came back (once)."""
        outcome = flight.result
        assert outcome is not None
        if self.s._flights.get(self.destination) is flight:
            del self.s._flights[self.destination]
        self.flight = None
        now_ms = self.s.now_ms()
        if outcome.kind == TRANSIENT:
            self._back_off(outcome, now_ms)
            self.held = flight
            return
        was_failing = self.failure_count > 0 or self.retry_at is not None
        if outcome.kind == REFUSED:
            log.warning("TX [%s] %s refused for good, %d EDUs dropped: %s", self.destination,
                        flight.txn_id, len(flight.body["edus"]), outcome.reason)
            self.s.store.acknowledge(self.destination, flight.outbox_ids, now_ms,
                                     pdu_position=flight.pdu_upto, refused=outcome.reason)
        else:
            self.s.store.acknowledge(self.destination, flight.outbox_ids, now_ms,
                                     pdu_position=flight.pdu_upto,
                                     touch=was_failing or self.s._touch_due(self.destination))
        if flight.pdu_upto is not None:
            self.pdu_position = flight.pdu_upto
            while self.window and self.window[0][0] <= flight.pdu_upto:
                self.window.popleft()
        self.failure_count, self.failure_ts, self.retry_interval = 0, None, 0
        self.retry_at = None
        self.s._note_backoff(self.destination, None)

    def _back_off(self, outcome: Outcome, now_ms: int) -> None:
        fc = self.s.fc
        lo, hi = int(fc.min_retry_interval * 1000), int(fc.max_retry_interval * 1000)
        base = lo if self.retry_interval <= 0 else self.retry_interval * 2
        interval = int(min(hi, max(lo, base * self.s.jitter())))
        if outcome.retry_after_ms:
            interval = max(interval, min(outcome.retry_after_ms, hi))
        self.failure_count += 1
        self.failure_ts = self.failure_ts or now_ms
        self.retry_interval = interval
        self.retry_at = now_ms + interval
        log.info("TX [%s] failed (%s); backing off %.1fs (failure %d)", self.destination,
                 outcome.reason, interval / 1000, self.failure_count)
        self.s.store.record_failure(self.destination, now_ms, self.failure_count,
                                    self.failure_ts, interval, outcome.reason)
        self.s._note_backoff(self.destination, self.retry_at)
        self._drop_ephemeral()
        self.window.clear()
        self.catching_up = True
        self.s._note_catching_up(self.destination, True)
        self._arm_timer(self.retry_at)
        self.s._arm_sweep(self.retry_at)

    def _reset_backoff(self) -> None:
        if self.retry_at is None and self.failure_count == 0:
            return
        self.failure_count, self.failure_ts, self.retry_interval = 0, None, 0
        self.retry_at = None
        self.s.store.reset_backoff(self.destination)
        self.s._note_backoff(self.destination, None)
        self._cancel_timer()

    # -- ephemeral EDUs and PDU notes ----------------------------------------------------

    def _add_ephemeral(self, msg: Ephemeral) -> None:
        if self.retry_at is not None and self.s.now_ms() < self.retry_at:
            self.ephemeral_dropped += 1
            return
        if msg.key is None:
            self._eph_seq += 1
            k: tuple[Any, ...] = (msg.edu_type, None, self._eph_seq)
        else:
            k = (msg.edu_type, msg.key)
            self.ephemeral.pop(k, None)  # newest replaces, and moves to the back
        self.ephemeral[k] = (msg.edu_type, msg.content, msg.at)
        while len(self.ephemeral) > self.queue_size:
            self.ephemeral.popitem(last=False)
            self.ephemeral_dropped += 1
        self.s._ephemeral_depth[self.destination] = len(self.ephemeral)

    def _expire_ephemeral(self, now: float) -> None:
        horizon = now - self.s.fc.ephemeral_edu_ttl
        while self.ephemeral:
            k, (_, _, at) = next(iter(self.ephemeral.items()))
            if at >= horizon:
                break
            del self.ephemeral[k]
            self.ephemeral_dropped += 1

    def _drop_ephemeral(self) -> None:
        if self.ephemeral:
            self.ephemeral_dropped += len(self.ephemeral)
            self.ephemeral.clear()
        self.s._ephemeral_depth.pop(self.destination, None)

    def _note_pdus(self, msg: PdusAvailable) -> None:
        if self.catching_up:
            return  # the replay reads the stream from pdu_position
        self.window.append((msg.stream_ordering, msg.room_id))
        if len(self.window) > self.queue_size:
            self.window.clear()
            self.catching_up = True
            self.s._note_catching_up(self.destination, True)

    # -- the retry timer -----------------------------------------------------------------

    def _arm_timer(self, at_ms: int) -> None:
        if self._timer is not None:
            return
        delay = max(0.0, (at_ms - self.s.now_ms()) / 1000)
        self._timer = gevent.spawn_later(delay, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        try:
            assert self.supervisor is not None
            self.supervisor.tell(self.key, Wake(), sender=self.name)
        except SupervisionError:
            pass  # parked or stopping: the sender's sweep picks it up later

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.kill(block=False)
            self._timer = None
