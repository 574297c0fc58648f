"""Synapse's "Purge History API", admins only:

- ``POST /_synapse/admin/v1/purge_history/{roomId}[/{eventId}]`` ``{purge_up_to_event_id? |
  purge_up_to_ts?, delete_local_events?}`` → ``{"purge_id"}``: the room's timeline events
  below the depth of the given event (that event and those at its depth stay), or below the
  depth of the room's last event received before ``purge_up_to_ts``, are taken out in the
  background (store/room_purge.py says what goes and what stays);
- ``GET /_synapse/admin/v1/purge_history_status/{purgeId}`` → ``{"status": "active" |
  "complete" | "failed", "error"?}``.
"""
from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, jsonify

from atrium.errors import MatrixError, bad_json, not_found
from store.admin_rooms import AdminRoomStore
from web.auth import require_admin
from web.http import MAX_INT64, json_body

log = logging.getLogger(__name__)

A1 = "/_synapse/admin/v1"


def add_routes(bp: Blueprint, runtime: Any, store: AdminRoomStore, deleter: Any) -> None:
    svc = runtime.parts["rooms"]

    @bp.post(f"{A1}/purge_history/<room_id>")
    @bp.post(f"{A1}/purge_history/<room_id>/<event_id>")
    def purge_history(room_id: str, event_id: str | None = None) -> Any:
        """POST /_synapse/admin/v1/purge_history/{roomId}[/{eventId}]"""
        req = require_admin()
        body = json_body(optional=True)
        delete_local = body.get("delete_local_events", False)
        if not isinstance(delete_local, bool):
            raise bad_json("delete_local_events must be a boolean")
        if event_id is None:
            event_id = body.get("purge_up_to_event_id")
            if event_id is not None and not isinstance(event_id, str):
                raise bad_json("purge_up_to_event_id must be a string")
        params: dict[str, Any] = {"delete_local_events": delete_local}
        if event_id is not None:
            se = svc.events.get_event(event_id)
            if se is None:
                raise not_found(f"Could not find event {event_id[:255]}")
            if se.room_id != room_id:
                raise MatrixError(400, "M_UNKNOWN", "Event is for wrong room.")
            params.update(depth=int(se.event.get("depth", 0)), purge_up_to_event_id=event_id)
        elif "purge_up_to_ts" in body:
            ts = body["purge_up_to_ts"]
            if type(ts) is not int or not 0 <= ts <= MAX_INT64:
                raise bad_json("purge_up_to_ts must be an int")
            depth = store.depth_before_ts(room_id, ts)
            if depth is None:
                raise not_found("there is no event to be purged")
            params.update(depth=int(depth), purge_up_to_ts=ts)
        else:
            raise bad_json("must specify purge_up_to_event_id or purge_up_to_ts")
        task = deleter.start("purge_history", room_id, req.user_id, params)
        log.info("admin %s: purge history of %s below depth %d (delete_local_events=%s)"
                 " purge_id=%s", req.user_id, room_id, params["depth"], delete_local,
                 task.task_id)
        return jsonify({"purge_id": task.task_id})

    @bp.get(f"{A1}/purge_history_status/<purge_id>")
    def purge_history_status(purge_id: str) -> Any:
        """GET /_synapse/admin/v1/purge_history_status/{purgeId}"""
        require_admin()
        task = store.get_task(purge_id)
        if task is None or task.kind != "purge_history":
            raise not_found(f"purge id '{purge_id}' not found")
        out: dict[str, Any] = {"status": task.status if task.status in ("complete", "failed")
                               else "active"}
        if task.error:
            out["error"] = task.error
        return jsonify(out)
