"""The logic behind the room read endpoints (web/room_reads.py): walking a room's timeline or
an event's relations in topological order with a filter and history visibility, and shaping
/messages, /context, /relations and /threads responses.

Every walk is bounded: it stops after ``limit`` served events or after scanning
``SCAN_CAP`` rows, and then hands out a token for the cut where it stopped, so a filter or a
visibility rule that hides most of a room costs the client another request, not the server
an unbounded scan.  A page's ``end`` / ``next_batch`` is omitted only when the walk reached
the end of what there is.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from atrium.errors import MatrixError
from store.events import StoredEvent
from store.room_reads import Key, RoomReads, Row
from web.client_events import serve_events
from web.event_filter import RoomEventFilter
from web.pagination import END, START, Token, stream_token, topo_token
from web.room_service import RoomService
from web.visibility import Visibility

SCAN_CAP = 2000
Fetch = Callable[[Key | None, Key | None, bool, int], list[Row]]


@dataclass
class Page:
    events: list[StoredEvent]
    next_cut: Key | None          # where the next page starts; None: nothing more


@dataclass
class Reader:
    """What one request reads with: the service, the user and a per-request visibility."""

    svc: RoomService
    user_id: str
    device_id: str | None
    reads: RoomReads = field(init=False)
    vis: Visibility = field(init=False)

    def __post_init__(self) -> None:
        self.reads = RoomReads(self.svc.db)
        self.vis = Visibility(self.svc.events, self.user_id)

    def cut(self, room_id: str, tok: Token | None, default: Key) -> Key:
        if tok is None:
            return default
        if tok.is_stream:
            return self.reads.topological_cut(room_id, tok.stream)
        return (tok.depth or 0, tok.stream)

    def serve(self, ses: list[StoredEvent]) -> list[dict[str, Any]]:
        return serve_events(self.svc.events, ses, self.user_id, device_id=self.device_id,
                            visibility=self.vis)

    def walk(self, fetch: Fetch, *, lo: Key | None, hi: Key | None, backwards: bool,
             limit: int, flt: RoomEventFilter | None = None) -> Page:
        """Up to ``limit`` visible, matching events with ``lo < key <= hi``."""
        collected: list[StoredEvent] = []
        if limit <= 0:
            return Page([], hi if backwards else lo)
        batch = min(max(limit * 2, 20), 500)
        scanned = 0
        while True:
            rows = fetch(lo, hi, backwards, batch)
            if not rows:
                return Page(collected, None)
            ses = self.svc.events.get_events(r.event_id for r in rows)
            cands = [ses[r.event_id] for r in rows if r.event_id in ses]
            if flt is not None:
                cands = [se for se in cands if flt.matches(se)]
            keep = {se.event_id: se for se in self.vis.filter(cands)}  # as served
            short = len(rows) < batch
            for i, r in enumerate(rows):
                if r.event_id not in keep:
                    continue
                collected.append(keep[r.event_id])
                if len(collected) == limit:
                    if short and i == len(rows) - 1:
                        return Page(collected, None)
                    return Page(collected, _past(r, backwards))
            last = rows[-1]
            if backwards:
                hi = _past(last, True)
            else:
                lo = _past(last, False)
            scanned += len(rows)
            if short:
                return Page(collected, None)
            if scanned >= SCAN_CAP:
                return Page(collected, hi if backwards else lo)

    def timeline_fetch(self, room_id: str, flt: RoomEventFilter | None) -> Fetch:
        sql = flt.sql() if flt is not None else None
        return lambda lo, hi, b, n: self.reads.timeline(room_id, lo, hi, b, n, sql)

    def member_state(self, ses: list[StoredEvent], at: StoredEvent | None,
                     extra: set[str] | None = None) -> list[dict[str, Any]]:
        """Lazy-loaded members: the member events of the senders of ``ses`` in the state at
        ``at``."""
        if at is None or at.state_group is None:
            return []
        senders = sorted({str(se.event.get("sender")) for se in ses} | (extra or set()))
        keys = [("m.room.member", s) for s in senders]
        found = self.reads.state_keys_at([at.state_group], keys).get(at.state_group, {})
        evs = self.svc.events.get_events(found.values())
        return self.serve([evs[e] for e in found.values() if e in evs])


def _past(r: Row, backwards: bool) -> Key:
    """The cut just past row ``r`` in the direction of the walk."""
    return (r.depth, r.stream - 1) if backwards else r.key


def messages(rd: Reader, room_id: str, *, from_tok: Token | None, from_raw: str | None,
             to_tok: Token | None, backwards: bool, limit: int,
             flt: RoomEventFilter) -> dict[str, Any]:
    """GET /rooms/{roomId}/messages (client-server-api "Getting events for a room")."""
    if from_tok is None:
        start = rd.reads.room_end(room_id) if backwards else START
        start_raw = topo_token(start)
    else:
        start, start_raw = rd.cut(room_id, from_tok, START), str(from_raw)
    to = rd.cut(room_id, to_tok, START) if to_tok is not None else None
    if not flt.allows_room(room_id):
        return {"chunk": [], "start": start_raw}
    lo, hi = (to, start) if backwards else (start, to)
    page = rd.walk(rd.timeline_fetch(room_id, flt), lo=lo, hi=hi, backwards=backwards,
                   limit=limit, flt=flt)
    out: dict[str, Any] = {"chunk": rd.serve(page.events), "start": start_raw}
    if page.next_cut is not None:
        out["end"] = topo_token(page.next_cut)
    elif not backwards and page.events:
        # forwards, the newest event is not the end for good: later events will follow it,
        # and a client continues from ``end`` (as Synapse gives it)
        out["end"] = topo_token(_key(page.events[-1]))
    if flt.lazy_load_members and page.events:
        state = rd.member_state(page.events, page.events[-1])
        if state:
            out["state"] = state
    return out


def timeline_event(rd: Reader, room_id: str, event_id: str) -> StoredEvent:
    """The event, if it is served in this room's timeline and the user may see it; else 404."""
    se = rd.svc.events.get_event(event_id)
    if se is not None and se.room_id == room_id and not se.outlier \
            and se.rejection is None and not se.soft_failed:
        se = rd.vis.served(se)   # as served: pruned for an erased sender
    else:
        se = None
    if se is None:
        raise MatrixError(404, "M_NOT_FOUND", "Event not found")
    return se


