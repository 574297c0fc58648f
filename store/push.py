"""Push actions and the counts built on them (modules/push.md "Receiving notifications",
"Marking notifications as read"; /notifications).

The push evaluator (actors/push_evaluator.py) writes one ``event_push_actions`` row per
(local user, event) whose actions say ``notify``, after the event's room commit, and records
each local user's own latest event per thread in ``event_push_own``.  Nothing is deleted
when a receipt moves: counts are computed at read time as the rows after the user's read
position, which is the later of their ``m.read`` / ``m.read.private`` receipts and their own
latest event (sending an event reads up to it).  Threads (v1.4 threaded receipts): a row's
``thread_id`` is ``main`` or the thread root; an unthreaded receipt reads every thread, a
threaded one (``main`` or a root) only its own.

Consistency with /sync ("the updated notification count from a new event MUST appear in the
same /sync response as the event itself"): the evaluator runs after the commit, so
:func:`unread_counts` first waits (bounded) on the evaluator's barrier for the room, which
the wiring registers per database with :func:`set_barrier`.  The barrier opens once the
room's events are evaluated, before their rows are committed: the counts add the evaluated
rows their read does not find (``unwritten``; rows are unique per (user, event), so a row
is never counted twice whether or not its write committed before the read).  Scale-out
seam: with several processes the barrier becomes "evaluated position ≥ the room's stream
position" read from ``push_evaluator_position``.
"""
from __future__ import annotations

import json
import weakref
from typing import Any, Callable, Iterable, Sequence

import gevent
import gevent.event

from store.database import POSTGRES, Database, Txn
from store.receipts import READ_RECEIPTS
from store.unread_cache import DEFAULT_SIZE as UNREAD_CACHE_SIZE, UnreadCache

MAIN = "main"
UNTHREADED = ""
BARRIER_TIMEOUT = 2.0
#: batches of counts over at most this many rooms are read without a thread: a few indexed
#: statements per room, whatever its number of members
INLINE_COUNT_ROOMS = 4

Barrier = Callable[[str, float], None]
#: (user, room) → (rows (event_id, stream_ordering, thread_id, highlight), own events
#: (thread_id, stream_ordering)) evaluated but perhaps not committed yet
Unwritten = Callable[[str, str], tuple[Sequence[tuple[str, int, str, bool]],
                                       Sequence[tuple[str, int]]]]
_barriers: "weakref.WeakKeyDictionary[Database, Barrier]" = weakref.WeakKeyDictionary()
_unwritten: "weakref.WeakKeyDictionary[Database, Unwritten]" = weakref.WeakKeyDictionary()
_caches: "weakref.WeakKeyDictionary[Database, UnreadCache]" = weakref.WeakKeyDictionary()


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def set_barrier(db: Database, barrier: Barrier | None,
                unwritten: Unwritten | None = None, *,
                cache_size: int = UNREAD_CACHE_SIZE) -> UnreadCache | None:
    """Register (or with None, drop) ``barrier(room_id, timeout)``: returns once every event
    of the room handed to the evaluator so far has its push actions evaluated; those not
    committed yet are what ``unwritten(user_id, room_id)`` returns.  With a barrier comes
    the in-memory counts (store/unread_cache.py), which the evaluator moves forward: it is
    returned (None with ``cache_size`` 0)."""
    _caches.pop(db, None)
    if barrier is None:
        _barriers.pop(db, None)
        _unwritten.pop(db, None)
        return None
    _barriers[db] = barrier
    if unwritten is not None:
        _unwritten[db] = unwritten
    if cache_size <= 0:
        return None
    cache = _caches[db] = UnreadCache(cache_size)
    return cache


def unread_cache(db: Database) -> UnreadCache | None:
    """The in-memory counts of ``db`` (None when no evaluator keeps them current)."""
    return _caches.get(db)


def wait_evaluated(db: Database, room_id: str, timeout: float = BARRIER_TIMEOUT) -> None:
    barrier = _barriers.get(db)
    if barrier is not None:
        barrier(room_id, timeout)


# --------------------------------------------------------------------------- read positions


def read_positions(txn: Txn, user_id: str, room_id: str) -> dict[str, int]:
    """thread_id ('' = unthreaded, 'main', or a root) → the stream position read up to."""
    return _read_positions_many(txn, room_id, [user_id]).get(user_id, {})


