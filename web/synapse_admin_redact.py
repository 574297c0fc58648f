"""Redacting the events of a user, Synapse's admin API (docs: "User Admin API" → "Redact
events of a user", "Check the status of a redaction process"), admins only:

- ``POST /_synapse/admin/v1/user/{userId}/redact`` ``{rooms, reason?, limit?, use_admin?,
  before_ts?, after_ts?}`` → ``{"redact_id"}``; runs in the background;
- ``GET /_synapse/admin/v1/user/redact_status/{redactId}`` → ``{status,
  failed_redactions?, error?}`` with Synapse's statuses (scheduled, active, complete,
  failed).

In each room (``rooms``, or with ``[]`` every room the user is joined to or banned from)
the user's messages, encrypted events and joins, newest first, at most ``limit`` (1000) per
room, each get an ``m.room.redaction`` sent through the room's actor like any redaction.
Who sends it, as Synapse: a local user redacts their own events; the admin does with
``use_admin`` or for a user of another server.  Where that sender may not (a user who was
banned or left: Synapse gets around it by building the redaction on the redacted event, an
actor here always builds on the room's newest events), the admin, then the local member
with the highest power level, is tried in turn.  An event none of them may redact is
listed in ``failed_redactions`` with the reason.

Tasks are rows of ``admin_redact_tasks`` (schema 083); one left unfinished by a restart runs
again at start-up (events already redacted are skipped).  One task per user at a time.
"""
from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, jsonify

from actors.room_messages import EventSpec, Send
from atrium.errors import MatrixError, bad_json, invalid_param, missing_param, not_found
from protocol.ids import is_valid_room_id, is_valid_user_id, server_of
from protocol.power_levels import get_named_level, get_user_level
from store.admin_extras import AdminExtrasStore, RedactTask
from supervision import new_trace_id
from web.auth import require_admin
from web.http import MAX_INT64, json_body
from web.admin_tasks import TaskRunner
from web.synapse_admin_users import audit, unknown
from web.uia import reject_nul_path_values

log = logging.getLogger(__name__)

A1 = "/_synapse/admin/v1"
DEFAULT_LIMIT = 1000


class Redactor(TaskRunner):
    """Runs redaction tasks as greenlets, one per user at a time."""

    what = "admin redaction"

    def __init__(self, runtime: Any, store: AdminExtrasStore) -> None:
        super().__init__()
        self.svc = runtime.parts["rooms"]
        self.server_name: str = runtime.config.server_name
        self.store = store

    def task_id(self, task: RedactTask) -> str:
        return task.redact_id

    def subject(self, task: RedactTask) -> str:
        return task.user_id

    def unfinished(self) -> list[RedactTask]:
        return self.store.unfinished_redact_tasks()

    def describe(self, task: RedactTask) -> str:
        return f"{task.redact_id} (events of {task.user_id}, asked by {task.requester})"

    def start(self, user_id: str, requester: str, params: dict[str, Any]) -> RedactTask:
        if user_id in self._busy or self.store.unfinished_redact_tasks(user_id):
            raise unknown(f"Redact already in progress for user {user_id}")
        self._busy.add(user_id)
        try:
            task = self.store.new_redact_task(user_id, requester, params)
        except BaseException:
            self._busy.discard(user_id)
            raise
        self._spawn(task)
        return task

    # ------------------------------------------------------------------ running
    def run(self, task: RedactTask) -> None:
        task.status, task.error = "active", None
        self.store.update_redact_task(task)
        try:
            self._redact(task)
        except Exception as e:  # noqa: BLE001 - recorded; the admin can ask again
            log.exception("admin redaction %s (events of %s) failed", task.redact_id,
                          task.user_id)
            task.status, task.error = "failed", f"{type(e).__name__}: {e}"
        else:
            task.status = "complete"
        self.store.update_redact_task(task)
        log.info("admin redaction %s (events of %s): %s, %d failed", task.redact_id,
                 task.user_id, task.status, len(task.result["failed_redactions"]))

    def _redact(self, task: RedactTask) -> None:
        p = task.params
        rooms = p["rooms"] or self.store.rooms_of(task.user_id)
        failed: dict[str, str] = task.result.setdefault("failed_redactions", {})
        trace = new_trace_id()
        content = {"reason": p["reason"]} if p.get("reason") else {}
        for room_id in rooms:
            events = self.store.redactable(task.user_id, room_id, p["limit"],
                                           p.get("before_ts"), p.get("after_ts"))
            senders = self._senders(task, room_id) if events else []
            for event_id in events:
                error = self._redact_one(room_id, event_id, senders, content, trace)
                if error is None:
                    failed.pop(event_id, None)
                else:
                    failed[event_id] = error
                    self.store.update_redact_task(task)   # failures show as they come
            self.store.update_redact_task(task)

    def _redact_one(self, room_id: str, event_id: str, senders: list[str],
                    content: dict[str, Any], trace: str) -> str | None:
        """Send one redaction as the first of ``senders`` allowed to; a sender refused
        (403) leaves the list for the rest of the room.  None, or why it failed."""
        error = "No local user may redact this event"
        while senders:
            spec = EventSpec("m.room.redaction", senders[0], content)
            try:
                self.svc.supervisor.ask(room_id, Send(spec=spec, redacts=event_id),
                                        trace_id=trace, sender="admin redact")
                return None
            except MatrixError as e:
                if e.status != 403:
                    return e.error
                error = e.error
                senders.pop(0)
            except Exception as e:  # noqa: BLE001 - a parked or retired room: this one fails
                return f"{type(e).__name__}: {e}"
        return error

    def _senders(self, task: RedactTask, room_id: str) -> list[str]:
        """Who to send the room's redactions as, in order of preference."""
        p, user = task.params, task.user_id
        if p.get("use_admin"):
            return [task.requester]
        first = [user] if server_of(user) == self.server_name else []
        out = first + [task.requester] + self._room_admins(room_id)
        return list(dict.fromkeys(out))

    def _room_admins(self, room_id: str) -> list[str]:
        """Local members able to redact others' events, highest power level first."""
        rv = self.svc.room_version(room_id)
        create = self.svc.current_state_event(room_id, "m.room.create", "")
        if rv is None or create is None:
            return []
        pl_ev = self.svc.current_state_event(room_id, "m.room.power_levels", "")
        pl = pl_ev.event.get("content") if pl_ev is not None else None
        pl = pl if isinstance(pl, dict) else None
        need = get_named_level(pl, "redact", rv=rv)
        levels = {u: get_user_level(rv, create.event, pl, u)
                  for u in self.store.local_joined(room_id)}
        return sorted((u for u, lv in levels.items() if lv >= need),
                      key=lambda u: (-levels[u], u))


