"""Deleting rooms and purging history, Synapse's admin API (docs: "Room Admin API" → Delete
Room API, "Purge History API"), admins only:

- ``DELETE /_synapse/admin/v2/rooms/{roomId}`` ``{new_room_user_id?, room_name?, message?,
  block?, purge?, force_purge?}`` → ``{"delete_id"}``; runs in the background.
- ``GET /_synapse/admin/v2/rooms/{roomId}/delete_status`` → ``{"results": [...]}`` and
  ``GET /_synapse/admin/v2/rooms/delete_status/{deleteId}`` → ``{delete_id, room_id,
  status, shutdown_room: {kicked_users, failed_to_kick_users, local_aliases, new_room_id}}``
- ``DELETE /_synapse/admin/v1/rooms/{roomId}`` (and ``POST …/v1/rooms/{roomId}/delete``):
  the same, done before answering; the answer is the ``shutdown_room`` object.
- ``POST /_synapse/admin/v1/purge_history/{roomId}[/{eventId}]`` ``{purge_up_to_event_id? |
  purge_up_to_ts?, delete_local_events?}`` → ``{"purge_id"}``;
  ``GET /_synapse/admin/v1/purge_history_status/{purgeId}`` → ``{"status", "error"?}``.

A delete, in order, each step safe to run again: block (if asked; even an unknown room);
create the new room (``new_room_user_id``: public, named ``room_name``, ``users_default``
-10); make every local member joined, invited or knocking leave — a leave of their own,
sent through the room's actor like any leave — and forget the room, joining those that were
joined to the new room; post ``message`` there and move the local aliases to it (without a
new room the aliases are deleted); unpublish the room; then, with ``purge`` (the default),
refuse if a local user is still joined (unless ``force_purge``), stop the room's actor and
keep it stopped (``Supervisor.retire``) while store/room_purge.py deletes the room's rows.
A history purge likewise runs with the room's actor stopped, so no write meets it.

Tasks live in ``admin_room_tasks`` with Synapse's statuses (scheduled, active, complete,
failed); a task that a restart interrupted is resumed at start-up.  Each destructive call
logs one INFO line naming the admin, the room and the action.
"""
from __future__ import annotations

import logging
from typing import Any

from actors.room_create import plan_room
from actors.room_messages import EventSpec, InitRoom, Send
from atrium.errors import MatrixError
from protocol.ids import is_valid_user_id, server_of
from store.admin_rooms import AdminRoomStore, RoomTask
from store.room_purge import RoomPurger
from supervision import new_trace_id
from web.admin_tasks import TaskRunner

log = logging.getLogger(__name__)

DEFAULT_ROOM_NAME = "Content Violation Notification"
DEFAULT_MESSAGE = ("Sharing illegal content on this server is not permitted and rooms in"
                   " violation will be blocked.")


class TaskFailed(Exception):
    """A task stops here; its message is the task's error."""


def empty_result() -> dict[str, Any]:
    return {"kicked_users": [], "failed_to_kick_users": [], "local_aliases": [],
            "new_room_id": None}


