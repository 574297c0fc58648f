"""``POST /_matrix/client/v3/search`` (client-server-api "Server Side Search",
modules/search.md): the ``room_events`` category over the index in store/search.py, and
the wiring of that index's follower (the rooms' ``on_persisted`` hook wakes it).

What a user finds: events of the indexed kinds in rooms they are or were in (any
membership, a forgotten room only while they are back in it) that history visibility lets
them see (web/visibility.py, for every hit), never redacted ones, narrowed by the
request's ``keys`` and ``filter``.  ``order_by``:

* ``recent``: newest first (stream order);
* ``rank`` (the default): the newest ``RANK_WINDOW`` matches ranked by relevance, best
  first, ties newest first.  A search term matching more than that ranks its most recent
  matches; ``recent`` reaches the rest.

``next_batch`` (top level, and per group) is an opaque token holding the order, the stream
position the first page saw (later events never join a paged search), a cursor (rank,
position) strictly after the last result served, the group it is confined to, and the
count: the orders are total and the ranks are functions of the event alone, so paging
serves every result exactly once.  Each page examines at most ``SCAN_CAP`` candidates; a
page cut short by invisible candidates still carries a ``next_batch``.  ``count`` is the
number of matching events before visibility checks, exact up to ``COUNT_CAP``.

A request sees what was committed before it: it first waits (briefly) for the indexer to
reach the current stream position, unless the indexer is still working through a large
history, in which case it answers from what is indexed so far.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass
from typing import Any, Sequence

from flask import Blueprint, Flask, jsonify, request

from atrium.errors import MatrixError, bad_json, invalid_param, missing_param
from store.events import StoredEvent
from store.search import (KEYS, RANK_SCALE, Criteria, Hit, SearchStore, StreamFollower,
                          search_text)
from web.auth import Requester, require_auth
from web.event_filter import NO_FILTER, RoomEventFilter, room_event_filter
from web.http import json_body
from web.pagination import topo_token
from web.room_service import RoomService
from web.timeline import Reader
from web.visibility import visible_state_ids

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 10
MAX_LIMIT = 100
MAX_CONTEXT = 100            # events_before / events_after per result
MAX_TERM = 1024              # characters of search_term
RANK_WINDOW = 2000           # matches ranked per search (the newest)
SCAN_CAP = 1000              # candidates examined per page
COUNT_CAP = 10_000
INDEX_BATCH = 500            # events the indexer handles per transaction
BARRIER_TIMEOUT = 2.0        # s a search waits for the indexer to reach the present
BUILDING = 50_000            # stream positions behind: history is being indexed, don't wait
_WAKE_TYPES = {"m.room.message", "m.room.name", "m.room.topic", "m.room.redaction"}


@dataclass(frozen=True)
class SearchRequest:
    term: str
    keys: tuple[str, ...]
    flt: RoomEventFilter
    order: str                             # "rank" | "recent"
    include_state: bool
    group_by: tuple[str, ...]
    context: tuple[int, int, bool] | None  # (before, after, include_profile)

    @property
    def limit(self) -> int:
        return min(self.flt.limit or DEFAULT_LIMIT, MAX_LIMIT)


@dataclass(frozen=True)
class PageToken:
    order: str
    snapshot: int
    rank: int
    stream: int
    group: tuple[str, str] | None
    count: int | None


# ---------------------------------------------------------------------------- parsing
def _opt(obj: dict[str, Any], key: str, kind: type, what: str) -> Any:
    v = obj.get(key)
    if v is None:
        return None
    if not isinstance(v, kind) or (isinstance(v, bool) and kind is not bool):
        raise bad_json(f"'{key}' must be {what}")
    return v


def parse_request(body: dict[str, Any]) -> SearchRequest:
    """The ``room_events`` criteria of a request body; 400 with the spec's codes."""
    cats = body.get("search_categories")
    if cats is None:
        raise missing_param("Missing 'search_categories'")
    if not isinstance(cats, dict):
        raise bad_json("'search_categories' must be an object")
    room_events = cats.get("room_events")
    if room_events is None:
        raise missing_param("No search category given: 'room_events' is the only one")
    if not isinstance(room_events, dict):
        raise bad_json("'room_events' must be an object")
    term = room_events.get("search_term")
    if term is None:
        raise missing_param("Missing 'search_term'")
    if not isinstance(term, str):
        raise bad_json("'search_term' must be a string")
    if len(term) > MAX_TERM:
        raise invalid_param(f"'search_term' may be at most {MAX_TERM} characters")
    term = term.replace("\x00", " ")   # never text the database can hold
    keys_raw = _opt(room_events, "keys", list, "an array of strings")
    keys = KEYS
    if keys_raw:
        if not all(isinstance(k, str) for k in keys_raw):
            raise bad_json("'keys' must be an array of strings")
        unknown = sorted(set(keys_raw) - set(KEYS))
        if unknown:
            raise invalid_param(f"Unknown search key {unknown[0]!r}: one of {', '.join(KEYS)}")
        keys = tuple(dict.fromkeys(keys_raw))
    flt_raw = room_events.get("filter")
    flt = NO_FILTER if flt_raw is None else room_event_filter(flt_raw)
    order = _opt(room_events, "order_by", str, "a string") or "rank"
    if order not in ("rank", "recent"):
        raise invalid_param(f"Invalid order_by {order!r}: 'rank' or 'recent'")
    include_state = bool(_opt(room_events, "include_state", bool, "a boolean"))
    groupings = _opt(room_events, "groupings", dict, "an object") or {}
    group_by: list[str] = []
    for g in _opt(groupings, "group_by", list, "an array") or []:
        if not isinstance(g, dict) or not isinstance(g.get("key"), str):
            raise bad_json("each of 'group_by' must be an object with a string 'key'")
        if g["key"] not in ("room_id", "sender"):
            raise invalid_param(f"Invalid group_by key {g['key']!r}: 'room_id' or 'sender'")
        group_by.append(g["key"])
    ctx = _opt(room_events, "event_context", dict, "an object")
    context = None
    if ctx is not None:
        limits = []
        for name in ("before_limit", "after_limit"):
            n = _opt(ctx, name, int, "an integer")
            if n is not None and n < 0:
                raise invalid_param(f"'{name}' must not be negative")
            limits.append(min(5 if n is None else n, MAX_CONTEXT))
        context = (limits[0], limits[1], bool(_opt(ctx, "include_profile", bool,
                                                    "a boolean")))
    return SearchRequest(term, keys, flt, order, include_state,
                         tuple(dict.fromkeys(group_by)), context)


