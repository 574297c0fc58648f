"""Atrium's own admin API (admin token required): supervisors and their actors, fault
injection for drills, and actor traces.

- ``GET  /_atrium/admin/v1/actors`` — every supervisor's stats and children
- ``POST /_atrium/admin/v1/rooms/{roomId}/fault`` ``{"kind": "crash", "count": N}``
- ``POST /_atrium/admin/v1/actors/{supervisor}/{key}/fault`` — the same, for any supervisor
- ``DELETE /_atrium/admin/v1/actors/{supervisor}/{key}/fault`` — clear that key's fault plan
- ``POST /_atrium/admin/v1/actors/{supervisor}/{key}/unpark`` — lift a park now
- ``GET  /_atrium/admin/v1/traces/{traceId}`` — one request's actor messages
- ``GET  /_atrium/admin/v1/rooms/{roomId}/traces?limit=N`` — a room's recent traffic
  (``?format=text`` renders them as a readable sequence, as the CLI does)

Fault injection exists only with ``enable_fault_injection: true``; otherwise those paths
answer 404 ``M_UNRECOGNIZED`` as if they did not exist.  Clearing a fault plan and unparking
are always there (they only make things safer).
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request

from atrium.errors import MatrixError
from web.auth import require_admin
from web.http import json_body, query_int

A = "/_atrium/admin/v1"


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
        return jsonify({name: {"stats": sup.stats(), "children": sup.children()[:limit]}
                        for name, sup in supervisors.items()})

    @bp.get(f"{A}/traces/<trace_id>")
    def trace(trace_id: str) -> Any:
        """GET /_atrium/admin/v1/traces/{traceId}"""
        require_admin()
        records = tracer.by_trace(trace_id)
        if request.args.get("format") == "text":
            from supervision.render import render_trace

            return Response(render_trace(records, trace_id) + "\n", mimetype="text/plain")
        return jsonify({"trace_id": trace_id, "records": [r.to_dict() for r in records]})

    @bp.get(f"{A}/rooms/<room_id>/traces")
    def room_traces(room_id: str) -> Any:
        """GET /_atrium/admin/v1/rooms/{roomId}/traces"""
        require_admin()
        limit = query_int("limit", 50, minimum=1, maximum=10_000) or 50
        records = tracer.recent(room_id, limit)
        if request.args.get("format") == "text":
            from supervision.render import render_recent

            return Response(render_recent(records, room_id) + "\n", mimetype="text/plain")
        return jsonify({"room_id": room_id, "records": [r.to_dict() for r in records]})

    app.register_blueprint(bp)