class RoomDeleter(TaskRunner):
    """Runs room deletes and history purges (one at a time per room) as greenlets."""

    what = "admin room task"

    def __init__(self, runtime: Any, store: AdminRoomStore) -> None:
        super().__init__()
        self.runtime = runtime
        self.svc = runtime.parts["rooms"]
        self.server_name: str = runtime.config.server_name
        self.store = store
        self.purger = RoomPurger(runtime.db)

    def task_id(self, task: RoomTask) -> str:
        return task.task_id

    def subject(self, task: RoomTask) -> str:
        return task.room_id

    def unfinished(self) -> list[RoomTask]:
        return self.store.unfinished_tasks()

    def describe(self, task: RoomTask) -> str:
        return f"{task.task_id} ({task.kind} of {task.room_id}, asked by {task.requester})"

    # ------------------------------------------------------------------ starting
    def _claim(self, room_id: str) -> None:
        """One task per room at a time (checked before the first yield, then in the store
        for tasks of an earlier run not yet resumed)."""
        if room_id in self._busy:
            raise MatrixError(400, "M_UNKNOWN", f"Purge already in progress for {room_id}")
        self._busy.add(room_id)
        try:
            if self.store.tasks_of_room(room_id, unfinished=True):
                raise MatrixError(400, "M_UNKNOWN",
                                  f"Purge already in progress for {room_id}")
        except BaseException:
            self._busy.discard(room_id)
            raise

    def start(self, kind: str, room_id: str, requester: str, params: dict[str, Any]
              ) -> RoomTask:
        self._claim(room_id)
        try:
            task = self.store.new_task(kind, room_id, requester, params,
                                       empty_result() if kind == "delete" else None)
        except BaseException:
            self._busy.discard(room_id)
            raise
        self._spawn(task)
        return task

    def run_now(self, room_id: str, requester: str, params: dict[str, Any]) -> RoomTask:
        """The v1 delete: the same task, run in the caller's greenlet."""
        self._claim(room_id)
        try:
            task = self.store.new_task("delete", room_id, requester, params, empty_result())
            self.run(task)
        finally:
            self._busy.discard(room_id)
        return task

    # ------------------------------------------------------------------ running
    def run(self, task: RoomTask) -> None:
        task.status, task.error = "active", None
        self.store.update_task(task)
        try:
            if task.kind == "delete":
                self._delete(task)
            else:
                self._purge_history(task)
        except TaskFailed as e:
            task.status, task.error = "failed", str(e)
        except MatrixError as e:
            task.status, task.error = "failed", e.error
        except Exception as e:  # noqa: BLE001 - recorded, and the admin can ask again
            log.exception("admin room task %s (%s of %s) failed", task.task_id, task.kind,
                          task.room_id)
            task.status, task.error = "failed", f"{type(e).__name__}: {e}"
        else:
            task.status = "complete"
        self.store.update_task(task)
        log.info("admin room task %s (%s of %s): %s%s", task.task_id, task.kind,
                 task.room_id, task.status, f" ({task.error})" if task.error else "")

    def _ask(self, room_id: str, msg: Any, trace: str) -> Any:
        return self.svc.supervisor.ask(room_id, msg, trace_id=trace, sender="admin rooms")

    def _delete(self, task: RoomTask) -> None:
        p, room_id = task.params, task.room_id
        result = task.result if task.result is not None else empty_result()
        task.result = result
        trace = new_trace_id()
        if p.get("block"):
            self.store.block(room_id, task.requester)
        if self.store.room_exists(room_id):  # an unknown room: nothing to shut down
            self._shutdown(task, result, trace)
        if p.get("purge", True):  # (for an unknown room, leftovers of an interrupted purge)
            joined = [u for u, m in self.store.local_members(room_id) if m == "join"]
            if joined and not p.get("force_purge"):
                raise TaskFailed("Users are still joined to this room")
            self.purge_room(room_id)

    def _shutdown(self, task: RoomTask, result: dict[str, Any], trace: str) -> None:
        p, room_id = task.params, task.room_id
        new_user = p.get("new_room_user_id")
        if new_user is not None and result.get("new_room_id") is None:
            result["new_room_id"] = self._new_room(new_user, p.get("room_name")
                                                   or DEFAULT_ROOM_NAME, trace)
            self.store.update_task(task)
        new_room = result.get("new_room_id")
        for user_id, membership in self.store.local_members(room_id):
            if membership not in ("join", "invite", "knock"):
                continue
            try:
                self._ask(room_id, Send(spec=EventSpec(
                    "m.room.member", user_id, {"membership": "leave"}, user_id)), trace)
                self.store.forget(user_id, room_id)
                if new_room is not None and membership == "join":
                    from web.rooms import get_profile

                    self._ask(new_room, Send(spec=EventSpec(
                        "m.room.member", user_id,
                        {"membership": "join", **get_profile(self.svc, user_id)},
                        user_id)), trace)
                result["kicked_users"].append(user_id)
            except Exception as e:  # noqa: BLE001 - one user's failure is reported, not fatal
                log.warning("delete of %s: %s not taken out: %s", room_id, user_id, e)
                result["failed_to_kick_users"].append(user_id)
            self.store.update_task(task)
        directory = self.runtime.parts["directory"]
        if new_room is not None and new_user is not None:
            self._ask(new_room, Send(spec=EventSpec(
                "m.room.message", new_user,
                {"msgtype": "m.text", "body": p.get("message") or DEFAULT_MESSAGE})), trace)
            result["local_aliases"] = sorted(set(result["local_aliases"]) | set(
                directory.move_aliases(room_id, new_room)))
        else:
            aliases = directory.aliases_of_room(room_id)
            for alias in aliases:
                directory.delete_alias(alias)
            result["local_aliases"] = sorted(set(result["local_aliases"]) | set(aliases))
        directory.set_public(room_id, False)
        self.store.update_task(task)

    def _new_room(self, creator: str, name: str, trace: str) -> str:
        from web.rooms import get_profile

        rv = self.svc.resolve_room_version(None)
        body = {"preset": "public_chat", "name": name,
                "power_level_content_override": {"users_default": -10}}
        plan = plan_room(rv, creator, self.server_name, body,
                         creator_profile=get_profile(self.svc, creator))
        create = self.svc.build_create_event(rv, creator, plan.create_content)
        self._ask(create["room_id"], InitRoom(create_event=create, initial=plan.initial,
                                              is_public=False), trace)
        return str(create["room_id"])

    # ------------------------------------------------------------------ purging
    def purge_room(self, room_id: str) -> dict[str, int]:
        """Every row of the room, with its actor stopped; the caches that held any let go."""
        sup = self.svc.supervisor
        if not sup.retire(room_id):
            raise TaskFailed("The room's actor did not stop in time")
        try:
            users = [u for u, _ in self.store.local_members(room_id)]
            event_ids = self.purger.room_event_ids(room_id)
            counts = self.purger.purge_room(room_id)
            self._forget_cached(room_id, event_ids, users)
        finally:
            sup.reinstate(room_id)
        return counts

    def _purge_history(self, task: RoomTask) -> None:
        p = task.params
        sup = self.svc.supervisor
        if not sup.retire(task.room_id):
            raise TaskFailed("The room's actor did not stop in time")
        try:
            out = self.purger.purge_history(
                task.room_id, int(p["depth"]), server_name=self.server_name,
                delete_local_events=bool(p.get("delete_local_events")))
            self._forget_cached(task.room_id, out["deleted"], [], whole_room=False)
        finally:
            sup.reinstate(task.room_id)

    def _forget_cached(self, room_id: str, event_ids: Any, users: list[str], *,
                       whole_room: bool = True) -> None:
        """Drop what the in-memory caches hold of purged rows (EventStore's event and room
        version caches, the sync service's membership histories)."""
        self.svc.events.forget_purged(room_id, event_ids, whole_room=whole_room)
        sync = self.runtime.parts.get("sync")
        memberships = getattr(sync, "memberships", None)
        for user_id in users:
            if memberships is not None:
                memberships.invalidate(user_id)


