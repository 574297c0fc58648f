"""Backfill: older history of a room fetched from another server when a client's backward
``/messages`` reaches the start of what this server holds (server-server-api.md
"Backfilling and retrieving missing events", data/api/server-server/backfill.yaml).

``Backfiller.backfill(room_id) -> int`` is called by the client API (web/room_reads.py) with
the room's backward edge: the prev events its lowest held events name that are not held
(``store.room_reads.RoomReads.backward_edge``).  It asks up to ``MAX_SERVERS`` servers with
joined members in the room (never us) ``GET /backfill/{roomId}?v=<missing prevs>&limit=``,
checks every returned PDU as the inbound pipeline does (``PduPipeline.parse_remote``:
format, signatures, hash → redacted copy), fetches the state before each event whose prevs
stay unknown (the pipeline's gap step: ``/state_ids`` of the server, bounded) and missing
auth events (``/event_auth``), and hands the events to the room's actor as
``ReceivePdus(..., backfilled=True)`` in topological order.  It returns how many events the
actor stored (accepted, soft-failed or rejected); 0 when nothing could be had.

Bounds: one backfill per room at a time (a second caller waits for it and, when it
moved the edge, returns 1 so that the caller re-reads), ``total_timeout`` per call, ``fetch_timeout`` per request, ≤ ``MAX_LIMIT``
events asked, ≤ ``MAX_GAP_STATES`` gap states rebuilt per call; a backward edge no server
could extend is not tried again for ``retry_after`` seconds.
"""
from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import quote

import gevent.lock

from actors.room_messages import ReceivePdus
from federation.pdus import PduPipeline, _RoomRun, topological
from federation.room_queries import room_reads
from protocol.events import prev_event_ids
from protocol.room_versions import RoomVersion
from store.room_reads import RoomReads

log = logging.getLogger(__name__)

V1 = "/_matrix/federation/v1"
MAX_LIMIT = 100          # events asked of one /backfill
AROUND_LIMIT = 20        # events asked by fetch_at (an event named by another server)
MAX_SERVERS = 3          # servers tried per call
MAX_V = 20               # event ids in ``v``
MAX_GAP_STATES = 3       # events whose state before is rebuilt per call
TOTAL_TIMEOUT = 20.0     # s: one call, every server and the actor included
FETCH_TIMEOUT = 10.0     # s: each request
RETRY_AFTER = 30.0       # s: an edge nobody could extend is left alone this long
STORED = ("accepted", "soft_failed", "rejected")
CREATE = "m.room.create"


