"""The push sender (push-gateway-api ``POST /_matrix/push/v1/notify``): one PusherActor per
local user with pushers, under the "pushers" supervisor.

A ``PushWake`` (sent by the push evaluator after it wrote notifications for the user) makes
the actor read what each of the user's pushers has not yet sent from ``event_push_actions``
(after the pusher's ``last_stream_ordering``) and POST it to the pusher's gateway, one
notification per request, with a timeout.  Progress is stored after each delivery, so the
mailbox is only a doorbell: a dropped wake or a restarted actor loses nothing — the next wake
(or the start-up sweep) resumes from the store.

Failures back off per pusher, exponentially from ``backoff_base`` to ``backoff_max``; the
retry is a scheduled ``PushRetry`` tell, and wakes during a backoff are ignored.  After
``max_attempts`` failures on one notification it is skipped.  Pushkeys the gateway lists in
``rejected`` lose their pushers.  The HTTP call blocks only this user's actor (gevent-patched
``requests``), never a room write.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import gevent
import requests

from atrium.errors import MatrixError
from protocol.push_rules import notification_effect, tweaks
from store import push as push_store
from store.database import Database
from store.events import EventStore
from store.pushers import Pusher, PusherStore
from supervision import SupervisedActor, Supervisor, SupervisionError, Tracer, message

log = logging.getLogger(__name__)

EVENT_ID_ONLY = "event_id_only"
Post = Callable[[str, dict[str, Any], float], tuple[int, Any]]


@message
class PushWake:
    """New notifications may be waiting for this user's pushers."""


@message
class PushRetry:
    """A backoff ended: try the failing pushers again."""


def http_post(url: str, payload: dict[str, Any], timeout: float) -> tuple[int, Any]:
    """POST JSON with ``requests``; (status, parsed body or None)."""
    r = requests.post(url, json=payload, timeout=timeout)
    try:
        body = r.json()
    except ValueError:
        body = None
    return r.status_code, body


@dataclass
class PusherDeps:
    db: Database
    pushers: PusherStore
    events: EventStore
    post: Post = http_post
    timeout: float = 10.0
    backoff_base: float = 1.0
    backoff_max: float = 600.0
    max_attempts: int = 12
    batch: int = 50
    # (delay_s, user_id, message) → a handle with .kill(); set by the wiring
    schedule: Callable[[float, str, Any], Any] | None = None
    clock: Callable[[], float] = time.time