def encode_token(t: PageToken) -> str:
    raw = json.dumps([1, t.order, t.snapshot, t.rank, t.stream,
                      list(t.group) if t.group else None, t.count], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(raw: str, order: str) -> PageToken:
    """A ``next_batch`` this server gave out for a search in ``order``; else 400."""
    bad = invalid_param("Invalid next_batch token")
    if len(raw) > 2048:
        raise bad
    try:
        v = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, binascii.Error):
        raise bad from None
    if not (isinstance(v, list) and len(v) == 7 and v[0] == 1 and v[1] in ("rank", "recent")
            and all(isinstance(x, int) and not isinstance(x, bool) for x in v[2:5])
            and (v[5] is None or (isinstance(v[5], list) and len(v[5]) == 2
                                  and v[5][0] in ("room_id", "sender")
                                  and isinstance(v[5][1], str)))
            and (v[6] is None or (isinstance(v[6], int) and not isinstance(v[6], bool)))):
        raise bad
    if v[1] != order:
        raise invalid_param("next_batch belongs to a search with another order_by")
    return PageToken(v[1], v[2], v[3], v[4], tuple(v[5]) if v[5] else None, v[6])


# ---------------------------------------------------------------------------- searching
class Searcher:
    def __init__(self, svc: RoomService, store: SearchStore, indexer: StreamFollower) -> None:
        self.svc, self.store, self.indexer = svc, store, indexer

    def search(self, req: Requester, sreq: SearchRequest, token: PageToken | None
               ) -> dict[str, Any]:
        now = self.svc.events.stream.current()
        if token is None and now - self.indexer.position <= BUILDING:
            self.indexer.wait_for(now, BARRIER_TIMEOUT)
        snapshot = token.snapshot if token is not None else now
        f = sreq.flt
        crit = Criteria(term=sreq.term, user_id=req.user_id, snapshot=snapshot,
                        keys=sreq.keys, rooms=f.rooms, not_rooms=f.not_rooms, sql=f.sql(),
                        group=token.group if token is not None else None)
        rd = Reader(self.svc, req.user_id, req.device_id)
        served, cursor = self._page(rd, crit, sreq, token)
        if sreq.order == "recent" and served:
            ranks = {h.stream_ordering: h.rank for h in self.store.ranked_window(
                crit, len(served), only=[h.stream_ordering for _, h in served])}
        else:
            ranks = {h.stream_ordering: h.rank for _, h in served}
        count = token.count if token is not None and token.count is not None \
            and token.group is None else self.store.count(crit, COUNT_CAP)
        events = rd.serve([se for se, _ in served])
        results = []
        for (se, h), ev in zip(served, events):
            out: dict[str, Any] = {"rank": ranks.get(h.stream_ordering, 0) / RANK_SCALE,
                                   "result": ev, "context": {}}
            if sreq.context is not None:
                out["context"] = self._context(rd, se, *sreq.context)
            results.append(out)
        texts = [(se.stream_ordering, t[1]) for se, _ in served
                 if (t := search_text(se.event)) is not None]
        body: dict[str, Any] = {"results": results, "count": count,
                                "highlights": self.store.highlights(sreq.term, texts)}

        def tok(group: tuple[str, str] | None) -> str:
            assert cursor is not None
            return encode_token(PageToken(sreq.order, snapshot, cursor[0], cursor[1], group,
                                          count if group is None else None))

        if cursor is not None:
            body["next_batch"] = tok(crit.group)
        if sreq.group_by:
            body["groups"] = {}
            for key in sreq.group_by:
                groups: dict[str, dict[str, Any]] = {}
                for se, _ in served:
                    value = se.room_id if key == "room_id" else str(se.event.get("sender"))
                    grp = groups.setdefault(value, {"results": [], "order": len(groups) + 1})
                    grp["results"].append(se.event_id)
                    if cursor is not None and "next_batch" not in grp:
                        grp["next_batch"] = tok((key, value))
                body["groups"][key] = groups
        if sreq.include_state:
            body["state"] = self._state(req, {se.room_id for se, _ in served})
        return {"search_categories": {"room_events": body}}

    def _page(self, rd: Reader, crit: Criteria, sreq: SearchRequest, token: PageToken | None
              ) -> tuple[list[tuple[StoredEvent, Hit]], tuple[int, int] | None]:
        """Up to ``limit`` results after the token's cursor, and the cursor after them
        (None: there is nothing more)."""
        limit = sreq.limit
        batch = min(max(limit * 2, 20), 200)
        ranked: list[Hit] | None = None
        if sreq.order == "rank":
            ranked = self.store.ranked_window(crit, RANK_WINDOW)
            if token is not None:
                ranked = [h for h in ranked
                          if (h.rank, h.stream_ordering) < (token.rank, token.stream)]
        before = token.stream if token is not None and sreq.order == "recent" else None
        served: list[tuple[StoredEvent, Hit]] = []
        scanned = 0
        while True:
            if ranked is not None:
                hits, ranked = ranked[:batch], ranked[batch:]
                exhausted = not ranked
            else:
                hits = self.store.recent(crit, before, batch)
                exhausted = len(hits) < batch
            if not hits:
                return served, None
            ses = self._events(hits)
            cands = [ses[h.event_id] for h in hits if h.event_id in ses
                     and sreq.flt.matches(ses[h.event_id])]
            # an erased sender's event the user would get pruned is no hit: its words
            # matched content they may not read
            keep = {se.event_id for se in rd.vis.filter(cands)} - rd.vis.pruned
            for i, h in enumerate(hits):
                se = ses.get(h.event_id)
                if se is None or se.event_id not in keep:
                    continue
                served.append((se, h))
                if len(served) == limit:
                    last = exhausted and i == len(hits) - 1
                    return served, None if last else (h.rank, h.stream_ordering)
            before = hits[-1].stream_ordering
            scanned += len(hits)
            if exhausted:
                return served, None
            if scanned >= SCAN_CAP:
                return served, (hits[-1].rank, hits[-1].stream_ordering)

    def _events(self, hits: Sequence[Hit]) -> dict[str, StoredEvent]:
        """The hits' events that are served: timeline events, unredacted."""
        got = self.svc.events.get_events(h.event_id for h in hits)
        return {eid: se for eid, se in got.items()
                if not (se.outlier or se.soft_failed or se.rejection is not None
                        or se.redacted_by is not None)}

    def _context(self, rd: Reader, se: StoredEvent, before_limit: int, after_limit: int,
                 include_profile: bool) -> dict[str, Any]:
        """Events around a result (as /context, without a filter), and with
        ``include_profile`` the senders' profiles at the last of them."""
        key = (int(se.event.get("depth", 0)), se.stream_ordering)
        fetch = rd.timeline_fetch(se.room_id, None)
        before = rd.walk(fetch, lo=None, hi=(key[0], key[1] - 1), backwards=True,
                         limit=before_limit)
        after = rd.walk(fetch, lo=key, hi=None, backwards=False, limit=after_limit)
        if before.next_cut is not None:
            start = before.next_cut
        elif before.events:
            oldest = before.events[-1]
            start = (int(oldest.event.get("depth", 0)), oldest.stream_ordering - 1)
        else:
            start = (key[0], key[1] - 1)
        if after.next_cut is not None:
            end = after.next_cut
        elif after.events:
            end = (int(after.events[-1].event.get("depth", 0)), after.events[-1].stream_ordering)
        else:
            end = key
        out: dict[str, Any] = {"events_before": rd.serve(before.events),
                               "events_after": rd.serve(after.events),
                               "start": topo_token(start), "end": topo_token(end)}
        if include_profile:
            last = after.events[-1] if after.events else se
            senders = sorted({str(e.event.get("sender"))
                              for e in (*before.events, se, *after.events)})
            profiles: dict[str, dict[str, str]] = {}
            if last.state_group is not None:
                found = rd.reads.state_keys_at(
                    [last.state_group], [("m.room.member", s) for s in senders]
                ).get(last.state_group, {})
                evs = self.svc.events.get_events(found.values())
                for (_, user_id), eid in found.items():
                    content = evs[eid].event.get("content", {}) if eid in evs else {}
                    profiles[user_id] = {k: content[k] for k in ("displayname", "avatar_url")
                                         if isinstance(content.get(k), str)}
            out["profile_info"] = profiles
        return out

    def _state(self, req: Requester, room_ids: set[str]) -> dict[str, list[dict[str, Any]]]:
        """The current state of each room with results, as the user may read it (the state
        at their leave for a room they left)."""
        out = {}
        for room_id in sorted(room_ids):
            try:
                ids = visible_state_ids(self.svc, req.user_id, room_id)
            except MatrixError:
                continue
            evs = self.svc.events.get_events(ids.values())
            rd = Reader(self.svc, req.user_id, req.device_id)
            out[room_id] = rd.serve([evs[e] for e in ids.values() if e in evs])
        return out


# ---------------------------------------------------------------------------- wiring
def register(app: Flask, runtime: Any) -> None:
    svc: RoomService = runtime.parts["rooms"]
    store = SearchStore(runtime.db)
    indexer = StreamFollower("search index", svc.events.stream,
                             lambda frm, upto: store.index_step(frm, upto, INDEX_BATCH),
                             store.save_position, store.position())
    searcher = Searcher(svc, store, indexer)
    runtime.parts["search"] = searcher

    def on_persisted(room_id: str, events: Sequence[tuple[dict[str, Any], int]]) -> None:
        if any(ev.get("type") in _WAKE_TYPES for ev, _ in events):
            indexer.wake()

    svc.on_persisted.append(on_persisted)
    runtime.shutdown_hooks.append(indexer.stop)
    indexer.start()
    bp = Blueprint("search", __name__)

    @bp.post("/_matrix/client/v3/search")
    def search() -> Any:
        """POST /_matrix/client/v3/search"""
        req = require_auth()
        sreq = parse_request(json_body())
        raw = request.args.get("next_batch")
        token = decode_token(raw, sreq.order) if raw else None
        return jsonify(searcher.search(req, sreq, token))

    app.register_blueprint(bp)
