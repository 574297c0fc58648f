"""Atrium's own admin API (admin token required): supervisors and their actors, fault
injection for drills, and actor traces.

- ``GET  /_atrium/admin/v1/actors`` — every supervisor's stats and children
- ``POST /_atrium/admin/v1/rooms/{roomId}/fault`` ``{"kind": "crash", "count": N}``
- ``POST /_atrium/admin/v1/actors/{supervisor}/{key}/fault`` — the same, for any supervisor
- ``DELETE /_atrium/admin/v1/actors/{supervisor}/{key}/fault`` — clear that key's fault plan
- ``POST /_atrium/admin/v1/actors/{supervisor}/{key}/unpark`` — lift a park now
- ``GET  /_atrium/admin/v1/traces/{traceId}`` — one request's actor messages
- ``GET  /_atrium/admin/v1/rooms/{roomId}/traces?limit=N`` — a room's recent traffic
  (``?format=text`` renders them as a readable sequence, as the CLI does;
  ``?format=sequence`` gives a sequence diagram's lanes and messages, for both trace routes)
- ``GET  /_atrium/admin/v1/rooms/busiest?limit=N`` / ``…/rooms/failing?limit=N`` — rooms
  ranked by recent traffic and mailbox depth / by parks, crashes and failed messages
- ``GET  /_atrium/admin/v1/console`` — what the operator's console needs to know first (who
  is logged in, whether fault injection is on, the supervisors' limits, the trace window)

"Recent" is what the tracer's ring buffer holds (``trace.capacity`` records): the tracer
keeps a tally per actor of those records, so the rankings cost O(active actors), never a
scan of the ring or of a table.

Fault injection exists only with ``enable_fault_injection: true``; otherwise those paths
answer 404 ``M_UNRECOGNIZED`` as if they did not exist.  Clearing a fault plan and unparking
are always there (they only make things safer).
"""
from __future__ import annotations

import heapq
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request

from atrium.errors import MatrixError
from supervision.render import render_recent, render_trace, sequence
from web.auth import require_admin
from web.http import json_body, query_int

A = "/_atrium/admin/v1"
#: what a room row of the rankings says when the tracer holds no message to it
_NO_TRAFFIC = {"recent_messages": 0, "failed_messages": 0, "last_traced_at": None,
               "last_error": None, "last_error_at": None, "last_error_outcome": None}


def _room_row(key: str, child: dict[str, Any] | None,
              traced: dict[str, Any] | None) -> dict[str, Any]:
    """One room of the rankings: its supervisor entry (absent: passivated) and tally."""
    row: dict[str, Any] = {"room_id": key, "state": "absent", "pending": 0, "restarts": 0,
                           "recent_failures": 0}
    if child is not None:
        row.update(state=child["state"], pending=child["pending"], restarts=child["restarts"],
                   recent_failures=child["recent_failures"])
        if "retry_after_ms" in child:
            row["retry_after_ms"] = child["retry_after_ms"]
    row.update(traced or _NO_TRAFFIC)
    return row


def busiest_rooms(sup: Any, tracer: Any, limit: int) -> list[dict[str, Any]]:
    """Rooms with the most messages in the trace window, then the deepest mailboxes."""
    children = {r["key"]: r for r in sup.children()}
    traced = dict(tracer.top(sup.name, limit))
    deep = heapq.nlargest(limit, ((r["pending"], k) for k, r in children.items()
                                  if r["pending"] > 0))
    keys = set(traced) | {k for _, k in deep}
    rows = [_room_row(k, children.get(k), traced.get(k) or tracer.activity_of(sup.name, k))
            for k in keys]
    rows.sort(key=lambda r: (-r["recent_messages"], -r["pending"], r["room_id"]))
    return rows[:limit]


def failing_rooms(sup: Any, tracer: Any, limit: int) -> list[dict[str, Any]]:
    """Parked rooms first, then by crashes in the restart window plus failed messages in
    the trace window (crashes, timeouts, refusals while parked or full)."""
    children = {r["key"]: r for r in sup.children()}
    traced = dict(tracer.top(sup.name, limit, failing=True))
    troubled = {k for k, r in children.items()
                if r["state"] in ("parked", "restarting") or r["recent_failures"] > 0}
    rows = [_room_row(k, children.get(k), traced.get(k) or tracer.activity_of(sup.name, k))
            for k in troubled | set(traced)]
    rows.sort(key=lambda r: (r["state"] != "parked", -(r["recent_failures"]
                                                       + r["failed_messages"]),
                             -r["restarts"], r["room_id"]))
    return rows[:limit]


