"""Message tracer: a bounded ring buffer of delivery records, optionally appended to JSONL.

One :class:`TraceRecord` per message sent through a supervisor: trace id, sender ("from"),
recipient actor ("to", ``<supervisor>/<key>``), message type, ask/tell, enqueue / start / end
times and the outcome. Records are created at enqueue and filled in place as the message
moves (no preemption under gevent, so no locking is needed). A record is written to the JSONL
file once it has an outcome. Rendering lives in :mod:`supervision.render`.

Besides the ring, the tracer keeps a small per-actor tally of the records the ring holds
(messages, failures, the last error): :meth:`Tracer.activity` answers "which actors were
busiest / failing lately" in O(actors) without scanning the ring (the operator's console).
"""

from __future__ import annotations

import heapq
import json
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = [
    "CRASH",
    "DOMAIN_ERROR",
    "FAILURE_OUTCOMES",
    "OK",
    "OUTCOMES",
    "PARKED",
    "REJECTED_FULL",
    "STOPPED",
    "TIMEOUT",
    "TraceRecord",
    "Tracer",
    "load_jsonl",
]

OK = "ok"
DOMAIN_ERROR = "domain_error"
CRASH = "crash"
TIMEOUT = "timeout"
REJECTED_FULL = "rejected_full"
PARKED = "parked"
STOPPED = "stopped"  # dropped because the supervisor shut down
OUTCOMES = (OK, DOMAIN_ERROR, CRASH, TIMEOUT, REJECTED_FULL, PARKED, STOPPED)
#: outcomes that count against the recipient in :meth:`Tracer.activity` (a domain error is an
#: ordinary answer such as a 403; ``stopped`` is a shutdown)
FAILURE_OUTCOMES = frozenset((CRASH, TIMEOUT, REJECTED_FULL, PARKED))


class _Tally:
    """Per-actor counts over the records currently in the ring."""

    __slots__ = ("messages", "failures", "last_at", "last_error", "last_error_at",
                 "last_outcome")

    def __init__(self) -> None:
        self.messages = 0
        self.failures = 0
        self.last_at = 0.0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_outcome: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"recent_messages": self.messages, "failed_messages": self.failures,
                "last_traced_at": self.last_at, "last_error": self.last_error,
                "last_error_at": self.last_error_at, "last_error_outcome": self.last_outcome}


@dataclass(slots=True)
class TraceRecord:
    """One message delivery. Times are wall-clock seconds (``time.time()``)."""

    seq: int
    trace_id: str
    sender: str
    supervisor: str
    key: str
    message_type: str
    kind: str  # "ask" | "tell"
    enqueued_at: float
    started_at: float | None = None
    ended_at: float | None = None
    outcome: str | None = None  # None while in flight
    error: str | None = None

    @property
    def recipient(self) -> str:
        return f"{self.supervisor}/{self.key}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "trace_id": self.trace_id,
            "from": self.sender,
            "to": self.recipient,
            "key": self.key,
            "type": self.message_type,
            "kind": self.kind,
            "enqueued_at": self.enqueued_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "outcome": self.outcome,
            "error": self.error,
        }