def _in_list(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


def _read_positions_many(txn: Txn, room_id: str, users: Sequence[str]
                         ) -> dict[str, dict[str, int]]:
    """:func:`read_positions` of several users of one room: two queries in all."""
    out: dict[str, dict[str, int]] = {}
    marks = _in_list(users)
    for user_id, thread_id, pos in txn.query(
            "SELECT user_id, thread_id, MAX(event_stream_ordering) FROM receipts WHERE"
            f" room_id = ? AND user_id IN ({marks}) AND receipt_type IN (?, ?)"
            " GROUP BY user_id, thread_id", (room_id, *users, *READ_RECEIPTS)):
        reads = out.setdefault(user_id, {})
        reads[thread_id] = max(reads.get(thread_id, -1), int(pos))
    for user_id, thread_id, pos in txn.query(
            "SELECT user_id, thread_id, stream_ordering FROM event_push_own WHERE"
            f" room_id = ? AND user_id IN ({marks})", (room_id, *users)):
        reads = out.setdefault(user_id, {})
        reads[thread_id] = max(reads.get(thread_id, -1), int(pos))
    return out


#: users per statement of :func:`_counts_room` (parameters stay far below either
#: engine's limit)
COUNT_CHUNK = 200
_NOTHING: tuple[tuple[()], tuple[()]] = ((), ())


#: one user's counts in one room before shaping: (read positions by thread as
#: :func:`read_positions` gives them, thread → [notifications, highlights] unread)
RawCounts = tuple[dict[str, int], dict[str, list[int]]]


def _counts_txn(txn: Txn, user_id: str, room_id: str,
                unwritten: tuple[Sequence[tuple[str, int, str, bool]],
                                 Sequence[tuple[str, int]]] = _NOTHING) -> dict[str, Any]:
    """The counts of one user in one room (see :func:`_counts_room`)."""
    return _shape_counts(_counts_room(txn, room_id, [user_id], {user_id: unwritten})[user_id][1])


def _counts_room(txn: Txn, room_id: str, users: Sequence[str],
                 unwritten: dict[str, Any]) -> dict[str, RawCounts]:
    """Each user's counts in one room from the rows committed, plus the ``unwritten`` ones
    this read does not find (an evaluated batch whose write has not committed: see
    :func:`unread_counts`).  Four statements for a chunk of users, whatever its size (the
    /syncs of a room's members woken by one event read together); a second count only
    for a user whose threaded receipt is ahead of their unthreaded one."""
    out: dict[str, RawCounts] = {}
    for i in range(0, len(users), COUNT_CHUNK):
        chunk = users[i:i + COUNT_CHUNK]
        out.update(_counts_chunk(txn, room_id, chunk, unwritten))
    return out


def _counts_chunk(txn: Txn, room_id: str, users: Sequence[str],
                  unwritten: dict[str, Any]) -> dict[str, RawCounts]:
    all_reads = _read_positions_many(txn, room_id, users)
    bases: dict[str, int] = {}
    for user_id in users:
        reads = all_reads.setdefault(user_id, {})
        for thread_id, pos in unwritten.get(user_id, _NOTHING)[1]:
            # own events move read positions: max() is safe
            if pos > reads.get(thread_id, -1):
                reads[thread_id] = pos
        bases[user_id] = reads.get(UNTHREADED, -1)
    per_thread: dict[str, dict[str, list[int]]] = {u: {} for u in users}
    values = ",".join("(?, CAST(? AS BIGINT))" for _ in users)
    for user_id, thread_id, n, h in txn.query(
            f"WITH w(u, b) AS (VALUES {values}) SELECT a.user_id, a.thread_id, COUNT(*),"
            " SUM(a.highlight) FROM w JOIN event_push_actions a ON a.user_id = w.u"
            " AND a.room_id = ? AND a.stream_ordering > w.b GROUP BY a.user_id, a.thread_id",
            (*[x for u in users for x in (u, bases[u])], room_id)):
        per_thread[user_id][thread_id] = [int(n), int(h or 0)]
    for user_id in users:
        base, counts = bases[user_id], per_thread[user_id]
        for thread_id, pos in all_reads[user_id].items():
            if thread_id == UNTHREADED or pos <= base or thread_id not in counts:
                continue
            n, h = txn.query_one(
                "SELECT COUNT(*), SUM(highlight) FROM event_push_actions WHERE user_id = ?"
                " AND room_id = ? AND thread_id = ? AND stream_ordering > ?",
                (user_id, room_id, thread_id, pos)) or (0, 0)
            counts[thread_id] = [int(n), int(h or 0)]
    pending = {u: unwritten[u][0] for u in users if u in unwritten and unwritten[u][0]}
    if pending:
        ids = sorted({r[0] for rows in pending.values() for r in rows})
        holders = list(pending)
        stored = set(txn.query(
            f"SELECT user_id, event_id FROM event_push_actions WHERE user_id IN"
            f" ({_in_list(holders)}) AND event_id IN ({_in_list(ids)})", (*holders, *ids)))
        for user_id, rows in pending.items():
            reads, base, counts = all_reads[user_id], bases[user_id], per_thread[user_id]
            for event_id, so, thread_id, highlight in rows:
                if (user_id, event_id) in stored \
                        or so <= max(base, reads.get(thread_id, -1)):
                    continue
                cell = counts.setdefault(thread_id, [0, 0])
                cell[0] += 1
                cell[1] += int(highlight)
    return {u: (all_reads[u], per_thread[u]) for u in users}


def _shape_counts(per_thread: dict[str, list[int]]) -> dict[str, Any]:
    total = [sum(v[0] for v in per_thread.values()), sum(v[1] for v in per_thread.values())]
    main = per_thread.get(MAIN, [0, 0])
    threads = {t: {"notification_count": v[0], "highlight_count": v[1]}
               for t, v in per_thread.items() if t != MAIN and v[0] > 0}
    return {"notification_count": total[0], "highlight_count": total[1],
            "main_timeline": {"notification_count": main[0], "highlight_count": main[1]},
            "unread_thread_notifications": threads}


def _counts_many(txn: Txn, wanted: list[tuple[str, str]],
                 pending: dict[tuple[str, str], Any]) -> dict[tuple[str, str], Any]:
    """The shaped counts of each wanted (user, room)."""
    return {k: _shape_counts(v[1]) for k, v in _counts_many_raw(txn, wanted, pending).items()}


def _counts_many_raw(txn: Txn, wanted: list[tuple[str, str]],
                     pending: dict[tuple[str, str], Any]
                     ) -> dict[tuple[str, str], RawCounts]:
    if txn.engine == POSTGRES and any(rows for rows, _ in pending.values()):
        # one snapshot for the whole read: under READ COMMITTED a write committing between
        # the count and the "already stored?" check would hide its rows from both
        txn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    by_room: dict[str, list[str]] = {}
    for user_id, room_id in wanted:
        by_room.setdefault(room_id, []).append(user_id)
    out: dict[tuple[str, str], RawCounts] = {}
    for room_id, users in by_room.items():
        got = _counts_room(txn, room_id, users,
                           {u: pending[(u, room_id)] for u in users if (u, room_id) in pending})
        out.update(((u, room_id), c) for u, c in got.items())
    return out


class _CountBatch:
    """The (user, room) counts one transaction reads together."""

    __slots__ = ("wanted", "started", "done")

    def __init__(self) -> None:
        self.wanted: set[tuple[str, str]] = set()
        self.started = False
        self.done = gevent.event.AsyncResult()


_open_batches: "weakref.WeakKeyDictionary[Database, _CountBatch]" = weakref.WeakKeyDictionary()


def unread_counts(db: Database, user_id: str, room_id: str) -> dict[str, Any]:
    """The user's unread counts in a room, for /sync's ``unread_notifications``.

    ``notification_count`` / ``highlight_count`` count every unread notification of the
    room (the answer when the client did not ask for threaded counts);
    ``main_timeline`` holds the main timeline's alone and ``unread_thread_notifications``
    maps a thread root to its counts (threads with nothing unread are left out) — the
    split a filter with ``unread_thread_notifications: true`` asks for.

    One event wakes every /sync of its room at once, and an initial sync reads many rooms
    side by side: the callers that arrive in the same turn of the event loop share one
    transaction (one trip to the database's threads).  A batch starts after each of its
    callers arrived (and their rooms were evaluated), so every answer is at least as fresh
    as a read of its own would be.  Counts read once are then kept in memory and moved
    forward by the evaluator (store/unread_cache.py): the /syncs woken by an event read
    nothing."""
    wait_evaluated(db, room_id)
    cache = _caches.get(db)
    if cache is not None:
        held = cache.get((user_id, room_id))
        if held is not None:
            return _shape_counts(held)
    batch = _open_batches.get(db)
    if batch is not None and not batch.started:
        batch.wanted.add((user_id, room_id))
        return batch.done.get()[(user_id, room_id)]
    batch = _open_batches[db] = _CountBatch()
    batch.wanted.add((user_id, room_id))
    try:
        gevent.sleep(0)  # the others woken with us reach this point in the same loop turn
        batch.started = True
        if _open_batches.get(db) is batch:
            del _open_batches[db]
        wanted = sorted(batch.wanted)
        if cache is not None:
            cache.begin_fill(wanted)
        unwritten = _unwritten.get(db)
        # taken here, after every caller passed the barrier: a batch evaluated by then is
        # either committed in the read's snapshot or still listed (removed after commit)
        pending = {k: unwritten(*k) for k in wanted} if unwritten is not None else {}
        # a few rooms' counts (the /syncs of a room woken by one event) are a few indexed
        # statements each: cheaper here than a round trip through a thread
        raw = None
        try:
            raw = db.run("unread_counts", lambda t: _counts_many_raw(t, wanted, pending),
                         inline=len({r for _, r in wanted}) <= INLINE_COUNT_ROOMS)
        finally:
            if cache is not None:
                cache.end_fill(wanted, raw)  # None: the read failed, nothing is kept
        got = {k: _shape_counts(v[1]) for k, v in raw.items()}
    except BaseException as e:  # the joiners must not wait forever (also on a kill)
        if _open_batches.get(db) is batch:
            del _open_batches[db]
        batch.done.set_exception(e)
        raise
    batch.done.set(got)
    return got[(user_id, room_id)]


def total_unread(db: Database, user_id: str, remote_invites: Iterable[str] = ()) -> int:
    """The push payload's ``counts.unread``, as Synapse counts its badge: the rooms the user
    is invited to plus the unread notifications of the rooms they are joined to.
    ``remote_invites`` are rooms this server does not hold that the user has a pending
    invite to (store/remote_invites.py); one with a membership here is counted from that."""
    remote = set(remote_invites)

    def _q(txn: Txn) -> int:
        invited: set[str] = set()
        held: set[str] = set()
        for room_id, membership in txn.query(
                "SELECT room_id, membership FROM current_state WHERE state_key = ?"
                " AND type = 'm.room.member'", (user_id,)):
            held.add(room_id)
            if membership == "invite":
                invited.add(room_id)
        rooms = [r for (r,) in txn.query(
            "SELECT DISTINCT a.room_id FROM event_push_actions a JOIN current_state s ON"
            " s.room_id = a.room_id AND s.type = 'm.room.member' AND s.state_key = a.user_id"
            " WHERE a.user_id = ? AND s.membership = 'join'", (user_id,))]
        unread = sum(_counts_txn(txn, user_id, r)["notification_count"] for r in rooms)
        return len(invited | (remote - held)) + unread

    return db.run("total_unread", _q)


# --------------------------------------------------------------------------- writing


def write_actions(db: Database, rows: Sequence[tuple[str, str, str, int, str, list[Any],
                                                     bool, int]],
                  own: Iterable[tuple[str, str, str, int]], position: int | None) -> None:
    """One transaction for a batch of evaluated events: ``rows`` of (user_id, event_id,
    room_id, stream_ordering, thread_id, actions, highlight, ts); ``own`` of (user_id,
    room_id, thread_id, stream_ordering) for local senders; the evaluator's new position.
    Idempotent: re-evaluating an event after a crash writes nothing twice."""
    own = list(own)

    def _t(txn: Txn) -> None:
        txn.executemany(
            "INSERT INTO event_push_actions (user_id, event_id, room_id, stream_ordering,"
            " thread_id, actions, highlight, ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (user_id, event_id) DO NOTHING",
            [(u, e, r, so, t, _dumps(a), int(h), ts) for u, e, r, so, t, a, h, ts in rows])
        for u, r, t, so in own:
            txn.execute(
                "INSERT INTO event_push_own (user_id, room_id, thread_id, stream_ordering)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (user_id, room_id, thread_id) DO UPDATE SET"
                " stream_ordering = excluded.stream_ordering"
                " WHERE event_push_own.stream_ordering < excluded.stream_ordering",
                (u, r, t, so))
        if position is not None:
            txn.execute("UPDATE push_evaluator_position SET pos = ? WHERE pos < ?",
                        (position, position))

    db.run("write_push_actions", _t, write=True)


def evaluator_position(db: Database) -> int:
    return int(db.run("push_position", lambda t: t.query_value(
        "SELECT pos FROM push_evaluator_position", default=0)))


# --------------------------------------------------------------------------- reading


def notifications(db: Database, user_id: str, *, before: int | None, limit: int,
                  only_highlight: bool) -> list[dict[str, Any]]:
    """Newest first, positions < ``before``: dicts with event_id, room_id, stream_ordering,
    actions, highlight, ts and read (the user's read position is at or past it)."""
    def _q(txn: Txn) -> list[dict[str, Any]]:
        sql = ("SELECT event_id, room_id, stream_ordering, thread_id, actions, highlight, ts"
               " FROM event_push_actions WHERE user_id = ?")
        args: list[Any] = [user_id]
        if before is not None:
            sql += " AND stream_ordering < ?"
            args.append(before)
        if only_highlight:
            sql += " AND highlight = 1"
        sql += " ORDER BY stream_ordering DESC LIMIT ?"
        args.append(limit)
        out = []
        reads: dict[str, dict[str, int]] = {}
        for eid, room_id, so, thread_id, actions, highlight, ts in txn.query(sql, args):
            if room_id not in reads:
                reads[room_id] = read_positions(txn, user_id, room_id)
            r = reads[room_id]
            read = so <= max(r.get(UNTHREADED, -1), r.get(thread_id, -1))
            out.append({"event_id": eid, "room_id": room_id, "stream_ordering": int(so),
                        "actions": json.loads(actions), "highlight": bool(highlight),
                        "ts": int(ts), "read": read})
        return out

    return db.run("notifications", _q)


def pending_for_user(db: Database, user_id: str, after: int, limit: int
                     ) -> list[dict[str, Any]]:
    """Oldest first, positions > ``after``: what a pusher has still to send."""
    rows = db.run("pending_push", lambda t: t.query(
        "SELECT event_id, room_id, stream_ordering, actions FROM event_push_actions"
        " WHERE user_id = ? AND stream_ordering > ? ORDER BY stream_ordering LIMIT ?",
        (user_id, after, limit)))
    return [{"event_id": e, "room_id": r, "stream_ordering": int(so),
             "actions": json.loads(a)} for e, r, so, a in rows]


def events_after(db: Database, position: int, limit: int) -> list[tuple[str, dict[str, Any], int]]:
    """(room_id, event, stream_ordering) of timeline events after ``position``, oldest first:
    what the evaluator catches up on after a restart or an overflow."""
    rows = db.run("push_events_after", lambda t: t.query(
        "SELECT room_id, json, stream_ordering FROM events WHERE stream_ordering > ?"
        " AND outlier = 0 AND rejection IS NULL AND soft_failed = 0"
        " ORDER BY stream_ordering LIMIT ?", (position, limit)))
    return [(r, json.loads(j), int(so)) for r, j, so in rows]


def room_state_group(db: Database, room_id: str) -> int | None:
    return db.run("push_room_group", lambda t: t.query_value(
        "SELECT current_state_group FROM rooms WHERE room_id = ?", (room_id,)))


def delete_user(txn: Txn, user_id: str) -> None:
    """A deactivated user's pushers and push data go (AccountStore hook, in its txn)."""
    for table in ("pushers", "push_rules", "event_push_actions", "event_push_own"):
        txn.execute(f"DELETE FROM {table} WHERE user_id = ?", (user_id,))
