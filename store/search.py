"""Message search storage (client-server-api "Server Side Search"): the full-text index of
timeline events, the queries ``POST /search`` runs over it, and :class:`StreamFollower`,
the worker that keeps an index (this one, the user directory's) current from the events
stream.

What is indexed: ``content.body`` of ``m.room.message``, ``content.name`` of
``m.room.name``, and for ``m.room.topic`` ``content.topic`` plus the ``text/plain`` body of
``content["m.topic"]`` — the spec's keys; nothing else (encrypted events have no such
content).  Outliers, rejected and soft-failed events and redacted events are never indexed;
a redaction removes its target's row, and every query also requires the event to be
unredacted, so a redacted message is never found even while the indexer is behind.

SQLite: an FTS5 table whose row id is the event's ``stream_ordering``.  PostgreSQL: a
``to_tsvector('english', …)`` column under GIN keyed by ``stream_ordering``.  The indexer
writes after commit (it reads committed events by stream position, up to the generator's
``current()``, so nothing committed late is skipped) and stores the position it reached in
the same transaction as the rows: after a crash or restart it resumes from there, and the
history of a server that predates the index is indexed the same way, in the background.

Ranking is a pure function of the event and the query, so a page token's (rank, position)
cursor means the same thing on every request (paging exactly once): PostgreSQL's
``ts_rank_cd`` (cover density, length-normalised), and on SQLite a BM25-style saturation of
the number of matched words (FTS5's ``highlight``) with the text length against fixed
statistics (FTS5's own ``bm25`` depends on the whole table, which moves as messages
arrive).
"""
from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import gevent
import gevent.event

from store.database import POSTGRES, Database, Txn
from store.room_reads import SqlFilter
from store.streams import StreamIdGenerator

log = logging.getLogger(__name__)

#: event type → the key its text is searched under
INDEXED_TYPES = {"m.room.message": "content.body", "m.room.name": "content.name",
                 "m.room.topic": "content.topic"}
KEYS = ("content.body", "content.name", "content.topic")
MAX_TEXT = 65_536            # characters of one event indexed (bodies are bounded anyway)
RANK_SCALE = 1_000_000       # ranks are compared as integers: exact on both engines
_HL_START, _HL_END = "\ue001", "\ue002"


def search_text(event: dict[str, Any]) -> tuple[str, str] | None:
    """(key, text) of an event's searchable content, or None."""
    key = INDEXED_TYPES.get(event.get("type", ""))
    content = event.get("content")
    if key is None or not isinstance(content, dict):
        return None
    parts: list[str] = []
    field = key.split(".", 1)[1]
    if isinstance(content.get(field), str):
        parts.append(content[field])
    topic = content.get("m.topic") if field == "topic" else None
    if isinstance(topic, dict) and isinstance(topic.get("m.text"), list):
        for rep in topic["m.text"]:
            if isinstance(rep, dict) and isinstance(rep.get("body"), str) \
                    and rep.get("mimetype", "text/plain") == "text/plain" \
                    and rep["body"] not in parts:
                parts.append(rep["body"])
    text = " ".join(p for p in parts if p).replace("\x00", " ")[:MAX_TEXT]
    return (key, text) if text.strip() else None


# ---------------------------------------------------------------------------- query text
_TOKEN = re.compile(r'"|[^\s"]+')
_WORD = re.compile(r"[^\W_]+")


def query_groups(term: str) -> list[tuple[list[str], list[str]]]:
    """The search term in websearch syntax (PostgreSQL's ``websearch_to_tsquery``: words
    are ANDed, ``"a phrase"``, ``or`` between alternatives, ``-word`` excludes) as OR-groups
    of (positive items, excluded items); an item is a word or a space-joined phrase.
    Groups with nothing positive are dropped (they could only match by exclusion)."""
    groups: list[tuple[list[str], list[str]]] = [([], [])]
    in_phrase, phrase, negate_phrase = False, [], False
    pending_not = False
    for tok in _TOKEN.findall(term):
        if tok == '"':
            if in_phrase:
                if phrase:
                    groups[-1][1 if negate_phrase else 0].append(" ".join(phrase))
                in_phrase, phrase = False, []
            else:
                in_phrase, negate_phrase, pending_not = True, pending_not, False
            continue
        if in_phrase:
            phrase.extend(w.lower() for w in _WORD.findall(tok))
            continue
        if tok.lower() == "or":
            if groups[-1][0] or groups[-1][1]:
                groups.append(([], []))
            continue
        negate = tok.startswith("-")
        words = [w.lower() for w in _WORD.findall(tok)]
        if negate and not words:
            pending_not = True
            continue
        if len(words) > 1:   # "e-mail", "don't": one phrase, as the tokenizer splits it
            item = " ".join(words)
        elif words:
            item = words[0]
        else:
            continue
        groups[-1][1 if (negate or pending_not) else 0].append(item)
        pending_not = False
    if in_phrase and phrase:
        groups[-1][1 if negate_phrase else 0].append(" ".join(phrase))
    return [(pos, neg) for pos, neg in groups if pos]