class Tracer:
    """Bounded ring buffer of :class:`TraceRecord`; shared by all supervisors of a process.

    ``capacity`` bounds memory (oldest records fall off). With ``jsonl_path`` every finished
    record is appended as one JSON line (the file is the unbounded history; rotate it outside).
    """

    def __init__(self, capacity: int = 10_000, jsonl_path: str | Path | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._ring: deque[TraceRecord] = deque(maxlen=capacity)
        self._seq = 0
        self._jsonl_path = Path(jsonl_path) if jsonl_path is not None else None
        self._jsonl: IO[str] | None = None
        # supervisor -> key -> tally of the ring's records to that actor
        self._tallies: dict[str, dict[str, _Tally]] = {}

    def __len__(self) -> int:
        return len(self._ring)

    # -- recording (called by the supervisor) ------------------------------------------------

    def enqueued(
        self, trace_id: str, sender: str, supervisor: str, key: str, message: object, kind: str
    ) -> TraceRecord:
        """Start a record for a message that is being sent."""
        self._seq += 1
        rec = TraceRecord(self._seq, trace_id, sender, supervisor, key,
                          type(message).__name__, kind, time.time())
        if len(self._ring) == self.capacity:
            self._untally(self._ring[0])  # about to fall off the ring
        self._ring.append(rec)
        by_key = self._tallies.get(supervisor)
        if by_key is None:
            by_key = self._tallies[supervisor] = {}
        tally = by_key.get(key)
        if tally is None:
            tally = by_key[key] = _Tally()
        tally.messages += 1
        tally.last_at = rec.enqueued_at
        return rec

    def started(self, rec: TraceRecord) -> None:
        if rec.started_at is None:
            rec.started_at = time.time()

    def finished(self, rec: TraceRecord, outcome: str, error: BaseException | None = None) -> None:
        """Give the record its outcome. The first outcome wins (a timed-out ask stays one)."""
        if rec.outcome is not None:
            return
        rec.outcome = outcome
        rec.ended_at = time.time()
        if error is not None:
            rec.error = f"{type(error).__name__}: {error}"[:300]
        if outcome in FAILURE_OUTCOMES and rec.seq > self._seq - self.capacity:  # still held
            tally = self._tallies.get(rec.supervisor, {}).get(rec.key)
            if tally is not None:
                tally.failures += 1
                tally.last_error = rec.error or outcome
                tally.last_error_at = rec.ended_at
                tally.last_outcome = outcome
        if self._jsonl_path is not None:
            self._write(rec)

    def _untally(self, rec: TraceRecord) -> None:
        by_key = self._tallies.get(rec.supervisor)
        tally = by_key.get(rec.key) if by_key is not None else None
        if tally is None:
            return
        tally.messages -= 1
        if rec.outcome in FAILURE_OUTCOMES:  # counted when it got that outcome in the ring
            tally.failures -= 1
        if tally.messages <= 0:
            del by_key[rec.key]  # type: ignore[union-attr]
            if not by_key:
                del self._tallies[rec.supervisor]

    def rejected(
        self, trace_id: str, sender: str, supervisor: str, key: str, message: object,
        kind: str, outcome: str, error: BaseException | None = None,
    ) -> TraceRecord:
        """Record a message refused at the door (mailbox full, parked, shutting down)."""
        rec = self.enqueued(trace_id, sender, supervisor, key, message, kind)
        self.finished(rec, outcome, error)
        return rec

    def _write(self, rec: TraceRecord) -> None:
        if self._jsonl is None:
            assert self._jsonl_path is not None
            self._jsonl = self._jsonl_path.open("a", encoding="utf-8")
        self._jsonl.write(json.dumps(rec.to_dict(), separators=(",", ":")) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        """Close the JSONL file, if open (it reopens on the next write)."""
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None

    # -- queries (admin API, CLI, tests) ------------------------------------------------------

    def by_trace(self, trace_id: str) -> list[TraceRecord]:
        """Every buffered record of one trace, in enqueue order."""
        return [r for r in self._ring if r.trace_id == trace_id]

    def recent(self, actor_key: str | None = None, limit: int = 50) -> list[TraceRecord]:
        """The newest ``limit`` records, oldest first; only those to or from ``actor_key``.

        ``actor_key`` matches a record's key (``!room:example.org``), its recipient
        (``rooms/!room:example.org``) or its sender.
        """
        out: list[TraceRecord] = []
        for rec in reversed(self._ring):
            if len(out) >= limit:
                break
            if actor_key is None or actor_key in (rec.key, rec.recipient, rec.sender):
                out.append(rec)
        out.reverse()
        return out

    def activity(self, supervisor: str) -> dict[str, dict[str, Any]]:
        """Per key of ``supervisor``: messages to it among the records the ring holds, how
        many of them failed (:data:`FAILURE_OUTCOMES`), when it was last messaged, and the
        last failure seen (error text, time, outcome).  O(keys), no scan of the ring."""
        return {key: t.to_dict() for key, t in self._tallies.get(supervisor, {}).items()}

    def top(self, supervisor: str, limit: int, *, failing: bool = False
            ) -> list[tuple[str, dict[str, Any]]]:
        """The ``limit`` keys of ``supervisor`` with the most messages in the ring (or, with
        ``failing``, the most failed ones, keys without failures left out), best first, each
        with its :meth:`activity` row."""
        tallies = self._tallies.get(supervisor, {})
        if failing:
            chosen = heapq.nlargest(limit, ((t.failures, t.last_error_at or 0.0, k)
                                            for k, t in tallies.items() if t.failures > 0))
        else:
            chosen = heapq.nlargest(limit, ((t.messages, t.last_at, k)
                                            for k, t in tallies.items()))
        return [(k, tallies[k].to_dict()) for _, _, k in chosen]

    def activity_of(self, supervisor: str, key: str) -> dict[str, Any] | None:
        """:meth:`activity` of one key, or ``None`` if the ring holds no message to it."""
        tally = self._tallies.get(supervisor, {}).get(key)
        return tally.to_dict() if tally is not None else None

    def window(self) -> dict[str, Any]:
        """What "recent" means in :meth:`activity`: how many records the ring holds (of
        ``capacity``) and the enqueue time of the oldest."""
        return {"records": len(self._ring), "capacity": self.capacity,
                "since": self._ring[0].enqueued_at if self._ring else None}

    def render_trace(self, trace_id: str) -> str:
        from supervision.render import render_trace

        return render_trace(self.by_trace(trace_id), trace_id)

    def render_recent(self, actor_key: str | None = None, limit: int = 50) -> str:
        from supervision.render import render_recent

        return render_recent(self.recent(actor_key, limit), actor_key)


def load_jsonl(path: str | Path) -> list[TraceRecord]:
    """Read records back from a JSONL file (for the CLI rendering an old trace)."""
    out: list[TraceRecord] = []
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            d = json.loads(line)
            supervisor, _, key = d["to"].partition("/")
            out.append(TraceRecord(d["seq"], d["trace_id"], d["from"], supervisor, key,
                                   d["type"], d["kind"], d["enqueued_at"], d["started_at"],
                                   d["ended_at"], d["outcome"], d["error"]))
    return out
