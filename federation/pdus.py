"""The inbound PDU pipeline: the PDUs of a ``/send`` transaction, from the wire to the room
actors (server-server-api.md "PDUs", "Checks performed on receipt of a PDU", "Backfilling and
retrieving missing events", "Retrieving events", "Server Access Control Lists").

``install(app, fed, parts)`` sets ``fed.pdu_handler = PduPipeline(fed, parts).handle``;
``handle(origin, pdus) -> {event_id: {} | {"error": "…"}}`` is called by
federation/inbound.py for each new transaction.  What it does, per PDU and per room:

1. **Identify**: the room's version comes from the local store; a PDU of a room this server
   does not know, or is no longer in, is answered with an error (and one whose id cannot be
   computed without the version is left out of the answer, as inbound.py does).  Event ids
   are the reference hash from room v3 on, the ``event_id`` field before.
2. **Group by room**; rooms run concurrently (one greenlet each) and one room's PDUs in
   transaction order; at most one pipeline run per room at a time, across concurrent
   transactions (a per-room lock), so a room sees its PDUs in arrival order.
3. **ACL**: an origin denied by the room's ``m.room.server_acl`` gets an error per PDU.
4. **Checks 1–3 of the spec**: format (``protocol.pdu_checks.format_problem``) and
   signatures (``fed.keyring.verify_event``) — a failure drops the PDU with an error entry;
   a content-hash mismatch passes on the redacted copy (``protocol.redaction.redact``).
   Steps 4–6 (auth, state before, soft fail) are the RoomActor's.
5. **Missing prev_events**: one ``POST /get_missing_events`` to the origin (earliest = the
   room's forward extremities, latest = the PDUs with unknown prevs, limit 10, min_depth =
   the room's lowest depth); what comes back is checked the same way and handed over before
   the PDUs, in topological order.
6. **Gap**: for a PDU whose prevs are still unknown, the state before it is rebuilt: for
   each prev, the state AFTER it — our own stored state for a prev we hold, else the
   origin's ``GET /state_ids?event_id=<prev>`` (which is the state BEFORE the prev, spec:
   "prior to considering any state changes induced by the requested event") plus the prev
   itself when it is a state event; several prevs are combined with the room version's
   state resolution.  The state and auth-chain events not held here are fetched
   (``GET /event/{id}``, at most ``EVENT_FETCH_CONCURRENCY`` at once; ``GET /state`` when
   more than ``STATE_BY_EVENTS_MAX`` are missing), checked, and passed as ``outliers``; the
   map as ``state_before[event_id]``.
7. **Missing auth events**: ``GET /event_auth/{roomId}/{eventId}`` from the origin (falling
   back to ``/event/{id}``), checked, passed as outliers.
8. ``parts["rooms"]`` receives ``ReceivePdus(origin, events, outliers, state_before)``; its
   ``PduResult`` per event becomes the answer: accepted, soft-failed and duplicate → ``{}``,
   rejected / missing → ``{"error": …}``.  A room actor that fails, is parked or does not
   answer gives its room's PDUs errors; the other rooms are unaffected.

Bounds: every remote call has ``fetch_timeout``; a transaction is answered within
``txn_timeout`` (a room still working then answers errors and finishes in the background);
at most ``MAX_GAP_PREVS`` prev states, ``MAX_STATE_IDS`` ids per state, ``MAX_AUTH_FETCHES``
auth-chain fetches per room per transaction.
"""
from __future__ import annotations

import heapq
import logging
from collections import defaultdict
from typing import Any, Iterable, Mapping
from urllib.parse import quote

import gevent
import gevent.pool

from actors.room_messages import ReceivePdus
from federation.edus import KeyedLock
from federation.room_queries import room_reads
from protocol.acl import server_allowed
from protocol.events import auth_event_ids, prev_event_ids, room_id_for_create_event_id
from protocol.hashing import check_content_hash, compute_event_id
from protocol.pdu_checks import format_problem
from protocol.redaction import redact
from protocol.room_versions import EventFormat, RoomVersion
from protocol.state_res import resolve_state
from store.room_federation_reads import RoomFederationReads

log = logging.getLogger(__name__)

