"""``FederationSender``: the facade everything uses to send to other servers (server-server-api
"Transactions", "EDUs", "Send-to-device messaging", "Device Management"), and the operator's
view of the destinations.

It owns the ``remote`` supervisor (one :class:`federation.remote_server.RemoteServerActor` per
destination, spawned when there is something to send, passivated when idle, restarted from the
store on a crash, parked when it keeps crashing), the global cap on transactions in flight
(``max_concurrent_transactions``; one hanging destination holds one slot, never another
destination's actor), the greenlets that carry each transaction, and a small in-memory picture
of which destinations are backing off (so ``wake`` and ``backing_off`` cost a dict lookup).

Durable EDUs go through the store (``enqueue_durable``, inside the caller's transaction);
ephemeral EDUs and PDU notes are told to the actor (``send_pdus``, called by
:mod:`federation.pdu_out` after each commit; a note that cannot be told — the destination is
backing off, its mailbox is full, it is parked — leaves it to catch up from its stored
``pdu_position``).  After a start, and whenever a back-off or a park ends, one *sweep* (a
single timer for all destinations) wakes the destinations that have undelivered rows or
whose ``pdu_position`` is behind the events stream with events of ours pending in a room of
theirs: a dead destination costs its rows and one dict entry, not an actor.

Layering: imports store/ and supervision/ only; the HTTP client is handed in
(``federation.client.FederationClient`` contract in docs/federation.md).
"""
from __future__ import annotations

import itertools
import logging
import random
import time
from typing import Any, Callable, Iterable

import gevent
from gevent.lock import BoundedSemaphore

from federation.errors import FederationError, Forbidden, RemoteHTTPError
from federation.remote_server import RemoteServerActor
from federation.transaction_out import (
    OK, REFUSED, TRANSIENT, Ephemeral, Flight, Outcome, PdusAvailable, PutTransaction,
    TxnResult, Wake,
)
from store.database import Database, Txn
from store.federation_queue import DestinationRow, FederationQueueStore, PduReads
from supervision import (
    ActorParked, MailboxFull, SupervisionError, Supervisor, Tracer, new_trace_id,
)

log = logging.getLogger(__name__)

#: statuses that say "not now" rather than "never" (401: our key not fetched yet; 404: a
#: server that is being set up or moved; 408/429: busy); every 5xx too
TRANSIENT_STATUSES = frozenset({401, 404, 408, 429})
SWEEP_SLACK_MS = 1000        # a sweep also wakes destinations due within this
TOUCH_INTERVAL_MS = 60_000   # last_success_ts of a healthy destination moves at most this often
MAX_REMEMBERED = 100_000     # bound of the per-destination memos below (cleared when reached)