def _key(se: StoredEvent) -> Key:
    return (int(se.event.get("depth", 0)), se.stream_ordering)


def context(rd: Reader, room_id: str, event_id: str, *, limit: int,
            flt: RoomEventFilter) -> dict[str, Any]:
    """GET /rooms/{roomId}/context/{eventId} (modules/event_context.md)."""
    se = timeline_event(rd, room_id, event_id)
    key = _key(se)
    n_before = limit // 2
    fetch = rd.timeline_fetch(room_id, flt)
    ok = flt.allows_room(room_id)
    before = rd.walk(fetch, lo=None, hi=(key[0], key[1] - 1), backwards=True,
                     limit=n_before if ok else 0, flt=flt)
    after = rd.walk(fetch, lo=key, hi=None, backwards=False,
                    limit=limit - n_before if ok else 0, flt=flt)
    start = before.next_cut or ((_key(before.events[-1])[0], _key(before.events[-1])[1] - 1)
                                if before.events else (key[0], key[1] - 1))
    end = after.next_cut or (_key(after.events[-1]) if after.events else key)
    last = after.events[-1] if after.events else se
    if flt.lazy_load_members:
        state = rd.member_state(before.events + after.events, last,
                                extra={str(se.event.get("sender"))})
    else:
        ids = rd.svc.state_groups.get_state(last.state_group) \
            if last.state_group is not None else {}
        evs = rd.svc.events.get_events(ids.values())
        state = rd.serve([evs[e] for e in ids.values() if e in evs and flt.matches(evs[e])])
    return {"event": rd.serve([se])[0], "events_before": rd.serve(before.events),
            "events_after": rd.serve(after.events), "start": topo_token(start),
            "end": topo_token(end), "state": state}


def relations(rd: Reader, room_id: str, event_id: str, *, rel_type: str | None,
              event_type: str | None, from_tok: Token | None, from_raw: str | None,
              to_tok: Token | None, backwards: bool, limit: int,
              recurse: bool | None) -> dict[str, Any]:
    """GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]"""
    timeline_event(rd, room_id, event_id)
    level = 3 if recurse else 1
    start = rd.cut(room_id, from_tok, END if backwards else START) if from_tok else None
    to = rd.cut(room_id, to_tok, START) if to_tok is not None else None
    lo, hi = (to, start) if backwards else (start, to)

    def fetch(lo: Key | None, hi: Key | None, b: bool, n: int) -> list[Row]:
        return rd.reads.relation_children(room_id, event_id, rel_type=rel_type,
                                          event_type=event_type, max_level=level, lo=lo,
                                          hi=hi, backwards=b, limit=n)

    page = rd.walk(fetch, lo=lo, hi=hi, backwards=backwards, limit=limit)
    out: dict[str, Any] = {"chunk": rd.serve(page.events)}
    if page.next_cut is not None:
        out["next_batch"] = topo_token(page.next_cut)
    if from_raw is not None:
        out["prev_batch"] = from_raw
    if recurse is not None:
        out["recursion_depth"] = level
    return out


def threads(rd: Reader, room_id: str, *, participated: bool, from_tok: Token | None,
            limit: int) -> dict[str, Any]:
    """GET /_matrix/client/v1/rooms/{roomId}/threads (modules/threading.md): thread roots,
    latest activity first; the token is the stream position of the next root's latest
    reply."""
    before = from_tok.stream if from_tok is not None else None
    roots: list[StoredEvent] = []
    scanned = 0
    batch = min(max(limit * 2, 10), 200)
    while True:
        rows = rd.reads.thread_roots(room_id, before=before, limit=batch,
                                     participant=rd.user_id if participated else None)
        evs = rd.svc.events.get_events(e for e, _ in rows)
        keep = {se.event_id: se for se in rd.vis.filter(evs[e] for e, _ in rows if e in evs)}
        for i, (eid, latest) in enumerate(rows):
            if eid in keep:
                roots.append(keep[eid])
                if len(roots) == limit:
                    more = i < len(rows) - 1 or len(rows) == batch
                    return _threads_out(rd, roots, latest - 1 if more else None)
        scanned += len(rows)
        if len(rows) < batch:
            return _threads_out(rd, roots, None)
        before = rows[-1][1] - 1
        if scanned >= SCAN_CAP:
            return _threads_out(rd, roots, before)


def _threads_out(rd: Reader, roots: list[StoredEvent], nxt: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"chunk": rd.serve(roots)}
    if nxt is not None:
        out["next_batch"] = stream_token(nxt)
    return out