V1 = "/_matrix/federation/v1"
TXN_TIMEOUT = 60.0            # s: a transaction's PDUs are answered within this
FETCH_TIMEOUT = 20.0          # s: each request to the origin
ASK_TIMEOUT = 30.0            # s: the room actor's answer to ReceivePdus
MISSING_LIMIT = 10            # events asked of /get_missing_events
MAX_GAP_PREVS = 10            # prev states fetched per room per transaction
MAX_STATE_IDS = 20_000        # ids in one /state_ids answer (state + auth chain)
STATE_BY_EVENTS_MAX = 50      # more missing events than this: one /state instead
EVENT_FETCH_CONCURRENCY = 10  # /event requests in flight per room
MAX_AUTH_FETCHES = 10         # /event_auth requests per room per transaction
MAX_EVENT_FALLBACK = 50       # single /event fetches for auth events /event_auth missed

ACCEPTED_OUTCOMES = ("accepted", "soft_failed", "duplicate")
StateKey = tuple[str, str]


class FetchFailed(Exception):
    """A remote answer that cannot be used."""


def _path_id(value: str) -> str:
    return quote(value, safe="")


def topological(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``events`` with every event after those of the set it references (prev_events and
    auth_events); ties by depth, then by the given order.  Cycles (only in forged input)
    fall back to depth order for what is left."""
    evs = list(events)
    ids = {e["event_id"]: i for i, e in enumerate(evs)}
    deps: dict[str, set[str]] = {}
    for e in evs:
        try:
            refs = set(prev_event_ids(e)) | set(auth_event_ids(e))
        except ValueError:
            refs = set()
        deps[e["event_id"]] = {r for r in refs if r in ids and r != e["event_id"]}
    children: dict[str, list[str]] = defaultdict(list)
    for eid, ds in deps.items():
        for d in ds:
            children[d].append(eid)

    def key(eid: str) -> tuple[int, int, str]:
        d = evs[ids[eid]].get("depth", 0)
        return (d if isinstance(d, int) else 0, ids[eid], eid)

    ready = [key(eid) for eid, ds in deps.items() if not ds]
    heapq.heapify(ready)
    out: list[dict[str, Any]] = []
    left = {eid: len(ds) for eid, ds in deps.items()}
    while ready:
        _, _, eid = heapq.heappop(ready)
        out.append(evs[ids[eid]])
        for c in children[eid]:
            left[c] -= 1
            if left[c] == 0:
                heapq.heappush(ready, key(c))
    if len(out) < len(evs):
        done = {e["event_id"] for e in out}
        out.extend(sorted((e for e in evs if e["event_id"] not in done),
                          key=lambda e: key(e["event_id"])))
    return out


class PduPipeline:
    def __init__(self, fed: Any, parts: dict[str, Any], *,
                 reads: RoomFederationReads | None = None, txn_timeout: float = TXN_TIMEOUT,
                 fetch_timeout: float = FETCH_TIMEOUT, ask_timeout: float = ASK_TIMEOUT
                 ) -> None:
        self.fed = fed
        self.parts = parts
        self.reads = reads or room_reads(fed, parts)
        self.txn_timeout = txn_timeout
        self.fetch_timeout = fetch_timeout
        self.ask_timeout = ask_timeout
        self._locks = KeyedLock()

    # ------------------------------------------------------------------ the transaction
    def handle(self, origin: str, pdus: list[Any]) -> dict[str, dict[str, Any]]:
        """The ``pdus`` answer of a transaction from ``origin``."""
        trace_id = _request_id()
        results: dict[str, dict[str, Any]] = {}
        rooms: dict[str, tuple[RoomVersion, list[dict[str, Any]]]] = {}
        joined: dict[str, bool] = {}
        for pdu in pdus:
            room_id, rv, ev, error = self._identify(pdu, joined)
            if ev is None:
                if error is not None and isinstance(pdu, dict) \
                        and isinstance(pdu.get("event_id"), str):
                    results[pdu["event_id"]] = {"error": error}
                continue
            if error is not None:
                results[ev["event_id"]] = {"error": error}
                continue
            assert room_id is not None and rv is not None
            rooms.setdefault(room_id, (rv, []))[1].append(ev)
        jobs = {room_id: gevent.spawn(self._room_safe, origin, room_id, rv, evs, trace_id)
                for room_id, (rv, evs) in rooms.items()}
        gevent.joinall(list(jobs.values()), timeout=self.txn_timeout)
        for room_id, job in jobs.items():
            if job.ready() and job.successful():
                results.update(job.value)
                continue
            log.warning("PDUs of %s from %s not processed within %.0f s", room_id, origin,
                        self.txn_timeout)
            for ev in rooms[room_id][1]:
                results.setdefault(ev["event_id"], {
                    "error": "Timed out processing the room's events; retry later"})
        return results

    def _identify(self, pdu: Any, joined: dict[str, bool]) -> tuple[str | None, RoomVersion | None,
                                           dict[str, Any] | None, str | None]:
        """(room_id, version, event with event_id, error) for one PDU of a transaction."""
        if not isinstance(pdu, dict):
            return None, None, None, "not an object"
        room_id = pdu.get("room_id")
        if not isinstance(room_id, str):
            return None, None, None, "no room_id"
        rv = self.reads.events.room_version(room_id)
        if rv is None:
            return room_id, None, None, "unknown room"
        ev = self._with_id(pdu, rv)
        if ev is None:
            return room_id, rv, None, "no event id can be computed"
        if room_id not in joined:
            joined[room_id] = self.reads.server_in_room(room_id, self.fed.server_name)
        if not joined[room_id]:
            return room_id, rv, ev, "this server is not in the room"
        return room_id, rv, ev, None

    @staticmethod
    def _with_id(pdu: dict[str, Any], rv: RoomVersion) -> dict[str, Any] | None:
        ev = dict(pdu)
        if rv.event_format == EventFormat.V1:
            return ev if isinstance(ev.get("event_id"), str) else None
        try:
            ev["event_id"] = compute_event_id(pdu, rv)
        except Exception:  # noqa: BLE001 - unhashable input has no id
            return None
        if rv.room_id_is_create_event_hash and "room_id" not in ev \
                and ev.get("type") == "m.room.create" and ev.get("state_key") == "":
            ev["room_id"] = room_id_for_create_event_id(ev["event_id"])
        return ev

    def _room_safe(self, origin: str, room_id: str, rv: RoomVersion,
                   events: list[dict[str, Any]], trace_id: str | None
                   ) -> dict[str, dict[str, Any]]:
        try:
            with self._locks(room_id):
                return _RoomRun(self, origin, room_id, rv, trace_id).run(events)
        except Exception as e:  # noqa: BLE001 - one room's failure stays with that room
            log.exception("PDUs of %s from %s failed", room_id, origin)
            return {ev["event_id"]: {"error": f"Failed to process the event: "
                                              f"{type(e).__name__}"} for ev in events}

    # ------------------------------------------------------------------ shared steps
    def check(self, ev: dict[str, Any], rv: RoomVersion) -> tuple[dict[str, Any] | None,
                                                                   str | None]:
        """Spec checks 1–3: (the event to use, None) or (None, why it is dropped)."""
        problem = format_problem(rv, ev)
        if problem is not None:
            return None, f"Invalid event format: {problem}"
        keyring = self.fed.keyring
        if keyring is None:
            return None, "Signatures cannot be checked on this server"
        try:
            keyring.verify_event(ev, rv)
        except Exception as e:  # noqa: BLE001 - SignatureError, KeyLookupError, bad keys…
            return None, f"Signature check failed: {e}"
        if not check_content_hash(ev, rv):
            log.info("event %s: content hash mismatch, using the redacted copy",
                     ev.get("event_id"))
            return redact(ev, rv), None
        return ev, None

    def parse_remote(self, pdu: Any, room_id: str, rv: RoomVersion) -> dict[str, Any] | None:
        """A PDU fetched from another server, checked (1–3) and of ``room_id``; else None."""
        if not isinstance(pdu, dict):
            return None
        ev = self._with_id(pdu, rv)
        if ev is None or ev.get("room_id") != room_id:
            return None
        checked, problem = self.check(ev, rv)
        if checked is None:
            log.info("fetched event %s dropped: %s", ev.get("event_id"), problem)
        return checked

    def ask(self, room_id: str, msg: Any, trace_id: str | None, origin: str) -> Any:
        rooms = self.parts["rooms"]
        sup = getattr(rooms, "supervisor", None)
        if sup is not None:   # the real RoomService: no Flask context needed
            return sup.ask(room_id, msg, timeout=self.ask_timeout, trace_id=trace_id,
                           sender=f"federation /send from {origin}"[:120])
        return rooms.ask(room_id, msg)


class _RoomRun:
    """One room's part of one transaction (under the room's lock)."""

    def __init__(self, pipe: PduPipeline, origin: str, room_id: str, rv: RoomVersion,
                 trace_id: str | None) -> None:
        self.pipe = pipe
        self.origin = origin
        self.room_id = room_id
        self.rv = rv
        self.trace_id = trace_id
        self.reads = pipe.reads
        self.client = pipe.fed.client
        self.fetched: dict[str, dict[str, Any]] = {}   # outlier candidates by id
        self._gap_prevs = 0

    # -------------------------------------------------------------- main line
    def run(self, events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        results: dict[str, dict[str, Any]] = {}
        if not server_allowed(self.reads.acl_content(self.room_id), self.origin):
            return {ev["event_id"]: {"error": "Server is banned from this room by its"
                                              " server ACL"} for ev in events}
        fresh: list[dict[str, Any]] = []
        seen: set[str] = set()
        known = self.reads.events.get_events([ev["event_id"] for ev in events])
        for ev in events:
            eid = ev["event_id"]
            if eid in seen:
                continue
            seen.add(eid)
            se = known.get(eid)
            if se is not None and not se.outlier:
                results[eid] = {}          # already in the room: nothing to do
                continue
            checked, problem = self.pipe.check(ev, self.rv)
            if checked is None:
                results[eid] = {"error": problem}
                continue
            fresh.append(checked)
        if not fresh:
            return results
        batch = self._fill_prevs(fresh)
        state_before = self._gaps(batch)
        outliers = self._fill_auth(batch)
        msg = ReceivePdus(origin=self.origin, events=tuple(batch), outliers=tuple(outliers),
                          state_before=state_before or None)
        try:
            reply = self.pipe.ask(self.room_id, msg, self.trace_id, self.origin)
        except Exception as e:  # noqa: BLE001 - crashed, parked, timed out, full, 404…
            detail = getattr(e, "detail", None) or getattr(e, "error", None) or \
                type(e).__name__
            log.warning("room %s refused PDUs from %s: %s", self.room_id, self.origin, e)
            for ev in fresh:
                results[ev["event_id"]] = {"error": f"The room could not take the event:"
                                                    f" {detail}"}
            return results
        by_id = {getattr(r, "event_id", None): r for r in (reply or ())}
        for ev in fresh:
            r = by_id.get(ev["event_id"])
            outcome = getattr(r, "outcome", None)
            if outcome in ACCEPTED_OUTCOMES:
                results[ev["event_id"]] = {}
            elif r is None:
                results[ev["event_id"]] = {"error": "The event was not processed"}
            else:
                reason = getattr(r, "reason", None)
                results[ev["event_id"]] = {"error": f"{outcome}: {reason}" if reason
                                           else str(outcome)}
        return results

    # -------------------------------------------------------------- helpers
    def _timeline_known(self, ids: Iterable[str]) -> set[str]:
        return self.reads.known_ids(ids, outliers=False)

    def _get(self, path: str, query: Mapping[str, Any] | None = None) -> Any:
        if self.client is None:
            raise FetchFailed("no federation client")
        return self.client.get_json(self.origin, path, query=query,
                                    timeout=self.pipe.fetch_timeout)

    def _missing_prevs(self, batch: list[dict[str, Any]]) -> dict[str, list[str]]:
        """event id → its prevs that are neither in ``batch`` nor in the room's timeline."""
        in_batch = {e["event_id"] for e in batch}
        wanted = {p for e in batch for p in prev_event_ids(e)} - in_batch
        have = self._timeline_known(wanted)
        out: dict[str, list[str]] = {}
        for e in batch:
            miss = [p for p in prev_event_ids(e) if p not in in_batch and p not in have]
            if miss:
                out[e["event_id"]] = miss
        return out

    # -------------------------------------------------------------- 5. missing prevs
    def _fill_prevs(self, fresh: list[dict[str, Any]]) -> list[dict[str, Any]]:
        missing = self._missing_prevs(fresh)
        if not missing or self.client is None:
            return topological(fresh)
        body = {"earliest_events": self.reads.forward_extremities(self.room_id),
                "latest_events": list(missing), "limit": MISSING_LIMIT,
                "min_depth": self.reads.min_depth(self.room_id)}
        try:
            resp = self.client.post_json(
                self.origin, f"{V1}/get_missing_events/{_path_id(self.room_id)}", body,
                timeout=self.pipe.fetch_timeout)
            got = resp.get("events") if isinstance(resp, dict) else None
            if not isinstance(got, list):
                raise FetchFailed("no 'events' list")
        except Exception as e:  # noqa: BLE001 - a failed fetch leaves a gap, handled next
            log.info("get_missing_events in %s from %s failed: %s", self.room_id,
                     self.origin, e)
            return topological(fresh)
        in_batch = {e["event_id"] for e in fresh}
        extra: dict[str, dict[str, Any]] = {}
        for pdu in got[:MISSING_LIMIT * 2]:
            ev = self.pipe.parse_remote(pdu, self.room_id, self.rv)
            if ev is not None and ev["event_id"] not in in_batch:
                extra[ev["event_id"]] = ev
        have = self._timeline_known(extra)
        return topological([e for eid, e in extra.items() if eid not in have] + fresh)

    # -------------------------------------------------------------- 6. gaps
    def _gaps(self, batch: list[dict[str, Any]]) -> dict[str, dict[StateKey, str]]:
        state_before: dict[str, dict[StateKey, str]] = {}
        for eid, _missing in self._missing_prevs(batch).items():
            ev = next(e for e in batch if e["event_id"] == eid)
            try:
                state = self._state_before_gap(ev)
            except Exception as e:  # noqa: BLE001 - the actor will answer "missing"
                log.info("state before %s in %s not rebuilt: %s", eid, self.room_id, e)
                continue
            if state is not None:
                state_before[eid] = state
        return state_before

    def _state_before_gap(self, ev: dict[str, Any]) -> dict[StateKey, str] | None:
        prevs = prev_event_ids(ev)
        local = self._timeline_known(prevs)
        sets: list[dict[StateKey, str]] = []
        for p in prevs:
            if p in local:
                after = self.reads.state_ids_after(p)
                if after is None:
                    raise FetchFailed(f"no state stored after {p}")
            else:
                if self._gap_prevs >= MAX_GAP_PREVS:
                    raise FetchFailed("too many gaps in one transaction")
                self._gap_prevs += 1
                after = self._remote_state_after(p)
            sets.append(after)
        if not sets:
            return None
        if len(sets) == 1:
            return sets[0]
        return resolve_state(self.rv, sets, self._lookup, pause=lambda: gevent.sleep(0))

    def _lookup(self, event_id: str) -> Mapping[str, Any] | None:
        ev = self.fetched.get(event_id)
        if ev is not None:
            return ev
        se = self.reads.events.get_event(event_id)
        return se.event if se is not None and se.rejection is None else None

    def _remote_state_after(self, prev_id: str) -> dict[StateKey, str]:
        """The state after ``prev_id`` as the origin has it: /state_ids (the state before
        it) plus the prev itself when it is a state event."""
        resp = self._get(f"{V1}/state_ids/{_path_id(self.room_id)}", {"event_id": prev_id})
        if not isinstance(resp, dict):
            raise FetchFailed("state_ids answer is not an object")
        pdu_ids, chain_ids = resp.get("pdu_ids"), resp.get("auth_chain_ids")
        if not isinstance(pdu_ids, list) or not isinstance(chain_ids, list) or not all(
                isinstance(i, str) for i in pdu_ids + chain_ids):
            raise FetchFailed("state_ids answer is malformed")
        if len(pdu_ids) + len(chain_ids) > MAX_STATE_IDS:
            raise FetchFailed("state_ids answer is too large")
        wanted = set(pdu_ids) | set(chain_ids) | {prev_id}
        self._fetch_events(wanted, prev_id)
        state: dict[StateKey, str] = {}
        for sid in pdu_ids:
            sev = self._lookup(sid)
            if sev is None or not isinstance(sev.get("state_key"), str):
                raise FetchFailed(f"state event {sid} could not be fetched")
            state[(sev["type"], sev["state_key"])] = sid
        prev = self._lookup(prev_id)
        if prev is None:
            raise FetchFailed(f"prev event {prev_id} could not be fetched")
        if isinstance(prev.get("state_key"), str):
            state[(prev["type"], prev["state_key"])] = prev_id
        elif prev_id not in chain_ids:
            self.fetched.pop(prev_id, None)   # only its state mattered; not an outlier
        return state

    def _fetch_events(self, wanted: set[str], at: str) -> None:
        """Fetch the events of ``wanted`` that are neither stored here nor fetched yet."""
        need = set(wanted) - set(self.fetched)
        need -= self.reads.known_ids(need)
        if not need:
            return
        if len(need) > STATE_BY_EVENTS_MAX:
            try:
                resp = self._get(f"{V1}/state/{_path_id(self.room_id)}", {"event_id": at})
                pdus = (resp.get("pdus") or []) + (resp.get("auth_chain") or []) \
                    if isinstance(resp, dict) else []
                for pdu in pdus[:MAX_STATE_IDS] if isinstance(pdus, list) else []:
                    ev = self.pipe.parse_remote(pdu, self.room_id, self.rv)
                    if ev is not None and ev["event_id"] in need:
                        self.fetched[ev["event_id"]] = ev
            except Exception as e:  # noqa: BLE001 - fall back to single events
                log.info("GET /state at %s from %s failed: %s", at, self.origin, e)
            need -= set(self.fetched)
        self._fetch_single(need)

    def _fetch_single(self, ids: Iterable[str]) -> None:
        pool = gevent.pool.Pool(EVENT_FETCH_CONCURRENCY)

        def one(event_id: str) -> None:
            try:
                resp = self._get(f"{V1}/event/{_path_id(event_id)}")
                pdus = resp.get("pdus") if isinstance(resp, dict) else None
                if not isinstance(pdus, list) or not pdus:
                    return
                ev = self.pipe.parse_remote(pdus[0], self.room_id, self.rv)
                if ev is not None and ev["event_id"] == event_id:
                    self.fetched[event_id] = ev
            except Exception as e:  # noqa: BLE001 - a missing event is reported later
                log.info("GET /event/%s from %s failed: %s", event_id, self.origin, e)

        for event_id in ids:
            pool.spawn(one, event_id)
        pool.join()

    # -------------------------------------------------------------- 7. auth events
    def _fill_auth(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The outliers to hand over: fetched state/auth events not stored here, plus the
        missing auth events of everything handed over."""
        in_batch = {e["event_id"] for e in batch}
        fetches = 0
        while True:
            everything = batch + [e for i, e in self.fetched.items() if i not in in_batch]
            present = in_batch | set(self.fetched)
            cited = {a for e in everything for a in auth_event_ids(e)} - present
            missing = cited - self.reads.known_ids(cited)
            if not missing or self.client is None:
                break
            citer = next((e for e in everything
                          if missing.intersection(auth_event_ids(e))), None)
            if citer is None or fetches >= MAX_AUTH_FETCHES:
                break
            fetches += 1
            before = len(self.fetched)
            self._fetch_auth_chain(citer["event_id"])
            if len(self.fetched) == before:   # nothing new from /event_auth: one by one
                self._fetch_single(sorted(missing)[:MAX_EVENT_FALLBACK])
                break
        stored = self.reads.known_ids(self.fetched)
        return topological(e for i, e in self.fetched.items()
                           if i not in in_batch and i not in stored)

    def _fetch_auth_chain(self, event_id: str) -> None:
        try:
            resp = self._get(f"{V1}/event_auth/{_path_id(self.room_id)}/"
                             f"{_path_id(event_id)}")
            chain = resp.get("auth_chain") if isinstance(resp, dict) else None
            if not isinstance(chain, list):
                raise FetchFailed("no 'auth_chain' list")
        except Exception as e:  # noqa: BLE001 - what is still missing is rejected later
            log.info("GET /event_auth for %s from %s failed: %s", event_id, self.origin, e)
            return
        for pdu in chain[:MAX_STATE_IDS]:
            ev = self.pipe.parse_remote(pdu, self.room_id, self.rv)
            if ev is not None:
                self.fetched.setdefault(ev["event_id"], ev)


def _request_id() -> str | None:
    try:
        from flask import g, has_request_context  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        return None
    return getattr(g, "request_id", None) if has_request_context() else None


def install(app: Any, fed: Any, parts: dict[str, Any]) -> None:
    """Set ``fed.pdu_handler`` (no routes: PDUs arrive through federation/inbound.py)."""
    pipe = PduPipeline(fed, parts)
    fed.extras["pdu_pipeline"] = pipe
    fed.pdu_handler = pipe.handle