class FederationSender:
    """See the module docstring.  ``timings`` overrides the ``remote`` supervisor's settings
    (tests); ``clock`` is wall time in seconds; ``jitter`` returns the back-off factor."""

    def __init__(self, config: Any, db: Database, client: Any, tracer: Tracer | None, *,
                 timings: dict[str, Any] | None = None,
                 clock: Callable[[], float] = time.time,
                 jitter: Callable[[], float] | None = None) -> None:
        self.config = config
        self.fc = config.federation
        self.server_name: str = config.server_name
        self.db = db
        self.client = client
        self.tracer = tracer if tracer is not None else Tracer(capacity=1024)
        self.clock = clock
        self.jitter = jitter or (lambda: random.uniform(0.85, 1.15))
        self.store = FederationQueueStore(db)
        self.pdu_reads = PduReads(db, self.server_name)
        #: the events stream's current position (every event at or below it committed); set
        #: by federation.pdu_out.install, else the replay reads MAX(stream_ordering)
        self.events_position: Callable[[], int] | None = None
        self.stopped = False
        #: destination -> pdu_position of an actor that stopped with nothing unacknowledged
        self._clean_stops: dict[str, int] = {}
        #: destinations that missed a PDU note (mailbox full, parked): their next actor replays
        self._pdu_overflow: set[str] = set()
        #: destinations whose stored pdu_position is known to be set
        self._positioned: set[str] = set()
        self._slots = BoundedSemaphore(max(1, int(self.fc.max_concurrent_transactions)))
        self._flights: dict[str, Flight] = {}
        self._backoff: dict[str, int] = self.store.backing_off()
        self._catching_up: set[str] = set()
        self._ephemeral_depth: dict[str, int] = {}
        self._touched: dict[str, int] = {}
        self._txn_prefix = str(int(clock() * 1000))
        self._txn_seq = itertools.count(1)
        self._sweep_timer: Any = None
        self._sweep_at: int | None = None
        a = config.actors
        opts: dict[str, Any] = {
            "max_mailbox": a.mailbox_size, "ask_timeout": a.ask_timeout,
            "idle_timeout": a.idle_timeout, "restart_delay": max(a.restart_delay, 0.05),
            "max_restarts": a.max_restarts, "restart_window": a.restart_window,
            "park_duration": a.park_duration}
        opts.update(timings or {})
        self.supervisor = Supervisor("remote", lambda d: RemoteServerActor(d, self),
                                     tracer=self.tracer, **opts)
        self._arm_sweep(self.now_ms())  # start-up: what was left undelivered

    # -- what the rest of the server calls -----------------------------------------------

    def enqueue_durable(self, txn: Txn, destination: str, edu_type: str,
                        content: dict[str, Any]) -> None:
        """Queue a durable EDU inside the caller's write transaction ``txn``; the
        destination's actor is woken once it commits (nothing happens if it rolls back).
        May run in a thread of the database pool: it only touches ``txn``."""
        if not self._may_send(destination):
            return
        self.store.add_outbox(txn, destination, edu_type, content, self.now_ms())
        txn.call_after_commit(lambda: self._doorbell(destination))

    def send_ephemeral(self, destination: str, edu_type: str, content: dict[str, Any], *,
                       key: str | None = None) -> None:
        """Typing / presence / receipts: held in memory only, coalesced by ``(edu_type,
        key)``, dropped when stale, when the destination is backing off or when its
        actor's mailbox is full."""
        if not self._may_send(destination) or self.backing_off(destination) is not None:
            return
        self._tell(destination, Ephemeral(edu_type, content, key, self.clock()))

    def send_pdus(self, destinations: Iterable[str], room_id: str, stream_ordering: int) -> None:
        """The event of ours at ``stream_ordering`` in ``room_id`` is for ``destinations``
        (called by federation.pdu_out after each commit; cheap: one tell each).  A
        destination that is backing off, or whose actor cannot take the note (mailbox full,
        parked), catches up from its stored position instead; the first note ever for a
        destination stores that position (in a greenlet, once)."""
        for d in destinations:
            if not self._may_send(d):
                continue
            if self.backing_off(d) is not None:
                self._catching_up.add(d)
                self._first_position(d, stream_ordering)
                continue
            if self._tell(d, PdusAvailable(room_id, stream_ordering)):
                self._positioned.add(d)  # the actor sets it if it was unset
            else:
                self._pdu_overflow.add(d)
                self._first_position(d, stream_ordering)

    def wake(self, destination: str) -> None:
        """An inbound request came from ``destination``: if it was backing off, forget the
        back-off and send what is pending now.  A dict lookup when it was healthy."""
        if destination not in self._backoff:
            return
        del self._backoff[destination]
        if not self._tell(destination, Wake(reset=True)):
            self.store.reset_backoff(destination)

    def backing_off(self, destination: str) -> int | None:
        """When the back-off of ``destination`` ends (ms), or None if it may be tried now."""
        at = self._backoff.get(destination)
        if at is None or at <= self.now_ms():
            return None
        return at

    def reset_connection(self, name: str) -> None:
        """Operator: forget the back-off of ``name`` and retry now (Synapse's
        ``reset_connection``)."""
        self._backoff.pop(name, None)
        self.store.reset_backoff(name)
        self._tell(name, Wake(reset=True))

    def stop(self) -> None:
        """Shutdown hook: no new transactions; those in flight are abandoned (their rows stay
        in the store and go in the next start's first transaction)."""
        self.stopped = True
        if self._sweep_timer is not None:
            self._sweep_timer.kill(block=False)
            self._sweep_timer = None
        for flight in list(self._flights.values()):
            if flight.greenlet is not None:
                flight.greenlet.kill(block=True, timeout=1.0)
        self.supervisor.stop_all(timeout=5.0)

    # -- the operator's view ---------------------------------------------------------------

    def destinations_page(self, *, start: int = 0, limit: int = 100, search: str | None = None,
                          order_by: str = "destination", backwards: bool = False
                          ) -> tuple[list[dict[str, Any]], int]:
        """A page of destinations (Synapse's ordering and filter) and the total matching."""
        rows, total = self.store.page(start, limit, search, order_by, backwards)
        counts = self.store.outbox_counts([r.destination for r in rows])
        return [self._view(r, counts.get(r.destination, 0)) for r in rows], total

    def destinations(self, *, start: int = 0, limit: int = 100, search: str | None = None,
                     order_by: str = "destination", backwards: bool = False
                     ) -> list[dict[str, Any]]:
        return self.destinations_page(start=start, limit=limit, search=search,
                                      order_by=order_by, backwards=backwards)[0]

    def destination(self, name: str) -> dict[str, Any] | None:
        """One destination's view, or None if it was never sent to."""
        row = self.store.get(name)
        if row is None:
            return None
        return self._view(row, self.store.outbox_count(name))

    def state(self, name: str) -> str:
        """healthy | backing_off | catching_up | parked."""
        child = self.supervisor.child(name)
        if child is not None and child["state"] == "parked":
            return "parked"
        if self.backing_off(name) is not None:
            return "backing_off"
        if name in self._catching_up:
            return "catching_up"
        return "healthy"

    def _view(self, row: DestinationRow, outbox: int) -> dict[str, Any]:
        d = row.destination
        ephemeral = self._ephemeral_depth.get(d, 0)
        flight = self._flights.get(d)
        child = self.supervisor.child(d)
        return {
            "destination": d,
            "state": self.state(d),
            "queue_depth": outbox + ephemeral,
            "outbox": outbox,
            "ephemeral": ephemeral,
            "last_success_ts": row.last_success_ts,
            "backoff_until_ts": row.retry_at,
            "failure_count": row.failure_count,
            "failure_ts": row.failure_ts,
            "last_failure": row.last_failure,
            "last_failure_ts": row.last_failure_at,
            "retry_last_ts": row.retry_last_ts,
            "retry_interval": row.retry_interval,
            "pdu_position": row.pdu_position,
            "in_flight": flight.txn_id if flight is not None and flight.result is None else None,
            "actor": child["state"] if child is not None else None,
        }

    # -- the sweep: wake destinations with undelivered rows --------------------------------

    def sweep(self) -> None:
        """Wake every destination with undelivered rows whose back-off is over; arm the one
        timer for the earliest back-off still running."""
        self._sweep_timer, self._sweep_at = None, None
        if self.stopped:
            return
        try:
            due_by = self.now_ms() + SWEEP_SLACK_MS
            later: int | None = None
            pending = dict(self.store.destinations_with_outbox())
            if self.events_position is not None:
                for dest, retry_at in self.pdu_reads.destinations_behind(
                        int(self.events_position())):
                    pending.setdefault(dest, retry_at)
            for dest, retry_at in pending.items():
                if retry_at is not None and retry_at > due_by:
                    later = retry_at if later is None else min(later, retry_at)
                    continue
                self._tell(dest, Wake())
            if later is not None:
                self._arm_sweep(later)
        except Exception:  # noqa: BLE001 - the store is away (shutdown): try again later
            log.exception("federation sender: sweep failed")
            self._arm_sweep(self.now_ms() + int(self.fc.min_retry_interval * 1000))

    def _arm_sweep(self, at_ms: int) -> None:
        if self.stopped or (self._sweep_at is not None and self._sweep_at <= at_ms):
            return
        if self._sweep_timer is not None:
            self._sweep_timer.kill(block=False)
        self._sweep_at = at_ms
        self._sweep_timer = gevent.spawn_later(max(0.0, (at_ms - self.now_ms()) / 1000),
                                               self.sweep)

    # -- transactions ---------------------------------------------------------------------

    def new_txn_id(self) -> str:
        return f"{self._txn_prefix}-{next(self._txn_seq)}"

    def _launch(self, flight: Flight) -> None:
        """Send ``flight`` in a greenlet of its own (called by the actor)."""
        flight.trace_id = flight.trace_id or new_trace_id()
        self._flights[flight.destination] = flight
        flight.greenlet = gevent.spawn(self._transmit, flight)

    def _transmit(self, flight: Flight) -> None:
        dest = flight.destination
        body = flight.body
        with self._slots:
            rec = self.tracer.enqueued(flight.trace_id, f"remote/{dest}", "federation", dest,
                                       PutTransaction(flight.txn_id, len(body["pdus"]),
                                                      len(body["edus"])), "http")
            self.tracer.started(rec)
            flight.started = self.clock()
            outcome, error = self._put(flight)
            self.tracer.finished(rec, {OK: "ok", REFUSED: "refused"}.get(outcome.kind, "failed"),
                                 error)
        flight.result = outcome
        if not self.stopped:
            self._tell(dest, TxnResult(flight.txn_id), trace_id=flight.trace_id,
                       sender=f"federation/{dest}")

    def _put(self, flight: Flight) -> tuple[Outcome, BaseException | None]:
        dest, fc = flight.destination, self.fc
        hard = gevent.Timeout(fc.request_timeout + fc.connect_timeout + 1.0)
        hard.start()
        try:
            response = self.client.put_json(
                dest, f"/_matrix/federation/v1/send/{flight.txn_id}", flight.body,
                fail_fast=False, timeout=fc.request_timeout)
        except gevent.Timeout as t:
            if t is not hard:
                raise
            return Outcome(TRANSIENT, "no answer in time"), None
        except RemoteHTTPError as e:
            return _http_outcome(e), e
        except Forbidden as e:  # our own federation_domain_whitelist: never going to work
            return Outcome(REFUSED, str(e)), e
        except FederationError as e:
            return Outcome(TRANSIENT, e.message), e
        except Exception as e:  # noqa: BLE001 - a bug in the client must not kill the sender
            log.exception("TX [%s] %s: client failed", dest, flight.txn_id)
            return Outcome(TRANSIENT, f"{type(e).__name__}: {e}"), e
        finally:
            hard.close()
        pdus = response.get("pdus") if isinstance(response, dict) else None
        if not isinstance(pdus, dict):
            return Outcome(TRANSIENT, "answer without a pdus object"), None
        for event_id, res in pdus.items():
            if not isinstance(res, dict) or "error" in res:
                log.warning("TX [%s] %s: remote refused PDU %s: %s", dest, flight.txn_id,
                            event_id, res)
        log.debug("TX [%s] %s: 200 (%d PDUs, %d EDUs)", dest, flight.txn_id,
                  len(flight.body["pdus"]), len(flight.body["edus"]))
        return Outcome(OK), None

    # -- helpers used by the actor --------------------------------------------------------

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _may_send(self, destination: str) -> bool:
        if destination == self.server_name or not destination:
            return False
        wl = self.fc.domain_whitelist
        return wl is None or destination in wl

    def _doorbell(self, destination: str) -> None:
        at = self.backing_off(destination)
        if at is not None:
            self._arm_sweep(at)  # the rows wait in the store until the back-off ends
            return
        self._tell(destination, Wake())

    def _tell(self, destination: str, msg: Any, *, trace_id: str | None = None,
              sender: str | None = None) -> bool:
        """Tell the destination's actor; False if refused (the store keeps what matters)."""
        try:
            self.supervisor.tell(destination, msg, trace_id=trace_id, sender=sender)
            return True
        except ActorParked as e:
            self._arm_sweep(self.now_ms() + (e.retry_after_ms or 0) + 10)
        except MailboxFull:
            log.debug("remote/%s: mailbox full, %s dropped", destination, type(msg).__name__)
        except SupervisionError:
            pass  # shutting down
        return False

    def _first_position(self, destination: str, stream_ordering: int) -> None:
        """A destination's first PDU may never reach its actor: store the position a
        replay starts from (once; in a greenlet of its own, the caller is a room's hook)."""
        if destination in self._positioned:
            return
        if len(self._positioned) >= MAX_REMEMBERED:
            self._positioned.clear()
        self._positioned.add(destination)

        def _set() -> None:
            try:
                self.store.set_pdu_position(destination, stream_ordering - 1,
                                            only_if_unset=True)
            except Exception:  # noqa: BLE001 - the store is away (shutdown)
                log.exception("remote/%s: first PDU position not stored", destination)
                self._positioned.discard(destination)
        gevent.spawn(_set)

    def _note_clean_stop(self, destination: str, position: int) -> None:
        self._remember(self._clean_stops, destination, position)

    @staticmethod
    def _remember(memo: dict[str, Any], key: str, value: Any) -> None:
        if key not in memo and len(memo) >= MAX_REMEMBERED:
            memo.clear()
        memo[key] = value

    def _note_backoff(self, destination: str, retry_at: int | None) -> None:
        if retry_at is None:
            self._backoff.pop(destination, None)
        else:
            self._backoff[destination] = retry_at

    def _note_catching_up(self, destination: str, on: bool) -> None:
        if on:
            self._catching_up.add(destination)
        else:
            self._catching_up.discard(destination)

    def _touch_due(self, destination: str) -> bool:
        """Whether a success should move ``last_success_ts`` in the store (at most once a
        minute per healthy destination: no write per transaction for that alone)."""
        now = self.now_ms()
        if now - self._touched.get(destination, 0) < TOUCH_INTERVAL_MS:
            return False
        self._touched[destination] = now
        return True


def _http_outcome(e: RemoteHTTPError) -> Outcome:
    reason = f"HTTP {e.status} {e.errcode or ''} {e.error or ''}".strip()
    if e.status >= 500 or e.status in TRANSIENT_STATUSES or e.status < 400:
        retry_after = None
        if e.status == 429 and isinstance(e.body, dict):
            ra = e.body.get("retry_after_ms")
            if isinstance(ra, int) and not isinstance(ra, bool) and ra > 0:
                retry_after = ra
        return Outcome(TRANSIENT, reason, retry_after)
    return Outcome(REFUSED, reason)
