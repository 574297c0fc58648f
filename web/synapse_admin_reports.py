"""Synapse's admin API over reported content (docs: Synapse "Event Reports", "User
Reports"), admins only:

- ``GET /_synapse/admin/v1/event_reports`` (``from``, ``limit``, ``dir``, ``room_id``,
  ``user_id``, ``event_sender_user_id``) → ``event_reports``, ``total``, ``next_token``;
- ``GET`` / ``DELETE /_synapse/admin/v1/event_reports/{reportId}`` (the detail adds
  ``event_json``);
- ``GET /_synapse/admin/v1/user_reports`` (``user_id``, ``target_user_id``) and
  ``GET`` / ``DELETE …/user_reports/{reportId}``;
- ``GET /_synapse/admin/v1/room_reports`` (``user_id``, ``room_id``) and
  ``GET`` / ``DELETE …/room_reports/{reportId}`` — Atrium's, shaped like the user reports
  (Synapse stores room reports but has no admin API for them).

Every deletion logs one INFO line naming the admin and the report.
"""
from __future__ import annotations

import logging
import re
from typing import Any

from flask import Blueprint, Flask, jsonify, request

from atrium.errors import invalid_param, not_found
from store.reports import ReportStore
from web.auth import require_admin
from web.http import MAX_INT64, query_int
from web.uia import reject_nul_path_values

log = logging.getLogger(__name__)

A = "/_synapse/admin/v1"
DEFAULT_LIMIT = 100
#: the largest page served (Synapse has none; ours keeps an answer bounded)
MAX_LIMIT = 1000
_DIGITS = re.compile(r"^[0-9]{1,19}$")


def page_params() -> tuple[int, int]:
    """``from`` and ``limit`` of an admin list (400 M_INVALID_PARAM when negative)."""
    start = query_int("from", 0)
    limit = query_int("limit", DEFAULT_LIMIT)
    assert start is not None and limit is not None
    for name, v in (("from", start), ("limit", limit)):
        if v < 0:
            raise invalid_param(f"Query parameter {name} must be a positive integer.")
    return start, min(limit, MAX_LIMIT)


def query_dir(default: str = "b") -> bool:
    """``dir``: True for ``b`` (newest first)."""
    d = request.args.get("dir", default)
    if d not in ("b", "f"):
        raise invalid_param("Query parameter 'dir' must be one of ['b', 'f']")
    return d == "b"


def query_text(name: str) -> str | None:
    v = request.args.get(name) or None
    if v is not None and ("\x00" in v or len(v) > 1024):
        raise invalid_param(f"Query parameter '{name}' is not a valid value")
    return v


def paged(key: str, items: list[dict[str, Any]], total: int, start: int,
          limit: int) -> dict[str, Any]:
    out: dict[str, Any] = {key: items, "total": total}
    if start + limit < total:
        out["next_token"] = start + len(items)
    return out


def report_id_of(raw: str) -> int:
    """A report id of the path; 400 M_INVALID_PARAM unless a non-negative integer."""
    if not _DIGITS.match(raw) or int(raw) > MAX_INT64:
        raise invalid_param("The report_id parameter must be a string representing a"
                            " positive integer.")
    return int(raw)


def register(app: Flask, runtime: Any) -> None:
    store = ReportStore(runtime.db)
    bp = Blueprint("synapse_admin_reports", __name__)
    bp.url_value_preprocessor(reject_nul_path_values)

    @bp.get(f"{A}/event_reports")
    def list_event_reports() -> Any:
        """GET /_synapse/admin/v1/event_reports"""
        require_admin()
        start, limit = page_params()
        backwards = query_dir()
        items, total = store.event_reports(
            start, limit, backwards=backwards, user_id=query_text("user_id"),
            room_id=query_text("room_id"), event_sender=query_text("event_sender_user_id"))
        return jsonify(paged("event_reports", items, total, start, limit))

    @bp.get(f"{A}/event_reports/<report_id>")
    def get_event_report(report_id: str) -> Any:
        """GET /_synapse/admin/v1/event_reports/{reportId}"""
        require_admin()
        report = store.event_report(report_id_of(report_id))
        if report is None:
            raise not_found("Event report not found")
        return jsonify(report)

    @bp.delete(f"{A}/event_reports/<report_id>")
    def delete_event_report(report_id: str) -> Any:
        """DELETE /_synapse/admin/v1/event_reports/{reportId}"""
        return delete("event_reports", report_id, "Event report not found")

    def delete(table: str, raw_id: str, missing: str) -> Any:
        admin = require_admin()
        rid = report_id_of(raw_id)
        if not store.delete(table, rid):
            raise not_found(missing)
        log.info("admin %s deleted %s %d", admin.user_id, table[:-1].replace("_", " "), rid)
        return jsonify({})

    def simple_reports(table: str, target_param: str, label: str) -> None:
        """The list / detail / delete routes of ``room_reports`` or ``user_reports``."""

        def list_reports() -> Any:
            require_admin()
            start, limit = page_params()
            backwards = query_dir()
            items, total = store.reports(table, start, limit, backwards=backwards,
                                         user_id=query_text("user_id"),
                                         target=query_text(target_param))
            return jsonify(paged(table, items, total, start, limit))

        def get_report(report_id: str) -> Any:
            require_admin()
            report = store.report(table, report_id_of(report_id))
            if report is None:
                raise not_found(f"{label} not found")
            return jsonify(report)

        def delete_report(report_id: str) -> Any:
            return delete(table, report_id, f"{label} not found")

        list_reports.__doc__ = f"GET /_synapse/admin/v1/{table}"
        get_report.__doc__ = f"GET /_synapse/admin/v1/{table}/{{reportId}}"
        delete_report.__doc__ = f"DELETE /_synapse/admin/v1/{table}/{{reportId}}"
        bp.add_url_rule(f"{A}/{table}", f"list_{table}", list_reports)
        bp.add_url_rule(f"{A}/{table}/<report_id>", f"get_{table}", get_report)
        bp.add_url_rule(f"{A}/{table}/<report_id>", f"delete_{table}", delete_report,
                        methods=["DELETE"])

    simple_reports("user_reports", "target_user_id", "User report")
    simple_reports("room_reports", "room_id", "Room report")
    app.register_blueprint(bp)