def check_redact_body(body: dict[str, Any]) -> dict[str, Any]:
    """The request's parameters, checked as Synapse checks them."""
    if "rooms" not in body:
        raise missing_param("Missing params: ['rooms']")
    rooms = body["rooms"]
    if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
        raise bad_json("'rooms' must be a list of room ids")
    for r in rooms:
        if not is_valid_room_id(r):
            raise invalid_param(f"{r[:255]} is not a legal room ID")
    params: dict[str, Any] = {"rooms": list(dict.fromkeys(rooms))}
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or "\x00" in reason
                               or len(reason) > 65536):
        raise bad_json("'reason' must be a string")
    params["reason"] = reason
    for key in ("limit", "before_ts", "after_ts"):
        v = body.get(key)
        if v is not None and (type(v) is not int or not -MAX_INT64 <= v <= MAX_INT64):
            raise bad_json(f"'{key}' must be an integer")
        params[key] = v
    if params["limit"] is not None and params["limit"] < 0:   # 0: the default (Synapse)
        raise unknown("If limit is provided it must be a non-negative integer greater than 0.")
    params["limit"] = params["limit"] or DEFAULT_LIMIT
    use_admin = body.get("use_admin")
    if use_admin is not None and not isinstance(use_admin, bool):
        raise bad_json("'use_admin' must be a boolean")
    params["use_admin"] = bool(use_admin)
    return params


def register(app: Flask, runtime: Any, store: AdminExtrasStore) -> None:
    redactor = Redactor(runtime, store)
    runtime.parts["redactor"] = redactor
    redactor.install(runtime)
    bp = Blueprint("synapse_admin_redact", __name__)
    bp.url_value_preprocessor(reject_nul_path_values)

    @bp.post(f"{A1}/user/<user_id>/redact")
    def redact_user(user_id: str) -> Any:
        """POST /_synapse/admin/v1/user/{userId}/redact"""
        req = require_admin()
        if not is_valid_user_id(user_id):
            raise invalid_param(f"Invalid user id: {user_id[:255]}")
        params = check_redact_body(json_body())
        task = redactor.start(user_id, req.user_id, params)
        audit(req, "redacts the events of", user_id, redact_id=task.redact_id,
              rooms=len(params["rooms"]) or "all", limit=params["limit"],
              use_admin=params["use_admin"])
        return jsonify({"redact_id": task.redact_id})

    @bp.get(f"{A1}/user/redact_status/<redact_id>")
    def redact_status(redact_id: str) -> Any:
        """GET /_synapse/admin/v1/user/redact_status/{redactId}"""
        require_admin()
        task = store.get_redact_task(redact_id)
        if task is None:
            raise not_found(f"redact id '{redact_id}' not found")
        if task.status == "complete":
            return jsonify({"status": "complete",
                            "failed_redactions": task.result.get("failed_redactions") or {}})
        if task.status == "failed":
            return jsonify({"status": "failed", "error": task.error or "Unknown error",
                            "failed_redactions": task.result.get("failed_redactions") or {}})
        return jsonify({"status": task.status})

    app.register_blueprint(bp)