def fts5_query(term: str) -> str | None:
    """The FTS5 MATCH expression for ``term`` (None: nothing can match)."""
    out = []
    for pos, neg in query_groups(term):
        expr = " AND ".join(f'"{p}"' for p in pos)
        for n in neg:
            expr = f"({expr}) NOT \"{n}\""
        out.append(f"({expr})")
    return " OR ".join(out) if out else None


def _score(marks: int, chars: int) -> int:
    """SQLite's rank: matched words (``marks`` = 2 per highlighted span) saturated BM25-style
    and normalised by the text's length against a fixed average (60 characters)."""
    tf = max(1, marks // 2)
    k1, b = 1.2, 0.75
    score = tf * (k1 + 1) / (tf + k1 * (1 - b + b * max(chars, 1) / 60.0))
    return int(round(score * RANK_SCALE))


# ---------------------------------------------------------------------------- queries
@dataclass(frozen=True)
class Criteria:
    """One search over the index: the term, what it may match, and where."""

    term: str
    user_id: str
    snapshot: int                          # only events at or before this position
    keys: tuple[str, ...] = KEYS
    rooms: tuple[str, ...] | None = None   # the filter's ``rooms``
    not_rooms: tuple[str, ...] = ()
    sql: SqlFilter = SqlFilter()           # the filter's exact types and senders
    group: tuple[str, str] | None = None   # ("room_id" | "sender", value): a group's page


@dataclass(frozen=True)
class Hit:
    stream_ordering: int
    event_id: str
    rank: int                              # RANK_SCALE units; 0 for order_by recent


class SearchStore:
    """The index's reads and writes (one transaction each)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.pg = db.engine == POSTGRES

    # ------------------------------------------------------------------ position
    def position(self) -> int:
        return int(self.db.run("search_position", lambda t: t.query_value(
            "SELECT stream_ordering FROM search_index_position WHERE id = 1", default=0)))

    def save_position(self, position: int) -> None:
        self.db.run("search_save_position", lambda t: t.execute(
            "UPDATE search_index_position SET stream_ordering = ? WHERE id = 1",
            (position,)), write=True)

    # ------------------------------------------------------------------ indexing
    def index_step(self, frm: int, upto: int, batch: int) -> tuple[int, bool]:
        """Index the events in (frm, upto], at most ``batch`` of the indexed types, in one
        transaction; return the position reached and whether it was saved (with the rows
        it covers)."""
        try:
            return self.db.run("search_index", self._step_txn, frm, upto, batch, write=True)
        except Exception:  # noqa: BLE001 - find the event at fault, keep the rest
            log.warning("search index: indexing from %d failed; event by event", frm)
        reached, entries, redacted = _plan(
            self.db.run("search_read", _read_range, frm, upto, batch), upto, batch)
        run_each(self.db, "search_write_one",
                 lambda t, e: self._write(t, [e], [], None), entries)
        run_each(self.db, "search_write_one",
                 lambda t, r: self._write(t, [], [r], None), redacted)
        self.save_position(reached)
        return reached, True

    def _step_txn(self, txn: Txn, frm: int, upto: int, batch: int) -> tuple[int, bool]:
        reached, entries, redacted = _plan(_read_range(txn, frm, upto, batch), upto, batch)
        if not entries and not redacted:
            return reached, False
        self._write(txn, entries, redacted, reached)
        return reached, True

    def _write(self, txn: Txn, entries: list[tuple[int, str, str]],
               redacted: list[tuple[str, str]], position: int | None) -> None:
        if self.pg:
            txn.executemany("INSERT INTO event_search (stream_ordering, key, vector)"
                            " VALUES (?, ?, to_tsvector('english', ?))"
                            " ON CONFLICT (stream_ordering) DO NOTHING", entries)
            table, col = "event_search", "stream_ordering"
        else:
            txn.executemany("DELETE FROM event_search WHERE rowid = ?",
                            [(so,) for so, _, _ in entries])
            txn.executemany("INSERT INTO event_search (rowid, key, value) VALUES (?, ?, ?)",
                            entries)
            table, col = "event_search", "rowid"
        txn.executemany(f"DELETE FROM {table} WHERE {col} IN (SELECT stream_ordering"
                        " FROM events WHERE event_id = ? AND room_id = ?)", redacted)
        if position is not None:
            txn.execute("UPDATE search_index_position SET stream_ordering = ? WHERE id = 1",
                        (position,))

    # ------------------------------------------------------------------ searching
    def _match(self, c: Criteria, extra_cols: str = "") -> tuple[str, list[Any]] | None:
        """``SELECT <so>, <event id>[, extra] FROM … WHERE …`` for the criteria (no ORDER
        BY, no LIMIT)."""
        if self.pg:
            if not query_groups(c.term):
                return None
            so = "s.stream_ordering"
            sql = (f"SELECT {so}, e.event_id{extra_cols} FROM event_search s"
                   " CROSS JOIN websearch_to_tsquery('english', ?) AS q"
                   " JOIN events e ON e.stream_ordering = s.stream_ordering"
                   " WHERE s.vector @@ q")
            args: list[Any] = [c.term]
            key_col = "s.key"
        else:
            match = fts5_query(c.term)
            if match is None:
                return None
            so = "event_search.rowid"
            sql = (f"SELECT {so}, e.event_id{extra_cols} FROM event_search"
                   " CROSS JOIN events e ON e.stream_ordering = event_search.rowid"
                   " WHERE event_search MATCH ?")
            args = [match]
            key_col = "event_search.key"
        if set(c.keys) != set(KEYS):
            sql += f" AND {key_col} IN ({','.join('?' * len(c.keys))})"
            args.extend(c.keys)
        sql += (f" AND {so} <= ? AND e.redacted_by IS NULL"
                " AND e.room_id IN (SELECT room_id FROM room_memberships WHERE user_id = ?)"
                # a forgotten room the user is not back in is out of reach (/forget)
                " AND e.room_id NOT IN (SELECT f.room_id FROM forgotten_rooms f"
                " WHERE f.user_id = ? AND NOT EXISTS (SELECT 1 FROM current_state c"
                " WHERE c.room_id = f.room_id AND c.type = 'm.room.member'"
                " AND c.state_key = f.user_id AND c.membership = 'join'))")
        args.extend((c.snapshot, c.user_id, c.user_id))
        if c.rooms is not None:
            if not c.rooms:
                return None
            sql += f" AND e.room_id IN ({','.join('?' * len(c.rooms))})"
            args.extend(c.rooms)
        if c.not_rooms:
            sql += f" AND e.room_id NOT IN ({','.join('?' * len(c.not_rooms))})"
            args.extend(c.not_rooms)
        if c.group is not None:
            sql += " AND e.room_id = ?" if c.group[0] == "room_id" else " AND e.sender = ?"
            args.append(c.group[1])
        clause, fargs = c.sql.clause()
        return sql + clause, args + fargs

    def recent(self, c: Criteria, before: int | None, limit: int) -> list[Hit]:
        """Matches newest first, strictly before stream position ``before``."""
        q = self._match(c)
        if q is None:
            return []
        sql, args = q
        so = "s.stream_ordering" if self.pg else "event_search.rowid"
        if before is not None:
            sql += f" AND {so} < ?"
            args.append(before)
        sql += f" ORDER BY {so} DESC LIMIT ?"
        args.append(limit)
        return self.db.run("search_recent", lambda t: [
            Hit(int(r[0]), r[1], 0) for r in t.query(sql, args)])

    def ranked_window(self, c: Criteria, window: int,
                      only: Sequence[int] | None = None) -> list[Hit]:
        """The newest ``window`` matches with their ranks, best first (ties: newest); with
        ``only``, just those of these stream positions."""
        if self.pg:
            q = self._match(c, ", ts_rank_cd(s.vector, q, 1)")
        else:
            q = self._match(c, ", length(highlight(event_search, 0, char(1), char(2)))"
                               " - length(event_search.value), length(event_search.value)")
        if q is None:
            return []
        sql, args = q
        so = "s.stream_ordering" if self.pg else "event_search.rowid"
        if only is not None:
            if not only:
                return []
            sql += f" AND {so} IN ({','.join('?' * len(only))})"
            args.extend(only)
        sql += f" ORDER BY {so} DESC LIMIT ?"
        args.append(window)
        rows = self.db.run("search_ranked", lambda t: t.query(sql, args))
        if self.pg:
            hits = [Hit(int(r[0]), r[1], int(round(float(r[2]) * RANK_SCALE))) for r in rows]
        else:
            hits = [Hit(int(r[0]), r[1], _score(int(r[2] or 0), int(r[3] or 0))) for r in rows]
        hits.sort(key=lambda h: (-h.rank, -h.stream_ordering))
        return hits

    def count(self, c: Criteria, cap: int) -> int:
        """How many events match (before visibility), counted up to ``cap``."""
        q = self._match(c)
        if q is None:
            return 0
        sql, args = q
        return int(self.db.run("search_count", lambda t: t.query_value(
            f"SELECT COUNT(*) FROM ({sql} LIMIT ?) AS m", [*args, cap], default=0)))

    def highlights(self, term: str, hits: Sequence[tuple[int, str]]) -> list[str]:
        """The words of ``hits`` ((stream_ordering, text)) that the term matched, lowercased
        (stemming may have matched other forms than the ones typed)."""
        if not hits:
            return []
        if self.pg:
            opts = f'StartSel="{_HL_START}", StopSel="{_HL_END}", HighlightAll=true'
            marked = self.db.run("search_highlights", lambda t: [r[0] for r in t.query(
                "SELECT ts_headline('english', v, websearch_to_tsquery('english', ?), ?)"
                " FROM unnest(?::text[]) AS v", (term, opts, [h[1] for h in hits]))])
            start, end = _HL_START, _HL_END
        else:
            match = fts5_query(term)
            if match is None:
                return []
            ids = [h[0] for h in hits]
            marked = self.db.run("search_highlights", lambda t: [r[0] for r in t.query(
                "SELECT highlight(event_search, 0, char(1), char(2)) FROM event_search"
                f" WHERE event_search MATCH ? AND rowid IN ({','.join('?' * len(ids))})",
                [match, *ids])])
            start, end = "\x01", "\x02"
        found: dict[str, None] = {}
        pat = re.compile(re.escape(start) + "(.*?)" + re.escape(end), re.DOTALL)
        for text in marked:
            for span in pat.findall(text or ""):
                for w in _WORD.findall(span):
                    found[w.lower()] = None
        return list(found)


def _plan(rows: list[tuple], upto: int, batch: int
          ) -> tuple[int, list[tuple[int, str, str]], list[tuple[str, str]]]:
    """From :func:`_read_range`'s rows: the position they reach, the index rows to write
    and the (target, room) of applied redactions."""
    reached = rows[-1][0] if len(rows) == batch else upto
    entries: list[tuple[int, str, str]] = []
    redacted: list[tuple[str, str]] = []
    for so, _eid, room_id, etype, raw, is_redacted, target in rows:
        if etype == "m.room.redaction":
            if target is not None:
                redacted.append((target, room_id))
            continue
        if is_redacted:
            continue
        try:
            ev = json.loads(raw)
        except ValueError:
            continue
        got = search_text(ev) if isinstance(ev, dict) else None
        if got is not None:
            entries.append((so, got[0], got[1]))
    return reached, entries, redacted


def _read_range(txn: Txn, frm: int, upto: int, limit: int) -> list[tuple]:
    """Timeline events of the indexed types (and redactions) in (frm, upto], in order: (so,
    event id, room, type, json, redacted?, a redaction's applied target)."""
    types = (*INDEXED_TYPES, "m.room.redaction")
    return txn.query(
        "SELECT e.stream_ordering, e.event_id, e.room_id, e.type,"
        " CASE WHEN e.type = 'm.room.redaction' THEN NULL ELSE e.json END,"
        " CASE WHEN e.redacted_by IS NOT NULL OR EXISTS (SELECT 1 FROM redactions r"
        "  WHERE r.redacts = e.event_id AND r.room_id = e.room_id) THEN 1 ELSE 0 END,"
        " (SELECT r.redacts FROM redactions r WHERE r.event_id = e.event_id)"
        " FROM events e WHERE e.stream_ordering > ? AND e.stream_ordering <= ?"
        f" AND e.type IN ({','.join('?' * len(types))})"
        " AND e.outlier = 0 AND e.rejection IS NULL AND e.soft_failed = 0"
        " ORDER BY e.stream_ordering LIMIT ?", (frm, upto, *types, limit))


def run_each(db: Database, name: str, fn: Callable[[Txn, Any], None],
             items: Sequence[Any]) -> None:
    """``fn(txn, item)`` for each item in a transaction of its own.  An item that fails
    while the database answers is logged and skipped (one poisoned event must not stop an
    index for good); if the database does not answer, this raises (retried later)."""
    for item in items:
        try:
            db.run(name, fn, item, write=True)
        except Exception:  # noqa: BLE001 - decided below
            db.run(f"{name}_probe", lambda t: t.query_value("SELECT 1"))
            log.exception("%s: skipped %r", name, item if not isinstance(item, tuple)
                          else item[:2])


# ---------------------------------------------------------------------------- follower
Step = Callable[[int, int], tuple[int, bool]]


class StreamFollower:
    """A worker greenlet that moves an index along the events stream.

    ``step(frm, upto)`` handles a bounded part of (frm, upto] and returns the position it
    reached and whether it saved that position itself (with its writes); otherwise the
    follower saves it with ``save`` now and then (re-reading a stretch with nothing to do
    after a crash is harmless).  It runs when woken (a room hook saw a relevant event, a
    reader wants it current), every ``sweep`` seconds anyway, and first at start — which is
    how a restart catches up and how history predating the index gets indexed, in the
    background, with progress in the log.  A step that raises is logged and retried later.
    """

    def __init__(self, name: str, stream: StreamIdGenerator, step: Step,
                 save: Callable[[int], None], position: int, *, delay: float = 0.25,
                 sweep: float = 10.0, save_every: float = 30.0) -> None:
        self.name, self.stream, self.step, self.save = name, stream, step, save
        self.position = self.saved = min(position, stream.current())
        self.delay, self.sweep, self.save_every = delay, sweep, save_every
        self._wake = gevent.event.Event()
        self._hurry = gevent.event.Event()    # a reader waits: no gathering delay
        self._progress = gevent.event.Event()
        self._stopping = False
        self._worker: gevent.Greenlet | None = None
        self._saved_at = time.monotonic()
        self.failures = 0
        # what the admin API's background-update status shows (web/synapse_admin_server.py)
        self.items = 0                # stream positions handled by this process
        self.busy = 0.0               # seconds spent in steps
        self.rate: float | None = None  # items per ms, exponential average over steps
        self.in_step = False

    def start(self) -> None:
        if self._worker is None:
            self._worker = gevent.spawn(self._run)
            self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._wake.set()
        self._hurry.set()
        if self._worker is not None:
            self._worker.join(timeout)
            self._worker.kill(block=False)
            self._worker = None
        self._persist(force=True)

    def wake(self, urgent: bool = False) -> None:
        if urgent:
            self._hurry.set()
        self._wake.set()

    def wait_for(self, target: int, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until everything up to ``target`` is handled."""
        deadline = time.monotonic() + timeout
        while self.position < target and not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.wake(urgent=True)
            self._progress.wait(min(left, 0.5))
        return self.position >= target

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.sweep)
            self._wake.clear()
            if self._stopping:
                break
            if self.delay:                 # let a burst of commits gather into one step
                self._hurry.wait(self.delay)
            self._hurry.clear()
            self._catch_up()
            self._persist()

    def _catch_up(self) -> None:
        target = self.stream.current()
        start, told = self.position, time.monotonic()
        big = target - start > 10_000
        if big:
            log.info("%s: catching up from stream position %d to %d", self.name, start,
                     target)
        while not self._stopping:
            upto = self.stream.current()
            if self.position >= upto:
                break
            began, self.in_step = time.monotonic(), True
            try:
                reached, saved = self.step(self.position, upto)
            except Exception:  # noqa: BLE001 - logged; retried on the next wake or sweep
                self.failures += 1
                log.exception("%s: indexing from %d failed", self.name, self.position)
                return
            finally:
                self.in_step = False
            self._count(reached - self.position, time.monotonic() - began)
            self.position = max(self.position, reached)
            if saved:
                self.saved, self._saved_at = self.position, time.monotonic()
            progress, self._progress = self._progress, gevent.event.Event()
            progress.set()
            if big and time.monotonic() - told >= 5:
                told = time.monotonic()
                done = self.position - start
                log.info("%s: %d of %d stream positions (%d%%)", self.name, done,
                         target - start, 100 * done // max(1, target - start))
            if reached >= upto and not self._hurry.is_set():
                break   # what committed meanwhile waits for the next wake: batches, not chases
            gevent.sleep(0)
        if big:
            log.info("%s: caught up at stream position %d", self.name, self.position)

    def _count(self, n: int, spent: float) -> None:
        n = max(0, n)
        self.items += n
        self.busy += spent
        r = n / max(spent * 1000, 0.001)
        self.rate = r if self.rate is None else 0.8 * self.rate + 0.2 * r

    def _persist(self, force: bool = False) -> None:
        if self.position <= self.saved:
            return
        if not force and self.position - self.saved < 10_000 \
                and time.monotonic() - self._saved_at < self.save_every:
            return
        try:
            self.save(self.position)
            self.saved, self._saved_at = self.position, time.monotonic()
        except Exception:  # noqa: BLE001 - the position is only a resume point
            log.exception("%s: saving the position failed", self.name)
