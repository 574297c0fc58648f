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
* **PDUs** (server-server-api "Transactions", "PDUs"; docs/federation.md "Outbound: the
  RemoteServerActor and catch-up"): ``pdu_position`` (in the store) is the events stream
  ordering the destination acknowledged.  *Live mode*: a window of at most ``queue_size``
  notes ``(stream_ordering, room_id)``, one per event :mod:`federation.pdu_out` found for the
  destination, sorted; a transaction reads the events of its first 50 notes (one query).
  *Catch-up mode* — past the window's bound, during and after a back-off, after a crash and
  at start-up: the notes are ignored and ``_next_pdus`` replays our events (and those we
  relay as the resident server, never to the server that sent them to us) after
  ``pdu_position`` from the store, in stream order, ≤ 50 per transaction, keeping those of
  rooms where the destination had a joined member at the event (``room_memberships``
  history: one query per page) or whose member event targets one of its users (a kick, a
  ban, a rescinded invite); per room only the newest ``catchup_max_per_room`` go (the peer
  fetches the gap with ``/get_missing_events`` or ``/backfill``).  The replay reads up to the
  events stream's current position and ends when it reached it; notes at or below that
  position are then duplicates and skipped.  PDUs go in wire form: the room version's PDU
  fields, redacted if we redacted them, without our ``unsigned``.

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

from federation.transaction_out import (
    MAX_EDUS, MAX_PAGES_PER_TURN, MAX_PDUS, REFUSED, TARGET_MEMBERSHIPS, TRANSIENT,
    Ephemeral, Flight, Outcome, PdusAvailable, TxnResult, Wake, wire_pdu,
)
from store.federation_queue import PduRow
from supervision import SupervisedActor, SupervisionError

if TYPE_CHECKING:
    from federation.sender import FederationSender

log = logging.getLogger(__name__)


# -- the actor's own bookkeeping -------------------------------------------------------------

@dataclass(slots=True)
class _Episode:
    """One catch-up pass over (start, head] of the events stream."""

    start: int
    head: int
    rooms: list[str]
    cutoffs: dict[str, int]   # room -> oldest stream ordering still replayed there


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
        #: the stream position the latest ``_next_pdus`` covered (what an ack moves
        #: ``pdu_position`` to), None if it covered nothing new
        self.pdu_batch_position: int | None = None
        #: notes at or below this were covered by the last replay (duplicates)
        self.live_floor = -1
        #: the last ``_next_pdus`` stopped at its page bound with more to read
        self.replay_more = False
        self._episode: _Episode | None = None
        self._taken: tuple[int, ...] = ()
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
        # a clean stop (live mode, nothing unacknowledged) resumes live: the note that woke
        # this incarnation is in its mailbox; anything else replays from the position
        clean = self.s._clean_stops.pop(self.destination, None)
        self.catching_up = row.pdu_position is not None and clean != row.pdu_position
        if row.pdu_position is not None and self.destination in self.s._pdu_overflow:
            self.s._pdu_overflow.discard(self.destination)
            self.catching_up = True
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
        if not self.catching_up and not self.window and self.flight is None \
                and self.held is None and self.pdu_position is not None:
            self.s._note_clean_stop(self.destination, self.pdu_position)

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
        self.pdu_batch_position, self.replay_more, self._taken = None, False, ()
        pdus = self._next_pdus(MAX_PDUS)
        upto = self.pdu_batch_position
        if self.catching_up and len(pdus) < MAX_PDUS and not self.replay_more:
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
            if upto is not None and (self.pdu_position is None or upto > self.pdu_position):
                # the replay passed events that are not for this destination: remember so
                self.pdu_position = upto
                self.s.store.set_pdu_position(self.destination, upto)
            if self.replay_more:
                self._wake_self()  # the next pages in the next turn
            return None
        body = {"origin": self.s.server_name, "origin_server_ts": int(now * 1000),
                "pdus": pdus, "edus": edus}
        return Flight(self.destination, self.s.new_txn_id(), self.trace_id or "", body,
                      [r.stream_id for r in rows], upto, oldest, window_taken=self._taken)

    def _next_pdus(self, limit: int) -> list[dict[str, Any]]:
        """The next PDUs to send (at most ``limit``), oldest first; sets
        ``pdu_batch_position`` to the stream position they cover (see the module
        docstring for the two modes)."""
        if self.catching_up:
            return self._replay(limit)
        return self._live(limit)

    def _live(self, limit: int) -> list[dict[str, Any]]:
        window = self.window
        while window:
            while window and window[0][0] <= self.live_floor:
                window.popleft()
            taken = tuple(so for so, _ in list(window)[:limit])
            if not taken:
                return []
            rows = [r for r in self.s.pdu_reads.at(taken)
                    if r.relayed_from != self.destination]  # never back to where it came from
            pdus = [p for p in map(wire_pdu, rows) if p is not None]
            if pdus:
                self.pdu_batch_position = taken[-1]
                self._taken = taken
                return pdus
            for _ in taken:  # none of them is an event of ours any more: forget them
                window.popleft()
        return []

    def _head(self) -> int:
        position = self.s.events_position
        return int(position()) if position is not None else self.s.pdu_reads.head()

    def _new_episode(self, start: int, head: int) -> _Episode:
        reads = self.s.pdu_reads
        rooms = reads.rooms_of(self.destination)
        cutoffs = reads.cutoffs(self.destination, rooms, start, head,
                                int(self.s.fc.catchup_max_per_room)) if rooms else {}
        return _Episode(start, head, rooms, cutoffs)

    def _replay(self, limit: int) -> list[dict[str, Any]]:
        """Catch-up: our events after ``pdu_position`` that this destination must get."""
        pos = self.pdu_position
        if pos is None:  # nothing was ever noted for it: nothing is owed
            self._end_replay(-1)
            return []
        ep = self._episode
        if ep is not None and not ep.start <= pos <= ep.head:
            ep = None
        out: list[dict[str, Any]] = []
        cursor, pages = pos, 0
        while len(out) < limit:
            if ep is None or cursor >= ep.head:
                head = self._head()
                if head <= cursor:
                    self._end_replay(cursor)
                    break
                if pages >= MAX_PAGES_PER_TURN:
                    self.replay_more = True
                    break
                ep = self._episode = self._new_episode(cursor, head)
                pages += 1
                continue
            if pages >= MAX_PAGES_PER_TURN:
                self.replay_more = True
                break
            rows = self.s.pdu_reads.page(self.destination, ep.rooms, cursor, ep.head, limit)
            pages += 1
            wanted = self._for_destination(rows, ep)
            full = False
            for row, keep in zip(rows, wanted):
                if keep:
                    if len(out) >= limit:
                        full = True
                        break
                    pdu = wire_pdu(row)
                    if pdu is not None:
                        out.append(pdu)
                cursor = row.stream_ordering
            if not full and len(rows) < limit:
                cursor = ep.head  # the page read the rest of (cursor, head]
        self.pdu_batch_position = cursor if cursor > pos else None
        return out

    def _end_replay(self, upto: int) -> None:
        self.catching_up = False
        self.s._note_catching_up(self.destination, False)
        self.live_floor = max(self.live_floor, upto)
        self._episode = None

    def _for_destination(self, rows: list[PduRow], ep: _Episode) -> list[bool]:
        """Which of ``rows`` (stream order) go to this destination: a user of it was joined
        in the room at the event (their latest membership row at or before it is a join),
        or the event is a kick / ban / leave / knock of one of its users; and the event is
        among its room's newest ``catchup_max_per_room``."""
        if not rows:
            return []
        dest = self.destination
        rooms = sorted({r.room_id for r in rows})
        members = self.s.pdu_reads.memberships(dest, rooms, rows[-1].stream_ordering)
        latest: dict[str, dict[str, str]] = {}
        joined: dict[str, int] = {}
        i, out = 0, []
        for row in rows:
            while i < len(members) and members[i][3] <= row.stream_ordering:
                room, user, membership, _ = members[i]
                i += 1
                was = latest.setdefault(room, {}).get(user)
                latest[room][user] = membership
                joined[room] = joined.get(room, 0) + (membership == "join") - (was == "join")
            cutoff = ep.cutoffs.get(row.room_id)
            if cutoff is not None and row.stream_ordering < cutoff \
                    or row.relayed_from == dest:
                out.append(False)
                continue
            target = row.membership_target
            out.append(joined.get(row.room_id, 0) > 0 or (
                target is not None and target[0] in TARGET_MEMBERSHIPS
                and target[1].partition(":")[2] == dest))
        return out

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
        upto = flight.pdu_upto  # never moves the stored position back (a late, lower note)
        if upto is not None and self.pdu_position is not None:
            upto = max(upto, self.pdu_position)
        if outcome.kind == REFUSED:
            log.warning("TX [%s] %s refused for good, %d EDUs dropped: %s", self.destination,
                        flight.txn_id, len(flight.body["edus"]), outcome.reason)
            self.s.store.acknowledge(self.destination, flight.outbox_ids, now_ms,
                                     pdu_position=upto, refused=outcome.reason)
        else:
            self.s.store.acknowledge(self.destination, flight.outbox_ids, now_ms,
                                     pdu_position=upto,
                                     touch=was_failing or self.s._touch_due(self.destination))
        if flight.pdu_upto is not None:
            self.pdu_position = max(flight.pdu_upto, self.pdu_position or flight.pdu_upto)
        if flight.window_taken:
            taken = set(flight.window_taken)
            self.window = deque(e for e in self.window if e[0] not in taken)
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
        self._start_replay()
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
        so = msg.stream_ordering
        if self.pdu_position is None:
            # the first event ever for this destination: a replay starts just before it
            self.pdu_position = so - 1
            self.s.store.set_pdu_position(self.destination, so - 1, only_if_unset=True)
        if self.destination in self.s._pdu_overflow:
            self.s._pdu_overflow.discard(self.destination)
            self._start_replay()  # a note was lost on the way (mailbox full, parked)
        if self.catching_up or so <= self.live_floor:
            return  # the replay reads the stream from pdu_position
        window = self.window
        if not window or so > window[-1][0]:
            window.append((so, msg.room_id))
        else:  # committed out of order (another room's writer was faster): keep it sorted
            i = len(window)
            while i > 0 and window[i - 1][0] > so:
                i -= 1
            if i > 0 and window[i - 1][0] == so:
                return
            window.insert(i, (so, msg.room_id))
        if len(window) > self.queue_size:
            self._start_replay()

    def _start_replay(self) -> None:
        self.window.clear()
        if not self.catching_up:
            self.catching_up = True
            self.s._note_catching_up(self.destination, True)

    def _wake_self(self) -> None:
        try:
            assert self.supervisor is not None
            self.supervisor.tell(self.key, Wake(), sender=self.name)
        except SupervisionError:
            pass  # parked or stopping: the sender's sweep picks it up later

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