def check_delete_body(body: dict[str, Any], server_name: str, accounts: Any
                      ) -> dict[str, Any]:
    """The delete's parameters, checked as Synapse checks them (400 M_BAD_JSON)."""
    params: dict[str, Any] = {}
    for key, default in (("block", False), ("purge", True), ("force_purge", False)):
        v = body.get(key, default)
        if not isinstance(v, bool):
            raise MatrixError(400, "M_BAD_JSON", f"Param '{key}' must be a boolean, if given")
        params[key] = v
    for key in ("room_name", "message"):
        v = body.get(key)
        if v is not None and (not isinstance(v, str) or len(v) > 65536 or "\x00" in v):
            raise MatrixError(400, "M_BAD_JSON", f"Param '{key}' must be a string, if given")
        params[key] = v
    user = body.get("new_room_user_id")
    if user is not None:
        if not isinstance(user, str) or not is_valid_user_id(user):
            raise MatrixError(400, "M_BAD_JSON", "Param 'new_room_user_id' must be a user id")
        if server_of(user) != server_name:
            raise MatrixError(400, "M_UNKNOWN", f"User must be our own: {user}")
        if not accounts.user_exists(user):
            raise MatrixError(400, "M_UNKNOWN", f"User {user} does not exist")
    params["new_room_user_id"] = user
    return params