def register(app: Flask, runtime: Any) -> None:
    config = runtime.config
    supervisors: dict[str, Any] = runtime.parts.setdefault("supervisors", {})
    tracer = runtime.parts["tracer"]
    bp = Blueprint("atrium_admin", __name__)

    def supervisor(name: str) -> Any:
        sup = supervisors.get(name)
        if sup is None:
            raise MatrixError(404, "M_NOT_FOUND", f"No supervisor named {name!r}")
        return sup

    def inject(sup: Any, key: str) -> Any:
        require_admin()
        if not config.enable_fault_injection:
            raise MatrixError(404, "M_UNRECOGNIZED", "Unrecognized request")
        body = json_body()
        kind = body.get("kind", "crash")
        count = body.get("count", 1)
        if kind not in ("crash", "fatal", "hang"):
            raise MatrixError(400, "M_INVALID_PARAM", "kind must be crash, fatal or hang")
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 10_000:
            raise MatrixError(400, "M_INVALID_PARAM", "count must be an integer 0..10000")
        delay = body.get("delay_ms", 50)
        if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= 60_000:
            raise MatrixError(400, "M_INVALID_PARAM", "delay_ms must be an integer 0..60000")
        sup.inject_fault(key, kind, count, delay=delay / 1000)
        return jsonify({"key": key, "kind": kind, "armed": sup.pending_faults(key)})

    @bp.post(f"{A}/rooms/<room_id>/fault")
    def room_fault(room_id: str) -> Any:
        """POST /_atrium/admin/v1/rooms/{roomId}/fault"""
        return inject(supervisor("rooms"), room_id)

    @bp.post(f"{A}/actors/<name>/<path:key>/fault")
    def actor_fault(name: str, key: str) -> Any:
        """POST /_atrium/admin/v1/actors/{supervisor}/{key}/fault"""
        return inject(supervisor(name), key)

    @bp.delete(f"{A}/actors/<name>/<path:key>/fault")
    def actor_fault_clear(name: str, key: str) -> Any:
        """DELETE /_atrium/admin/v1/actors/{supervisor}/{key}/fault"""
        require_admin()
        sup = supervisor(name)
        cleared = sup.pending_faults(key)
        sup.clear_faults(key)
        return jsonify({"key": key, "cleared": cleared})

    @bp.post(f"{A}/actors/<name>/<path:key>/unpark")
    def actor_unpark(name: str, key: str) -> Any:
        """POST /_atrium/admin/v1/actors/{supervisor}/{key}/unpark"""
        require_admin()
        sup = supervisor(name)
        return jsonify({"key": key, "unparked": sup.unpark(key), "child": sup.child(key)})

    @bp.get(f"{A}/actors")
    def actors() -> Any:
        """GET /_atrium/admin/v1/actors"""
        require_admin()
        limit = query_int("limit", 100, minimum=1, maximum=10_000) or 100
        out = {}
        for name, sup in supervisors.items():
            rows = sup.children()[:limit]
            for row in rows:  # the tracer's tally: recent traffic and the last failure
                row.update(tracer.activity_of(name, row["key"]) or _NO_TRAFFIC)
            out[name] = {"stats": sup.stats(), "children": rows}
        return jsonify(out)

    @bp.get(f"{A}/console")
    def console_info() -> Any:
        """GET /_atrium/admin/v1/console"""
        req = require_admin()
        return jsonify({
            "user_id": req.user_id, "server_name": config.server_name,
            "fault_injection": bool(config.enable_fault_injection),
            "supervisors": {name: {
                "max_mailbox": sup.max_mailbox, "max_restarts": sup.max_restarts,
                "restart_window_ms": round(sup.restart_window * 1000),
                "park_duration_ms": round(sup.park_duration * 1000),
                "ask_timeout_ms": round(sup.ask_timeout * 1000),
            } for name, sup in supervisors.items()},
            "trace": tracer.window(),
        })

    @bp.get(f"{A}/rooms/busiest")
    def rooms_busiest() -> Any:
        """GET /_atrium/admin/v1/rooms/busiest"""
        require_admin()
        limit = query_int("limit", 10, minimum=1, maximum=1000) or 10
        return jsonify({"window": tracer.window(),
                        "rooms": busiest_rooms(supervisor("rooms"), tracer, limit)})

    @bp.get(f"{A}/rooms/failing")
    def rooms_failing() -> Any:
        """GET /_atrium/admin/v1/rooms/failing"""
        require_admin()
        limit = query_int("limit", 10, minimum=1, maximum=1000) or 10
        return jsonify({"window": tracer.window(),
                        "rooms": failing_rooms(supervisor("rooms"), tracer, limit)})

    @bp.get(f"{A}/traces/<trace_id>")
    def trace(trace_id: str) -> Any:
        """GET /_atrium/admin/v1/traces/{traceId}"""
        require_admin()
        records = tracer.by_trace(trace_id)
        if request.args.get("format") == "text":
            return Response(render_trace(records, trace_id) + "\n", mimetype="text/plain")
        if request.args.get("format") == "sequence":
            return jsonify({"trace_id": trace_id, **sequence(records)})
        return jsonify({"trace_id": trace_id, "records": [r.to_dict() for r in records]})

    @bp.get(f"{A}/rooms/<room_id>/traces")
    def room_traces(room_id: str) -> Any:
        """GET /_atrium/admin/v1/rooms/{roomId}/traces"""
        require_admin()
        limit = query_int("limit", 50, minimum=1, maximum=10_000) or 50
        records = tracer.recent(room_id, limit)
        if request.args.get("format") == "text":
            return Response(render_recent(records, room_id) + "\n", mimetype="text/plain")
        if request.args.get("format") == "sequence":
            return jsonify({"room_id": room_id, **sequence(records)})
        return jsonify({"room_id": room_id, "records": [r.to_dict() for r in records]})

    app.register_blueprint(bp)
