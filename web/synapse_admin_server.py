"""Synapse's admin API about the server itself (docs: Synapse "Server Version",
"Background Updates"), admins only:

- ``GET /_synapse/admin/v1/server_version`` → ``{"server_version": "Atrium 0.1.0"}``;
- ``GET /_synapse/admin/v1/background_updates/status`` → ``enabled`` and
  ``current_updates``: Atrium's background work is the two followers of the events stream
  (the search index, store/search.py, and the user directory, store/user_directory.py).
  One that is working through the stream (in a step now, or ``CATCHING_UP`` positions or
  more behind: a first build, a restart's catch-up) is the database's current update, with
  the stream positions it handled since this process started (``total_item_count``), the
  time spent handling them, the recent rate, and ``items_remaining`` (Atrium's) — the one
  further behind when both are.  A follower a few positions behind is idle, not late: it
  is woken only by the event types it indexes;
- ``GET`` / ``POST /_synapse/admin/v1/background_updates/enabled``: always enabled; asking
  to pause is 400 (the followers keep the indexes current as events arrive and cannot be
  held);
- ``POST /_synapse/admin/v1/background_updates/start_job``: 400 — Synapse's jobs rebuild
  tables Atrium keeps current continuously.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, jsonify

import atrium
from atrium.errors import MatrixError, missing_param
from store.search import StreamFollower
from web.auth import require_admin
from web.http import check_type, json_body

A = "/_synapse/admin/v1"
#: the database name Synapse reports for its one (main) database
DB_NAME = "master"
#: stream positions behind from which an idle follower counts as catching up
CATCHING_UP = 1000
_SYNAPSE_JOBS = ("populate_stats_process_rooms", "regenerate_directory", "event_resign")


class Progress:
    """How much of the stream one follower handled and how long it took (the follower
    times its own steps: store/search.py StreamFollower)."""

    def __init__(self, name: str, follower: StreamFollower) -> None:
        self.name, self.follower = name, follower
        self.threshold = CATCHING_UP

    def behind(self) -> int:
        return max(0, self.follower.stream.current() - self.follower.position)

    def running(self) -> bool:
        return self.follower.in_step or self.behind() >= self.threshold

    def status(self) -> dict[str, Any]:
        f = self.follower
        return {"name": self.name, "total_item_count": f.items,
                "total_duration_ms": round(f.busy * 1000, 3),
                "average_items_per_ms": f.rate,
                "items_remaining": self.behind()}


def register(app: Flask, runtime: Any) -> None:
    progress = []
    search = runtime.parts.get("search")
    if search is not None:
        progress.append(Progress("search_index", search.indexer))
    directory = runtime.parts.get("user_directory_follower")
    if directory is not None:
        progress.append(Progress("user_directory", directory))
    runtime.parts["background_progress"] = progress
    bp = Blueprint("synapse_admin_server", __name__)

    @bp.get(f"{A}/server_version")
    def server_version() -> Any:
        """GET /_synapse/admin/v1/server_version"""
        require_admin()
        return jsonify({"server_version": f"Atrium {atrium.__version__}"})

    @bp.get(f"{A}/background_updates/status")
    def status() -> Any:
        """GET /_synapse/admin/v1/background_updates/status"""
        require_admin()
        running = [p for p in progress if p.running()]
        current = max(running, key=lambda p: p.behind(), default=None)
        updates = {DB_NAME: current.status()} if current is not None else {}
        return jsonify({"enabled": True, "current_updates": updates})

    @bp.get(f"{A}/background_updates/enabled")
    def get_enabled() -> Any:
        """GET /_synapse/admin/v1/background_updates/enabled"""
        require_admin()
        return jsonify({"enabled": True})

    @bp.post(f"{A}/background_updates/enabled")
    def set_enabled() -> Any:
        """POST /_synapse/admin/v1/background_updates/enabled"""
        require_admin()
        enabled = json_body().get("enabled", True)
        if not isinstance(enabled, bool):
            raise MatrixError(400, "M_UNKNOWN", "'enabled' parameter must be a boolean")
        if not enabled:
            raise MatrixError(400, "M_UNKNOWN", "Atrium's background work (the search index"
                              " and the user directory) follows new events and cannot be"
                              " paused")
        return jsonify({"enabled": True})

    @bp.post(f"{A}/background_updates/start_job")
    def start_job() -> Any:
        """POST /_synapse/admin/v1/background_updates/start_job"""
        require_admin()
        body = json_body()
        if "job_name" not in body:
            raise missing_param("Missing params: ['job_name']")
        job = check_type(body, "job_name", str)
        if job in _SYNAPSE_JOBS:
            raise MatrixError(400, "M_UNKNOWN", f"Atrium runs no job {job!r}: what it"
                              " would rebuild is kept current as events arrive")
        raise MatrixError(400, "M_UNKNOWN", "Invalid job_name")

    app.register_blueprint(bp)