class PusherActor(SupervisedActor):
    domain_errors = (MatrixError,)

    def __init__(self, user_id: str, deps: PusherDeps) -> None:
        super().__init__()
        self.user_id = user_id
        self.deps = deps
        self.failures: dict[tuple[str, str], tuple[int, float]] = {}  # → (attempts, retry_at)
        self.sent = 0
        self._timer: Any = None

    def handle(self, msg: Any) -> Any:
        if isinstance(msg, (PushWake, PushRetry)):
            return self._deliver_pending()
        raise TypeError(f"PusherActor: unknown message {type(msg).__name__}")

    def on_stop(self) -> None:
        pass  # a pending retry timer restarts the actor when it fires

    # ------------------------------------------------------------------ delivering
    def _deliver_pending(self) -> int:
        now = self.deps.clock()
        sent = 0
        for p in self.deps.pushers.for_user(self.user_id):
            if p.kind != "http":
                continue
            key = (p.app_id, p.pushkey)
            attempts, retry_at = self.failures.get(key, (0, 0.0))
            if now < retry_at:
                continue
            sent += self._drain(p, attempts)
        self._schedule_retry()
        return sent

    def _drain(self, p: Pusher, attempts: int) -> int:
        d = self.deps
        key = (p.app_id, p.pushkey)
        position = p.last_stream_ordering
        sent = 0
        while True:
            pending = push_store.pending_for_user(d.db, self.user_id, position, d.batch)
            if not pending:
                return sent
            for n in pending:
                outcome = self._send(p, n)
                if outcome == "rejected":
                    log.info("push gateway rejected %s/%s: pusher removed", *key)
                    d.pushers.delete_rejected(p.app_id, p.pushkey)
                    self.failures.pop(key, None)
                    return sent
                if outcome == "failed":
                    attempts += 1
                    now = d.clock()
                    if attempts >= d.max_attempts:
                        log.warning("push to %s/%s: giving up on %s", *key, n["event_id"])
                        position = n["stream_ordering"]
                        d.pushers.progress(self.user_id, *key, position=position,
                                           success_ts=None, failing_since=int(now * 1000))
                        attempts = 0
                    else:
                        d.pushers.progress(self.user_id, *key, position=None, success_ts=None,
                                           failing_since=p.failing_since_ts or int(now * 1000))
                    delay = min(d.backoff_max, d.backoff_base * 2 ** max(0, attempts - 1))
                    self.failures[key] = (attempts, now + delay)
                    return sent
                position = n["stream_ordering"]
                attempts = 0
                self.failures.pop(key, None)
                d.pushers.progress(self.user_id, *key, position=position,
                                   success_ts=int(d.clock() * 1000), failing_since=None)
                sent += 1
                self.sent += 1

    def _send(self, p: Pusher, n: dict[str, Any]) -> str:
        """POST one notification: 'ok', 'rejected' (our pushkey) or 'failed'."""
        url = p.data.get("url")
        if not isinstance(url, str):
            return "rejected"
        payload = self._payload(p, n)
        try:
            status, body = self.deps.post(url, payload, self.deps.timeout)
        except Exception as e:  # noqa: BLE001 - connection refused, timeout, bad URL...
            log.info("push to %s failed: %s", url, e)
            return "failed"
        if not 200 <= status < 300:
            log.info("push to %s: HTTP %s", url, status)
            return "failed"
        rejected = body.get("rejected") if isinstance(body, dict) else None
        if isinstance(rejected, list) and p.pushkey in rejected:
            return "rejected"
        return "ok"

    def _payload(self, p: Pusher, n: dict[str, Any]) -> dict[str, Any]:
        """The ``notification`` object of push-gateway-api for one pusher."""
        d = self.deps
        actions = n["actions"]
        tw = tweaks(actions)
        _, highlight, sound = notification_effect(actions)
        device = {"app_id": p.app_id, "pushkey": p.pushkey, "pushkey_ts": p.pushkey_ts // 1000,
                  "data": {k: v for k, v in p.data.items() if k != "url"}, "tweaks": tw}
        note: dict[str, Any] = {
            "event_id": n["event_id"], "room_id": n["room_id"],
            "counts": {"unread": push_store.total_unread(d.db, self.user_id)},
            "prio": "high" if (highlight or sound) else "low", "devices": [device]}
        if p.data.get("format") == EVENT_ID_ONLY:
            return {"notification": note}
        se = d.events.get_event(n["event_id"])
        if se is None:
            return {"notification": note}
        ev = se.event
        note["type"] = ev.get("type")
        note["sender"] = ev.get("sender")
        if se.redacted_by is None and isinstance(ev.get("content"), dict):
            note["content"] = ev["content"]
        if ev.get("type") == "m.room.member":
            note["user_is_target"] = ev.get("state_key") == self.user_id
        name = self._state_content(n["room_id"], "m.room.name", "").get("name")
        if isinstance(name, str) and name:
            note["room_name"] = name
        alias = self._state_content(n["room_id"], "m.room.canonical_alias", "").get("alias")
        if isinstance(alias, str) and alias:
            note["room_alias"] = alias
        sender = ev.get("sender")
        if isinstance(sender, str):
            dn = self._state_content(n["room_id"], "m.room.member", sender).get("displayname")
            if isinstance(dn, str) and dn:
                note["sender_display_name"] = dn
        return {"notification": note}

    def _state_content(self, room_id: str, etype: str, skey: str) -> dict[str, Any]:
        eid = self.deps.db.run("push_state", lambda t: t.query_value(
            "SELECT event_id FROM current_state WHERE room_id = ? AND type = ?"
            " AND state_key = ?", (room_id, etype, skey)))
        se = self.deps.events.get_event(eid) if eid else None
        c = se.event.get("content") if se is not None and se.redacted_by is None else None
        return c if isinstance(c, dict) else {}

    def _schedule_retry(self) -> None:
        if self._timer is not None:
            try:
                self._timer.kill(block=False)
            except Exception:  # noqa: BLE001 - already finished
                pass
            self._timer = None
        if not self.failures or self.deps.schedule is None:
            return
        due = min(at for _, at in self.failures.values())
        delay = max(0.01, due - self.deps.clock())
        self._timer = self.deps.schedule(delay, self.user_id, PushRetry())


class PushSender:
    """The supervisor over PusherActors and the doorbell the evaluator rings."""

    def __init__(self, deps: PusherDeps, tracer: Tracer, *, mailbox: int = 20,
                 ask_timeout: float = 30.0, idle_timeout: float | None = 300.0,
                 restart_delay: float = 1.0, max_restarts: int = 3,
                 restart_window: float = 60.0, park_duration: float = 60.0) -> None:
        self.deps = deps
        self._spawn_later = gevent.spawn_later
        if deps.schedule is None:
            deps.schedule = self._schedule
        self.supervisor = Supervisor(
            "pushers", lambda user_id: PusherActor(user_id, deps), tracer=tracer,
            max_mailbox=mailbox, ask_timeout=ask_timeout, idle_timeout=idle_timeout,
            restart_delay=restart_delay, max_restarts=max_restarts,
            restart_window=restart_window, park_duration=park_duration)
        self.users: set[str] = deps.pushers.users_with_pushers()

    def wake(self, user_id: str, _position: int = 0) -> None:
        """Evaluator hook: the user has new notifications (ignored without pushers)."""
        if user_id in self.users:
            self._tell(user_id, PushWake())

    def pushers_changed(self, user_id: str) -> None:
        if self.deps.pushers.for_user(user_id):
            self.users.add(user_id)
        else:
            self.users.discard(user_id)

    def wake_all(self) -> None:
        """Start-up: every user with pushers catches up from the store."""
        for user_id in list(self.users):
            self._tell(user_id, PushWake())

    def _tell(self, user_id: str, msg: Any) -> None:
        try:
            self.supervisor.tell(user_id, msg)
        except SupervisionError as e:  # full: a wake is already queued; parked: later
            log.debug("push wake for %s refused: %s", user_id, e)

    def _schedule(self, delay: float, user_id: str, msg: Any) -> Any:
        return self._spawn_later(delay, self._tell, user_id, msg)

    def stop(self) -> None:
        self.supervisor.stop_all()
