"""Message tracer: a bounded ring buffer of delivery records, optionally appended to JSONL.

One :class:`TraceRecord` per message sent through a supervisor: trace id, sender ("from"),
recipient actor ("to", ``<supervisor>/<key>``), message type, ask/tell, enqueue / start / end
times and the outcome. Records are created at enqueue and filled in place as the message
moves (no preemption under gevent, so no locking is needed). A record is written to the JSONL
file once it has an outcome. Rendering lives in :mod:`supervision.render`.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = [
    "CRASH",
    "DOMAIN_ERROR",
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
        self._ring.append(rec)
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
        if self._jsonl_path is not None:
            self._write(rec)

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