class Backfiller:
    def __init__(self, fed: Any, parts: dict[str, Any], *, total_timeout: float = TOTAL_TIMEOUT,
                 fetch_timeout: float = FETCH_TIMEOUT, retry_after: float = RETRY_AFTER
                 ) -> None:
        self.fed = fed
        self.parts = parts
        self.total_timeout = total_timeout
        self.fetch_timeout = fetch_timeout
        self.retry_after = retry_after
        self._locks: dict[str, gevent.lock.Semaphore] = {}
        self._dead: dict[str, tuple[frozenset[str], float]] = {}

    # ------------------------------------------------------------------ facts
    def _pipe(self) -> PduPipeline | None:
        pipe = self.fed.extras.get("pdu_pipeline")
        return pipe if isinstance(pipe, PduPipeline) else None

    def edge(self, room_id: str) -> list[str]:
        """The prev events the room's lowest held events name and this server lacks
        (the room's create event held as an outlier does not count: nothing is before it)."""
        _low, missing = RoomReads(self.fed.db).backward_edge(room_id)
        if not missing:
            return []
        held = room_reads(self.fed, self.parts).events.get_events(missing)
        return [m for m in missing
                if m not in held or held[m].event.get("type") != CREATE]

    def wanted(self, room_id: str) -> bool:
        """Whether a backfill could bring anything (federation on, an edge, not given up)."""
        if self.fed.client is None or self._pipe() is None:
            return False
        edge = self.edge(room_id)
        if not edge:
            return False
        dead = self._dead.get(room_id)
        return not (dead and dead[0] == frozenset(edge) and dead[1] > time.monotonic())

    def servers(self, room_id: str, edge_events: list[str]) -> list[str]:
        """Servers with joined members (not us), those of the senders of the lowest held
        events first (they were there), at most ``MAX_SERVERS``."""
        reads = room_reads(self.fed, self.parts)
        present = reads.servers_in_room(room_id) - {self.fed.server_name}
        first: list[str] = []
        for se in reads.events.get_events(edge_events).values():
            sender = se.event.get("sender")
            server = sender.split(":", 1)[1] if isinstance(sender, str) and ":" in sender \
                else None
            if server in present and server not in first:
                first.append(server)
        return (first + sorted(present - set(first)))[:MAX_SERVERS]

    # ------------------------------------------------------------------ the call
    def backfill(self, room_id: str, limit: int = MAX_LIMIT) -> int:
        """Fetch older history of ``room_id``; the number of events stored (see module)."""
        if not self.wanted(room_id):
            return 0
        seen = self.edge(room_id)
        lock = self._locks.setdefault(room_id, gevent.lock.Semaphore())
        if not lock.acquire(timeout=self.total_timeout):
            return 0
        try:
            edge = self.edge(room_id)
            if edge != seen:      # another caller's backfill moved the edge meanwhile
                return 1
            deadline = time.monotonic() + self.total_timeout
            stored = self._run(room_id, edge, max(1, min(limit, MAX_LIMIT)), deadline)
            if stored:
                self._dead.pop(room_id, None)
                return stored
            self._dead[room_id] = (frozenset(edge), time.monotonic() + self.retry_after)
            return 0
        except Exception:  # noqa: BLE001 - /messages answers what it has
            log.exception("backfill of %s failed", room_id)
            return 0
        finally:
            lock.release()

    def fetch_at(self, room_id: str, event_id: str, server: str, limit: int = AROUND_LIMIT
                 ) -> bool:
        """Backfill from ``server`` starting at ``event_id`` (an event another server named,
        e.g. its ``/timestamp_to_event`` answer): the event and up to ``limit - 1`` before
        it, checked and stored like any backfilled history.  True when the event is then in
        this server's timeline."""
        pipe = self._pipe()
        reads = room_reads(self.fed, self.parts)
        if pipe is None or reads.known_ids([event_id], outliers=False):
            return pipe is not None
        rv = reads.events.room_version(room_id)
        lock = self._locks.setdefault(room_id, gevent.lock.Semaphore())
        if rv is None or not lock.acquire(timeout=self.total_timeout):
            return False
        try:
            deadline = time.monotonic() + self.total_timeout
            self._from(pipe, server, room_id, rv, [event_id], max(1, min(limit, MAX_LIMIT)),
                       deadline)
        except Exception as e:  # noqa: BLE001 - the caller goes on without it
            log.info("backfill of %s at %s from %s failed: %s", room_id, event_id, server, e)
        finally:
            lock.release()
        return bool(reads.known_ids([event_id], outliers=False))

    def _run(self, room_id: str, edge: list[str], limit: int, deadline: float) -> int:
        pipe = self._pipe()
        reads = room_reads(self.fed, self.parts)
        rv = reads.events.room_version(room_id)
        if pipe is None or rv is None:
            return 0
        low, _ = RoomReads(self.fed.db).backward_edge(room_id)
        for server in self.servers(room_id, low):
            if deadline - time.monotonic() < 1.0:
                log.info("backfill of %s: out of time", room_id)
                break
            try:
                stored = self._from(pipe, server, room_id, rv, edge, limit, deadline)
            except Exception as e:  # noqa: BLE001 - the next server
                log.info("backfill of %s from %s failed: %s", room_id, server, e)
                continue
            if stored:
                return stored
        return 0

    def _from(self, pipe: PduPipeline, server: str, room_id: str, rv: RoomVersion,
              edge: list[str], limit: int, deadline: float) -> int:
        timeouts = _Timeouts(pipe, self.fetch_timeout, deadline)
        resp = self.fed.client.get_json(
            server, f"{V1}/backfill/{quote(room_id, safe='')}",
            query={"v": edge[:MAX_V], "limit": str(limit)}, timeout=timeouts.fetch_timeout,
            fail_fast=True)
        pdus = resp.get("pdus") if isinstance(resp, dict) else None
        if not isinstance(pdus, list):
            log.info("backfill of %s from %s: no 'pdus' list", room_id, server)
            return 0
        got: dict[str, dict[str, Any]] = {}
        for pdu in pdus[:limit * 2]:
            ev = pipe.parse_remote(pdu, room_id, rv)
            if ev is not None:
                got.setdefault(ev["event_id"], ev)
        reads = pipe.reads
        timeline = reads.known_ids(got, outliers=False)
        fresh = [ev for eid, ev in got.items() if eid not in timeline]
        if not fresh:
            return 0
        batch = topological(fresh)
        run = _RoomRun(pipe, server, room_id, rv, None)
        run.pipe = timeouts   # type: ignore[assignment]
        state_before = self._gaps(run, batch, rv)
        outliers = run._fill_auth(batch)
        if time.monotonic() >= deadline:
            return 0
        msg = ReceivePdus(origin=server, events=tuple(batch), outliers=tuple(outliers),
                          state_before=state_before or None, backfilled=True)
        reply = pipe.ask(room_id, msg, None, server)
        outcomes = [getattr(r, "outcome", None) for r in reply or ()]
        stored = sum(1 for o in outcomes if o in STORED)
        log.info("backfill of %s from %s: %d events, %d stored (%s)", room_id, server,
                 len(batch), stored, {o: outcomes.count(o) for o in set(outcomes)})
        return stored

    def _gaps(self, run: _RoomRun, batch: list[dict[str, Any]], rv: RoomVersion
              ) -> dict[str, dict[tuple[str, str], str]]:
        """The state before each event of ``batch`` whose prevs are neither in the batch
        nor held in the timeline (the create event of the batch does not count: the actor
        keeps the one it has)."""
        usable = {e["event_id"] for e in batch if e.get("type") != CREATE}
        prevs = {p for e in batch for p in prev_event_ids(e)} - usable
        held = run.reads.known_ids(prevs, outliers=False)
        creates = {e["event_id"] for e in batch if e.get("type") == CREATE
                   and e.get("state_key") == ""}
        out: dict[str, dict[tuple[str, str], str]] = {}
        rebuilt = 0
        for ev in batch:
            ps = prev_event_ids(ev)
            if all(p in usable or p in held for p in ps):
                continue
            if ps and all(p in creates for p in ps):
                out[ev["event_id"]] = {(CREATE, ""): ps[0]}
                continue
            if rebuilt >= MAX_GAP_STATES:
                continue
            rebuilt += 1
            try:
                state = run._state_before_gap(ev)
            except Exception as e:  # noqa: BLE001 - the actor answers "missing" for it
                log.info("state before backfilled %s not rebuilt: %s", ev["event_id"], e)
                continue
            if state is not None:
                out[ev["event_id"]] = state
        return out


class _Timeouts:
    """The pipeline as a :class:`_RoomRun` sees it, with backfill's request timeout
    (never past the call's deadline)."""

    def __init__(self, pipe: PduPipeline, fetch_timeout: float, deadline: float) -> None:
        self._pipe = pipe
        self._fetch = fetch_timeout
        self._deadline = deadline

    @property
    def fetch_timeout(self) -> float:
        return max(0.5, min(self._fetch, self._deadline - time.monotonic()))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)


def backfiller(fed: Any, parts: dict[str, Any]) -> Backfiller | None:
    """The server's Backfiller (built on first use); None while federation is off."""
    if fed is None or fed.client is None:
        return None
    bf = fed.extras.get("backfill")
    if bf is None:
        bf = fed.extras["backfill"] = Backfiller(fed, parts)
    return bf
