"""The operator's view of outbound federation (admin token required), over
``federation.sender.FederationSender`` (``runtime.parts["federation"].sender``):

- ``GET /_atrium/admin/v1/destinations`` — every destination with its state (healthy /
  backing_off / catching_up / parked), queue depth (outbox rows + ephemeral EDUs), last
  success, back-off end, failure count and last failure; ``from`` / ``limit`` /
  ``destination`` / ``order_by`` / ``dir`` as below
- Synapse's admin API (docs: Synapse "Federation API"):
  ``GET /_synapse/admin/v1/federation/destinations`` (``from``, ``limit``, ``order_by`` one of
  destination / retry_last_ts / retry_interval / failure_ts /
  last_successful_stream_ordering, ``dir`` f|b, ``destination`` substring filter; answers
  ``destinations[]``, ``total``, ``next_token``),
  ``GET /_synapse/admin/v1/federation/destinations/{destination}`` (404 if unknown),
  ``POST /_synapse/admin/v1/federation/destinations/{destination}/reset_connection`` (404 if
  unknown, 400 if it is not backing off, as Synapse answers).

Installed by ``web/federation_wiring.py`` (``register(app, runtime)``).  With federation
switched off there is no sender: the lists are empty and every destination is unknown.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, jsonify, request

from atrium.errors import MatrixError
from store.federation_queue import ORDER_COLUMNS
from web.auth import require_admin
from web.http import query_int

A = "/_atrium/admin/v1"
S = "/_synapse/admin/v1/federation/destinations"


def register(app: Flask, runtime: Any) -> None:
    bp = Blueprint("atrium_admin_federation", __name__)

    def sender() -> Any:
        fed = runtime.parts.get("federation")
        return getattr(fed, "sender", None)

    def paging() -> dict[str, Any]:
        start = query_int("from", 0, minimum=0) or 0
        limit = query_int("limit", 100, minimum=0, maximum=1000)
        order_by = request.args.get("order_by", "destination")
        if order_by not in ORDER_COLUMNS:
            raise MatrixError(400, "M_INVALID_PARAM",
                              f"Query parameter 'order_by' must be one of {list(ORDER_COLUMNS)}")
        direction = request.args.get("dir", "f")
        if direction not in ("f", "b"):
            raise MatrixError(400, "M_INVALID_PARAM", "Query parameter 'dir' must be f or b")
        search = request.args.get("destination") or None
        if search is not None and ("\x00" in search or len(search) > 1000):
            raise MatrixError(400, "M_INVALID_PARAM", "Query parameter 'destination' is invalid")
        return {"start": start, "limit": 100 if limit is None else limit, "search": search,
                "order_by": order_by, "backwards": direction == "b"}

    def page(p: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
        s = sender()
        if s is None:
            return [], 0
        return s.destinations_page(**p)

    def known(name: str) -> dict[str, Any]:
        s = sender()
        ok = "\x00" not in name and len(name) <= 1000  # never a stored server name
        view = s.destination(name) if s is not None and ok else None
        if view is None:
            raise MatrixError(404, "M_NOT_FOUND", "Unknown destination")
        return view

    def next_token(p: dict[str, Any], n: int, total: int, body: dict[str, Any]) -> None:
        if p["start"] + p["limit"] < total:
            body["next_token"] = str(p["start"] + n)

    @bp.get(f"{A}/destinations")
    def atrium_destinations() -> Any:
        """GET /_atrium/admin/v1/destinations"""
        require_admin()
        p = paging()
        rows, total = page(p)
        body: dict[str, Any] = {"destinations": rows, "total": total}
        next_token(p, len(rows), total, body)
        return jsonify(body)

    @bp.get(f"{A}/destinations/<destination>")
    def atrium_destination(destination: str) -> Any:
        """GET /_atrium/admin/v1/destinations/{destination}"""
        require_admin()
        return jsonify(known(destination))

    @bp.get(S)
    def synapse_destinations() -> Any:
        """GET /_synapse/admin/v1/federation/destinations"""
        require_admin()
        p = paging()
        rows, total = page(p)
        body: dict[str, Any] = {"destinations": [_synapse_shape(v) for v in rows],
                                "total": total}
        next_token(p, len(rows), total, body)
        return jsonify(body)

    @bp.get(f"{S}/<destination>")
    def synapse_destination(destination: str) -> Any:
        """GET /_synapse/admin/v1/federation/destinations/{destination}"""
        require_admin()
        return jsonify(_synapse_shape(known(destination)))

    @bp.post(f"{S}/<destination>/reset_connection")
    def synapse_reset(destination: str) -> Any:
        """POST /_synapse/admin/v1/federation/destinations/{destination}/reset_connection"""
        require_admin()
        view = known(destination)
        if not view["retry_last_ts"]:
            raise MatrixError(400, "M_UNKNOWN",
                              "The retry timing does not need to be reset for this destination.")
        sender().reset_connection(destination)
        return jsonify({})

    app.register_blueprint(bp)


def _synapse_shape(v: dict[str, Any]) -> dict[str, Any]:
    return {"destination": v["destination"], "retry_last_ts": v["retry_last_ts"] or 0,
            "retry_interval": v["retry_interval"] or 0, "failure_ts": v["failure_ts"],
            "last_successful_stream_ordering": v["pdu_position"]}
