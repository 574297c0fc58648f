"""Render trace records as a readable sequence with timings (CLI and admin endpoint).

Each line is one message: offset from the first record, ``from → to``, ask/tell, message
type, time waiting in the mailbox, time running in the handler, outcome (and error). Example::

    trace 5e1f0c2a9b7d3e44: 3 messages over 2.41 ms
      +0.000 ms  web → rooms/!a:x          ask   Send     wait 0.021  run 1.204  ok
      +1.190 ms  rooms/!a:x → remote/b.org tell  SendPdu  wait 0.012  run 0.300  ok
      +1.500 ms  web → rooms/!a:x          ask   Send     wait 0.010  run 0.810  crash  RuntimeError: x
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from supervision.tracer import TraceRecord

__all__ = ["render_records", "render_recent", "render_trace", "sequence"]


def _ms(start: float | None, end: float | None) -> str:
    if start is None or end is None:
        return "-"
    return f"{(end - start) * 1000:.3f}"


def render_records(records: Sequence[TraceRecord]) -> list[str]:
    """One aligned line per record, offsets relative to the first record's enqueue time."""
    if not records:
        return []
    t0 = records[0].enqueued_at
    rows: list[tuple[str, ...]] = []
    for r in records:
        started = r.started_at
        if started is not None:
            wait = _ms(r.enqueued_at, started)
        elif r.outcome == "timeout":  # gave up while it was still queued
            wait = _ms(r.enqueued_at, r.ended_at)
        else:  # refused at the door, or not started yet
            wait = "-"
        run = _ms(started, r.ended_at)
        outcome = r.outcome or "in flight"
        if r.error:
            outcome = f"{outcome}  {r.error}"
        rows.append((
            f"+{(r.enqueued_at - t0) * 1000:.3f} ms",
            f"{r.sender} → {r.recipient}",
            r.kind,
            r.message_type,
            f"wait {wait}",
            f"run {run}",
            outcome,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.rjust(widths[0]) if i == 0 else cell.ljust(widths[i])
                 for i, cell in enumerate(row[:-1])]
        lines.append("  " + "  ".join(cells) + "  " + row[-1])
    return lines


def _span_ms(records: Sequence[TraceRecord]) -> float:
    ends = [r.ended_at or r.started_at or r.enqueued_at for r in records]
    return (max(ends) - records[0].enqueued_at) * 1000


def render_trace(records: Sequence[TraceRecord], trace_id: str) -> str:
    """Render one trace (the records of ``Tracer.by_trace``)."""
    if not records:
        return f"trace {trace_id}: no records (unknown, or fallen out of the ring buffer)"
    head = f"trace {trace_id}: {len(records)} messages over {_span_ms(records):.2f} ms"
    return "\n".join([head, *render_records(records)])


def render_recent(records: Sequence[TraceRecord], actor_key: str | None = None) -> str:
    """Render an actor's recent traffic (the records of ``Tracer.recent``), with trace ids."""
    who = actor_key if actor_key is not None else "all actors"
    if not records:
        return f"{who}: no recent messages"
    head = f"{who}: last {len(records)} messages over {_span_ms(records):.2f} ms"
    lines = render_records(records)
    width = max(len(r.trace_id) for r in records)
    return "\n".join([head, *(f"  {r.trace_id.ljust(width)}{line}"
                              for r, line in zip(records, lines, strict=True))])


def _wait_run_ms(r: TraceRecord) -> tuple[float | None, float | None]:
    """(time queued, time in the handler) in ms; ``None`` where it does not apply."""
    def ms(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round((b - a) * 1000, 3)

    if r.started_at is not None:
        return ms(r.enqueued_at, r.started_at), ms(r.started_at, r.ended_at)
    if r.outcome == "timeout":  # gave up while it was still queued
        return ms(r.enqueued_at, r.ended_at), None
    return None, None


def sequence(records: Sequence[TraceRecord]) -> dict[str, Any]:
    """The records as a sequence diagram's data (the operator's console draws it): the
    participants (lanes) in order of first appearance, and one message per record in enqueue
    order with its offset from the first (``at_ms``), ``wait_ms``, ``run_ms``, outcome
    (``None`` while in flight) and error.  A sender's lane is its first word: every
    ``web PUT /_matrix/…`` request is the lane ``web`` (the full sender stays in
    ``sender``), so a room's traffic has one lane per party, not one per request."""
    participants: list[str] = []
    seen: set[str] = set()
    messages: list[dict[str, Any]] = []
    t0 = records[0].enqueued_at if records else None
    for r in records:
        lane = r.sender.split(" ", 1)[0] or r.sender
        for who in (lane, r.recipient):
            if who not in seen:
                seen.add(who)
                participants.append(who)
        wait, run = _wait_run_ms(r)
        messages.append({
            "seq": r.seq, "trace_id": r.trace_id, "from": lane, "to": r.recipient,
            "sender": r.sender,
            "type": r.message_type, "kind": r.kind,
            "at_ms": round((r.enqueued_at - (t0 or 0.0)) * 1000, 3),
            "wait_ms": wait, "run_ms": run, "outcome": r.outcome, "error": r.error,
        })
    return {"participants": participants, "messages": messages, "started_at": t0,
            "span_ms": round(_span_ms(records), 3) if records else 0.0}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m supervision.render TRACE.jsonl [--trace ID | --actor KEY] [--limit N]``."""
    import argparse

    from supervision.tracer import load_jsonl

    parser = argparse.ArgumentParser(description="Render Atrium message traces from JSONL.")
    parser.add_argument("path")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--trace", help="render one trace id")
    group.add_argument("--actor", help="render recent traffic to/from one actor key")
    parser.add_argument("--limit", type=int, default=50)
    args = parser.parse_args(argv)
    records = load_jsonl(args.path)
    if args.trace:
        print(render_trace([r for r in records if r.trace_id == args.trace], args.trace))
    else:
        key = args.actor
        chosen = [r for r in records if key is None or key in (r.key, r.recipient, r.sender)]
        print(render_recent(chosen[-args.limit:], key))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
